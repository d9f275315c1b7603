"""The sandbox's control API: how tests and the demo make the outside world misbehave.

patrol must cope with things it cannot cause itself: a PAT revoked by a human, an org policy
switched on, Key Vault answering 503, ADO throttling, a burst of queued jobs. This plain-HTTP JSON
API (loopback only, no auth: it is a test harness, never production) changes the simulated
world directly and reports what happened (the request log, a state snapshot). It never returns
a token value: PATs appear as metadata and sha256 fingerprints only.

Routes are listed by ``GET /`` and documented in docs/sandbox.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import fields
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from sandbox.ado import AdoWorld
from sandbox.entra import Entra
from sandbox.http import Fault, FaultTable, RequestLog
from sandbox.keyvault import KeyVaultStore
from sandbox.tenant import CLIENT_KINDS, USER_KINDS


class ClusterLike(Protocol):
    """What the control API needs from a simulated cluster (sandbox.kube.ClusterState)."""

    def secret_value(self, ns: str, name: str, key: str) -> str | None: ...


class ActorsLike(Protocol):
    def snapshot(self) -> dict[str, Any]: ...
    def harm(self) -> dict[str, int]: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, default=str))


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _BadRequest as exc:
        return _json({"error": exc.message}, exc.status)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise _BadRequest(400, "body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _BadRequest(400, "body must be a JSON object")
    return body


def _secret_fingerprint(value: str | None) -> str | None:
    return hashlib.sha256(value.strip().encode()).hexdigest()[:12] if value is not None else None


class Control:
    """Holds the handles of the running world and serves the control routes."""

    def __init__(self, *, ado: AdoWorld, entra: Entra, kv: KeyVaultStore, clusters: Mapping[str, ClusterLike],
                 faults: FaultTable, log: RequestLog, bot_username: str,
                 actors: ActorsLike | None = None,
                 kube_state: Callable[[], dict[str, Any]] | None = None) -> None:
        self.ado = ado
        self.entra = entra
        self.kv = kv
        self.clusters = clusters
        self.faults = faults
        self.log = log
        self.bot_username = bot_username
        self.actors = actors
        self.kube_state = kube_state

    def app(self, middlewares: Iterable[Middleware] = ()) -> web.Application:
        app = web.Application(middlewares=[*middlewares, _errors])
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/state", self.state)
        r.add_get("/requests", self.requests)
        r.add_delete("/requests", self.clear_requests)
        r.add_get("/faults", self.list_faults)
        r.add_post("/faults", self.add_fault)
        r.add_delete("/faults", self.clear_faults)
        r.add_delete("/faults/{id}", self.remove_fault)
        r.add_get("/ado/pats", self.list_pats)
        r.add_post("/ado/pats/{id}/revoke", self.revoke_pat)
        r.add_post("/ado/pats/{id}/expire", self.expire_pat)
        r.add_post("/ado/sinks/revoke", self.revoke_sink)
        r.add_post("/ado/sinks/expire", self.expire_sink)
        r.add_get("/ado/policy", self.get_policy)
        r.add_put("/ado/policy", self.set_policy)
        r.add_patch("/ado/policy", self.set_policy)
        r.add_post("/ado/pools/{pool}/jobs", self.queue_jobs)
        r.add_get("/ado/behaviour", self.get_behaviour)
        r.add_patch("/ado/behaviour", self.set_behaviour)
        r.add_post("/entra/revoke-refresh-tokens", self.revoke_refresh_tokens)
        r.add_post("/entra/expire-access-tokens", self.expire_access_tokens)
        r.add_post("/entra/users/disable", self.disable_user)
        r.add_post("/entra/users/enable", self.enable_user)
        r.add_get("/entra/failures", self.list_failures)
        r.add_post("/entra/failures", self.add_failure)
        r.add_delete("/entra/failures", self.clear_failures)
        return app

    async def index(self, request: web.Request) -> web.Response:
        routes = sorted({f"{route.method} {route.resource.canonical}"  # type: ignore[union-attr]
                         for route in request.app.router.routes() if route.method != "HEAD"})
        return _json({"routes": routes})

    # --- observation ------------------------------------------------------------------------

    async def requests(self, request: web.Request) -> web.Response:
        service = request.query.get("service") or None
        try:
            since = float(request.query.get("since", "0") or 0)
            limit = int(request.query.get("limit", "0") or 0)
        except ValueError:
            raise _BadRequest(400, "since must be a unix time, limit an integer") from None
        records = self.log.records(service=service, since=since)
        if limit > 0:
            records = records[-limit:]
        return _json({"count": len(records), "requests": [r.to_dict() for r in records]})

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.log.clear()
        return web.Response(status=204)

    def snapshot(self) -> dict[str, Any]:
        """Everything a test may want to assert on, without a single secret value."""
        ado = self.ado.state()
        keyvault = {
            name: [{k: v for k, v in bundle.items() if k != "value"}
                   | {"fingerprint": _secret_fingerprint(bundle.get("value"))}
                   for bundle in self.kv.versions(name)]
            for name in self.kv.names()
        }
        return {
            **ado,
            "actors": self.actors.snapshot() if self.actors is not None else {},
            # cumulative counters of what the world suffered (docs/sandbox.md "Harm counters")
            "harm": self.harm(),
            "keyvault": keyvault,
            "kubernetes": self.kube_state() if self.kube_state is not None else {},
            "faults": [f.to_dict() for f in self.faults.list()],
            "requests_logged": len(self.log),
        }

    def harm(self) -> dict[str, int]:
        """Cumulative harm counters since start, merged from every actor family's ``harm()``
        (each family returns its own keys: the pipeline and Key Vault readers give
        ``pipeline_runs_failed`` and ``secret_reader_failures``)."""
        harm: dict[str, int] = {}
        if self.actors is not None:
            harm.update(self.actors.harm())
        return harm

    async def state(self, request: web.Request) -> web.Response:
        return _json(self.snapshot())

    # --- faults -----------------------------------------------------------------------------

    async def list_faults(self, request: web.Request) -> web.Response:
        return _json({"faults": [f.to_dict() for f in self.faults.list()]})

    async def add_fault(self, request: web.Request) -> web.Response:
        body = await _body(request)
        allowed = {f.name for f in fields(Fault) if not f.name.startswith("_")} - {"id", "hits"}
        unknown = set(body) - allowed
        if unknown:
            raise _BadRequest(400, f"unknown fault fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "kind" not in body or "service" not in body:
            raise _BadRequest(400, "kind and service are required")
        try:
            fault_id = self.faults.add(Fault(**body))
        except (ValueError, TypeError) as exc:
            raise _BadRequest(400, str(exc)) from None
        return _json({"id": fault_id}, 201)

    async def remove_fault(self, request: web.Request) -> web.Response:
        try:
            self.faults.remove(request.match_info["id"])
        except KeyError:
            raise _BadRequest(404, f"no fault {request.match_info['id']}") from None
        return web.Response(status=204)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.Response(status=204)

    # --- ADO --------------------------------------------------------------------------------

    async def list_pats(self, request: web.Request) -> web.Response:
        return _json({"pats": self.ado.pats()})

    def _pat_change(self, auth_id: str, action: str) -> dict[str, Any]:
        try:
            if action == "revoke":
                self.ado.revoke_pat(auth_id)
            else:
                self.ado.expire_pat(auth_id)
        except KeyError:
            raise _BadRequest(404, f"no PAT with authorizationId {auth_id}") from None
        return next(p for p in self.ado.pats() if p["authorizationId"] == auth_id)

    async def revoke_pat(self, request: web.Request) -> web.Response:
        return _json(self._pat_change(request.match_info["id"], "revoke"))

    async def expire_pat(self, request: web.Request) -> web.Response:
        return _json(self._pat_change(request.match_info["id"], "expire"))

    def _sink_value(self, body: dict[str, Any]) -> str | None:
        kind = body.get("kind", "kubernetes-secret")
        if kind == "kubernetes-secret":
            cluster = self.clusters.get(str(body.get("cluster")))
            if cluster is None:
                raise _BadRequest(404, f"no cluster {body.get('cluster')!r}")
            return cluster.secret_value(str(body.get("namespace", "azure-devops")),
                                        str(body.get("secret", "azure-devops-token")),
                                        str(body.get("key", "token")))
        if kind == "keyvault":
            return self.kv.latest_value(str(body.get("secret", "azure-devops-token")))
        raise _BadRequest(400, "kind must be kubernetes-secret or keyvault")

    async def _sink_change(self, request: web.Request, action: str) -> web.Response:
        body = await _body(request)
        value = self._sink_value(body)
        if value is None:
            raise _BadRequest(404, "that sink holds no value")
        auth_id = self.ado.pat_id_for_value(value)
        if auth_id is None:
            raise _BadRequest(404, "that sink holds a value that is not a PAT of this organization")
        return _json(self._pat_change(auth_id, action))

    async def revoke_sink(self, request: web.Request) -> web.Response:
        return await self._sink_change(request, "revoke")

    async def expire_sink(self, request: web.Request) -> web.Response:
        return await self._sink_change(request, "expire")

    async def get_policy(self, request: web.Request) -> web.Response:
        return _json(self.ado.policy.to_dict())

    async def set_policy(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            policy = self.ado.set_policy(**body)
        except (ValueError, TypeError) as exc:
            raise _BadRequest(400, str(exc)) from None
        return _json(policy.to_dict())

    def _behaviour(self) -> dict[str, Any]:
        return {"auth_failure_body": self.ado.auth_failure_body,
                "basic_pat_failure": self.ado.basic_pat_failure}

    async def get_behaviour(self, request: web.Request) -> web.Response:
        return _json(self._behaviour())

    async def set_behaviour(self, request: web.Request) -> web.Response:
        body = await _body(request)
        known = {"auth_failure_body": ("empty", "json"), "basic_pat_failure": ("401", "sign-in-page")}
        unknown = set(body) - set(known)
        if unknown:
            raise _BadRequest(400, f"unknown fields {sorted(unknown)}; known: {sorted(known)}")
        for key, allowed in known.items():
            if key in body and body[key] not in allowed:
                raise _BadRequest(400, f"{key} must be one of {list(allowed)}")
        if "auth_failure_body" in body:
            self.ado.auth_failure_body = body["auth_failure_body"]
        if "basic_pat_failure" in body:
            self.ado.basic_pat_failure = body["basic_pat_failure"]
        return _json(self._behaviour())

    async def queue_jobs(self, request: web.Request) -> web.Response:
        pool_ref = request.match_info["pool"]
        pool_id = int(pool_ref) if pool_ref.isdigit() else self.ado.pool_by_name(pool_ref)
        if pool_id is None or pool_id not in {p.id for p in self.ado.pools()}:
            raise _BadRequest(404, f"no pool {pool_ref!r}")
        body = await _body(request)
        try:
            count = int(body.get("count", 1))
        except (TypeError, ValueError):
            raise _BadRequest(400, "count must be an integer") from None
        if not 0 < count <= 10_000:
            raise _BadRequest(400, "count must be between 1 and 10000")
        definition = str(body.get("definition", "build"))
        ids = [self.ado.queue_job(pool_id, definition=definition) for _ in range(count)]
        return _json({"pool": pool_id, "requestIds": ids, "queued": self.ado.queued_jobs(pool_id)}, 201)

    # --- Entra ------------------------------------------------------------------------------

    async def revoke_refresh_tokens(self, request: web.Request) -> web.Response:
        body = await _body(request)
        username = str(body.get("username", self.bot_username))
        try:
            self.entra.revoke_refresh_tokens(username)
        except KeyError:
            raise _BadRequest(404, f"no user {username!r}") from None
        return _json({"username": username, "refresh_tokens": "revoked"})

    async def expire_access_tokens(self, request: web.Request) -> web.Response:
        body = await _body(request)
        username = body.get("username")
        try:
            self.entra.expire_access_tokens(str(username) if username else None)
        except KeyError:
            raise _BadRequest(404, f"no user {username!r}") from None
        return _json({"username": username, "access_tokens": "expired"})

    async def _set_enabled(self, request: web.Request, enabled: bool) -> web.Response:
        body = await _body(request)
        username = str(body.get("username", self.bot_username))
        try:
            self.entra.set_user_enabled(username, enabled)
        except KeyError:
            raise _BadRequest(404, f"no user {username!r}") from None
        return _json({"username": username, "enabled": enabled})

    async def disable_user(self, request: web.Request) -> web.Response:
        """Disable a user (default: the bot) in Entra; ADO revokes their PATs (AdoWorld's
        ``disabled_user_revoke_delay`` later; 0 by default)."""
        return await self._set_enabled(request, False)

    async def enable_user(self, request: web.Request) -> web.Response:
        return await self._set_enabled(request, True)

    async def list_failures(self, request: web.Request) -> web.Response:
        return _json({"failures": self.entra.conditions.to_list()})

    async def add_failure(self, request: web.Request) -> web.Response:
        """Make the tenant refuse the bot's sign-ins as a real tenant does (sandbox/tenant.py), or
        revoke its access tokens server-side (``access_tokens_revoked``, a one-off)."""
        body = await _body(request)
        kinds = (*USER_KINDS, *CLIENT_KINDS, "access_tokens_revoked")
        kind = body.get("kind")
        if kind not in kinds:
            raise _BadRequest(400, f"kind must be one of {list(kinds)}")
        unknown = set(body) - {"kind", "username", "client_id"}
        if unknown:
            raise _BadRequest(400, f"unknown fields {sorted(unknown)}; known: kind, username, client_id")
        username = str(body.get("username", self.bot_username))
        try:
            if kind == "access_tokens_revoked":
                revoked = self.entra.revoke_access_tokens(username)
                return _json({"kind": kind, "username": username, "revoked": revoked})
            if kind in CLIENT_KINDS:
                client_id = body.get("client_id")
                self.entra.set_condition(kind, client_id=str(client_id) if client_id else None)
                return _json({"kind": kind, "client_id": client_id or "*"}, 201)
            self.entra.set_condition(kind, username=username)
        except KeyError:
            raise _BadRequest(404, f"no user {username!r}") from None
        return _json({"kind": kind, "username": username}, 201)

    async def clear_failures(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind") or None
        if kind is not None and kind not in (*USER_KINDS, *CLIENT_KINDS):
            raise _BadRequest(400, f"kind must be one of {[*USER_KINDS, *CLIENT_KINDS]}")
        self.entra.conditions.clear(kind)
        return web.Response(status=204)
