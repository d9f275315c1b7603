"""The things that act on the simulated world: KEDA, ephemeral agents, a job generator and the
daily-checks pipeline.

patrol's whole purpose is to keep these working, and its rotation saga is only right if it
accounts for how they really behave, so they copy the real code paths rather than a summary.
KEDA and its agents live in :mod:`sandbox.keda` (``scaler``: the azure-pipelines scaler's HTTP
and decoding; ``controller``: reconcile, scalers cache, scale loop; ``agents``: the agent pods).
This module is the orchestration (:class:`Actors`) and the two other actors:

* **Job generator** queues a job on every targeted pool each ``job_interval``.
* **Daily-checks pipeline** reads its PAT from Key Vault, probes ADO with it and records a
  succeeded or failed build.

All of it runs as tasks on the sandbox loop. :meth:`Actors.snapshot` reports what each actor
sees, with token fingerprints (sha256[:8]) and never a token value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote

import aiohttp

from sandbox.keda.agents import NAME_LABEL, AgentTiming
from sandbox.keda.controller import ScaledJobKeda, ScaledJobStats
from sandbox.keda.events import KedaEvents
from sandbox.keda.harm import KedaHarm
from sandbox.keda.scaler import (
    GO_USER_AGENT,
    SCALER_TYPE,
    KedaError,
    basic_auth,
    decode_job_requests,
    fingerprint,
    go_get,
    go_json_syntax_error,
)
from sandbox.keda.secretcache import LaggingSecretCache
from sandbox.kube import JOBS, SCALEDJOBS, ClusterState, ResourceType

__all__ = [
    "Actors", "AdoLike", "AgentTiming", "KedaError", "PipelineSpec", "ScaledJobStats", "SecretSourceLike",
    "decode_job_requests", "fingerprint", "go_json_syntax_error",
]

log = logging.getLogger("sandbox.actors")

JSON = dict[str, Any]


class AdoLike(Protocol):
    """What the actors need from ``sandbox.ado.AdoWorld`` (besides its HTTP API)."""

    def pool_by_name(self, name: str) -> int | None: ...
    def register_agent(self, pool_id: int, name: str) -> int: ...
    def remove_agent(self, agent_id: int) -> None: ...
    def set_agent_status(self, agent_id: int, status: Literal["online", "offline"]) -> None: ...
    def queue_job(self, pool_id: int, *, definition: str = ...) -> int: ...
    def assign_job(self, pool_id: int, agent_id: int) -> int | None: ...
    def finish_job(self, request_id: int, result: str = ...) -> None: ...
    def record_build(self, project: str, definition: str, *, result: str, queue_time: float,
                     start_time: float, finish_time: float) -> int: ...


class SecretSourceLike(Protocol):
    """What the pipeline needs from ``sandbox.keyvault.KeyVaultStore``."""

    def latest_value(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class PipelineSpec:
    """The scheduled daily-checks pipeline: its build definition and where its PAT lives."""

    project: str
    definition: str
    interval: float                         # seconds between runs (the first run starts at once)
    keyvault_secret: str = "azure-devops-token"
    pool_name: str | None = None            # pool to probe; default: the first pool a ScaledJob targets


# ---------------------------------------------------------------------------------------------
# Actors
# ---------------------------------------------------------------------------------------------


@dataclass
class _PipelineStats:
    runs: int = 0
    succeeded: int = 0
    failed: int = 0
    last_result: str | None = None
    last_error: str | None = None
    token_fingerprint: str | None = None


@dataclass
class _GeneratorStats:
    jobs_queued: int = 0
    last_error: str | None = None


@dataclass(kw_only=True)
class Actors:
    """KEDA for every azure-pipelines ScaledJob in every cluster, their agents, the job generator
    and the daily-checks pipeline. ``ado_base_url`` is the organization URL; the KEDA loop period
    is ``keda_polling_interval`` (the sandbox's time compression of ``spec.pollingInterval``)."""

    ado: AdoLike
    kv: SecretSourceLike
    clusters: dict[str, ClusterState]
    ado_base_url: str
    keda_polling_interval: float
    job_interval: float | None
    pipeline: PipelineSpec | None
    clock: Callable[[], float] = time.time
    keda_http_timeout: float = 3.0                  # KEDA_HTTP_DEFAULT_TIMEOUT
    agent_timing: AgentTiming = field(default_factory=AgentTiming)
    reconcile_backoff_base: float = 0.005           # controller-runtime: 5ms doubling ...
    reconcile_backoff_cap: float = 1000.0           # ... up to 1000s
    keda_version: str = "2.20"                      # "2.16": the core/v1 Event recorder (<= 2.19)
    secret_cache_lag: float = 0.5                   # controller-runtime's informer cache behind the store
    event_series_flush: float = 1800.0              # client-go tools/events refreshTime
    event_series_idle: float = 360.0                # client-go tools/events finishTime
    keda_harm: KedaHarm = field(default_factory=KedaHarm, init=False)
    _keda_events: dict[str, KedaEvents] = field(default_factory=dict, init=False, repr=False)
    _secret_caches: dict[str, LaggingSecretCache] = field(default_factory=dict, init=False, repr=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _keda: dict[tuple[str, str, str], ScaledJobKeda] = field(default_factory=dict, init=False, repr=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False, repr=False)
    _unsubscribe: list[Callable[[], None]] = field(default_factory=list, init=False, repr=False)
    _pipeline_stats: _PipelineStats = field(default_factory=_PipelineStats, init=False, repr=False)
    _generator_stats: _GeneratorStats = field(default_factory=_GeneratorStats, init=False, repr=False)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Actors.start() first"
        return self._session

    def keda_events(self, cluster: str) -> KedaEvents:
        """The Event recorders of one cluster's KEDA operator."""
        events = self._keda_events.get(cluster)
        if events is None:
            events = self._keda_events[cluster] = KedaEvents(
                self.clusters[cluster], keda_version=self.keda_version, series_flush=self.event_series_flush,
                series_idle=self.event_series_idle)
        return events

    def secret_cache(self, cluster: str) -> LaggingSecretCache:
        """One cluster's KEDA informer cache of Secrets."""
        cache = self._secret_caches.get(cluster)
        if cache is None:
            cache = self._secret_caches[cluster] = LaggingSecretCache(self.clusters[cluster], self.secret_cache_lag)
        return cache

    async def _tick_recorders(self) -> None:
        period = max(0.05, min(1.0, self.event_series_idle / 10, self.event_series_flush / 10))
        while True:
            await asyncio.sleep(period)
            for events in self._keda_events.values():
                events.tick()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": GO_USER_AGENT})
        for cluster_name in self.clusters:
            self.keda_events(cluster_name)
            self.secret_cache(cluster_name)
        self._tasks.append(asyncio.get_running_loop().create_task(self._tick_recorders()))
        for cluster_name, cluster in self.clusters.items():
            self._unsubscribe.append(cluster.subscribe(self._listener(cluster_name)))
            for sj in cluster.list_objects("keda.sh/v1alpha1", "scaledjobs"):
                self._on_scaledjob(cluster_name, "ADDED", sj)
        loop = asyncio.get_running_loop()
        if self.job_interval is not None:
            self._tasks.append(loop.create_task(self._generate_jobs(self.job_interval)))
        if self.pipeline is not None:
            self._tasks.append(loop.create_task(self._run_pipeline(self.pipeline)))

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for cache in self._secret_caches.values():
            cache.unsubscribe()
        self._secret_caches.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for keda in list(self._keda.values()):
            await keda.stop(deleted=False)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _listener(self, cluster_name: str) -> Callable[[str, ResourceType, JSON], None]:
        def listener(type_: str, rt: ResourceType, obj: JSON) -> None:
            if rt is SCALEDJOBS:
                self._on_scaledjob(cluster_name, type_, obj)
            elif rt is JOBS and type_ == "DELETED":
                meta = obj.get("metadata") or {}
                keda = self._keda.get((cluster_name, meta.get("namespace", ""),
                                       (meta.get("labels") or {}).get(NAME_LABEL, "")))
                if keda is not None:
                    keda.pods.on_job_deleted(meta.get("name", ""))
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
            keda = self._keda[key] = ScaledJobKeda(self, cluster_name, self.clusters[cluster_name], *key[1:])
        keda.on_change(obj)

    # -- job generator -----------------------------------------------------------------------

    def _target_pools(self) -> list[str]:
        pools: list[str] = []
        for cluster in self.clusters.values():
            for sj in cluster.list_objects("keda.sh/v1alpha1", "scaledjobs"):
                for t in (sj.get("spec") or {}).get("triggers") or []:
                    name = (t.get("metadata") or {}).get("poolName")
                    if t.get("type") == SCALER_TYPE and name and name not in pools:
                        pools.append(name)
        return pools

    async def _generate_jobs(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for pool_name in self._target_pools():
                pool_id = self.ado.pool_by_name(pool_name)
                if pool_id is None:
                    self._generator_stats.last_error = f"pool {pool_name!r} does not exist"
                    continue
                self.ado.queue_job(pool_id, definition="build")
                self._generator_stats.jobs_queued += 1

    # -- daily-checks pipeline ---------------------------------------------------------------

    async def _run_pipeline(self, spec: PipelineSpec) -> None:
        while True:
            try:
                await self.run_pipeline_once(spec)
            except Exception:  # keep the schedule going, like a real scheduler would
                log.exception("daily-checks run failed to record")
            await asyncio.sleep(spec.interval)

    async def run_pipeline_once(self, spec: PipelineSpec) -> str:
        """One scheduled run: probe ADO with the Key Vault PAT, record the build; returns the result."""
        stats = self._pipeline_stats
        queued = self.clock()
        token = self.kv.latest_value(spec.keyvault_secret)
        error: str | None = None
        if token is None:
            error = f"Key Vault secret {spec.keyvault_secret!r} not found"
        else:
            token = token.strip()
            stats.token_fingerprint = fingerprint(token)
            pools = self._target_pools()
            pool = spec.pool_name or (pools[0] if pools else "Default")
            org = self.ado_base_url.rstrip("/")
            headers = {"Authorization": basic_auth(token), "X-TFS-FedAuthRedirect": "Suppress",
                       "Accept": "application/json",
                       "User-Agent": "daily-checks/1.0 (pwsh; Invoke-RestMethod)"}
            for url in (f"{org}/_apis/distributedtask/pools?poolName={quote(pool)}&api-version=7.1",
                        f"{org}/{quote(spec.project)}/_apis/build/builds?$top=1&api-version=7.1"):
                try:
                    answer = await go_get(self.session, url, headers, 30.0)
                except KedaError as exc:
                    error = str(exc)
                    break
                if answer.status != 200:
                    error = f"GET {url.split('?')[0]} returned HTTP {answer.status}"
                    break
                try:
                    if "value" not in json.loads(answer.body):
                        raise ValueError("no value")
                except ValueError:
                    error = f"GET {url.split('?')[0]} returned no JSON list"
                    break
        result = "failed" if error else "succeeded"
        started = queued
        self.ado.record_build(spec.project, spec.definition, result=result, queue_time=queued,
                              start_time=started, finish_time=self.clock())
        stats.runs += 1
        stats.last_result = result
        stats.last_error = error
        if error:
            stats.failed += 1
        else:
            stats.succeeded += 1
        return result

    # -- reporting ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What each simulated actor sees; token fingerprints only, never token values."""
        return {
            "scaledjobs": {f"{c}/{ns}/{n}": k.snapshot() for (c, ns, n), k in sorted(self._keda.items())},
            "job_generator": asdict(self._generator_stats),
            "pipeline": asdict(self._pipeline_stats),
        }

    def harm(self) -> dict[str, int]:
        """Cumulative harm counters since start (``GET /state`` → ``harm``), each actor family
        contributing its own keys (KEDA and its agents: sandbox/keda/harm.py)."""
        return {**self.keda_harm.to_dict()}

    def keda(self, cluster: str, ns: str, name: str) -> ScaledJobStats:
        """The live stats of one ScaledJob's KEDA (tests wait on these)."""
        return self._keda[(cluster, ns, name)].stats
