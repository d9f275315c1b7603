"""The ``events.k8s.io/v1`` view of the Events stored as core/v1 Events.

Guarantees: one storage, two views, as the real API server keeps them (``pkg/apis/events/v1``
conversion): ``regarding``/``involvedObject``, ``note``/``message``,
``reportingController``/``reportingComponent`` and the ``deprecated*`` fields
(``deprecatedSource``/``source``, ``deprecatedFirstTimestamp``/``firstTimestamp``,
``deprecatedLastTimestamp``/``lastTimestamp``, ``deprecatedCount``/``count``) map one to one,
so an Event written through either API reads the same through the other. ``series``,
``eventTime``, ``action``, ``reason``, ``type``, ``related`` and ``reportingInstance`` are
common. A create through events.k8s.io/v1 is validated as the server validates it for that
version (``ValidateEventCreate``: ``eventTime``, ``reportingController``, ``reportingInstance``,
``action`` and ``reason`` required).
"""

from __future__ import annotations

import copy
from typing import Any

from sandbox.kube.errors import FieldError, invalid
from sandbox.kube.types import EVENTS, EVENTS_V1, JSON

# events.k8s.io/v1 field -> core/v1 field
_RENAMES: tuple[tuple[str, str], ...] = (
    ("regarding", "involvedObject"), ("note", "message"), ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"), ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"), ("deprecatedCount", "count"),
)
_TO_CORE = dict(_RENAMES)
_FROM_CORE = {core: v1 for v1, core in _RENAMES}
# the selector field labels of the v1 view, as core/v1 field labels
FIELD_LABELS_TO_CORE: dict[str, str] = {
    **{f"regarding.{k}": f"involvedObject.{k}"
       for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
    "reportingController": "reportingComponent",
}


def to_v1(core: JSON) -> JSON:
    """A stored (core/v1) Event as events.k8s.io/v1 serves it."""
    out: JSON = {}
    for k, v in core.items():
        out[_FROM_CORE.get(k, k)] = copy.deepcopy(v)
    if core.get("apiVersion") or core.get("kind"):
        out["apiVersion"] = EVENTS_V1.group_version
        out["kind"] = EVENTS_V1.kind
    if not out.get("deprecatedCount"):
        out.pop("deprecatedCount", None)        # int32 with omitempty
    out.setdefault("deprecatedSource", {})
    out.setdefault("deprecatedFirstTimestamp", None)
    out.setdefault("deprecatedLastTimestamp", None)
    out.setdefault("eventTime", None)
    return out


def to_core(v1: JSON) -> JSON:
    """An events.k8s.io/v1 body as the core/v1 Event the store keeps."""
    out: JSON = {}
    for k, v in v1.items():
        out[_TO_CORE.get(k, k)] = copy.deepcopy(v)
    if "apiVersion" in out:
        out["apiVersion"] = EVENTS.group_version
    return out


def field_selector_to_core(selector: str) -> str:
    """Rewrite a v1-view field selector into the core/v1 labels (``regarding.name`` -> ...)."""
    if not selector.strip():
        return selector
    terms = []
    for raw in selector.split(","):
        for op in ("!=", "==", "="):
            if op in raw:
                key, value = raw.split(op, 1)
                key = key.strip()
                terms.append(f"{FIELD_LABELS_TO_CORE.get(key, key)}{op}{value}")
                break
        else:
            terms.append(raw)
    return ",".join(terms)


def validate_create(v1: JSON) -> None:
    """``ValidateEventCreate`` for an events.k8s.io/v1 request (the fields the v1 API requires)."""
    name = str((v1.get("metadata") or {}).get("name") or "")
    errors: list[FieldError] = []
    if not v1.get("eventTime"):
        errors.append(FieldError("eventTime", "Required value"))
    for f in ("reportingController", "reportingInstance", "action", "reason"):
        value: Any = v1.get(f)
        if not value:
            errors.append(FieldError(f, "Required value"))
    if v1.get("type") not in ("Normal", "Warning"):
        errors.append(FieldError("type", "Unsupported value", 'supported values: "Normal", "Warning"',
                                 v1.get("type") or "", True))
    if errors:
        raise invalid(EVENTS_V1.qualified_kind, name, errors, group=EVENTS_V1.group, kind=EVENTS_V1.kind)
