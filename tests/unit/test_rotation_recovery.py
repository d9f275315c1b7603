"""Recovery over in-memory fakes: resume, orphan PATs, grace, protection, schedule, leadership."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rotation_fakes import Clock, FakeWorld, make_config, seed

from core.errors import UnavailableError
from core.secret import Secret
from remediation.journal import Journal
from remediation.leadership import Leadership
from remediation.metrics import WorkerMetrics
from remediation.planner import Planner, RotationRequest, TokenLocks
from remediation.recovery import Recovery


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Iterator[Journal]:
    j = Journal(tmp_path / "j.db", clock=clock)
    yield j
    j.close()


class Harness:
    def __init__(self, journal: Journal, clock: Clock, *, grace: float = 600, may_act: bool = True) -> None:
        self.cfg = make_config()
        self.world = FakeWorld(clock)
        self.old = seed(self.world, self.cfg)
        self.journal = journal
        self.clock = clock
        self.planner = Planner(["keda"], journal, cooldown=timedelta(minutes=10), clock=clock)
        self.submitted: list[RotationRequest] = []
        self.accept = True
        self.recovery = Recovery(self.cfg, self.world, journal, self.planner, submit=self.submit,
                                 may_act=lambda: may_act, clock=clock, sleep=clock.sleep, orphan_grace=grace)

    def submit(self, request: RotationRequest) -> bool:
        self.submitted.append(request)
        return self.accept

    def patrol_pat(self, rotation_id: str, age: float = 3600) -> str:
        row = self.world.pats_api.add(f"patrol-keda-{rotation_id}", ("vso.agentpools_manage",))
        row.info = replace(row.info, valid_from=datetime.fromtimestamp(self.clock.now - age, UTC))
        return row.info.authorization_id


def test_unfinished_rotations_are_resumed_under_the_lock(journal: Journal, clock: Clock) -> None:
    h = Harness(journal, clock)
    journal.create_rotation("aaaaaaaaaaaa", "keda", trigger="alert", reason="x", received_at=5.0)
    journal.create_rotation("bbbbbbbbbbbb", "gone", trigger="manual", reason="x")
    report = h.recovery.reconcile()
    assert report.resumed == ["aaaaaaaaaaaa"]
    [request] = h.submitted
    assert (request.rotation_id, request.trigger, request.received_at) == ("aaaaaaaaaaaa", "alert", 5.0)
    assert h.planner.locks.held("keda")
    assert journal.get("bbbbbbbbbbbb").outcome == "failed"
    assert "no longer configured" in journal.get("bbbbbbbbbbbb").error
    # held lock: a second reconcile neither resumes again nor sweeps the token
    assert h.recovery.reconcile().resumed == []


def test_refused_submit_releases_the_lock(journal: Journal, clock: Clock) -> None:
    h = Harness(journal, clock)
    h.accept = False
    journal.create_rotation("aaaaaaaaaaaa", "keda", trigger="alert", reason="x")
    assert h.recovery.reconcile().resumed == []
    assert not h.planner.locks.held("keda")
    assert journal.get("aaaaaaaaaaaa").outcome is None


def test_orphans_in_no_sink_are_revoked(journal: Journal, clock: Clock) -> None:
    h = Harness(journal, clock)
    journal.create_rotation("aaaaaaaaaaaa", "keda", trigger="alert", reason="x")
    journal.finish("aaaaaaaaaaaa", "succeeded")
    finished = h.patrol_pat("aaaaaaaaaaaa", age=5)          # known, finished: revoked at once
    unknown_old = h.patrol_pat("cccccccccccc", age=3600)     # unknown to the journal, old: revoked
    unknown_young = h.patrol_pat("dddddddddddd", age=5)      # unknown, young: kept for now
    other_token = h.world.pats_api.add("patrol-keda-extra-eeeeeeeeeeee", ("x",)).info.authorization_id
    report = h.recovery.reconcile()
    assert sorted(report.revoked) == sorted([finished, unknown_old])
    assert report.kept == [unknown_young]
    assert other_token not in h.world.pats_api.revoked
    assert h.old.info.authorization_id not in h.world.pats_api.revoked
    assert [d.action for d in journal.decisions()] == ["revoke", "revoke"]


def test_a_pat_in_a_sink_is_never_an_orphan(journal: Journal, clock: Clock) -> None:
    h = Harness(journal, clock)
    pat = h.patrol_pat("aaaaaaaaaaaa")
    spec = h.cfg.tokens[0].sinks[0]
    h.world.clusters["c1"].secrets[("ado", "pat")].annotations["patrol.io/authorization-id"] = pat
    assert spec.kind == "kubernetes-secret"
    assert h.recovery.reconcile().revoked == []


def test_unfinished_rotations_own_pat_is_left_to_the_resume(journal: Journal, clock: Clock) -> None:
    h = Harness(journal, clock)
    journal.create_rotation("aaaaaaaaaaaa", "keda", trigger="alert", reason="x")
    pat = h.patrol_pat("aaaaaaaaaaaa")
    h.planner.locks.try_acquire("other")                     # unrelated lock
    report = h.recovery.reconcile()
    assert report.resumed == ["aaaaaaaaaaaa"] and pat not in h.world.pats_api.revoked


def test_previous_pat_of_an_unproven_failure_is_protected(journal: Journal, clock: Clock) -> None:
    h = Harness(journal, clock)
    previous = h.patrol_pat("aaaaaaaaaaaa")
    journal.create_rotation("bbbbbbbbbbbb", "keda", trigger="alert", reason="x")
    journal.set_authorizations("bbbbbbbbbbbb", old=previous)
    journal.finish("bbbbbbbbbbbb", "failed", "verify: not verified")
    report = h.recovery.reconcile()
    assert report.kept == [previous] and report.revoked == []
    assert any("failed before the new one was proven" in w for w in report.warnings)


def test_journal_disagreeing_with_the_sinks_is_reported(journal: Journal, clock: Clock) -> None:
    h = Harness(journal, clock)
    journal.create_rotation("aaaaaaaaaaaa", "keda", trigger="alert", reason="x")
    journal.set_authorizations("aaaaaaaaaaaa", new="not-in-any-sink")
    journal.finish("aaaaaaaaaaaa", "succeeded")
    report = h.recovery.reconcile()
    assert any("changed outside patrol" in w for w in report.warnings)


def test_read_failures_skip_the_token_with_a_warning(journal: Journal, clock: Clock) -> None:
    h = Harness(journal, clock)
    orphan = h.patrol_pat("cccccccccccc")
    h.world.clusters["c2"].faults["read_secret"] = [UnavailableError("down")] * 4
    report = h.recovery.reconcile()
    assert orphan not in h.world.pats_api.revoked
    assert any("could not read the world" in w for w in report.warnings)


def test_due_renewal_starts_a_scheduled_rotation(journal: Journal, clock: Clock) -> None:
    h = Harness(journal, clock)
    # Key Vault holds a PAT expiring in 6 days; renew_before is 7 days.
    h.world.vault.set_secret("ado-pat", Secret(h.old.value), expires_on=clock.dt() + timedelta(days=6),
                             tags={"authorizationId": h.old.info.authorization_id})
    report = h.recovery.reconcile()
    [request] = h.submitted
    assert report.scheduled == [request.rotation_id]
    assert request.trigger == "schedule" and "renewal due" in request.reason
    # not due: nothing
    h2 = Harness(journal, clock)
    h2.planner.locks.release("keda")
    h.planner.locks.release("keda")
    journal.finish(request.rotation_id, "skipped")
    h2.world.vault.set_secret("ado-pat", Secret(h2.old.value), expires_on=clock.dt() + timedelta(days=20),
                              tags={})
    assert h2.recovery.reconcile().scheduled == []


def test_nothing_happens_without_the_lease(journal: Journal, clock: Clock) -> None:
    h = Harness(journal, clock, may_act=False)
    journal.create_rotation("aaaaaaaaaaaa", "keda", trigger="alert", reason="x")
    h.patrol_pat("cccccccccccc")
    report = h.recovery.reconcile()
    assert report.resumed == [] and report.revoked == [] and h.world.pats_api.calls == []


class FakeLock:
    identity = "me"
    duration_seconds = 10

    def __init__(self) -> None:
        self.answers: list[bool | Exception] = []
        self.released = 0
        self.other: str | None = None

    def try_acquire_or_renew(self) -> bool:
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer

    def release(self) -> None:
        self.released += 1

    def holder(self) -> str | None:
        return self.other


def test_leadership_is_judged_conservatively() -> None:
    now = [100.0]
    lock = FakeLock()
    leadership = Leadership(lock, monotonic=lambda: now[0])
    changes: list[bool] = []
    leadership.on_change(changes.append)
    assert not leadership.is_leader()
    assert leadership.tick() and leadership.is_leader()
    now[0] += 9.9
    assert leadership.is_leader()
    now[0] += 0.2                                   # no renewal for a whole duration: not leader
    assert not leadership.is_leader()
    lock.answers = [UnavailableError("api down")]
    assert not leadership.tick() and not leadership.is_leader()
    lock.answers = [True, False]
    assert leadership.tick() and not leadership.tick()
    assert changes == [True, False, True, False]
    assert Leadership(None).is_leader()


def test_leadership_remembers_the_holder_and_whether_the_api_answers() -> None:
    now = [100.0]
    lock = FakeLock()
    leadership = Leadership(lock, monotonic=lambda: now[0], renew_every=1.0)
    assert leadership.api_reachable() and leadership.holder() is None     # before the first attempt
    lock.answers = [True]
    leadership.tick()
    assert leadership.holder() == "me"
    lock.answers = [False]
    lock.other = "worker-b"
    leadership.tick()
    assert leadership.holder() == "worker-b" and not leadership.is_leader()
    assert leadership.api_reachable()                                      # a standby is reachable
    lock.answers = [UnavailableError("api down")]
    leadership.tick()
    assert leadership.holder() is None and leadership.api_reachable()     # one miss is tolerated
    now[0] += 9.9
    assert leadership.api_reachable()
    now[0] += 0.2                                                           # a whole duration unanswered
    assert not leadership.api_reachable()
    lock.answers = [False]
    leadership.tick()
    assert leadership.api_reachable()
    down = FakeLock()
    down.answers = [UnavailableError("api down")]
    never = Leadership(down, monotonic=lambda: now[0])
    never.tick()
    assert not never.api_reachable(), "never reached the API: not ready"


def test_leadership_metric_is_read_at_scrape_time() -> None:
    now = [100.0]
    leadership = Leadership(FakeLock(), monotonic=lambda: now[0])
    metrics = WorkerMetrics()
    metrics.watch_leadership(leadership)
    assert metrics.registry.get_sample_value("patrol_worker_leader") == 0.0
    leadership.tick()
    assert metrics.registry.get_sample_value("patrol_worker_leader") == 1.0
    now[0] += 10.0                                                          # the lease lapsed unrenewed
    assert metrics.registry.get_sample_value("patrol_worker_leader") == 0.0
    alone = WorkerMetrics()
    alone.watch_leadership(Leadership(None))
    assert alone.registry.get_sample_value("patrol_worker_leader") == 1.0


def test_leadership_thread_renews_and_releases() -> None:
    lock = FakeLock()
    leadership = Leadership(lock, renew_every=0.01)
    leadership.start()
    try:
        deadline = time.monotonic() + 5
        while not leadership.is_leader() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert leadership.is_leader()
    finally:
        leadership.stop()
    assert lock.released == 1 and not leadership.is_leader()


def test_previous_pat_of_a_rotation_draining_in_another_process_is_kept(journal: Journal, clock: Clock,
                                                                        tmp_path: Path) -> None:
    h = Harness(journal, clock)
    h.planner.locks = TokenLocks(tmp_path / "locks")
    elsewhere = TokenLocks(tmp_path / "locks")                 # `patrol rotate` beside the worker
    assert elsewhere.try_acquire("keda")
    previous = h.patrol_pat("aaaaaaaaaaaa")                    # in no sink any more: delivery is done
    journal.create_rotation("bbbbbbbbbbbb", "keda", trigger="manual", reason="x")
    journal.set_authorizations("bbbbbbbbbbbb", old=previous)
    journal.start_step("bbbbbbbbbbbb", "drain")
    report = h.recovery.reconcile()
    assert report.resumed == [] and previous in report.kept
    assert previous not in h.world.pats_api.revoked
    elsewhere.release("keda")
