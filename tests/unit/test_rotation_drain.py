"""Revoke after drain, emergencies and the confirm step, over the in-memory fakes.

The old PAT must stay valid while anything that fetched it before delivery still runs (agent
Jobs, sink readers with a refresh interval, pipeline runs), bounded by the drain maximum and the
PAT's expiry; a restart resumes the same drain; an invalid or compromised old PAT skips it; and
after the revoke every consumer must be shown to be served, or the rotation fails.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rotation_fakes import Clock, FakeWorld, agent_job, make_config, seed

from core import config
from core.ado import Build
from core.retry import Backoff
from remediation.dispatch import Dispatcher
from remediation.journal import STEPS, Journal
from remediation.metrics import WorkerMetrics
from remediation.planner import COMPROMISED_TARGET, Planner, RotationRequest, TokenLocks
from remediation.saga import RotationSaga, SagaSettings, StepEvent

FAST = SagaSettings(verify_deadline=60, verify_interval=1, verify_settle=5, drain_interval=5, secret_settle=3,
                    api_backoff=Backoff(delays=(0.1, 0.2)), deliver_backoff=Backoff(delays=(0.5, 1.0)))
RID = "0123456789ab"


class Crash(BaseException):
    """The process dying mid-step."""


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3", clock=clock)
    yield j
    j.close()


def start(journal: Journal, clock: Clock, rid: str = RID) -> RotationRequest:
    journal.create_rotation(rid, "keda", trigger="manual", reason="test", received_at=clock.now)
    return RotationRequest(token="keda", trigger="manual", reason="test", rotation_id=rid, received_at=clock.now)


def tune(cfg: config.Config, **token_changes: Any) -> config.Config:
    return replace(cfg, tokens=(replace(cfg.tokens[0], **token_changes),))


def with_kv_refresh(cfg: config.Config, seconds: int) -> config.Config:
    sinks = tuple(replace(s, refresh_interval=timedelta(seconds=seconds)) if isinstance(s, config.KeyVaultSink)
                  else s for s in cfg.tokens[0].sinks)
    return tune(cfg, sinks=sinks)


class Steps:
    """Collects StepEvents and runs ``on_drain_round(n)`` on each drain round."""

    def __init__(self, on_drain_round: Callable[[int], None] | None = None) -> None:
        self.events: list[StepEvent] = []
        self.rounds = 0
        self._hook = on_drain_round

    def __call__(self, event: StepEvent) -> None:
        self.events.append(event)
        if event.step == "drain" and event.status == "running" and event.detail:
            self.rounds += 1
            if self._hook is not None:
                self._hook(self.rounds)

    def details(self, step: str, status: str = "running") -> list[str]:
        return [e.detail for e in self.events if e.step == step and e.status == status and e.detail]


def saga(cfg: config.Config, world: FakeWorld, journal: Journal, clock: Clock, **kw: Any) -> RotationSaga:
    return RotationSaga(cfg, world, journal, settings=kw.pop("settings", FAST), clock=clock, sleep=clock.sleep, **kw)


def delivered(journal: Journal, rid: str = RID) -> float:
    [target] = [t for t in journal.get(rid).targets if t.step == "drain" and t.target == "delivered-at"]
    return float(target.detail)


def revoked_at(journal: Journal, rid: str = RID) -> float:
    finished = journal.get(rid).step("revoke").finished_at
    assert finished is not None
    return finished


# --------------------------------------------------------------------------- what the drain waits for


def test_agent_jobs_started_before_delivery_keep_the_old_pat_valid(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    c1 = world.clusters["c1"]
    c1.jobs[("ado", "agent")] = [agent_job("agent-old", clock.dt() - timedelta(minutes=3)),
                                 agent_job("agent-done", clock.dt() - timedelta(minutes=9),
                                           ended=clock.dt() - timedelta(minutes=1))]

    def job_ends(round_: int) -> None:
        assert old.info.authorization_id not in world.pats_api.revoked, "revoked while a Job holds it"
        if round_ == 3:
            # meanwhile KEDA started a Job after delivery: it got the new PAT, nothing to wait for
            c1.jobs[("ado", "agent")] = [agent_job("agent-old", clock.dt() - timedelta(minutes=4), ended=clock.dt()),
                                         agent_job("agent-new", clock.dt() - timedelta(seconds=5))]

    steps = Steps(job_ends)
    assert saga(cfg, world, journal, clock, on_step=steps).run(start(journal, clock)) == "succeeded"
    assert steps.rounds == 3
    assert steps.details("drain")[0] == ("waiting (3600s left at most): 1 agent Job(s) of c1/ado/agent started "
                                         "before delivery still running")
    assert c1.job_selectors[0] == "scaledjob.keda.sh/name=agent"
    record = journal.get(RID)
    assert record.step("drain").detail.startswith("nothing holds the previous PAT any more (15s after delivery")
    assert revoked_at(journal) >= delivered(journal) + 15
    assert old.info.authorization_id in world.pats_api.revoked
    assert [s.name for s in record.steps] == list(STEPS)


def test_a_job_started_within_the_secret_settle_still_counts(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    c2 = world.clusters["c2"]

    def kubelet_lag(event: StepEvent) -> None:
        if event.step == "deliver" and event.status == "done":
            # started 1 s after delivery: its kubelet may still have served the old Secret value
            c2.jobs[("ado", "agent")] = [agent_job("agent-lag", clock.dt() + timedelta(seconds=1))]
        if event.step == "drain" and event.status == "running" and event.detail:
            c2.jobs[("ado", "agent")] = []

    assert saga(cfg, world, journal, clock, on_step=kubelet_lag).run(start(journal, clock)) == "succeeded"
    assert journal.get(RID).step("drain").attempts == 1
    assert revoked_at(journal) > delivered(journal)
    assert "(5s after delivery, 2 round(s))" in journal.get(RID).step("drain").detail


def test_sink_readers_keep_it_for_their_refresh_interval(journal: Journal, clock: Clock) -> None:
    cfg, world = with_kv_refresh(make_config(), 40), FakeWorld(clock)
    seed(world, cfg)
    steps = Steps()
    assert saga(cfg, world, journal, clock, on_step=steps).run(start(journal, clock)) == "succeeded"
    first = steps.details("drain")[0]
    assert "readers of keyvault/kv.example/ado-pat:" in first and "s left of their refresh interval" in first
    assert revoked_at(journal) >= delivered(journal) + 40


def test_pipeline_runs_started_before_delivery_keep_it(journal: Journal, clock: Clock) -> None:
    cfg = tune(make_config(consumers=False),
               pipeline=config.PipelineCheck(project="P", definition="daily-checks"))
    world = FakeWorld(clock)
    seed(world, cfg)
    running = Build(id=1, result=None, status="inProgress", queue_time=clock.dt() - timedelta(minutes=2),
                    start_time=clock.dt() - timedelta(minutes=1), finish_time=None, definition_id=42,
                    definition_name="daily-checks")
    world.builds = [running]

    def run_ends(round_: int) -> None:
        if round_ == 2:
            world.builds = [replace(running, status="completed", finish_time=clock.dt())]

    steps = Steps(run_ends)
    assert saga(cfg, world, journal, clock, on_step=steps).run(start(journal, clock)) == "succeeded"
    assert steps.details("drain")[0].endswith("1 run(s) of pipeline daily-checks started before delivery still running")
    assert steps.rounds == 2


# --------------------------------------------------------------------------- its bounds


def test_the_drain_maximum_is_not_a_failure(journal: Journal, clock: Clock,
                                            caplog: pytest.LogCaptureFixture) -> None:
    cfg, world = tune(make_config(), drain_max=timedelta(seconds=120)), FakeWorld(clock)
    old = seed(world, cfg)
    world.clusters["c1"].jobs[("ado", "agent")] = [agent_job("stuck", clock.dt() - timedelta(minutes=1))]
    with caplog.at_level(logging.WARNING, logger="patrol.saga"):
        assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    detail = journal.get(RID).step("drain").detail
    assert detail.startswith("drain maximum reached (drain_max, 120s after delivery) while still waiting: "
                             "1 agent Job(s) of c1/ado/agent")
    assert detail.endswith("; revoking anyway")
    assert any("drain maximum reached" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert 120 <= revoked_at(journal) - delivered(journal) < 125
    assert old.info.authorization_id in world.pats_api.revoked


def test_default_maximum_is_the_longest_active_deadline(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(keyvault=False), FakeWorld(clock)
    seed(world, cfg)
    world.clusters["c1"].scalers[("ado", "scaledjobs", "agent")].active_deadline_seconds = 300
    world.clusters["c2"].scalers[("ado", "scaledjobs", "agent")].active_deadline_seconds = 200
    world.clusters["c2"].jobs[("ado", "agent")] = [agent_job("stuck", clock.dt(), deadline=200)]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    assert "activeDeadlineSeconds of ScaledJob c1/ado/agent, 300s after delivery" in \
        journal.get(RID).step("drain").detail
    assert 300 <= revoked_at(journal) - delivered(journal) < 305


def test_the_maximum_is_capped_by_the_old_pats_expiry(journal: Journal, clock: Clock) -> None:
    cfg, world = tune(make_config(), drain_max=timedelta(hours=1)), FakeWorld(clock)
    old = seed(world, cfg)
    old.info = replace(old.info, valid_to=clock.dt() + timedelta(seconds=90))
    world.clusters["c1"].jobs[("ado", "agent")] = [agent_job("stuck", clock.dt())]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    assert "drain maximum reached (the previous PAT's expiry" in journal.get(RID).step("drain").detail
    assert revoked_at(journal) <= old.info.valid_to.timestamp() + 5


def test_a_restart_mid_drain_resumes_the_same_drain(journal: Journal, clock: Clock, tmp_path: Path) -> None:
    cfg, world = tune(make_config(), drain_max=timedelta(seconds=100)), FakeWorld(clock)
    seed(world, cfg)
    world.clusters["c1"].jobs[("ado", "agent")] = [agent_job("long", clock.dt() - timedelta(minutes=1))]

    def crash(round_: int) -> None:
        if round_ == 2:
            raise Crash("killed mid-drain")

    request = start(journal, clock)
    with pytest.raises(Crash):
        saga(cfg, world, journal, clock, on_step=Steps(crash)).run(request)
    first_delivery = delivered(journal)
    running = journal.get(RID)
    assert running.state == "drain" and running.step("drain").status == "running"
    assert "1 agent Job(s) of c1/ado/agent" in running.step("drain").detail        # visible while it waits
    clock.sleep(60)                                                                   # down for a minute
    with Journal(tmp_path / "journal.sqlite3", clock=clock) as reopened:
        assert saga(cfg, world, reopened, clock).run(request) == "succeeded"
        assert delivered(reopened) == first_delivery
        assert 100 <= revoked_at(reopened) - first_delivery < 105      # not 100 s after the restart
        assert reopened.get(RID).step("drain").attempts == 2


def test_a_worker_that_loses_the_lease_stops_draining(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.clusters["c1"].jobs[("ado", "agent")] = [agent_job("long", clock.dt())]
    leader = [True]
    steps = Steps(lambda n: leader.__setitem__(0, n < 2))
    assert saga(cfg, world, journal, clock, on_step=steps, may_continue=lambda: leader[0]).run(
        start(journal, clock)) is None
    assert journal.get(RID).outcome is None and old.info.authorization_id not in world.pats_api.revoked


def test_the_drain_gauge_is_1_while_draining(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    world.clusters["c1"].jobs[("ado", "agent")] = [agent_job("long", clock.dt())]
    metrics = WorkerMetrics()
    metrics.declare_tokens(["keda"])
    seen: list[float | None] = []

    def look(round_: int) -> None:
        seen.append(metrics.registry.get_sample_value("patrol_rotation_draining", {"token": "keda"}))
        world.clusters["c1"].jobs[("ado", "agent")] = []

    assert saga(cfg, world, journal, clock, on_step=Steps(look), metrics=metrics).run(
        start(journal, clock)) == "succeeded"
    assert seen == [1.0]
    assert metrics.registry.get_sample_value("patrol_rotation_draining", {"token": "keda"}) == 0.0
    end = metrics.registry.get_sample_value("patrol_rotation_drain_end_timestamp_seconds", {"token": "keda"})
    assert end == pytest.approx(delivered(journal) + 3600)


# --------------------------------------------------------------------------- emergencies


def test_an_already_revoked_old_pat_is_not_drained(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.pats_api.revoke(old.info.authorization_id)                    # revoked out of band
    world.clusters["c1"].jobs[("ado", "agent")] = [agent_job("stranded-anyway", clock.dt())]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    record = journal.get(RID)
    assert record.step("drain").detail == ("skipped: the previous PAT is already invalid (revoked or expired): "
                                           "nothing to drain")
    assert record.step("drain").finished_at == record.step("verify").finished_at


def test_an_expired_old_pat_is_not_drained(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    old.info = replace(old.info, valid_to=clock.dt() - timedelta(seconds=1))
    world.clusters["c1"].jobs[("ado", "agent")] = [agent_job("long", clock.dt())]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    assert journal.get(RID).step("drain").detail.startswith("skipped: the previous PAT is already invalid")


def test_a_compromised_rotation_revokes_as_soon_as_delivery_is_verified(journal: Journal, clock: Clock,
                                                                        tmp_path: Path) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.clusters["c1"].jobs[("ado", "agent")] = [agent_job("long", clock.dt())]
    planner = Planner(["keda"], journal, cooldown=timedelta(hours=1), locks=TokenLocks(tmp_path / "locks"),
                      clock=clock)
    decision, request = planner.request("keda", trigger="manual", reason="leaked", compromised=True)
    assert request is not None and request.compromised, decision
    assert saga(cfg, world, journal, clock).run(request) == "succeeded"
    record = journal.get(request.rotation_id)
    assert record.step("drain").detail.startswith("skipped: the rotation is marked compromised")
    assert old.info.authorization_id in world.pats_api.revoked
    assert ("plan", COMPROMISED_TARGET) in {(t.step, t.target) for t in record.targets}


def test_compromised_while_draining_ends_the_drain(journal: Journal, clock: Clock, tmp_path: Path) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.clusters["c1"].jobs[("ado", "agent")] = [agent_job("long", clock.dt())]
    locks = TokenLocks(tmp_path / "locks")
    planner = Planner(["keda"], journal, cooldown=timedelta(hours=1), locks=locks, clock=clock)
    _, request = planner.request("keda", trigger="schedule", reason="renewal due")
    assert request is not None
    decisions = []

    def leak_reported(round_: int) -> None:
        if round_ == 2:
            # `patrol rotate keda --compromised` from another process sharing the state dir
            other = Planner(["keda"], journal, cooldown=timedelta(hours=1), locks=TokenLocks(tmp_path / "locks"),
                            clock=clock)
            decisions.append(other.request("keda", trigger="manual", reason="leak", compromised=True))

    assert saga(cfg, world, journal, clock, on_step=Steps(leak_reported)).run(request) == "succeeded"
    [(decision, started)] = decisions
    assert started is None and decision.reason == "marked-compromised" and decision.rotation_id == request.rotation_id
    assert journal.get(request.rotation_id).step("drain").detail == \
        "ended after 2 round(s): the rotation was marked compromised"
    assert old.info.authorization_id in world.pats_api.revoked


# --------------------------------------------------------------------------- confirm


def test_confirm_watches_two_polling_intervals_after_the_revoke(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    record = journal.get(RID)
    confirmed = record.step("confirm").finished_at
    assert confirmed is not None and confirmed - revoked_at(journal) >= 4          # 2 x pollingInterval 2 s
    assert record.step("confirm").detail.startswith("2 consumer(s) served by the new PAT")


def test_keda_not_ready_after_the_revoke_fails_the_rotation(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)

    def keda_breaks(event: StepEvent) -> None:
        if event.step == "revoke" and event.status == "done":
            world.clusters["c2"].scalers[("ado", "scaledjobs", "agent")].ready = False

    assert saga(cfg, world, journal, clock, on_step=keda_breaks).run(start(journal, clock)) == "failed"
    record = journal.get(RID)
    assert record.step("confirm").status == "failed" and record.step("record").status == "skipped"
    assert record.error.startswith("confirm: not confirmed within 60s of the revoke: keda-scaledjob "
                                   "c2/ado/agent: Ready is False")
    assert "restart the KEDA operator" in record.error
    assert [e.reason for e in world.clusters["c2"].events] == ["PatRotationFailed"]


def test_a_failure_series_that_keeps_growing_after_the_revoke_fails(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    c1 = world.clusters["c1"]
    # KEDA >= 2.20: one Event from an earlier failure; repeats only raise series.count
    c1.add_event("ado", "ScaledJob", "agent", "KEDAScalerFailed", "status: 401",
                 when=clock.dt() - timedelta(hours=1))

    def keeps_failing(event: StepEvent) -> None:
        if (event.step == "revoke" and event.status == "done") or event.step == "confirm":
            c1.bump_series()

    original_sleep = clock.sleep

    def sleep(seconds: float) -> None:
        original_sleep(seconds)
        if journal.get(RID).state == "confirm":
            c1.bump_series()

    rotation = RotationSaga(cfg, world, journal, settings=FAST, clock=clock, sleep=sleep, on_step=keeps_failing)
    assert rotation.run(start(journal, clock)) == "failed"
    assert "keda-scaledjob c1/ado/agent: KEDA failed to poll after the revoke" in journal.get(RID).error


def test_a_failure_event_from_before_the_revoke_does_not_fail_it(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    world.clusters["c1"].add_event("ado", "ScaledJob", "agent", "KEDAScalerFailed", "status: 401",
                                   when=clock.dt() - timedelta(minutes=5))
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"


def test_one_failed_poll_then_recovery_is_confirmed(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)

    def one_failure(event: StepEvent) -> None:
        if event.step == "revoke" and event.status == "done":
            world.clusters["c1"].add_event("ado", "ScaledJob", "agent", "KEDAScalerFailed", "status: 401",
                                           when=clock.dt() + timedelta(seconds=1))

    assert saga(cfg, world, journal, clock, on_step=one_failure).run(start(journal, clock)) == "succeeded"
    confirmed = journal.get(RID).step("confirm").finished_at
    assert confirmed is not None and confirmed - revoked_at(journal) >= 5          # quiet 4 s after it


# --------------------------------------------------------------------------- never blocks another token


def test_the_pool_has_a_thread_for_every_token(tmp_path: Path, clock: Clock) -> None:
    with Journal(tmp_path / "j.sqlite3", clock=clock) as journal:
        locks = TokenLocks()
        release = threading.Event()
        done: list[str] = []

        def work(request: RotationRequest) -> Any:
            if request.token == "draining":
                release.wait(10)
            done.append(request.token)
            return "succeeded"

        dispatcher = Dispatcher(work, locks=locks, journal=journal, metrics=WorkerMetrics(), max_workers=1,
                                tokens=2)
        assert dispatcher.max_workers == 3
        for token in ("draining", "other"):
            assert locks.try_acquire(token)
            journal.create_rotation(f"{token:0<12}"[:12], token, trigger="manual", reason="t")
            dispatcher.submit(RotationRequest(token=token, trigger="manual", reason="t",
                                              rotation_id=f"{token:0<12}"[:12], received_at=clock.now))
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while "other" not in done and datetime.now(UTC) < deadline:
            threading.Event().wait(0.01)
        assert done == ["other"]                     # finished while the first still drains
        assert locks.held("draining") and not locks.held("other")
        release.set()
        assert dispatcher.wait_idle(10)
        dispatcher.shutdown()


# --------------------------------------------------------------------------- old journals


def test_a_journal_from_before_drain_and_confirm_still_resumes(journal: Journal, clock: Clock,
                                                               tmp_path: Path) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    request = start(journal, clock)
    with sqlite3.connect(tmp_path / "journal.sqlite3") as db:          # as the old version wrote it
        db.execute("DELETE FROM steps WHERE name IN ('drain', 'confirm')")
    assert [s.name for s in journal.get(RID).steps] == ["plan", "create", "deliver", "switch", "verify",
                                                        "revoke", "record"]
    assert saga(cfg, world, journal, clock).run(request) == "succeeded"
    record = journal.get(RID)
    assert [s.name for s in record.steps] == list(STEPS)
    assert all(s.status == "done" for s in record.steps)


def test_settings_from_config_pace_the_drain_with_verification() -> None:
    production = SagaSettings.from_config(config.WorkerSettings(verify_deadline=timedelta(minutes=5)))
    assert (production.verify_settle, production.verify_interval, production.drain_interval) == (30, 5, 10)
    sandbox = SagaSettings.from_config(config.WorkerSettings(verify_deadline=timedelta(seconds=30)))
    assert (sandbox.verify_settle, sandbox.drain_interval) == (7.5, 2.5)


def test_an_idle_cluster_still_waits_for_the_secret_caches(journal: Journal, clock: Clock) -> None:
    """No Job, no reader, no pipeline: the old PAT is still kept until KEDA's informer cache can
    have seen the new Secret, or KEDA's refresh after the revoke reads the old value and fails."""
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    steps = Steps()
    assert saga(cfg, world, journal, clock, on_step=steps).run(start(journal, clock)) == "succeeded"
    assert steps.details("drain")[0].endswith("Secret caches (KEDA's informer, the kubelet): 3s left to see the "
                                              "new value")
    assert revoked_at(journal) >= delivered(journal) + FAST.secret_settle
