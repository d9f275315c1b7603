"""The objects of one simulated cluster, with the API server's storage semantics.

Guarantees: ``resourceVersion`` is one cluster-wide counter bumped on every committed write and
on no no-op write; a stale ``resourceVersion`` (in a PUT body or a patch) is a 409 Conflict;
``stringData`` is folded into ``data``; ``managedFields`` are kept per field manager;
``metadata.generation`` moves only with spec changes of custom resources; time fields are parsed
as Go parses them. Every committed change is appended to the per-type watch history (bounded by
``history_size``), fanned out to live watchers and to in-process listeners, in commit order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.kube import eventsv1
from sandbox.kube.errors import (
    ApiError,
    DecodeError,
    FieldError,
    already_exists,
    bad_request,
    bad_rv,
    conflict,
    invalid,
    invalid_for,
    not_found,
    precondition_failed,
)
from sandbox.kube.gotime import GoTimeError, format_micro_time, format_time, parse_go_time
from sandbox.kube.managed import fields_v1, owned_paths, paths_from_fields_v1
from sandbox.kube.patch import (
    BadJsonPatch,
    JsonPatchError,
    go_json_kind,
    go_map_repr,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from sandbox.kube.types import (
    BY_GV_PLURAL,
    EVENTS,
    EVENTS_V1,
    JOBS,
    JSON,
    LEASES,
    NAMESPACES,
    RESOURCE_TYPES,
    SECRETS,
    Listener,
    ResourceType,
)

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"


@dataclass
class Change:
    rv: int
    type: str                 # ADDED | MODIFIED | DELETED
    rt: ResourceType
    namespace: str
    obj: JSON
    prev: JSON | None


@dataclass(eq=False)
class Watcher:
    rt: ResourceType
    namespace: str | None
    queue: asyncio.Queue[Change | None] = field(default_factory=asyncio.Queue)


class Store:
    """Objects, resourceVersions, watch history and the generic create/update/patch/delete.

    ``event_ttl``: the API server's ``--event-ttl`` (default 1h): an Event is deleted that long
    after its last write. ``history_size``: how many changes per resource type a watch can
    resume from before it gets 410 Gone.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, event_ttl: float = 3600.0,
                 history_size: int = 10_000) -> None:
        self.clock = clock
        self.event_ttl = event_ttl
        self.history_size = history_size
        self._rv = 0
        self.objects: dict[str, dict[tuple[str, str], JSON]] = {rt.key: {} for rt in RESOURCE_TYPES}
        self.history: dict[str, deque[Change]] = {rt.key: deque() for rt in RESOURCE_TYPES}
        self.evicted: dict[str, bool] = {rt.key: False for rt in RESOURCE_TYPES}
        self.watchers: dict[str, set[Watcher]] = {rt.key: set() for rt in RESOURCE_TYPES}
        self._event_expiry: dict[tuple[str, str], float] = {}
        self._listeners: list[Listener] = []
        # the etcd revision Events were compacted to (Events are not watch-cached: see watch.py)
        self.compacted_rv = 0

    @property
    def resource_version(self) -> int:
        return self._rv

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(type, resource_type, object)`` after every committed change."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def get_object(self, group_version: str, resource: str, ns: str, name: str) -> JSON | None:
        rt = BY_GV_PLURAL.get((group_version, resource))
        if rt is EVENTS_V1:
            core = self.get_object("v1", "events", ns, name)
            return eventsv1.to_v1(core) if core is not None else None
        if rt is None:
            return None
        obj = self.objects[rt.key].get((ns if rt.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, group_version: str, resource: str, ns: str | None = None) -> list[JSON]:
        rt = BY_GV_PLURAL[(group_version, resource)]
        if rt is EVENTS_V1:
            return [eventsv1.to_v1(o) for o in self.list_objects("v1", "events", ns)]
        return [copy.deepcopy(o) for (ons, _), o in sorted(self.objects[rt.key].items())
                if ns is None or ons == ns]

    def compact(self) -> None:
        """Drop all watch history (like an etcd compaction): older resourceVersions now get 410."""
        for key, hist in self.history.items():
            if hist:
                self.evicted[key] = True
            hist.clear()
        self.compacted_rv = self._rv

    def compact_events_to(self, rv: int) -> None:
        """An etcd compaction at revision ``rv`` as Event watches see it (they are served from etcd)."""
        self.compacted_rv = max(self.compacted_rv, rv)
        hist = self.history[EVENTS.key]
        while hist and hist[0].rv < self.compacted_rv:
            hist.popleft()
            self.evicted[EVENTS.key] = True

    def _now(self) -> str:
        return format_time(self.clock())

    def create(self, rt: ResourceType, ns: str, body: JSON, *, manager: str, operation: str = "Update",
               dry_run: bool = False) -> JSON:
        obj = self._decode(rt, body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", ns):
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
            if (("", ns)) not in self.objects[NAMESPACES.key]:
                raise not_found(NAMESPACES, ns)
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = meta["generateName"] + "".join(secrets.choice(_GENERATE_CHARS) for _ in range(5))
            meta["name"] = name
        self._validate(rt, obj, None)
        store = self.objects[rt.key]
        if (ns if rt.namespaced else "", name) in store:
            raise already_exists(rt, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = self._now()
        if rt.custom or rt is JOBS:
            meta["generation"] = 1
        if rt is JOBS:
            _default_job(obj, meta["uid"], name)
        if rt.status_subresource:
            obj.pop("status", None)
        return self._commit(rt, ns if rt.namespaced else "", name, obj, None, manager=manager,
                            operation=operation, subresource="", dry_run=dry_run)

    def update(self, rt: ResourceType, ns: str, name: str, body: JSON, *, manager: str,
               operation: str = "Update", subresource: str = "", dry_run: bool = False,
               precondition_rv: str | None = None) -> JSON:
        key_ns = ns if rt.namespaced else ""
        current = self.objects[rt.key].get((key_ns, name))
        if current is None:
            raise not_found(rt, name)
        obj = self._decode(rt, body)
        meta = obj.setdefault("metadata", {})
        if meta.get("name") not in (None, name):
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on "
                              f"the URL ({name})")
        if rt.namespaced and meta.get("namespace") not in (None, "", ns):
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")
        rv = precondition_rv if precondition_rv is not None else (meta.get("resourceVersion") or "")
        if rv == "" and not rt.unconditional_update and precondition_rv is None:
            raise invalid_for(rt, name, [FieldError("metadata.resourceVersion", "Invalid value",
                                                     "must be specified for an update", 0, True, "0x0")])
        if rv and rv != current["metadata"]["resourceVersion"]:
            if not rv.isdigit():
                raise bad_rv(rv)
            raise conflict(rt, name)
        old_meta = current["metadata"]
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
        else:
            new = obj
            for k in ("uid", "creationTimestamp", "generation"):
                if k in old_meta:
                    meta[k] = old_meta[k]
                else:
                    meta.pop(k, None)
            meta["name"] = name
            if rt.namespaced:
                meta["namespace"] = ns
            if rt.status_subresource:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            self._validate(rt, new, current)
            if rt.custom and spec_part(new) != spec_part(current):
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return self._commit(rt, key_ns, name, new, current, manager=manager, operation=operation,
                            subresource=subresource, dry_run=dry_run)

    def patch(self, rt: ResourceType, ns: str, name: str, raw: bytes, content_type: str, *, manager: str,
              subresource: str = "", dry_run: bool = False,
              view: tuple[Callable[[JSON], JSON], Callable[[JSON], JSON]] | None = None) -> JSON:
        """Apply a patch; with ``view=(out, in)`` the patch is applied to the served version of the
        object (``out(stored)``) and the result converted back (``in``) before the update."""
        ctype = content_type.split(";", maxsplit=1)[0].strip().lower()
        allowed = ["application/json-patch+json", "application/merge-patch+json"]
        if not rt.custom:
            allowed.append("application/strategic-merge-patch+json")
        if ctype not in allowed:
            accepted = ", ".join([*allowed, "application/apply-patch+yaml"])
            raise ApiError(415, "UnsupportedMediaType",
                           "the body of the request was in an unknown format - accepted media types "
                           f"include: {accepted}")
        key_ns = ns if rt.namespaced else ""
        current = self.objects[rt.key].get((key_ns, name))
        if current is None:
            raise not_found(rt, name)
        try:
            patch_doc = json.loads(raw or b"null")
        except ValueError as exc:
            raise bad_request(f"error decoding patch: {exc}") from exc
        base = copy.deepcopy(current)
        base.setdefault("apiVersion", rt.group_version)
        base.setdefault("kind", rt.kind)
        if view is not None:
            base = view[0](base)
        if ctype == "application/json-patch+json":
            try:
                patched = json_patch(base, patch_doc)
            except BadJsonPatch as exc:
                raise bad_request(str(exc)) from exc
            except JsonPatchError as exc:
                raise ApiError(422, "Invalid", str(exc)) from exc
            shown = json.dumps(patched, separators=(",", ":"))
        else:
            if not isinstance(patch_doc, dict):
                raise bad_request("json: cannot unmarshal " + go_json_kind(patch_doc)
                                  + " into Go value of type map[string]interface {}")
            if ctype == "application/merge-patch+json":
                patched = merge_patch(base, patch_doc)
                shown = json.dumps(patched, separators=(",", ":"))
            else:
                patched = strategic_merge_patch(base, patch_doc)
                shown = go_map_repr(patch_doc)
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched object is not a JSON object")
        if view is not None:
            patched = view[1](patched)
        patched_meta = patched.get("metadata") or {}
        rv = str(patched_meta.get("resourceVersion") or "")
        try:
            self._decode(rt, patched)
        except DecodeError as exc:
            raise invalid("", "", [FieldError("patch", "Invalid value", str(exc), shown, True)]) from exc
        # a resourceVersion in the patch is a precondition; none = last writer wins
        patched.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise conflict(rt, name)
        return self.update(rt, ns, name, patched, manager=manager, subresource=subresource, dry_run=dry_run,
                           precondition_rv="")

    def delete(self, rt: ResourceType, ns: str, name: str, *, precondition_rv: str = "",
               precondition_uid: str = "", dry_run: bool = False) -> JSON:
        key_ns = ns if rt.namespaced else ""
        current = self.objects[rt.key].get((key_ns, name))
        if current is None:
            raise not_found(rt, name)
        if precondition_uid and precondition_uid != current["metadata"].get("uid"):
            raise precondition_failed(rt, name, f"UID in precondition: {precondition_uid}, UID in object "
                                           f"meta: {current['metadata'].get('uid')}")
        if precondition_rv and precondition_rv != current["metadata"]["resourceVersion"]:
            raise precondition_failed(rt, name, f"ResourceVersion in precondition: {precondition_rv}, "
                                           "ResourceVersion in object meta: "
                                           f"{current['metadata']['resourceVersion']}")
        if dry_run:
            return copy.deepcopy(current)
        del self.objects[rt.key][(key_ns, name)]
        if rt is EVENTS:
            self._event_expiry.pop((key_ns, name), None)
        self._rv += 1
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._record(Change(self._rv, "DELETED", rt, key_ns, gone, copy.deepcopy(current)))
        return gone

    def _commit(self, rt: ResourceType, ns: str, name: str, new: JSON, old: JSON | None, *, manager: str,
                operation: str, subresource: str, dry_run: bool) -> JSON:
        new = copy.deepcopy(new)
        new["apiVersion"] = rt.group_version
        new["kind"] = rt.kind
        meta = new["metadata"]
        meta["managedFields"] = self._managed_fields(rt, new, old, manager=manager, operation=operation,
                                                     subresource=subresource)
        if old is not None and without_volatile(new) == without_volatile(old):
            return copy.deepcopy(old)  # a no-op write: no new resourceVersion, no watch event
        if dry_run:
            meta["resourceVersion"] = old["metadata"]["resourceVersion"] if old else ""
            return new
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self.objects[rt.key][(ns, name)] = new
        if rt is EVENTS:
            self._event_expiry[(ns, name)] = self.clock() + self.event_ttl
        self._record(Change(self._rv, "ADDED" if old is None else "MODIFIED", rt, ns, copy.deepcopy(new),
                             copy.deepcopy(old) if old is not None else None))
        return copy.deepcopy(new)

    def _record(self, change: Change) -> None:
        hist = self.history[change.rt.key]
        hist.append(change)
        while len(hist) > self.history_size:
            hist.popleft()
            self.evicted[change.rt.key] = True
        for w in self.watchers[change.rt.key]:
            if w.namespace is None or w.namespace == change.namespace:
                w.queue.put_nowait(change)
        for listener in list(self._listeners):
            listener(change.type, change.rt, change.obj)

    def _managed_fields(self, rt: ResourceType, new: JSON, old: JSON | None, *, manager: str, operation: str,
                        subresource: str) -> list[JSON]:
        entries: list[JSON] = copy.deepcopy((old or {}).get("metadata", {}).get("managedFields") or [])
        new_paths = {**owned_paths(new, rt, ""), **owned_paths(new, rt, "status")} \
            if rt.status_subresource else owned_paths(new, rt, "")
        old_paths = ({**owned_paths(old, rt, ""), **owned_paths(old, rt, "status")}
                     if rt.status_subresource else owned_paths(old, rt, "")) if old is not None else {}
        mine = owned_paths(new, rt, subresource)
        if operation == "Apply":
            changed = set(mine)
        else:
            changed = {p for p, v in mine.items() if p not in old_paths or old_paths[p] != v}
        result: list[JSON] = []
        found = False
        for e in entries:
            paths = paths_from_fields_v1(e.get("fieldsV1") or {})
            is_me = (e.get("manager") == manager and e.get("operation") == operation
                     and e.get("subresource", "") == subresource)
            if is_me:
                found = True
                paths = (paths | changed) if operation != "Apply" else changed
                e["time"] = self._now()
            else:
                paths -= changed
            paths = {p for p in paths if p in new_paths}
            if paths:
                e["fieldsV1"] = fields_v1(paths)
                result.append(e)
        if not found and changed:
            entry: JSON = {"manager": manager, "operation": operation, "apiVersion": rt.group_version,
                           "time": self._now(), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(changed)}
            if subresource:
                entry["subresource"] = subresource
            result.append(entry)
        return result

    # -- decoding and validation ---------------------------------------------------------------

    def _decode(self, rt: ResourceType, body: JSON) -> JSON:
        """What the Go decoder would do with the body: time fields parsed, base64 decoded."""
        if not isinstance(body, dict):
            raise DecodeError("json: cannot unmarshal " + go_json_kind(body) + f" into Go value of type "
                               f"{rt.kind}")
        obj = copy.deepcopy(body)
        if obj.get("apiVersion") not in (None, "", rt.group_version):
            raise bad_request(f"the API version in the data ({obj['apiVersion']}) does not match the "
                              f"expected API version ({rt.group_version})")
        if obj.get("kind") not in (None, "", rt.kind):
            raise bad_request(f"the kind in the data ({obj['kind']}) does not match the expected kind "
                              f"({rt.kind})")
        for path in rt.micro_time_fields:
            normalise_time(obj, path, micro=True)
        for path in rt.time_fields:
            normalise_time(obj, path, micro=False)
        if rt is SECRETS:
            data = obj.get("data") or {}
            for v in data.values():
                try:
                    base64.b64decode(v or "", validate=True)
                except (binascii.Error, TypeError) as exc:
                    raise DecodeError(f"illegal base64 data at input byte {bad_b64_offset(v)}") from exc
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                data = dict(data)
                for k, v in string_data.items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
                obj["data"] = data
            obj.setdefault("type", "Opaque")
        return obj

    def _validate(self, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        meta = obj.get("metadata") or {}
        name = meta.get("name") or ""
        errors: list[FieldError] = []
        if not name:
            errors.append(FieldError("metadata.name", "Required value", "name or generateName is required"))
        elif old is None and rt is not EVENTS and not _DNS1123_SUBDOMAIN.match(name):
            errors.append(FieldError(
                "metadata.name", "Invalid value",
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
                "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
                "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                name, True))
        if rt is SECRETS:
            for k in sorted(obj.get("data") or {}):
                if not _CONFIG_KEY.match(k):
                    errors.append(FieldError(
                        f"data[{k}]", "Invalid value",
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
                        "'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
                        "'[-._a-zA-Z0-9]+')", k, True))
            if old is not None and obj.get("type") != old.get("type"):
                errors.append(FieldError("type", "Invalid value", "field is immutable", obj.get("type"),
                                         True))
        if rt is EVENTS:
            inv_ns = (obj.get("involvedObject") or {}).get("namespace")
            if inv_ns and inv_ns != meta.get("namespace"):
                errors.append(FieldError("involvedObject.namespace", "Invalid value",
                                         "does not match event.namespace", inv_ns, True))
            if obj.get("type") not in (None, "", "Normal", "Warning"):
                errors.append(FieldError("type", "Unsupported value", 'supported values: "Normal", "Warning"',
                                         obj.get("type"), True))
        if rt is LEASES:
            duration = (obj.get("spec") or {}).get("leaseDurationSeconds")
            if duration is not None and (not isinstance(duration, int) or duration <= 0):
                errors.append(FieldError("spec.leaseDurationSeconds", "Invalid value",
                                         "must be greater than 0", duration, True))
        if errors:
            raise invalid_for(rt, name, errors)


def spec_part(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def without_volatile(obj: JSON) -> JSON:
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    meta.pop("resourceVersion", None)
    for e in meta.get("managedFields") or []:
        e.pop("time", None)
    return out


def normalise_time(obj: JSON, path: tuple[str, ...], *, micro: bool) -> None:
    cur: Any = obj
    for p in path[:-1]:
        cur = cur.get(p) if isinstance(cur, dict) else None
    if not isinstance(cur, dict) or cur.get(path[-1]) is None:
        return
    value = cur[path[-1]]
    if not isinstance(value, str):
        raise DecodeError(f"json: cannot unmarshal {go_json_kind(value)} into Go value of type string")
    try:
        parsed = parse_go_time(value, micro=micro)
    except GoTimeError as exc:
        raise DecodeError(str(exc)) from exc
    ts = parsed.timestamp()
    cur[path[-1]] = format_micro_time(ts) if micro else format_time(int(ts))


def bad_b64_offset(value: Any) -> int:
    s = str(value)
    for i, c in enumerate(s):
        if not (c.isascii() and (c.isalnum() or c in "+/=")):
            return i
    return len(s) - (len(s) % 4 or 4)


def _default_job(job: JSON, uid: str, name: str) -> None:
    """What the API server's Job strategy and defaulting add on create (batch/v1, Kubernetes 1.30):
    the controller-uid selector and pod labels, and the defaulted spec fields."""
    spec = job.setdefault("spec", {})
    labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
              "controller-uid": uid, "job-name": name}
    if not spec.get("manualSelector"):
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}
    for key, value in (("parallelism", 1), ("completions", 1), ("backoffLimit", 6),
                       ("completionMode", "NonIndexed"), ("suspend", False), ("podReplacementPolicy",
                                                                              "TerminatingOrFailed")):
        spec.setdefault(key, value)
