"""Agent pools: agents online/offline, queued jobs and the oldest wait, per configured pool.

The pools watched are those the configured KEDA consumers serve. They are read with the **bot
account's Entra token**, not with a watched PAT: the pool metrics exist to show what happens when
a PAT fails (jobs pile up, no agent comes online — AgentPoolStarved), so they must not go dark
when that PAT does. The bot's token is the one the PAT source already uses, so no extra
credential is needed.

Jobs are counted as KEDA counts its queue (``jobrequests?$top=N``, a job waits while it has no
``result`` and no ``receiveTime``: :attr:`core.ado.JobRequest.is_queued`). Two calls per pool per
cycle (agents, job requests), run concurrently within the exporter's bound; pool ids are looked
up once and again only when a pool disappears.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from core.ado import Agent, JobRequest, Pool
from core.errors import NotFoundError
from exporter.fanout import Fanout
from exporter.source import SourceCollector

AGENTS = "patrol_agent_pool_agents"
QUEUED = "patrol_agent_pool_queued_jobs"
OLDEST = "patrol_agent_pool_oldest_queued_job_age_seconds"
STATUSES = ("online", "offline")


class PoolApi(Protocol):
    """:class:`core.ado.AdoClient` as the pools source uses it."""

    def find_pool(self, name: str) -> Pool: ...
    def list_agents(self, pool_id: int) -> builtins.list[Agent]: ...
    def list_job_requests(self, pool_id: int, *, top: int = 250) -> builtins.list[JobRequest]: ...


@dataclass(frozen=True)
class PoolState:
    online: int
    offline: int
    queued: int
    oldest_age: float                        # seconds the oldest waiting job has waited, at ``now``


def pool_state(agents: Iterable[Agent], jobs: Iterable[JobRequest], now: float) -> PoolState:
    """Count agents by status and waiting jobs, as of unix time ``now`` (pure)."""
    agent_list = list(agents)
    online = sum(1 for a in agent_list if a.status == "online")
    waiting = [j for j in jobs if j.is_queued]
    queued_at = [j.queue_time.timestamp() for j in waiting if j.queue_time is not None]
    oldest = max(0.0, now - min(queued_at)) if queued_at else 0.0
    return PoolState(online=online, offline=len(agent_list) - online, queued=len(waiting), oldest_age=oldest)


class AgentPools(SourceCollector):
    """Source ``agent-pools/<organization>``."""

    def __init__(self, organization: str, pools: Sequence[str], api: PoolApi, *, fanout: Fanout,
                 interval: float, jobs_to_fetch: int = 250,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(f"agent-pools/{organization}", interval, clock=clock, monotonic=monotonic)
        self.organization = organization
        self.pools = tuple(dict.fromkeys(pools))
        self._api = api
        self._fanout = fanout
        self._jobs_to_fetch = jobs_to_fetch
        self._ids: dict[str, int] = {}
        self._states: Mapping[str, PoolState] = {}

    def _read(self, name: str) -> PoolState:
        """One pool's state: runs as one task of :meth:`Fanout.map` (its calls are sequential)."""
        pool_id = self._ids.get(name)
        if pool_id is None:
            pool_id = self._api.find_pool(name).id
            self._ids[name] = pool_id
        try:
            agents = self._api.list_agents(pool_id)
            jobs = self._api.list_job_requests(pool_id, top=self._jobs_to_fetch)
        except NotFoundError:
            self._ids.pop(name, None)          # the pool was recreated: look its id up again
            raise
        return pool_state(agents, jobs, self._clock())

    def fetch(self) -> None:
        results = self._fanout.map(self._read, self.pools)
        states = dict(self._states)
        states.update((name, r.value) for name, r in zip(self.pools, results, strict=True)
                      if r.value is not None)
        self._states = states
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise errors[0]

    def samples(self) -> Iterable[Metric]:
        agents = GaugeMetricFamily(AGENTS, "Agents registered in the pool, by status",
                                   labels=["organization", "pool", "status"])
        queued = GaugeMetricFamily(QUEUED, "Jobs waiting for an agent (no result, no receiveTime)",
                                   labels=["organization", "pool"])
        oldest = GaugeMetricFamily(OLDEST, "How long the oldest waiting job has waited (0 if none)",
                                   labels=["organization", "pool"])
        org = self.organization
        for name in self.pools:
            state = self._states.get(name)
            if state is None:
                continue
            agents.add_metric([org, name, "online"], float(state.online))
            agents.add_metric([org, name, "offline"], float(state.offline))
            queued.add_metric([org, name], float(state.queued))
            oldest.add_metric([org, name], state.oldest_age)
        return (agents, queued, oldest)
