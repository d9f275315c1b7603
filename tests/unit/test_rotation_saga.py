"""The rotation saga over in-memory fakes of our adapters: every step, failure and resume."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rotation_fakes import Clock, FakeWorld, StoredSecret, make_config, seed, sink_values

from core.ado import Agent, JobRequest
from core.errors import ConflictError, PolicyViolationError, ServerError, UnauthorizedError
from core.retry import Backoff
from remediation.journal import STEPS, Journal
from remediation.planner import RotationRequest
from remediation.saga import (
    RotationSaga,
    SagaSettings,
    StepEvent,
    display_name,
    patrol_pat_pattern,
)

FAST = SagaSettings(verify_deadline=60, verify_interval=1, verify_settle=5,
                    api_backoff=Backoff(delays=(0.1, 0.2)), deliver_backoff=Backoff(delays=(0.5, 1.0)))


class Crash(BaseException):
    """A process dying between two steps (BaseException: nothing in the saga catches it)."""


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3", clock=clock)
    yield j
    j.close()


def start(journal: Journal, clock: Clock, rid: str = "0123456789ab") -> RotationRequest:
    journal.create_rotation(rid, "keda", trigger="manual", reason="test", received_at=clock.now)
    return RotationRequest(token="keda", trigger="manual", reason="test", rotation_id=rid,
                           received_at=clock.now)


def saga(cfg: Any, world: FakeWorld, journal: Journal, clock: Clock, **kw: Any) -> RotationSaga:
    return RotationSaga(cfg, world, journal, settings=kw.pop("settings", FAST), clock=clock,
                        sleep=clock.sleep, **kw)


def gradual(world: FakeWorld) -> None:
    """Both ScaledJobs keep running Jobs on a spec change: ``switch: auto`` bumps them."""
    for name in ("c1", "c2"):
        world.clusters[name].scalers[("ado", "scaledjobs", "agent")].rollout_strategy = "gradual"


def assert_converged_on_new(world: FakeWorld, cfg: Any, old_id: str) -> str:
    values = set(sink_values(world, cfg))
    assert len(values) == 1, "sinks diverge"
    [value] = values
    active = world.pats_api.active_values()
    assert value in active, "sinks hold an inactive PAT: outage"
    new_id = active[value]
    assert new_id != old_id
    assert old_id in world.pats_api.revoked
    assert set(active.values()) == {new_id}, "a PAT is left active and unused"
    return new_id


def test_success_path(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    events: list[StepEvent] = []
    outcome = saga(cfg, world, journal, clock, on_step=events.append).run(start(journal, clock))
    assert outcome == "succeeded"
    new_id = assert_converged_on_new(world, cfg, old.info.authorization_id)
    new = world.pats_api.rows[new_id].info
    assert new.display_name == "patrol-keda-0123456789ab"
    assert new.scopes == ("vso.agentpools_manage",)
    assert new.target_accounts is not None                      # allOrgs false
    created_at = journal.get("0123456789ab").step("create").started_at
    assert created_at is not None
    assert abs(new.valid_to.timestamp() - (created_at + 30 * 86400)) < 1       # lifetime from config
    # sink metadata
    secret = world.clusters["c1"].secrets[("ado", "pat")]
    assert secret.annotations["patrol.io/authorization-id"] == new_id
    assert secret.annotations["patrol.io/rotation"] == "0123456789ab"
    assert secret.annotations["patrol.io/expiry"].endswith("Z")
    props, _ = world.vault.get_secret("ado-pat")
    assert props.tags == {"authorizationId": new_id, "rotation": "0123456789ab"}
    assert props.expires_on == new.valid_to
    # switch: KEDA's default rollout strategy would delete running Jobs on a spec change, so
    # `auto` refreshes: the spec is left alone
    scaler = world.clusters["c1"].scalers[("ado", "scaledjobs", "agent")]
    assert scaler.generation == 1 and scaler.annotations == {}
    # record: one Normal event per consumer
    for name in ("c1", "c2"):
        assert [e.reason for e in world.clusters[name].events] == ["PatRotated"]
    # journal
    record = journal.get("0123456789ab")
    assert record.outcome == "succeeded"
    assert [s.status for s in record.steps] == ["done"] * len(STEPS)
    assert record.old_authorization_id == old.info.authorization_id
    assert record.new_authorization_id == new_id
    assert {(t.step, t.status) for t in record.targets} >= {("deliver", "done"), ("switch", "skipped"),
                                                           ("revoke", "done")}
    assert {t.detail for t in record.targets if t.step == "switch"} == {
        "refresh: KEDA re-reads the Secret on its first failed poll after the revoke"}
    assert [(e.step, e.status) for e in events if e.status == "done"] == [(s, "done") for s in STEPS]
    assert all(org.closed for org in world.orgs)
    # the old token was revoked only after verify: revoke is the last ADO write
    assert world.pats_api.calls.index("revoke") > world.pats_api.calls.index("create")


def test_no_token_value_in_the_journal(journal: Journal, clock: Clock, tmp_path: Path) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    saga(cfg, world, journal, clock).run(start(journal, clock))
    values = [r.value for r in world.pats_api.rows.values()]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("journal.sqlite3*"))
    assert old.value.encode() not in raw
    for value in values:
        assert value.encode() not in raw


def test_flux_managed_secret_is_refused_before_anything_is_created(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.clusters["c2"].secrets[("ado", "pat")].labels["kustomize.toolkit.fluxcd.io/name"] = "apps"
    outcome = saga(cfg, world, journal, clock).run(start(journal, clock))
    assert outcome == "failed"
    assert world.pats_api.created == []
    record = journal.get("0123456789ab")
    assert "managed by Flux" in record.error
    assert "azureKeyVault" in record.error and "IfNotPresent" in record.error
    assert "External Secrets" in record.error
    assert record.step("plan").status == "failed" and record.step("create").status == "skipped"
    assert set(sink_values(world, cfg)) == {old.value}
    assert [e.reason for e in world.clusters["c1"].events] == ["PatRotationFailed"]


@pytest.mark.parametrize("how", ["ssa", "policy", "field-manager-ssa"])
def test_flux_opt_ins(journal: Journal, clock: Clock, how: str) -> None:
    cfg = make_config(flux="ignore-drift-risk" if how == "policy" else "refuse")
    world = FakeWorld(clock)
    seed(world, cfg)
    for cluster in world.clusters.values():
        stored = cluster.secrets[("ado", "pat")]
        if how == "field-manager-ssa":
            stored.managers = ("kustomize-controller",)
        else:
            stored.labels["kustomize.toolkit.fluxcd.io/name"] = "apps"
        if how != "policy":
            stored.annotations["kustomize.toolkit.fluxcd.io/ssa"] = "IfNotPresent"
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"


def test_flux_field_manager_alone_is_refused(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    world.clusters["c1"].secrets[("ado", "pat")].managers = ("kubectl", "kustomize-controller")
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "failed"
    assert "field manager kustomize-controller" in journal.get("0123456789ab").error
    assert world.pats_api.created == []


def test_missing_secret_is_refused_before_create(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    del world.clusters["c2"].secrets[("ado", "pat")]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "failed"
    assert "does not exist" in journal.get("0123456789ab").error
    assert world.pats_api.created == []


def test_policy_violation_ends_it_with_nothing_created(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.pats_api.faults["create"] = [PolicyViolationError("x", code="patLifespanPolicyViolation")]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "failed"
    record = journal.get("0123456789ab")
    assert "patLifespanPolicyViolation" in record.error and record.step("create").status == "failed"
    assert world.pats_api.created == [] and world.pats_api.revoked == []
    assert set(sink_values(world, cfg)) == {old.value}


def test_scope_mismatch_revokes_the_new_pat(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.pats_api.drop_scope = "vso.agentpools_manage"
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "failed"
    record = journal.get("0123456789ab")
    assert "scopes" in record.error and "revoked" in record.error
    assert world.pats_api.revoked == world.pats_api.created            # only the new one
    assert set(sink_values(world, cfg)) == {old.value}
    assert old.value in world.pats_api.active_values()


def test_scope_mismatch_keeps_its_reason_when_the_revoke_fails(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.pats_api.drop_scope = "vso.agentpools_manage"
    world.pats_api.faults["revoke"] = [ServerError("503", status=503) for _ in range(3)]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "failed"
    record = journal.get("0123456789ab")
    assert record.step("create").status == "failed"
    assert "came back with scopes" in record.error and "revoking it failed too" in record.error
    assert record.new_authorization_id == world.pats_api.created[0]     # journaled: recovery finds it
    assert world.pats_api.revoked == [] and world.pats_api.calls.count("revoke") == 3
    assert set(sink_values(world, cfg)) == {old.value}


def test_clamped_validto_is_read_back_and_noted(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    world.pats_api.max_lifetime = timedelta(days=10)
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    record = journal.get("0123456789ab")
    assert "clamped" in record.step("create").detail
    assert record.new_valid_to is not None
    assert abs(record.new_valid_to - (clock.now + 10 * 86400)) < 120
    props, _ = world.vault.get_secret("ado-pat")
    assert props.expires_on is not None and props.expires_on.timestamp() == record.new_valid_to


def test_create_that_acted_then_failed_leaves_no_orphan(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.pats_api.faults["create-after"] = [ServerError("502 after acting", status=502)]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    assert len(world.pats_api.created) == 2
    assert world.pats_api.created[0] in world.pats_api.revoked
    assert_converged_on_new(world, cfg, old.info.authorization_id)


def test_kubernetes_409_is_retried_with_a_fresh_read(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.clusters["c1"].conflicts = 2
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    assert_converged_on_new(world, cfg, old.info.authorization_id)


def test_a_failing_sink_is_retried_alone(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.vault.faults["set_secret"] = [ServerError("503", status=503, delay=2.0)]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    assert 2.0 in clock.slept                                            # Retry-After honoured
    assert len(world.vault.versions["ado-pat"]) == 2                      # seed + one write
    assert_converged_on_new(world, cfg, old.info.authorization_id)


def test_partial_delivery_failure_keeps_the_old_pat(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    world.vault.faults["set_secret"] = [UnauthorizedError("403 forbidden", status=403)]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "failed"
    record = journal.get("0123456789ab")
    assert "keyvault/kv.example/ado-pat" in record.error and "stays valid" in record.error
    assert old.info.authorization_id not in world.pats_api.revoked
    active = world.pats_api.active_values()
    assert all(v in active for v in sink_values(world, cfg))             # no outage
    assert record.step("switch").status == "skipped"


def test_delivered_nowhere_revokes_the_new_pat(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(keyvault=False), FakeWorld(clock)
    old = seed(world, cfg)
    for cluster in world.clusters.values():
        cluster.faults["patch_secret"] = [UnauthorizedError("403", status=403)]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "failed"
    assert world.pats_api.revoked == world.pats_api.created
    assert set(world.pats_api.active_values()) == {old.value}
    assert "delivered nowhere" in journal.get("0123456789ab").error


def test_verify_timeout_fails_without_revoking(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    gradual(world)

    def keda_breaks(cluster: Any, ns: str, name: str) -> None:
        cluster.scalers[(ns, "scaledjobs", name)].ready = False

    world.clusters["c2"].on_bump = keda_breaks
    started = clock.now
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "failed"
    record = journal.get("0123456789ab")
    assert record.step("verify").status == "failed"
    assert "Ready is False" in record.error and "not revoked" in record.error
    assert old.info.authorization_id not in world.pats_api.revoked
    assert 60 <= clock.now - started <= 75
    assert [e.reason for e in world.clusters["c2"].events] == ["PatRotationFailed"]


def test_verify_waits_out_auth_failures_from_before_the_rebuild(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    gradual(world)

    def old_poll_fails(cluster: Any, ns: str, name: str) -> None:
        cluster.add_event(ns, "ScaledJob", name, "KEDAScalerFailed",
                          "the Azure DevOps REST API returned error. urlString: x status: 401 response: ")

    world.clusters["c1"].on_bump = old_poll_fails
    clock.now += 0.5                                                     # mid-second switch
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    assert_converged_on_new(world, cfg, old.info.authorization_id)
    assert journal.get("0123456789ab").step("verify").detail.endswith("round(s)")


def test_verify_requires_queued_jobs_picked_up_or_agents(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    gradual(world)
    world.jobs = [JobRequest(request_id=1, queue_time=clock.dt() - timedelta(minutes=5), assign_time=None,
                             receive_time=None, result=None, pool_id=7)]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "failed"
    error = journal.get("0123456789ab").error
    assert error.startswith("verify:") and "job(s) queued before 08:00:00 still wait, no agent online" in error
    assert old.info.authorization_id not in world.pats_api.revoked
    world.agents = [Agent(id=1, name="a", status="online", enabled=True, assigned_request_id=None)]
    assert saga(cfg, world, journal, clock).run(start(journal, clock, "0123456789ac")) == "succeeded"


def test_unknown_previous_pat_is_not_guessed(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg, annotate=False)
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    record = journal.get("0123456789ab")
    assert "revoke the hand-made PAT" in record.step("revoke").detail
    assert old.value in world.pats_api.active_values()


def test_second_rotation_revokes_the_first_patrol_pat(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    hand_made = seed(world, cfg, annotate=False)
    assert saga(cfg, world, journal, clock).run(start(journal, clock, "aaaaaaaaaaaa")) == "succeeded"
    first = journal.get("aaaaaaaaaaaa").new_authorization_id
    assert first is not None
    assert saga(cfg, world, journal, clock).run(start(journal, clock, "bbbbbbbbbbbb")) == "succeeded"
    second = journal.get("bbbbbbbbbbbb")
    assert second.old_authorization_id == first
    assert first in world.pats_api.revoked
    [value] = set(sink_values(world, cfg))
    active = world.pats_api.active_values()
    assert set(active.values()) == {second.new_authorization_id, hand_made.info.authorization_id}
    assert active[value] == second.new_authorization_id


def test_lost_lease_stops_before_the_next_step(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    allowed = iter([True, True, False])
    outcome = saga(cfg, world, journal, clock, may_continue=lambda: next(allowed, False)).run(
        start(journal, clock))
    assert outcome is None
    record = journal.get("0123456789ab")
    assert record.outcome is None and record.step("create").status == "done"
    assert record.step("deliver").status == "pending"


@pytest.mark.parametrize("crash_after", STEPS[:-1])
def test_crash_between_steps_then_resume(journal: Journal, clock: Clock, tmp_path: Path,
                                         crash_after: str) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)

    def crash(rotation_id: str, step: str) -> None:
        if step == crash_after:
            raise Crash(step)

    request = start(journal, clock)
    with pytest.raises(Crash):
        saga(cfg, world, journal, clock, after_step=crash).run(request)
    # Invariant while down: every sink holds an active PAT.
    active = world.pats_api.active_values()
    assert all(v in active for v in sink_values(world, cfg))
    # A new process, a new journal connection: resume the same rotation.
    with Journal(tmp_path / "journal.sqlite3", clock=clock) as reopened:
        assert [r.id for r in reopened.unfinished()] == [request.rotation_id]
        assert saga(cfg, world, reopened, clock).run(request) == "succeeded"
        record = reopened.get(request.rotation_id)
    new_id = assert_converged_on_new(world, cfg, old.info.authorization_id)
    assert record.new_authorization_id == new_id
    # Created once, unless the value was lost before delivery (then the orphan was revoked).
    orphans = [a for a in world.pats_api.created if a != new_id]
    assert all(a in world.pats_api.revoked for a in orphans)
    assert len(world.pats_api.created) == (2 if crash_after == "create" else 1)


def test_resume_of_a_finished_rotation_does_nothing(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    request = start(journal, clock)
    assert saga(cfg, world, journal, clock).run(request) == "succeeded"
    calls = len(world.pats_api.calls)
    assert saga(cfg, world, journal, clock).run(request) == "succeeded"
    assert len(world.pats_api.calls) == calls


def test_transient_errors_in_plan_are_retried(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    world.clusters["c1"].faults["read_secret"] = [ConflictError("x"), ServerError("500", status=500)]
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"


def test_preview_changes_nothing(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    old = seed(world, cfg)
    earlier = world.pats_api.add("patrol-keda-00000000000a", ("vso.agentpools_manage",))
    world.pats_api.add("patrol-keda-extra-00000000000b", ("vso.agentpools_manage",))
    world.clusters["c2"].secrets[("ado", "pat")] = StoredSecret(
        data={"token": old.value}, labels={"kustomize.toolkit.fluxcd.io/name": "x"})
    preview = saga(cfg, world, journal, clock).preview("keda")
    assert preview.would_revoke == tuple(sorted([old.info.authorization_id, earlier.info.authorization_id]))
    assert [s.refusal is None for s in preview.sinks] == [True, False, True]
    assert len(preview.problems) == 1 and "Flux" in preview.problems[0]
    assert [c.generation for c in preview.consumers] == [1, 1]
    assert preview.display_name == "patrol-keda-<rotation id>"
    assert world.pats_api.created == [] and world.pats_api.revoked == []
    assert journal.count() == 0


def bump_config(**kw: Any) -> Any:
    cfg = make_config(**kw)
    token = cfg.tokens[0]
    consumers = tuple(replace(c, switch="bump") for c in token.consumers)
    return replace(cfg, tokens=(replace(token, consumers=consumers),))


def test_explicit_bump_of_a_default_rollout_is_warned_about_and_still_done(
        journal: Journal, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    cfg, world = bump_config(), FakeWorld(clock)
    seed(world, cfg)
    world.clusters["c2"].scalers[("ado", "scaledjobs", "agent")].rollout_strategy = "gradual"
    with caplog.at_level(logging.WARNING, logger="patrol.saga"):
        outcome = saga(cfg, world, journal, clock).run(start(journal, clock))
    assert outcome == "succeeded"
    detail = journal.get("0123456789ab").step("plan").detail
    expected = ("ScaledJob c1/ado/agent uses rollout strategy 'default': the switch step (switch: bump) makes "
                "KEDA delete its running agent Jobs (builds in flight are abandoned); set "
                "spec.rollout.strategy: gradual on it, or use switch: auto")
    assert f"WARNING: {expected}" in detail
    assert "c2/ado/agent" not in detail                          # gradual: nothing to say
    warned = [r for r in caplog.records if r.name == "patrol.saga" and "rollout strategy" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert expected in warned[0].getMessage()
    context = vars(warned[0])
    assert (context["token"], context["rotation_id"], context["step"]) == ("keda", "0123456789ab", "plan")
    assert (context["cluster"], context["consumer"], context["rollout_strategy"]) == ("c1", "agent", "default")
    # only a warning: both ScaledJobs were bumped as configured
    for name in ("c1", "c2"):
        scaler = world.clusters[name].scalers[("ado", "scaledjobs", "agent")]
        assert scaler.annotations["patrol.io/rotation"] == "0123456789ab" and scaler.generation == 2


def test_auto_never_warns_and_bumps_only_gradual(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    world.clusters["c2"].scalers[("ado", "scaledjobs", "agent")].rollout_strategy = "gradual"
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    record = journal.get("0123456789ab")
    assert "WARNING" not in record.step("plan").detail
    assert {t.target: (t.status, t.detail.split(":")[0]) for t in record.targets if t.step == "switch"} == {
        "c1/ado/agent": ("skipped", "refresh"), "c2/ado/agent": ("done", "bump")}
    assert world.clusters["c1"].scalers[("ado", "scaledjobs", "agent")].generation == 1
    assert world.clusters["c2"].scalers[("ado", "scaledjobs", "agent")].generation == 2


def test_explicit_refresh_leaves_even_a_gradual_scaledjob_alone(journal: Journal, clock: Clock) -> None:
    cfg = make_config()
    token = cfg.tokens[0]
    cfg = replace(cfg, tokens=(replace(token, consumers=tuple(replace(c, switch="refresh")
                                                               for c in token.consumers)),))
    world = FakeWorld(clock)
    seed(world, cfg)
    gradual(world)
    assert saga(cfg, world, journal, clock).run(start(journal, clock)) == "succeeded"
    assert all(world.clusters[n].scalers[("ado", "scaledjobs", "agent")].generation == 1 for n in ("c1", "c2"))


def test_unknown_rollout_strategy_is_warned_about_verbatim(journal: Journal, clock: Clock) -> None:
    cfg, world = bump_config(), FakeWorld(clock)
    seed(world, cfg)
    gradual(world)
    assert saga(cfg, world, journal, clock).run(start(journal, clock, "00000000000a")) == "succeeded"
    assert "WARNING" not in journal.get("00000000000a").step("plan").detail
    world.clusters["c1"].scalers[("ado", "scaledjobs", "agent")].rollout_strategy = "Gradual"
    clock.sleep(3600)
    assert saga(cfg, world, journal, clock).run(start(journal, clock, "00000000000b")) == "succeeded"
    assert "ScaledJob c1/ado/agent uses rollout strategy 'Gradual'" in journal.get("00000000000b").step("plan").detail


def test_preview_shows_switch_modes_and_warns_only_for_a_harmful_bump(journal: Journal, clock: Clock) -> None:
    cfg, world = make_config(), FakeWorld(clock)
    seed(world, cfg)
    world.clusters["c1"].scalers[("ado", "scaledjobs", "agent")].rollout_strategy = "gradual"
    preview = saga(cfg, world, journal, clock).preview("keda")
    assert [c.rollout_strategy for c in preview.consumers] == ["gradual", "default"]
    assert [c.switch for c in preview.consumers] == ["bump", "refresh"]
    assert preview.warnings == ()
    preview = saga(bump_config(), world, journal, clock).preview("keda")
    assert len(preview.warnings) == 1 and preview.warnings[0].startswith(
        "ScaledJob c2/ado/agent uses rollout strategy 'default': the switch step (switch: bump)")
    assert preview.problems == ()                                 # a warning does not refuse the plan


def test_names_and_patterns() -> None:
    assert display_name("keda", "0123456789ab") == "patrol-keda-0123456789ab"
    pattern = patrol_pat_pattern("keda")
    assert pattern.match("patrol-keda-0123456789ab")
    assert not pattern.match("patrol-keda-extra-0123456789ab")
    assert not pattern.match("patrol-keda-0123456789ab-x")
