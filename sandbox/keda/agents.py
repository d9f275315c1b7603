"""The agent pods KEDA's Jobs run: Microsoft's docker agent ``start.sh`` with ``--once``.

Guarantees: a pod reads ``AZP_TOKEN`` from the Secret at container start and uses that value for
its whole life; it authenticates, registers, takes one job, runs it and unregisters; a
rejected PAT fails the pod and leaves no agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from sandbox.keda.scaler import AGENT_USER_AGENT, KedaError, basic_auth, go_get

if TYPE_CHECKING:
    from sandbox.keda.controller import ScaledJobKeda

log = logging.getLogger("sandbox.keda")

JSON = dict[str, Any]


class AdoAgentsLike(Protocol):
    """What agents need from ``sandbox.ado.AdoWorld`` (besides its HTTP API)."""

    def register_agent(self, pool_id: int, name: str) -> int: ...
    def remove_agent(self, agent_id: int) -> None: ...
    def assign_job(self, pool_id: int, agent_id: int) -> int | None: ...
    def finish_job(self, request_id: int, result: str = ...) -> None: ...


@dataclass(frozen=True)
class AgentTiming:
    """How long a simulated agent pod takes for each phase (seconds)."""

    start_delay: float = 0.2                # scheduling + image start before the agent runs
    run_time: float = 1.0                   # how long the one job takes
    idle_timeout: float = 30.0              # give up (pod ends) if no job arrives
    job_poll: float = 0.1                   # how often a registered agent asks for a job


@dataclass(eq=False)
class Agent:
    name: str
    task: asyncio.Task[None] | None = None
    agent_id: int | None = None
    request_id: int | None = None


class AgentPods:
    """The agent pods of one ScaledJob's Jobs."""

    def __init__(self, keda: ScaledJobKeda) -> None:
        self.keda = keda
        self.agents: dict[str, Agent] = {}

    def start(self, sj: JSON) -> None:
        suffix = "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        agent = Agent(name=f"{self.keda.name}-{suffix}")
        self.agents[agent.name] = agent
        self.keda.stats.agents_started += 1
        agent.task = asyncio.get_running_loop().create_task(self._run(agent, sj))
        self.keda.stats.agents_running = sum(1 for a in self.agents.values() if a.task and not a.task.done())

    def kill(self) -> None:
        """deletePreviousVersionScaleJobs: every Job of this ScaledJob is deleted."""
        for agent in list(self.agents.values()):
            if agent.task is not None and not agent.task.done():
                agent.task.cancel()
                self.keda.stats.agents_killed += 1

    async def wait(self) -> None:
        tasks = [a.task for a in self.agents.values() if a.task is not None]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, agent: Agent, sj: JSON) -> None:
        timing = self.keda.actors.agent_timing
        ado = self.keda.actors.ado
        try:
            await asyncio.sleep(timing.start_delay)
            env = self.keda.resolve_env(sj.get("spec") or {})  # kubelet resolves secretKeyRef at container start
            org_url, pool_name = env.get("AZP_URL", ""), env.get("AZP_POOL", "")
            pat = env.get("AZP_TOKEN", "").strip()
            pool_id = await self._authenticate(org_url, pool_name, pat)
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
                self.keda.stats.jobs_completed += 1
            ado.remove_agent(agent.agent_id)
            agent.agent_id = None
        except AgentFailed as exc:
            self.keda.stats.agents_failed += 1
            self.keda.stats.last_agent_error = str(exc)
        except asyncio.CancelledError:
            if agent.agent_id is not None:
                with contextlib.suppress(KeyError):
                    ado.remove_agent(agent.agent_id)      # the pod is gone; its job is abandoned
            raise
        except Exception as exc:  # a broken agent pod must not take the simulation down
            self.keda.stats.agents_failed += 1
            self.keda.stats.last_agent_error = f"{type(exc).__name__}: {exc}"
            log.exception("agent failed", extra={"agent": agent.name})
        finally:
            self.agents.pop(agent.name, None)
            self.keda.stats.agents_running = sum(1 for a in self.agents.values() if a.task and not a.task.done())

    async def _authenticate(self, org_url: str, pool_name: str, pat: str) -> int:
        """The agent's first call with its PAT; anything but a JSON pool list fails the pod."""
        url = f"{org_url}/_apis/distributedtask/pools?poolName={quote(pool_name)}&api-version=7.1"
        headers = {"Authorization": basic_auth(pat), "User-Agent": AGENT_USER_AGENT,
                   "X-TFS-FedAuthRedirect": "Suppress", "Accept": "application/json;api-version=7.1"}
        try:
            answer = await go_get(self.keda.actors.session, url, headers, 30.0)
        except KedaError as exc:
            raise AgentFailed(str(exc)) from None
        if answer.status != 200:
            raise AgentFailed(f"agent could not authenticate: HTTP {answer.status}")
        try:
            doc = json.loads(answer.body)
            return int(doc["value"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise AgentFailed(f"agent pool {pool_name!r} not found or unreadable") from None


class AgentFailed(Exception):
    pass
