"""KEDA's ScaledJob controller: reconcile, the scalers cache, the scale loop and conditions.

Guarantees (``controllers/keda/scaledjob_controller.go``, ``pkg/scaling/*`` of KEDA): a
reconcile on create and on every ``metadata.generation`` change builds the scalers cache
(resolves ``AZP_TOKEN`` from the Secret named by the pod template, then looks the pool up with
the PAT), deletes the previous version's Jobs per the rollout strategy and (re)starts the scale
loop. Every polling interval the loop re-reads the ScaledJob, rebuilds the cache if the
generation moved, and polls the job requests with the *cached* PAT. A failed poll rebuilds the
scaler (re-reading the Secret) and retries once in the same poll; only if that fails too is the
error surfaced (``KEDAScalerFailed`` event, ``Ready=False/TriggerError``) and counted as harm
(``keda_failed_polls``). KEDA reads Secrets through its lagging informer cache
(:mod:`sandbox.keda.secretcache`) and writes Events through its version's recorders
(:mod:`sandbox.keda.events`): the reconciler's as ``keda-operator``, the scale handler's as
``scale-handler``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import quote_plus

import aiohttp

from sandbox.keda.agents import AdoAgentsLike, AgentJobs, AgentTiming
from sandbox.keda.events import Component, KedaEvents
from sandbox.keda.harm import KedaHarm
from sandbox.keda.scaler import (
    GO_USER_AGENT,
    SCALER_TYPE,
    KedaError,
    Scaler,
    basic_auth,
    decode_job_requests,
    decode_pool_lookup,
    fingerprint,
    go_get,
    queued_count,
)
from sandbox.keda.secretcache import LaggingSecretCache
from sandbox.kube import ClusterState

log = logging.getLogger("sandbox.keda")

JSON = dict[str, Any]
# the controllers' recorder (cmd/operator/main.go); the ScaledJob scale handler has its own
OPERATOR: Component = "keda-operator"
SCALE_HANDLER: Component = "scale-handler"


class KedaHost(Protocol):
    """What a ScaledJob's KEDA needs from the process around it (``sandbox.actors.Actors``)."""

    @property
    def ado(self) -> AdoAgentsLike: ...
    @property
    def session(self) -> aiohttp.ClientSession: ...
    @property
    def agent_timing(self) -> AgentTiming: ...
    @property
    def keda_polling_interval(self) -> float: ...
    @property
    def keda_http_timeout(self) -> float: ...
    @property
    def reconcile_backoff_base(self) -> float: ...
    @property
    def reconcile_backoff_cap(self) -> float: ...
    @property
    def keda_version(self) -> str: ...
    @property
    def keda_harm(self) -> KedaHarm: ...
    def clock(self) -> float: ...
    def keda_events(self, cluster: str) -> KedaEvents: ...
    def secret_cache(self, cluster: str) -> LaggingSecretCache: ...


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
    unregister_retries: int = 0     # agents' failed ``config.sh remove`` attempts (each retried)
    jobs_deleted_by_rollout: int = 0
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


class ScaledJobKeda:
    """KEDA's handling of one ScaledJob: reconciles, the scalers cache and the scale loop."""

    def __init__(self, actors: KedaHost, cluster_name: str, cluster: ClusterState, ns: str, name: str) -> None:
        self.actors = actors
        self.cluster = cluster
        self.ns = ns
        self.name = name
        self.stats = ScaledJobStats(cluster_name, ns, name)
        self.scaler: Scaler | None = None
        self.cache_generation: int | None = None
        self.cache_spec: JSON | None = None
        self.reconciled_generation: int | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.reconcile_task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()
        self.cluster_name = cluster_name
        self.pods = AgentJobs(self, actors.keda_harm)
        self.started_watch = False

    # -- objects ---------------------------------------------------------------------------

    def _get(self) -> JSON | None:
        return self.cluster.get_object("keda.sh/v1alpha1", "scaledjobs", self.ns, self.name)

    def _involved(self, sj: JSON) -> JSON:
        meta = sj["metadata"]
        return {"kind": "ScaledJob", "namespace": self.ns, "name": self.name, "uid": meta.get("uid"),
                "apiVersion": "keda.sh/v1alpha1", "resourceVersion": meta.get("resourceVersion")}

    def _event(self, sj: JSON, type_: str, reason: str, message: str, component: Component = SCALE_HANDLER) -> None:
        """An Event through the recorder that writes it in KEDA: the scale handler's unless said."""
        self.actors.keda_events(self.cluster_name).emit(component, self._involved(sj), type_, reason, message)

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
            if rollout_strategy(sj) != "gradual":
                self.stats.jobs_deleted_by_rollout += self.pods.delete_previous_version(sj)
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
                self._event(sj, "Warning", "ScaledJobCheckFailed", msg, OPERATOR)
                await asyncio.sleep(min(self.actors.reconcile_backoff_base * 2 ** attempt,
                                        self.actors.reconcile_backoff_cap))
                attempt += 1
                continue
            self._request_scale_loop(sj)
            if self._condition("Ready").get("status") != "True":
                self._event(sj, "Normal", "ScaledJobReady", "ScaledJob is ready for scaling", OPERATOR)
            self._set_condition("Ready", "True", "ScaledJobReady",
                                "ScaledJob is defined correctly and is ready to scaling")
            return

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
        if deleted:
            # the Jobs are owned by the ScaledJob: the garbage collector deletes them
            for job in self.pods.jobs():
                self.pods.delete(job["metadata"]["name"])
                self.pods.on_job_deleted(job["metadata"]["name"])   # Actors no longer routes to us
            self.scaler = None
        else:
            self.pods.shutdown()
        await self.pods.wait()

    # -- scalers cache -----------------------------------------------------------------------

    async def _get_scalers_cache(self, sj: JSON) -> Scaler:
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

    def _adopt(self, scaler: Scaler) -> None:
        self.scaler = scaler
        self.stats.token_fingerprint = fingerprint(scaler.pat)
        self.stats.pool_id = scaler.pool_id

    async def _factory(self, sj: JSON) -> Scaler:
        """The trigger's factory closure: resolve env (reads the Secret), parse, look the pool up."""
        self.stats.scaler_builds += 1
        spec = sj.get("spec") or {}
        env = self.resolve_env(spec)
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
        return Scaler(organization_url=org_url, pool_name=pool_name, pool_id=pool_id, pat=pat,
                       jobs_to_fetch=int(meta.get("jobsToFetch", "250")),
                       target_queue_length=int(meta.get("targetPipelinesQueueLength", "1")),
                       activation_queue_length=int(meta.get("activationTargetPipelinesQueueLength", "0")))

    def resolve_env(self, spec: JSON, *, cached: bool = True) -> dict[str, str]:
        """resolver.ResolveContainerEnv for the job's first container (value and secretKeyRef).

        KEDA reads Secrets through controller-runtime's cached client (``cached=True``: the
        lagging informer cache); the kubelet starting a pod reads the API server (``False``)."""
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
            secret = (self.actors.secret_cache(self.cluster_name).get(self.ns, ref.get("name", "")) if cached
                      else self.cluster.get_object("v1", "secrets", self.ns, ref.get("name", "")))
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

    async def _queue_length(self, scaler: Scaler) -> int:
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
            self.actors.keda_harm.keda_failed_polls += 1
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
        running = self.pods.running_count()
        pending = self.pods.pending_count()
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
                    self.pods.start(sj)
                self._event(sj, "Normal", "KEDAJobsCreated", f"Created {count} jobs")
        self.pods.cleanup(sj)
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

    def snapshot(self) -> dict[str, Any]:
        self.stats.agents_running = sum(1 for a in self.pods.agents.values() if a.task and not a.task.done())
        return self.stats.to_dict()


def rollout_strategy(sj: JSON) -> str:
    """deletePreviousVersionScaleJobs: the deprecated ``spec.rolloutStrategy`` wins whenever it is
    non-empty, else ``spec.rollout.strategy`` ("" and anything but "gradual" delete old Jobs)."""
    spec = sj.get("spec") or {}
    deprecated = spec.get("rolloutStrategy")
    if deprecated:
        return str(deprecated)
    return str((spec.get("rollout") or {}).get("strategy") or "")


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
