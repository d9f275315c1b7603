"""The workloads around the agents: the job generator, the scheduled daily-checks pipeline and an
External-Secrets-style Key Vault reader (:class:`Workloads`).

Guarantees: a daily-checks run reads its PAT from Key Vault once, at its start, exactly as the
``AzureKeyVault`` task does (:func:`sandbox.readers.read_like_azure_keyvault_task`: disabled and
expired versions skipped, the value passed on unchanged), and uses that value for the whole run:
at its start, in the middle and at its end, ``duration`` seconds later — long enough that a
rotation can happen during a run, as it does in production. A run shows in ADO as an
``inProgress`` build from its start and is completed with its result at its end. No value is ever
reported, only sha256 fingerprints.

:meth:`Workloads.harm` is this family's part of the control API's ``harm`` counters:
``pipeline_runs_failed`` (runs that failed because of their credential: Key Vault gave them no
usable value, or ADO refused the value they hold) and ``secret_reader_failures`` (reader calls
refused because the value it holds no longer authenticates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from sandbox.readers import (
    AdoAnswer,
    ReaderSpec,
    SecretReader,
    SecretSourceLike,
    ado_get,
    fingerprint,
    read_like_azure_keyvault_task,
)

log = logging.getLogger("sandbox.pipeline")

JSON = dict[str, Any]
SCALER_TYPE = "azure-pipelines"
PIPELINE_USER_AGENT = "daily-checks/1.0 (pwsh; Invoke-RestMethod)"


class PipelineAdoLike(Protocol):
    """What the workloads need from ``sandbox.ado.AdoWorld`` (besides its HTTP API)."""

    def pool_by_name(self, name: str) -> int | None: ...
    def queue_job(self, pool_id: int, *, definition: str = ...) -> int: ...
    def record_build(self, project: str, definition: str, *, result: str, queue_time: float,
                     start_time: float, finish_time: float, status: str = ...) -> int: ...
    def complete_build(self, build_id: int, *, result: str, finish_time: float) -> None: ...


class ClusterObjectsLike(Protocol):
    """The part of ``sandbox.kube.ClusterState`` the job generator reads (ScaledJobs)."""

    def list_objects(self, group_version: str, resource: str, ns: str | None = ...) -> list[JSON]: ...


@dataclass(frozen=True)
class PipelineSpec:
    """The scheduled daily-checks pipeline: its build definition, where its PAT lives, how long
    a run takes and how often it uses the PAT."""

    project: str
    definition: str
    interval: float                         # seconds between run starts (the first starts at once)
    keyvault_secret: str = "azure-devops-token"
    pool_name: str | None = None            # pool to probe; default: the first pool a ScaledJob targets
    duration: float = 0.0                   # seconds from a run's start to its end
    uses: int = 3                           # times the run uses its PAT, spread start .. end


@dataclass
class PipelineStats:
    runs: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    failed_credential: int = 0              # the harm counter pipeline_runs_failed
    last_result: str | None = None
    last_error: str | None = None
    token_fingerprint: str | None = None


@dataclass
class GeneratorStats:
    jobs_queued: int = 0
    last_error: str | None = None


def target_pools(clusters: Iterable[ClusterObjectsLike]) -> list[str]:
    """Every pool an azure-pipelines ScaledJob polls, in first-seen order."""
    pools: list[str] = []
    for cluster in clusters:
        for sj in cluster.list_objects("keda.sh/v1alpha1", "scaledjobs"):
            for t in (sj.get("spec") or {}).get("triggers") or []:
                name = (t.get("metadata") or {}).get("poolName")
                if t.get("type") == SCALER_TYPE and name and name not in pools:
                    pools.append(name)
    return pools


@dataclass(kw_only=True)
class Workloads:
    """The job generator, the daily-checks pipeline and the Key Vault reader, each optional."""

    ado: PipelineAdoLike
    kv: SecretSourceLike
    clusters: Callable[[], Iterable[ClusterObjectsLike]]
    ado_base_url: str
    job_interval: float | None = None
    pipeline: PipelineSpec | None = None
    reader: ReaderSpec | None = None
    clock: Callable[[], float] = time.time
    pipeline_stats: PipelineStats = field(default_factory=PipelineStats, init=False)
    generator_stats: GeneratorStats = field(default_factory=GeneratorStats, init=False)
    _reader: SecretReader | None = field(default=None, init=False, repr=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False, repr=False)
    _runs: set[asyncio.Task[str]] = field(default_factory=set, init=False, repr=False)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.job_interval is not None:
            self._tasks.append(loop.create_task(self._generate_jobs(self.job_interval)))
        if self.pipeline is not None:
            self._tasks.append(loop.create_task(self._schedule(self.pipeline)))
        if self.reader is not None:
            self._reader = SecretReader(self.reader, kv=self.kv, ado_base_url=self.ado_base_url,
                                        session=self.session, clock=self.clock)
            self._tasks.append(loop.create_task(self._reader.run()))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._runs]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._runs.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- job generator -----------------------------------------------------------------------

    async def _generate_jobs(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for pool_name in target_pools(self.clusters()):
                pool_id = self.ado.pool_by_name(pool_name)
                if pool_id is None:
                    self.generator_stats.last_error = f"pool {pool_name!r} does not exist"
                    continue
                self.ado.queue_job(pool_id, definition="build")
                self.generator_stats.jobs_queued += 1

    # -- daily-checks pipeline ---------------------------------------------------------------

    async def _schedule(self, spec: PipelineSpec) -> None:
        """Start a run every ``interval`` seconds, whether or not the previous one has ended
        (a scheduled trigger queues regardless; runs may overlap when duration > interval)."""
        while True:
            run = asyncio.get_running_loop().create_task(self._run_logged(spec))
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
            await asyncio.sleep(spec.interval)

    async def _run_logged(self, spec: PipelineSpec) -> str:
        try:
            return await self.run_pipeline_once(spec)
        except asyncio.CancelledError:
            raise
        except Exception:  # keep the schedule going, like a real scheduler would
            log.exception("daily-checks run failed to record")
            return "failed"

    async def run_pipeline_once(self, spec: PipelineSpec) -> str:
        """One run: read the PAT like the AzureKeyVault task, use it ``uses`` times over
        ``duration`` seconds, record the build; returns the result."""
        stats = self.pipeline_stats
        started = self.clock()
        build_id = self.ado.record_build(spec.project, spec.definition, result="none", queue_time=started,
                                         start_time=started, finish_time=started, status="inProgress")
        stats.running += 1
        error: str | None = None
        credential = False
        try:
            token = read_like_azure_keyvault_task(self.kv, spec.keyvault_secret, started)
            if token is None:
                error = (f"Key Vault secret {spec.keyvault_secret!r} not downloaded (absent, disabled or "
                         "expired)")
                credential = True
            else:
                stats.token_fingerprint = fingerprint(token)
                answer = await self._use_over_time(spec, token)
                if answer is not None:
                    error, credential = answer.error, answer.auth_refused
        finally:
            stats.running -= 1
        result = "failed" if error else "succeeded"
        self.ado.complete_build(build_id, result=result, finish_time=self.clock())
        stats.runs += 1
        stats.last_result = result
        stats.last_error = error
        if error:
            stats.failed += 1
            stats.failed_credential += int(credential)
        else:
            stats.succeeded += 1
        return result

    async def _use_over_time(self, spec: PipelineSpec, token: str) -> AdoAnswer | None:
        """Use the PAT at the start, spread over the run, and at its end; the first failing use
        fails the run (its answer is returned), as a failing step fails a job."""
        pools = target_pools(self.clusters())
        pool = spec.pool_name or (pools[0] if pools else "Default")
        org = self.ado_base_url.rstrip("/")
        urls = (f"{org}/_apis/distributedtask/pools?poolName={quote(pool)}&api-version=7.1",
                f"{org}/{quote(spec.project)}/_apis/build/builds?$top=1&api-version=7.1")
        uses = max(1, spec.uses)
        gap = spec.duration / (uses - 1) if uses > 1 else 0.0
        for i in range(uses):
            if i and gap > 0:
                await asyncio.sleep(gap)
            for url in urls:
                answer = await ado_get(self.session(), url, token, PIPELINE_USER_AGENT)
                if answer.error is not None:
                    return answer
        if uses == 1 and spec.duration > 0:
            await asyncio.sleep(spec.duration)
        return None

    # -- reporting ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The workloads' view for /state (fingerprints only)."""
        return {
            "job_generator": asdict(self.generator_stats),
            "pipeline": asdict(self.pipeline_stats),
            "keyvault_reader": self._reader.snapshot() if self._reader is not None else None,
        }

    def harm(self) -> dict[str, int]:
        """This family's harm counters (cumulative since start)."""
        return {"pipeline_runs_failed": self.pipeline_stats.failed_credential,
                "secret_reader_failures": self._reader.stats.failures if self._reader is not None else 0}
