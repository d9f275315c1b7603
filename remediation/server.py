"""The worker's HTTP face: the Alertmanager webhook, ``POST /rotations``, metrics, health, history.

The webhook answers fast and does nothing on a bad request: authentication (constant-time
Bearer compare), content type, size and schema are checked before anything is planned, so a
401/413/415/400 leaves no trace but a counter; so does a sender that hangs up mid-body (counted
as 499). Hostile bytes (undecodable header values, lone surrogates, times at the calendar's
edge) are bad requests, never a 503. An accepted delivery gets 202 at once and the
rotation continues in the background (:mod:`remediation.dispatch`). 503 is reserved for "cannot
accept work now" (not the Lease holder, shutting down), the only answer that makes
Alertmanager retry (docs/external-apis.md, "Alertmanager webhooks"); a standby's 503 names the
replica holding the Lease.

``POST /rotations`` is "rotate now" for an operator (``patrol rotate`` when a worker holds the
Lease): the same bearer, the same checks, the same planner (one rotation per token, the
cool-down unless ``force``, ``compromised`` as the saga supports it). Its answers are distinct
so a client can act on them: 202 started (with the rotation id), 404 unknown token, 409 one is
running (with its id), 429 cool-down (with the seconds left), 503 not the Lease holder.

Readiness (``/readyz``) says whether this replica can serve (not stopping, journal writable,
Kubernetes API answering), not whether it leads: a standby is Ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.secret import Secret
from remediation.alerts import PayloadError, parse_body
from remediation.dispatch import Dispatcher
from remediation.journal import Journal
from remediation.metrics import WorkerMetrics
from remediation.planner import Planner, RotationRequest

log = logging.getLogger("patrol.webhook")


class _MalformedHttpFilter(logging.Filter):
    """aiohttp logs every unparsable request (control bytes in a header, a broken request line)
    as an ERROR with a traceback, then answers 400 itself. That is a client's fault, not ours:
    keep it to one INFO line without the traceback, and leave every other error loud."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            log.info("malformed HTTP request answered %s by aiohttp: %s", exc.code,
                     str(exc.message).splitlines()[0][:200] if exc.message else type(exc).__name__)
            return False
        return True


# The logger aiohttp's protocol reports request errors to (RequestHandler(logger=...)).
HTTP_LOG = logging.getLogger("patrol.webhook.http")
HTTP_LOG.addFilter(_MalformedHttpFilter())

MAX_BODY = 1024 * 1024
CLIENT_CLOSED = 499
WEBHOOK_PATH = "/webhook/alertmanager"
ROTATIONS_PATH = "/rotations"
MAX_ROTATION_BODY = 16 * 1024
_ROTATION_KEYS = {"token": str, "reason": str, "compromised": bool, "force": bool}
_JSON_TYPES = ("application/json",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_TIMEOUT = 408


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on slow or numerous senders (aiohttp has no header read timeout of its own).

    ``header_timeout``: how long a connection may stay open without a request being handled —
    a new connection still sending its request head, or an idle keep-alive one. ``body_timeout``:
    how long reading one request body may take. ``max_connections``: beyond it, the newest idle
    connections are closed. Alertmanager sends small bodies at once and retries any failure.
    """

    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        if self.header_timeout <= 0 or self.body_timeout <= 0 or self.max_connections < 1:
            raise ValueError("server limits must be positive")


class ConnectionGuard:
    """Closes connections that hold the server without a request in its handlers.

    A middleware marks each connection busy while a handler runs; a sweep every fraction of
    ``header_timeout`` closes those idle (no request being handled) for longer than that, and
    the newest idle ones beyond ``max_connections``. A trickling sender is thus cut off within
    about 1.25 x ``header_timeout``, whatever it sends; the body read has its own bound.
    """

    def __init__(self, limits: ServerLimits, metrics: WorkerMetrics, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._metrics = metrics
        self._clock = clock
        self._busy: dict[web.RequestHandler, int] = {}
        self._idle_since: dict[web.RequestHandler, float] = {}
        self.period = min(1.0, limits.header_timeout / 4)
        for reason in ("header_timeout", "too_many"):
            metrics.webhook_connections_closed.labels(reason=reason)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        self._busy[protocol] = self._busy.get(protocol, 0) + 1
        try:
            return await handler(request)
        finally:
            left = self._busy.pop(protocol, 1) - 1
            if left > 0:
                self._busy[protocol] = left
            self._idle_since[protocol] = self._clock()

    def sweep(self, connections: list[web.RequestHandler]) -> int:
        """One pass over the server's connections; returns how many were closed."""
        now = self._clock()
        live = set(connections)
        for gone in [c for c in self._idle_since if c not in live]:
            del self._idle_since[gone]
        idle: list[tuple[float, web.RequestHandler]] = []
        closed = 0
        for conn in connections:
            if conn in self._busy:
                continue
            since = self._idle_since.setdefault(conn, now)
            if now - since >= self.limits.header_timeout:
                closed += self._close(conn, "header_timeout")
            else:
                idle.append((since, conn))
        excess = len(live) - closed - self.limits.max_connections
        if excess > 0:
            idle.sort(key=lambda item: item[0], reverse=True)      # newest first
            for _, conn in idle[:excess]:
                closed += self._close(conn, "too_many")
        return closed

    def _close(self, conn: web.RequestHandler, reason: str) -> int:
        conn.force_close()
        self._idle_since.pop(conn, None)
        self._metrics.webhook_connections_closed.labels(reason=reason).inc()
        log.debug("closed a connection: %s", reason)
        return 1

    async def run(self, server: web.Server) -> None:
        while True:
            self.sweep(server.connections)
            await asyncio.sleep(self.period)


def _reply(status: int, reason: str, **extra: Any) -> web.Response:
    body = {"status": status, "reason": reason, **extra}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


class WorkerServer:
    """Builds the aiohttp application; every collaborator is a constructor argument.

    ``accepting`` returns ``None`` when work can be accepted, else a short reason for a 503
    (e.g. "not the lease holder"). ``ready`` returns ``None`` when this replica can serve, else
    why not; it drives ``/readyz`` (a standby is ready: it serves history, metrics and the 503
    that sends a retry elsewhere). ``leader`` names the Lease holder for a 503's body.
    """

    def __init__(
        self,
        *,
        planner: Planner,
        dispatcher: Dispatcher,
        journal: Journal,
        metrics: WorkerMetrics,
        webhook_token: Secret | str | None,
        insecure_no_auth: bool = False,
        accepting: Callable[[], str | None] = lambda: None,
        limits: ServerLimits | None = None,
        ready: Callable[[], str | None] = lambda: None,
        leader: Callable[[], str | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(webhook_token, str):
            webhook_token = Secret(webhook_token)
        if not webhook_token and not insecure_no_auth:
            raise ValueError(
                "the webhook needs a bearer token: set PATROL_WEBHOOK_TOKEN or worker.webhook_token_file"
                " (or pass --insecure-no-auth for a local test)")
        self._expected = webhook_token.reveal().encode() if webhook_token else None
        self.planner = planner
        self.dispatcher = dispatcher
        self.journal = journal
        self.metrics = metrics
        self._accepting = accepting
        self._ready = ready
        self._leader = leader
        self._clock = clock
        self.limits = limits or ServerLimits()
        self.guard = ConnectionGuard(self.limits, metrics)
        for code in ("202", "400", "401", "413", "415", str(REQUEST_TIMEOUT), str(CLIENT_CLOSED), "503"):
            metrics.webhook_requests.labels(code=code)
        for code in ("202", "400", "401", "404", "409", "413", "415", "429", "503"):
            metrics.rotation_requests.labels(code=code)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self.guard.middleware])
        app.router.add_post(WEBHOOK_PATH, self._counted(self.webhook))
        app.router.add_post(ROTATIONS_PATH, self._counted(self.rotate, manual=True))
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get(ROTATIONS_PATH, self.rotations)
        app.router.add_get(ROTATIONS_PATH + "/{rotation_id}", self.rotation)
        return app

    @contextlib.asynccontextmanager
    async def serving(self, host: str, port: int) -> AsyncIterator[int]:
        """Listen on ``host:port`` with the connection guard running; yields the bound port."""
        # After an early answer (408/413) aiohttp reads and drops the rest of a body for
        # ``lingering_time`` so the client sees the answer, not a reset; keep that short too.
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=5.0,
                               lingering_time=min(2.0, self.limits.body_timeout / 2), logger=HTTP_LOG)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            assert runner.server is not None
            sweeper = asyncio.create_task(self.guard.run(runner.server), name="patrol-connection-guard")
            try:
                yield runner.addresses[0][1] if runner.addresses else port
            finally:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
        finally:
            await runner.cleanup()

    def not_accepting_reason(self) -> str | None:
        if not self.dispatcher.accepting:
            return "shutting down"
        return self._accepting()

    def not_ready_reason(self) -> str | None:
        if not self.dispatcher.accepting:
            return "shutting down"
        return self._ready()

    def _unavailable(self, reason: str) -> web.Response:
        """503 with the Lease holder's identity when known, so a client can find the leader."""
        leader = self._leader()
        return _reply(503, reason, **({"leader": leader} if leader else {}))

    # -- webhook ----------------------------------------------------------------------------------

    def _counted(self, handler: Handler, *, manual: bool = False) -> Handler:
        counter = self.metrics.rotation_requests if manual else self.metrics.webhook_requests

        async def wrapper(request: web.Request) -> web.StreamResponse:
            try:
                response = await handler(request)
            except Exception:
                # e.g. the journal's disk is full: nothing was admitted; ask for a retry.
                log.exception("%s could not be handled", "rotation request" if manual else "webhook delivery")
                response = _reply(503, "internal error; retry later")
            counter.labels(code=str(response.status)).inc()
            return response
        return wrapper

    def _authorized(self, request: web.Request) -> bool:
        if self._expected is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return False
        # aiohttp keeps undecodable header bytes as surrogate escapes; encoding them back gives the
        # bytes that were sent (a plain .encode() raised on "Bearer \xff\xfe" and answered 503).
        presented = credentials.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(presented, self._expected)

    async def _authorized_body(self, request: web.Request, limit: int = MAX_BODY) -> bytes | web.Response:
        """The request body once bearer, content type and size pass; else the answer to give."""
        if not self._authorized(request):
            response = _reply(401, "missing or bad bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="patrol"'
            return response
        if request.content_type not in _JSON_TYPES:
            return _reply(415, "content type must be application/json")
        if request.content_length is not None and request.content_length > limit:
            return _reply(413, f"body larger than {limit} bytes")
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                body = await request.read()
        except TimeoutError:
            log.info("webhook body not received within %.0f s; connection closed", self.limits.body_timeout,
                     extra={"remote": request.remote or ""})
            response = _reply(REQUEST_TIMEOUT, f"body not received within {self.limits.body_timeout:g} s")
            response.force_close()
            return response
        except web.HTTPRequestEntityTooLarge:
            return _reply(413, f"body larger than {MAX_BODY} bytes")
        except ConnectionResetError:
            # The client went away mid-body: nothing was admitted and nobody reads the answer.
            # Counted as 499 (nginx's "client closed request"), not as our failure (503).
            log.info("webhook client disconnected before sending the whole body",
                     extra={"remote": request.remote or ""})
            return _reply(CLIENT_CLOSED, "client closed the connection before the body was complete")
        if len(body) > limit:
            return _reply(413, f"body larger than {limit} bytes")
        return body

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        body = await self._authorized_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            notification = parse_body(body)
        except PayloadError as exc:
            return _reply(400, exc.reason)
        unavailable = self.not_accepting_reason()
        if unavailable is not None:
            return self._unavailable(unavailable)
        plan = self.planner.plan(notification)
        for index, rotation in enumerate(plan.requests):
            if not self.dispatcher.submit(rotation):
                for pending in plan.requests[index:]:
                    self.planner.abandon(pending, "worker stopping; Alertmanager will retry")
                return _reply(503, "shutting down")
        skipped = {d.token for d in plan.decisions if d.reason in ("already-running", "cooldown")}
        for token in sorted(t for t in skipped if t):
            self.metrics.rotations.labels(token=token, result="skipped").inc()
        return _reply(202, "accepted", decisions=[d.to_json() for d in plan.decisions])

    # -- rotate now -------------------------------------------------------------------------------

    async def rotate(self, request: web.Request) -> web.StreamResponse:
        """``POST /rotations``: start a rotation now through the planner (see the module doc)."""
        body = await self._authorized_body(request, MAX_ROTATION_BODY)
        if isinstance(body, web.Response):
            return body
        try:
            ask = parse_rotation_request(body)
        except PayloadError as exc:
            return _reply(400, exc.reason)
        token = ask["token"]
        if token not in self.planner.tokens:
            known = sorted(self.planner.tokens)
            return _reply(404, f"no token named {token!r} in the worker's configuration; known: "
                          f"{', '.join(known) or 'none'}", known_tokens=known)
        unavailable = self.not_accepting_reason()
        if unavailable is not None:
            return self._unavailable(unavailable)
        compromised, force = bool(ask.get("compromised", False)), bool(ask.get("force", False))
        reason = f"POST /rotations: {ask.get('reason') or 'no reason given'}"
        if compromised:
            reason += " (compromised)"
        decision, admitted = self.planner.request(token, trigger="manual", reason=reason, force=force,
                                                  compromised=compromised)
        if admitted is not None:
            return self._start(admitted, reason)
        if decision.reason == "marked-compromised":
            return _reply(202, "marked-compromised", token=token, rotation_id=decision.rotation_id,
                          detail="the running rotation revokes the previous PAT as soon as delivery is "
                                 "verified")
        if decision.reason == "cooldown":
            left = self._cooldown_left(token)
            response = _reply(429, f"{token} was rotated less than the cool-down ago; retry in {left} s "
                              "or pass \"force\": true", token=token, retry_after_seconds=left)
            response.headers["Retry-After"] = str(left)
            return response
        running = [r.id for r in self.journal.unfinished() if r.token == token]
        return _reply(409, f"a rotation of {token} is running; follow it at {ROTATIONS_PATH}/<id>",
                      token=token, rotation_id=running[-1] if running else None)

    def _start(self, admitted: RotationRequest, reason: str) -> web.Response:
        if not self.dispatcher.submit(admitted):
            self.planner.abandon(admitted, "worker stopping; retry")
            return self._unavailable("shutting down")
        log.info("rotation %s of %s started on request: %s", admitted.rotation_id, admitted.token, reason,
                 extra={"token": admitted.token, "rotation_id": admitted.rotation_id})
        response = _reply(202, "accepted", token=admitted.token, rotation_id=admitted.rotation_id,
                          compromised=admitted.compromised)
        response.headers["Location"] = f"{ROTATIONS_PATH}/{admitted.rotation_id}"
        return response

    def _cooldown_left(self, token: str) -> int:
        last = self.journal.last_success(token)
        if last is None:
            return 0
        return max(1, int(last + self.planner.cooldown - self._clock() + 0.999))

    # -- the rest ---------------------------------------------------------------------------------

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        reason = self.not_ready_reason()
        if reason is not None:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ready\n")

    async def rotations(self, request: web.Request) -> web.Response:
        token = request.query.get("token") or None
        try:
            limit = max(1, min(500, int(request.query.get("limit", "50"))))
        except ValueError:
            return _reply(400, "limit must be an integer")
        records = self.journal.recent(token=token, limit=limit)
        decisions = [d for d in self.journal.decisions(limit=limit) if token is None or d.token == token]
        body = {
            "running": sorted(self.planner.locks.running()),
            "rotations": [r.to_json() for r in records],
            "decisions": [
                {"at": d.at, "token": d.token, "alertname": d.alertname, "fingerprint": d.fingerprint,
                 "action": d.action, "reason": d.reason, "rotation_id": d.rotation_id}
                for d in decisions
            ],
        }
        return web.json_response(body)

    async def rotation(self, request: web.Request) -> web.Response:
        """``GET /rotations/{id}``: one rotation's record (what ``patrol rotate`` follows)."""
        record = self.journal.find(request.match_info["rotation_id"])
        if record is None:
            standby = self.not_accepting_reason()
            if standby is not None:
                # Behind the Service a follower may land here: the leader's journal has it.
                return self._unavailable(standby)
            return _reply(404, "no such rotation in this worker's journal")
        return web.json_response(record.to_json())


def parse_rotation_request(body: bytes) -> dict[str, Any]:
    """Validate a ``POST /rotations`` body; :class:`PayloadError` names what is wrong."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):      # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PayloadError("body is not JSON; send e.g. {\"token\": \"keda\", \"reason\": \"...\"}") from None
    if not isinstance(doc, dict):
        raise PayloadError("body must be a JSON object with a \"token\"")
    unknown = sorted(k for k in doc if k not in _ROTATION_KEYS)
    if unknown:
        raise PayloadError(f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: "
                           f"{', '.join(_ROTATION_KEYS)}")
    for key, kind in _ROTATION_KEYS.items():
        if key in doc and not isinstance(doc[key], kind):
            raise PayloadError(f"{key!r} must be a {'boolean' if kind is bool else 'string'}")
    if not doc.get("token"):
        raise PayloadError("\"token\" is required: the name of a configured token")
    if len(doc.get("reason", "")) > 500:
        raise PayloadError("\"reason\" is longer than 500 characters")
    for key in ("token", "reason"):
        try:
            doc.get(key, "").encode("utf-8")
        except UnicodeEncodeError:
            # a lone surrogate (\ud800) decodes from JSON but cannot be journaled: a bad request
            raise PayloadError(f"{key!r} is not valid Unicode text") from None
    return doc
