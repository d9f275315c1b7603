"""In-memory fakes of the saga's port (remediation.world), at our adapter boundary.

They stand where core.ado / core.kube / core.keyvault stand in production, with the same
method shapes and the same core.errors, so the real sinks and the real saga run on top.
End-to-end behaviour against real HTTP lives in tests/e2e (the sandbox).
"""

from __future__ import annotations

import builtins
import hashlib
import itertools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from core import config
from core.ado import Agent, Build, CreatedPat, JobRequest, PatInfo, Pool, ProbeResult
from core.errors import ConflictError, NotFoundError, PatrolError, PolicyViolationError, UnauthorizedError
from core.keyvault import SecretVersion
from core.kube import KedaScaler, KubeEvent, KubeJob, KubeSecret
from core.secret import Secret
from remediation.sinks import KeyVaultSink, KubernetesSecretSink, Sink


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def dt(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


Faults = dict[str, list[PatrolError]]


def _fault(faults: Faults, op: str) -> None:
    queue = faults.get(op)
    if queue:
        raise queue.pop(0)


@dataclass
class PatRow:
    info: PatInfo
    value: str
    active: bool = True


class FakePats:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[str, PatRow] = {}
        self.faults: Faults = {}
        self.max_lifetime: timedelta | None = None
        self.drop_scope: str | None = None
        self.created: list[str] = []
        self.revoked: list[str] = []
        self.calls: list[str] = []

    def add(self, display_name: str, scopes: Sequence[str], value: str | None = None) -> PatRow:
        info = PatInfo(authorization_id=str(uuid.uuid4()), display_name=display_name, scopes=tuple(scopes),
                       valid_from=self.clock.dt(), valid_to=self.clock.dt() + timedelta(days=30),
                       target_accounts=("org-id",))
        row = PatRow(info, value or uuid.uuid4().hex * 2)
        self.rows[info.authorization_id] = row
        return row

    def active_values(self) -> dict[str, str]:
        return {r.value: a for a, r in self.rows.items()
                if r.active and r.info.valid_to.timestamp() > self.clock.now}

    def list(self, display_filter: str = "active", *,
             name_prefix: str | None = None) -> builtins.list[PatInfo]:
        self.calls.append("list")
        _fault(self.faults, "list")
        out = [r.info for r in self.rows.values() if (r.active or display_filter == "all")]
        return [i for i in out if name_prefix is None or i.display_name.startswith(name_prefix)]

    def get(self, authorization_id: str) -> PatInfo:
        self.calls.append("get")
        _fault(self.faults, "get")
        row = self.rows.get(authorization_id)
        if row is None or not row.active:
            raise PolicyViolationError("not found", code="authorizationNotFound")
        return row.info

    def create(self, display_name: str, scopes: Sequence[str], valid_to: datetime, *,
               all_orgs: bool = False) -> CreatedPat:
        self.calls.append("create")
        _fault(self.faults, "create")
        got = [s for s in scopes if s != self.drop_scope]
        if self.max_lifetime is not None:
            valid_to = min(valid_to, self.clock.dt() + self.max_lifetime)
        row = self.add(display_name, got)
        row.info = replace(row.info, valid_to=valid_to, target_accounts=None if all_orgs else ("org-id",))
        self.created.append(row.info.authorization_id)
        _fault(self.faults, "create-after")        # ADO acted, then the answer was lost
        return CreatedPat(info=row.info, token=Secret(row.value))

    def revoke(self, authorization_id: str) -> None:
        self.calls.append("revoke")
        _fault(self.faults, "revoke")
        row = self.rows.get(authorization_id)
        if row is not None and row.active:
            row.active = False
            self.revoked.append(authorization_id)


@dataclass
class StoredSecret:
    data: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    managers: tuple[str, ...] = ()
    rv: int = 1


@dataclass
class Scaler:
    uid: str
    generation: int = 1
    ready: bool | None = True
    annotations: dict[str, str] = field(default_factory=dict)
    rollout_strategy: str = "default"           # KEDA's default: a bump kills running Jobs
    polling_interval: int = 2
    active_deadline_seconds: int | None = None


def agent_job(name: str, started: datetime, *, ns: str = "ado", ended: datetime | None = None,
              deadline: int | None = None) -> KubeJob:
    """A KEDA agent Job as core.kube.parse_job reads it (pkg/scaling/executor/scale_jobs.go)."""
    return KubeJob(name=name, namespace=ns, created=started, start_time=started, completion_time=ended,
                   active=0 if ended else 1, succeeded=1 if ended else 0, failed=0, finished=ended is not None,
                   generation="1", active_deadline_seconds=deadline)


class FakeCluster:
    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.clock = clock
        self.secrets: dict[tuple[str, str], StoredSecret] = {}
        self.scalers: dict[tuple[str, str, str], Scaler] = {}
        self.events: list[KubeEvent] = []
        self.jobs: dict[tuple[str, str], list[KubeJob]] = {}    # (ns, scaledjob) → its agent Jobs
        self.job_selectors: list[str] = []
        self.faults: Faults = {}
        self.conflicts = 0                          # answer the next N patches with 409
        self.on_bump: Callable[[FakeCluster, str, str], None] | None = None

    def read_secret(self, ns: str, name: str) -> KubeSecret:
        _fault(self.faults, "read_secret")
        stored = self.secrets.get((ns, name))
        if stored is None:
            raise NotFoundError(f"secret {ns}/{name} not found", status=404)
        return KubeSecret(name=name, namespace=ns, resource_version=str(stored.rv),
                          data={k: Secret(v) for k, v in stored.data.items()},
                          labels=dict(stored.labels), annotations=dict(stored.annotations),
                          field_managers=stored.managers,
                          flux_managed="kustomize.toolkit.fluxcd.io/name" in stored.labels
                          or "kustomize-controller" in stored.managers,
                          flux_ssa=stored.annotations.get("kustomize.toolkit.fluxcd.io/ssa"))

    def patch_secret(self, ns: str, name: str, *, key: str, value: Secret, annotations: Mapping[str, str],
                     resource_version: str) -> KubeSecret:
        _fault(self.faults, "patch_secret")
        stored = self.secrets[(ns, name)]
        if self.conflicts > 0:
            self.conflicts -= 1
            stored.rv += 1                           # someone else wrote meanwhile
            raise ConflictError("the object has been modified")
        if resource_version != str(stored.rv):
            raise ConflictError("stale resourceVersion")
        stored.data[key] = value.reveal()
        stored.annotations.update(annotations)
        stored.rv += 1
        return self.read_secret(ns, name)

    def value(self, ns: str, name: str, key: str = "token") -> str | None:
        stored = self.secrets.get((ns, name))
        return None if stored is None else stored.data.get(key)

    def get_scaler(self, ns: str, resource: str, name: str) -> KedaScaler:
        _fault(self.faults, "get_scaler")
        scaler = self.scalers.get((ns, resource, name))
        if scaler is None:
            raise NotFoundError(f"{resource} {ns}/{name} not found", status=404)
        return KedaScaler(name=name, namespace=ns, uid=scaler.uid, generation=scaler.generation,
                          ready=scaler.ready, ready_reason=None if scaler.ready else "TriggerError",
                          ready_message=None, pod_template_annotations=dict(scaler.annotations),
                          rollout_strategy=scaler.rollout_strategy if resource == "scaledjobs" else "n/a",
                          polling_interval=scaler.polling_interval,
                          active_deadline_seconds=scaler.active_deadline_seconds)

    def list_jobs(self, ns: str, *, label_selector: str) -> builtins.list[KubeJob]:
        _fault(self.faults, "list_jobs")
        self.job_selectors.append(label_selector)
        key, _, name = label_selector.partition("=")
        assert key == "scaledjob.keda.sh/name", label_selector
        return list(self.jobs.get((ns, name), []))

    def bump_scaler(self, ns: str, resource: str, name: str, *, annotation: str, value: str) -> KedaScaler:
        _fault(self.faults, "bump_scaler")
        scaler = self.scalers[(ns, resource, name)]
        if scaler.annotations.get(annotation) != value:
            scaler.annotations[annotation] = value
            scaler.generation += 1
        if self.on_bump is not None:
            self.on_bump(self, ns, name)
        return self.get_scaler(ns, resource, name)

    def add_event(self, ns: str, kind: str, name: str, reason: str, message: str,
                  when: datetime | None = None) -> None:
        stamp = when or self.clock.dt()
        self.events.append(KubeEvent(uid=str(uuid.uuid4()), name=f"{name}.{len(self.events)}", reason=reason,
                                     type="Warning", message=message, count=1, first_timestamp=stamp,
                                     last_timestamp=stamp, involved_kind=kind, involved_name=name,
                                     involved_namespace=ns, resource_version=str(len(self.events))))

    def bump_series(self, index: int = -1) -> None:
        """KEDA >= 2.20: a repeat only raises series.count; no newer timestamp is flushed yet."""
        event = self.events[index]
        self.events[index] = replace(event, count=event.count + 1, series_count=event.count + 1)

    def list_events(self, ns: str, *, field_selector: str) -> tuple[list[KubeEvent], str]:
        _fault(self.faults, "list_events")
        wanted = dict(part.split("=", 1) for part in field_selector.split(","))
        out = [e for e in self.events if e.involved_namespace == ns
               and wanted.get("involvedObject.kind", e.involved_kind) == e.involved_kind
               and wanted.get("involvedObject.name", e.involved_name) == e.involved_name
               and wanted.get("reason", e.reason) == e.reason]
        return out, str(len(self.events))

    def create_event(self, ns: str, *, involved_kind: str, involved_name: str, involved_uid: str,
                     api_version: str, reason: str, message: str, type_: str = "Normal",
                     component: str = "patrol", now: datetime | None = None) -> KubeEvent:
        _fault(self.faults, "create_event")
        self.add_event(ns, involved_kind, involved_name, reason, message, now)
        return self.events[-1]


class FakeVault:
    def __init__(self) -> None:
        self.versions: dict[str, list[tuple[SecretVersion, str]]] = {}
        self.faults: Faults = {}
        self._n = itertools.count(1)

    def get_secret(self, name: str, version: str | None = None) -> tuple[SecretVersion, Secret]:
        _fault(self.faults, "get_secret")
        versions = self.versions.get(name)
        if not versions:
            raise NotFoundError(f"secret {name} not found", status=404)
        props, value = versions[-1]
        return props, Secret(value)

    def set_secret(self, name: str, value: Secret, *, expires_on: datetime | None,
                   tags: Mapping[str, str]) -> SecretVersion:
        _fault(self.faults, "set_secret")
        props = SecretVersion(name=name, version=f"{next(self._n):032x}", expires_on=expires_on,
                              created_on=None, enabled=True, tags=dict(tags))
        self.versions.setdefault(name, []).append((props, value.reveal()))
        return props

    def value(self, name: str) -> str | None:
        versions = self.versions.get(name)
        return versions[-1][1] if versions else None


class FakeOrg:
    """ADO read API authenticated with one PAT: works while that PAT is active in FakePats."""

    def __init__(self, world: FakeWorld, pat: Secret) -> None:
        self.world = world
        self.pat = pat
        self.closed = False

    def _auth(self) -> None:
        _fault(self.world.org_faults, "org")
        if self.pat.reveal() not in self.world.pats_api.active_values():
            raise UnauthorizedError("401", status=401)

    def probe(self, scopes: str | Iterable[str], *, project: str | None = None) -> ProbeResult:
        wanted = [scopes] if isinstance(scopes, str) else list(scopes)
        try:
            self._auth()
            ok = True
        except UnauthorizedError:
            ok = False
        return ProbeResult(ok=ok, scopes=dict.fromkeys(wanted, ok), detail="fake probe")

    def find_pool(self, name: str) -> Pool:
        self._auth()
        return Pool(id=7, name=name)

    def list_agents(self, pool_id: int) -> builtins.list[Agent]:
        self._auth()
        return list(self.world.agents)

    def list_job_requests(self, pool_id: int, *, top: int = 250) -> builtins.list[JobRequest]:
        self._auth()
        return list(self.world.jobs)

    def find_build_definition(self, project: str, name_or_id: str | int) -> int:
        self._auth()
        return 42

    def running_builds(self, project: str, definition_id: int, *, top: int = 100) -> builtins.list[Build]:
        self._auth()
        _fault(self.world.org_faults, "running_builds")
        return [b for b in self.world.builds if b.status == "inProgress"]

    def close(self) -> None:
        self.closed = True


class FakeWorld:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pats_api = FakePats(clock)
        self.clusters = {"c1": FakeCluster("c1", clock), "c2": FakeCluster("c2", clock)}
        self.vault = FakeVault()
        self.org_faults: Faults = {}
        self.agents: list[Agent] = []
        self.jobs: list[JobRequest] = []
        self.builds: list[Build] = []
        self.orgs: list[FakeOrg] = []

    def pats(self, organization: str) -> FakePats:
        return self.pats_api

    def sink(self, spec: config.Sink) -> Sink:
        if isinstance(spec, config.KubernetesSecretSink):
            return KubernetesSecretSink(spec, self.clusters[spec.cluster], sleep=self.clock.sleep)
        return KeyVaultSink(spec, self.vault)

    def cluster(self, name: str) -> FakeCluster:
        return self.clusters[name]

    def organization_client(self, organization: str, pat: Secret) -> FakeOrg:
        org = FakeOrg(self, pat)
        self.orgs.append(org)
        return org


def make_config(*, flux: config.FluxPolicy = "refuse", consumers: bool = True, keyvault: bool = True,
                tmp: str = "/tmp/patrol-state") -> config.Config:
    cred = config.UserCredential(kind="environment")
    org = config.Organization(name="org", url="https://dev.azure.com/org", vssps_url="https://vssps/org",
                              vsrm_url="https://vsrm/org", credential=cred)
    sinks: list[config.Sink] = [
        config.KubernetesSecretSink(cluster="c1", namespace="ado", secret="pat", key="token", flux=flux),
        config.KubernetesSecretSink(cluster="c2", namespace="ado", secret="pat", key="token", flux=flux),
    ]
    if keyvault:
        sinks.append(config.KeyVaultSink(vault_url="https://kv.example", secret="ado-pat"))
    keda = (
        config.KedaConsumer(kind="keda-scaledjob", cluster="c1", namespace="ado", name="agent", pool="pool1"),
        config.KedaConsumer(kind="keda-scaledjob", cluster="c2", namespace="ado", name="agent", pool="pool2"),
    ) if consumers else ()
    token = config.Token(name="keda", organization="org", scopes=("vso.agentpools_manage",),
                         lifetime=timedelta(days=30), renew_before=timedelta(days=7), sinks=tuple(sinks),
                         consumers=keda)
    return config.Config(source="test.yaml", organizations=(org,),
                         clusters=(config.Cluster(name="c1"), config.Cluster(name="c2")), tokens=(token,),
                         worker=config.WorkerSettings(state_dir=tmp))


def seed(world: FakeWorld, cfg: config.Config, *, annotate: bool = True) -> PatRow:
    """The world before a rotation: one hand-made PAT in every sink, KEDA happy."""
    token = cfg.tokens[0]
    old = world.pats_api.add("keda-by-hand", token.scopes)
    for spec in token.sinks:
        if isinstance(spec, config.KubernetesSecretSink):
            annotations = {"patrol.io/authorization-id": old.info.authorization_id} if annotate else {}
            world.clusters[spec.cluster].secrets[(spec.namespace, spec.secret)] = StoredSecret(
                data={spec.key: old.value}, annotations=annotations)
        else:
            tags = {"authorizationId": old.info.authorization_id} if annotate else {}
            world.vault.set_secret(spec.secret, Secret(old.value), expires_on=old.info.valid_to, tags=tags)
    for consumer in token.consumers:
        world.clusters[consumer.cluster].scalers[(consumer.namespace, "scaledjobs", consumer.name)] = Scaler(
            uid=hashlib.sha256(consumer.cluster.encode()).hexdigest()[:8])
    return old


def sink_values(world: FakeWorld, cfg: config.Config) -> list[str | None]:
    out: list[str | None] = []
    for spec in cfg.tokens[0].sinks:
        if isinstance(spec, config.KubernetesSecretSink):
            out.append(world.clusters[spec.cluster].value(spec.namespace, spec.secret, spec.key))
        else:
            out.append(world.vault.value(spec.secret))
    return out
