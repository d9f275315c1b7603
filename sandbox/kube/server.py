"""The HTTP face of one simulated API server: authentication, routing, discovery, CRUD, list.

Guarantees: every route the real server has for the served types answers with the real status
codes and ``Status`` bodies; anything else is the real 404/405. Watches are served by
:mod:`sandbox.kube.watch`; storage semantics live in :mod:`sandbox.kube.store`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sandbox.http import FaultTable, RequestLog, middlewares
from sandbox.kube import eventsv1
from sandbox.kube.errors import (
    ApiError,
    DecodeError,
    bad_request,
    cannot_handle,
    method_not_allowed,
    no_route,
    not_found,
    status_details,
)
from sandbox.kube.selectors import fields_match, labels_match, parse_bool, parse_field_selector, parse_label_selector
from sandbox.kube.types import BY_GV_PLURAL, EVENTS, EVENTS_V1, JSON, SERVED_TYPES, SERVER_VERSION, ResourceType
from sandbox.kube.watch import serve_watch

if TYPE_CHECKING:
    from sandbox.kube.cluster import ClusterState


class ApiServer:
    """The aiohttp application in front of one :class:`ClusterState`."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._closing = False
        self._reaper: asyncio.Task[None] | None = None

    def app(self, *, log: RequestLog | None = None, faults: FaultTable | None = None) -> web.Application:
        """The API server; with ``log``/``faults`` it gets the shared sandbox middlewares."""
        mws = middlewares(f"kube:{self.state.name}", log, faults) if log is not None and faults is not None else []
        application = web.Application(middlewares=mws)
        application.router.add_route("*", "/{tail:.*}", self._handle)
        application.on_startup.append(self._on_startup)
        application.on_shutdown.append(self._on_shutdown)
        return application

    async def _on_startup(self, _app: web.Application) -> None:
        self._closing = False
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for watchers in self.state.watchers.values():
            for w in watchers:
                w.queue.put_nowait(None)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.state.reap_interval)
            self.state.expire_events()
            self.state.maybe_compact(asyncio.get_running_loop().time())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization", "") != f"Bearer {self.state.bearer_token}":
            return _json_response(ApiError(401, "Unauthorized", "Unauthorized").status(), 401)
        try:
            return await self._route(request)
        except ApiError as exc:
            return _json_response(exc.status(), exc.code)
        except DecodeError as exc:  # pragma: no cover - converted where it can happen
            return _json_response(bad_request(str(exc)).status(), 400)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        port = self.state.port or (request.url.port or 0)
        if parts == ["version"]:
            return _json_response(SERVER_VERSION)
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return web.Response(text="ok", content_type="text/plain")
        if parts == ["api"]:
            return _json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{port}"}]})
        if parts == ["apis"]:
            return _json_response({"kind": "APIGroupList", "apiVersion": "v1",
                                   "groups": [_api_group(g) for g in _groups()]})
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in _groups():
            return _json_response({"kind": "APIGroup", "apiVersion": "v1", **_api_group(parts[1])})
        if parts[:2] == ["api", "v1"]:
            gv, rest = "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise no_route()
        if not any(rt.group_version == gv for rt in SERVED_TYPES):
            raise no_route()
        if not rest:
            return _json_response(_resource_list(gv))
        ns: str | None = None
        if rest[0] == "namespaces" and (gv != "v1" or len(rest) >= 3):
            if len(rest) < 3:
                raise no_route()
            ns, rest = rest[1], rest[2:]
        rt = BY_GV_PLURAL.get((gv, rest[0]))
        if rt is None or (ns is not None and not rt.namespaced):
            raise no_route()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if len(rest) > 3 or (sub and not (sub == "status" and rt.status_subresource)):
            raise no_route()
        if rt.namespaced and ns is None and name is not None:   # /api/v1/secrets/x: no such route
            raise no_route()
        if not rt.namespaced:
            ns = ""
        if rt is EVENTS_V1:
            return await self._serve_events_v1(request, ns, name)
        return await self._serve(request, rt, ns, name, sub)

    async def _serve(self, request: web.Request, rt: ResourceType, ns: str | None, name: str | None,
                     sub: str) -> web.StreamResponse:
        q = request.query
        method = request.method
        manager = q.get("fieldManager") or _manager_from_user_agent(request.headers.get("User-Agent", ""))
        dry_run = q.get("dryRun") == "All"
        if name is None:
            if method == "GET":
                if parse_bool(q.get("watch")):
                    return await serve_watch(self.state, request, rt, ns, closing=lambda: self._closing)
                return _json_response(self._list(rt, ns, q))
            if method == "POST" and ns is not None:
                body = await _read_json(request)
                try:
                    obj = self.state.create(rt, ns, body, manager=manager, dry_run=dry_run)
                except DecodeError as exc:
                    raise cannot_handle(rt, exc) from exc
                return _json_response(obj, 201)
            raise method_not_allowed()
        assert ns is not None
        if method == "GET":
            found = self.state.objects[rt.key].get((ns, name))
            if found is None:
                raise not_found(rt, name)
            return _json_response(found)
        if method == "PUT":
            body = await _read_json(request)
            try:
                obj = self.state.update(rt, ns, name, body, manager=manager, subresource=sub, dry_run=dry_run)
            except DecodeError as exc:
                raise cannot_handle(rt, exc) from exc
            return _json_response(obj)
        if method == "PATCH":
            raw = await request.read()
            obj = self.state.patch(rt, ns, name, raw, request.headers.get("Content-Type", ""), manager=manager,
                             subresource=sub, dry_run=dry_run)
            return _json_response(obj)
        if method == "DELETE" and not sub:
            raw = await request.read()
            opts: JSON = {}
            if raw.strip():
                try:
                    opts = json.loads(raw)
                except ValueError as exc:
                    raise bad_request(f"error decoding DeleteOptions: {exc}") from exc
            pre = opts.get("preconditions") or {}
            gone = self.state.delete(rt, ns, name, precondition_rv=pre.get("resourceVersion") or "",
                               precondition_uid=pre.get("uid") or "", dry_run=dry_run)
            return _json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": {**status_details(rt, name), "uid": gone["metadata"].get("uid")}})
        raise method_not_allowed()

    async def _serve_events_v1(self, request: web.Request, ns: str | None, name: str | None) -> web.StreamResponse:
        """events.k8s.io/v1: the same Events, converted on the way in and out (eventsv1.py)."""
        q = request.query
        method = request.method
        manager = q.get("fieldManager") or _manager_from_user_agent(request.headers.get("User-Agent", ""))
        dry_run = q.get("dryRun") == "All"
        selector = eventsv1.field_selector_to_core(q.get("fieldSelector", ""))
        parse_field_selector(q.get("fieldSelector", ""), EVENTS_V1)   # 400 on a label v1 does not have
        if name is None:
            if method == "GET":
                if parse_bool(q.get("watch")):
                    return await serve_watch(self.state, request, EVENTS, ns, closing=lambda: self._closing,
                                             view=eventsv1.to_v1, field_selector=selector)
                listed = self._list(EVENTS, ns, {**q, "fieldSelector": selector})
                return _json_response({"kind": "EventList", "apiVersion": EVENTS_V1.group_version,
                                       "metadata": listed["metadata"],
                                       "items": [eventsv1.to_v1(i) for i in listed["items"]]})
            if method == "POST" and ns is not None:
                body = await _read_json(request)
                if not isinstance(body, dict):
                    raise bad_request("couldn't get version/kind; json parse error: not an object")
                eventsv1.validate_create(body)
                try:
                    obj = self.state.create(EVENTS, ns, eventsv1.to_core(body), manager=manager, dry_run=dry_run)
                except DecodeError as exc:
                    raise cannot_handle(EVENTS_V1, exc) from exc
                return _json_response(eventsv1.to_v1(obj), 201)
            raise method_not_allowed()
        assert ns is not None
        if method == "GET":
            found = self.state.objects[EVENTS.key].get((ns, name))
            if found is None:
                raise not_found(EVENTS_V1, name)
            return _json_response(eventsv1.to_v1(found))
        if method == "PUT":
            body = await _read_json(request)
            try:
                obj = self.state.update(EVENTS, ns, name, eventsv1.to_core(body), manager=manager, dry_run=dry_run)
            except DecodeError as exc:
                raise cannot_handle(EVENTS_V1, exc) from exc
            return _json_response(eventsv1.to_v1(obj))
        if method == "PATCH":
            raw = await request.read()
            obj = self.state.patch(EVENTS, ns, name, raw, request.headers.get("Content-Type", ""), manager=manager,
                                   dry_run=dry_run, view=(eventsv1.to_v1, eventsv1.to_core))
            return _json_response(eventsv1.to_v1(obj))
        if method == "DELETE":
            gone = self.state.delete(EVENTS, ns, name, dry_run=dry_run)
            return _json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": {**status_details(EVENTS_V1, name),
                                               "uid": gone["metadata"].get("uid")}})
        raise method_not_allowed()

    def _list(self, rt: ResourceType, ns: str | None, q: Any) -> JSON:
        if rt is EVENTS:
            self.state.expire_events()
        fterms = parse_field_selector(q.get("fieldSelector", ""), rt)
        lreqs = parse_label_selector(q.get("labelSelector", ""))
        items = [o for (ons, _), o in sorted(self.state.objects[rt.key].items())
                 if (ns is None or ons == ns) and fields_match(o, fterms) and labels_match(o, lreqs)]
        meta: JSON = {"resourceVersion": str(self.state.resource_version)}
        limit = int(q.get("limit") or 0)
        start = 0
        if q.get("continue"):
            try:
                token = json.loads(base64.b64decode(q["continue"]))
                start = int(token["start"])
                token_rv = int(token.get("rv", 0))
            except (ValueError, KeyError, binascii.Error) as exc:
                raise bad_request("continue key is not valid: " + str(exc)) from exc
            if rt is EVENTS and token_rv < self.state.compacted_rv:
                raise ApiError(410, "Expired", _CONTINUE_TOO_OLD)
        if limit > 0:
            page = items[start:start + limit]
            if start + limit < len(items):
                token_doc = {"v": "meta.k8s.io/v1", "rv": self.state.resource_version, "start": start + limit}
                meta["continue"] = base64.b64encode(json.dumps(token_doc).encode()).decode()
                meta["remainingItemCount"] = len(items) - start - limit
            items = page
        out_items = []
        for o in items:
            item = copy.deepcopy(o)
            if not rt.custom:
                item.pop("kind", None)
                item.pop("apiVersion", None)
            out_items.append(item)
        return {"kind": f"{rt.kind}List", "apiVersion": rt.group_version, "metadata": meta,
                "items": out_items}


# storage/etcd3 store.go GetList: a continue token whose revision etcd compacted away
_CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of "
    "the results. Continuing with the provided token results in an inconsistent list - objects that were "
    "created, modified, or deleted between the time the first chunk was returned and now may show up in the "
    "list.")


def _manager_from_user_agent(ua: str) -> str:
    """The API server's default field manager: the User-Agent up to the first '/'."""
    prefix = ua.split("/", 1)[0].strip()
    return prefix[:128] or "unknown"


def _groups() -> list[str]:
    seen: list[str] = []
    for rt in SERVED_TYPES:
        if rt.group and rt.group not in seen:
            seen.append(rt.group)
    return seen


def _api_group(group: str) -> JSON:
    versions = sorted({rt.version for rt in SERVED_TYPES if rt.group == group})
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def _resource_list(gv: str) -> JSON:
    resources: list[JSON] = []
    for rt in SERVED_TYPES:
        if rt.group_version != gv:
            continue
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        entry: JSON = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                       "kind": rt.kind, "verbs": verbs}
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        resources.append(entry)
        if rt.status_subresource:
            resources.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc


def _json_response(body: JSON, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")),
                        content_type="application/json")
