"""The rotation saga and the worker against the sandbox, with the real adapters over real HTTP(S).

Each test gets a fresh simulated world (it starts in well under a second): ADO with the PAT
Lifecycle API, Entra, Key Vault, two Kubernetes API servers and KEDA actors that poll with the
PAT from their Secret and behave as KEDA does (re-read the Secret only on a failed poll or a
generation change). Faults come from the sandbox's control plane (FaultTable, PAT policy).

Invariants checked after failures and crashes (docs/rotation.md, "Guarantees"): no outage (KEDA never fails to
authenticate), no orphan patrol PAT, sinks converge, the old PAT is revoked only after the new
one was verified; and no token value in anything patrol produced.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from core.config import Config, LeaseSettings, load_config
from core.lease import LeaseLock
from core.retry import Backoff
from remediation import cli
from remediation.journal import STEPS, Journal, RotationRecord
from remediation.planner import Planner, TokenLocks
from remediation.saga import RotationSaga, SagaSettings
from remediation.service import WorkerService, WorkerThread
from remediation.world import CoreWorld
from sandbox.app import SandboxThread
from sandbox.http import Fault
from sandbox.scenarios import ClusterSpec, scenario

E2E = SagaSettings(verify_deadline=30, verify_interval=0.5, verify_settle=2.5, drain_interval=0.5,
                   secret_settle=1.0, api_backoff=Backoff(delays=(0.2, 0.5, 1.0)),
                   deliver_backoff=Backoff(delays=(0.2, 0.5, 1.0)))
# The sandbox's "harm" counters (GET /state): what a rotation must leave at 0 (issue 7 §1).
HARM_KEYS = ("builds_interrupted", "agent_unregister_failures", "keda_failed_polls", "secret_reader_failures",
             "pipeline_runs_failed")
WEBHOOK_TOKEN = "e2e-webhook-bearer-token-0123456789"
NS, SECRET, KEY, SCALEDJOB = "azure-devops", "azure-devops-token", "token", "azure-devops-agent"
CLUSTERS = ("build-a", "build-b")


class Crash(BaseException):
    """The worker process dying between two steps."""


class World:
    """One test's view of the sandbox: patrol's config and adapters, and the sandbox's truth."""

    def __init__(self, sb: SandboxThread, tmp: Path) -> None:
        self.sb = sb
        self.tmp = tmp
        self.config: Config = load_config(sb.ready["config"])
        self.adapters = CoreWorld(self.config, env={})
        self.state_dir = tmp / "state"
        self.journal = Journal.in_state_dir(self.state_dir)
        self.locks = TokenLocks(self.state_dir / "locks")
        self.planner = Planner([t.name for t in self.config.tokens], self.journal,
                               cooldown=self.config.worker.cooldown, locks=self.locks)
        self.values: set[str] = set()          # every token value seen in a sink (for the scan)
        self.remember_values()

    def close(self) -> None:
        self.journal.close()
        self.adapters.close()

    # -- sandbox truth ------------------------------------------------------------------------

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.sb.call(partial(fn, *args, **kwargs))

    def sink_value(self, cluster: str) -> str | None:
        value: str | None = self.call(self.sb.world.clusters[cluster].secret_value, NS, SECRET, KEY)
        return value

    def kv_value(self, name: str = "azure-devops-token") -> str | None:
        value: str | None = self.call(self.sb.world.kv.latest_value, name)
        return value

    def remember_values(self) -> None:
        for cluster in CLUSTERS:
            value = self.sink_value(cluster)
            if value:
                self.values.add(value)
        value = self.kv_value()
        if value:
            self.values.add(value)

    def pat_id(self, value: str | None) -> str | None:
        if value is None:
            return None
        found: str | None = self.call(self.sb.world.ado.pat_id_for_value, value)
        return found

    def pats(self) -> dict[str, dict[str, Any]]:
        return {p["authorizationId"]: p for p in self.call(self.sb.world.ado.pats)}

    def keda(self) -> dict[str, dict[str, Any]]:
        snapshot: dict[str, Any] = self.call(self.sb.world.actors.snapshot)
        return dict(snapshot["scaledjobs"])

    def auth_failures(self) -> int:
        return sum(int(s["auth_failures"]) for s in self.keda().values())

    def failed_polls(self) -> int:
        """KEDA polls that failed even after KEDA's own refresh-and-retry: an outage a consumer
        saw (a refresh-mode switch makes one ADO call fail per scaler, which KEDA absorbs)."""
        return sum(int(s["poll_errors"]) for s in self.keda().values())

    def statuses(self, service: str, method: str, path_part: str) -> list[int]:
        """HTTP statuses the sandbox answered (0 = connection dropped), oldest first."""
        return [r.status for r in self.call(self.sb.world.log.records, service=service)
                if r.method == method and path_part in r.path]

    def fault(self, **kwargs: Any) -> str:
        fault_id: str = self.call(self.sb.world.faults.add, Fault(**kwargs))
        return fault_id

    def annotate_seed(self) -> str:
        """An operator adopting patrol annotates the hand-made PAT's id on each Secret."""
        seed = self.sb.world.seeded.keda_pat_id
        for cluster in CLUSTERS:
            value = self.sink_value(cluster)
            assert value is not None
            self.call(self.sb.world.clusters[cluster].put_secret, NS, SECRET, {KEY: value},
                      annotations={"patrol.io/authorization-id": seed})
        return seed

    # -- patrol -------------------------------------------------------------------------------

    def saga(self, **kwargs: Any) -> RotationSaga:
        kwargs.setdefault("settings", E2E)
        return RotationSaga(self.config, self.adapters, self.journal, **kwargs)

    def reopen(self) -> None:
        """After a service owned the state dir: open the journal again for this test's use."""
        self.journal = Journal.in_state_dir(self.state_dir)
        self.planner.journal = self.journal

    def rotate(self, token: str = "keda", **kwargs: Any) -> RotationRecord:
        decision, request = self.planner.request(token, trigger="manual", reason="e2e", force=True)
        assert request is not None, decision
        try:
            self.saga(**kwargs).run(request)
        finally:
            self.locks.release(token)
        self.remember_values()
        return self.journal.get(request.rotation_id)

    def service(self, **kwargs: Any) -> WorkerService:
        kwargs.setdefault("state_dir", self.state_dir)
        kwargs.setdefault("webhook_token", WEBHOOK_TOKEN)
        kwargs.setdefault("settings", E2E)
        kwargs.setdefault("reconcile_interval", 3600)
        cfg = kwargs.pop("config", self.config)
        adapters = kwargs.pop("adapters", self.adapters)
        return WorkerService(cfg, adapters, **kwargs)

    # -- invariants ---------------------------------------------------------------------------

    def assert_converged(self, token: str = "keda") -> str:
        """Every sink holds one active PAT, and no other patrol PAT of the token is active."""
        values = {self.sink_value(c) for c in CLUSTERS} if token == "keda" else {self.kv_value()}
        assert len(values) == 1, "sinks diverge"
        held = self.pat_id(values.pop())
        assert held is not None
        pats = self.pats()
        assert pats[held]["status"] == "active", "a sink holds an inactive PAT: outage"
        stray = [p for p in pats.values() if p["displayName"].startswith(f"patrol-{token}-")
                 and p["status"] == "active" and p["authorizationId"] != held]
        assert stray == [], f"patrol PATs left active and unused: {stray}"
        return held


def _world(tmp_path: Path, **params: Any) -> Iterator[World]:
    # Builds shorter than the default scenario's 12 s: still in flight across a rotation (the drain
    # waits for them), without making every planned rotation here wait a whole build.
    params.setdefault("build_duration", 4.0)
    with SandboxThread(str(tmp_path / "sandbox"), scenario("default", **params)) as sb:
        w = World(sb, tmp_path)
        try:
            yield w
        finally:
            w.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path)


@pytest.fixture
def unadopted_world(tmp_path: Path) -> Iterator[World]:
    """The hand-pasted seed: Secrets with no ``patrol.io/*`` annotations (the default scenario
    seeds an adopted world), for what patrol does before an operator annotates anything."""
    yield from _world(tmp_path, annotate_seed=False)


@pytest.fixture
def mixed_rollout_world(tmp_path: Path) -> Iterator[World]:
    """build-a's ScaledJob without a rollout field (KEDA's ``default``), build-b's ``gradual``."""
    yield from _world(tmp_path, clusters=(ClusterSpec("build-a", "agents-a"),
                                          ClusterSpec("build-b", "agents-b", rollout_strategy="gradual")))


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Success paths


def test_keda_rotation_recovers_and_revokes_the_old_pat_after_verification(world: World) -> None:
    seed = world.annotate_seed()
    failures = world.failed_polls()
    before = world.keda()
    record = world.rotate()
    assert record.outcome == "succeeded", record.error
    assert [s.status for s in record.steps] == ["done"] * len(STEPS)
    new_id = world.assert_converged()
    assert record.new_authorization_id == new_id and record.old_authorization_id == seed
    pats = world.pats()
    assert pats[new_id]["displayName"] == f"patrol-keda-{record.id}"
    assert pats[new_id]["scope"] == "vso.agentpools_manage" and pats[new_id]["allOrgs"] is False
    assert pats[seed]["status"] == "revoked"
    verified = record.step("verify").finished_at
    assert verified is not None and pats[seed]["revokedAt"] >= verified     # only after verification
    # switch: auto with KEDA's default rollout is a refresh: no spec change, no Job deleted...
    assert {t.target: t.status for t in record.targets if t.step == "switch"} == {
        f"{c}/{NS}/{SCALEDJOB}": "skipped" for c in CLUSTERS}
    after = world.keda()
    for key, stats in after.items():
        assert stats["generation_seen"] == before[key]["generation_seen"]
        assert stats["agents_killed"] == before[key]["agents_killed"]
    # ...KEDA moved to the new PAT by its own refresh on the first poll after the revoke...
    fingerprint = pats[new_id]["fingerprint"][:8]
    assert {s["token_fingerprint"] for s in after.values()} == {fingerprint}
    assert all(stats["refreshes"] > before[key]["refreshes"] for key, stats in after.items())
    # ...and never surfaced a failed poll: no outage, not even one.
    polls = {k: s["polls"] for k, s in after.items()}
    wait_for(lambda: all(s["polls"] >= polls[k] + 2 for k, s in world.keda().items()), timeout=15)
    assert world.failed_polls() == failures
    assert all(s["ready"] == "True" for s in world.keda().values())
    confirmed = record.step("confirm").finished_at
    assert confirmed is not None and confirmed >= pats[seed]["revokedAt"] + 2 * 2     # two KEDA polls
    # a Normal event on each consumer
    for cluster in CLUSTERS:
        events = world.call(world.sb.world.clusters[cluster].events, NS)
        assert any(e["reason"] == "PatRotated" and record.id in e["message"] for e in events)


def harm(world: World) -> dict[str, int]:
    status, text = asyncio.run(fetch(world.sb.ready["control_url"], "/state"))
    assert status == 200, text
    counters: dict[str, int] = json.loads(text)["harm"]
    return {key: int(counters[key]) for key in HARM_KEYS}


def test_a_planned_rotation_with_builds_running_harms_nothing(world: World) -> None:
    """The promise: builds run across the rotation (the sandbox's agent Jobs run long enough),
    and afterwards no build was interrupted, no agent failed to unregister, no KEDA poll failed,
    no Key Vault reader used a dead value and no pipeline run failed. Needs the sandbox's harm
    counters and batch/v1 agent Jobs (issue 7 §1)."""
    world.annotate_seed()
    before = harm(world)
    assert before == dict.fromkeys(HARM_KEYS, 0)

    def agents_running() -> bool:
        return all(any(job.running for job in world.adapters.cluster(c).list_jobs(
            NS, label_selector=f"scaledjob.keda.sh/name={SCALEDJOB}")) for c in CLUSTERS)

    wait_for(agents_running, timeout=30)                     # builds in flight when the rotation starts
    # The sandbox's External-Secrets-style reader re-reads the Key Vault secret every 10 s
    # (scenario keyvault_reader_refresh): say so, as an operator would, with the sink's key.
    world.config = replace(world.config, tokens=tuple(
        replace(t, sinks=tuple(replace(s, refresh_interval=timedelta(seconds=15)) for s in t.sinks))
        if t.name == "daily-checks" else t for t in world.config.tokens))
    keda = world.rotate()
    daily = world.rotate("daily-checks")
    assert keda.outcome == "succeeded", keda.error
    assert daily.outcome == "succeeded", daily.error
    for record in (keda, daily):
        assert record.step("drain").status == "done" and record.step("confirm").status == "done"
        assert "drain maximum reached" not in record.step("drain").detail
    # the old KEDA PAT outlived the builds that started with it: the drain waited for them
    rounds = re.search(r"after delivery, (\d+) round\(s\)\)", keda.step("drain").detail)
    assert rounds is not None and int(rounds.group(1)) > 1, keda.step("drain").detail
    world.assert_converged()
    world.assert_converged("daily-checks")
    # agents that started before delivery unregister when their build ends: give them one poll
    polls = {k: s["polls"] for k, s in world.keda().items()}
    wait_for(lambda: all(s["polls"] >= polls[k] + 2 for k, s in world.keda().items()), timeout=15)
    assert harm(world) == dict.fromkeys(HARM_KEYS, 0)


def test_an_out_of_band_revocation_skips_the_drain(world: World) -> None:
    seed = world.annotate_seed()
    status, text = asyncio.run(post(world.sb.ready["control_url"], f"/ado/pats/{seed}/revoke"))
    assert status == 200, text
    record = world.rotate()
    assert record.outcome == "succeeded", record.error
    assert record.step("drain").detail.startswith("skipped: the previous PAT is already invalid")
    world.assert_converged()
    # KEDA recovered on its own next poll once the Secret held the new token
    assert all(s["ready"] == "True" for s in world.keda().values())
    fingerprint = world.pats()[str(record.new_authorization_id)]["fingerprint"][:8]
    assert {s["token_fingerprint"] for s in world.keda().values()} == {fingerprint}


def test_rotate_compromised_revokes_without_draining(world: World) -> None:
    """`patrol rotate --compromised`, while a Key Vault reader would otherwise hold the old
    value for its refresh interval: the old PAT is revoked as soon as delivery is verified."""
    seed = world.sb.world.seeded.daily_pat_id
    path = world.tmp / "patrol-slow-readers.yaml"
    doc = yaml.safe_load(Path(world.sb.ready["config"]).read_text())
    for token in doc["tokens"]:
        for sink in token["sinks"]:
            sink["refresh_interval"] = "1h"
    path.write_text(yaml.safe_dump(doc))
    out = io.StringIO()
    args = cli_args(world, token="daily-checks", dry_run=False, compromised=True)
    args.config = str(path)
    started = time.monotonic()
    assert cli.run_rotate(args, out=out) == cli.EXIT_OK, out.getvalue()
    assert time.monotonic() - started < 60
    [record] = world.journal.recent("daily-checks", limit=1)
    assert record.step("drain").detail.startswith("skipped: the rotation is marked compromised")
    assert "(compromised)" in record.reason
    assert world.pats()[seed]["status"] == "revoked"
    history = io.StringIO()
    cli.run_history(cli_args(world, token="daily-checks", limit=5, steps=False, json=False), out=history)
    assert "COMPROMISED" in history.getvalue()


def test_a_drain_is_visible_and_blocks_no_other_token(world: World) -> None:
    """daily-checks drains for its Key Vault readers' refresh interval: /rotations shows the
    step running with what it waits for, the gauge is 1, and the keda rotation, started
    meanwhile by an alert, runs at the same time."""
    world.annotate_seed()
    doc_cfg = world.config
    daily = doc_cfg.token("daily-checks")
    slow = replace(daily, sinks=tuple(replace(s, refresh_interval=timedelta(seconds=20)) for s in daily.sinks))
    cfg = replace(doc_cfg, tokens=tuple(slow if t.name == "daily-checks" else t for t in doc_cfg.tokens))
    world.journal.close()
    service = world.service(config=cfg)
    with WorkerThread(service) as worker:
        _, request = service.planner.request("daily-checks", trigger="manual", reason="e2e drain")
        assert request is not None and service.dispatcher.submit(request)

        def draining() -> bool:
            doc = json.loads(asyncio.run(fetch(worker.url, "/rotations"))[1])
            rotations = doc["rotations"] if isinstance(doc, dict) else doc
            mine = [r for r in rotations if r["id"] == request.rotation_id]
            return bool(mine) and mine[0]["state"] == "drain" and any(
                s["name"] == "drain" and s["status"] == "running" and "readers of keyvault/" in s["detail"]
                for s in mine[0]["steps"])

        wait_for(draining, timeout=30)
        metrics = asyncio.run(fetch(worker.url, "/metrics"))[1]
        assert 'patrol_rotation_draining{token="daily-checks"} 1.0' in metrics
        assert 'patrol_rotation_drain_end_timestamp_seconds{token="daily-checks"}' in metrics
        answers = asyncio.run(deliver(worker.url, alert_payload(fp="e2edrain")))
        assert [code for code, _ in answers] == [202]

        def keda_verified_while_daily_drains() -> bool:
            keda = [r for r in service.journal.recent("keda", limit=1)]
            if not keda or keda[0].step("verify").status != "done":
                return False
            assert service.journal.get(request.rotation_id).state == "drain"
            return True

        wait_for(keda_verified_while_daily_drains, timeout=15)
        assert service.dispatcher.wait_idle(90)
        record = service.journal.get(request.rotation_id)
        metrics = asyncio.run(fetch(worker.url, "/metrics"))[1]
    world.reopen()
    assert record.outcome == "succeeded", record.error
    assert record.step("drain").detail.startswith("nothing holds the previous PAT any more (2")
    assert 'patrol_rotation_draining{token="daily-checks"} 0.0' in metrics


def test_daily_checks_rotation_in_key_vault(world: World) -> None:
    old = world.sb.world.seeded.daily_pat_id
    record = world.rotate("daily-checks")
    assert record.outcome == "succeeded", record.error
    new_id = world.assert_converged("daily-checks")
    versions = world.call(world.sb.world.kv.versions, "azure-devops-token")
    latest = versions[-1]
    assert latest["tags"] == {"authorizationId": new_id, "rotation": record.id}
    assert latest["attributes"]["exp"] == int(world.pats()[new_id]["valid_to"])
    assert world.pats()[old]["status"] == "revoked"


def test_second_rotation_revokes_the_first_patrol_pat_without_annotations(unadopted_world: World) -> None:
    world = unadopted_world                # the seed must be un-annotated for the first rotation
    first = world.rotate()                 # the hand-made PAT carries no id: not revoked, reported
    assert first.outcome == "succeeded"
    assert "by hand" in first.step("revoke").detail
    assert world.pats()[world.sb.world.seeded.keda_pat_id]["status"] == "active"
    second = world.rotate()
    assert second.outcome == "succeeded", second.error
    assert second.old_authorization_id == first.new_authorization_id
    assert world.pats()[str(first.new_authorization_id)]["status"] == "revoked"
    world.assert_converged()


def test_auto_switch_refreshes_a_default_rollout_and_bumps_a_gradual_one(mixed_rollout_world: World) -> None:
    """KEDA deletes a ScaledJob's running Jobs when its spec changes unless its rollout strategy
    is ``gradual``: ``switch: auto`` leaves build-a's spec alone (refresh) and bumps build-b's
    (gradual); no running agent is deleted on either, and nothing needs a warning."""
    world = mixed_rollout_world
    world.annotate_seed()
    before = world.keda()
    record = world.rotate()
    assert record.outcome == "succeeded", record.error
    assert "WARNING" not in record.step("plan").detail
    switch = {t.target: (t.status, t.detail.split(":")[0]) for t in record.targets if t.step == "switch"}
    assert switch == {f"build-a/{NS}/{SCALEDJOB}": ("skipped", "refresh"),
                      f"build-b/{NS}/{SCALEDJOB}": ("done", "bump")}
    after = world.keda()
    for key in after:
        assert after[key]["agents_killed"] == before[key]["agents_killed"], key
    world.assert_converged()


def test_explicit_bump_of_a_default_rollout_is_warned_about(mixed_rollout_world: World) -> None:
    world = mixed_rollout_world
    world.annotate_seed()
    token = world.config.tokens[0]
    world.config = replace(world.config, tokens=(
        replace(token, consumers=tuple(replace(c, switch="bump") for c in token.consumers)),
        *world.config.tokens[1:]))
    record = world.rotate()
    assert record.outcome == "succeeded", record.error
    plan = record.step("plan").detail
    assert (f"WARNING: ScaledJob build-a/{NS}/{SCALEDJOB} uses rollout strategy 'default': the switch step "
            "(switch: bump) makes KEDA delete its running agent Jobs (builds in flight are abandoned); set "
            "spec.rollout.strategy: gradual on it, or use switch: auto") in plan
    assert plan.count("WARNING") == 1
    assert {t.target: t.status for t in record.targets if t.step == "switch"} == {
        f"{c}/{NS}/{SCALEDJOB}": "done" for c in CLUSTERS}
    world.assert_converged()


# ---------------------------------------------------------------------------------------------
# Failure paths: each ends with consumers on a working token


def test_timeout_on_create_is_retried_without_orphans(world: World) -> None:
    world.annotate_seed()
    world.fault(kind="timeout", service="ado", path_regex="tokens/pats", method="POST", delay=0.2,
                remaining=1)
    record = world.rotate()
    assert record.outcome == "succeeded", record.error
    world.assert_converged()
    assert world.statuses("ado", "POST", "tokens/pats") == [0, 200]


def test_5xx_from_kubernetes_is_retried_per_sink(world: World) -> None:
    world.annotate_seed()
    world.fault(kind="status", service="kube:build-b", path_regex=f"secrets/{SECRET}",
                method="PATCH", status=503, remaining=2)
    record = world.rotate()
    assert record.outcome == "succeeded", record.error
    world.assert_converged()
    assert world.statuses("kube:build-b", "PATCH", SECRET) == [503, 503, 200]
    assert world.statuses("kube:build-a", "PATCH", SECRET) == [200]        # the other sink alone


def test_429_with_retry_after_is_honoured(world: World) -> None:
    world.annotate_seed()
    world.fault(kind="throttle", service="ado", path_regex="tokens/pats", method="POST", retry_after=1.0,
                remaining=1)
    started = time.monotonic()
    record = world.rotate()
    assert record.outcome == "succeeded", record.error
    assert record.step("create").finished_at is not None
    assert time.monotonic() - started >= 1.0
    assert world.statuses("ado", "POST", "tokens/pats") == [429, 200]
    world.assert_converged()


def test_401_from_the_pat_api_fails_before_anything_changes(world: World) -> None:
    seed = world.annotate_seed()
    before = {c: world.sink_value(c) for c in CLUSTERS}
    world.fault(kind="status", service="ado", path_regex="tokens/pats", method="POST", status=401)
    record = world.rotate()
    assert record.outcome == "failed" and record.step("create").status == "failed"
    assert "401" in record.error
    assert {c: world.sink_value(c) for c in CLUSTERS} == before
    assert world.pats()[seed]["status"] == "active"
    assert not [p for p in world.pats().values() if p["displayName"].startswith("patrol-")]


def test_409_on_the_secret_is_retried(world: World) -> None:
    world.annotate_seed()
    world.fault(kind="status", service="kube:build-a", path_regex=f"secrets/{SECRET}", method="PATCH",
                status=409, remaining=2)
    record = world.rotate()
    assert record.outcome == "succeeded", record.error
    world.assert_converged()
    assert world.statuses("kube:build-a", "PATCH", SECRET) == [409, 409, 200]


def test_a_sink_that_keeps_failing_ends_the_rotation_without_an_outage(world: World) -> None:
    seed = world.annotate_seed()
    failures = world.failed_polls()
    world.fault(kind="status", service="kube:build-b", path_regex=f"secrets/{SECRET}", method="PATCH",
                status=500)
    record = world.rotate()
    assert record.outcome == "failed" and record.step("deliver").status == "failed"
    assert "stays valid" in record.error
    pats = world.pats()
    assert pats[seed]["status"] == "active"                               # never revoked
    for cluster in CLUSTERS:                                              # each sink holds a live PAT
        held = world.pat_id(world.sink_value(cluster))
        assert held is not None and pats[held]["status"] == "active"
    time.sleep(2.5)
    assert world.failed_polls() == failures
    # The fault clears, a new rotation converges everything and revokes both older PATs.
    world.call(world.sb.world.faults.clear)
    again = world.rotate()
    assert again.outcome == "succeeded", again.error
    world.assert_converged()
    assert world.pats()[seed]["status"] == "revoked"
    assert world.pats()[str(record.new_authorization_id)]["status"] == "revoked"


@pytest.mark.parametrize("error_status", [200, 400])
def test_policy_violation_creates_nothing(world: World, error_status: int) -> None:
    seed = world.annotate_seed()
    world.call(world.sb.world.ado.set_policy, max_lifespan=60.0, lifespan_mode="reject",
               error_status=error_status)
    record = world.rotate()
    assert record.outcome == "failed" and "patLifespanPolicyViolation" in record.error
    assert "policy" in record.error
    assert world.pats()[seed]["status"] == "active"
    assert not [p for p in world.pats().values() if p["displayName"].startswith("patrol-")]


def test_scope_mismatch_revokes_the_new_pat_and_delivers_nothing(world: World) -> None:
    seed = world.annotate_seed()
    before = {c: world.sink_value(c) for c in CLUSTERS}
    kv_versions = len(world.call(world.sb.world.kv.versions, SECRET))
    failures = world.failed_polls()
    # An org policy narrows the scopes of the PAT ADO returns (sandbox simulation knob).
    world.call(world.sb.world.ado.set_policy, scope_override="vso.agentpools")
    world.journal.close()
    service = world.service()
    with WorkerThread(service) as worker:
        assert asyncio.run(deliver(worker.url, alert_payload()))[0][0] == 202
        assert service.dispatcher.wait_idle(60)
        [record] = service.journal.recent("keda")
        status, metrics = asyncio.run(fetch(worker.url, "/metrics"))
    world.reopen()
    assert record.outcome == "failed" and record.step("create").status == "failed", record.error
    assert [s.status for s in record.steps] == ["done", "failed"] + ["skipped"] * (len(STEPS) - 2)
    assert "came back with scopes vso.agentpools, asked for vso.agentpools_manage" in record.error
    assert "it was revoked" in record.error
    assert status == 200
    assert 'patrol_rotations_total{result="failed",token="keda"} 1.0' in metrics
    assert 'patrol_rotations_total{result="succeeded",token="keda"} 0.0' in metrics
    # The PAT ADO returned was revoked at once: no orphan left active (docs/rotation.md).
    pats = world.pats()
    new_id = str(record.new_authorization_id)
    assert pats[new_id]["scope"] == "vso.agentpools" and pats[new_id]["status"] == "revoked"
    assert not [p for p in pats.values() if p["displayName"].startswith("patrol-") and p["status"] == "active"]
    # Nothing was delivered: no sink write, every sink still holds the seed, which stays valid.
    for cluster in CLUSTERS:
        assert world.statuses(f"kube:{cluster}", "PATCH", f"secrets/{SECRET}") == []
        assert world.statuses(f"kube:{cluster}", "PUT", f"secrets/{SECRET}") == []
    assert {c: world.sink_value(c) for c in CLUSTERS} == before
    assert len(world.call(world.sb.world.kv.versions, SECRET)) == kv_versions
    assert world.statuses("keyvault", "PUT", "/secrets/") == []
    assert pats[seed]["status"] == "active" and world.pat_id(before["build-a"]) == seed
    # KEDA never lost a working token: two more polls, no authentication failure.
    polls = {k: s["polls"] for k, s in world.keda().items()}
    wait_for(lambda: all(s["polls"] >= polls[k] + 2 for k, s in world.keda().items()), timeout=15)
    assert world.failed_polls() == failures
    assert all(s["ready"] == "True" for s in world.keda().values())
    for cluster in CLUSTERS:
        events = world.call(world.sb.world.clusters[cluster].events, NS)
        assert any(e["reason"] == "PatRotationFailed" and record.id in e["message"] for e in events)


def test_clamped_lifetime_is_read_back(world: World) -> None:
    world.annotate_seed()
    world.call(world.sb.world.ado.set_policy, max_lifespan=120.0, lifespan_mode="clamp")
    record = world.rotate()
    assert record.outcome == "succeeded", record.error
    new_id = world.assert_converged()
    valid_to = world.pats()[new_id]["valid_to"]
    assert record.new_valid_to == pytest.approx(valid_to, abs=1)
    annotation = world.call(world.sb.world.clusters["build-a"].get_object, "v1", "secrets", NS, SECRET)
    assert annotation["metadata"]["annotations"]["patrol.io/expiry"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(valid_to)))


def test_flux_managed_secret_is_refused_and_opt_in_works(world: World) -> None:
    value = world.sink_value("build-b")
    assert value is not None
    world.call(world.sb.world.clusters["build-b"].put_secret, NS, SECRET, {KEY: value},
               field_manager="kustomize-controller")
    record = world.rotate()
    assert record.outcome == "failed" and record.step("plan").status == "failed"
    assert "managed by Flux" in record.error and "azureKeyVault" in record.error
    assert "kustomize.toolkit.fluxcd.io/ssa: IfNotPresent" in record.error
    assert not [p for p in world.pats().values() if p["displayName"].startswith("patrol-")]
    assert world.sink_value("build-b") == value and world.sink_value("build-a") == value
    world.call(world.sb.world.clusters["build-b"].put_secret, NS, SECRET, {KEY: value},
               field_manager="kustomize-controller",
               annotations={"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"})
    assert world.rotate().outcome == "succeeded"
    world.assert_converged()


def test_verification_deadline_keeps_the_old_pat(world: World) -> None:
    seed = world.annotate_seed()
    # The new token is accepted by the PAT API but ADO refuses it everywhere else (say, a
    # conditional-access policy): verification cannot pass, so nothing is revoked.
    world.fault(kind="status", service="ado", path_regex="_apis/(distributedtask|connectionData)",
                status=401)
    record = world.rotate(settings=replace(E2E, verify_deadline=3))
    assert record.outcome == "failed"
    assert record.step("verify").status == "failed" and "not revoked" in record.error
    assert world.pats()[seed]["status"] == "active"


# ---------------------------------------------------------------------------------------------
# Crashes and recovery


@pytest.mark.parametrize("crash_after", STEPS[:-1])
def test_crash_between_steps_is_recovered(world: World, crash_after: str) -> None:
    seed = world.annotate_seed()
    failures = world.failed_polls()

    def crash(rotation_id: str, step: str) -> None:
        if step == crash_after:
            raise Crash(step)

    decision, request = world.planner.request("keda", trigger="manual", reason="e2e", force=True)
    assert request is not None, decision
    with pytest.raises(Crash):
        world.saga(after_step=crash).run(request)
    world.locks.release("keda")                 # the kernel drops a dead process's flock
    world.remember_values()
    first_verify = world.journal.get(request.rotation_id).step("verify")
    # While the worker is down, every consumer still has a working token.
    pats = world.pats()
    for cluster in CLUSTERS:
        held = world.pat_id(world.sink_value(cluster))
        assert held is not None and pats[held]["status"] == "active"
    # Restart: a new process (new adapters, journal reopened) reconciles from the world.
    world.journal.close()
    adapters = CoreWorld(world.config, env={})
    service = world.service(adapters=adapters)
    try:
        report = service.reconcile()
        assert report.resumed == [request.rotation_id]
        assert service.dispatcher.wait_idle(60)
        record = service.journal.get(request.rotation_id)
    finally:
        service.stop()
        adapters.close()
        world.reopen()
    world.remember_values()
    assert record.outcome == "succeeded", record.error
    new_id = world.assert_converged()
    assert record.new_authorization_id == new_id
    pats = world.pats()
    assert pats[seed]["status"] == "revoked"
    # Revoked after a verification that finished: the one before the crash, or after the resume.
    verified = first_verify.finished_at if first_verify.status == "done" else record.step("verify").finished_at
    assert verified is not None and pats[seed]["revokedAt"] >= verified
    assert world.failed_polls() == failures


def test_orphan_pat_from_another_worker_is_revoked_after_the_grace(world: World) -> None:
    token_cfg = world.config.token("keda")
    world.journal.close()
    created = world.adapters.pats(token_cfg.organization).create(
        "patrol-keda-0000000000aa", token_cfg.scopes, datetime.now(UTC) + timedelta(minutes=5))
    world.values.add(created.token.reveal())
    service = world.service(orphan_grace=3600)
    try:
        report = service.reconcile()
        assert report.revoked == [] and created.info.authorization_id in report.kept
    finally:
        service.stop()
    service = world.service(orphan_grace=0)
    try:
        report = service.reconcile()
        assert report.revoked == [created.info.authorization_id]
    finally:
        service.stop()
    world.reopen()
    assert world.pats()[created.info.authorization_id]["status"] == "revoked"


# ---------------------------------------------------------------------------------------------
# The worker: webhook, metrics, two replicas with one Lease


def alert_payload(token: str = "keda", fp: str = "e2e0001", starts: str = "2026-08-01T10:00:00Z") -> bytes:
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "alertmanager"
    doc: dict[str, Any] = json.loads((fixture / "webhook-v4-firing.json").read_text())
    doc["alerts"][0]["labels"] = {"alertname": "PatRenewalDue", "token": token, "remediation": "rotate",
                                  "severity": "warning"}
    doc["alerts"][0]["fingerprint"] = fp
    doc["alerts"][0]["startsAt"] = starts
    doc["notification_reason"] = "first notification"
    doc["routeLabels"] = {}
    return json.dumps(doc).encode()


async def deliver(url: str, body: bytes, *, token: str = WEBHOOK_TOKEN,
                  count: int = 1) -> list[tuple[int, str]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async def one() -> tuple[int, str]:
            async with session.post(url + "/webhook/alertmanager", data=io.BytesIO(body),
                                    headers=headers) as resp:
                return resp.status, await resp.text()
        return list(await asyncio.gather(*(one() for _ in range(count))))


async def post(url: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url + path) as resp:
        return resp.status, await resp.text()


async def fetch(url: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url + path) as resp:
        return resp.status, await resp.text()


def test_webhook_drives_one_rotation_for_fifty_concurrent_duplicates(world: World) -> None:
    world.annotate_seed()
    world.journal.close()
    service = world.service()
    with WorkerThread(service) as worker:
        answers = asyncio.run(deliver(worker.url, alert_payload(), count=50))
        assert [code for code, _ in answers] == [202] * 50
        assert service.dispatcher.wait_idle(60)
        assert service.journal.count("keda") == 1
        [record] = service.journal.recent("keda")
        assert record.outcome == "succeeded", record.error
        assert record.trigger == "alert"
        # bad deliveries have no side effect
        assert asyncio.run(deliver(worker.url, alert_payload(fp="other"), token="wrong"))[0][0] == 401
        assert asyncio.run(deliver(worker.url, b"{", count=1))[0][0] == 400
        assert service.journal.count() == 1
        status, metrics = asyncio.run(fetch(worker.url, "/metrics"))
        assert status == 200
        assert 'patrol_rotations_total{result="succeeded",token="keda"} 1.0' in metrics
        assert 'patrol_webhook_requests_total{code="202"} 50.0' in metrics
        assert 'patrol_rotation_duration_seconds_count{token="keda"} 1.0' in metrics
        status, body = asyncio.run(fetch(worker.url, "/rotations"))
        assert status == 200 and json.loads(body)["rotations"][0]["id"] == record.id
    world.reopen()
    world.assert_converged()


def lease_config(cfg: Config) -> Config:
    lease = LeaseSettings(cluster="build-a", namespace=NS, name="patrol-worker",
                          duration=timedelta(seconds=2))
    return replace(cfg, worker=replace(cfg.worker, lease=lease))


def test_two_workers_one_lease(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world.annotate_seed()
    cfg = lease_config(world.config)
    workers = []
    adapters = [CoreWorld(cfg, env={}), CoreWorld(cfg, env={})]
    try:
        for i, a in enumerate(adapters):
            lock = LeaseLock(a.cluster("build-a"), NS, "patrol-worker", f"worker-{i}", timedelta(seconds=2))
            service = world.service(config=cfg, adapters=a, lease=lock, state_dir=tmp_path / f"state-{i}")
            workers.append(WorkerThread(service).start())
        wait_for(lambda: sum(w.service.leadership.is_leader() for w in workers) == 1, timeout=10)
        leader = next(w for w in workers if w.service.leadership.is_leader())
        follower = next(w for w in workers if w is not leader)
        leader_name = leader.service.leadership.lock.identity      # type: ignore[union-attr]
        # Both Ready (a standby does not trip KubeDeploymentReplicasMismatch); the metric says who leads.
        assert asyncio.run(fetch(follower.url, "/readyz"))[0] == 200
        assert asyncio.run(fetch(leader.url, "/readyz"))[0] == 200
        assert 'patrol_worker_leader 0.0' in asyncio.run(fetch(follower.url, "/metrics"))[1]
        assert 'patrol_worker_leader 1.0' in asyncio.run(fetch(leader.url, "/metrics"))[1]
        wait_for(lambda: follower.service.leadership.holder() == leader_name, timeout=10)
        refused = asyncio.run(deliver(follower.url, alert_payload()))[0]         # Alertmanager retries
        assert refused[0] == 503 and json.loads(refused[1])["leader"] == leader_name
        assert follower.service.journal.count() == 0
        assert asyncio.run(deliver(leader.url, alert_payload()))[0][0] == 202
        assert leader.service.dispatcher.wait_idle(60)
        assert leader.service.journal.recent("keda")[0].outcome == "succeeded"
        # `patrol rotate` while a worker holds the Lease: asked of the worker over POST /rotations.
        path = tmp_path / "patrol-lease.yaml"
        doc = yaml.safe_load(Path(world.sb.ready["config"]).read_text())
        doc.setdefault("worker", {})["lease"] = {"cluster": "build-a", "namespace": NS, "name": "patrol-worker",
                                                 "duration": "2s"}
        path.write_text(yaml.safe_dump(doc))
        env = {"PATROL_WEBHOOK_TOKEN": WEBHOOK_TOKEN, "POD_NAME": "operator-laptop"}
        args = cli_args(world, token="keda", dry_run=False, compromised=False, json=False, worker_url=None)
        args.config, args.env, args.state_dir = str(path), env, str(tmp_path / "operator-state")
        out = io.StringIO()
        assert cli.run_rotate(args, out=out) == cli.EXIT_FAILURE              # no URL: says how to reach it
        assert capsys.readouterr().err.count("no worker URL is set") == 1
        args.worker_url = follower.url                                         # the standby: 503 naming the leader
        cfg_file = load_config(str(path))
        assert cli.rotate_through_worker(args, cfg_file, env, "e2e", holder=leader_name, out=out, where="x",
                                         sleep=lambda _s: None) == cli.EXIT_FAILURE
        args.worker_url = leader.url
        assert cli.run_rotate(args, out=out) == cli.EXIT_OK, out.getvalue()
        assert f"on the worker {leader_name} at {leader.url}" in out.getvalue()
        [manual, alerted] = leader.service.journal.recent("keda", limit=2)
        assert (manual.trigger, manual.outcome, alerted.trigger) == ("manual", "succeeded", "alert")
        assert f"rotation {manual.id} succeeded: now {manual.new_authorization_id}" in out.getvalue()
        with Journal.in_state_dir(tmp_path / "operator-state") as local:
            assert local.count() == 0, "the worker rotated, not the CLI"
        err = capsys.readouterr().err
        assert f"the Lease holder is {leader_name}" in err and f"port-forward pod/{leader_name}" in err
        assert WEBHOOK_TOKEN not in err + out.getvalue()
        # The leader goes away (graceful stop releases the lease): the follower takes over.
        leader.stop()
        wait_for(follower.service.leadership.is_leader, timeout=10)
        assert asyncio.run(fetch(follower.url, "/readyz"))[0] == 200
        assert asyncio.run(deliver(follower.url, alert_payload(fp="e2e0002")))[0][0] == 202
        assert follower.service.dispatcher.wait_idle(60)
        assert follower.service.journal.recent("keda")[0].outcome == "succeeded"
    finally:
        for w in workers:
            w.stop()
        for a in adapters:
            a.close()
    world.assert_converged()


# ---------------------------------------------------------------------------------------------
# No token value anywhere patrol writes


def test_no_token_value_in_logs_metrics_responses_or_journal(world: World, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    world.annotate_seed()
    world.journal.close()
    captured: list[str] = []
    service = world.service()
    with WorkerThread(service) as worker:
        captured += [text for _, text in asyncio.run(deliver(worker.url, alert_payload(), count=3))]
        assert service.dispatcher.wait_idle(60)
        captured += [text for _, text in asyncio.run(deliver(worker.url, b"{", count=1))]
        for path in ("/metrics", "/rotations", "/healthz", "/readyz"):
            captured.append(asyncio.run(fetch(worker.url, path))[1])
    world.reopen()
    world.remember_values()
    # a failing rotation (its error text goes to the journal, logs and events)
    world.call(world.sb.world.ado.set_policy, max_lifespan=60.0, lifespan_mode="reject")
    assert world.rotate().outcome == "failed"
    world.call(world.sb.world.ado.set_policy, max_lifespan=None)
    assert world.rotate("daily-checks").outcome == "succeeded"
    # the command line's own output
    out = io.StringIO()
    args = cli_args(world, token="keda", dry_run=True)
    cli.run_rotate(args, out=out)
    history = cli_args(world, token=None, limit=50, steps=True, json=True)
    cli.run_history(history, out=out)
    captured.append(out.getvalue())
    # events patrol recorded in the clusters
    for cluster in CLUSTERS:
        captured += [e.get("message", "") for e in world.call(world.sb.world.clusters[cluster].events, NS)
                     if e.get("reason", "").startswith("PatRotat")]
    ours = [r for r in caplog.records if r.name.startswith("patrol")]
    assert ours, "no patrol log lines captured"
    for record in ours:
        captured.append(record.getMessage())
        captured.append(json.dumps({k: str(v) for k, v in vars(record).items()}))
    journal_bytes = b"".join(p.read_bytes() for p in world.state_dir.glob("journal.sqlite3*"))
    world.remember_values()
    secrets_ = set(world.values)
    secrets_.add(world.sb.ready["bot"]["password"])
    secrets_.add(Path(world.sb.ready["patrol_client"]["client_secret_file"]).read_text().strip())
    secrets_.add(WEBHOOK_TOKEN)
    assert len(world.values) >= 4                         # seeds + rotated values were collected
    blob = "\n".join(captured)
    for value in secrets_:
        assert value not in blob
        assert value.encode() not in journal_bytes


def cli_args(world: World, **kwargs: Any) -> Any:
    import argparse

    return argparse.Namespace(config=world.sb.ready["config"], state_dir=str(world.state_dir), env={},
                              reason=None, **kwargs)


# ---------------------------------------------------------------------------------------------
# A real worker process killed with SIGKILL mid-rotation, then a new one


WORKER_MAIN = """
import argparse, os, sys
from core import logs
from remediation import cli
logs.configure("text", "INFO")
sys.exit(cli.run_worker(argparse.Namespace(config=sys.argv[1], state_dir=sys.argv[2], listen="127.0.0.1:0",
                                           insecure_no_auth=False, env=dict(os.environ))))
"""


def start_worker_process(config_path: Path, state_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``patrol worker`` as a child process (stderr to ``log``); returns it and its URL."""
    env = {**os.environ, "PATROL_WEBHOOK_TOKEN": WEBHOOK_TOKEN}
    with log.open("wb") as sink:
        child = subprocess.Popen([sys.executable, "-c", WORKER_MAIN, str(config_path), str(state_dir)],
                                 stdout=subprocess.DEVNULL, stderr=sink, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "worker listening on" in text:
            port = int(text.split("worker listening on", 1)[1].split()[0].rsplit(":", 1)[1])
            return child, f"http://127.0.0.1:{port}"
        if child.poll() is not None:
            break
        time.sleep(0.05)
    child.kill()
    child.wait(10)
    raise AssertionError("worker did not start: " + log.read_text(errors="replace"))


def test_worker_process_killed_mid_rotation_is_recovered_by_the_next(world: World, tmp_path: Path) -> None:
    seed = world.annotate_seed()
    failures = world.failed_polls()
    doc = yaml.safe_load(Path(world.sb.ready["config"]).read_text())
    doc["worker"]["verify_deadline"] = "12s"          # settle 3 s: KEDA here polls every 2 s
    config_path = tmp_path / "patrol-fast.yaml"
    config_path.write_text(yaml.safe_dump(doc))
    world.journal.close()
    first, url = start_worker_process(config_path, world.state_dir, tmp_path / "first.log")
    try:
        assert asyncio.run(deliver(url, alert_payload()))[0][0] == 202
        with Journal.in_state_dir(world.state_dir) as journal:
            wait_for(lambda: bool(journal.recent("keda")) and
                     journal.recent("keda")[0].step("switch").status == "done", timeout=30, interval=0.05)
            rotation_id = journal.recent("keda")[0].id
        killed_at = time.time()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    world.remember_values()
    pats = world.pats()
    for cluster in CLUSTERS:                                  # while nobody runs: no outage
        held = world.pat_id(world.sink_value(cluster))
        assert held is not None and pats[held]["status"] == "active"
    assert pats[seed]["status"] == "active"
    second, _ = start_worker_process(config_path, world.state_dir, tmp_path / "second.log")
    try:
        with Journal.in_state_dir(world.state_dir) as journal:
            wait_for(lambda: journal.get(rotation_id).outcome is not None, timeout=60, interval=0.2)
            record = journal.get(rotation_id)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    world.reopen()
    world.remember_values()
    assert record.outcome == "succeeded", record.error
    assert (record.finished_at or 0) > killed_at              # finished by the second process
    new_id = world.assert_converged()
    assert record.new_authorization_id == new_id
    pats = world.pats()
    assert pats[seed]["status"] == "revoked"
    assert pats[seed]["revokedAt"] >= (record.step("verify").finished_at or 0)
    assert world.failed_polls() == failures
