"""The fault matrix's harness: one in-process sandbox per test module, faults from the matrix's
data, and the invariants every case ends on.

A case injects its fault, runs what the call belongs to (a rotation through a fresh
:class:`WorkerService`, or one refresh of an exporter source), asserts the matrix's expectation,
clears the fault, lets patrol recover (the next rotation, the next refresh) and then checks the
world, not patrol's word for it: every sink holds an active PAT and they agree, no patrol PAT
is left active besides it, KEDA never failed a poll and the sandbox's harm counters did not move.

The world is not rebuilt between cases (a sandbox starts in about a second, a case takes a
few): each case starts from the converged world the previous one left, and checks it first.
"""

from __future__ import annotations

import contextlib
import gc
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.config import Config
from core.lease import LeaseLock
from core.retry import Backoff
from remediation.journal import RotationRecord
from remediation.saga import SagaSettings
from remediation.service import WorkerService
from remediation.world import CoreWorld
from sandbox.app import SandboxThread
from sandbox.http import RequestRecord
from sandbox.scenarios import ScenarioParams, scenario
from tests.e2e.test_rotation_sandbox import E2E, HARM_KEYS, WEBHOOK_TOKEN, World
from tests.faults.matrix import CLUSTERS, FAULTED, Call, Fault

# The default world on a faster clock: KEDA polls every second, builds of 1 s run on agent Jobs
# the job generator starts every 2 s; no daily-checks pipeline or External-Secrets reader, whose
# reads of the vault (and ADO calls) would share the faults' paths with patrol's.
WORLD: dict[str, Any] = {"keda_polling_interval": 1, "job_interval": 2.0, "build_duration": 1.0,
                         "active_deadline_seconds": 20, "pipeline_interval": None,
                         "keyvault_reader_refresh": None}
SETTINGS = replace(E2E, verify_deadline=4.0, verify_interval=0.5, secret_settle=0.5, confirm_polls=1)
# A refused host is retried by the client under the saga (the PAT client's own backoff, azure-core's
# connection retries) and again by the saga: without the saga's retries the case shows the same
# clean failure, sooner.
REFUSED_SETTINGS = replace(SETTINGS, api_backoff=Backoff(delays=()))
LATENCY = 0.5
LEASE_NAMESPACE, LEASE_NAME = FAULTED.namespace, "patrol-faults"
RETRY_AFTER = 1.0
KILL_HOLD = 2.0                       # a SIGKILL case: the sandbox answers (and acts) this long after the call


def params(**overrides: Any) -> ScenarioParams:
    return scenario("default", **{**WORLD, **overrides})


def module_rig(tmp_path_factory: pytest.TempPathFactory, name: str, **overrides: Any) -> Iterator[Rig]:
    """The body of each test module's ``rig`` fixture: one sandbox and its rig for the module."""
    tmp = tmp_path_factory.mktemp(name)
    with SandboxThread(str(tmp / "sandbox"), params(**overrides)) as sb:
        made = Rig(sb, tmp)
        try:
            yield made
        finally:
            made.close()
            # Error responses kept alive by caught exceptions hold client sockets until collected:
            # free them while the sandbox still runs (else a ResourceWarning on its side).
            gc.collect()


def fault_kwargs(call: Call, fault: Fault) -> dict[str, Any]:
    """The sandbox Fault (``POST /faults`` body) that makes ``fault`` happen to ``call``."""
    match = {"service": call.service, "method": call.method, "path_regex": call.path_regex}
    if fault is Fault.LATENCY:
        return {**match, "kind": "timeout", "delay": LATENCY, "remaining": 1}
    if fault is Fault.STATUS_5XX:
        return {**match, "kind": "status", "status": 503,
                "remaining": 2 if call.component == "saga" else None}
    if fault is Fault.THROTTLE:
        return {**match, "kind": "throttle", "retry_after": RETRY_AFTER, "remaining": 1}
    if fault is Fault.UNAUTHORIZED:
        return {**match, "kind": "status", "status": 401}
    if fault is Fault.SIGKILL:
        return {**match, "kind": "latency", "delay": KILL_HOLD, "remaining": 1}   # killed before the answer
    raise ValueError(f"{fault} is not made by a sandbox fault")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused_config(cfg: Config, host: str, tmp: Path) -> Config:
    """``cfg`` with one host pointed at a closed port (Fault.REFUSED)."""
    dead = f"http://127.0.0.1:{closed_port()}"
    if host == "entra":
        # Both identities: patrol's own (Key Vault) and the bot's sign-in. (The bot's alone costs
        # minutes per attempt: the PAT client's backoff around azure-core's connection retries
        # around MSAL, inside the saga's backoff.)
        dead_tls = dead.replace("http://", "https://")
        orgs = tuple(replace(o, credential=replace(o.credential, authority=dead_tls)) for o in cfg.organizations)
        return replace(cfg, azure=replace(cfg.azure, authority=dead_tls), organizations=orgs)
    if host == "vssps":
        return replace(cfg, organizations=tuple(
            replace(o, vssps_url=f"{dead}/vssps/{o.name}") for o in cfg.organizations))
    if host == "org":
        return replace(cfg, organizations=tuple(
            replace(o, url=f"{dead}/{o.name}", vsrm_url=f"{dead}/vsrm/{o.name}") for o in cfg.organizations))
    if host == "keyvault":
        dead_tls = dead.replace("http://", "https://")
        tokens = tuple(replace(t, sinks=tuple(
            replace(s, vault_url=dead_tls) if s.kind == "keyvault" else s for s in t.sinks)) for t in cfg.tokens)
        return replace(cfg, tokens=tokens)
    if host == "kube":
        cluster = cfg.cluster(FAULTED.name)
        doc = yaml.safe_load(Path(cluster.kubeconfig or "").read_text())
        for entry in doc["clusters"]:
            if entry["name"] == cluster.name:
                entry["cluster"]["server"] = dead
        path = tmp / f"kubeconfig-refused-{cluster.name}"
        path.write_text(yaml.safe_dump(doc))
        return replace(cfg, clusters=tuple(replace(c, kubeconfig=str(path)) if c.name == cluster.name else c
                                           for c in cfg.clusters))
    raise ValueError(f"unknown host {host!r}")


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@dataclass
class Attempt:
    """One rotation run through a worker, as patrol reports it."""

    record: RotationRecord
    metrics: str

    @property
    def json(self) -> dict[str, Any]:
        return self.record.to_json()


@dataclass
class Baseline:
    """What the world had suffered before a case: the case must add nothing."""

    harm: dict[str, int]
    failed_polls: int
    started: float


class Rig:
    """The sandbox, patrol's config for it, and a worker per rotation (fresh clients each time,
    so a fault on a sign-in is met by a real sign-in)."""

    def __init__(self, sb: SandboxThread, tmp: Path) -> None:
        self.sb = sb
        self.tmp = tmp
        self.world = World(sb, tmp)
        self.world.journal.close()            # the workers own the journal
        self.state_dir = self.world.state_dir
        self.config = self.world.config

    def close(self) -> None:
        self.world.adapters.close()

    # -- the world -----------------------------------------------------------------------------

    def harm(self) -> dict[str, int]:
        counters: dict[str, int] = self.world.call(self.sb.world.actors.harm)
        return {key: int(counters.get(key, 0)) for key in HARM_KEYS}

    def baseline(self) -> Baseline:
        return Baseline(self.harm(), self.world.failed_polls(), time.time())

    def requests(self, call: Call, since: float) -> list[RequestRecord]:
        rx = re.compile(call.path_regex)
        records: list[RequestRecord] = self.world.call(self.sb.world.log.records, service=call.service,
                                                       since=since)
        return [r for r in records if (call.method is None or r.method == call.method)
                and (rx.search(r.path) or rx.search(f"{r.path}?{r.query}"))]

    def sink_values(self, token: str) -> list[str | None]:
        if token == "keda":
            return [self.world.sink_value(c) for c in CLUSTERS]
        return [self.world.kv_value()]

    def sinks_hold_active_pats(self, token: str) -> None:
        """No consumer without a working token: each sink holds a PAT ADO accepts now."""
        pats = self.world.pats()
        for value in self.sink_values(token):
            held = self.world.pat_id(value)
            assert held is not None, f"a {token} sink holds no PAT of the organization"
            assert pats[held]["status"] == "active" and pats[held]["valid_to"] > time.time(), \
                f"a {token} sink holds PAT {held}, which is {pats[held]['status']}: an outage"

    def converged(self, token: str, before: Baseline) -> str:
        """The end state of every case (the module docstring)."""
        self.world.remember_values()
        held = self.world.assert_converged(token)
        if token == "keda":
            # KEDA moves to a new PAT on its first failing poll (refresh, retry in the same poll):
            # one more poll each, so a consumer still on a revoked PAT would have shown.
            polls = {k: s["polls"] for k, s in self.world.keda().items()}
            deadline = time.monotonic() + 15
            while not all(s["polls"] > polls[k] for k, s in self.world.keda().items()):
                assert time.monotonic() < deadline, "KEDA stopped polling"
                time.sleep(0.05)
        assert self.world.failed_polls() == before.failed_polls, "KEDA failed a poll: an outage"
        assert self.harm() == before.harm, f"the world was harmed: {before.harm} -> {self.harm()}"
        return held

    # -- patrol --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def worker(self, cfg: Config | None = None, state_dir: Path | None = None,
               settings: SagaSettings = SETTINGS, lease_cluster: str | None = None,
               **kwargs: Any) -> Iterator[WorkerService]:
        """A worker service with its own clients, not started (no reconcile runs behind the case
        unless the case starts it). ``lease_cluster``: it leads through a Lease there (3 s,
        renewed every second), as with ``worker.lease``."""
        cfg = cfg or self.config
        adapters = CoreWorld(cfg, env={})
        lease = (LeaseLock(adapters.cluster(lease_cluster), LEASE_NAMESPACE, LEASE_NAME, "faults-worker",
                           timedelta(seconds=3)) if lease_cluster else None)
        service = WorkerService(cfg, adapters, state_dir=state_dir or self.state_dir, lease=lease,
                                webhook_token=WEBHOOK_TOKEN, settings=settings, reconcile_interval=3600,
                                **kwargs)
        try:
            yield service
        finally:
            service.stop()
            adapters.close()

    def rotate(self, service: WorkerService, token: str, reason: str) -> Attempt:
        """What ``POST /rotations {"token", "force": true}`` does: plan, dispatch, wait."""
        decision, request = service.planner.request(token, trigger="manual", reason=reason, force=True)
        assert request is not None, decision
        assert service.dispatcher.submit(request)
        assert service.dispatcher.wait_idle(120), "the rotation did not finish in 120 s"
        record = service.journal.get(request.rotation_id)
        return Attempt(record, generate_latest(service.metrics.registry).decode())
