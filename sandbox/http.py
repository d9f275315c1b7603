"""What every sandbox server shares: a request log and injectable faults.

Tests and the demo need to see what patrol (and the simulated KEDA) actually sent, and to make
the outside world misbehave on demand (slow answers, 5xx, throttling, dropped connections),
without any server knowing about it. So each aiohttp app is built with the two middlewares
from :func:`middlewares`: the outer one records every request, the inner one consults the
:class:`FaultTable`.

The log never holds a secret: ``Authorization`` (and cookie-like) header values are replaced
by ``"<scheme> <redacted sha256[:12]>"``, where the fingerprint is taken over the credential
itself (the bearer token, or the password of a Basic pair, i.e. the PAT), so a test can tell
*which* PAT a client used by fingerprinting the value it knows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

FaultKind = Literal["latency", "status", "throttle", "timeout"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_FAULT_ID = web.RequestKey("sandbox_fault_id", str)
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def fingerprint(secret: str) -> str:
    """sha256[:12] of a credential: safe to log, enough to tell tokens apart."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def redact_authorization(value: str) -> str:
    """``"Basic <pat>"`` → ``"Basic <redacted 1a2b3c4d5e6f>"`` (fingerprint of the PAT itself)."""
    scheme, _, credential = value.partition(" ")
    if not credential:
        return f"<redacted {fingerprint(value)}>"
    secret = credential.strip()
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(secret, validate=True).decode().partition(":")
            secret = password or user
        except (binascii.Error, UnicodeDecodeError):
            pass
    return f"{scheme} <redacted {fingerprint(secret)}>"


@dataclass
class RequestRecord:
    time: float
    service: str
    method: str
    path: str
    query: str
    status: int                      # 0 = no answer (yet: still streaming; or dropped by a timeout fault)
    headers: dict[str, str]          # request headers, secrets redacted
    fault: str | None = None         # id of the fault that shaped the answer, if any
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """A bounded, in-memory log of requests across every sandbox service."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=maxlen)

    def append(self, rec: RequestRecord) -> None:
        self._records.append(rec)

    def records(self, service: str | None = None, since: float = 0) -> list[RequestRecord]:
        """Records at or after ``since``; ``service`` "kube" also matches "kube:<cluster>"."""
        return [
            r for r in self._records
            if r.time >= since and (service is None or _service_matches(service, r.service))
        ]

    def clear(self) -> None:
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)


def _service_matches(pattern: str, service: str) -> bool:
    return pattern in ("*", service) or service.startswith(pattern + ":")


@dataclass
class Fault:
    """One misbehaviour.

    kinds: ``latency`` delays the normal answer by ``delay`` (with ``retry_after`` set it is ADO's
    *delayed 200*: the answer carries ``Retry-After`` and ``X-RateLimit-*``); ``status`` answers
    ``status`` (with ``Retry-After`` if given); ``throttle`` answers 429 + ``Retry-After`` +
    ``X-RateLimit-*``; ``timeout`` sleeps ``delay`` and drops the connection unanswered.
    ``remaining`` counts matching requests down; None = until removed.
    """

    kind: FaultKind
    service: str
    path_regex: str = ".*"
    method: str | None = None
    status: int = 503
    delay: float = 0.0
    retry_after: float | None = None
    remaining: int | None = None
    id: str = ""
    hits: int = 0
    _rx: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_rx", None)
        return d

    def matches(self, service: str, method: str, path: str, path_qs: str) -> bool:
        if not _service_matches(self.service, service):
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self._rx is None:
            self._rx = re.compile(self.path_regex)
        return bool(self._rx.search(path) or self._rx.search(path_qs))


FAULT_KINDS: tuple[str, ...] = ("latency", "status", "throttle", "timeout")


class FaultTable:
    """Active faults, first added first matched."""

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}
        self._ids = itertools.count(1)

    def add(self, fault: Fault) -> str:
        if fault.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}; expected one of {FAULT_KINDS}")
        if fault.remaining is not None and fault.remaining <= 0:
            raise ValueError("remaining must be positive (or null for 'until removed')")
        try:
            fault._rx = re.compile(fault.path_regex)  # fail early on a bad regex
        except re.error as exc:
            raise ValueError(f"path_regex {fault.path_regex!r} is not a valid regex: {exc}") from None
        fault.id = f"f{next(self._ids)}"
        self._faults[fault.id] = fault
        return fault.id

    def remove(self, fault_id: str) -> None:
        if self._faults.pop(fault_id, None) is None:
            raise KeyError(fault_id)

    def clear(self) -> None:
        self._faults.clear()

    def list(self) -> list[Fault]:
        return list(self._faults.values())

    def match(self, service: str, method: str, path: str, path_qs: str | None = None) -> Fault | None:
        """The first fault matching this request; consumes one of its ``remaining`` uses."""
        for fault in list(self._faults.values()):
            if fault.matches(service, method, path, path_qs if path_qs is not None else path):
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._faults[fault.id]
                return fault
        return None


def _error_body(service: str, status: int, message: str) -> tuple[str, str]:
    """(content type, body) shaped like each real service's error payload."""
    if service.startswith("kube"):
        reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
                  504: "Timeout"}.get(status, "InternalError")
        body: Any = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": message, "reason": reason, "code": status}
    elif service == "keyvault":
        code = "Throttled" if status == 429 else "ServiceUnavailable"
        body = {"error": {"code": code, "message": message}}
    elif service == "entra":
        error = "temporarily_unavailable" if status in (429, 503) else "server_error"
        body = {"error": error, "error_description": f"AADSTS90000: {message}",
                "error_codes": [90000], "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())}
    else:
        body = {"$id": "1", "innerException": None, "message": message,
                "typeName": "Microsoft.TeamFoundation.Framework.Server.RequestBlockedException, "
                            "Microsoft.TeamFoundation.Framework.Server",
                "typeKey": "RequestBlockedException", "errorCode": 0, "eventId": 3000}
    return "application/json; charset=utf-8", json.dumps(body)


def _rate_limit_headers(delay: float, retry_after: float) -> dict[str, str]:
    return {
        "Retry-After": str(max(0, round(retry_after))),
        "X-RateLimit-Resource": "Core",
        "X-RateLimit-Delay": f"{delay:.3f}",
        "X-RateLimit-Limit": "200",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(time.time() + retry_after)),
    }


async def _apply_fault(fault: Fault, service: str, request: web.Request,
                       handler: Handler) -> web.StreamResponse | None:
    """The answer a fault dictates; None means the connection was dropped."""
    if fault.kind == "latency":
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)
        response = await handler(request)
        if fault.retry_after is not None:
            response.headers.update(_rate_limit_headers(fault.delay, fault.retry_after))
        return response
    if fault.kind == "timeout":
        await asyncio.sleep(fault.delay)
        if request.transport is not None:
            request.transport.abort()
        return None
    if fault.delay > 0:
        await asyncio.sleep(fault.delay)
    if fault.kind == "throttle":
        retry_after = fault.retry_after if fault.retry_after is not None else 30.0
        message = ("TF400733: The request has been canceled: Request was blocked due to exceeding "
                   "usage of resource 'Core' in namespace 'User'.")
        ctype, body = _error_body(service, 429, message)
        headers = _rate_limit_headers(0.0, retry_after)
        del headers["X-RateLimit-Delay"]
        return web.Response(status=429, text=body, headers={**headers, "Content-Type": ctype})
    ctype, body = _error_body(service, fault.status, f"sandbox fault {fault.id}: injected {fault.status}")
    headers = {"Content-Type": ctype}
    if fault.retry_after is not None:
        headers["Retry-After"] = str(max(0, round(fault.retry_after)))
    return web.Response(status=fault.status, text=body, headers=headers)


def middlewares(service: str, log: RequestLog, faults: FaultTable) -> list[Middleware]:
    """The request-log and fault-injection middlewares, outermost first."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Logged on arrival (a client may act on a streamed answer before the handler returns);
        # status and duration are filled in when the handler is done.
        started = time.time()
        rec = RequestRecord(
            time=started, service=service, method=request.method, path=request.path,
            query=request.query_string, status=0, headers={
                k: (redact_authorization(v) if k.lower() in ("authorization", "proxy-authorization")
                    else "<redacted>" if k.lower() in _SECRET_HEADERS else v)
                for k, v in request.headers.items()
            })
        log.append(rec)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except _Dropped:
            status = 0
            return web.Response(status=499)  # never sent: the transport is already aborted
        finally:
            rec.status = status
            rec.fault = request.get(_FAULT_ID)
            rec.duration = time.time() - started

    @web.middleware
    async def inject(request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = faults.match(service, request.method, request.path, request.path_qs)
        if fault is None:
            return await handler(request)
        request[_FAULT_ID] = fault.id
        response = await _apply_fault(fault, service, request, handler)
        if response is None:
            raise _Dropped
        return response

    return [record, inject]


class _Dropped(Exception):
    """Raised after a timeout fault aborted the transport: nothing is sent back."""

