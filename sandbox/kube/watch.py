"""Watches as the API server streams them.

Guarantees: a watch from resourceVersion 0/"" starts with the current objects as ADDED; a watch
from a resourceVersion still in history replays what followed it; one older than the last
compaction gets the ``ERROR`` frame with a 410 ``Expired`` Status; a selector-filtered watcher
sees objects leaving its selection as DELETED and entering it as ADDED; BOOKMARK frames come
only when asked for (``allowWatchBookmarks``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from sandbox.kube.errors import ApiError, bad_rv
from sandbox.kube.selectors import fields_match, labels_match, parse_bool, parse_field_selector, parse_label_selector
from sandbox.kube.store import Change, Watcher
from sandbox.kube.types import EVENTS, JSON, LEASES, SECRETS, ResourceType

if TYPE_CHECKING:
    from sandbox.kube.cluster import ClusterState


async def serve_watch(state: ClusterState, request: web.Request, rt: ResourceType, ns: str | None, *,
                      closing: Callable[[], bool], view: Callable[[JSON], JSON] | None = None,
                      field_selector: str | None = None) -> web.StreamResponse:
    """A watch as the API server streams it: initial ADDEDs or history replay, bookmarks, 410.

    ``view`` converts each stored object to the served version (events.k8s.io/v1 over the core
    Events), ``field_selector`` is then the selector already in the stored version's labels.

    Events are not in the watch cache (apiserver ``DefaultWatchCacheSizes``: events 0), so an
    Event watch is served from etcd: no BOOKMARK frames even when asked for, and a
    resourceVersion older than the last compaction is a 410 ``Expired`` with etcd's wording.
    """
    q = request.query
    show = view or (lambda o: o)
    fterms = parse_field_selector(q.get("fieldSelector", "") if field_selector is None else field_selector, rt)
    lreqs = parse_label_selector(q.get("labelSelector", ""))
    if rt is EVENTS:
        state.expire_events()
    rv_param = q.get("resourceVersion", "")
    if rv_param and not rv_param.isdigit():
        raise bad_rv(rv_param)
    timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else state.watch_default_timeout
    bookmarks = parse_bool(q.get("allowWatchBookmarks")) and rt is not EVENTS
    requested = int(rv_param) if rv_param else 0
    if requested > state.resource_version:
        raise ApiError(504, "Timeout", f"Too large resource version: {requested}, current: {state.resource_version}",
                       {"causes": [{"reason": "ResourceVersionTooLarge",
                                    "message": "Too large resource version"}],
                        "retryAfterSeconds": 1})
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                   "Cache-Control": "no-cache, private"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)

    def frame(type_: str, obj: JSON) -> bytes:
        return (json.dumps({"type": type_, "object": obj}, separators=(",", ":")) + "\n").encode()

    def matches(obj: JSON | None) -> bool:
        return obj is not None and fields_match(obj, fterms) and labels_match(obj, lreqs)

    history = state.history[rt.key]
    oldest = history[0].rv if history else state.resource_version + 1
    err: ApiError | None = None
    if rt is EVENTS and 0 < requested < state.compacted_rv:
        # storage/etcd3 watcher.go: etcd answered ErrCompacted
        err = ApiError(410, "Expired", "The resourceVersion for the provided watch is too old.")
    elif requested > 0 and state.evicted[rt.key] and requested < oldest - 1:
        err = ApiError(410, "Expired", f"too old resource version: {requested} ({oldest - 1})")
    if err is not None:
        await resp.write(frame("ERROR", err.status()))
        await resp.write_eof()
        return resp
    watcher = Watcher(rt, ns)
    state.watchers[rt.key].add(watcher)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        if requested == 0:
            current = sorted(
                (o for (ons, _), o in state.objects[rt.key].items() if ns is None or ons == ns),
                key=lambda o: int(o["metadata"]["resourceVersion"]))
            for obj in current:
                if matches(obj):
                    await resp.write(frame("ADDED", show(obj)))
        else:
            for change in list(history):
                if change.rv > requested and (ns is None or change.namespace == ns):
                    watcher.queue.put_nowait(change)
        # bookmarks: about every bookmark_interval, and one ~2s before the watch times out
        pre_deadline = deadline - 2.0
        next_bookmark = min(loop.time() + state.bookmark_interval, pre_deadline)
        while not closing():
            now = loop.time()
            if now >= deadline or request.transport is None or request.transport.is_closing():
                break
            if bookmarks and now >= next_bookmark:
                await resp.write(frame("BOOKMARK", _bookmark_object(rt, state.resource_version)))
                next_bookmark = (float("inf") if next_bookmark >= pre_deadline
                                 else min(now + state.bookmark_interval, pre_deadline))
                continue
            wait = min(deadline, next_bookmark if bookmarks else deadline) - now
            try:
                live = await asyncio.wait_for(watcher.queue.get(), timeout=max(0.0, min(wait, 1.0)))
            except TimeoutError:
                continue
            if live is None:
                break
            frame_type = _watch_frame_type(live, matches)
            if frame_type is not None:
                await resp.write(frame(frame_type, show(live.obj)))
        await resp.write_eof()
    except ConnectionResetError:
        pass
    finally:
        state.watchers[rt.key].discard(watcher)
    return resp


def _watch_frame_type(change: Change, matches: Callable[[JSON | None], bool]) -> str | None:
    """The frame a filtered watcher sees: leaving the selection is a DELETED, entering an ADDED."""
    prev_in = matches(change.prev)
    if change.type == "DELETED":
        return "DELETED" if prev_in else None
    cur_in = matches(change.obj)
    if cur_in:
        return "MODIFIED" if prev_in else "ADDED"
    return "DELETED" if prev_in else None


def _bookmark_object(rt: ResourceType, rv: int) -> JSON:
    obj: JSON = {"kind": rt.kind, "apiVersion": rt.group_version,
                 "metadata": {"resourceVersion": str(rv), "creationTimestamp": None}}
    if rt is EVENTS:
        obj.update({"involvedObject": {}, "source": {}, "firstTimestamp": None, "lastTimestamp": None,
                    "eventTime": None, "reportingComponent": "", "reportingInstance": ""})
    elif rt is SECRETS:
        pass
    elif rt is LEASES:
        obj["spec"] = {}
    elif rt.custom:
        obj["metadata"] = {"resourceVersion": str(rv)}
    return obj
