"""A faithful local Azure DevOps: the org (dev.azure.com), vssps and vsrm paths patrol and KEDA use.

Why a hand-written simulation rather than recorded responses: patrol's whole job is reacting to
ADO's *behaviour over time* — PATs expiring by the clock, being revoked out of band, KEDA's polls
turning into 401s (or 203 + an HTML sign-in page, because KEDA never sends
``X-TFS-FedAuthRedirect: Suppress``), org policies clamping or refusing a new PAT's lifetime.
So the state lives here (:class:`AdoWorld`) and the wire format follows the swagger files and
API-CONTRACTS §1 to §3, including the undocumented ``jobrequests`` shape KEDA reads.

Everything runs on one asyncio loop: the aiohttp handlers, the control API and the actors mutate
this state without locks. Time comes from the injected ``clock`` (unix seconds).

One aiohttp app serves all three hosts on one port, told apart by a path prefix:
``/{org}/…`` (dev.azure.com), ``/vssps/{org}/…`` and ``/vsrm/{org}/…``. Paths are matched
case-insensitively, as ADO does (the docs spell ``_apis/Tokens/Pats``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware

ADO_RESOURCE_ID = "499b84ac-1321-427f-aa17-267ca6975798"
ADO_AUDIENCES = frozenset({ADO_RESOURCE_ID, "https://app.vssps.visualstudio.com"})
SERVICE_OWNER = "00025394-6065-48ca-87d9-7f5672854ef7"  # the Azure Pipelines service owner id
EXPIRED_MESSAGE = "Access Denied: The Personal Access Token used has expired."
VS30063 = "VS30063: You are not authorized to access https://dev.azure.com."
TF400813 = "TF400813: The user '{user}' is not authorized to access this resource."

PatStatus = Literal["active", "expired", "revoked"]
AuthResult = Literal["ok", "expired", "revoked", "unknown"]
_SCOPE_RX = re.compile(r"^(app_token|vso\.[a-z0-9_]+(\.[a-z0-9_]+)*)$")


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


# ---------------------------------------------------------------------------------------------
# Dates. ADO keeps PAT times in SQL ``datetime`` (1/300 s ticks) and prints them with up to 7
# fractional digits, trailing zeros trimmed: ".1033333Z", ".32Z" (SPEC examples). Builds keep
# 100 ns precision.


def ado_time(t: float) -> float:
    """``t`` rounded to the 1/300 s precision ADO stores PAT and job times with."""
    return round(t * 300) / 300


def format_ado_datetime(t: float) -> str:
    """ISO-8601 UTC with up to 7 fractional digits, trailing zeros trimmed, like ADO."""
    n = round(t * 300)
    seconds, rem = divmod(n, 300)
    fraction = f"{round(rem * 10_000_000 / 300):07d}".rstrip("0")
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def format_ticks_datetime(t: float) -> str:
    """ISO-8601 UTC with exactly 7 fractional digits (.NET ticks), as the Build API prints."""
    micros = round(t * 1_000_000)
    seconds, rem = divmod(micros, 1_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{rem * 10:07d}Z"


_DT_RX = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d+))?)?\s*(Z|z|[+-]\d\d:?\d\d)?$"
)


def parse_datetime(text: str) -> float:
    """Parse an ISO-8601 date-time with any number of fractional digits; naive means UTC."""
    m = _DT_RX.match(text.strip())
    if not m:
        raise ValueError(f"not an ISO-8601 date-time: {text!r}")
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    second = int(m.group(6) or 0)
    fraction = float("0." + m.group(7)) if m.group(7) else 0.0
    dt = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    tz = m.group(8)
    if tz and tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        dt -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return dt.timestamp() + fraction


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class Pat:
    authorization_id: str
    owner_oid: str
    display_name: str
    scope: str                       # space-separated
    valid_from: float
    valid_to: float
    all_orgs: bool
    token_sha256: str                # the value itself is never kept
    revoked_at: float | None = None
    last_used: float | None = None
    uses: int = 0

    def status(self, now: float) -> PatStatus:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.valid_to else "active"

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.scope.split())


@dataclass(frozen=True)
class PatAuth:
    result: AuthResult
    authorization_id: str | None = None
    scopes: frozenset[str] = frozenset()
    owner_oid: str | None = None

    @property
    def ok(self) -> bool:
        return self.result == "ok"


@dataclass
class PatPolicy:
    """Org/tenant PAT policies (API-CONTRACTS §1.4), switchable at runtime by the control API."""

    max_lifespan: float | None = None                   # seconds; None = policy off
    lifespan_mode: Literal["clamp", "reject"] = "clamp"   # clamp validTo, or patLifespanPolicyViolation
    restrict_full_scope: bool = False                   # app_token → fullScopePatPolicyViolation
    restrict_global: bool = False                       # allOrgs → globalPatPolicyViolation
    error_status: Literal[200, 400] = 200               # how patTokenError answers come (UNVERIFIED)
    # Simulation knob, not a documented ADO policy: a created PAT gets these scopes instead of the
    # requested ones (as if an org policy narrowed them), so clients' scope read-back is tested.
    scope_override: str | None = None                   # space-separated scopes; None = off

    def to_dict(self) -> dict[str, Any]:
        return {"max_lifespan": self.max_lifespan, "lifespan_mode": self.lifespan_mode,
                "restrict_full_scope": self.restrict_full_scope,
                "restrict_global": self.restrict_global, "error_status": self.error_status,
                "scope_override": self.scope_override}


@dataclass
class User:
    oid: str
    upn: str
    display_name: str


@dataclass
class Pool:
    id: int
    name: str
    created_on: float
    scope: str
    is_hosted: bool = False
    agent_ids: list[int] = field(default_factory=list)
    job_ids: list[int] = field(default_factory=list)


@dataclass
class Agent:
    id: int
    pool_id: int
    name: str
    created_on: float
    status: Literal["online", "offline"] = "online"
    status_changed_on: float = 0.0
    enabled: bool = True
    version: str = "4.258.1"
    assigned_request: int | None = None
    last_completed_request: int | None = None


@dataclass
class JobRequest:
    request_id: int
    pool_id: int
    queue_time: float
    definition: str
    definition_id: int
    plan_id: str
    job_id: str
    orchestration_id: str
    demands: list[str]
    assign_time: float | None = None
    receive_time: float | None = None
    finish_time: float | None = None
    locked_until: float | None = None
    result: str | None = None
    reserved_agent: int | None = None


@dataclass
class Project:
    id: str
    name: str
    definitions: dict[int, str] = field(default_factory=dict)


@dataclass
class Build:
    id: int
    project: str
    definition_id: int
    number: str
    status: str
    result: str | None
    queue_time: float
    start_time: float | None
    finish_time: float | None
    plan_id: str


@dataclass
class Release:
    id: int
    project: str
    name: str
    status: str
    definition_id: int
    definition_name: str
    created_on: float


@dataclass
class Deployment:
    id: int
    project: str
    release_id: int
    status: str
    operation_status: str
    started_on: float
    completed_on: float | None


JOB_RESULTS = ("succeeded", "succeededWithIssues", "failed", "canceled", "skipped", "abandoned")
BUILD_STATUSES = ("none", "inProgress", "completed", "cancelling", "postponed", "notStarted")
BUILD_RESULTS = ("none", "succeeded", "partiallySucceeded", "failed", "canceled")
_FINISHED_JOBS_KEPT = 200


class AdoWorld:
    """The state of one simulated ADO organization."""

    def __init__(self, org: str, entra: EntraLike, *, clock: Callable[[], float] = time.time,
                 base_url_getter: Callable[[], str] | None = None) -> None:
        self.org = org
        self.entra = entra
        self.clock = clock
        self.org_id = str(uuid.uuid4())
        self.deployment_id = str(uuid.uuid4())
        self.policy = PatPolicy()
        # Body of a 401 for a revoked/unknown/expired PAT: real reports show both (API-CONTRACTS §2.3).
        self.auth_failure_body: Literal["empty", "json"] = "empty"
        # What a bad Basic PAT gets when X-TFS-FedAuthRedirect is not sent (KEDA never sends it).
        # KEDA's own reports show real ADO answering 401 here (kedacore/keda #3159: "status: 401
        # response: "); the 203 sign-in page is reported for bearer tokens and malformed auth
        # (azure-devops-auth-samples #52, vsts-rest-api-specs #574). Which one ADO picks for a
        # PAT is UNVERIFIED (API-CONTRACTS §10), so both are switchable; 401 is the default.
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

    def _user(self, oid: str) -> User:
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
        digest = hashlib.sha256(token_value.strip().encode()).hexdigest()
        auth_id = self._pat_by_hash.get(digest)
        if auth_id is None:
            return PatAuth("unknown")
        pat = self._pats[auth_id]
        status = pat.status(self.clock())
        result: AuthResult = "ok" if status == "active" else status
        if result == "ok":
            pat.last_used = self.clock()
            pat.uses += 1
        return PatAuth(result, auth_id, pat.scopes, pat.owner_oid)

    def pat(self, authorization_id: str) -> Pat:
        return self._pats[authorization_id]

    def pat_id_for_value(self, token_value: str) -> str | None:
        """The authorizationId of a token value (the control API revokes 'whatever a sink holds')."""
        return self._pat_by_hash.get(hashlib.sha256(token_value.strip().encode()).hexdigest())

    def revoke_pat(self, authorization_id: str) -> None:
        pat = self._pats[authorization_id]
        if pat.revoked_at is None:
            pat.revoked_at = self.clock()

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
             "status": p.status(now), "revokedAt": p.revoked_at, "lastUsed": p.last_used,
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
            if not scopes or not all(_SCOPE_RX.match(s) for s in scopes):
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
        return _AdoApp(self).build(middlewares)


# ---------------------------------------------------------------------------------------------
# Wire format


class _Answer(Exception):
    """Raised by a handler step to answer immediately (auth failures, 404s, 400s)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class _Caller:
    oid: str
    scopes: frozenset[str] | None      # None = an Entra token: everything the user may do
    authorization_id: str | None = None


Route = Callable[[web.Request, re.Match[str]], Awaitable[web.Response]]

_POOLS_SCOPES = frozenset({"vso.agentpools", "vso.agentpools_manage"})
_BUILD_SCOPES = frozenset({"vso.build", "vso.build_execute"})
_RELEASE_SCOPES = frozenset({"vso.release", "vso.release_execute", "vso.release_manage"})

_SIGN_IN_PAGE = """<!DOCTYPE html>
<html lang="en-US">
<head><meta charset="utf-8"><title>Azure DevOps Services | Sign In</title>
<meta http-equiv="X-UA-Compatible" content="IE=edge"></head>
<body><div id="signin">Sign in to your account to continue to Azure DevOps.</div>
<script type="text/javascript">window.location.href = "https://app.vssps.visualstudio.com/_signin?realm=dev.azure.com&reply_to=";</script>
</body></html>
"""


_WEBAPI = "Microsoft.VisualStudio.Services.WebApi"


def _ado_error(status: int, message: str, type_key: str, *, namespace: str = _WEBAPI,
               headers: dict[str, str] | None = None) -> web.Response:
    body = {"$id": "1", "innerException": None, "message": message,
            "typeName": f"{namespace}.{type_key}, {namespace}", "typeKey": type_key,
            "errorCode": 0, "eventId": 3000}
    return web.Response(status=status, text=json.dumps(body), headers=headers,
                        content_type="application/json", charset="utf-8")


def _list(values: list[dict[str, Any]], headers: dict[str, str] | None = None) -> web.Response:
    return _json({"count": len(values), "value": values}, headers=headers)


def _json(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), headers=headers,
                        content_type="application/json", charset="utf-8")


def _flag(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes")


def _int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _Answer(_ado_error(400, f"The value '{raw}' is not valid for parameter '{name}'.",
                                 "ArgumentException", namespace="System")) from None


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        return int(json.loads(base64.urlsafe_b64decode(padded))["o"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise _Answer(_ado_error(400, "The continuation token is not valid.",
                                 "InvalidContinuationTokenException")) from None


class _AdoApp:
    """Request handling for one AdoWorld."""

    def __init__(self, world: AdoWorld) -> None:
        self.w = world
        org = r"(?P<org>[^/]+)"
        proj = r"(?P<project>[^/]+)"
        routes: list[tuple[str, str, Route]] = [
            ("*", rf"^/vssps/{org}/_apis/tokens/pats/?$", self.pats_api),
            ("GET", rf"^/vssps/{org}/_apis/connectiondata/?$", self.connection_data),
            ("GET", rf"^/vsrm/{org}/{proj}/_apis/release/releases/?$", self.releases),
            ("GET", rf"^/vsrm/{org}/{proj}/_apis/release/deployments/?$", self.deployments),
            ("GET", rf"^/{org}/_apis/connectiondata/?$", self.connection_data),
            ("GET", rf"^/{org}/_apis/distributedtask/pools/?$", self.list_pools),
            ("GET", rf"^/{org}/_apis/distributedtask/pools/(?P<pool>\d+)/?$", self.get_pool),
            ("GET", rf"^/{org}/_apis/distributedtask/pools/(?P<pool>\d+)/agents/?$", self.list_agents),
            ("GET", rf"^/{org}/_apis/distributedtask/pools/(?P<pool>\d+)/agents/(?P<agent>\d+)/?$",
             self.get_agent),
            ("GET", rf"^/{org}/_apis/distributedtask/pools/(?P<pool>\d+)/jobrequests/?$", self.job_requests),
            ("GET", rf"^/{org}/{proj}/_apis/build/builds/?$", self.list_builds),
            ("GET", rf"^/{org}/{proj}/_apis/build/builds/(?P<build>\d+)/?$", self.get_build),
            ("GET", rf"^/{org}/{proj}/_apis/build/definitions/?$", self.list_definitions),
        ]
        self.routes = [(m, re.compile(rx, re.IGNORECASE), h) for m, rx, h in routes]

    def build(self, middlewares: Iterable[Middleware]) -> web.Application:
        app = web.Application(middlewares=list(middlewares))
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.Response:
        path = request.path
        allowed: list[str] = []
        try:
            for method, rx, handler in self.routes:
                m = rx.match(path)
                if m is None:
                    continue
                if method not in ("*", request.method):
                    allowed.append(method)
                    continue
                if m.group("org").lower() != self.w.org.lower():
                    raise _Answer(_ado_error(
                        404, f"TF400813: The resource cannot be found: organization '{m.group('org')}'.",
                        "HostNotFoundException"))
                response = await handler(request, m)
                break
            else:
                if allowed:
                    raise _Answer(_ado_error(405, f"The requested resource does not support http method "
                                                  f"'{request.method}'.", "HttpMethodNotAllowedException"))
                raise _Answer(_ado_error(404, f"The controller for path '{path}' was not found or does "
                                              "not implement IController.", "ResourceNotFoundException"))
        except _Answer as answer:
            response = answer.response
        response.headers.setdefault("ActivityId", str(uuid.uuid4()))
        response.headers.setdefault("X-TFS-ProcessId", "7d5ef2b0-1f3a-4c55-9c57-8f3c1b7b8d11")
        response.headers.setdefault("X-VSS-E2EID", str(uuid.uuid4()))
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    # --- authentication ---------------------------------------------------------------------

    @staticmethod
    def _suppressed(request: web.Request) -> bool:
        return request.headers.get("X-TFS-FedAuthRedirect", "").strip().lower() == "suppress"

    def _deny(self, request: web.Request, *, message: str | None = None, service_error: str | None = None,
              status: int = 401, basic_pat: bool = False) -> _Answer:
        """An auth failure: 203 + HTML sign-in page unless the redirect is suppressed (or, for a
        Basic PAT, unless ``basic_pat_failure`` says real ADO answers 401 to it anyway)."""
        sign_in_page = not (basic_pat and self.w.basic_pat_failure == "401")
        if not self._suppressed(request) and status == 401 and sign_in_page:
            return _Answer(web.Response(
                status=203, text=_SIGN_IN_PAGE, content_type="text/html", charset="utf-8",
                headers={"X-TFS-FedAuthRealm": "https://app.vssps.visualstudio.com/",
                         "X-TFS-FedAuthIssuer": "https://app.vssps.visualstudio.com/",
                         "X-VSS-ResourceTenant": "00000000-0000-0000-0000-000000000000",
                         "Cache-Control": "no-cache"}))
        headers = {
            "WWW-Authenticate": 'Bearer authorization_uri=https://login.microsoftonline.com/common, '
                                'Basic realm="https://tfsprodweu2.app.visualstudio.com/", TFS-Federated',
            "X-TFS-FedAuthRealm": "https://app.vssps.visualstudio.com/",
            "X-TFS-FedAuthIssuer": "https://app.vssps.visualstudio.com/",
            "X-VSS-ResourceTenant": "00000000-0000-0000-0000-000000000000",
            "X-FRAME-OPTIONS": "SAMEORIGIN",
        }
        if service_error:
            headers["X-TFS-ServiceError"] = quote(service_error, safe="")
        if message is None and self.w.auth_failure_body == "json":
            message = service_error or TF400813.format(user="")
        if message is None:
            return _Answer(web.Response(status=status, headers=headers))
        return _Answer(_ado_error(status, message, "UnauthorizedRequestException",
                                  namespace="Microsoft.TeamFoundation.Framework.Server", headers=headers))

    @staticmethod
    def _credential(request: web.Request) -> tuple[str, str] | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if not value:
            return None
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return ("basic", "")
            return ("basic", (password or user).strip())
        if scheme.lower() == "bearer":
            return ("bearer", value)
        return (scheme.lower(), value)

    def _principal(self, token: str) -> PrincipalLike | None:
        principal = self.w.entra.principal_for(token)
        if principal is None:
            return None
        audience = principal.audience.rstrip("/").removesuffix("/.default").rstrip("/")
        return principal if audience in ADO_AUDIENCES else None

    def _require_pat(self, request: web.Request, allowed: frozenset[str] | None) -> _Caller:
        """Authenticate an org API call: Basic PAT (any user name) or an Entra user bearer."""
        cred = self._credential(request)
        if cred is None:
            raise self._deny(request)
        scheme, secret = cred
        if scheme == "bearer":
            principal = self._principal(secret)
            if principal is None or principal.kind != "user":
                raise self._deny(request)
            return _Caller(oid=principal.oid, scopes=None)
        if scheme != "basic" or not secret:
            raise self._deny(request)
        auth = self.w.authenticate(secret)
        if auth.result == "expired":
            raise self._deny(request, service_error=EXPIRED_MESSAGE, basic_pat=True)
        if auth.result in ("revoked", "unknown"):
            raise self._deny(request, basic_pat=True)
        assert auth.owner_oid is not None
        if allowed is not None and "app_token" not in auth.scopes and not (auth.scopes & allowed):
            raise self._deny(request, message=VS30063, service_error=VS30063, basic_pat=True)
        return _Caller(oid=auth.owner_oid, scopes=auth.scopes, authorization_id=auth.authorization_id)

    def _require_entra_user(self, request: web.Request) -> PrincipalLike:
        """The PAT lifecycle API: a user-delegated Entra token for the ADO resource, nothing else."""
        cred = self._credential(request)
        if cred is None or cred[0] != "bearer":
            raise self._deny(request)            # a PAT here: sign-in page / 401 (vsts-rest-api-specs #574)
        principal = self._principal(cred[1])
        if principal is None:
            raise self._deny(request)
        if principal.kind != "user":
            raise self._deny(
                request, status=403,
                message="Service principals and managed identities can't create or manage personal "
                        "access tokens. Use a user-delegated Microsoft Entra token.")
        return principal

    # --- org: connectionData ----------------------------------------------------------------

    async def connection_data(self, request: web.Request, m: re.Match[str]) -> web.Response:
        caller = self._require_pat(request, None)
        user = self.w._user(caller.oid)
        identity = {
            "id": user.oid, "descriptor": f"Microsoft.IdentityModel.Claims.ClaimsIdentity;{user.upn}",
            "subjectDescriptor": "aad." + base64.urlsafe_b64encode(user.oid.encode()).decode().rstrip("="),
            "providerDisplayName": user.display_name, "isActive": True,
            "properties": {"Account": {"$type": "System.String", "$value": user.upn}},
            "resourceVersion": 2, "metaTypeId": 0,
        }
        return _json({
            "authenticatedUser": identity, "authorizedUser": identity, "instanceId": self.w.org_id,
            "deploymentId": self.w.deployment_id, "deploymentType": "hosted",
            "locationServiceData": {"serviceOwner": SERVICE_OWNER,
                                    "defaultAccessMappingMoniker": "PublicAccessMapping",
                                    "lastChangeId": 1, "lastChangeId64": 1},
        })

    # --- org: pools, agents, job requests ---------------------------------------------------

    def _identity_ref(self, oid: str | None = None) -> dict[str, Any]:
        user = self.w._user(oid) if oid else User("00000000-0000-0000-0000-000000000000",
                                                   "Project Collection Build Service", "Build Service")
        avatar = f"{self.w.base_url}/_apis/GraphProfile/MemberAvatars/{user.oid}"
        return {"displayName": user.display_name, "url": f"{self.w.base_url}/_apis/Identities/{user.oid}",
                "_links": {"avatar": {"href": avatar}},
                "id": user.oid, "uniqueName": user.upn,
                "imageUrl": f"{self.w.base_url}/_api/_common/identityImage?id={user.oid}",
                "descriptor": "aad." + user.oid.replace("-", "")[:20]}

    def _pool_json(self, pool: Pool) -> dict[str, Any]:
        owner = self._identity_ref()
        return {"createdOn": format_ado_datetime(pool.created_on), "autoProvision": not pool.is_hosted,
                "autoUpdate": True, "autoSize": True, "targetSize": None, "agentCloudId": None,
                "createdBy": owner, "owner": owner, "id": pool.id, "scope": pool.scope, "name": pool.name,
                "isHosted": pool.is_hosted, "poolType": "automation", "size": len(pool.agent_ids),
                "isLegacy": pool.is_hosted, "options": "none"}

    def _pool(self, m: re.Match[str]) -> Pool:
        pool = self.w._pools.get(int(m.group("pool")))
        if pool is None:
            raise _Answer(_ado_error(404, f"No agent pool found with identifier {m.group('pool')}.",
                                     "TaskAgentPoolNotFoundException",
                                     namespace="Microsoft.TeamFoundation.DistributedTask.WebApi"))
        return pool

    async def list_pools(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self._require_pat(request, _POOLS_SCOPES)
        q = request.query
        pools = list(self.w._pools.values())
        pool_id = q.get("poolID") or q.get("poolId") or q.get("poolid")
        if pool_id is not None and not any(k.lower() == "poolids" for k in q):
            # KEDA's poolID lookup decodes a single {"id": …}; answer the pool object itself.
            if not pool_id.isdigit() or int(pool_id) not in self.w._pools:
                raise _Answer(_ado_error(404, f"No agent pool found with identifier {pool_id}.",
                                         "TaskAgentPoolNotFoundException",
                                         namespace="Microsoft.TeamFoundation.DistributedTask.WebApi"))
            return _json(self._pool_json(self.w._pools[int(pool_id)]))
        ids = next((v for k, v in q.items() if k.lower() == "poolids"), None)
        if ids is not None:
            try:
                wanted = {int(x) for x in ids.split(",") if x.strip()}
            except ValueError:
                raise _Answer(_ado_error(400, f"The value '{ids}' is not valid for parameter 'poolIds'.",
                                         "ArgumentException", namespace="System")) from None
            pools = [p for p in pools if p.id in wanted]
        name = next((v for k, v in q.items() if k.lower() == "poolname"), None)
        if name is not None:
            pools = [p for p in pools if p.name.lower() == name.lower()]
        pool_type = next((v for k, v in q.items() if k.lower() == "pooltype"), None)
        if pool_type is not None and pool_type.lower() != "automation":
            pools = []
        return _list([self._pool_json(p) for p in pools])

    async def get_pool(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self._require_pat(request, _POOLS_SCOPES)
        return _json(self._pool_json(self._pool(m)))

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
        if _flag(q.get("includeAssignedRequest")) and agent.assigned_request in self.w._jobs:
            body["assignedRequest"] = self._job_json(self.w._jobs[agent.assigned_request], matched=False)
        if _flag(q.get("includeLastCompletedRequest")) and agent.last_completed_request in self.w._jobs:
            body["lastCompletedRequest"] = self._job_json(self.w._jobs[agent.last_completed_request],
                                                          matched=False)
        if _flag(q.get("includeCapabilities")):
            body["systemCapabilities"] = {"Agent.Name": agent.name, "Agent.Version": agent.version,
                                          "Agent.OS": "Linux", "Agent.OSArchitecture": "X64"}
            body["userCapabilities"] = {}
        return body

    async def list_agents(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self._require_pat(request, _POOLS_SCOPES)
        pool = self._pool(m)
        agents = self.w.agents(pool.id)
        name = request.query.get("agentName")
        if name is not None:
            agents = [a for a in agents if a.name.lower() == name.lower()]
        return _list([self._agent_json(a, request.query) for a in agents])

    async def get_agent(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self._require_pat(request, _POOLS_SCOPES)
        pool = self._pool(m)
        agent = self.w._agents.get(int(m.group("agent")))
        if agent is None or agent.pool_id != pool.id:
            raise _Answer(_ado_error(404, f"No agent found in pool {pool.id} with identifier "
                                          f"{m.group('agent')}.", "TaskAgentNotFoundException",
                                     namespace="Microsoft.TeamFoundation.DistributedTask.WebApi"))
        return _json(self._agent_json(agent, request.query))

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
        """The undocumented list KEDA polls (API-CONTRACTS §2.2); newest first."""
        self._require_pat(request, _POOLS_SCOPES)
        pool = self._pool(m)
        top = _int_param(request, "$top")
        completed = _int_param(request, "completedRequestCount")
        jobs = sorted(self.w.jobs(pool.id), key=lambda j: j.request_id, reverse=True)
        if completed is not None:
            finished = [j for j in jobs if j.result is not None][:max(completed, 0)]
            jobs = [j for j in jobs if j.result is None] + finished
        if top is not None:
            jobs = jobs[:max(top, 0)]
        # With $top the service leaves matchedAgents out (why KEDA drops $top for `parent`, #4387).
        return _list([self._job_json(j, matched=top is None) for j in jobs])

    # --- project: builds ---------------------------------------------------------------------

    def _project_of(self, m: re.Match[str]) -> Project:
        project = self.w._project(m.group("project"))
        if project is None:
            raise _Answer(_ado_error(404, f"TF200016: The following project does not exist: "
                                          f"{m.group('project')}. Verify that the name of the project is "
                                          "correct and that the project exists on the specified Azure "
                                          "DevOps Server.", "ProjectDoesNotExistWithNameException",
                                     namespace="Microsoft.TeamFoundation.Core.WebApi"))
        return project

    def _project_ref(self, project: Project) -> dict[str, Any]:
        return {"id": project.id, "name": project.name,
                "url": f"{self.w.base_url}/_apis/projects/{project.id}", "state": "wellFormed",
                "revision": 11, "visibility": "private",
                "lastUpdateTime": format_ticks_datetime(self.w._pools[1].created_on)}

    def _definition_json(self, project: Project, def_id: int) -> dict[str, Any]:
        url = f"{self.w.base_url}/{project.id}/_apis/build/Definitions/{def_id}?revision=1"
        web_url = f"{self.w.base_url}/{project.id}/_build/definition?definitionId={def_id}"
        queue = {"_links": {}, "id": 1, "name": "Default", "pool": {"id": 1, "name": "Default"}}
        return {"_links": {"self": {"href": url}, "web": {"href": web_url}},
                "quality": "definition", "authoredBy": self._identity_ref(), "drafts": [], "queue": queue,
                "id": def_id, "name": project.definitions[def_id], "url": url,
                "uri": f"vstfs:///Build/Definition/{def_id}", "path": "\\", "type": "build",
                "queueStatus": "enabled", "revision": 1,
                "createdDate": format_ticks_datetime(self.w._pools[1].created_on),
                "project": self._project_ref(project)}

    async def list_definitions(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self._require_pat(request, _BUILD_SCOPES)
        project = self._project_of(m)
        name = request.query.get("name")
        ids = sorted(project.definitions)
        if name is not None:
            rx = re.compile("^" + re.escape(name).replace(r"\*", ".*") + "$", re.IGNORECASE)
            ids = [i for i in ids if rx.match(project.definitions[i])]
        return _list([self._definition_json(project, i) for i in ids])

    def _build_json(self, project: Project, build: Build) -> dict[str, Any]:
        base = f"{self.w.base_url}/{project.id}"
        url = f"{base}/_apis/build/Builds/{build.id}"
        body: dict[str, Any] = {
            "_links": {"self": {"href": url},
                       "web": {"href": f"{base}/_build/results?buildId={build.id}"},
                       "timeline": {"href": f"{url}/Timeline"},
                       "badge": {"href": f"{base}/_apis/build/status/{build.definition_id}"}},
            "properties": {}, "tags": [], "validationResults": [],
            "plans": [{"planId": build.plan_id}], "triggerInfo": {},
            "id": build.id, "buildNumber": build.number, "status": build.status,
        }
        if build.result is not None:
            body["result"] = build.result
        body["queueTime"] = format_ticks_datetime(build.queue_time)
        if build.start_time is not None:
            body["startTime"] = format_ticks_datetime(build.start_time)
        if build.finish_time is not None:
            body["finishTime"] = format_ticks_datetime(build.finish_time)
        definition = self._definition_json(project, build.definition_id)
        body.update({
            "url": url,
            "definition": {k: definition[k] for k in ("drafts", "id", "name", "url", "uri", "path", "type",
                                                     "queueStatus", "revision", "project")},
            "buildNumberRevision": int(build.number.rsplit(".", 1)[1]),
            "project": self._project_ref(project), "uri": f"vstfs:///Build/Build/{build.id}",
            "sourceBranch": "refs/heads/master", "sourceVersion": hashlib.sha1(  # noqa: S324 - a fake commit id
                str(build.id).encode()).hexdigest(),
            "queue": {"id": 1, "name": "Default", "pool": {"id": 1, "name": "Default"}},
            "priority": "normal", "reason": "schedule",
            "requestedFor": self._identity_ref(), "requestedBy": self._identity_ref(),
            "lastChangedDate": format_ticks_datetime(
                build.finish_time or build.start_time or build.queue_time),
            "lastChangedBy": self._identity_ref(), "orchestrationPlan": {"planId": build.plan_id},
            "logs": {"id": 0, "type": "Container", "url": f"{url}/logs"},
            "repository": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, project.name)), "type": "TfsGit",
                           "clean": None, "checkoutSubmodules": False},
            "retainedByRelease": False, "triggeredByBuild": None, "appendCommitMessageToRunName": True,
        })
        return body

    async def list_builds(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self._require_pat(request, _BUILD_SCOPES)
        project = self._project_of(m)
        q = request.query
        builds = [b for b in self.w._builds.values() if b.project.lower() == project.name.lower()]
        if q.get("definitions"):
            try:
                wanted = {int(x) for x in q["definitions"].split(",") if x.strip()}
            except ValueError:
                raise _Answer(_ado_error(400, "The value for 'definitions' must be a list of integers.",
                                         "ArgumentException", namespace="System")) from None
            builds = [b for b in builds if b.definition_id in wanted]
        status = q.get("statusFilter")
        if status and status.lower() != "all":
            builds = [b for b in builds if b.status.lower() == status.lower()]
        result = q.get("resultFilter")
        if result:
            builds = [b for b in builds if (b.result or "none").lower() == result.lower()]
        order = (q.get("queryOrder") or "queueTimeDescending").lower()
        keys: dict[str, Callable[[Build], float]] = {
            "finishtime": lambda b: b.finish_time or 0.0,
            "queuetime": lambda b: b.queue_time,
            "starttime": lambda b: b.start_time or 0.0,
        }
        key = next((k for name, k in keys.items() if order.startswith(name)), keys["queuetime"])
        time_key = key
        if q.get("minTime"):
            lo = self._time_param(q["minTime"], "minTime")
            builds = [b for b in builds if time_key(b) >= lo]
        if q.get("maxTime"):
            hi = self._time_param(q["maxTime"], "maxTime")
            builds = [b for b in builds if time_key(b) <= hi]
        builds.sort(key=lambda b: (key(b), b.id), reverse=order.endswith("descending"))
        top = _int_param(request, "$top", 1000) or 1000
        offset = _decode_token(q["continuationToken"]) if q.get("continuationToken") else 0
        page = builds[offset:offset + top]
        headers = {}
        if offset + top < len(builds):
            headers["x-ms-continuationtoken"] = _encode_token(offset + top)
        return _list([self._build_json(project, b) for b in page], headers=headers)

    @staticmethod
    def _time_param(value: str, name: str) -> float:
        try:
            return parse_datetime(value)
        except ValueError:
            raise _Answer(_ado_error(400, f"The value '{value}' is not valid for parameter '{name}'.",
                                     "ArgumentException", namespace="System")) from None

    async def get_build(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self._require_pat(request, _BUILD_SCOPES)
        project = self._project_of(m)
        build = self.w._builds.get(int(m.group("build")))
        if build is None or build.project.lower() != project.name.lower():
            raise _Answer(_ado_error(404, f"The requested build {m.group('build')} could not be found.",
                                     "BuildNotFoundException",
                                     namespace="Microsoft.TeamFoundation.Build.WebApi"))
        return _json(self._build_json(project, build))

    # --- vsrm: releases ----------------------------------------------------------------------

    def _release_json(self, project: Project, release: Release) -> dict[str, Any]:
        url = f"{self.w.vsrm_base_url}/{project.id}/_apis/Release/releases/{release.id}"
        return {"id": release.id, "name": release.name, "status": release.status,
                "createdOn": format_ado_datetime(release.created_on),
                "modifiedOn": format_ado_datetime(release.created_on),
                "modifiedBy": self._identity_ref(), "createdBy": self._identity_ref(),
                "variables": {}, "variableGroups": [],
                "releaseDefinition": {"id": release.definition_id, "name": release.definition_name,
                                      "path": "\\", "projectReference": None, "url": url, "_links": {}},
                "releaseDefinitionRevision": 1, "description": "", "reason": "schedule",
                "releaseNameFormat": "Release-$(rev:r)", "keepForever": False,
                "definitionSnapshotRevision": 1, "logsContainerUrl": f"{url}/logs", "url": url,
                "_links": {"self": {"href": url}}, "tags": [], "triggeringArtifactAlias": None,
                "projectReference": {"id": project.id, "name": None}, "properties": {}}

    async def releases(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self._require_pat(request, _RELEASE_SCOPES)
        project = self._project_of(m)
        releases = [r for r in self.w._releases.values() if r.project.lower() == project.name.lower()]
        releases.sort(key=lambda r: r.id, reverse=True)
        top = _int_param(request, "$top", 50) or 50
        return _list([self._release_json(project, r) for r in releases[:top]])

    async def deployments(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self._require_pat(request, _RELEASE_SCOPES)
        project = self._project_of(m)
        deps = [d for d in self.w._deployments.values() if d.project.lower() == project.name.lower()]
        status = request.query.get("deploymentStatus")
        if status and status.lower() != "all":
            deps = [d for d in deps if d.status.lower() == status.lower()]
        deps.sort(key=lambda d: d.id, reverse=True)
        top = _int_param(request, "$top", 50) or 50
        out = []
        for d in deps[:top]:
            release = self.w._releases.get(d.release_id)
            out.append({
                "id": d.id, "release": self._release_json(project, release) if release else None,
                "releaseDefinition": {"id": release.definition_id, "name": release.definition_name}
                if release else None,
                "deploymentStatus": d.status, "operationStatus": d.operation_status, "attempt": 1,
                "reason": "automated", "startedOn": format_ado_datetime(d.started_on),
                "completedOn": format_ado_datetime(d.completed_on) if d.completed_on else None,
                "queuedOn": format_ado_datetime(d.started_on), "requestedBy": self._identity_ref(),
                "projectReference": {"id": project.id, "name": project.name},
            })
        return _list(out)

    # --- vssps: PAT lifecycle ----------------------------------------------------------------

    def _pat_json(self, pat: Pat, token: str | None = None) -> dict[str, Any]:
        return {"displayName": pat.display_name, "validTo": format_ado_datetime(pat.valid_to),
                "scope": pat.scope, "targetAccounts": None if pat.all_orgs else [self.w.org_id],
                "validFrom": format_ado_datetime(pat.valid_from), "authorizationId": pat.authorization_id,
                "token": token}

    def _pat_error(self, code: str) -> web.Response:
        return _json({"patToken": None, "patTokenError": code}, status=self.w.policy.error_status)

    async def pats_api(self, request: web.Request, m: re.Match[str]) -> web.Response:
        version = request.query.get("api-version")
        principal = self._require_entra_user(request)
        if version is not None and "preview" not in version.lower():
            raise _Answer(_ado_error(
                400, f'The requested version "{version}" of the resource is under preview. The -preview '
                     "flag must be supplied in the api-version for such requests. For example: "
                     f'"{version}-preview"', "VssInvalidPreviewVersionException"))
        if principal.upn and principal.oid not in self.w.users:
            self.w.register_user(principal.oid, principal.upn)
        if request.method == "GET":
            auth_id = next((v for k, v in request.query.items() if k.lower() == "authorizationid"), None)
            if auth_id is not None:
                return self._get_pat(principal, auth_id)
            return self._list_pats(request, principal)
        if request.method == "POST":
            return self._create_pat(principal, await self._body(request))
        if request.method == "PUT":
            return self._update_pat(principal, await self._body(request))
        if request.method == "DELETE":
            auth_id = next((v for k, v in request.query.items() if k.lower() == "authorizationid"), None)
            return self._revoke_pat(principal, auth_id)
        raise _Answer(_ado_error(405, "The requested resource does not support http method "
                                      f"'{request.method}'.", "HttpMethodNotAllowedException"))

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.text() or "null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _Answer(_ado_error(400, "Value cannot be null.\r\nParameter name: request",
                                     "ArgumentNullException", namespace="System"))
        return body

    def _owned(self, principal: PrincipalLike, auth_id: str | None) -> Pat | web.Response:
        try:
            key = str(uuid.UUID(str(auth_id)))
        except ValueError:
            return self._pat_error("invalidAuthorizationId")
        pat = self.w._pats.get(key)
        if pat is None or pat.owner_oid != principal.oid:
            return self._pat_error("authorizationNotFound")
        return pat

    def _get_pat(self, principal: PrincipalLike, auth_id: str) -> web.Response:
        pat = self._owned(principal, auth_id)
        if isinstance(pat, web.Response):
            return pat
        return _json({"patToken": self._pat_json(pat), "patTokenError": "none"})

    def _list_pats(self, request: web.Request, principal: PrincipalLike) -> web.Response:
        q = {k.lower(): v for k, v in request.query.items()}
        now = self.w.clock()
        display = q.get("displayfilteroption", "active").lower()
        if display not in ("active", "revoked", "expired", "all"):
            raise _Answer(_ado_error(400, f"The value '{display}' is not valid for parameter "
                                          "'displayFilterOption'.", "ArgumentException", namespace="System"))
        sort_by = q.get("sortbyoption", "displayDate").lower()
        if sort_by not in ("displayname", "displaydate", "status"):
            raise _Answer(_ado_error(400, f"The value '{sort_by}' is not valid for parameter 'sortByOption'.",
                                     "ArgumentException", namespace="System"))
        ascending = q.get("issortascending", "true").lower() != "false"
        try:
            top = min(max(int(q.get("$top") or 100), 1), 100)
        except ValueError:
            raise _Answer(_ado_error(400, "The value for '$top' must be an integer.", "ArgumentException",
                                     namespace="System")) from None
        pats = [p for p in self.w._pats.values() if p.owner_oid == principal.oid
                and (display == "all" or p.status(now) == display)]
        keys: dict[str, Callable[[Pat], Any]] = {
            "displayname": lambda p: (p.display_name.lower(), p.authorization_id),
            "displaydate": lambda p: (p.valid_to, p.authorization_id),
            "status": lambda p: (p.status(now), p.authorization_id),
        }
        pats.sort(key=keys[sort_by], reverse=not ascending)
        offset = _decode_token(q["continuationtoken"]) if q.get("continuationtoken") else 0
        page = pats[offset:offset + top]
        more = offset + top < len(pats)
        return _json({"continuationToken": _encode_token(offset + top) if more else "",
                      "patTokens": [self._pat_json(p) for p in page]})

    def _check_request(self, *, scope: str, valid_to: float, all_orgs: bool, display_name: str,
                       valid_to_changed: bool = True) -> tuple[str | None, float]:
        """Validation + org policies shared by create and update; returns (error, validTo)."""
        now = self.w.clock()
        policy = self.w.policy
        if not display_name.strip():
            return "displayNameRequired", valid_to
        if len(display_name) > 256:
            return "invalidDisplayName", valid_to
        scopes = scope.split()
        if not scopes or not all(_SCOPE_RX.match(s) for s in scopes):
            return "invalidScope", valid_to
        if valid_to_changed and valid_to <= now:
            return "invalidValidTo", valid_to
        if policy.restrict_global and all_orgs:
            return "globalPatPolicyViolation", valid_to
        if policy.restrict_full_scope and "app_token" in scopes:
            return "fullScopePatPolicyViolation", valid_to
        if valid_to_changed and policy.max_lifespan is not None and valid_to - now > policy.max_lifespan:
            if policy.lifespan_mode == "reject":
                return "patLifespanPolicyViolation", valid_to
            valid_to = now + policy.max_lifespan
        return None, valid_to

    def _valid_to(self, raw: Any, default: float) -> float | None:
        if raw is None:
            return default
        try:
            return parse_datetime(str(raw))
        except ValueError:
            return None

    def _create_pat(self, principal: PrincipalLike, body: dict[str, Any]) -> web.Response:
        now = self.w.clock()
        valid_to = self._valid_to(body.get("validTo"), now + 30 * 86400)
        if valid_to is None:
            return self._pat_error("invalidValidTo")
        display = body.get("displayName")
        scope = body.get("scope")
        all_orgs = bool(body.get("allOrgs", False))
        if not isinstance(display, str):
            return self._pat_error("displayNameRequired")
        if not isinstance(scope, str):
            return self._pat_error("invalidScope")
        error, valid_to = self._check_request(scope=scope, valid_to=valid_to, all_orgs=all_orgs,
                                              display_name=display)
        if error is not None:
            return self._pat_error(error)
        granted = (self.w.policy.scope_override or scope).split()
        auth_id, token = self.w.issue_pat(principal.oid, display, granted, valid_to, all_orgs)
        return _json({"patToken": self._pat_json(self.w._pats[auth_id], token), "patTokenError": "none"})

    def _update_pat(self, principal: PrincipalLike, body: dict[str, Any]) -> web.Response:
        if not body.get("authorizationId"):
            return self._pat_error("invalidAuthorizationId")
        pat = self._owned(principal, body.get("authorizationId"))
        if isinstance(pat, web.Response):
            return pat
        now = self.w.clock()
        if pat.status(now) == "revoked":
            return self._pat_error("authorizationNotFound")
        valid_to = self._valid_to(body.get("validTo"), pat.valid_to)
        if valid_to is None:
            return self._pat_error("invalidValidTo")
        if pat.status(now) == "expired" and valid_to > pat.valid_to:
            return self._pat_error("expiredPatCannotBeExtended")
        display = body.get("displayName", pat.display_name)
        scope = body.get("scope", pat.scope)
        all_orgs = bool(body.get("allOrgs", pat.all_orgs))
        if not isinstance(display, str):
            return self._pat_error("invalidDisplayName")
        if not isinstance(scope, str):
            return self._pat_error("invalidScope")
        changed_to = valid_to != pat.valid_to
        error, valid_to = self._check_request(scope=scope, valid_to=valid_to, all_orgs=all_orgs,
                                              display_name=display, valid_to_changed=changed_to)
        if error is not None:
            return self._pat_error(error)
        pat.display_name, pat.scope, pat.all_orgs = display, " ".join(scope.split()), all_orgs
        if changed_to:
            pat.valid_to = ado_time(valid_to)
        return _json({"patToken": self._pat_json(pat), "patTokenError": "none"})

    def _revoke_pat(self, principal: PrincipalLike, auth_id: str | None) -> web.Response:
        if auth_id is None:
            raise _Answer(_ado_error(400, "The authorizationId parameter is required.",
                                     "ArgumentNullException", namespace="System"))
        pat = self._owned(principal, auth_id)
        if isinstance(pat, web.Response):
            raise _Answer(_ado_error(404, f"No personal access token found with authorizationId {auth_id}.",
                                     "SessionTokenNotFoundException",
                                     namespace="Microsoft.VisualStudio.Services.DelegatedAuthorization"))
        self.w.revoke_pat(pat.authorization_id)
        return web.Response(status=204)
