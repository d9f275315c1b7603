"""The batch/v1 Jobs KEDA creates for a ScaledJob, and the agent pod each Job runs.

Guarantees:

* **Jobs** are real objects in the cluster store, shaped as KEDA's ``generateJobs``
  (``pkg/scaling/executor/scale_jobs.go`` at v2.20.0) makes them: ``generateName``
  ``<scaledjob>-``, labels ``app.kubernetes.io/{name,version,part-of,managed-by}`` and
  ``scaledjob.keda.sh/name`` plus the ScaledJob's labels, annotations
  ``scaledjob.keda.sh/generation`` plus the ScaledJob's annotations, spec = ``jobTargetRef``
  (``restartPolicy`` defaulted to ``OnFailure``), an ownerReference to the ScaledJob. The job
  controller's status follows the pod: ``startTime`` and ``active: 1`` while it runs, then
  ``succeeded``/``failed``, ``completionTime`` (success only) and a ``Complete``/``Failed``
  condition (``DeadlineExceeded`` when ``activeDeadlineSeconds`` ran out).
* **The agent pod** is Microsoft's docker agent ``start.sh`` with ``--once``: the kubelet resolves
  ``AZP_TOKEN`` from the Secret at container start and the pod keeps that PAT for its whole life;
  it authenticates and registers with it, takes one job, runs the build for ``run_time``, then
  unregisters (``config.sh remove --auth PAT``) with **the PAT it started with**, retrying every
  ``unregister_retry`` while that fails. When ``activeDeadlineSeconds`` runs out the pod is
  killed and a still-registered agent stays in the pool, **offline**.
* **Harm** is counted where it happens: a Job deleted while its agent runs a build is a build
  interrupted; an agent whose pod was killed before it could unregister is an unregister failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote

from sandbox.keda.harm import KedaHarm
from sandbox.keda.scaler import AGENT_USER_AGENT, KedaError, basic_auth, go_get
from sandbox.kube import JOBS, ApiError, ClusterState, format_time

if TYPE_CHECKING:
    from sandbox.keda.controller import ScaledJobKeda

log = logging.getLogger("sandbox.keda")

JSON = dict[str, Any]
NAME_LABEL = "scaledjob.keda.sh/name"
GENERATION_ANNOTATION = "scaledjob.keda.sh/generation"
KEDA_VERSION_LABEL = {"2.20": "2.20.0", "2.16": "2.16.1"}


class AdoAgentsLike(Protocol):
    """What agents need from ``sandbox.ado.AdoWorld`` (besides its HTTP API)."""

    def register_agent(self, pool_id: int, name: str) -> int: ...
    def remove_agent(self, agent_id: int) -> None: ...
    def set_agent_status(self, agent_id: int, status: Literal["online", "offline"]) -> None: ...
    def assign_job(self, pool_id: int, agent_id: int) -> int | None: ...
    def finish_job(self, request_id: int, result: str = ...) -> None: ...


@dataclass(frozen=True)
class AgentTiming:
    """How long a simulated agent pod takes for each phase (seconds)."""

    start_delay: float = 0.2                # scheduling + image start before the agent runs
    run_time: float = 12.0                  # the build (scenario ``build_duration``)
    idle_timeout: float = 30.0              # give up (pod ends) if no job arrives
    job_poll: float = 0.1                   # how often a registered agent asks for a job
    unregister_retry: float = 30.0          # start.sh: "Retrying in 30 seconds..."


@dataclass(eq=False)
class Agent:
    """One agent pod (the pod of one Job)."""

    name: str                               # the Job's name; the agent registers under it
    task: asyncio.Task[None] | None = None
    work: asyncio.Task[None] | None = None
    agent_id: int | None = None
    pool_id: int | None = None
    request_id: int | None = None
    building: bool = False
    deleted: bool = False                   # its Job was deleted (the pod gets SIGTERM)
    notes: list[str] = field(default_factory=list)


class AgentFailed(Exception):
    """The agent could not start (the pod fails, the Job fails: ``backoffLimit: 0``)."""


def job_for(sj: JSON, *, keda_version: str) -> JSON:
    """The Job ``generateJobs`` builds for a ScaledJob."""
    meta = sj.get("metadata") or {}
    name = meta.get("name", "")
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/version": KEDA_VERSION_LABEL.get(keda_version, keda_version),
        "app.kubernetes.io/part-of": name,
        "app.kubernetes.io/managed-by": "keda-operator",
        NAME_LABEL: name,
    }
    excluded = set(str((meta.get("annotations") or {}).get("scaledjob.keda.sh/job-excluded-labels", ""))
                   .split(","))
    labels.update({k: v for k, v in (meta.get("labels") or {}).items() if k not in excluded})
    annotations = {GENERATION_ANNOTATION: str(meta.get("generation", 0)), **(meta.get("annotations") or {})}
    spec = copy.deepcopy((sj.get("spec") or {}).get("jobTargetRef") or {})
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {}).setdefault("labels", {})[NAME_LABEL] = name
    template["metadata"]["generateName"] = f"{name}-"
    pod_spec = template.setdefault("spec", {})
    if not pod_spec.get("restartPolicy"):
        pod_spec["restartPolicy"] = "OnFailure"
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "generateName": f"{name}-", "namespace": meta.get("namespace"), "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob", "name": name,
                                 "uid": meta.get("uid"), "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": spec,
    }


def job_finished(job: JSON) -> str | None:
    """``Complete``/``Failed`` when the Job has that condition True, else None (still running)."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return str(c["type"])
    return None


class AgentJobs:
    """The Jobs of one ScaledJob and their agent pods."""

    def __init__(self, keda: ScaledJobKeda, harm: KedaHarm) -> None:
        self.keda = keda
        self.harm = harm
        self.agents: dict[str, Agent] = {}

    @property
    def cluster(self) -> ClusterState:
        return self.keda.cluster

    # -- what KEDA does with Jobs --------------------------------------------------------------

    def jobs(self) -> list[JSON]:
        """``r.List(jobs, InNamespace, MatchingLabels{scaledjob.keda.sh/name})``."""
        return [j for j in self.cluster.list_objects("batch/v1", "jobs", self.keda.ns)
                if ((j.get("metadata") or {}).get("labels") or {}).get(NAME_LABEL) == self.keda.name]

    def running_count(self) -> int:
        """getRunningJobCount: the Jobs without a finished condition."""
        return sum(1 for j in self.jobs() if job_finished(j) is None)

    def pending_count(self) -> int:
        """getPendingJobCount: running Jobs whose agent has not taken a build yet."""
        return sum(1 for a in self.agents.values()
                   if a.task is not None and not a.task.done() and a.request_id is None)

    def start(self, sj: JSON) -> None:
        """Create one Job (KEDA) and start its pod (job controller + kubelet)."""
        job = self.cluster.create(JOBS, self.keda.ns, job_for(sj, keda_version=self.keda.actors.keda_version),
                                  manager="keda")
        name = job["metadata"]["name"]
        agent = Agent(name=name)
        self.agents[name] = agent
        self.keda.stats.agents_started += 1
        agent.task = asyncio.get_running_loop().create_task(self._lifecycle(agent, job))
        self._refresh_stats()

    def delete(self, name: str) -> None:
        """Delete a Job (background propagation: the pod is terminated)."""
        with contextlib.suppress(ApiError):
            self.cluster.delete(JOBS, self.keda.ns, name)

    def delete_previous_version(self, sj: JSON) -> int:
        """deletePreviousVersionScaleJobs' deletion (the caller has decided the strategy allows it):
        Jobs whose generation annotation is missing or differs from the ScaledJob's (KEDA >= 2.17)."""
        generation = str((sj.get("metadata") or {}).get("generation", 0))
        stale = [j["metadata"]["name"] for j in self.jobs()
                 if ((j["metadata"].get("annotations") or {}).get(GENERATION_ANNOTATION)) != generation]
        for name in stale:
            self.delete(name)
        return len(stale)

    def cleanup(self, sj: JSON) -> None:
        """scale_jobs.go Cleanup: keep the newest ``successful``/``failedJobsHistoryLimit`` finished Jobs."""
        spec = sj.get("spec") or {}
        limits = {"Complete": int(spec.get("successfulJobsHistoryLimit", 100)),
                  "Failed": int(spec.get("failedJobsHistoryLimit", 100))}
        for kind, limit in limits.items():
            done = sorted((j for j in self.jobs() if job_finished(j) == kind),
                          key=lambda j: int(j["metadata"]["resourceVersion"]))
            for job in done[:max(0, len(done) - limit)]:
                self.delete(job["metadata"]["name"])

    def on_job_deleted(self, name: str) -> None:
        """The Job is gone: its pod is terminated; a build in progress is interrupted."""
        agent = self.agents.get(name)
        if agent is None or agent.deleted or agent.task is None or agent.task.done():
            return
        agent.deleted = True
        self.keda.stats.agents_killed += 1
        if agent.building:
            self.harm.builds_interrupted += 1
        if agent.work is not None and not agent.work.done():
            agent.work.cancel()

    def shutdown(self) -> None:
        """The sandbox stops: end every pod without counting harm."""
        for agent in self.agents.values():
            if agent.task is not None and not agent.task.done():
                agent.task.cancel()

    async def wait(self) -> None:
        tasks = [a.task for a in self.agents.values() if a.task is not None]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- the job controller and the pod ---------------------------------------------------------

    def _set_status(self, name: str, status: JSON) -> None:
        current = self.cluster.get_object("batch/v1", "jobs", self.keda.ns, name)
        if current is None:
            return
        current["status"] = status
        with contextlib.suppress(ApiError):
            self.cluster.update(JOBS, self.keda.ns, name, current, manager="kube-controller-manager",
                                subresource="status")

    async def _lifecycle(self, agent: Agent, job: JSON) -> None:
        started = self.keda.actors.clock()
        self._set_status(agent.name, {"startTime": format_time(started), "active": 1, "ready": 0,
                                      "terminating": 0, "uncountedTerminatedPods": {}})
        deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
        outcome: tuple[str, str, str] = ("Complete", "", "")
        try:
            if deadline is None:
                await self._pod(agent, job)
            else:
                await asyncio.wait_for(self._pod(agent, job), timeout=float(deadline))
        except TimeoutError:
            outcome = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            self._killed_registered(agent)
        except AgentFailed as exc:
            outcome = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            self.keda.stats.agents_failed += 1
            self.keda.stats.last_agent_error = str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken agent pod must not take the simulation down
            outcome = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            self.keda.stats.agents_failed += 1
            self.keda.stats.last_agent_error = f"{type(exc).__name__}: {exc}"
            log.exception("agent failed", extra={"agent": agent.name})
        finally:
            self._refresh_stats(exclude=agent)
        kind, reason, message = outcome
        if not agent.deleted:
            now = format_time(self.keda.actors.clock())
            condition: JSON = {"type": kind, "status": "True", "lastProbeTime": now, "lastTransitionTime": now}
            status: JSON = {"startTime": format_time(started), "ready": 0, "terminating": 0,
                            "uncountedTerminatedPods": {}, "conditions": [condition]}
            if kind == "Complete":
                status.update(succeeded=1, completionTime=now)
            else:
                condition.update(reason=reason, message=message)
                status["failed"] = 1
            self._set_status(agent.name, status)
        self.agents.pop(agent.name, None)

    def _killed_registered(self, agent: Agent) -> None:
        """The pod was killed (deadline) while its agent was still registered: offline for good."""
        if agent.agent_id is not None:
            self.harm.agent_unregister_failures += 1
            with contextlib.suppress(KeyError):
                self.keda.actors.ado.set_agent_status(agent.agent_id, "offline")
            agent.agent_id = None

    async def _pod(self, agent: Agent, job: JSON) -> None:
        """start.sh: run the agent once, then (also on SIGTERM) ``cleanup`` until it succeeds."""
        timing = self.keda.actors.agent_timing
        await asyncio.sleep(timing.start_delay)
        # the kubelet resolves secretKeyRef at container start, from the API server (no cache)
        env = self.keda.resolve_env({"jobTargetRef": (job.get("spec") or {})}, cached=False)
        org_url, pool_name = env.get("AZP_URL", ""), env.get("AZP_POOL", "")
        pat = env.get("AZP_TOKEN", "").strip()
        agent.work = asyncio.get_running_loop().create_task(self._run_once(agent, org_url, pool_name, pat))
        try:
            await agent.work
        except asyncio.CancelledError:
            if not agent.deleted:
                raise
        if agent.agent_id is not None:
            await self._cleanup(agent, org_url, pat)

    async def _run_once(self, agent: Agent, org_url: str, pool_name: str, pat: str) -> None:
        timing = self.keda.actors.agent_timing
        ado = self.keda.actors.ado
        pool_id = await self._authenticate(org_url, pool_name, pat)
        agent.pool_id = pool_id
        agent.agent_id = ado.register_agent(pool_id, agent.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timing.idle_timeout
        while agent.request_id is None and loop.time() < deadline:
            agent.request_id = ado.assign_job(pool_id, agent.agent_id)
            if agent.request_id is None:
                await asyncio.sleep(timing.job_poll)
        if agent.request_id is None:
            return
        agent.building = True
        try:
            await asyncio.sleep(timing.run_time)
        except asyncio.CancelledError:
            with contextlib.suppress(KeyError, ValueError):
                ado.finish_job(agent.request_id, "canceled")
            raise
        finally:
            agent.building = False
        ado.finish_job(agent.request_id, "succeeded")
        self.keda.stats.jobs_completed += 1

    async def _cleanup(self, agent: Agent, org_url: str, pat: str) -> None:
        """``config.sh remove --unattended --auth PAT --token <the start PAT>``, every
        ``unregister_retry`` until it works (the deadline ends it otherwise)."""
        assert agent.agent_id is not None and agent.pool_id is not None
        while True:
            if await self._remove_allowed(org_url, agent.pool_id, agent.agent_id, pat):
                with contextlib.suppress(KeyError):
                    self.keda.actors.ado.remove_agent(agent.agent_id)
                agent.agent_id = None
                return
            self.keda.stats.unregister_retries += 1
            await asyncio.sleep(self.keda.actors.agent_timing.unregister_retry)

    async def _remove_allowed(self, org_url: str, pool_id: int, agent_id: int, pat: str) -> bool:
        """The agent's own read of itself with the PAT: what ``config.sh remove`` needs to work."""
        url = f"{org_url}/_apis/distributedtask/pools/{pool_id}/agents/{agent_id}?api-version=7.1"
        try:
            answer = await go_get(self.keda.actors.session, url, self._headers(pat), 30.0)
        except KedaError:
            return False
        return answer.status == 200 and "json" in answer.content_type

    @staticmethod
    def _headers(pat: str) -> dict[str, str]:
        return {"Authorization": basic_auth(pat), "User-Agent": AGENT_USER_AGENT,
                "X-TFS-FedAuthRedirect": "Suppress", "Accept": "application/json;api-version=7.1"}

    async def _authenticate(self, org_url: str, pool_name: str, pat: str) -> int:
        """The agent's first call with its PAT; anything but a JSON pool list fails the pod."""
        url = f"{org_url}/_apis/distributedtask/pools?poolName={quote(pool_name)}&api-version=7.1"
        try:
            answer = await go_get(self.keda.actors.session, url, self._headers(pat), 30.0)
        except KedaError as exc:
            raise AgentFailed(str(exc)) from None
        if answer.status != 200:
            raise AgentFailed(f"agent could not authenticate: HTTP {answer.status}")
        try:
            doc = json.loads(answer.body)
            return int(doc["value"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise AgentFailed(f"agent pool {pool_name!r} not found or unreadable") from None

    def _refresh_stats(self, exclude: Agent | None = None) -> None:
        self.keda.stats.agents_running = sum(1 for a in self.agents.values()
                                             if a is not exclude and a.task is not None and not a.task.done())
