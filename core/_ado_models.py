"""Azure DevOps JSON → patrol's types, with no I/O.

Parsing lives apart from the HTTP client so it can be tested on recorded payloads (the swagger
examples, KEDA-shaped job requests) without a server. Every function here is pure: it takes the
decoded JSON and returns frozen dataclasses, or raises :class:`ValueError` naming the field that
was wrong. Those messages name fields, never values, because a PAT create response carries the
new token and a parse error must not echo it.

ADO writes timestamps as ISO-8601 UTC with anywhere from 0 to 7 fractional digits
(``.32Z``, ``.1033333Z``), and uses ``0001-01-01T00:00:00`` for "never" (docs/external-apis.md,
"PAT Lifecycle API"); :func:`parse_ado_time` handles both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from core.secret import Secret

# The PAT API's "no error" value; anything else is a refusal (unknown strings included).
PAT_NO_ERROR = "none"
# patTokenError values that mean "no such PAT": a revoke that meets them has nothing to do.
PAT_NOT_FOUND_CODES = frozenset({"authorizationNotFound", "tokenNotFound"})

_TIME = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<frac>\d+))?"
    r"(?P<zone>[Zz]|[+-]\d{2}:?\d{2})?$"
)


# ---------------------------------------------------------------------------------------------
# Types


@dataclass(frozen=True)
class PatInfo:
    """A PAT's metadata as the PAT Lifecycle API reports it (never the token value)."""

    authorization_id: str
    display_name: str
    scopes: tuple[str, ...]
    valid_from: datetime
    valid_to: datetime
    target_accounts: tuple[str, ...] | None      # None = all organizations (a global PAT)

    @property
    def is_global(self) -> bool:
        return self.target_accounts is None


@dataclass(frozen=True)
class CreatedPat:
    """The answer to a create: the metadata as ADO stored it, and the new token."""

    info: PatInfo
    token: Secret


@dataclass(frozen=True)
class Pool:
    id: int
    name: str


@dataclass(frozen=True)
class Agent:
    id: int
    name: str
    status: str                                  # "online" | "offline"
    enabled: bool
    assigned_request_id: int | None              # the job it runs now, if any


@dataclass(frozen=True)
class JobRequest:
    request_id: int
    queue_time: datetime | None
    assign_time: datetime | None
    receive_time: datetime | None
    result: str | None                           # None while the job has not finished
    pool_id: int | None

    @property
    def is_queued(self) -> bool:
        """Waiting for an agent, exactly as KEDA ≥ 2.20 counts it (``stripDeadJobs``).

        Not finished (``result`` null) and not yet picked up by an agent (``receiveTime``
        absent or the zero time). KEDA before 2.20 looked at ``result`` only.
        """
        return self.result is None and self.receive_time is None


@dataclass(frozen=True)
class Build:
    id: int
    result: str | None                           # none|succeeded|partiallySucceeded|failed|canceled
    status: str                                  # completed, inProgress, ...
    queue_time: datetime | None
    start_time: datetime | None
    finish_time: datetime | None
    definition_id: int
    definition_name: str


@dataclass(frozen=True)
class Deployment:
    """One classic-release deployment (vsrm ``release/deployments``)."""

    id: int
    release_id: int | None
    release_name: str | None
    definition_id: int | None
    definition_name: str | None
    environment_name: str | None
    status: str                                  # deploymentStatus: succeeded, failed, ...
    operation_status: str | None
    queued_on: datetime | None
    started_on: datetime | None
    completed_on: datetime | None


@dataclass(frozen=True)
class ConnectionData:
    """Who ADO thinks the caller is (``_apis/connectionData``)."""

    authenticated_user_id: str | None
    authenticated_user_name: str | None
    instance_id: str | None


@dataclass(frozen=True)
class ProbeResult:
    """Which of a token's scopes authenticate now.

    ``scopes`` maps each scope asked about to True when a call that scope must allow
    succeeded. ``unverified`` names scopes that have no read-only call of their own: for those
    True only means the token authenticates (see :meth:`core.ado.AdoClient.probe`).
    """

    ok: bool
    scopes: dict[str, bool]
    detail: str
    unverified: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Scalars


def parse_ado_time(value: str | None) -> datetime | None:
    """An ADO timestamp as an aware UTC datetime; ``None`` for null, ``""`` and the zero time.

    Accepts 0 or more fractional digits (kept to microseconds, the rest truncated), ``Z``, a
    ``±HH:MM`` offset, or no zone at all (read as UTC, as ADO means it).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    match = _TIME.match(text)
    if match is None:
        raise ValueError(f"not an ADO timestamp: {value!r}")
    if match["date"] == "0001-01-01":
        return None
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    zone = match["zone"]
    tz: timezone = UTC
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    try:
        naive = datetime.fromisoformat(f"{match['date']}T{match['time']}.{frac}")
        return naive.replace(tzinfo=tz).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not an ADO timestamp: {value!r}") from exc


def format_ado_time(value: datetime) -> str:
    """A request timestamp as the PAT API examples write it: UTC, milliseconds, ``Z``."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a naive datetime is ambiguous: pass a timezone-aware one")
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_scopes(value: str | None) -> tuple[str, ...]:
    """A ``scope`` string as a tuple: space-separated (commas tolerated; separator UNVERIFIED)."""
    if not value:
        return ()
    return tuple(part for part in re.split(r"[\s,]+", value) if part)


def format_scopes(scopes: tuple[str, ...] | list[str]) -> str:
    cleaned = [s.strip() for s in scopes if s.strip()]
    if not cleaned:
        raise ValueError("at least one scope is required")
    return " ".join(cleaned)


# ---------------------------------------------------------------------------------------------
# PAT Lifecycle API


def pat_token_error(doc: object) -> str | None:
    """The ``patTokenError`` of a PatTokenResult body if it is not ``none``, else None."""
    if isinstance(doc, Mapping):
        code = doc.get("patTokenError")
        if isinstance(code, str) and code and code != PAT_NO_ERROR:
            return code
    return None


def parse_pat(doc: object) -> PatInfo:
    """One ``PatToken`` object (its ``token`` field, if any, is ignored here)."""
    obj = _mapping(doc, "patToken")
    valid_from = parse_ado_time(_opt_str(obj, "validFrom"))
    valid_to = parse_ado_time(_opt_str(obj, "validTo"))
    if valid_from is None or valid_to is None:
        raise ValueError("patToken: validFrom and validTo are required")
    targets = obj.get("targetAccounts")
    if targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise ValueError("patToken.targetAccounts: expected a list of strings or null")
    return PatInfo(
        authorization_id=_str(obj, "authorizationId"),
        display_name=_opt_str(obj, "displayName") or "",
        scopes=parse_scopes(_opt_str(obj, "scope")),
        valid_from=valid_from,
        valid_to=valid_to,
        target_accounts=None if targets is None else tuple(targets),
    )


def parse_pat_result(doc: object) -> PatInfo:
    """A ``PatTokenResult`` (Get/Update). The caller has checked ``patTokenError`` first."""
    obj = _mapping(doc, "PatTokenResult")
    return parse_pat(obj.get("patToken"))


def parse_created_pat(doc: object) -> CreatedPat:
    """A Create ``PatTokenResult``: the only answer that carries the token value."""
    obj = _mapping(doc, "PatTokenResult")
    pat = _mapping(obj.get("patToken"), "patToken")
    token = pat.get("token")
    if not isinstance(token, str) or not token:
        raise ValueError("patToken.token: missing from a create response")
    return CreatedPat(info=parse_pat(pat), token=Secret(token))


def parse_pat_page(doc: object) -> tuple[list[PatInfo], str | None]:
    """A ``PagedPatTokens`` page: its PATs and the next continuation token (None at the end)."""
    obj = _mapping(doc, "PagedPatTokens")
    items = obj.get("patTokens")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise ValueError("PagedPatTokens.patTokens: expected a list")
    token = obj.get("continuationToken")
    if token is not None and not isinstance(token, str):
        raise ValueError("PagedPatTokens.continuationToken: expected a string")
    return [parse_pat(item) for item in items], (token or None)


# ---------------------------------------------------------------------------------------------
# Distributed task, build, release


def collection(doc: object, what: str) -> list[Any]:
    """The ``value`` list of ADO's ``{"count": N, "value": [...]}`` wrapper (or a bare list)."""
    if isinstance(doc, list):
        return doc
    obj = _mapping(doc, what)
    value = obj.get("value")
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a 'value' list")
    return value


def parse_pool(doc: object) -> Pool:
    obj = _mapping(doc, "TaskAgentPool")
    return Pool(id=_int(obj, "id"), name=_str(obj, "name"))


def parse_agent(doc: object) -> Agent:
    obj = _mapping(doc, "TaskAgent")
    assigned = obj.get("assignedRequest")
    assigned_id = None
    if isinstance(assigned, Mapping) and assigned.get("requestId") is not None:
        assigned_id = _int(assigned, "requestId")
    return Agent(
        id=_int(obj, "id"),
        name=_str(obj, "name"),
        status=_opt_str(obj, "status") or "offline",
        enabled=bool(obj.get("enabled", False)),
        assigned_request_id=assigned_id,
    )


def parse_job_request(doc: object) -> JobRequest:
    obj = _mapping(doc, "TaskAgentJobRequest")
    pool_id = obj.get("poolId")
    return JobRequest(
        request_id=_int(obj, "requestId"),
        queue_time=parse_ado_time(_opt_str(obj, "queueTime")),
        assign_time=parse_ado_time(_opt_str(obj, "assignTime")),
        receive_time=parse_ado_time(_opt_str(obj, "receiveTime")),
        result=_opt_str(obj, "result"),
        pool_id=None if pool_id is None else _int(obj, "poolId"),
    )


def parse_build(doc: object) -> Build:
    obj = _mapping(doc, "Build")
    definition = _mapping(obj.get("definition"), "Build.definition")
    return Build(
        id=_int(obj, "id"),
        result=_opt_str(obj, "result"),
        status=_opt_str(obj, "status") or "none",
        queue_time=parse_ado_time(_opt_str(obj, "queueTime")),
        start_time=parse_ado_time(_opt_str(obj, "startTime")),
        finish_time=parse_ado_time(_opt_str(obj, "finishTime")),
        definition_id=_int(definition, "id"),
        definition_name=_opt_str(definition, "name") or "",
    )


def parse_definition_id(doc: object) -> int:
    return _int(_mapping(doc, "BuildDefinitionReference"), "id")


def parse_deployment(doc: object) -> Deployment:
    obj = _mapping(doc, "Deployment")
    release = _sub(obj, "release")
    definition = _sub(obj, "releaseDefinition")
    environment = _sub(obj, "releaseEnvironment")
    return Deployment(
        id=_int(obj, "id"),
        release_id=_opt_int(release, "id"),
        release_name=_opt_str(release, "name"),
        definition_id=_opt_int(definition, "id"),
        definition_name=_opt_str(definition, "name"),
        environment_name=_opt_str(environment, "name"),
        status=_opt_str(obj, "deploymentStatus") or "undefined",
        operation_status=_opt_str(obj, "operationStatus"),
        queued_on=parse_ado_time(_opt_str(obj, "queuedOn")),
        started_on=parse_ado_time(_opt_str(obj, "startedOn")),
        completed_on=parse_ado_time(_opt_str(obj, "completedOn")),
    )


def parse_connection_data(doc: object) -> ConnectionData:
    obj = _mapping(doc, "ConnectionData")
    user = obj.get("authenticatedUser")
    user_id = name = None
    if isinstance(user, Mapping):
        user_id = _opt_str(user, "id")
        name = _opt_str(user, "providerDisplayName") or _opt_str(user, "customDisplayName")
    return ConnectionData(authenticated_user_id=user_id, authenticated_user_name=name,
                          instance_id=_opt_str(obj, "instanceId"))


# ---------------------------------------------------------------------------------------------
# Field access with messages that name the field, never its value


def _mapping(doc: object, what: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise ValueError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _sub(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """An optional nested reference object; absent or null reads as empty."""
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: expected a non-empty string")
    return value


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string")
    return value


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer")
    return value


def _opt_int(obj: Mapping[str, Any], key: str) -> int | None:
    return None if obj.get(key) is None else _int(obj, key)
