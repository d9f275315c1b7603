"""Agent pools, agents and job requests (``/{org}/_apis/distributedtask/…``), as KEDA, agents
and patrol's exporter read them.

Guarantees: shapes follow the swagger and docs/external-apis.md, including the undocumented
``jobrequests`` list KEDA polls (newest first; ``matchedAgents`` left out when ``$top`` is
given, kedacore/keda #4387); every route needs an agent-pools scope (or ``app_token``).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from sandbox.ado.auth import Auth
from sandbox.ado.model import SERVICE_OWNER, AdoWorld
from sandbox.ado.records import Agent, JobRequest, Pool
from sandbox.ado.timefmt import format_ado_datetime
from sandbox.ado.wire import (
    POOLS_SCOPES,
    Answer,
    ado_error,
    flag,
    identity_ref,
    int_param,
    json_response,
    list_response,
)


class AgentsApi:
    """Handlers for pools, agents and job requests."""

    def __init__(self, world: AdoWorld, auth: Auth) -> None:
        self.w = world
        self.auth = auth

    def _pool_json(self, pool: Pool) -> dict[str, Any]:
        owner = identity_ref(self.w)
        return {"createdOn": format_ado_datetime(pool.created_on), "autoProvision": not pool.is_hosted,
                "autoUpdate": True, "autoSize": True, "targetSize": None, "agentCloudId": None,
                "createdBy": owner, "owner": owner, "id": pool.id, "scope": pool.scope, "name": pool.name,
                "isHosted": pool.is_hosted, "poolType": "automation", "size": len(pool.agent_ids),
                "isLegacy": pool.is_hosted, "options": "none"}

    def _pool(self, m: re.Match[str]) -> Pool:
        pool = self.w._pools.get(int(m.group("pool")))
        if pool is None:
            raise Answer(ado_error(404, f"No agent pool found with identifier {m.group('pool')}.",
                                     "TaskAgentPoolNotFoundException",
                                     namespace="Microsoft.TeamFoundation.DistributedTask.WebApi"))
        return pool

    async def list_pools(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self.auth.require_pat(request, POOLS_SCOPES)
        q = request.query
        pools = list(self.w._pools.values())
        pool_id = q.get("poolID") or q.get("poolId") or q.get("poolid")
        if pool_id is not None and not any(k.lower() == "poolids" for k in q):
            # KEDA's poolID lookup decodes a single {"id": …}; answer the pool object itself.
            if not pool_id.isdigit() or int(pool_id) not in self.w._pools:
                raise Answer(ado_error(404, f"No agent pool found with identifier {pool_id}.",
                                         "TaskAgentPoolNotFoundException",
                                         namespace="Microsoft.TeamFoundation.DistributedTask.WebApi"))
            return json_response(self._pool_json(self.w._pools[int(pool_id)]))
        ids = next((v for k, v in q.items() if k.lower() == "poolids"), None)
        if ids is not None:
            try:
                wanted = {int(x) for x in ids.split(",") if x.strip()}
            except ValueError:
                raise Answer(ado_error(400, f"The value '{ids}' is not valid for parameter 'poolIds'.",
                                         "ArgumentException", namespace="System")) from None
            pools = [p for p in pools if p.id in wanted]
        name = next((v for k, v in q.items() if k.lower() == "poolname"), None)
        if name is not None:
            pools = [p for p in pools if p.name.lower() == name.lower()]
        pool_type = next((v for k, v in q.items() if k.lower() == "pooltype"), None)
        if pool_type is not None and pool_type.lower() != "automation":
            pools = []
        return list_response([self._pool_json(p) for p in pools])

    async def get_pool(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self.auth.require_pat(request, POOLS_SCOPES)
        return json_response(self._pool_json(self._pool(m)))

    def _agent_ref(self, agent: Agent) -> dict[str, Any]:
        href = f"{self.w.base_url}/_apis/distributedtask/pools/{agent.pool_id}/agents/{agent.id}"
        return {"_links": {"self": {"href": href},
                           "web": {"href": f"{self.w.base_url}/_settings/agentpools?poolId={agent.pool_id}"
                                           f"&view=agents&agentId={agent.id}"}},
                "id": agent.id, "name": agent.name, "version": agent.version,
                "osDescription": "Linux 6.8.0-1021-azure #25-Ubuntu SMP Wed Jan 15 20:45:09 UTC 2025",
                "enabled": agent.enabled, "status": agent.status, "provisioningState": "Provisioned",
                "accessPoint": "CodexAccessMapping"}

    def _agent_json(self, agent: Agent, q: Any) -> dict[str, Any]:
        body = self._agent_ref(agent)
        body.update({"maxParallelism": 1, "createdOn": format_ado_datetime(agent.created_on),
                     "statusChangedOn": format_ado_datetime(agent.status_changed_on)})
        if flag(q.get("includeAssignedRequest")) and agent.assigned_request in self.w._jobs:
            body["assignedRequest"] = self._job_json(self.w._jobs[agent.assigned_request], matched=False)
        if flag(q.get("includeLastCompletedRequest")) and agent.last_completed_request in self.w._jobs:
            body["lastCompletedRequest"] = self._job_json(self.w._jobs[agent.last_completed_request],
                                                          matched=False)
        if flag(q.get("includeCapabilities")):
            body["systemCapabilities"] = {"Agent.Name": agent.name, "Agent.Version": agent.version,
                                          "Agent.OS": "Linux", "Agent.OSArchitecture": "X64"}
            body["userCapabilities"] = {}
        return body

    async def list_agents(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self.auth.require_pat(request, POOLS_SCOPES)
        pool = self._pool(m)
        agents = self.w.agents(pool.id)
        name = request.query.get("agentName")
        if name is not None:
            agents = [a for a in agents if a.name.lower() == name.lower()]
        return list_response([self._agent_json(a, request.query) for a in agents])

    async def get_agent(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self.auth.require_pat(request, POOLS_SCOPES)
        pool = self._pool(m)
        agent = self.w._agents.get(int(m.group("agent")))
        if agent is None or agent.pool_id != pool.id:
            raise Answer(ado_error(404, f"No agent found in pool {pool.id} with identifier "
                                          f"{m.group('agent')}.", "TaskAgentNotFoundException",
                                     namespace="Microsoft.TeamFoundation.DistributedTask.WebApi"))
        return json_response(self._agent_json(agent, request.query))

    def _job_json(self, job: JobRequest, *, matched: bool) -> dict[str, Any]:
        links = {"_links": {"self": {"href": f"{self.w.base_url}/_build/definition?definitionId="
                                             f"{job.definition_id}"},
                            "web": {"href": f"{self.w.base_url}/_build/definition?definitionId="
                                            f"{job.definition_id}"}}}
        body: dict[str, Any] = {
            "requestId": job.request_id, "queueTime": format_ado_datetime(job.queue_time),
        }
        if job.assign_time is not None:
            body["assignTime"] = format_ado_datetime(job.assign_time)
        if job.receive_time is not None:
            body["receiveTime"] = format_ado_datetime(job.receive_time)
        if job.finish_time is not None:
            body["finishTime"] = format_ado_datetime(job.finish_time)
        if job.result is not None:
            body["result"] = job.result
        if job.locked_until is not None:
            body["lockedUntil"] = format_ado_datetime(job.locked_until)
        body.update({"serviceOwner": SERVICE_OWNER, "hostId": self.w.org_id, "scopeId": self.w.deployment_id,
                     "planType": "Build", "planId": job.plan_id, "jobId": job.job_id,
                     "demands": list(job.demands)})
        if matched:
            body["matchedAgents"] = [self._agent_ref(a) for a in self.w.agents(job.pool_id)]
        if job.reserved_agent is not None and job.reserved_agent in self.w._agents:
            body["reservedAgent"] = self._agent_ref(self.w._agents[job.reserved_agent])
        body.update({
            "definition": {**links, "id": job.definition_id, "name": job.definition},
            "owner": {**links, "id": job.definition_id, "name": job.definition},
            "data": {"ParallelismTag": "Private", "IsScheduledKey": "False"},
            "poolId": job.pool_id, "orchestrationId": job.orchestration_id, "priority": 0,
        })
        return body

    async def job_requests(self, request: web.Request, m: re.Match[str]) -> web.Response:
        """The undocumented list KEDA polls (docs/external-apis.md, KEDA's queue poll); newest first."""
        self.auth.require_pat(request, POOLS_SCOPES)
        pool = self._pool(m)
        top = int_param(request, "$top")
        completed = int_param(request, "completedRequestCount")
        jobs = sorted(self.w.jobs(pool.id), key=lambda j: j.request_id, reverse=True)
        if completed is not None:
            finished = [j for j in jobs if j.result is not None][:max(completed, 0)]
            jobs = [j for j in jobs if j.result is None] + finished
        if top is not None:
            jobs = jobs[:max(top, 0)]
        # With $top the service leaves matchedAgents out (why KEDA drops $top for `parent`, #4387).
        return list_response([self._job_json(j, matched=top is None) for j in jobs])

    # --- project: builds ---------------------------------------------------------------------
