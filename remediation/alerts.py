"""Alertmanager webhook payloads (version 4), parsed apart from any I/O.

Alertmanager adds keys over time (``notification_reason`` in 0.32, ``routeLabels`` in 0.34;
docs/external-apis.md), so decoding is lenient: unknown keys are ignored, and only the fields the
planner relies on are checked. Anything malformed raises :class:`PayloadError` with a short
reason that the receiver returns as a 400, before any side effect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.errors import BadRequestError

SUPPORTED_VERSION = "4"
# An alert with compromised="true" marks the token leaked: revoke the old PAT as soon as the new
# one is delivered and verified, without draining (docs/rotation.md, "Emergencies").
COMPROMISED_LABEL = "compromised"
_STATUSES = ("firing", "resolved")
# RFC 3339 as Go marshals it: optional fraction of 1-9 digits, "Z" or a numeric offset.
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


class PayloadError(BadRequestError):
    """The body is not an Alertmanager v4 webhook payload; ``reason`` is safe to return."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, service="alertmanager", status=400)
        self.reason = reason


@dataclass(frozen=True)
class Alert:
    status: str                       # "firing" | "resolved"
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None          # None for Go's zero time (still firing)
    fingerprint: str
    generator_url: str = ""

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def compromised(self) -> bool:
        return self.labels.get(COMPROMISED_LABEL, "").strip().lower() == "true"

    @property
    def dedupe_key(self) -> str:
        """Fingerprint + startsAt: the same alert episode, however often it is re-sent."""
        return f"{self.fingerprint}@{self.starts_at.isoformat(timespec='microseconds')}"


@dataclass(frozen=True)
class Notification:
    version: str
    group_key: str
    status: str
    receiver: str
    alerts: tuple[Alert, ...]
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    truncated_alerts: int = 0


def parse_time(text: str, where: str) -> datetime | None:
    """Parse an RFC 3339 time as Alertmanager writes it; Go's zero time becomes ``None``."""
    match = _RFC3339.match(text)
    if match is None:
        raise PayloadError(f"{where}: not an RFC 3339 time")
    day, clock, fraction, zone = match.groups()
    micro = (fraction or "0").ljust(6, "0")[:6]
    zone = "+00:00" if zone in ("Z", "z") else zone
    if day.startswith("0001-"):
        return None
    try:
        # astimezone overflows at the calendar's edges (9999-12-31T23:59:59-23:59).
        return datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}").astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise PayloadError(f"{where}: not a valid time") from exc


def _str_map(value: Any, where: str, *, required: bool = True) -> Mapping[str, str]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: expected an object of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise PayloadError(f"{where}.{key}: expected a string")
    return dict(value)


def _string(doc: Mapping[str, Any], key: str, where: str, *, default: str | None = None) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str):
        raise PayloadError(f"{where}{key}: {'missing' if value is None else 'expected a string'}")
    return value


def _alert(doc: Any, index: int) -> Alert:
    where = f"alerts[{index}]."
    if not isinstance(doc, dict):
        raise PayloadError(f"alerts[{index}]: expected an object")
    status = _string(doc, "status", where)
    if status not in _STATUSES:
        raise PayloadError(f"{where}status: must be firing or resolved")
    fingerprint = _string(doc, "fingerprint", where)
    if not fingerprint:
        raise PayloadError(f"{where}fingerprint: empty")
    starts_at = parse_time(_string(doc, "startsAt", where), f"{where}startsAt")
    if starts_at is None:
        raise PayloadError(f"{where}startsAt: zero time")
    ends_raw = doc.get("endsAt")
    ends_at = None
    if ends_raw is not None:
        if not isinstance(ends_raw, str):
            raise PayloadError(f"{where}endsAt: expected a string")
        ends_at = parse_time(ends_raw, f"{where}endsAt")
    generator = doc.get("generatorURL", "")
    return Alert(
        status=status,
        labels=_str_map(doc.get("labels"), f"{where}labels"),
        annotations=_str_map(doc.get("annotations"), f"{where}annotations", required=False),
        starts_at=starts_at,
        ends_at=ends_at,
        fingerprint=fingerprint,
        generator_url=generator if isinstance(generator, str) else "",
    )


def parse_notification(doc: Any) -> Notification:
    """Validate a decoded JSON document as a v4 webhook payload."""
    if not isinstance(doc, dict):
        raise PayloadError("body: expected a JSON object")
    version = _string(doc, "version", "")
    if version != SUPPORTED_VERSION:
        raise PayloadError(f"version: unsupported {version[:10]!r} (expected \"4\")")
    status = _string(doc, "status", "")
    if status not in _STATUSES:
        raise PayloadError("status: must be firing or resolved")
    alerts = doc.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts: expected a list")
    truncated = doc.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise PayloadError("truncatedAlerts: expected a non-negative integer")
    return Notification(
        version=version,
        group_key=_string(doc, "groupKey", "", default=""),
        status=status,
        receiver=_string(doc, "receiver", "", default=""),
        alerts=tuple(_alert(item, i) for i, item in enumerate(alerts)),
        group_labels=_str_map(doc.get("groupLabels"), "groupLabels", required=False),
        common_labels=_str_map(doc.get("commonLabels"), "commonLabels", required=False),
        truncated_alerts=truncated,
    )


def parse_body(body: bytes) -> Notification:
    """Decode UTF-8 JSON bytes and validate them (see :func:`parse_notification`)."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PayloadError("body: not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise PayloadError(f"body: invalid JSON at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise PayloadError("body: nested too deeply") from exc
    _refuse_lone_surrogates(body, doc)
    return parse_notification(doc)


def _refuse_lone_surrogates(body: bytes, doc: Any) -> None:
    """JSON may escape half a surrogate pair (``"\\ud800"``); Python decodes it to a string that
    cannot be encoded again, so the journal write would fail later. Refuse it as a bad request.
    Only bodies with a ``\\u`` escape of a surrogate are re-encoded to check (the cheap path)."""
    if b"\\ud" not in body.lower():
        return
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PayloadError("body: contains a lone UTF-16 surrogate escape (not valid Unicode)") from exc
