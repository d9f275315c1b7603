"""The state of one simulated Azure DevOps organization: PATs, users, pools, agents, job requests,
builds and releases (:class:`AdoWorld`).

Guarantees: a PAT's value is never kept (only its sha256), so nothing here can leak one; every
time comes from the injected ``clock`` (unix seconds); everything runs on one asyncio loop, so the
HTTP handlers, the control API and the actors mutate this state without locks.

Why a hand-written simulation rather than recorded responses: patrol's whole job is reacting to
ADO's *behaviour over time* — PATs expiring by the clock, being revoked out of band, org policies
clamping or refusing a new PAT's lifetime. The wire format lives in the ``*_api`` modules.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from sandbox.ado.records import (
    BUILD_RESULTS,
    BUILD_STATUSES,
    JOB_RESULTS,
    Agent,
    AuthResult,
    Build,
    Deployment,
    JobRequest,
    Pat,
    PatAuth,
    PatPolicy,
    Pool,
    Project,
    Release,
    User,
)
from sandbox.ado.timefmt import ado_time, format_ado_datetime

ADO_RESOURCE_ID = "499b84ac-1321-427f-aa17-267ca6975798"
ADO_AUDIENCES = frozenset({ADO_RESOURCE_ID, "https://app.vssps.visualstudio.com"})
SERVICE_OWNER = "00025394-6065-48ca-87d9-7f5672854ef7"  # the Azure Pipelines service owner id
EXPIRED_MESSAGE = "Access Denied: The Personal Access Token used has expired."
VS30063 = "VS30063: You are not authorized to access https://dev.azure.com."
TF400813 = "TF400813: The user '{user}' is not authorized to access this resource."

# Microsoft devblog "Retirement of global personal access tokens in Azure DevOps" (Dec 2025):
# creating or regenerating global PATs is blocked from 2026-03-15, and "all existing global PATs
# will be fully decommissioned" on 2026-12-01: they stop authenticating (docs/external-apis.md).
GLOBAL_PAT_CUTOFF = 1796083200.0          # 2026-12-01T00:00:00Z

SCOPE_RX = re.compile(r"^(app_token|vso\.[a-z0-9_]+(\.[a-z0-9_]+)*)$")


class PrincipalLike(Protocol):
    """What ADO needs from an Entra principal (sandbox.entra.Principal has these)."""

    @property
    def oid(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def upn(self) -> str | None: ...
    @property
    def audience(self) -> str: ...


class EntraLike(Protocol):
    def principal_for(self, access_token: str) -> PrincipalLike | None: ...


_FINISHED_JOBS_KEPT = 200


class AdoWorld:
    """The state of one simulated ADO organization."""

    def __init__(self, org: str, entra: EntraLike, *, clock: Callable[[], float] = time.time,
                 base_url_getter: Callable[[], str] | None = None,
                 global_pat_cutoff: float | None = GLOBAL_PAT_CUTOFF,
                 disabled_user_revoke_delay: float = 0.0) -> None:
        """``global_pat_cutoff``: the unix time from which a global (``allOrgs``) PAT no longer
        authenticates (None: never). ``disabled_user_revoke_delay``: seconds between disabling a
        user in Entra and ADO revoking their PATs (real ADO: up to an hour; 0 = at once)."""
        self.org = org
        self.global_pat_cutoff = global_pat_cutoff
        self.disabled_user_revoke_delay = disabled_user_revoke_delay
        self.entra = entra
        self.clock = clock
        self.org_id = str(uuid.uuid4())
        self.deployment_id = str(uuid.uuid4())
        self.policy = PatPolicy()
        # Body of a 401 for a revoked/unknown/expired PAT: real reports show both (docs/external-apis.md).
        self.auth_failure_body: Literal["empty", "json"] = "empty"
        # What a bad Basic PAT gets when X-TFS-FedAuthRedirect is not sent (KEDA never sends it).
        # KEDA's own reports show real ADO answering 401 here (kedacore/keda #3159: "status: 401
        # response: "); the 203 sign-in page is reported for bearer tokens and malformed auth
        # (azure-devops-auth-samples #52, vsts-rest-api-specs #574). Which one ADO picks for a
        # PAT is unsettled (docs/external-apis.md, "Not settled"), so both are switchable; 401 is the default.
        self.basic_pat_failure: Literal["401", "sign-in-page"] = "401"
        self.users: dict[str, User] = {}
        self._pats: dict[str, Pat] = {}
        self._pat_by_hash: dict[str, str] = {}
        self._pools: dict[int, Pool] = {}
        self._agents: dict[int, Agent] = {}
        self._jobs: dict[int, JobRequest] = {}
        self._projects: dict[str, Project] = {}
        self._builds: dict[int, Build] = {}
        self._releases: dict[int, Release] = {}
        self._deployments: dict[int, Deployment] = {}
        self._pool_ids = itertools.count(1)
        self._agent_ids = itertools.count(1)
        self._job_ids = itertools.count(1000)
        self._definition_ids = itertools.count(1)
        self._build_ids = itertools.count(1)
        self._release_ids = itertools.count(1)
        self._release_definitions: dict[tuple[str, str], int] = {}   # (project, name) -> id
        self._deployment_ids = itertools.count(1)
        self._base_url_getter = base_url_getter or (lambda: "https://dev.azure.com")
        # Every organization has these two pools (ids as in a fresh org).
        self.add_pool("Default")
        self.add_pool("Azure Pipelines", is_hosted=True)

    @property
    def server_url(self) -> str:
        """Root of the server (``http://127.0.0.1:P``), without the org."""
        return self._base_url_getter().rstrip("/")

    @property
    def base_url(self) -> str:
        """The organization URL (``{server}/{org}``), as dev.azure.com/{org}."""
        return f"{self.server_url}/{self.org}"

    @property
    def vsrm_base_url(self) -> str:
        return f"{self.server_url}/vsrm/{self.org}"

    # --- identities ---------------------------------------------------------------------------

    def register_user(self, oid: str, upn: str, display_name: str | None = None) -> None:
        """Names shown for a PAT owner (connectionData, createdBy); purely cosmetic."""
        self.users[oid] = User(oid=oid, upn=upn, display_name=display_name or upn.split("@", maxsplit=1)[0])

    def user(self, oid: str) -> User:
        return self.users.get(oid) or User(oid=oid, upn=oid, display_name=oid)

    # --- PATs ---------------------------------------------------------------------------------

    def issue_pat(self, owner_oid: str, display_name: str, scopes: list[str], valid_to: float,
                  all_orgs: bool = False) -> tuple[str, str]:
        """Create a PAT without any policy check (seeding); returns (authorizationId, token)."""
        token = base64.b32encode(secrets.token_bytes(32)).decode().lower().rstrip("=")
        auth_id = str(uuid.uuid4())
        digest = hashlib.sha256(token.encode()).hexdigest()
        self._pats[auth_id] = Pat(
            authorization_id=auth_id, owner_oid=owner_oid, display_name=display_name,
            scope=" ".join(scopes), valid_from=ado_time(self.clock()), valid_to=ado_time(valid_to),
            all_orgs=all_orgs, token_sha256=digest,
        )
        self._pat_by_hash[digest] = auth_id
        return auth_id, token

    def authenticate(self, token_value: str) -> PatAuth:
        """Match a PAT value exactly as sent: ADO strips nothing, so ``"pat\n"`` or ``"pat "`` is
        an unknown credential (only KEDA trims one trailing newline, on its side)."""
        digest = hashlib.sha256(token_value.encode()).hexdigest()
        auth_id = self._pat_by_hash.get(digest)
        if auth_id is None:
            return PatAuth("unknown")
        pat = self._pats[auth_id]
        now = self.clock()
        status = pat.status(now)
        result: AuthResult = "ok" if status == "active" else status
        if result == "ok" and pat.all_orgs and self.global_pat_cutoff is not None \
                and now >= self.global_pat_cutoff:
            result = "global_retired"
        if result == "ok":
            pat.last_used = self.clock()
            pat.uses += 1
        return PatAuth(result, auth_id, pat.scopes, pat.owner_oid)

    def pat(self, authorization_id: str) -> Pat:
        return self._pats[authorization_id]

    def pat_id_for_value(self, token_value: str) -> str | None:
        """The authorizationId of a token value (the control API revokes 'whatever a sink holds').

        The value as held, or as KEDA reads it (one trailing newline trimmed): this finds the PAT
        a sink stands for; it is not authentication, which is exact (:meth:`authenticate`)."""
        for candidate in (token_value, token_value.removesuffix("\n")):
            auth_id = self._pat_by_hash.get(hashlib.sha256(candidate.encode()).hexdigest())
            if auth_id is not None:
                return auth_id
        return None

    def revoke_pat(self, authorization_id: str) -> None:
        pat = self._pats[authorization_id]
        now = self.clock()
        if pat.revoked_at is None or pat.revoked_at > now:
            pat.revoked_at = now
            pat.owner_disabled = False

    def user_enabled_changed(self, oid: str, enabled: bool) -> None:
        """Entra disabled (or re-enabled) a user. Disabling revokes every PAT the user owns after
        ``disabled_user_revoke_delay`` (docs/external-apis.md; Microsoft Learn "Use personal access
        tokens", FAQ: a PAT is invalidated within an hour once its user is removed or disabled).
        Re-enabling before then cancels what has not happened yet; a revocation that happened
        stays."""
        now = self.clock()
        for pat in self._pats.values():
            if pat.owner_oid != oid:
                continue
            if not enabled:
                if pat.revoked_at is None:
                    pat.revoked_at = now + self.disabled_user_revoke_delay
                    pat.owner_disabled = True
            elif pat.owner_disabled and pat.revoked_at is not None and pat.revoked_at > now:
                pat.revoked_at = None
                pat.owner_disabled = False

    def expire_pat(self, authorization_id: str) -> None:
        """Make the PAT expired now (validTo = now), as if its lifetime had run out."""
        pat = self._pats[authorization_id]
        pat.valid_to = min(pat.valid_to, self.clock())

    def pats(self) -> list[dict[str, Any]]:
        """Every PAT's metadata, for the control API and /state. Never the token value."""
        now = self.clock()
        return [
            {"authorizationId": p.authorization_id, "displayName": p.display_name, "scope": p.scope,
             "owner": p.owner_oid, "validFrom": format_ado_datetime(p.valid_from),
             "validTo": format_ado_datetime(p.valid_to), "valid_to": p.valid_to, "allOrgs": p.all_orgs,
             "status": p.status(now),
             "revokedAt": p.revoked_at if p.status(now) == "revoked" else None, "lastUsed": p.last_used,
             "uses": p.uses, "fingerprint": p.token_sha256[:12]}
            for p in self._pats.values()
        ]

    def set_policy(self, **changes: Any) -> PatPolicy:
        """Replace policy fields by name; unknown names or bad values raise ValueError."""
        known = set(PatPolicy.__dataclass_fields__)
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown policy fields {sorted(unknown)}; known: {sorted(known)}")
        if "lifespan_mode" in changes and changes["lifespan_mode"] not in ("clamp", "reject"):
            raise ValueError("lifespan_mode must be 'clamp' or 'reject'")
        if "error_status" in changes and changes["error_status"] not in (200, 400):
            raise ValueError("error_status must be 200 or 400")
        if changes.get("max_lifespan") is not None and float(changes["max_lifespan"]) <= 0:
            raise ValueError("max_lifespan must be positive seconds or null")
        override = changes.get("scope_override")
        if override is not None:
            scopes = override.split() if isinstance(override, str) else []
            if not scopes or not all(SCOPE_RX.match(s) for s in scopes):
                raise ValueError("scope_override must be space-separated scopes (e.g. 'vso.agentpools') or null")
            changes["scope_override"] = " ".join(scopes)
        self.policy = replace(self.policy, **changes)
        return self.policy

    # --- pools, agents, jobs ------------------------------------------------------------------

    def add_pool(self, name: str, *, is_hosted: bool = False) -> int:
        pool_id = next(self._pool_ids)
        self._pools[pool_id] = Pool(id=pool_id, name=name, created_on=ado_time(self.clock()),
                                    scope=str(uuid.uuid4()), is_hosted=is_hosted)
        return pool_id

    def pool_by_name(self, name: str) -> int | None:
        for pool in self._pools.values():
            if pool.name.lower() == name.lower():
                return pool.id
        return None

    def pools(self) -> list[Pool]:
        return list(self._pools.values())

    def register_agent(self, pool_id: int, name: str) -> int:
        pool = self._pools[pool_id]
        agent_id = next(self._agent_ids)
        now = ado_time(self.clock())
        self._agents[agent_id] = Agent(id=agent_id, pool_id=pool_id, name=name, created_on=now,
                                       status_changed_on=now)
        pool.agent_ids.append(agent_id)
        return agent_id

    def set_agent_status(self, agent_id: int, status: Literal["online", "offline"]) -> None:
        agent = self._agents[agent_id]
        if agent.status != status:
            agent.status = status
            agent.status_changed_on = ado_time(self.clock())

    def remove_agent(self, agent_id: int) -> None:
        agent = self._agents.pop(agent_id)
        self._pools[agent.pool_id].agent_ids.remove(agent_id)
        if agent.assigned_request is not None:
            job = self._jobs.get(agent.assigned_request)
            if job is not None and job.result is None:
                self._finish(job, "abandoned")

    def agents(self, pool_id: int) -> list[Agent]:
        return [self._agents[a] for a in self._pools[pool_id].agent_ids]

    def queue_job(self, pool_id: int, *, definition: str = "build",
                  demands: Iterable[str] = ("Agent.Version -gtVersion 2.182.1",)) -> int:
        pool = self._pools[pool_id]
        request_id = next(self._job_ids)
        self._jobs[request_id] = JobRequest(
            request_id=request_id, pool_id=pool_id, queue_time=ado_time(self.clock()),
            definition=definition, definition_id=self._definition_id_for(definition),
            plan_id=str(uuid.uuid4()), job_id=str(uuid.uuid4()),
            orchestration_id=f"{uuid.uuid4()}.job.__default", demands=list(demands),
        )
        pool.job_ids.append(request_id)
        return request_id

    def add_finished_job(self, pool_id: int, *, queued_at: float, duration: float,
                         result: str = "succeeded", definition: str = "build") -> int:
        """A job request that ran and finished in the past (a pool's history, seeded at start)."""
        if result not in JOB_RESULTS:
            raise ValueError(f"result must be one of {JOB_RESULTS}")
        request_id = self.queue_job(pool_id, definition=definition)
        job = self._jobs[request_id]
        job.queue_time = ado_time(queued_at)
        job.assign_time = job.receive_time = ado_time(queued_at + 1.0)
        job.finish_time = ado_time(queued_at + 1.0 + duration)
        job.result = result
        self._prune(self._pools[pool_id])
        return request_id

    def _definition_id_for(self, name: str) -> int:
        for project in self._projects.values():
            for def_id, def_name in project.definitions.items():
                if def_name == name:
                    return def_id
        return 1 + int(hashlib.sha256(name.encode()).hexdigest()[:4], 16)

    def assign_job(self, pool_id: int, agent_id: int) -> int | None:
        """Give the oldest waiting job of the pool to the agent; None if nothing waits."""
        agent = self._agents[agent_id]
        if agent.assigned_request is not None:
            return None
        for request_id in self._pools[pool_id].job_ids:
            job = self._jobs[request_id]
            if job.result is None and job.assign_time is None:
                now = ado_time(self.clock())
                job.assign_time = now
                job.receive_time = now
                job.locked_until = now + 600
                job.reserved_agent = agent_id
                agent.assigned_request = request_id
                return request_id
        return None

    def finish_job(self, request_id: int, result: str = "succeeded") -> None:
        if result not in JOB_RESULTS:
            raise ValueError(f"result must be one of {JOB_RESULTS}")
        self._finish(self._jobs[request_id], result)

    def _finish(self, job: JobRequest, result: str) -> None:
        job.result = result
        job.finish_time = ado_time(self.clock())
        job.locked_until = None
        if job.reserved_agent is not None and job.reserved_agent in self._agents:
            agent = self._agents[job.reserved_agent]
            if agent.assigned_request == job.request_id:
                agent.assigned_request = None
            agent.last_completed_request = job.request_id
        self._prune(self._pools[job.pool_id])

    def _prune(self, pool: Pool) -> None:
        finished = [r for r in pool.job_ids if self._jobs[r].result is not None]
        for request_id in finished[: max(0, len(finished) - _FINISHED_JOBS_KEPT)]:
            pool.job_ids.remove(request_id)
            del self._jobs[request_id]

    def queued_jobs(self, pool_id: int) -> int:
        """Jobs waiting for an agent, counted as KEDA ≥ 2.20 does (no result, no receiveTime)."""
        return sum(1 for r in self._pools[pool_id].job_ids
                   if self._jobs[r].result is None and self._jobs[r].receive_time is None)

    def jobs(self, pool_id: int) -> list[JobRequest]:
        return [self._jobs[r] for r in self._pools[pool_id].job_ids]

    # --- builds and releases ------------------------------------------------------------------

    def _project(self, name: str, *, create: bool = False) -> Project | None:
        project = self._projects.get(name.lower())
        if project is None and create:
            project = Project(id=str(uuid.uuid4()), name=name)
            self._projects[name.lower()] = project
        return project

    def add_definition(self, project: str, name: str) -> int:
        proj = self._project(project, create=True)
        assert proj is not None
        for def_id, def_name in proj.definitions.items():
            if def_name == name:
                return def_id
        def_id = next(self._definition_ids)
        proj.definitions[def_id] = name
        return def_id

    def record_build(self, project: str, definition: str, *, result: str, queue_time: float,
                     start_time: float, finish_time: float, status: str = "completed") -> int:
        """Add a build (a completed run by default; status="inProgress" with result="none")."""
        if result not in BUILD_RESULTS:
            raise ValueError(f"result must be one of {BUILD_RESULTS}")
        if status not in BUILD_STATUSES:
            raise ValueError(f"status must be one of {BUILD_STATUSES}")
        def_id = self.add_definition(project, definition)
        build_id = next(self._build_ids)
        day = datetime.fromtimestamp(queue_time, UTC).strftime("%Y%m%d")
        same_day = sum(1 for b in self._builds.values()
                       if b.definition_id == def_id and b.number.startswith(day + "."))
        self._builds[build_id] = Build(
            id=build_id, project=project, definition_id=def_id, number=f"{day}.{same_day + 1}",
            status=status, result=None if status != "completed" else result,
            queue_time=queue_time, start_time=start_time,
            finish_time=finish_time if status == "completed" else None, plan_id=str(uuid.uuid4()),
        )
        return build_id

    def complete_build(self, build_id: int, *, result: str, finish_time: float) -> None:
        build = self._builds[build_id]
        build.status, build.result, build.finish_time = "completed", result, finish_time

    def builds(self) -> list[Build]:
        return list(self._builds.values())

    def add_release(self, project: str, definition: str, *, status: str = "active",
                    created_on: float | None = None) -> int:
        self._project(project, create=True)
        def_id = self._release_definitions.setdefault(
            (project.lower(), definition), len(self._release_definitions) + 1)
        release_id = next(self._release_ids)
        self._releases[release_id] = Release(
            id=release_id, project=project, name=f"Release-{release_id}", status=status,
            definition_id=def_id, definition_name=definition,
            created_on=created_on if created_on is not None else self.clock())
        return release_id

    def add_deployment(self, project: str, release_id: int, *, status: str = "succeeded",
                       started_on: float | None = None, completed_on: float | None = None) -> int:
        dep_id = next(self._deployment_ids)
        start = started_on if started_on is not None else self.clock()
        self._deployments[dep_id] = Deployment(
            id=dep_id, project=project, release_id=release_id, status=status,
            operation_status="Approved" if status == "succeeded" else "QueuedForAgent",
            started_on=start, completed_on=completed_on if completed_on is not None else start + 60)
        return dep_id

    # --- snapshot for /state ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What /state reports about ADO (metadata only; no token value is kept to report)."""
        now = self.clock()
        return {
            "organization": self.org, "organization_id": self.org_id,
            "policy": self.policy.to_dict(),
            "pats": self.pats(),
            "pools": [
                {"id": p.id, "name": p.name, "queued": self.queued_jobs(p.id),
                 "running": sum(1 for r in p.job_ids if self._jobs[r].result is None
                                and self._jobs[r].receive_time is not None),
                 "oldest_queued_age": max(
                     (now - self._jobs[r].queue_time for r in p.job_ids
                      if self._jobs[r].result is None and self._jobs[r].receive_time is None),
                     default=0.0),
                 "agents": [{"id": a.id, "name": a.name, "status": a.status, "enabled": a.enabled,
                             "assignedRequest": a.assigned_request} for a in self.agents(p.id)]}
                for p in self._pools.values()
            ],
            "projects": {p.name: {"id": p.id, "definitions": {str(k): v for k, v in p.definitions.items()}}
                         for p in self._projects.values()},
            "builds": [{"id": b.id, "project": b.project, "definition": b.definition_id,
                        "status": b.status, "result": b.result, "finishTime": b.finish_time}
                       for b in list(self._builds.values())[-50:]],
            "releases": len(self._releases), "deployments": len(self._deployments),
        }

    # --- HTTP -------------------------------------------------------------------------------

    def app(self, middlewares: Iterable[Middleware] = ()) -> web.Application:
        """The aiohttp app for /{org}/…, /vssps/{org}/… and /vsrm/{org}/… (build it with
        ``sandbox.http.middlewares("ado", log, faults)``)."""
        from sandbox.ado.app import AdoApp

        return AdoApp(self).build(middlewares)

