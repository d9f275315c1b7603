"""The things that act on the simulated world: KEDA, ephemeral agents, a job generator and the
daily-checks pipeline.

patrol's whole purpose is to keep these working, and its rotation saga is only right if it
accounts for how they really behave, so they copy the real code paths rather than a summary.
KEDA and its agents live in :mod:`sandbox.keda` (``scaler``: the azure-pipelines scaler's HTTP
and decoding; ``controller``: reconcile, scalers cache, scale loop; ``agents``: the agent pods).
This module is the orchestration (:class:`Actors`).

The other workloads — the job generator, the daily-checks pipeline and the External-Secrets-style
Key Vault reader — live in :mod:`sandbox.pipeline` and :mod:`sandbox.readers`.

All of it runs as tasks on the sandbox loop. :meth:`Actors.snapshot` reports what each actor
sees, with token fingerprints (sha256[:8]) and never a token value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from sandbox.keda.agents import NAME_LABEL, AgentTiming
from sandbox.keda.controller import ScaledJobKeda, ScaledJobStats
from sandbox.keda.events import KedaEvents
from sandbox.keda.harm import KedaHarm
from sandbox.keda.scaler import (
    GO_USER_AGENT,
    SCALER_TYPE,
    KedaError,
    decode_job_requests,
    fingerprint,
    go_json_syntax_error,
)
from sandbox.keda.secretcache import LaggingSecretCache
from sandbox.kube import JOBS, SCALEDJOBS, ClusterState, ResourceType
from sandbox.pipeline import PipelineAdoLike, PipelineSpec, Workloads
from sandbox.readers import ReaderSpec, SecretSourceLike

__all__ = [
    "Actors", "AdoLike", "AgentTiming", "KedaError", "PipelineSpec", "ScaledJobStats", "SecretSourceLike",
    "decode_job_requests", "fingerprint", "go_json_syntax_error",
]

log = logging.getLogger("sandbox.actors")

JSON = dict[str, Any]


class AdoLike(PipelineAdoLike, Protocol):
    """What the actors need from ``sandbox.ado.AdoWorld`` (besides its HTTP API)."""

    def pool_by_name(self, name: str) -> int | None: ...
    def register_agent(self, pool_id: int, name: str) -> int: ...
    def remove_agent(self, agent_id: int) -> None: ...
    def set_agent_status(self, agent_id: int, status: Literal["online", "offline"]) -> None: ...
    def queue_job(self, pool_id: int, *, definition: str = ...) -> int: ...
    def assign_job(self, pool_id: int, agent_id: int) -> int | None: ...
    def finish_job(self, request_id: int, result: str = ...) -> None: ...


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
    workloads: Workloads = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.workloads = Workloads(ado=self.ado, kv=self.kv, clusters=self.clusters.values,
                                   ado_base_url=self.ado_base_url, job_interval=self.job_interval,
                                   pipeline=self.pipeline, reader=self.keyvault_reader, clock=self.clock)

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
        await self.workloads.start()

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
        """Cumulative harm counters since start (``GET /state`` → ``harm``), each actor family
        contributing its own keys (KEDA and its agents: sandbox/keda/harm.py; the pipeline and the
        Key Vault reader: sandbox/pipeline.py)."""
        return {**self.keda_harm.to_dict(), **self.workloads.harm()}

    def keda(self, cluster: str, ns: str, name: str) -> ScaledJobStats:
        """The live stats of one ScaledJob's KEDA (tests wait on these)."""
        return self._keda[(cluster, ns, name)].stats
