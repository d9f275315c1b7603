"""``metadata.managedFields``: which field manager owns which field path (``fieldsV1``).

Guarantees: an Apply owns exactly the fields it sent; an Update takes ownership of the fields
it changed and other managers lose them; ``data``, ``labels`` and ``annotations`` are set-maps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sandbox.kube.types import JSON, ResourceType

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


def owned_paths(obj: JSON, rt: ResourceType, subresource: str) -> dict[tuple[str, ...], Any]:
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


def fields_v1(paths: Iterable[tuple[str, ...]]) -> JSON:
    root: JSON = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
        if path in _SET_MAP_PATHS:
            node.setdefault(".", {})
    return root


def paths_from_fields_v1(tree: JSON, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    if "." in tree and prefix:
        out.add(prefix)
    children = {k: v for k, v in tree.items() if k.startswith("f:")}
    if not children:
        if prefix:
            out.add(prefix)
        return out
    for k, v in children.items():
        out |= paths_from_fields_v1(v if isinstance(v, dict) else {}, (*prefix, k[2:]))
    return out


# ---------------------------------------------------------------------------------------------
# Cluster state
# ---------------------------------------------------------------------------------------------
