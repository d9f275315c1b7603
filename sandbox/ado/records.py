"""The records of a simulated ADO organization: PATs, policies, users, pools, agents, job
requests, projects, builds, releases, as plain dataclasses.

Guarantees: a :class:`Pat` never holds its token value, only its sha256; a PAT's status is a
function of the clock (a revocation may be scheduled ahead, as disabling its owner does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

PatStatus = Literal["active", "expired", "revoked"]
AuthResult = Literal["ok", "expired", "revoked", "unknown", "global_retired"]


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
    revoked_at: float | None = None  # may lie ahead: revocation scheduled by disabling the owner
    last_used: float | None = None
    uses: int = 0
    owner_disabled: bool = False     # revoked_at was set because the owner was disabled

    def status(self, now: float) -> PatStatus:
        if self.revoked_at is not None and now >= self.revoked_at:
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
    """Org/tenant PAT policies (docs/external-apis.md, "PAT Lifecycle API"), switchable at runtime
    by the control API."""

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
