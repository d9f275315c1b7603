"""The three PATCH formats: RFC 7386 merge patch, strategic merge patch, RFC 6902 JSON patch.

Guarantees: each function returns a new document and never mutates its input; errors carry the
text the API server answers with (``BadJsonPatch`` -> 400, ``JsonPatchError`` -> 422).
"""

from __future__ import annotations

import copy
import json
from typing import Any


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
        raise BadJsonPatch("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise BadJsonPatch("Unexpected kind: <nil>")
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
            raise BadJsonPatch(f"Unexpected kind: {kind}")
    return doc


class BadJsonPatch(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Selectors
def go_json_kind(v: Any) -> str:
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


def go_map_repr(v: Any) -> str:
    """``fmt.Sprintf("%+v", map[string]interface{})`` as the SMP error shows the patch."""
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_map_repr(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_map_repr(x) for x in v) + "]"
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
