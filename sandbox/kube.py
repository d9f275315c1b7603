"""One simulated Kubernetes API server per cluster, faithful enough for the real client.

patrol talks to Kubernetes only through the official ``kubernetes`` Python client (31.x), so the
sandbox must serve what that client sends and parses, with the API server's real semantics:
``resourceVersion`` as one cluster-wide counter bumped on every write (and *not* on a no-op
write), 409 Conflict on a stale ``resourceVersion`` (in a PUT body or inside a patch body),
the three PATCH content types, ``stringData`` folded into ``data``, ``managedFields`` per field
manager (so a Flux-managed Secret can be told apart), ``metadata.generation`` bumped only by
spec changes on custom resources (KEDA's scaler cache is keyed on it), Lease ``MicroTime``
parsing exactly as Go's ``time.Parse`` does it, Events aggregated the way client-go's recorder
does and expired after a TTL, and list/watch with field selectors, bookmarks and the 410
``ERROR`` frame when a watch asks for history that has been compacted away.

Errors are ``Status`` objects with the real reasons and message formats (apimachinery
``errors.New*``), because patrol's adapter maps them to its own error classes.

Everything runs on the sandbox's single event loop: the sync methods (``put_secret``,
``emit_event``, ...) are for the scenario code and the simulated actors on that loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import contextlib
import copy
import json
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from sandbox.http import FaultTable, RequestLog, middlewares

JSON = dict[str, Any]
Listener = Callable[[str, "ResourceType", JSON], None]

SERVER_VERSION: JSON = {
    "major": "1", "minor": "30", "gitVersion": "v1.30.3",
    "gitCommit": "6fc0a69044f1ac4c13841ec4391224a2df241460", "gitTreeState": "clean",
    "buildDate": "2024-07-16T23:48:12Z", "goVersion": "go1.22.5", "compiler": "gc",
    "platform": "linux/amd64",
}

# ---------------------------------------------------------------------------------------------
# Go time parsing (metav1.Time / metav1.MicroTime and encoding/json time.Time)
# ---------------------------------------------------------------------------------------------

RFC3339 = "2006-01-02T15:04:05Z07:00"
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"


class GoTimeError(ValueError):
    """A ``time.ParseError`` with Go's exact message text."""


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_error(layout: str, value: str, layout_elem: str, value_elem: str,
                 message: str = "") -> GoTimeError:
    if message:
        return GoTimeError(f"parsing time {_go_quote(value)}{message}")
    return GoTimeError(
        f"parsing time {_go_quote(value)} as {_go_quote(layout)}: cannot parse "
        f"{_go_quote(value_elem)} as {_go_quote(layout_elem)}"
    )


def _getnum(s: str, fixed: bool) -> tuple[int, str] | None:
    if not s[:1].isdigit() or not s[:1].isascii():
        return None
    if not (len(s) > 1 and s[1].isascii() and s[1].isdigit()):
        if fixed:
            return None
        return int(s[0]), s[1:]
    return int(s[:2]), s[2:]


def parse_go_time(value: str, *, micro: bool) -> datetime:
    """``time.Parse(RFC3339, v)`` or ``time.Parse(RFC3339Micro, v)``, errors worded as Go does.

    RFC3339 tolerates any fraction after the seconds; RFC3339Micro demands exactly six digits
    (that is why a Lease ``renewTime`` from ``datetime.isoformat()`` can be refused).
    """
    layout = RFC3339_MICRO if micro else RFC3339
    rest = value
    # (prefix literal, std element) pairs of the two layouts
    steps: list[tuple[str, str]] = [
        ("", "2006"), ("-", "01"), ("-", "02"), ("T", "15"), (":", "04"), (":", "05")]
    if micro:
        steps.append(("", ".000000"))
    steps.append(("", "Z07:00"))
    nums: dict[str, int] = {}
    nsec = 0
    offset = 0
    for prefix, std in steps:
        for ch in prefix:
            if not rest or rest[0] != ch:
                raise _parse_error(layout, value, prefix, rest)
            rest = rest[1:]
        hold = rest
        bad = False
        range_err = ""
        if std == "2006":
            if len(rest) < 4 or not rest[:4].isascii() or not rest[:4].isdigit():
                bad = True
            else:
                nums["year"], rest = int(rest[:4]), rest[4:]
        elif std in ("01", "02", "15", "04", "05"):
            got = _getnum(rest, fixed=std != "15")
            if got is None:
                bad = True
            else:
                n, rest = got
                name, lo, hi = {"01": ("month", 1, 12), "02": ("day", 0, 31), "15": ("hour", 0, 23),
                                "04": ("minute", 0, 59), "05": ("second", 0, 59)}[std]
                nums[name] = n
                if not lo <= n <= hi:
                    range_err = name
                if std == "05" and not micro and len(rest) >= 2 and rest[0] in ".," and rest[1].isdigit():
                    n_end = 2
                    while n_end < len(rest) and rest[n_end].isascii() and rest[n_end].isdigit():
                        n_end += 1
                    digits = rest[1:n_end]
                    nsec = int((digits + "000000000")[:9])
                    rest = rest[n_end:]
        elif std == ".000000":
            if len(rest) < 7 or rest[0] not in ".," or not rest[1:7].isascii() or not rest[1:7].isdigit():
                bad = True
            else:
                nsec, rest = int(rest[1:7]) * 1000, rest[7:]
        elif rest[:1] == "Z":
            rest = rest[1:]
        elif len(rest) < 6 or rest[3] != ":":
            bad = True
        else:
            sign, hh, mm, rest = rest[0], rest[1:3], rest[4:6], rest[6:]
            h = _getnum(hh, True)
            m = _getnum(mm, True)
            if h is None or m is None or sign not in "+-":
                bad = True
            else:
                offset = (h[0] * 60 + m[0]) * 60 * (-1 if sign == "-" else 1)
        if range_err:
            raise _parse_error(layout, value, std, rest, f": {range_err} out of range")
        if bad:
            raise _parse_error(layout, value, std, hold)
    if rest:
        raise _parse_error(layout, value, "", rest, f": extra text: {_go_quote(rest)}")
    year, month, day = nums["year"], nums["month"], nums["day"]
    if day < 1 or day > calendar.monthrange(year, month)[1]:
        raise _parse_error(layout, value, "", rest, ": day out of range")
    tz = timezone(timedelta(seconds=offset))
    return datetime(year, month, day, nums["hour"], nums["minute"], nums["second"], nsec // 1000, tzinfo=tz)


def format_time(t: float) -> str:
    """metav1.Time as the API server writes it: RFC3339, whole seconds, UTC ``Z``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(t: float) -> str:
    """metav1.MicroTime as the API server writes it: exactly six fractional digits, ``Z``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------
# Resource types served
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool = True
    custom: bool = False                 # a CRD: unstructured, no strategic merge, tracks generation
    status_subresource: bool = False
    field_labels: frozenset[str] = frozenset({"metadata.name", "metadata.namespace"})
    micro_time_fields: tuple[tuple[str, ...], ...] = ()
    time_fields: tuple[tuple[str, ...], ...] = ()
    unconditional_update: bool = True    # PUT without resourceVersion allowed
    short_names: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def key(self) -> str:
        return f"{self.group_version}/{self.plural}"


_EVENT_FIELDS = frozenset({
    "metadata.name", "metadata.namespace", "involvedObject.kind", "involvedObject.namespace",
    "involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion",
    "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "reportingComponent",
    "source", "type",
})

NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", "namespace", namespaced=False,
                          field_labels=frozenset({"metadata.name", "status.phase"}), short_names=("ns",))
SECRETS = ResourceType("", "v1", "secrets", "Secret", "secret",
                       field_labels=frozenset({"metadata.name", "metadata.namespace", "type"}))
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", "configmap", short_names=("cm",))
EVENTS = ResourceType("", "v1", "events", "Event", "event", field_labels=_EVENT_FIELDS,
                      micro_time_fields=(("eventTime",), ("series", "lastObservedTime")),
                      time_fields=(("firstTimestamp",), ("lastTimestamp",)), short_names=("ev",))
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease", "lease",
                      micro_time_fields=(("spec", "acquireTime"), ("spec", "renewTime")))
SCALEDJOBS = ResourceType("keda.sh", "v1alpha1", "scaledjobs", "ScaledJob", "scaledjob", custom=True,
                          status_subresource=True, unconditional_update=False, short_names=("sj",))
SCALEDOBJECTS = ResourceType("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject", "scaledobject",
                             custom=True, status_subresource=True, unconditional_update=False,
                             short_names=("so",))
TRIGGERAUTHENTICATIONS = ResourceType("keda.sh", "v1alpha1", "triggerauthentications",
                                      "TriggerAuthentication", "triggerauthentication", custom=True,
                                      unconditional_update=False, short_names=("ta", "triggerauth"))

RESOURCE_TYPES: tuple[ResourceType, ...] = (
    NAMESPACES, SECRETS, CONFIGMAPS, EVENTS, LEASES, SCALEDJOBS, SCALEDOBJECTS, TRIGGERAUTHENTICATIONS,
)
_BY_GV_PLURAL: dict[tuple[str, str], ResourceType] = {(r.group_version, r.plural): r for r in RESOURCE_TYPES}

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"

# ---------------------------------------------------------------------------------------------
# Status errors (apimachinery errors.New*)
# ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JSON:
        body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": self.message, "reason": self.reason}
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(rt: ResourceType, name: str) -> JSON:
    d: JSON = {"name": name}
    if rt.group:
        d["group"] = rt.group
    d["kind"] = rt.plural
    return d


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f"{rt.group_resource} {json.dumps(name)} not found", _details(rt, name))


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409, "Conflict",
        f"Operation cannot be fulfilled on {rt.group_resource} {json.dumps(name)}: the object has been "
        "modified; please apply your changes to the latest version and try again",
        _details(rt, name),
    )


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f"{rt.group_resource} {json.dumps(name)} already exists",
                    _details(rt, name))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


@dataclass(frozen=True)
class FieldError:
    """A ``field.Error``: ``<field>: <Type>: <value>: <detail>``."""

    field: str
    type: str           # "Invalid value", "Required value", "Forbidden", ...
    detail: str = ""
    value: Any = None
    has_value: bool = False
    rendered: str | None = None      # the value exactly as Go prints it, when not a string


    @property
    def cause_reason(self) -> str:
        return {"Invalid value": "FieldValueInvalid", "Required value": "FieldValueRequired",
                "Forbidden": "FieldValueForbidden", "Unsupported value": "FieldValueNotSupported"
                }.get(self.type, "FieldValueInvalid")

    def body(self) -> str:
        s = self.type
        if self.has_value:
            v = self.value
            rendered = self.rendered if self.rendered is not None else (
                json.dumps(v) if isinstance(v, str) else str(v))
            s += f": {rendered}"
        if self.detail:
            s += f": {self.detail}"
        return s

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def invalid(qualified_kind: str, name: str, errors: Sequence[FieldError], group: str = "",
            kind: str = "") -> ApiError:
    agg = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    details: JSON = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if kind:
        details["kind"] = kind
    details["causes"] = [{"reason": e.cause_reason, "message": e.body(), "field": e.field} for e in errors]
    return ApiError(422, "Invalid", f"{qualified_kind} {json.dumps(name)} is invalid: {agg}", details)


def _invalid_for(rt: ResourceType, name: str, errors: Sequence[FieldError]) -> ApiError:
    return invalid(rt.qualified_kind, name, errors, group=rt.group, kind=rt.kind)


class _DecodeError(Exception):
    """The body could not be turned into a typed object (Go's decode step)."""


# ---------------------------------------------------------------------------------------------
# Patches: RFC 7386 merge patch, strategic merge patch, RFC 6902 JSON patch
# ---------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch for the types served here (maps, scalars and atomic lists).

    Honours the ``$patch: replace|delete``, ``$retainKeys``, ``$deleteFromPrimitiveList/<f>`` and
    ignores ``$setElementOrder/<f>`` directives; the resources served here have no
    merge-keyed lists that a client patches, so every list is replaced whole.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "replace":
        target = {}
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = body.pop("$retainKeys", None)
    for k, v in body.items():
        if k.startswith("$setElementOrder/"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            if isinstance(result.get(name), list) and isinstance(v, list):
                result[name] = [x for x in result[name] if x not in v]
            continue
        if v is None:
            result.pop(k, None)
            continue
        merged = strategic_merge_patch(result.get(k), v)
        if merged is None:
            result.pop(k, None)
        else:
            result[k] = merged
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


class JsonPatchError(Exception):
    pass


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise JsonPatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, tokens: list[str], path: str) -> tuple[Any, str]:
    cur = doc
    for tok in tokens[:-1]:
        if isinstance(cur, dict) and tok in cur:
            cur = cur[tok]
        elif isinstance(cur, list) and tok.isdigit() and int(tok) < len(cur):
            cur = cur[int(tok)]
        else:
            raise JsonPatchError(f"doc is missing path: {json.dumps(path)}: missing value")
    return cur, tokens[-1]


def _get(doc: Any, path: str) -> Any:
    cur = doc
    for tok in _pointer(path):
        if isinstance(cur, dict) and tok in cur:
            cur = cur[tok]
        elif isinstance(cur, list) and tok.isdigit() and int(tok) < len(cur):
            cur = cur[int(tok)]
        else:
            raise JsonPatchError(f"doc is missing path: {json.dumps(path)}: missing value")
    return cur


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return copy.deepcopy(value)
    parent, last = _container(doc, tokens, path)
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), copy.deepcopy(value))
        else:
            raise JsonPatchError(f"Unable to access invalid index: {last}: invalid index referenced")
    else:
        raise JsonPatchError(f"doc is missing path: {json.dumps(path)}: missing value")
    return doc


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise JsonPatchError("unable to remove the whole document")
    parent, last = _container(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise JsonPatchError(
            f"Unable to remove nonexistent key: {last}: missing value" if isinstance(parent, dict)
            else f"doc is missing path: {json.dumps(path)}: missing value")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 (``add``, ``remove``, ``replace``, ``move``, ``copy``, ``test``)."""
    if not isinstance(ops, list):
        raise _BadJsonPatch("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise _BadJsonPatch("Unexpected kind: <nil>")
        kind = op["op"]
        path = op.get("path")
        if not isinstance(path, str):
            raise JsonPatchError(f"{kind} operation does not apply: doc is missing path: <nil>")
        if kind == "add":
            doc = _add(doc, path, op.get("value"))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            doc = _remove(doc, path) if _pointer(path) else doc
            doc = _add(doc, path, op.get("value"))
        elif kind in ("move", "copy"):
            src = op.get("from")
            if not isinstance(src, str):
                raise JsonPatchError(f"{kind} operation does not apply: doc is missing from path")
            value = copy.deepcopy(_get(doc, src))
            if kind == "move":
                doc = _remove(doc, src)
            doc = _add(doc, path, value)
        elif kind == "test":
            try:
                current = _get(doc, path)
            except JsonPatchError:
                current = None
            if current != op.get("value"):
                raise JsonPatchError(f"testing value {path} failed: test failed")
        else:
            raise _BadJsonPatch(f"Unexpected kind: {kind}")
    return doc


class _BadJsonPatch(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FieldTerm:
    key: str
    op: str       # "=" or "!="
    value: str


def _split_unescaped(s: str, sep: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur += s[i:i + 2]
            i += 2
            continue
        if c == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    return parts


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def parse_field_selector(selector: str, rt: ResourceType) -> list[_FieldTerm]:
    """fields.ParseSelector + the per-type field label conversion (400 on unknown labels)."""
    terms: list[_FieldTerm] = []
    if not selector.strip():
        return terms
    for raw in _split_unescaped(selector, ","):
        m = re.match(r"^(?P<k>[^=!]+?)\s*(?P<op>==|!=|=)(?P<v>.*)$", raw.strip())
        if not m:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{raw}'")
        key = m.group("k").strip()
        if key not in rt.field_labels:
            raise bad_request(f'field label not supported: {key}')
        terms.append(_FieldTerm(key, "!=" if m.group("op") == "!=" else "=", _unescape(m.group("v"))))
    return terms


def _field_value(obj: JSON, key: str) -> str:
    if key == "source":
        return str((obj.get("source") or {}).get("component") or "")
    if key == "reportingComponent":
        return str(obj.get("reportingComponent") or "")
    cur: Any = obj
    for part in key.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def _fields_match(obj: JSON, terms: Iterable[_FieldTerm]) -> bool:
    for t in terms:
        v = _field_value(obj, t.key)
        if (v == t.value) != (t.op == "="):
            return False
    return True


@dataclass(frozen=True)
class _LabelReq:
    key: str
    op: str               # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()


def parse_label_selector(selector: str) -> list[_LabelReq]:
    reqs: list[_LabelReq] = []
    if not selector.strip():
        return reqs
    depth, cur, parts = 0, "", []
    for c in selector:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    parts.append(cur)
    for raw in (p.strip() for p in parts):
        m = re.match(r"^(?P<k>[A-Za-z0-9_./-]+)\s+(?P<op>in|notin)\s+\((?P<v>[^)]*)\)$", raw)
        if m:
            vals = tuple(v.strip() for v in m.group("v").split(",") if v.strip())
            reqs.append(_LabelReq(m.group("k"), m.group("op"), vals))
            continue
        m = re.match(r"^(?P<k>[A-Za-z0-9_./-]+)\s*(?P<op>==|!=|=)\s*(?P<v>[A-Za-z0-9_.-]*)$", raw)
        if m:
            reqs.append(_LabelReq(m.group("k"), "!=" if m.group("op") == "!=" else "=", (m.group("v"),)))
            continue
        m = re.match(r"^(?P<neg>!?)\s*(?P<k>[A-Za-z0-9_./-]+)$", raw)
        if m:
            reqs.append(_LabelReq(m.group("k"), "!" if m.group("neg") else "exists"))
            continue
        raise bad_request(f"unable to parse requirement: found '{raw}', expected: identifier")
    return reqs


def _labels_match(obj: JSON, reqs: Iterable[_LabelReq]) -> bool:
    labels: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    for r in reqs:
        present = r.key in labels
        v = labels.get(r.key)
        ok = {
            "=": present and v == r.values[0],
            "!=": not present or v != r.values[0],
            "in": present and v in r.values,
            "notin": not present or v not in r.values,
            "exists": present,
            "!": not present,
        }[r.op]
        if not ok:
            return False
    return True


def _parse_bool(value: str | None) -> bool:
    return value in ("1", "t", "T", "TRUE", "true", "True")


# ---------------------------------------------------------------------------------------------
# managedFields
# ---------------------------------------------------------------------------------------------

_META_SYSTEM = frozenset({"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                          "managedFields", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds",
                          "generateName"})
# maps whose owner also owns the map itself (the "." entry in fieldsV1)
_SET_MAP_PATHS = frozenset({("data",), ("binaryData",), ("metadata", "labels"), ("metadata", "annotations")})
_MAP = "<map>"


def _leaf_paths(obj: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if prefix in _SET_MAP_PATHS and isinstance(obj, dict):
        yield prefix, _MAP
        for k, v in obj.items():
            yield from _leaf_paths(v, (*prefix, k))
    elif isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from _leaf_paths(v, (*prefix, k))
    else:
        yield prefix, obj


def _owned_paths(obj: JSON, rt: ResourceType, subresource: str) -> dict[tuple[str, ...], Any]:
    """Field path -> value for the fields a manager can own (leaves, plus set-maps themselves)."""
    out: dict[tuple[str, ...], Any] = {}
    if subresource == "status":
        status = obj.get("status")
        if status is not None:
            out.update(_leaf_paths(status, ("status",)))
        return out
    for k, v in obj.items():
        if k in ("apiVersion", "kind") or (k == "status" and rt.status_subresource):
            continue
        if k == "metadata":
            for mk, mv in (v or {}).items():
                if mk not in _META_SYSTEM:
                    out.update(_leaf_paths(mv, ("metadata", mk)))
            continue
        out.update(_leaf_paths(v, (k,)))
    return out


def _fields_v1(paths: Iterable[tuple[str, ...]]) -> JSON:
    root: JSON = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
        if path in _SET_MAP_PATHS:
            node.setdefault(".", {})
    return root


def _paths_from_fields_v1(tree: JSON, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    if "." in tree and prefix:
        out.add(prefix)
    children = {k: v for k, v in tree.items() if k.startswith("f:")}
    if not children:
        if prefix:
            out.add(prefix)
        return out
    for k, v in children.items():
        out |= _paths_from_fields_v1(v if isinstance(v, dict) else {}, (*prefix, k[2:]))
    return out


# ---------------------------------------------------------------------------------------------
# Cluster state
# ---------------------------------------------------------------------------------------------


@dataclass
class _Change:
    rv: int
    type: str                 # ADDED | MODIFIED | DELETED
    rt: ResourceType
    namespace: str
    obj: JSON
    prev: JSON | None


@dataclass(eq=False)
class _Watcher:
    rt: ResourceType
    namespace: str | None
    queue: asyncio.Queue[_Change | None] = field(default_factory=asyncio.Queue)


@dataclass
class _RecorderEntry:
    """client-go EventCorrelator's memory of one event key (the 'logger' LRU)."""

    name: str
    count: int
    first: float
    last: float


@dataclass
class _SpamBucket:
    tokens: float
    at: float


class ClusterState:
    """The objects of one simulated cluster and the API server in front of them.

    ``event_ttl``: the API server's ``--event-ttl`` (default 1h): an Event is deleted that long
    after its last write. ``history_size``: how many changes per resource type a watch can
    resume from before it gets 410 Gone. ``bookmark_interval``: how often a watch with
    ``allowWatchBookmarks`` gets a BOOKMARK (the real server: about a minute, and ~2s before the
    watch times out). ``recorder_spam_filter``: ``(burst, seconds per token)`` to reproduce
    client-go's per-source+object event throttle (``(25, 300.0)`` in client-go); None = off.
    """

    def __init__(self, name: str, bearer_token: str, *, clock: Callable[[], float] = time.time,
                 event_ttl: float = 3600.0, history_size: int = 10_000, bookmark_interval: float = 60.0,
                 watch_default_timeout: float = 1800.0, reap_interval: float = 1.0,
                 recorder_spam_filter: tuple[int, float] | None = None) -> None:
        self.name = name
        self.bearer_token = bearer_token
        self._clock = clock
        self.event_ttl = event_ttl
        self.history_size = history_size
        self.bookmark_interval = bookmark_interval
        self.watch_default_timeout = watch_default_timeout
        self.reap_interval = reap_interval
        self.recorder_spam_filter = recorder_spam_filter
        self._rv = 0
        self._objects: dict[str, dict[tuple[str, str], JSON]] = {rt.key: {} for rt in RESOURCE_TYPES}
        self._history: dict[str, deque[_Change]] = {rt.key: deque() for rt in RESOURCE_TYPES}
        self._evicted: dict[str, bool] = {rt.key: False for rt in RESOURCE_TYPES}
        self._watchers: dict[str, set[_Watcher]] = {rt.key: set() for rt in RESOURCE_TYPES}
        self._event_expiry: dict[tuple[str, str], float] = {}
        self._recorder: dict[tuple[str, ...], _RecorderEntry] = {}
        self._spam: dict[tuple[str, ...], _SpamBucket] = {}
        self._listeners: list[Listener] = []
        self._closing = False
        self._reaper: asyncio.Task[None] | None = None
        self.port: int | None = None
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create_namespace(ns)

    # -- scenario / actor API ---------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(type, resource_type, object)`` after every committed change."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def create_namespace(self, ns: str) -> None:
        if (("", ns)) in self._objects[NAMESPACES.key]:
            return
        body = {"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        self.create(NAMESPACES, "", body, manager="kube-apiserver")

    def put_secret(self, ns: str, name: str, data: dict[str, str], *, labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None, field_manager: str = "kubectl",
                   type_: str = "Opaque") -> JSON:
        """Create or replace a Secret from plain-text values.

        ``field_manager="kustomize-controller"`` stands for Flux: the write is an ``Apply`` and the
        Secret gets Flux's ``kustomize.toolkit.fluxcd.io/name``/``namespace`` labels (defaulting
        to ``flux-system``) unless the caller gives them.
        """
        labels = dict(labels or {})
        operation = "Update"
        if field_manager == "kustomize-controller":
            operation = "Apply"
            labels.setdefault("kustomize.toolkit.fluxcd.io/name", "flux-system")
            labels.setdefault("kustomize.toolkit.fluxcd.io/namespace", "flux-system")
        meta: JSON = {"name": name, "namespace": ns}
        if labels:
            meta["labels"] = labels
        if annotations:
            meta["annotations"] = dict(annotations)
        body: JSON = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": type_,
                      "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        self.create_namespace(ns)
        if (ns, name) in self._objects[SECRETS.key]:
            return self.update(SECRETS, ns, name, body, manager=field_manager, operation=operation)
        return self.create(SECRETS, ns, body, manager=field_manager, operation=operation)

    def secret_value(self, ns: str, name: str, key: str) -> str | None:
        obj = self._objects[SECRETS.key].get((ns, name))
        if obj is None:
            return None
        raw = (obj.get("data") or {}).get(key)
        return None if raw is None else base64.b64decode(raw).decode()

    def put_scaledjob(self, ns: str, name: str, *, organization_url: str, pool_name: str, secret_name: str,
                      secret_key: str, polling_interval: int, max_replica_count: int = 10,
                      field_manager: str = "kubectl", rollout_strategy: str | None = None) -> JSON:
        """Create or replace an azure-pipelines ScaledJob shaped like a real agent deployment.

        ``rollout_strategy`` sets ``spec.rollout.strategy``; None leaves it out (KEDA's ``default``).
        """
        body: JSON = {
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob",
            "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/name": name}},
            "spec": scaledjob_spec(name=name, organization_url=organization_url, pool_name=pool_name,
                                   secret_name=secret_name, secret_key=secret_key,
                                   polling_interval=polling_interval, max_replica_count=max_replica_count,
                                   rollout_strategy=rollout_strategy),
        }
        self.create_namespace(ns)
        existing = self._objects[SCALEDJOBS.key].get((ns, name))
        if existing is not None:
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            return self.update(SCALEDJOBS, ns, name, body, manager=field_manager)
        created = self.create(SCALEDJOBS, ns, body, manager=field_manager)
        # what keda-operator's reconcile writes first (GetInitializedConditions)
        status = {"conditions": [{"type": t, "status": "Unknown"}
                                 for t in ("Ready", "Active", "Fallback", "Paused")]}
        return self.update(SCALEDJOBS, ns, name, {**created, "status": status}, manager="keda",
                           subresource="status")

    def get_object(self, group_version: str, resource: str, ns: str, name: str) -> JSON | None:
        rt = _BY_GV_PLURAL.get((group_version, resource))
        if rt is None:
            return None
        obj = self._objects[rt.key].get((ns if rt.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, group_version: str, resource: str, ns: str | None = None) -> list[JSON]:
        rt = _BY_GV_PLURAL[(group_version, resource)]
        return [copy.deepcopy(o) for (ons, _), o in sorted(self._objects[rt.key].items())
                if ns is None or ons == ns]

    def set_status_condition(  # noqa: PLR0917 - the shared sandbox interface
        self, resource: str, ns: str, name: str, type_: str, status: str, reason: str, message: str,
    ) -> None:
        """Set one ``status.conditions[]`` entry of a keda.sh object (a no-op write if unchanged)."""
        rt = _BY_GV_PLURAL[("keda.sh/v1alpha1", resource)]
        obj = self._objects[rt.key].get((ns, name))
        if obj is None:
            raise not_found(rt, name)
        new = copy.deepcopy(obj)
        conditions: list[JSON] = new.setdefault("status", {}).setdefault("conditions", [])
        entry = {"type": type_, "status": status, "reason": reason, "message": message}
        for i, c in enumerate(conditions):
            if c.get("type") == type_:
                conditions[i] = entry
                break
        else:
            conditions.append(entry)
        self.update(rt, ns, name, new, manager="keda", subresource="status")

    def set_status_fields(self, resource: str, ns: str, name: str, fields: JSON) -> None:
        """Merge ``fields`` into ``status`` of a keda.sh object (e.g. ``lastActiveTime``)."""
        rt = _BY_GV_PLURAL[("keda.sh/v1alpha1", resource)]
        obj = self._objects[rt.key].get((ns, name))
        if obj is None:
            raise not_found(rt, name)
        new = copy.deepcopy(obj)
        new["status"] = {**(new.get("status") or {}), **fields}
        self.update(rt, ns, name, new, manager="keda", subresource="status")

    def emit_event(  # noqa: PLR0917 - the shared sandbox interface
        self, ns: str, involved: JSON, reason: str, message: str, type_: str = "Warning",
        component: str = "scale-handler", *, manager: str = "keda",
    ) -> None:
        """Record an Event as client-go's ``record.EventRecorder`` would.

        Same source + involved object + type + reason + message → the existing Event's ``count``
        goes up and ``lastTimestamp`` moves (MODIFIED); otherwise a new Event named
        ``<involved name>.<unix nanos hex>`` is created (ADDED). With ``recorder_spam_filter`` on,
        throttled emissions only bump the recorder's in-memory count, as client-go does.
        """
        now = self._clock()
        inv = {k: involved[k] for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion",
                                        "fieldPath") if involved.get(k)}
        key = (component, "", inv.get("kind", ""), inv.get("namespace", ""), inv.get("name", ""),
               inv.get("fieldPath", ""), inv.get("uid", ""), inv.get("apiVersion", ""), type_, reason,
               message)
        entry = self._recorder.get(key)
        if entry is None:
            nanos = int(now * 1e9)
            while (ns, f"{inv.get('name', 'event')}.{nanos:x}") in self._objects[EVENTS.key]:
                nanos += 1      # a frozen test clock must not make two events share a name
            entry = _RecorderEntry(name=f"{inv.get('name', 'event')}.{nanos:x}", count=1, first=now, last=now)
            self._recorder[key] = entry
        else:
            entry.count += 1
            entry.last = now
        if not self._spam_allows(key[:8], now):
            return
        existing = self._objects[EVENTS.key].get((ns, entry.name))
        if existing is not None and entry.count > 1:
            new = copy.deepcopy(existing)
            new["count"] = entry.count
            new["lastTimestamp"] = format_time(now)
            self.update(EVENTS, ns, entry.name, new, manager=manager)
            return
        body: JSON = {
            "metadata": {"name": entry.name, "namespace": ns}, "involvedObject": inv, "reason": reason,
            "message": message, "source": {"component": component},
            "firstTimestamp": format_time(entry.first),
            "lastTimestamp": format_time(now), "count": entry.count, "type": type_, "eventTime": None,
            "reportingComponent": component, "reportingInstance": "",
        }
        self.create(EVENTS, ns, body, manager=manager)

    def _spam_allows(self, key: tuple[str, ...], now: float) -> bool:
        if self.recorder_spam_filter is None:
            return True
        burst, per_token = self.recorder_spam_filter
        bucket = self._spam.get(key)
        if bucket is None:
            bucket = self._spam[key] = _SpamBucket(tokens=float(burst), at=now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) / per_token)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def events(self, ns: str | None = None) -> list[JSON]:
        return self.list_objects("v1", "events", ns)

    def expire_events(self) -> int:
        """Delete Events whose TTL passed (DELETED to watchers); returns how many."""
        now = self._clock()
        expired = [k for k, at in self._event_expiry.items() if at <= now]
        for ns, name in expired:
            self._event_expiry.pop((ns, name), None)
            if (ns, name) in self._objects[EVENTS.key]:
                self.delete(EVENTS, ns, name)
        return len(expired)

    def compact(self) -> None:
        """Drop all watch history (like an etcd compaction): older resourceVersions now get 410."""
        for key, hist in self._history.items():
            if hist:
                self._evicted[key] = True
            hist.clear()

    # -- generic storage operations (also what the HTTP handlers call) --------------------------

    def _now(self) -> str:
        return format_time(self._clock())

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
            if (("", ns)) not in self._objects[NAMESPACES.key]:
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
        store = self._objects[rt.key]
        if (ns if rt.namespaced else "", name) in store:
            raise already_exists(rt, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = self._now()
        if rt.custom:
            meta["generation"] = 1
        if rt.status_subresource:
            obj.pop("status", None)
        return self._commit(rt, ns if rt.namespaced else "", name, obj, None, manager=manager,
                            operation=operation, subresource="", dry_run=dry_run)

    def update(self, rt: ResourceType, ns: str, name: str, body: JSON, *, manager: str,
               operation: str = "Update", subresource: str = "", dry_run: bool = False,
               precondition_rv: str | None = None) -> JSON:
        key_ns = ns if rt.namespaced else ""
        current = self._objects[rt.key].get((key_ns, name))
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
            raise _invalid_for(rt, name, [FieldError("metadata.resourceVersion", "Invalid value",
                                                     "must be specified for an update", 0, True, "0x0")])
        if rv and rv != current["metadata"]["resourceVersion"]:
            if not rv.isdigit():
                raise _bad_rv(rv)
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
            if rt.custom and _spec_part(new) != _spec_part(current):
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return self._commit(rt, key_ns, name, new, current, manager=manager, operation=operation,
                            subresource=subresource, dry_run=dry_run)

    def patch(self, rt: ResourceType, ns: str, name: str, raw: bytes, content_type: str, *, manager: str,
              subresource: str = "", dry_run: bool = False) -> JSON:
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
        current = self._objects[rt.key].get((key_ns, name))
        if current is None:
            raise not_found(rt, name)
        try:
            patch_doc = json.loads(raw or b"null")
        except ValueError as exc:
            raise bad_request(f"error decoding patch: {exc}") from exc
        base = copy.deepcopy(current)
        base.setdefault("apiVersion", rt.group_version)
        base.setdefault("kind", rt.kind)
        if ctype == "application/json-patch+json":
            try:
                patched = json_patch(base, patch_doc)
            except _BadJsonPatch as exc:
                raise bad_request(str(exc)) from exc
            except JsonPatchError as exc:
                raise ApiError(422, "Invalid", str(exc)) from exc
            shown = json.dumps(patched, separators=(",", ":"))
        else:
            if not isinstance(patch_doc, dict):
                raise bad_request("json: cannot unmarshal " + _go_json_kind(patch_doc)
                                  + " into Go value of type map[string]interface {}")
            if ctype == "application/merge-patch+json":
                patched = merge_patch(base, patch_doc)
                shown = json.dumps(patched, separators=(",", ":"))
            else:
                patched = strategic_merge_patch(base, patch_doc)
                shown = _go_map_repr(patch_doc)
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched object is not a JSON object")
        patched_meta = patched.get("metadata") or {}
        rv = str(patched_meta.get("resourceVersion") or "")
        try:
            self._decode(rt, patched)
        except _DecodeError as exc:
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
        current = self._objects[rt.key].get((key_ns, name))
        if current is None:
            raise not_found(rt, name)
        if precondition_uid and precondition_uid != current["metadata"].get("uid"):
            raise _precondition_failed(rt, name, f"UID in precondition: {precondition_uid}, UID in object "
                                           f"meta: {current['metadata'].get('uid')}")
        if precondition_rv and precondition_rv != current["metadata"]["resourceVersion"]:
            raise _precondition_failed(rt, name, f"ResourceVersion in precondition: {precondition_rv}, "
                                           "ResourceVersion in object meta: "
                                           f"{current['metadata']['resourceVersion']}")
        if dry_run:
            return copy.deepcopy(current)
        del self._objects[rt.key][(key_ns, name)]
        if rt is EVENTS:
            self._event_expiry.pop((key_ns, name), None)
        self._rv += 1
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._record(_Change(self._rv, "DELETED", rt, key_ns, gone, copy.deepcopy(current)))
        return gone

    def _commit(self, rt: ResourceType, ns: str, name: str, new: JSON, old: JSON | None, *, manager: str,
                operation: str, subresource: str, dry_run: bool) -> JSON:
        new = copy.deepcopy(new)
        new["apiVersion"] = rt.group_version
        new["kind"] = rt.kind
        meta = new["metadata"]
        meta["managedFields"] = self._managed_fields(rt, new, old, manager=manager, operation=operation,
                                                     subresource=subresource)
        if old is not None and _without_volatile(new) == _without_volatile(old):
            return copy.deepcopy(old)  # a no-op write: no new resourceVersion, no watch event
        if dry_run:
            meta["resourceVersion"] = old["metadata"]["resourceVersion"] if old else ""
            return new
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._objects[rt.key][(ns, name)] = new
        if rt is EVENTS:
            self._event_expiry[(ns, name)] = self._clock() + self.event_ttl
        self._record(_Change(self._rv, "ADDED" if old is None else "MODIFIED", rt, ns, copy.deepcopy(new),
                             copy.deepcopy(old) if old is not None else None))
        return copy.deepcopy(new)

    def _record(self, change: _Change) -> None:
        hist = self._history[change.rt.key]
        hist.append(change)
        while len(hist) > self.history_size:
            hist.popleft()
            self._evicted[change.rt.key] = True
        for w in self._watchers[change.rt.key]:
            if w.namespace is None or w.namespace == change.namespace:
                w.queue.put_nowait(change)
        for listener in list(self._listeners):
            listener(change.type, change.rt, change.obj)

    def _managed_fields(self, rt: ResourceType, new: JSON, old: JSON | None, *, manager: str, operation: str,
                        subresource: str) -> list[JSON]:
        entries: list[JSON] = copy.deepcopy((old or {}).get("metadata", {}).get("managedFields") or [])
        new_paths = {**_owned_paths(new, rt, ""), **_owned_paths(new, rt, "status")} \
            if rt.status_subresource else _owned_paths(new, rt, "")
        old_paths = ({**_owned_paths(old, rt, ""), **_owned_paths(old, rt, "status")}
                     if rt.status_subresource else _owned_paths(old, rt, "")) if old is not None else {}
        mine = _owned_paths(new, rt, subresource)
        if operation == "Apply":
            changed = set(mine)
        else:
            changed = {p for p, v in mine.items() if p not in old_paths or old_paths[p] != v}
        result: list[JSON] = []
        found = False
        for e in entries:
            paths = _paths_from_fields_v1(e.get("fieldsV1") or {})
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
                e["fieldsV1"] = _fields_v1(paths)
                result.append(e)
        if not found and changed:
            entry: JSON = {"manager": manager, "operation": operation, "apiVersion": rt.group_version,
                           "time": self._now(), "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(changed)}
            if subresource:
                entry["subresource"] = subresource
            result.append(entry)
        return result

    # -- decoding and validation ---------------------------------------------------------------

    def _decode(self, rt: ResourceType, body: JSON) -> JSON:
        """What the Go decoder would do with the body: time fields parsed, base64 decoded."""
        if not isinstance(body, dict):
            raise _DecodeError("json: cannot unmarshal " + _go_json_kind(body) + f" into Go value of type "
                               f"{rt.kind}")
        obj = copy.deepcopy(body)
        if obj.get("apiVersion") not in (None, "", rt.group_version):
            raise bad_request(f"the API version in the data ({obj['apiVersion']}) does not match the "
                              f"expected API version ({rt.group_version})")
        if obj.get("kind") not in (None, "", rt.kind):
            raise bad_request(f"the kind in the data ({obj['kind']}) does not match the expected kind "
                              f"({rt.kind})")
        for path in rt.micro_time_fields:
            _normalise_time(obj, path, micro=True)
        for path in rt.time_fields:
            _normalise_time(obj, path, micro=False)
        if rt is SECRETS:
            data = obj.get("data") or {}
            for v in data.values():
                try:
                    base64.b64decode(v or "", validate=True)
                except (binascii.Error, TypeError) as exc:
                    raise _DecodeError(f"illegal base64 data at input byte {_bad_b64_offset(v)}") from exc
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
            raise _invalid_for(rt, name, errors)

    # -- HTTP ------------------------------------------------------------------------------------

    def app(self, *, log: RequestLog | None = None, faults: FaultTable | None = None) -> web.Application:
        """The API server; with ``log``/``faults`` it gets the shared sandbox middlewares."""
        mws = middlewares(f"kube:{self.name}", log, faults) if log is not None and faults is not None else []
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
        for watchers in self._watchers.values():
            for w in watchers:
                w.queue.put_nowait(None)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            self.expire_events()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization", "") != f"Bearer {self.bearer_token}":
            return _json_response(ApiError(401, "Unauthorized", "Unauthorized").status(), 401)
        try:
            return await self._route(request)
        except ApiError as exc:
            return _json_response(exc.status(), exc.code)
        except _DecodeError as exc:  # pragma: no cover - converted where it can happen
            return _json_response(bad_request(str(exc)).status(), 400)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        port = self.port or (request.url.port or 0)
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
            raise _no_route()
        if not any(rt.group_version == gv for rt in RESOURCE_TYPES):
            raise _no_route()
        if not rest:
            return _json_response(_resource_list(gv))
        ns: str | None = None
        if rest[0] == "namespaces" and (gv != "v1" or len(rest) >= 3):
            if len(rest) < 3:
                raise _no_route()
            ns, rest = rest[1], rest[2:]
        rt = _BY_GV_PLURAL.get((gv, rest[0]))
        if rt is None or (ns is not None and not rt.namespaced):
            raise _no_route()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if len(rest) > 3 or (sub and not (sub == "status" and rt.status_subresource)):
            raise _no_route()
        if rt.namespaced and ns is None and name is not None:   # /api/v1/secrets/x: no such route
            raise _no_route()
        if not rt.namespaced:
            ns = ""
        return await self._serve(request, rt, ns, name, sub)

    async def _serve(self, request: web.Request, rt: ResourceType, ns: str | None, name: str | None,
                     sub: str) -> web.StreamResponse:
        q = request.query
        method = request.method
        manager = q.get("fieldManager") or _manager_from_user_agent(request.headers.get("User-Agent", ""))
        dry_run = q.get("dryRun") == "All"
        if name is None:
            if method == "GET":
                if _parse_bool(q.get("watch")):
                    return await self._watch(request, rt, ns)
                return _json_response(self._list(rt, ns, q))
            if method == "POST" and ns is not None:
                body = await _read_json(request)
                try:
                    obj = self.create(rt, ns, body, manager=manager, dry_run=dry_run)
                except _DecodeError as exc:
                    raise _cannot_handle(rt, exc) from exc
                return _json_response(obj, 201)
            raise _method_not_allowed()
        assert ns is not None
        if method == "GET":
            found = self._objects[rt.key].get((ns, name))
            if found is None:
                raise not_found(rt, name)
            return _json_response(found)
        if method == "PUT":
            body = await _read_json(request)
            try:
                obj = self.update(rt, ns, name, body, manager=manager, subresource=sub, dry_run=dry_run)
            except _DecodeError as exc:
                raise _cannot_handle(rt, exc) from exc
            return _json_response(obj)
        if method == "PATCH":
            raw = await request.read()
            obj = self.patch(rt, ns, name, raw, request.headers.get("Content-Type", ""), manager=manager,
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
            gone = self.delete(rt, ns, name, precondition_rv=pre.get("resourceVersion") or "",
                               precondition_uid=pre.get("uid") or "", dry_run=dry_run)
            return _json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": {**_details(rt, name), "uid": gone["metadata"].get("uid")}})
        raise _method_not_allowed()

    def _list(self, rt: ResourceType, ns: str | None, q: Any) -> JSON:
        if rt is EVENTS:
            self.expire_events()
        fterms = parse_field_selector(q.get("fieldSelector", ""), rt)
        lreqs = parse_label_selector(q.get("labelSelector", ""))
        items = [o for (ons, _), o in sorted(self._objects[rt.key].items())
                 if (ns is None or ons == ns) and _fields_match(o, fterms) and _labels_match(o, lreqs)]
        meta: JSON = {"resourceVersion": str(self._rv)}
        limit = int(q.get("limit") or 0)
        start = 0
        if q.get("continue"):
            try:
                token = json.loads(base64.b64decode(q["continue"]))
                start = int(token["start"])
            except (ValueError, KeyError, binascii.Error) as exc:
                raise bad_request("continue key is not valid: " + str(exc)) from exc
        if limit > 0:
            page = items[start:start + limit]
            if start + limit < len(items):
                meta["continue"] = base64.b64encode(json.dumps({"v": "meta.k8s.io/v1", "rv": self._rv,
                                                                "start": start + limit}).encode()).decode()
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

    async def _watch(self, request: web.Request, rt: ResourceType, ns: str | None) -> web.StreamResponse:
        q = request.query
        fterms = parse_field_selector(q.get("fieldSelector", ""), rt)
        lreqs = parse_label_selector(q.get("labelSelector", ""))
        if rt is EVENTS:
            self.expire_events()
        rv_param = q.get("resourceVersion", "")
        if rv_param and not rv_param.isdigit():
            raise _bad_rv(rv_param)
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else self.watch_default_timeout
        bookmarks = _parse_bool(q.get("allowWatchBookmarks"))
        requested = int(rv_param) if rv_param else 0
        if requested > self._rv:
            raise ApiError(504, "Timeout", f"Too large resource version: {requested}, current: {self._rv}",
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
            return obj is not None and _fields_match(obj, fterms) and _labels_match(obj, lreqs)

        history = self._history[rt.key]
        oldest = history[0].rv if history else self._rv + 1
        if requested > 0 and self._evicted[rt.key] and requested < oldest - 1:
            err = ApiError(410, "Expired", f"too old resource version: {requested} ({oldest - 1})")
            await resp.write(frame("ERROR", err.status()))
            await resp.write_eof()
            return resp
        watcher = _Watcher(rt, ns)
        self._watchers[rt.key].add(watcher)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if requested == 0:
                current = sorted(
                    (o for (ons, _), o in self._objects[rt.key].items() if ns is None or ons == ns),
                    key=lambda o: int(o["metadata"]["resourceVersion"]))
                for obj in current:
                    if matches(obj):
                        await resp.write(frame("ADDED", obj))
            else:
                for change in list(history):
                    if change.rv > requested and (ns is None or change.namespace == ns):
                        watcher.queue.put_nowait(change)
            # bookmarks: about every bookmark_interval, and one ~2s before the watch times out
            pre_deadline = deadline - 2.0
            next_bookmark = min(loop.time() + self.bookmark_interval, pre_deadline)
            while not self._closing:
                now = loop.time()
                if now >= deadline or request.transport is None or request.transport.is_closing():
                    break
                if bookmarks and now >= next_bookmark:
                    await resp.write(frame("BOOKMARK", _bookmark_object(rt, self._rv)))
                    next_bookmark = (float("inf") if next_bookmark >= pre_deadline
                                     else min(now + self.bookmark_interval, pre_deadline))
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
                    await resp.write(frame(frame_type, live.obj))
            await resp.write_eof()
        except ConnectionResetError:
            pass
        finally:
            self._watchers[rt.key].discard(watcher)
        return resp


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def scaledjob_spec(*, name: str, organization_url: str, pool_name: str, secret_name: str, secret_key: str,
                   polling_interval: int, max_replica_count: int = 10,
                   rollout_strategy: str | None = None) -> JSON:
    """A ScaledJob spec as platform teams write it for ephemeral ``--once`` ADO agents.

    Without ``rollout_strategy`` there is no ``rollout`` field, as in most real manifests: KEDA
    then uses ``default`` and deletes running Jobs whenever the spec changes.
    """
    spec: JSON = {
        "jobTargetRef": {
            "parallelism": 1, "completions": 1, "activeDeadlineSeconds": 14400, "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1800,
                    "containers": [{
                        "name": "azure-devops-agent",
                        "image": "sandbox.azurecr.io/azure-devops-agent:ubuntu-22.04",
                        "args": ["--once"],
                        "env": [
                            {"name": "AZP_URL", "value": organization_url},
                            {"name": "AZP_POOL", "value": pool_name},
                            {"name": "AZP_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret_name,
                                                                                 "key": secret_key}}},
                        ],
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"cpu": "2", "memory": "4Gi"}},
                    }],
                },
            },
        },
        "pollingInterval": polling_interval,
        "successfulJobsHistoryLimit": 5,
        "failedJobsHistoryLimit": 5,
        "maxReplicaCount": max_replica_count,
        "scalingStrategy": {"strategy": "default"},
        "triggers": [{
            "type": "azure-pipelines",
            "metadata": {
                "poolName": pool_name,
                "organizationURLFromEnv": "AZP_URL",
                "personalAccessTokenFromEnv": "AZP_TOKEN",
            },
        }],
    }
    if rollout_strategy is not None:
        spec["rollout"] = {"strategy": rollout_strategy}
    return spec


def _watch_frame_type(change: _Change, matches: Callable[[JSON | None], bool]) -> str | None:
    """The frame a filtered watcher sees: leaving the selection is a DELETED, entering an ADDED."""
    prev_in = matches(change.prev)
    if change.type == "DELETED":
        return "DELETED" if prev_in else None
    cur_in = matches(change.obj)
    if cur_in:
        return "MODIFIED" if prev_in else "ADDED"
    return "DELETED" if prev_in else None


def _spec_part(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _without_volatile(obj: JSON) -> JSON:
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    meta.pop("resourceVersion", None)
    for e in meta.get("managedFields") or []:
        e.pop("time", None)
    return out


def _normalise_time(obj: JSON, path: tuple[str, ...], *, micro: bool) -> None:
    cur: Any = obj
    for p in path[:-1]:
        cur = cur.get(p) if isinstance(cur, dict) else None
    if not isinstance(cur, dict) or cur.get(path[-1]) is None:
        return
    value = cur[path[-1]]
    if not isinstance(value, str):
        raise _DecodeError(f"json: cannot unmarshal {_go_json_kind(value)} into Go value of type string")
    try:
        parsed = parse_go_time(value, micro=micro)
    except GoTimeError as exc:
        raise _DecodeError(str(exc)) from exc
    ts = parsed.timestamp()
    cur[path[-1]] = format_micro_time(ts) if micro else format_time(int(ts))


def _bad_b64_offset(value: Any) -> int:
    s = str(value)
    for i, c in enumerate(s):
        if not (c.isascii() and (c.isalnum() or c in "+/=")):
            return i
    return len(s) - (len(s) % 4 or 4)


def _go_json_kind(v: Any) -> str:
    if isinstance(v, list):
        return "array"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if v is None:
        return "null"
    return "object"


def _go_map_repr(v: Any) -> str:
    """``fmt.Sprintf("%+v", map[string]interface{})`` as the SMP error shows the patch."""
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_map_repr(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(_go_map_repr(x) for x in v) + "]"
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


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


def _manager_from_user_agent(ua: str) -> str:
    """The API server's default field manager: the User-Agent up to the first '/'."""
    prefix = ua.split("/", 1)[0].strip()
    return prefix[:128] or "unknown"


def _groups() -> list[str]:
    seen: list[str] = []
    for rt in RESOURCE_TYPES:
        if rt.group and rt.group not in seen:
            seen.append(rt.group)
    return seen


def _api_group(group: str) -> JSON:
    versions = sorted({rt.version for rt in RESOURCE_TYPES if rt.group == group})
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def _resource_list(gv: str) -> JSON:
    resources: list[JSON] = []
    for rt in RESOURCE_TYPES:
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


def _no_route() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def _method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    "the server does not allow this method on the requested resource", {})


def _bad_rv(rv: str) -> ApiError:
    return bad_request(f'invalid resource version: strconv.ParseUint: parsing "{rv}": invalid syntax')


def _cannot_handle(rt: ResourceType, exc: Exception) -> ApiError:
    """transformDecodeError: how a body the decoder refused is reported (400)."""
    return bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {exc}')


def _precondition_failed(rt: ResourceType, name: str, what: str) -> ApiError:
    return ApiError(409, "Conflict", f"Operation cannot be fulfilled on {rt.group_resource} "
                    f"{json.dumps(name)}: Precondition failed: {what}", _details(rt, name))


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc


def _json_response(body: JSON, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")),
                        content_type="application/json")
