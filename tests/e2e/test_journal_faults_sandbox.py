"""A full state volume in the middle of a rotation, against the sandbox (issue 10, defect 9).

The adversarial run saw a rotation crash in verify while ``/readyz`` still said ready, and
renewals stop for good. Here the volume "fills" right after the switch step: sqlite's own
``database or disk is full`` is raised at the journal boundary by an injected connection class.
The worker must turn not-ready, leave every consumer on a working token, and, when space
returns, become ready again and finish the rotation by itself (no restart, no human).
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from remediation.service import WorkerThread
from remediation.world import CoreWorld
from tests.e2e.test_rotation_sandbox import CLUSTERS, World, _world, wait_for
from tests.sqlite_faults import full_disk


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path)


def ready(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_full_disk_mid_rotation_turns_readiness_off_and_the_rotation_finishes_when_space_returns(
        world: World) -> None:
    seed = world.annotate_seed()
    failed_polls = world.failed_polls()
    factory, full = full_disk()

    filled = threading.Event()

    def fill_the_volume(rotation_id: str, step: str) -> None:
        if step == "switch" and not filled.is_set():          # once: the resumed switch runs again
            filled.set()
            full.set()

    world.journal.close()
    adapters = CoreWorld(world.config, env={})
    service = world.service(adapters=adapters, journal_factory=factory, journal_probe_interval=0.1,
                            after_step=fill_the_volume)
    try:
        with WorkerThread(service) as worker:
            assert ready(worker.url) == 200
            decision, request = service.planner.request("keda", trigger="manual", reason="e2e", force=True)
            assert request is not None, decision
            assert service.dispatcher.submit(request)
            wait_for(lambda: not service.journal.writable)
            assert ready(worker.url) == 503                    # no longer claims it can work
            assert service.dispatcher.wait_idle(60)            # the rotation stopped at its next write
            assert service.journal.get(request.rotation_id).outcome is None
            pats = world.pats()                                # nobody is left without a working token
            for cluster in CLUSTERS:
                held = world.pat_id(world.sink_value(cluster))
                assert held is not None and pats[held]["status"] == "active"
            full.clear()                                       # space returns
            wait_for(lambda: service.journal.get(request.rotation_id).outcome is not None, timeout=90)
            record = service.journal.get(request.rotation_id)
            assert record.outcome == "succeeded", record.error
            assert ready(worker.url) == 200
            assert service.metrics.registry.get_sample_value("patrol_journal_write_errors_total")
    finally:
        service.stop()
        adapters.close()
        world.reopen()
    world.remember_values()
    new_id = world.assert_converged()
    assert record.new_authorization_id == new_id
    assert world.pats()[seed]["status"] == "revoked"
    # The refresh switch makes each KEDA's first poll after the revoke fail once and recover in
    # the same poll (KEDA's refresh-and-retry); no poll may fail beyond that.
    assert world.failed_polls() == failed_polls
