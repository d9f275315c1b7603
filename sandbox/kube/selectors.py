"""Field and label selectors, parsed and matched as the API server does.

Guarantees: an unknown field label or an unparsable requirement is a 400 ``BadRequest`` with the
server's wording; matching never raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sandbox.kube.errors import bad_request
from sandbox.kube.types import JSON, ResourceType


@dataclass(frozen=True)
class FieldTerm:
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


def parse_field_selector(selector: str, rt: ResourceType) -> list[FieldTerm]:
    """fields.ParseSelector + the per-type field label conversion (400 on unknown labels)."""
    terms: list[FieldTerm] = []
    if not selector.strip():
        return terms
    for raw in _split_unescaped(selector, ","):
        m = re.match(r"^(?P<k>[^=!]+?)\s*(?P<op>==|!=|=)(?P<v>.*)$", raw.strip())
        if not m:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{raw}'")
        key = m.group("k").strip()
        if key not in rt.field_labels:
            raise bad_request(f'field label not supported: {key}')
        terms.append(FieldTerm(key, "!=" if m.group("op") == "!=" else "=", _unescape(m.group("v"))))
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


def fields_match(obj: JSON, terms: Iterable[FieldTerm]) -> bool:
    for t in terms:
        v = _field_value(obj, t.key)
        if (v == t.value) != (t.op == "="):
            return False
    return True


@dataclass(frozen=True)
class LabelReq:
    key: str
    op: str               # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()


def parse_label_selector(selector: str) -> list[LabelReq]:
    reqs: list[LabelReq] = []
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
            reqs.append(LabelReq(m.group("k"), m.group("op"), vals))
            continue
        m = re.match(r"^(?P<k>[A-Za-z0-9_./-]+)\s*(?P<op>==|!=|=)\s*(?P<v>[A-Za-z0-9_.-]*)$", raw)
        if m:
            reqs.append(LabelReq(m.group("k"), "!=" if m.group("op") == "!=" else "=", (m.group("v"),)))
            continue
        m = re.match(r"^(?P<neg>!?)\s*(?P<k>[A-Za-z0-9_./-]+)$", raw)
        if m:
            reqs.append(LabelReq(m.group("k"), "!" if m.group("neg") else "exists"))
            continue
        raise bad_request(f"unable to parse requirement: found '{raw}', expected: identifier")
    return reqs


def labels_match(obj: JSON, reqs: Iterable[LabelReq]) -> bool:
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


def parse_bool(value: str | None) -> bool:
    return value in ("1", "t", "T", "TRUE", "true", "True")
