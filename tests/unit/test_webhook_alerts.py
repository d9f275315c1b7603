"""Parsing Alertmanager v4 payloads: recorded fixtures, newer keys, and every schema error."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from remediation.alerts import PayloadError, parse_body, parse_notification, parse_time

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alertmanager"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return doc


def test_recorded_firing_payload() -> None:
    n = parse_body((FIXTURES / "webhook-v4-firing.json").read_bytes())
    assert n.version == "4"
    assert n.status == "firing"
    assert n.receiver == "remediation"
    assert n.group_key == '{}:{alertname="AzdoPatExpiringSoon", pat="ci-bot"}'
    assert len(n.alerts) == 1
    alert = n.alerts[0]
    assert alert.status == "firing"
    assert alert.name == "AzdoPatExpiringSoon"
    assert alert.labels["pat"] == "ci-bot"
    assert alert.fingerprint == "d6214128af8ea687"
    assert alert.starts_at == datetime(2026, 11, 28, 0, 27, 5, 344000, tzinfo=UTC)
    assert alert.ends_at is None                          # Go zero time while firing
    assert alert.dedupe_key == "d6214128af8ea687@2026-11-28T00:27:05.344000+00:00"


def test_recorded_resolved_payload_keeps_the_episode_key() -> None:
    firing = parse_body((FIXTURES / "webhook-v4-firing.json").read_bytes()).alerts[0]
    resolved = parse_body((FIXTURES / "webhook-v4-resolved.json").read_bytes()).alerts[0]
    assert resolved.status == "resolved"
    assert resolved.ends_at == datetime(2026, 11, 28, 0, 27, 7, 344000, tzinfo=UTC)
    assert resolved.dedupe_key == firing.dedupe_key


def test_newer_alertmanager_keys_are_ignored() -> None:
    doc = load("webhook-v4-firing.json")
    doc["notification_reason"] = "repeat interval elapsed"
    doc["routeLabels"] = {"team": "platform"}
    doc["alerts"][0]["somethingNew"] = [1, 2]
    n = parse_notification(doc)
    assert n.alerts[0].fingerprint == "d6214128af8ea687"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-08-01T10:00:00Z", datetime(2026, 8, 1, 10, tzinfo=UTC)),
        ("2026-08-01T10:00:00.123456789Z", datetime(2026, 8, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-08-01T12:00:00.5+02:00", datetime(2026, 8, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),
    ],
)
def test_times_as_go_writes_them(text: str, expected: datetime | None) -> None:
    assert parse_time(text, "x") == expected


def _mutate(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(load("webhook-v4-firing.json"))
    target: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("version", "3", "version: unsupported"),
        ("version", _DELETE, "version: missing"),
        ("version", 4, "version: expected a string"),
        ("status", "pending", "status: must be firing or resolved"),
        ("alerts", {}, "alerts: expected a list"),
        ("alerts", _DELETE, "alerts: expected a list"),
        ("truncatedAlerts", -1, "truncatedAlerts"),
        ("groupLabels", [], "groupLabels: expected an object"),
        ("commonLabels", {"a": 1}, "commonLabels.a: expected a string"),
        ("alerts.0", "x", "alerts[0]: expected an object"),
        ("alerts.0.status", "ok", "alerts[0].status"),
        ("alerts.0.fingerprint", "", "alerts[0].fingerprint: empty"),
        ("alerts.0.fingerprint", _DELETE, "alerts[0].fingerprint: missing"),
        ("alerts.0.labels", None, "alerts[0].labels: expected an object"),
        ("alerts.0.labels", {"token": 5}, "alerts[0].labels.token"),
        ("alerts.0.startsAt", "yesterday", "alerts[0].startsAt: not an RFC 3339 time"),
        ("alerts.0.startsAt", "0001-01-01T00:00:00Z", "alerts[0].startsAt: zero time"),
        ("alerts.0.startsAt", "2026-13-45T10:00:00Z", "alerts[0].startsAt: not a valid time"),
        ("alerts.0.endsAt", 7, "alerts[0].endsAt"),
    ],
)
def test_schema_errors_have_a_short_reason(path: str, value: Any, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_notification(_mutate(path, value))
    assert reason in caught.value.reason
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "invalid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "expected a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_bad_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_body(body)
    assert reason in caught.value.reason
