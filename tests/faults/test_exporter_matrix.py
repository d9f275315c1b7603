"""The exporter's rows of the fault matrix (tests/faults/matrix.py), in process: the exporter as
``patrol exporter`` builds it (production clients and backoffs) against one sandbox for the
module, its sources refreshed by hand so each case sees exactly one refresh under the fault.

Each case: a fresh exporter refreshes every source once (the Entra cases skip this, so the fault
meets the first sign-in); the fault is injected and the call's source refreshed once; the source's
health (``patrol_source_up``), the metrics it serves and the sandbox's request log must show the
expected outcome; the other sources stay up. The fault is cleared and the next refresh must bring
the source back with every value it had. The exporter writes nothing, so a fault here cannot
cost a consumer its token or leave a PAT behind: the world's harm counters are checked anyway.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from core.config import Config, load_config
from core.retry import Backoff
from exporter.assembly import CoreClients, Exporter, build
from exporter.source import SourceCollector
from sandbox.http import RequestRecord
from tests.faults.matrix import CASES, Case, Expect, Fault
from tests.faults.rig import RETRY_AFTER, Rig, fault_kwargs, module_rig, refused_config

EXPORTER_CASES = [c for c in CASES if c.call.component == "exporter"]
MSAL_THROTTLE = 5.2
# One quick retry instead of the production backoffs (0.5 s, 1 s, 2 s): the same retry path, and
# a 429's Retry-After still wins over the delay.
QUICK = Backoff(delays=(0.2,))
FAULT_STATUS = {Fault.LATENCY: 0, Fault.STATUS_5XX: 503, Fault.THROTTLE: 429, Fault.UNAUTHORIZED: 401}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    yield from module_rig(tmp_path_factory, "faults-exporter", job_interval=None)


def exporter_config(rig: Rig) -> Config:
    """The sandbox's config; validity probes never served from the cache (one per refresh)."""
    cfg = load_config(rig.sb.ready["config"])
    return replace(cfg, exporter=replace(cfg.exporter, validity_interval=timedelta(milliseconds=100)))


@contextlib.contextmanager
def exporter(cfg: Config) -> Iterator[Exporter]:
    made = build(cfg, CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK), watch=False)
    try:
        yield made
    finally:
        made.close()


def values(made: Exporter, source: SourceCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The source's own samples (not its health), as a scrape would read them."""
    made.exposition.invalidate()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in source.samples() for s in family.samples}


def source_up(made: Exporter, name: str) -> float | None:
    made.exposition.invalidate()
    return made.exposition.registry.get_sample_value("patrol_source_up", {"source": name})


def pat_valid(made: Exporter) -> dict[str, float]:
    made.exposition.invalidate()
    return {s.labels["sink"]: s.value for family in made.exposition.registry.collect()
            if family.name == "patrol_pat_valid" for s in family.samples}


def retry_of(seen: list[RequestRecord], faulted: RequestRecord) -> RequestRecord | None:
    """The next request for the same resource with the same credential (sources fan out)."""
    later = [r for r in seen if r.time > faulted.time and r.path == faulted.path and r.query == faulted.query
             and r.headers.get("Authorization") == faulted.headers.get("Authorization")]
    return later[0] if later else None


@pytest.fixture(scope="module")
def shared(rig: Rig) -> Iterator[Exporter]:
    """One exporter for the cases that need no fresh sign-in and no other configuration."""
    with exporter(exporter_config(rig)) as made:
        yield made


@pytest.mark.parametrize("case", EXPORTER_CASES, ids=lambda c: c.id)
def test_exporter_fault(rig: Rig, shared: Exporter, case: Case, tmp_path: Path) -> None:
    before = rig.baseline()
    cfg = exporter_config(rig)
    first_sign_in = case.call.host == "entra"
    if case.fault is Fault.REFUSED:
        cfg = refused_config(cfg, case.call.host, tmp_path)
    own = first_sign_in or case.fault is Fault.REFUSED
    with exporter(cfg) if own else contextlib.nullcontext(shared) as made:
        source = next(s for s in made.sources if s.name.startswith(case.call.source))
        others = [s for s in made.sources if s is not source]
        if not first_sign_in:
            made.refresher.refresh_once()
            if case.fault is not Fault.REFUSED:
                assert all(s.health.up for s in made.sources), [(s.name, s.health) for s in made.sources]
        kept = values(made, source)
        time.sleep(0.15)                       # past the validity probes' cache (80 ms here)
        fault_id = (rig.world.fault(**fault_kwargs(case.call, case.fault))
                    if case.fault is not Fault.REFUSED else None)
        started = time.time()
        try:
            outcome = source.refresh()
        finally:
            if fault_id is not None:
                with contextlib.suppress(KeyError):
                    rig.world.call(rig.sb.world.faults.remove, fault_id)
        seen = rig.requests(case.call, started)
        codes = [r.status for r in seen]
        if fault_id is not None:
            assert FAULT_STATUS[case.fault] in codes, f"the fault never hit {case.call.id}: {codes}"

        if case.expect is Expect.SOURCE_UP:
            assert outcome.ok and source.health.up, source.health
            faulted = seen[codes.index(FAULT_STATUS[case.fault])]
            retried = retry_of(seen, faulted)
            assert retried is not None and 200 <= retried.status < 300, f"not retried: {codes}"
            if case.fault is Fault.THROTTLE:
                assert retried.time - (faulted.time + faulted.duration) >= RETRY_AFTER - 0.05
        elif case.expect is Expect.SOURCE_DOWN:
            assert not outcome.ok and not source.health.up, source.health
            assert source_up(made, source.name) == 0.0
            assert values(made, source) == kept, "a down source must keep its last values"
            assert source.health.reason and "Traceback" not in source.health.reason
        elif case.expect is Expect.TOKEN_INVALID:
            assert outcome.ok and source.health.up
            assert 0.0 in pat_valid(made).values(), pat_valid(made)
        if case.fault is not Fault.REFUSED:
            for other in others:                   # a fault on one call is that source's alone
                if other.health.attempted and not first_sign_in:
                    assert other.health.up, (other.name, other.health)

        if case.fault is not Fault.REFUSED:       # the fault is gone: the next refresh
            if first_sign_in and case.fault in (Fault.STATUS_5XX, Fault.THROTTLE):
                # MSAL answers a token request from its own cache for Retry-After (5 s without
                # one) after a 429/5xx from the token endpoint (msal/throttled_http_client.py
                # RetryAfterParser): a refresh sooner fails without calling Entra.
                time.sleep(MSAL_THROTTLE)
            time.sleep(0.15)                   # past the validity probes' cache (80 ms here)
            again = source.refresh()
            assert again.ok and source.health.up, source.health
            assert source_up(made, source.name) == 1.0
            if not first_sign_in:
                assert set(values(made, source)) == set(kept), "the source came back without some series"
            assert set(pat_valid(made).values()) <= {1.0}, pat_valid(made)
    if case.fault is Fault.REFUSED:               # the host is back: the exporter restarted on it
        with exporter(exporter_config(rig)) as fixed:
            fixed.refresher.refresh_once()
            assert all(s.health.up for s in fixed.sources), [(s.name, s.health) for s in fixed.sources]
    assert rig.harm() == before.harm and rig.world.failed_polls() == before.failed_polls
