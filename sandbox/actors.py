"""The things that act on the simulated world: KEDA, ephemeral agents, a job generator and the
daily-checks pipeline.

patrol's whole purpose is to keep these working, and its rotation saga is only right if it
accounts for how they really behave, so they copy the real code paths rather than a summary:

* **KEDA** (``kedacore/keda`` ``pkg/scaling/*``, ``pkg/scalers/azure_pipelines_scaler.go``):
  a reconcile on create and on every ``metadata.generation`` change builds the scalers cache
  (resolves ``AZP_TOKEN`` from the Secret named by the pod template, then
  ``GET {org}/_apis/distributedtask/pools?poolName=`` with the PAT), deletes the previous
  version's Jobs (unless ``rollout.strategy: gradual``) and (re)starts the scale loop. Every
  polling interval the loop re-reads the ScaledJob, rebuilds the cache if the generation moved,
  and polls ``.../jobrequests?$top=250`` with the *cached* PAT. A failed poll rebuilds the
  scaler (re-reading the Secret) and retries once in the same poll; only if that fails too is
  the error surfaced (``KEDAScalerFailed`` event, ``Ready=False/TriggerError``). Nothing else
  re-reads the Secret, so a new PAT written next to a still-valid old one is not picked up.
  Requests go over real HTTP shaped like Go's: Basic auth with an empty user name, no
  ``api-version``, no ``X-TFS-FedAuthRedirect``; any 2xx is success, so a 203 sign-in page
  fails JSON decoding with Go's error text.
* **Agents** start with the Secret's value at pod start, authenticate, register, take one job,
  finish it and unregister (``--once``). A rejected PAT means a failed pod and no agent.
* **Job generator, daily-checks pipeline and Key Vault reader** live in :mod:`sandbox.pipeline`
  (:class:`~sandbox.pipeline.Workloads`); :class:`Actors` starts them beside KEDA.

All of it runs as tasks on the sandbox loop. :meth:`Actors.snapshot` reports what each actor
sees, with token fingerprints (sha256[:8]) and never a token value.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

import aiohttp
from yarl import URL

from sandbox.kube import SCALEDJOBS, ClusterState, GoTimeError, ResourceType, parse_go_time
from sandbox.pipeline import PipelineAdoLike, PipelineSpec, Workloads
from sandbox.readers import ReaderSpec, SecretSourceLike

log = logging.getLogger("sandbox.actors")

JSON = dict[str, Any]
GO_USER_AGENT = "Go-http-client/1.1"
AGENT_USER_AGENT = ("VSServices/4.258.1 (NetStandard; Linux 5.15.0-1068-azure #77-Ubuntu) "
                    "VstsAgentCore-linux-x64/4.258.1")
SCALER_TYPE = "azure-pipelines"
# keda-operator's one recorder (cmd/operator/main.go: mgr.GetEventRecorderFor("keda-operator")) is
# shared by the controllers and the scale handler, so every KEDA event has this source component.
KEDA_COMPONENT = "keda-operator"


class AdoLike(PipelineAdoLike, Protocol):
    """What the actors need from ``sandbox.ado.AdoWorld`` (besides its HTTP API)."""

    def pool_by_name(self, name: str) -> int | None: ...
    def register_agent(self, pool_id: int, name: str) -> int: ...
    def remove_agent(self, agent_id: int) -> None: ...
    def queue_job(self, pool_id: int, *, definition: str = ...) -> int: ...
    def assign_job(self, pool_id: int, agent_id: int) -> int | None: ...
    def finish_job(self, request_id: int, result: str = ...) -> None: ...


@dataclass(frozen=True)
class AgentTiming:
    """How long a simulated agent pod takes for each phase (seconds)."""

    start_delay: float = 0.2                # scheduling + image start before the agent runs
    run_time: float = 1.0                   # how long the one job takes
    idle_timeout: float = 30.0              # give up (pod ends) if no job arrives
    job_poll: float = 0.1                   # how often a registered agent asks for a job


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


class KedaError(Exception):
    """An error exactly as KEDA's Go code words it (``err.Error()``)."""


# ---------------------------------------------------------------------------------------------
# Go's encoding/json as it applies to the two ADO responses KEDA decodes
# ---------------------------------------------------------------------------------------------


def _go_quote_char(c: str) -> str:
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    return f"'{c}'"


def go_json_syntax_error(text: str) -> str:
    """The ``*json.SyntaxError`` text for an undecodable body (the 203 HTML case)."""
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        return "unexpected end of JSON input"
    if stripped[0] not in '{["-0123456789tfn':
        return f"invalid character {_go_quote_char(stripped[0])} looking for beginning of value"
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text):
            return "unexpected end of JSON input"
        where = "after top-level value" if "Extra data" in exc.msg else "looking for beginning of value"
        return f"invalid character {_go_quote_char(text[exc.pos])} {where}"
    return "unexpected end of JSON input"


def _go_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _decode_json(body: bytes) -> Any:
    text = body.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        raise KedaError(go_json_syntax_error(text)) from None


def _go_time_field(job: JSON, name: str) -> float | None:
    v = job.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise KedaError("Time.UnmarshalJSON: input is not a JSON string")
    try:
        parsed = parse_go_time(v, micro=False)
    except GoTimeError as exc:
        raise KedaError(str(exc)) from None
    return None if parsed.year == 1 else parsed.timestamp()


def decode_job_requests(body: bytes) -> list[JSON]:
    """``json.Unmarshal(body, &JobRequests{})`` with the type checks Go would make."""
    doc = _decode_json(body)
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise KedaError(f"json: cannot unmarshal {_go_kind(doc)} into Go value of type scalers.JobRequests")
    count = doc.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        raise KedaError(f"json: cannot unmarshal {_go_kind(count)} into Go struct field JobRequests.count of "
                        "type int")
    value = doc.get("value")
    if value is None:
        return []
    if not isinstance(value, list):
        raise KedaError(f"json: cannot unmarshal {_go_kind(value)} into Go struct field JobRequests.value of "
                        "type []scalers.JobRequest")
    jobs: list[JSON] = []
    for job in value:
        if job is None:
            jobs.append({})
            continue
        if not isinstance(job, dict):
            raise KedaError(f"json: cannot unmarshal {_go_kind(job)} into Go struct field "
                            "JobRequests.value of type scalers.JobRequest")
        result = job.get("result")
        if result is not None and not isinstance(result, str):
            raise KedaError(f"json: cannot unmarshal {_go_kind(result)} into Go struct field "
                            "JobRequest.value.result of type string")
        rid = job.get("requestId")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int)):
            raise KedaError(f"json: cannot unmarshal {_go_kind(rid)} into Go struct field "
                            "JobRequest.value.requestId of type int")
        decoded = dict(job)
        for name in ("queueTime", "assignTime", "receiveTime", "lockedUntil"):
            decoded[name] = _go_time_field(job, name)
        jobs.append(decoded)
    return jobs


def queued_count(jobs: Iterable[JSON]) -> int:
    """stripDeadJobs (KEDA ≥ 2.20): no result and no receiveTime; no parent/demands configured."""
    return sum(1 for j in jobs if j.get("result") is None and j.get("receiveTime") is None)


def decode_pool_lookup(body: bytes, pool_name: str) -> int:
    """getPoolIDFromName's decoding and its two errors."""
    doc = _decode_json(body)
    if doc is not None and not isinstance(doc, dict):
        raise KedaError(f"json: cannot unmarshal {_go_kind(doc)} into Go value of type "
                        "scalers.azurePipelinesPoolNameResponse")
    value = (doc or {}).get("value") or []
    if not isinstance(value, list):
        raise KedaError(f"json: cannot unmarshal {_go_kind(value)} into Go struct field "
                        "azurePipelinesPoolNameResponse.value of type "
                        "[]struct { ID int \"json:\\\"id\\\"\" }")
    if len(value) == 0:
        raise KedaError(f"agent pool with name `{pool_name}` not found")
    if len(value) != 1:
        raise KedaError(f"found {len(value)} agent pool with name `{pool_name}`")
    pid = value[0].get("id") if isinstance(value[0], dict) else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else 0


# ---------------------------------------------------------------------------------------------
# HTTP as Go's net/http client does it
# ---------------------------------------------------------------------------------------------


@dataclass
class HttpAnswer:
    status: int
    body: bytes
    content_type: str


async def go_get(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                 timeout: float) -> HttpAnswer:  # noqa: ASYNC109 - it is the HTTP client's timeout
    """One GET; transport failures raise KedaError worded like Go's ``*url.Error``."""
    try:
        async with session.get(URL(url, encoded=True), headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout),
                               skip_auto_headers=("Accept",)) as resp:
            body = await resp.read()
            return HttpAnswer(resp.status, body, resp.headers.get("Content-Type", ""))
    except TimeoutError:
        raise KedaError(f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting '
                        'headers)') from None
    except aiohttp.ClientConnectorError as exc:
        host = f"{exc.host}:{exc.port}"
        raise KedaError(f'Get "{url}": dial tcp {host}: connect: connection refused') from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError):
        raise KedaError(f'Get "{url}": EOF') from None
    except aiohttp.ClientError as exc:
        raise KedaError(f'Get "{url}": {exc}') from None


def basic_auth(pat: str) -> str:
    """``req.SetBasicAuth("", pat)``."""
    return "Basic " + base64.b64encode(f":{pat}".encode()).decode()


# ---------------------------------------------------------------------------------------------
# KEDA
# ---------------------------------------------------------------------------------------------


@dataclass
class _Scaler:
    """A built azurePipelinesScaler: the metadata it parsed, including the cached PAT."""

    organization_url: str
    pool_name: str
    pool_id: int
    pat: str
    jobs_to_fetch: int
    target_queue_length: int
    activation_queue_length: int


@dataclass
class ScaledJobStats:
    cluster: str
    namespace: str
    name: str
    queue_length: int | None = None
    agents_running: int = 0
    agents_started: int = 0
    agents_failed: int = 0
    agents_killed: int = 0
    jobs_completed: int = 0
    polls: int = 0
    poll_errors: int = 0
    auth_failures: int = 0          # ADO answers to KEDA that were 401/403 or a 2xx sign-in page
    scaler_builds: int = 0          # factory runs: cache builds and refreshes (each re-reads the Secret)
    refreshes: int = 0
    reconciles: int = 0
    last_error: str | None = None
    last_agent_error: str | None = None
    generation_seen: int | None = None
    token_fingerprint: str | None = None
    pool_id: int | None = None
    ready: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class _Agent:
    name: str
    task: asyncio.Task[None] | None = None
    agent_id: int | None = None
    request_id: int | None = None


class _ScaledJobKeda:
    """KEDA's handling of one ScaledJob: reconciles, the scalers cache and the scale loop."""

    def __init__(self, actors: Actors, cluster_name: str, cluster: ClusterState, ns: str, name: str) -> None:
        self.actors = actors
        self.cluster = cluster
        self.ns = ns
        self.name = name
        self.stats = ScaledJobStats(cluster_name, ns, name)
        self.scaler: _Scaler | None = None
        self.cache_generation: int | None = None
        self.cache_spec: JSON | None = None
        self.reconciled_generation: int | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.reconcile_task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()
        self.agents: dict[str, _Agent] = {}
        self.started_watch = False

    # -- objects ---------------------------------------------------------------------------

    def _get(self) -> JSON | None:
        return self.cluster.get_object("keda.sh/v1alpha1", "scaledjobs", self.ns, self.name)

    def _involved(self, sj: JSON) -> JSON:
        meta = sj["metadata"]
        return {"kind": "ScaledJob", "namespace": self.ns, "name": self.name, "uid": meta.get("uid"),
                "apiVersion": "keda.sh/v1alpha1", "resourceVersion": meta.get("resourceVersion")}

    def _event(self, sj: JSON, type_: str, reason: str, message: str) -> None:
        self.cluster.emit_event(self.ns, self._involved(sj), reason, message, type_, KEDA_COMPONENT)

    def _condition(self, type_: str) -> JSON:
        sj = self._get() or {}
        for c in (sj.get("status") or {}).get("conditions") or []:
            if c.get("type") == type_:
                return dict(c)
        return {"type": type_, "status": "Unknown"}

    def _set_condition(self, type_: str, status: str, reason: str, message: str) -> None:
        if self._get() is None:
            return
        self.cluster.set_status_condition("scaledjobs", self.ns, self.name, type_, status, reason, message)
        if type_ == "Ready":
            self.stats.ready = status

    # -- controller ------------------------------------------------------------------------

    def on_change(self, obj: JSON) -> None:
        generation = obj.get("metadata", {}).get("generation")
        if generation != self.reconciled_generation:
            self.reconciled_generation = generation
            if self.reconcile_task is not None and not self.reconcile_task.done():
                self.reconcile_task.cancel()
            self.reconcile_task = asyncio.get_running_loop().create_task(self._reconcile())

    async def _reconcile(self) -> None:
        """ScaledJobReconciler.Reconcile, retried with controller-runtime's backoff on error."""
        attempt = 0
        while True:
            sj = self._get()
            if sj is None:
                return
            self.stats.reconciles += 1
            if self._rollout_deletes(sj):
                self._kill_agents()
            async with self.lock:
                try:
                    await self._get_scalers_cache(sj)
                    failed = False
                except KedaError:
                    failed = True
            if failed:
                msg = "Failed to ensure ScaledJob is correctly created"
                self._set_condition("Ready", "False", "ScaledJobCheckFailed", msg)
                self._set_condition("Active", "Unknown", "UnknownState", "ScaledJob check failed")
                self._event(sj, "Warning", "ScaledJobCheckFailed", msg)
                await asyncio.sleep(min(self.actors.reconcile_backoff_base * 2 ** attempt,
                                        self.actors.reconcile_backoff_cap))
                attempt += 1
                continue
            self._request_scale_loop(sj)
            if self._condition("Ready").get("status") != "True":
                self._event(sj, "Normal", "ScaledJobReady", "ScaledJob is ready for scaling")
            self._set_condition("Ready", "True", "ScaledJobReady",
                                "ScaledJob is defined correctly and is ready to scaling")
            return

    @staticmethod
    def _rollout_deletes(sj: JSON) -> bool:
        spec = sj.get("spec") or {}
        strategy = (spec.get("rollout") or {}).get("strategy") or spec.get("rolloutStrategy") or "default"
        return strategy != "gradual"

    def _request_scale_loop(self, sj: JSON) -> None:
        """HandleScalableObject: cancel the running loop and start a new one (first poll at once)."""
        if not self.started_watch:
            self.started_watch = True
            self._event(sj, "Normal", "KEDAScalersStarted", "Started scalers watch")
        if self.loop_task is not None:
            self.loop_task.cancel()
        self.loop_task = asyncio.get_running_loop().create_task(self._scale_loop())

    async def stop(self, *, deleted: bool) -> None:
        for task in (self.reconcile_task, self.loop_task):
            if task is not None:
                task.cancel()
        for task in (self.reconcile_task, self.loop_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._kill_agents()
        await self._wait_agents()
        if deleted:
            self.scaler = None

    # -- scalers cache -----------------------------------------------------------------------

    async def _get_scalers_cache(self, sj: JSON) -> _Scaler:
        """performGetScalersCache: reuse the cache unless the generation moved, else build it."""
        generation = sj["metadata"].get("generation")
        if self.scaler is not None and self.cache_generation == generation:
            return self.scaler
        try:
            scaler = await self._factory(sj)
        except KedaError as exc:
            self._event(sj, "Warning", "KEDAScalerFailed", str(exc))
            self.stats.last_error = str(exc)
            raise
        self._event(sj, "Normal", "KEDAScalersStarted", f"Scaler {SCALER_TYPE} is built")
        self._adopt(scaler)
        self.cache_generation = generation
        self.cache_spec = sj
        self.stats.generation_seen = generation
        return scaler

    def _adopt(self, scaler: _Scaler) -> None:
        self.scaler = scaler
        self.stats.token_fingerprint = fingerprint(scaler.pat)
        self.stats.pool_id = scaler.pool_id

    async def _factory(self, sj: JSON) -> _Scaler:
        """The trigger's factory closure: resolve env (reads the Secret), parse, look the pool up."""
        self.stats.scaler_builds += 1
        spec = sj.get("spec") or {}
        env = self._resolve_env(spec)
        trigger = next((t for t in spec.get("triggers") or [] if t.get("type") == SCALER_TYPE), None)
        if trigger is None:
            raise KedaError(f"no scaler found for type: {(spec.get('triggers') or [{}])[0].get('type')}")
        meta: dict[str, str] = {k: str(v) for k, v in (trigger.get("metadata") or {}).items()}
        prefix = "error parsing azure Pipelines metadata: "
        org_env = meta.get("organizationURLFromEnv", "")
        org_url = env.get(org_env, "") if org_env else meta.get("organizationURL", "")
        if not org_url:
            raise KedaError(prefix + "error parsing azure pipeline metadata: missing required parameter "
                            '"organizationURL" in [resolvedEnv authParams]')
        if not org_url[org_url.rfind("/") + 1:]:
            raise KedaError(prefix + "error parsing azure pipeline metadata: failed to extract organization "
                            "name from organizationURL")
        pat_env = meta.get("personalAccessTokenFromEnv", "")
        if not pat_env:
            raise KedaError(prefix + "no personalAccessToken given or PodIdentity provider configured")
        pat = env.get(pat_env, "").removesuffix("\n")
        pool_name = meta.get("poolName", "")
        if not pool_name:
            raise KedaError(prefix + "no poolName or poolID given")
        url = f"{org_url}/_apis/distributedtask/pools?poolName={quote_plus(pool_name)}"
        try:
            body = await self._ado_get(url, pat)
            pool_id = decode_pool_lookup(body, pool_name)
        except KedaError as exc:
            raise KedaError(prefix + str(exc)) from None
        return _Scaler(organization_url=org_url, pool_name=pool_name, pool_id=pool_id, pat=pat,
                       jobs_to_fetch=int(meta.get("jobsToFetch", "250")),
                       target_queue_length=int(meta.get("targetPipelinesQueueLength", "1")),
                       activation_queue_length=int(meta.get("activationTargetPipelinesQueueLength", "0")))

    def _resolve_env(self, spec: JSON) -> dict[str, str]:
        """resolver.ResolveContainerEnv for the job's first container (value and secretKeyRef)."""
        template = ((spec.get("jobTargetRef") or {}).get("template") or {}).get("spec") or {}
        containers = template.get("containers") or []
        env: dict[str, str] = {}
        if not containers:
            return env
        for var in containers[0].get("env") or []:
            name = var.get("name", "")
            if "value" in var:
                env[name] = str(var["value"])
                continue
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                continue
            secret = self.cluster.get_object("v1", "secrets", self.ns, ref.get("name", ""))
            if secret is None:
                if ref.get("optional"):
                    continue
                optional = "nil" if ref.get("optional") is None else str(ref["optional"]).lower()
                raise KedaError(
                    "error resolving secrets for ScaleTarget: error resolving secret name "
                    f"&SecretKeySelector{{LocalObjectReference:LocalObjectReference{{Name:{ref.get('name')},}},"
                    f"Key:{ref.get('key')},Optional:{optional},}} for env {name} in namespace {self.ns}")
            raw = (secret.get("data") or {}).get(ref.get("key", ""), "")
            env[name] = base64.b64decode(raw).decode("utf-8", "replace") if raw else ""
        return env

    async def _ado_get(self, url: str, pat: str) -> bytes:
        """getAzurePipelineRequest: any non-2xx is an error carrying the body."""
        headers = {"Authorization": basic_auth(pat), "User-Agent": GO_USER_AGENT}
        answer = await go_get(self.actors.session, url, headers, self.actors.keda_http_timeout)
        if answer.status in (401, 403) or (200 <= answer.status <= 299 and "html" in answer.content_type):
            self.stats.auth_failures += 1
        if not 200 <= answer.status <= 299:
            raise KedaError(f"the Azure DevOps REST API returned error. urlString: {url} "
                            f"status: {answer.status} response: {answer.body.decode('utf-8', 'replace')}")
        return answer.body

    async def _queue_length(self, scaler: _Scaler) -> int:
        """GetAzurePipelinesQueueLength."""
        url = (f"{scaler.organization_url}/_apis/distributedtask/pools/{scaler.pool_id}/jobrequests"
               f"?$top={scaler.jobs_to_fetch}")
        body = await self._ado_get(url, scaler.pat)
        return queued_count(decode_job_requests(body))

    async def _metrics_with_refresh(self) -> int:
        """ScalersCache.GetMetricsAndActivityForScaler: on error refresh the scaler, retry once."""
        assert self.scaler is not None and self.cache_spec is not None
        try:
            return await self._queue_length(self.scaler)
        except KedaError:
            pass
        self.stats.refreshes += 1
        fresh = await self._factory(self.cache_spec)   # a failed refresh surfaces its own error
        self._adopt(fresh)
        return await self._queue_length(fresh)

    # -- scale loop --------------------------------------------------------------------------

    async def _scale_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._check_scalers()
            except Exception:  # a simulated operator must not die on a bug; it logs like KEDA
                log.exception("scale loop error", extra={"scaledjob": f"{self.ns}/{self.name}"})
            await asyncio.sleep(max(0.0, self.actors.keda_polling_interval - (loop.time() - started)))

    async def _check_scalers(self) -> None:
        sj = self._get()
        if sj is None:
            return
        self.stats.polls += 1
        queue_length: int | None = None
        is_error = False
        async with self.lock:
            try:
                await self._get_scalers_cache(sj)
            except KedaError:
                is_error = True
            else:
                try:
                    queue_length = await self._metrics_with_refresh()
                except KedaError as exc:
                    self._event(sj, "Warning", "KEDAScalerFailed", str(exc))
                    self.stats.last_error = str(exc)
                    is_error = True
        if is_error:
            self.stats.poll_errors += 1
        else:
            self.stats.queue_length = queue_length
        await self._request_job_scale(sj, queue_length, is_error)

    async def _request_job_scale(self, sj: JSON, queue_length: int | None, is_error: bool) -> None:
        """scaleExecutor.RequestJobScale (KEDA ≥ 2.19 conditions)."""
        spec = sj.get("spec") or {}
        max_replicas = int(spec.get("maxReplicaCount", 100))
        scaler = self.scaler
        target = scaler.target_queue_length if scaler is not None else 1
        activation = scaler.activation_queue_length if scaler is not None else 0
        is_active = queue_length is not None and queue_length > activation
        queue = queue_length or 0
        max_value = min(math.ceil(queue / target) if target else 0, max_replicas)
        running = sum(1 for a in self.agents.values() if a.task is not None and not a.task.done())
        pending = sum(1 for a in self.agents.values()
                      if a.task is not None and not a.task.done() and a.request_id is None)
        if (spec.get("scalingStrategy") or {}).get("strategy") == "accurate":
            effective = max_replicas - running if max_value + running > max_replicas else max_value - pending
        else:
            effective = max_value - running
        if is_active:
            self.cluster.set_status_fields("scaledjobs", self.ns, self.name,
                                           {"lastActiveTime": _rfc3339(self.actors.clock())})
            if effective > 0:
                count = min(queue, effective)
                for _ in range(count):
                    self._start_agent(sj)
                self._event(sj, "Normal", "KEDAJobsCreated", f"Created {count} jobs")
        ready = self._condition("Ready").get("status")
        if is_error:
            if is_active and ready != "Unknown":
                self._set_condition("Ready", "Unknown", "PartialTriggerError",
                                    "Some triggers defined in ScaledJob are not working correctly")
            elif not is_active and ready != "False":
                self._set_condition("Ready", "False", "TriggerError",
                                    "Triggers defined in ScaledJob are not working correctly")
        elif ready != "True":
            self._set_condition("Ready", "True", "ScaledJobReady",
                                "ScaledJob is defined correctly and is ready for scaling")
        active = self._condition("Active").get("status")
        if active == "Unknown" or (active == "True") != is_active:
            if is_active:
                self._set_condition("Active", "True", "ScalerActive",
                                    "Scaling is performed because triggers are active")
            else:
                self._set_condition("Active", "False", "ScalerNotActive",
                                    "Scaling is not performed because triggers are not active")

    # -- agents (the Jobs KEDA creates) --------------------------------------------------------

    def _start_agent(self, sj: JSON) -> None:
        suffix = "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        agent = _Agent(name=f"{self.name}-{suffix}")
        self.agents[agent.name] = agent
        self.stats.agents_started += 1
        agent.task = asyncio.get_running_loop().create_task(self._run_agent(agent, sj))
        self.stats.agents_running = sum(1 for a in self.agents.values() if a.task and not a.task.done())

    def _kill_agents(self) -> None:
        """deletePreviousVersionScaleJobs: every Job of this ScaledJob is deleted."""
        for agent in list(self.agents.values()):
            if agent.task is not None and not agent.task.done():
                agent.task.cancel()
                self.stats.agents_killed += 1

    async def _wait_agents(self) -> None:
        tasks = [a.task for a in self.agents.values() if a.task is not None]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run_agent(self, agent: _Agent, sj: JSON) -> None:
        timing = self.actors.agent_timing
        ado = self.actors.ado
        try:
            await asyncio.sleep(timing.start_delay)
            env = self._resolve_env(sj.get("spec") or {})  # kubelet resolves secretKeyRef at container start
            org_url, pool_name = env.get("AZP_URL", ""), env.get("AZP_POOL", "")
            pat = env.get("AZP_TOKEN", "").strip()
            pool_id = await self._agent_authenticate(org_url, pool_name, pat)
            agent.agent_id = ado.register_agent(pool_id, agent.name)
            deadline = asyncio.get_running_loop().time() + timing.idle_timeout
            while agent.request_id is None:
                agent.request_id = ado.assign_job(pool_id, agent.agent_id)
                if agent.request_id is not None:
                    break
                if asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(timing.job_poll)
            if agent.request_id is not None:
                await asyncio.sleep(timing.run_time)
                ado.finish_job(agent.request_id, "succeeded")
                self.stats.jobs_completed += 1
            ado.remove_agent(agent.agent_id)
            agent.agent_id = None
        except _AgentFailed as exc:
            self.stats.agents_failed += 1
            self.stats.last_agent_error = str(exc)
        except asyncio.CancelledError:
            if agent.agent_id is not None:
                with contextlib.suppress(KeyError):
                    ado.remove_agent(agent.agent_id)      # the pod is gone; its job is abandoned
            raise
        except Exception as exc:  # a broken agent pod must not take the simulation down
            self.stats.agents_failed += 1
            self.stats.last_agent_error = f"{type(exc).__name__}: {exc}"
            log.exception("agent failed", extra={"agent": agent.name})
        finally:
            self.agents.pop(agent.name, None)
            self.stats.agents_running = sum(1 for a in self.agents.values() if a.task and not a.task.done())

    async def _agent_authenticate(self, org_url: str, pool_name: str, pat: str) -> int:
        """The agent's first call with its PAT; anything but a JSON pool list fails the pod."""
        url = f"{org_url}/_apis/distributedtask/pools?poolName={quote(pool_name)}&api-version=7.1"
        headers = {"Authorization": basic_auth(pat), "User-Agent": AGENT_USER_AGENT,
                   "X-TFS-FedAuthRedirect": "Suppress", "Accept": "application/json;api-version=7.1"}
        try:
            answer = await go_get(self.actors.session, url, headers, 30.0)
        except KedaError as exc:
            raise _AgentFailed(str(exc)) from None
        if answer.status != 200:
            raise _AgentFailed(f"agent could not authenticate: HTTP {answer.status}")
        try:
            doc = json.loads(answer.body)
            return int(doc["value"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise _AgentFailed(f"agent pool {pool_name!r} not found or unreadable") from None

    def snapshot(self) -> dict[str, Any]:
        self.stats.agents_running = sum(1 for a in self.agents.values() if a.task and not a.task.done())
        return self.stats.to_dict()


class _AgentFailed(Exception):
    pass


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# ---------------------------------------------------------------------------------------------
# Actors
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Actors:
    """KEDA for every azure-pipelines ScaledJob in every cluster, their agents, and the
    workloads (job generator, daily-checks pipeline, Key Vault reader). ``ado_base_url`` is the
    organization URL; the KEDA loop period is ``keda_polling_interval`` (the sandbox's time
    compression of ``spec.pollingInterval``)."""

    ado: AdoLike
    kv: SecretSourceLike
    clusters: dict[str, ClusterState]
    ado_base_url: str
    keda_polling_interval: float
    job_interval: float | None
    pipeline: PipelineSpec | None
    keyvault_reader: ReaderSpec | None = None
    clock: Callable[[], float] = time.time
    keda_http_timeout: float = 3.0                  # KEDA_HTTP_DEFAULT_TIMEOUT
    agent_timing: AgentTiming = field(default_factory=AgentTiming)
    reconcile_backoff_base: float = 0.005           # controller-runtime: 5ms doubling ...
    reconcile_backoff_cap: float = 1000.0           # ... up to 1000s
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _keda: dict[tuple[str, str, str], _ScaledJobKeda] = field(default_factory=dict, init=False, repr=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False, repr=False)
    _unsubscribe: list[Callable[[], None]] = field(default_factory=list, init=False, repr=False)
    workloads: Workloads = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.workloads = Workloads(ado=self.ado, kv=self.kv, clusters=self.clusters.values,
                                   ado_base_url=self.ado_base_url, job_interval=self.job_interval,
                                   pipeline=self.pipeline, reader=self.keyvault_reader, clock=self.clock)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Actors.start() first"
        return self._session

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": GO_USER_AGENT})
        for cluster_name, cluster in self.clusters.items():
            self._unsubscribe.append(cluster.subscribe(self._listener(cluster_name)))
            for sj in cluster.list_objects("keda.sh/v1alpha1", "scaledjobs"):
                self._on_scaledjob(cluster_name, "ADDED", sj)
        await self.workloads.start()

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.workloads.stop()
        for keda in list(self._keda.values()):
            await keda.stop(deleted=False)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _listener(self, cluster_name: str) -> Callable[[str, ResourceType, JSON], None]:
        def listener(type_: str, rt: ResourceType, obj: JSON) -> None:
            if rt is SCALEDJOBS:
                self._on_scaledjob(cluster_name, type_, obj)
        return listener

    def _on_scaledjob(self, cluster_name: str, type_: str, obj: JSON) -> None:
        meta = obj.get("metadata") or {}
        key = (cluster_name, meta.get("namespace", ""), meta.get("name", ""))
        if not any(t.get("type") == SCALER_TYPE for t in (obj.get("spec") or {}).get("triggers") or []):
            return
        keda = self._keda.get(key)
        if type_ == "DELETED":
            if keda is not None:
                del self._keda[key]
                task = asyncio.get_running_loop().create_task(keda.stop(deleted=True))
                self._tasks.append(task)
            return
        if keda is None:
            keda = self._keda[key] = _ScaledJobKeda(self, cluster_name, self.clusters[cluster_name], *key[1:])
        keda.on_change(obj)

    async def run_pipeline_once(self, spec: PipelineSpec) -> str:
        """One daily-checks run (see :meth:`sandbox.pipeline.Workloads.run_pipeline_once`)."""
        return await self.workloads.run_pipeline_once(spec)

    # -- reporting ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What each simulated actor sees; token fingerprints only, never token values."""
        return {
            "scaledjobs": {f"{c}/{ns}/{n}": k.snapshot() for (c, ns, n), k in sorted(self._keda.items())},
            **self.workloads.snapshot(),
        }

    def harm(self) -> dict[str, int]:
        """Cumulative harm counters of every actor family, merged into /state's ``harm``."""
        return {**self.workloads.harm()}

    def keda(self, cluster: str, ns: str, name: str) -> ScaledJobStats:
        """The live stats of one ScaledJob's KEDA (tests wait on these)."""
        return self._keda[(cluster, ns, name)].stats
