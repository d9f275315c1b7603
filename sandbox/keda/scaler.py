"""KEDA's azure-pipelines scaler: its HTTP requests shaped like Go's and its decoding.

Guarantees: requests look like KEDA's (``pkg/scalers/azure_pipelines_scaler.go``): Basic auth
with an empty user name, no ``api-version``, no ``X-TFS-FedAuthRedirect``, the Go user agent;
any 2xx is success, so a 203 sign-in page fails JSON decoding; every error is a
:class:`KedaError` worded exactly as KEDA's ``err.Error()`` (Go's ``encoding/json`` and
``*url.Error`` texts), because patrol's KEDA collector reads those messages from Events.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from sandbox.kube import GoTimeError, parse_go_time

JSON = dict[str, Any]
GO_USER_AGENT = "Go-http-client/1.1"
AGENT_USER_AGENT = ("VSServices/4.258.1 (NetStandard; Linux 5.15.0-1068-azure #77-Ubuntu) "
                    "VstsAgentCore-linux-x64/4.258.1")
SCALER_TYPE = "azure-pipelines"


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


class KedaError(Exception):
    """An error exactly as KEDA's Go code words it (``err.Error()``)."""


# ---------------------------------------------------------------------------------------------
# Go's encoding/json as it applies to the two ADO responses KEDA decodes
# ---------------------------------------------------------------------------------------------


def _go_quote_char(c: str) -> str:
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    return f"'{c}'"


def go_json_syntax_error(text: str) -> str:
    """The ``*json.SyntaxError`` text for an undecodable body (the 203 HTML case)."""
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        return "unexpected end of JSON input"
    if stripped[0] not in '{["-0123456789tfn':
        return f"invalid character {_go_quote_char(stripped[0])} looking for beginning of value"
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text):
            return "unexpected end of JSON input"
        where = "after top-level value" if "Extra data" in exc.msg else "looking for beginning of value"
        return f"invalid character {_go_quote_char(text[exc.pos])} {where}"
    return "unexpected end of JSON input"


def _go_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _decode_json(body: bytes) -> Any:
    text = body.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        raise KedaError(go_json_syntax_error(text)) from None


def _go_time_field(job: JSON, name: str) -> float | None:
    v = job.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise KedaError("Time.UnmarshalJSON: input is not a JSON string")
    try:
        parsed = parse_go_time(v, micro=False)
    except GoTimeError as exc:
        raise KedaError(str(exc)) from None
    return None if parsed.year == 1 else parsed.timestamp()


def decode_job_requests(body: bytes) -> list[JSON]:
    """``json.Unmarshal(body, &JobRequests{})`` with the type checks Go would make."""
    doc = _decode_json(body)
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise KedaError(f"json: cannot unmarshal {_go_kind(doc)} into Go value of type scalers.JobRequests")
    count = doc.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        raise KedaError(f"json: cannot unmarshal {_go_kind(count)} into Go struct field JobRequests.count of "
                        "type int")
    value = doc.get("value")
    if value is None:
        return []
    if not isinstance(value, list):
        raise KedaError(f"json: cannot unmarshal {_go_kind(value)} into Go struct field JobRequests.value of "
                        "type []scalers.JobRequest")
    jobs: list[JSON] = []
    for job in value:
        if job is None:
            jobs.append({})
            continue
        if not isinstance(job, dict):
            raise KedaError(f"json: cannot unmarshal {_go_kind(job)} into Go struct field "
                            "JobRequests.value of type scalers.JobRequest")
        result = job.get("result")
        if result is not None and not isinstance(result, str):
            raise KedaError(f"json: cannot unmarshal {_go_kind(result)} into Go struct field "
                            "JobRequest.value.result of type string")
        rid = job.get("requestId")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int)):
            raise KedaError(f"json: cannot unmarshal {_go_kind(rid)} into Go struct field "
                            "JobRequest.value.requestId of type int")
        decoded = dict(job)
        for name in ("queueTime", "assignTime", "receiveTime", "lockedUntil"):
            decoded[name] = _go_time_field(job, name)
        jobs.append(decoded)
    return jobs


def queued_count(jobs: Iterable[JSON]) -> int:
    """stripDeadJobs (KEDA ≥ 2.20): no result and no receiveTime; no parent/demands configured."""
    return sum(1 for j in jobs if j.get("result") is None and j.get("receiveTime") is None)


def decode_pool_lookup(body: bytes, pool_name: str) -> int:
    """getPoolIDFromName's decoding and its two errors."""
    doc = _decode_json(body)
    if doc is not None and not isinstance(doc, dict):
        raise KedaError(f"json: cannot unmarshal {_go_kind(doc)} into Go value of type "
                        "scalers.azurePipelinesPoolNameResponse")
    value = (doc or {}).get("value") or []
    if not isinstance(value, list):
        raise KedaError(f"json: cannot unmarshal {_go_kind(value)} into Go struct field "
                        "azurePipelinesPoolNameResponse.value of type "
                        "[]struct { ID int \"json:\\\"id\\\"\" }")
    if len(value) == 0:
        raise KedaError(f"agent pool with name `{pool_name}` not found")
    if len(value) != 1:
        raise KedaError(f"found {len(value)} agent pool with name `{pool_name}`")
    pid = value[0].get("id") if isinstance(value[0], dict) else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else 0


# ---------------------------------------------------------------------------------------------
# HTTP as Go's net/http client does it
# ---------------------------------------------------------------------------------------------


@dataclass
class HttpAnswer:
    status: int
    body: bytes
    content_type: str


async def go_get(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                 timeout: float) -> HttpAnswer:  # noqa: ASYNC109 - it is the HTTP client's timeout
    """One GET; transport failures raise KedaError worded like Go's ``*url.Error``."""
    try:
        async with session.get(URL(url, encoded=True), headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout),
                               skip_auto_headers=("Accept",)) as resp:
            body = await resp.read()
            return HttpAnswer(resp.status, body, resp.headers.get("Content-Type", ""))
    except TimeoutError:
        raise KedaError(f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting '
                        'headers)') from None
    except aiohttp.ClientConnectorError as exc:
        host = f"{exc.host}:{exc.port}"
        raise KedaError(f'Get "{url}": dial tcp {host}: connect: connection refused') from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError):
        raise KedaError(f'Get "{url}": EOF') from None
    except aiohttp.ClientError as exc:
        raise KedaError(f'Get "{url}": {exc}') from None


def basic_auth(pat: str) -> str:
    """``req.SetBasicAuth("", pat)``."""
    return "Basic " + base64.b64encode(f":{pat}".encode()).decode()


@dataclass
class Scaler:
    """A built azurePipelinesScaler: the metadata it parsed, including the cached PAT."""

    organization_url: str
    pool_name: str
    pool_id: int
    pat: str
    jobs_to_fetch: int
    target_queue_length: int
    activation_queue_length: int
