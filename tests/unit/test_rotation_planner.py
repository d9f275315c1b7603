"""The planner: which alerts start a rotation, which are dropped and why."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import rules
from core.config import DEFAULT_ROTATE_ALERTNAMES
from remediation.alerts import Notification, parse_notification
from remediation.journal import Journal
from remediation.planner import Planner, TokenLocks


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def alert(token: str | None = "keda", *, fp: str = "f1", status: str = "firing",
          starts: str = "2026-08-01T10:00:00Z", remediation: str | None = "rotate",
          name: str = "PatRenewalDue") -> dict[str, Any]:
    labels = {"alertname": name}
    if token is not None:
        labels["token"] = token
    if remediation is not None:
        labels["remediation"] = remediation
    return {"status": status, "labels": labels, "annotations": {}, "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": fp}


def notification(*alerts: dict[str, Any]) -> Notification:
    return parse_notification({"version": "4", "status": "firing", "receiver": "patrol",
                               "groupKey": "{}:{}", "alerts": list(alerts)})


class Ids:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def __call__(self) -> str:
        self.n += 1
        return f"{self.n:012x}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Any:
    j = Journal(tmp_path / "j.db", clock=clock)
    yield j
    j.close()


def make(journal: Journal, clock: Clock | None = None, cooldown: float = 600,
         first_id: int = 0) -> Planner:
    return Planner(["keda", "daily-checks"], journal, cooldown=timedelta(seconds=cooldown),
                   clock=clock or Clock(), new_id=Ids(first_id))


def reasons(plan: Any) -> list[tuple[str, str | None, str]]:
    return [(d.action, d.token, d.reason) for d in plan.decisions]


def test_firing_remediable_alert_starts_one_rotation(journal: Journal) -> None:
    planner = make(journal)
    plan = planner.plan(notification(alert()))
    assert reasons(plan) == [("start", "keda", "accepted")]
    [request] = plan.requests
    assert request.token == "keda" and request.trigger == "alert"
    assert request.rotation_id == "000000000001"
    assert request.reason == "alert PatRenewalDue"
    assert planner.locks.held("keda")
    record = journal.get(request.rotation_id)
    assert record.token == "keda" and record.state == "plan"
    assert journal.seen(request.dedupe_keys[0])


@pytest.mark.parametrize(
    ("kwargs", "reason", "token"),
    [
        ({"status": "resolved"}, "resolved", "keda"),
        ({"remediation": None}, "not-remediable", "keda"),
        ({"remediation": "page"}, "not-remediable", "keda"),
        ({"token": None}, "no-token-label", None),
        ({"token": "nope"}, "unknown-token", "nope"),
    ],
)
def test_drops_are_recorded_with_a_reason(journal: Journal, kwargs: dict[str, Any], reason: str,
                                         token: str | None) -> None:
    planner = make(journal)
    plan = planner.plan(notification(alert(**kwargs)))
    assert reasons(plan) == [("drop", token, reason)]
    assert plan.requests == []
    assert journal.count() == 0
    [recorded] = journal.decisions()
    assert (recorded.reason, recorded.token, recorded.fingerprint) == (reason, token, "f1")
    planner.plan(notification(alert(**kwargs)))            # the same drop again: recorded once
    assert len(journal.decisions()) == 1


def test_duplicate_episode_is_dropped_even_after_restart(journal: Journal, tmp_path: Path,
                                                         clock: Clock) -> None:
    planner = make(journal, clock)
    first = planner.plan(notification(alert()))
    planner.locks.release("keda")
    journal.finish(first.requests[0].rotation_id, "failed", "x")
    assert reasons(planner.plan(notification(alert()))) == [("drop", "keda", "duplicate")]
    # A new process with the same state dir remembers the episode.
    with Journal(tmp_path / "j.db") as reopened:
        restarted = make(reopened, clock, first_id=100)
        assert reasons(restarted.plan(notification(alert()))) == [("drop", "keda", "duplicate")]
        # The same fingerprint with a new startsAt is a new episode.
        plan = restarted.plan(notification(alert(starts="2026-08-02T10:00:00Z")))
        assert reasons(plan) == [("start", "keda", "accepted")]
    assert journal.count("keda") == 2


def test_duplicate_written_by_another_process_is_seen(journal: Journal, tmp_path: Path) -> None:
    planner = make(journal)
    with Journal(tmp_path / "j.db") as other:
        other_planner = make(other, first_id=100)
        other_planner.plan(notification(alert()))
    assert reasons(planner.plan(notification(alert()))) == [("drop", "keda", "duplicate")]


def test_running_token_is_not_started_twice(journal: Journal) -> None:
    planner = make(journal)
    planner.plan(notification(alert(fp="a")))
    plan = planner.plan(notification(alert(fp="b", name="PatInvalid")))
    assert reasons(plan) == [("drop", "keda", "already-running")]
    # ...and the dropped episode is not consumed: a repeat later is considered again.
    planner.locks.release("keda")
    assert reasons(planner.plan(notification(alert(fp="b")))) == [("start", "keda", "accepted")]


def test_several_alerts_for_one_token_make_one_rotation(journal: Journal) -> None:
    planner = make(journal)
    plan = planner.plan(notification(alert(fp="a", name="PatInvalid"),
                                     alert(fp="b", name="KedaScalerAuthFailing"),
                                     alert("daily-checks", fp="c")))
    assert sorted(reasons(plan)) == [("start", "daily-checks", "accepted"),
                                     ("start", "keda", "accepted"), ("start", "keda", "accepted")]
    assert len(plan.requests) == 2
    keda = next(r for r in plan.requests if r.token == "keda")
    assert keda.reason == "alert KedaScalerAuthFailing, PatInvalid"
    assert len(keda.dedupe_keys) == 2


def test_cooldown_after_success(journal: Journal, clock: Clock) -> None:
    planner = make(journal, clock, cooldown=600)
    first = planner.plan(notification(alert(fp="a"))).requests[0]
    journal.finish(first.rotation_id, "succeeded")
    planner.locks.release("keda")
    clock.now += 599
    assert reasons(planner.plan(notification(alert(fp="b")))) == [("drop", "keda", "cooldown")]
    clock.now += 2
    assert reasons(planner.plan(notification(alert(fp="b")))) == [("start", "keda", "accepted")]


def test_no_cooldown_after_failure(journal: Journal) -> None:
    planner = make(journal)
    first = planner.plan(notification(alert(fp="a"))).requests[0]
    journal.finish(first.rotation_id, "failed", "boom")
    planner.locks.release("keda")
    assert reasons(planner.plan(notification(alert(fp="b")))) == [("start", "keda", "accepted")]


def test_manual_request_and_force(journal: Journal, clock: Clock) -> None:
    planner = make(journal, clock)
    decision, request = planner.request("nope", trigger="manual", reason="x")
    assert (decision.reason, request) == ("unknown-token", None)
    decision, request = planner.request("keda", trigger="manual", reason="by hand")
    assert decision.action == "start" and request is not None
    assert planner.request("keda", trigger="manual", reason="again")[0].reason == "already-running"
    journal.finish(request.rotation_id, "succeeded")
    planner.locks.release("keda")
    assert planner.request("keda", trigger="schedule", reason="x")[0].reason == "cooldown"
    decision, forced = planner.request("keda", trigger="manual", reason="x", force=True)
    assert decision.action == "start" and forced is not None


def test_abandon_undoes_admission(journal: Journal) -> None:
    planner = make(journal)
    [request] = planner.plan(notification(alert())).requests
    planner.abandon(request, "shutting down")
    assert not planner.locks.held("keda")
    assert journal.get(request.rotation_id).outcome == "skipped"
    assert not journal.seen(request.dedupe_keys[0])
    assert reasons(planner.plan(notification(alert()))) == [("start", "keda", "accepted")]


def test_concurrent_planning_starts_one_rotation(journal: Journal) -> None:
    planner = make(journal)
    barrier = threading.Barrier(16)
    results: list[int] = []

    def deliver() -> None:
        barrier.wait()
        results.append(len(planner.plan(notification(alert())).requests))

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0] * 15 + [1]
    assert journal.count() == 1


def test_token_locks() -> None:
    locks = TokenLocks()
    assert locks.try_acquire("a") and not locks.try_acquire("a")
    assert locks.running() == frozenset({"a"})
    locks.release("a")
    assert locks.try_acquire("a")


def test_token_lock_is_shared_across_processes_through_the_state_dir(tmp_path: Path,
                                                                     journal: Journal) -> None:
    import subprocess
    import sys

    lock_dir = tmp_path / "locks"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from remediation.planner import TokenLocks; "
         f"l = TokenLocks({str(lock_dir)!r}); assert l.try_acquire('keda'); print('held', flush=True); "
         "sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        planner = Planner(["keda"], journal, cooldown=timedelta(0), locks=TokenLocks(lock_dir))
        assert reasons(planner.plan(notification(alert()))) == [("drop", "keda", "already-running")]
        assert planner.request("keda", trigger="manual", reason="x")[0].reason == "already-running"
        assert journal.count() == 0
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()  # type: ignore[union-attr]
    # the holder is gone: its lock went with it
    assert reasons(planner.plan(notification(alert(fp="f2")))) == [("start", "keda", "accepted")]


def compromised(doc: dict[str, Any], value: str = "true") -> dict[str, Any]:
    doc["labels"]["compromised"] = value
    return doc


def test_a_compromised_alert_is_journaled_and_ignores_the_cooldown(journal: Journal, clock: Clock) -> None:
    planner = Planner(["keda", "daily-checks"], journal, cooldown=timedelta(seconds=600), clock=clock,
                      new_id=Ids(), rotate_alertnames=["PatRenewalDue", "PatLeaked"])
    first = planner.plan(notification(alert(fp="a"))).requests[0]
    assert not first.compromised
    journal.finish(first.rotation_id, "succeeded")
    planner.locks.release("keda")
    clock.now += 10
    assert reasons(planner.plan(notification(alert(fp="b")))) == [("drop", "keda", "cooldown")]
    plan = planner.plan(notification(compromised(alert(fp="c", name="PatLeaked"))))
    assert reasons(plan) == [("start", "keda", "accepted")]
    [request] = plan.requests
    assert request.compromised and request.reason == "alert PatLeaked; compromised"
    targets = {(t.step, t.target): t.detail for t in journal.get(request.rotation_id).targets}
    assert targets[("plan", "compromised")].startswith("compromised: the previous PAT is revoked as soon as")


def test_compromised_label_must_say_true(journal: Journal) -> None:
    planner = make(journal)
    [request] = planner.plan(notification(compromised(alert(fp="a"), "false"))).requests
    assert not request.compromised
    assert journal.get(request.rotation_id).targets == ()


def test_a_compromised_alert_marks_the_running_rotation(journal: Journal, clock: Clock) -> None:
    planner = make(journal, clock)
    [running] = planner.plan(notification(alert(fp="a"))).requests
    plan = planner.plan(notification(compromised(alert(fp="b"))))
    assert reasons(plan) == [("drop", "keda", "marked-compromised")]
    assert ("plan", "compromised") in {(t.step, t.target) for t in journal.get(running.rotation_id).targets}
    # the same episode again is a duplicate, not another mark
    assert reasons(planner.plan(notification(compromised(alert(fp="b"))))) == [("drop", "keda", "duplicate")]


def test_a_compromised_manual_request_marks_the_running_rotation(journal: Journal, clock: Clock) -> None:
    planner = make(journal, clock)
    _, running = planner.request("keda", trigger="schedule", reason="due")
    assert running is not None
    decision, request = planner.request("keda", trigger="manual", reason="leak", compromised=True)
    assert request is None
    assert (decision.reason, decision.rotation_id) == ("marked-compromised", running.rotation_id)
    # a token with no rotation running simply starts one
    decision, _ = planner.request("daily-checks", trigger="manual", reason="leak", compromised=True)
    assert decision.action == "start"


# --- who may start a rotation: the alertname allow-list (issue 8) ---------------------------------

INFO_INHIBITOR_TEST = Path(__file__).resolve().parents[2] / "alerts" / "tests" / "info-inhibitor.test.yml"


def _info_inhibitor_labels() -> dict[str, str]:
    """The labels promtool proved kube-prometheus-stack's InfoInhibitor fires with, next to
    patrol's rules (alerts/tests/info-inhibitor.test.yml): PatRenewalDue's, renamed."""
    doc = yaml.safe_load(INFO_INHIBITOR_TEST.read_text(encoding="utf-8"))
    for test in doc["tests"]:
        for case in test["alert_rule_test"]:
            if case["alertname"] == "InfoInhibitor" and case["exp_alerts"]:
                labels: dict[str, str] = dict(case["exp_alerts"][0]["exp_labels"])
                return {"alertname": "InfoInhibitor", **labels}
    raise AssertionError(f"{INFO_INHIBITOR_TEST} has no firing InfoInhibitor case")


def test_info_inhibitor_never_starts_a_rotation(journal: Journal) -> None:
    labels = _info_inhibitor_labels()
    assert labels["remediation"] == "rotate" and labels["token"] == "keda"   # the trap is real
    doc = {**alert(), "labels": labels, "fingerprint": "ii1"}
    planner = make(journal)
    plan = planner.plan(notification(doc))
    assert reasons(plan) == [("drop", "keda", "alertname-not-allowed")]
    assert plan.requests == [] and journal.count() == 0
    assert not planner.locks.held("keda")
    [recorded] = journal.decisions()
    assert (recorded.alertname, recorded.reason, recorded.token) == (
        "InfoInhibitor", "alertname-not-allowed", "keda")


def test_info_inhibitor_beside_the_real_alert_starts_exactly_the_real_one(journal: Journal) -> None:
    inhibitor = {**alert(fp="ii1"), "labels": _info_inhibitor_labels()}
    plan = make(journal).plan(notification(inhibitor, alert(fp="r1")))
    assert sorted(reasons(plan)) == [("drop", "keda", "alertname-not-allowed"),
                                     ("start", "keda", "accepted")]
    [request] = plan.requests
    assert request.reason == "alert PatRenewalDue"


@pytest.mark.parametrize("name", ["PatRenewalDue", "PatInvalid", "KedaScalerAuthFailing"])
def test_the_default_allow_list_is_the_rotation_alerts(journal: Journal, name: str) -> None:
    plan = make(journal).plan(notification(alert(name=name)))
    assert reasons(plan) == [("start", "keda", "accepted")]


@pytest.mark.parametrize("name", ["PatExpired", "PatExpiringSoon", "Watchdog", "patrenewaldue"])
def test_other_names_with_the_rotate_label_are_dropped(journal: Journal, name: str) -> None:
    plan = make(journal).plan(notification(alert(name=name)))
    assert reasons(plan) == [("drop", "keda", "alertname-not-allowed")]


def test_the_allow_list_is_configurable(journal: Journal) -> None:
    planner = Planner(["keda"], journal, cooldown=timedelta(0), clock=Clock(), new_id=Ids(),
                      rotate_alertnames=["TeamPatLeaked"])
    plan = planner.plan(notification(alert(name="PatRenewalDue", fp="a"),
                                     alert(name="TeamPatLeaked", fp="b")))
    assert sorted(reasons(plan)) == [("drop", "keda", "alertname-not-allowed"),
                                     ("start", "keda", "accepted")]


def test_the_default_allow_list_equals_the_rules_that_carry_remediation_rotate() -> None:
    assert set(DEFAULT_ROTATE_ALERTNAMES) == {a.name for a in rules.alerts() if a.remediation == "rotate"}
