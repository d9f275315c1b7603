"""The saga's rows of the fault matrix (tests/faults/matrix.py), in process: the real worker
service (planner, dispatcher, saga, journal, metrics) and the real core clients against one
sandbox for the module, over real HTTP(S).

Each case: the world is converged; the fault is injected (a sandbox fault on the call, or the
call's host pointed at a closed port); a fresh worker rotates the call's token (``force``, as
``POST /rotations`` does); the record (what ``GET /rotations`` serves), the metrics
(``patrol_rotations_total``) and the sandbox's request log must show the expected outcome; no
sink may be left holding a PAT ADO refuses. The fault is cleared; a failed rotation is followed
by the next one, which must succeed. Then the invariants of tests/faults/rig.py: sinks converge
on one active PAT, no patrol PAT is left active and unused, KEDA never failed a poll, no harm.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from tests.faults.matrix import CASES, FAULTED, Case, Expect, Fault
from tests.faults.rig import (
    REFUSED_SETTINGS,
    RETRY_AFTER,
    Attempt,
    Rig,
    fault_kwargs,
    metric,
    module_rig,
    refused_config,
)

SAGA_CASES = [c for c in CASES if c.call.component == "saga" and c.fault is not Fault.SIGKILL
              and c.expect is not Expect.PAUSED]
LEASE_CASES = [c for c in CASES if c.expect is Expect.PAUSED]
FAULT_STATUS = {Fault.LATENCY: 0, Fault.STATUS_5XX: 503, Fault.THROTTLE: 429, Fault.UNAUTHORIZED: 401}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    yield from module_rig(tmp_path_factory, "faults-saga")


def rotations(attempt: Attempt, token: str, result: str) -> float:
    return metric(attempt.metrics, "patrol_rotations_total", token=token, result=result)


@pytest.mark.parametrize("case", SAGA_CASES, ids=lambda c: c.id)
def test_saga_fault(rig: Rig, case: Case, tmp_path: Path) -> None:
    token = case.call.token
    rig.world.remember_values()
    rig.world.assert_converged(token)                 # what the previous case left
    before = rig.baseline()
    sinks_before = rig.sink_values(token)
    if case.fault is Fault.REFUSED:
        broken = refused_config(rig.config, case.call.host, tmp_path)
        with rig.worker(broken, state_dir=tmp_path / "state", settings=REFUSED_SETTINGS) as service:
            first = rig.rotate(service, token, case.id)
    else:
        fault_id = rig.world.fault(**fault_kwargs(case.call, case.fault))
        try:
            with rig.worker() as service:
                first = rig.rotate(service, token, case.id)
        finally:
            with contextlib.suppress(KeyError):       # a counted fault removes itself
                rig.world.call(rig.sb.world.faults.remove, fault_id)
    seen = rig.requests(case.call, before.started)
    codes = [r.status for r in seen]
    record = first.json
    assert record["outcome"] in ("succeeded", "failed"), record
    assert rotations(first, token, str(record["outcome"])) == 1.0, first.metrics
    # No consumer is left without a working token, whatever happened.
    rig.sinks_hold_active_pats(token)

    if case.fault is not Fault.REFUSED:
        assert FAULT_STATUS[case.fault] in codes, f"the fault never hit {case.call.id}: {codes}"
    if case.expect in (Expect.RETRIED, Expect.THROTTLED, Expect.TOLERATED):
        assert record["outcome"] == "succeeded", record["error"]
    if case.expect in (Expect.RETRIED, Expect.THROTTLED):
        faulted = codes.index(FAULT_STATUS[case.fault])
        assert any(200 <= c < 300 for c in codes[faulted + 1:]), f"{case.call.id} was not retried: {codes}"
    if case.expect is Expect.THROTTLED:
        throttled, retried = seen[faulted], seen[faulted + 1]
        waited = retried.time - (throttled.time + throttled.duration)
        assert waited >= RETRY_AFTER - 0.05, f"retried {waited:.2f}s after a 429 with Retry-After {RETRY_AFTER:g}"
    if case.expect in (Expect.FAILS_CLEAN, Expect.FAILS_SAFE):
        assert record["outcome"] == "failed" and record["error"], record
        pats = rig.world.pats()
        for old in filter(None, str(record["old_authorization_id"] or "").split(",")):
            assert pats[old]["status"] == "active", f"the previous PAT {old} was revoked by a failed rotation"
    if case.expect is Expect.FAILS_CLEAN:
        assert rig.sink_values(token) == sinks_before, "a rotation that failed clean changed a sink"
        new = record["new_authorization_id"]
        if new:
            assert rig.world.pats()[str(new)]["status"] != "active", f"the new PAT {new} was left active"
    if case.expect is Expect.FAILS_SAFE:
        assert rig.sink_values(token) != sinks_before, "failed safe means after delivery"
    if case.expect is Expect.UNCONFIRMED:
        assert record["outcome"] == "failed" and str(record["error"]).startswith("confirm:"), record
        new, pats = str(record["new_authorization_id"]), rig.world.pats()
        assert {rig.world.pat_id(v) for v in rig.sink_values(token)} == {new}
        for old in filter(None, str(record["old_authorization_id"] or "").split(",")):
            assert pats[old]["status"] == "revoked"

    if record["outcome"] == "failed":                  # the fault is gone: the next rotation
        with rig.worker() as service:
            second = rig.rotate(service, token, f"{case.id}: after the fault")
        assert second.json["outcome"] == "succeeded", second.json["error"]
        assert rotations(second, token, "succeeded") == 1.0
    rig.converged(token, before)


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        time.sleep(0.05)


@pytest.mark.parametrize("case", LEASE_CASES, ids=lambda c: c.id)
def test_lease_fault(rig: Rig, case: Case) -> None:
    """The worker leads through a Lease; its renewals start failing right after delivery and go on
    failing until the fault is cleared: the rotation must pause, then resume and succeed."""
    token = case.call.token
    rig.world.remember_values()
    rig.world.assert_converged(token)
    before = rig.baseline()
    fault_ids: list[str] = []
    lost = threading.Event()

    def after_step(rotation_id: str, step: str) -> None:
        if step == "deliver" and not fault_ids:          # once: the resumed run delivers again
            fault_ids.append(rig.world.fault(**{**fault_kwargs(case.call, case.fault), "remaining": None}))
            wait_for("leadership lost", lambda: not service.leadership.is_leader(), timeout=15)
            lost.set()

    try:
        with rig.worker(lease_cluster=FAULTED.name, after_step=after_step) as service:
            service.start()
            wait_for("leading", service.leadership.is_leader)
            first = rig.rotate(service, token, case.id)
            assert lost.is_set() and first.record.outcome is None, first.json      # paused, not failed
            assert first.record.step("switch").status != "done", "the rotation went on without the Lease"
            assert metric(first.metrics, "patrol_rotations_total", token=token, result="failed") == 0.0
            assert not service.leadership.is_leader()
            rig.sinks_hold_active_pats(token)
            codes = [r.status for r in rig.requests(case.call, before.started)]
            assert FAULT_STATUS[case.fault] in codes, codes
            rig.world.call(rig.sb.world.faults.remove, fault_ids[0])
            wait_for("resumed and finished", lambda: service.journal.get(first.record.id).outcome is not None,
                     timeout=60)
            assert service.dispatcher.wait_idle(30)
            record = service.journal.get(first.record.id)
            assert record.outcome == "succeeded", record.error
            metrics = generate_latest(service.metrics.registry).decode()
            assert metric(metrics, "patrol_rotations_total", token=token, result="succeeded") == 1.0
    finally:
        for fault_id in fault_ids:
            with contextlib.suppress(KeyError):
                rig.world.call(rig.sb.world.faults.remove, fault_id)
    assert rig.converged(token, before) == record.new_authorization_id
