"""In-memory fakes of the core adapters the exporter uses, and a small configuration to match.

The fakes stand exactly at our adapter boundary (the Protocols in ``exporter/*``): they take and
return :mod:`core` records (PatInfo, KubeSecret, KedaScaler, KubeEvent, Build, ...) and raise
:mod:`core.errors` types, so the exporter code above them runs unchanged. Each counts its calls,
and ``fail`` makes every call raise the given error until cleared.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from core import config
from core.ado import Agent, Build, JobRequest, PatInfo, Pool, ProbeResult
from core.errors import NotFoundError, PatrolError
from core.keyvault import SecretVersion
from core.kube import KedaScaler, KubeEvent, KubeSecret, ResourceExpiredError
from core.secret import Secret

NOW = 1_750_000_000.0
ORG = "contoso"
KEDA_SINKS = (
    config.KubernetesSecretSink(cluster="build-a", namespace="azure-devops", secret="azure-devops-token"),
    config.KubernetesSecretSink(cluster="build-b", namespace="azure-devops", secret="azure-devops-token"),
)
DAILY_SINK = config.KeyVaultSink(vault_url="https://contoso-checks.vault.azure.net", secret="azure-devops-token")
CONSUMERS = (
    config.KedaConsumer(kind="keda-scaledjob", cluster="build-a", namespace="azure-devops",
                        name="azure-devops-agent", pool="agents-a"),
    config.KedaConsumer(kind="keda-scaledjob", cluster="build-b", namespace="azure-devops",
                        name="azure-devops-agent", pool="agents-b"),
)


def at(offset: float) -> datetime:
    return datetime.fromtimestamp(NOW + offset, UTC)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def keda_token(**changes: Any) -> config.Token:
    fields: dict[str, Any] = {
        "name": "keda", "organization": ORG, "scopes": ("vso.agentpools_manage",),
        "lifetime": timedelta(days=30), "renew_before": timedelta(days=7), "sinks": KEDA_SINKS,
        "consumers": CONSUMERS}
    fields.update(changes)
    return config.Token(**fields)


def daily_token(**changes: Any) -> config.Token:
    fields: dict[str, Any] = {
        "name": "daily-checks", "organization": ORG,
        "scopes": ("vso.agentpools", "vso.build", "vso.pipelineresources_use", "vso.release"),
        "lifetime": timedelta(days=30), "renew_before": timedelta(days=7), "sinks": (DAILY_SINK,),
        "pipeline": config.PipelineCheck(project="Operations", definition="daily-checks")}
    fields.update(changes)
    return config.Token(**fields)


def make_config(*tokens: config.Token, **exporter: Any) -> config.Config:
    org = config.Organization(
        name=ORG, url="https://dev.azure.com/contoso", vssps_url="https://vssps.dev.azure.com/contoso",
        vsrm_url="https://vsrm.dev.azure.com/contoso",
        credential=config.UserCredential(kind="username-password"))
    settings = config.ExporterSettings(**exporter)
    return config.Config(source="test.yaml", organizations=(org,),
                         clusters=(config.Cluster("build-a"), config.Cluster("build-b")),
                         tokens=tokens or (keda_token(), daily_token()), exporter=settings)


def pat(auth_id: str, name: str, valid_to: datetime, valid_from: datetime | None = None) -> PatInfo:
    return PatInfo(authorization_id=auth_id, display_name=name, scopes=("vso.agentpools_manage",),
                   valid_from=valid_from or at(-86400), valid_to=valid_to, target_accounts=("org-id",))


class Failing:
    """``fail`` raises on every call while set; ``calls`` counts calls."""

    def __init__(self) -> None:
        self.fail: PatrolError | None = None
        self.calls = 0
        self._lock = threading.Lock()

    def _call(self) -> None:
        with self._lock:
            self.calls += 1
        if self.fail is not None:
            raise self.fail


class FakePats(Failing):
    def __init__(self, *pats: PatInfo) -> None:
        super().__init__()
        self.pats = list(pats)

    def list(self, display_filter: str = "active", *, name_prefix: str | None = None) -> list[PatInfo]:
        self._call()
        return [p for p in self.pats if name_prefix is None or p.display_name.startswith(name_prefix)]


class FakeVault(Failing):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, tuple[SecretVersion, Secret]] = {}

    def put(self, name: str, value: str, *, expires_on: datetime | None = None,
            tags: dict[str, str] | None = None) -> None:
        props = SecretVersion(name=name, version=f"v{len(self.secrets)}", expires_on=expires_on,
                              created_on=at(0), enabled=True, tags=dict(tags or {}))
        self.secrets[name] = (props, Secret(value))

    def get_secret(self, name: str, version: str | None = None) -> tuple[SecretVersion, Secret]:
        self._call()
        if name not in self.secrets:
            raise NotFoundError(f"Key Vault get {name}: not found", service="keyvault", status=404)
        return self.secrets[name]


class FakeCluster(Failing):
    """Secrets, KEDA objects and Events of one cluster. ``stream`` feeds an open watch."""

    def __init__(self, name: str = "build-a") -> None:
        super().__init__()
        self.name = name
        self.secrets: dict[tuple[str, str], KubeSecret] = {}
        self.scalers: dict[tuple[str, str], KedaScaler] = {}
        self.events: dict[str, KubeEvent] = {}
        self.version = 100
        self.stream: queue.Queue[tuple[str, KubeEvent] | BaseException | None] = queue.Queue()
        self.watches = 0
        self.lists = 0
        self.watch_fail: PatrolError | None = None

    def put_secret(self, ns: str, name: str, data: dict[str, str],
                   annotations: dict[str, str] | None = None) -> None:
        self.secrets[(ns, name)] = KubeSecret(name=name, namespace=ns, resource_version="1",
                                              data={k: Secret(v) for k, v in data.items()},
                                              annotations=dict(annotations or {}))

    def read_secret(self, ns: str, name: str) -> KubeSecret:
        self._call()
        if (ns, name) not in self.secrets:
            raise NotFoundError(f"read Secret {ns}/{name}: HTTP 404", service="kubernetes", status=404)
        return self.secrets[(ns, name)]

    def put_scaler(self, ns: str, name: str, ready: bool | None) -> None:
        self.scalers[(ns, name)] = KedaScaler(name=name, namespace=ns, uid=f"uid-{name}", generation=1,
                                              ready=ready, ready_reason=None, ready_message=None)

    def get_scaler(self, ns: str, resource: str, name: str) -> KedaScaler:
        self._call()
        if (ns, name) not in self.scalers:
            raise NotFoundError(f"read {resource} {ns}/{name}: HTTP 404", service="kubernetes", status=404)
        return self.scalers[(ns, name)]

    def event(self, uid: str, count: int, message: str, *, name: str = "azure-devops-agent",
              kind: str = "ScaledJob", reason: str = "KEDAScalerFailed", ns: str = "azure-devops") -> KubeEvent:
        self.version += 1
        return KubeEvent(uid=uid, name=f"{name}.{uid}", reason=reason, type="Warning", message=message,
                         count=count, first_timestamp=None, last_timestamp=None, involved_kind=kind,
                         involved_name=name, involved_namespace=ns, resource_version=str(self.version))

    def list_events(self, ns: str, *, field_selector: str) -> tuple[list[KubeEvent], str]:
        self._call()
        self.lists += 1
        assert field_selector == "reason=KEDAScalerFailed"
        return [e for e in self.events.values() if e.involved_namespace == ns], str(self.version)

    def watch_events(self, ns: str, *, field_selector: str, resource_version: str,
                     timeout_seconds: int) -> Iterator[tuple[str, KubeEvent]]:
        self.watches += 1
        if self.watch_fail is not None:
            raise self.watch_fail
        while True:
            try:
                item = self.stream.get(timeout=timeout_seconds)
            except queue.Empty:
                return
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def expire_watch(self) -> None:
        self.stream.put(ResourceExpiredError("watch Events: HTTP 410 Gone"))


class FakeAdo(Failing):
    """Pools, agents, job requests and builds of one organization."""

    def __init__(self) -> None:
        super().__init__()
        self.pools: dict[str, int] = {}
        self.agents: dict[int, list[Agent]] = {}
        self.jobs: dict[int, list[JobRequest]] = {}
        self.builds: list[Build] = []
        self.definitions: dict[str, int] = {"daily-checks": 7}
        self.find_calls = 0
        self.closed = False

    def add_pool(self, name: str, pool_id: int) -> None:
        self.pools[name] = pool_id
        self.agents[pool_id] = []
        self.jobs[pool_id] = []

    def find_pool(self, name: str) -> Pool:
        self._call()
        self.find_calls += 1
        if name not in self.pools:
            raise NotFoundError(f"ado: agent pool {name!r} not found", service="ado")
        return Pool(id=self.pools[name], name=name)

    def list_agents(self, pool_id: int) -> list[Agent]:
        self._call()
        if pool_id not in self.agents:
            raise NotFoundError("ado: pool not found", service="ado", status=404)
        return list(self.agents[pool_id])

    def list_job_requests(self, pool_id: int, *, top: int = 250) -> list[JobRequest]:
        self._call()
        if pool_id not in self.jobs:
            raise NotFoundError("ado: pool not found", service="ado", status=404)
        return list(self.jobs[pool_id])[:top]

    def find_build_definition(self, project: str, name_or_id: str | int) -> int:
        self._call()
        self.find_calls += 1
        return self.definitions[str(name_or_id)]

    def latest_builds(self, project: str, definition_id: int, *, top: int = 1,
                      result_filter: str | None = None) -> list[Build]:
        self._call()
        builds = [b for b in self.builds if b.definition_id == definition_id
                  and (result_filter is None or b.result == result_filter)]
        builds.sort(key=lambda b: b.finish_time or at(-10**9), reverse=True)
        return builds[:top]

    def close(self) -> None:
        self.closed = True


def job(request_id: int, queued: float, *, result: str | None = None,
        received: float | None = None) -> JobRequest:
    return JobRequest(request_id=request_id, queue_time=at(queued), assign_time=None,
                      receive_time=at(received) if received is not None else None, result=result, pool_id=1)


def agent(agent_id: int, status: str) -> Agent:
    return Agent(id=agent_id, name=f"agent-{agent_id}", status=status, enabled=True, assigned_request_id=None)


def build(build_id: int, result: str, finished: float, definition_id: int = 7) -> Build:
    return Build(id=build_id, result=result, status="completed", queue_time=at(finished - 60),
                 start_time=at(finished - 50), finish_time=at(finished), definition_id=definition_id,
                 definition_name="daily-checks")


class FakeProber(Failing):
    """Tokens listed in ``valid`` authenticate; every probe is recorded by fingerprint."""

    def __init__(self, *valid: str) -> None:
        super().__init__()
        self.valid = set(valid)
        self.probed: list[str] = []

    def __call__(self, token: config.Token, value: Secret) -> ProbeResult:
        self._call()
        self.probed.append(value.fingerprint)
        ok = value.reveal() in self.valid
        return ProbeResult(ok=ok, scopes=dict.fromkeys(token.scopes, ok), detail="fake")
