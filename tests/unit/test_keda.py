"""core.keda on the shapes both of KEDA's event recorders leave (tests/fixtures/kube): occurrence
counts, and the "failing to authenticate now" decision from Ready and the newest Event."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.keda import auth_failing_now, latest_failure, occurrences, trigger_failing
from core.kube import KedaScaler, KubeEvent, parse_event, parse_scaler

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kube"
T0 = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
KEDA_500 = "the Azure DevOps REST API returned error. urlString: https://dev.azure.com/x status: 500 response: oops"


def doc(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return loaded


def event(name: str, **changes: Any) -> KubeEvent:
    raw = doc(name)
    raw.update(changes)
    return parse_event(raw)


def scaler(status: str, reason: str, message: str = "") -> KedaScaler:
    raw = doc("scaledjob-trigger-error.json")
    raw["status"]["conditions"][0] = {"type": "Ready", "status": status, "reason": reason, "message": message}
    return parse_scaler(raw, "scaledjobs")


TRIGGER_ERROR = parse_scaler(doc("scaledjob-trigger-error.json"), "scaledjobs")
READY = scaler("True", "ScaledJobReady", "ScaledJob is defined correctly and is ready for scaling")
FIRST = event("event-keda-2.20-first.json")                   # eventTime 10:00:00.25
SERIES = event("event-keda-2.20-series.json")                 # series.count 2 at 10:00:02.26
OLD = event("event-keda-2.16.json")                           # count 3, lastTimestamp 10:00:04


def test_occurrences_read_either_recorder() -> None:
    assert occurrences(FIRST) == 1                            # no series yet, no count
    assert occurrences(SERIES) == 2
    assert occurrences(event("event-keda-2.20-series.json",
                             series={"count": 17, "lastObservedTime": "2026-12-03T10:30:00.000000Z"})) == 17
    assert occurrences(OLD) == 3


def test_recorded_shapes_parse_as_keda_writes_them() -> None:
    assert (FIRST.series_count, FIRST.count, FIRST.event_time) == (None, 1, T0 + timedelta(microseconds=250_000))
    assert FIRST.reporting_controller == "scale-handler" and FIRST.action == "KEDAScalerFailed"
    assert SERIES.message == FIRST.message                    # the series keeps the first message
    assert SERIES.last_timestamp == T0 + timedelta(seconds=2, microseconds=260_000)
    assert OLD.last_timestamp == T0 + timedelta(seconds=4) and OLD.event_time is None
    assert (TRIGGER_ERROR.ready, TRIGGER_ERROR.ready_reason) == (False, "TriggerError")


@pytest.mark.parametrize(("status", "reason", "message", "failing"), [
    ("False", "TriggerError", "", True),
    ("Unknown", "PartialTriggerError", "", True),
    ("False", "ScalingDegraded", "Not ready because HPA is not healthy: x and SO is not healthy: "
                                 "TriggerError - Triggers defined in ScaledObject are not working correctly", True),
    ("False", "ScalingDegraded", "Not ready because HPA is not healthy: x and SO is not healthy: "
                                 "ScaledObjectReady - fine", False),
    ("False", "HPAMetricsUnavailable", "", False),
    ("False", "ScaledJobCheckFailed", "", False),
    ("True", "ScaledJobReady", "", False),
])
def test_trigger_failing_reads_keda_ready_reasons(status: str, reason: str, message: str, failing: bool) -> None:
    assert trigger_failing(scaler(status, reason, message)) is failing


@pytest.mark.parametrize("failure", [FIRST, SERIES, OLD], ids=["2.20-first", "2.20-series", "2.16"])
def test_trigger_error_with_an_auth_event_is_failing_however_old_the_event(failure: KubeEvent) -> None:
    # the events.k8s.io recorder stops writing after the 2nd occurrence: an hour later the
    # Event still says 10:00:02, and Ready (read now) says the latest poll failed
    assert auth_failing_now(TRIGGER_ERROR, [failure], observed_at=T0 + timedelta(hours=1))


@pytest.mark.parametrize("failure", [FIRST, SERIES, OLD], ids=["2.20-first", "2.20-series", "2.16"])
def test_ready_read_after_the_last_failure_is_recovery(failure: KubeEvent) -> None:
    assert not auth_failing_now(READY, [failure], observed_at=T0 + timedelta(seconds=5))


def test_an_event_newer_than_the_ready_reading_decides() -> None:
    # Ready was read True at 10:00:01; the 2nd failure (10:00:02.26) came after it
    assert auth_failing_now(READY, [SERIES], observed_at=T0 + timedelta(seconds=1))
    assert not auth_failing_now(READY, [event("event-keda-2.20-series.json", message=KEDA_500)],
                                observed_at=T0 + timedelta(seconds=1))


def test_the_newest_event_names_the_cause() -> None:
    timeout = event("event-keda-2.16.json", message=KEDA_500, lastTimestamp="2026-12-03T10:05:00Z",
                    metadata={**doc("event-keda-2.16.json")["metadata"], "name": "azure-devops-agent.2"})
    later = T0 + timedelta(minutes=6)
    assert latest_failure(TRIGGER_ERROR, [OLD, timeout]) is timeout
    assert not auth_failing_now(TRIGGER_ERROR, [OLD, timeout], observed_at=later)
    assert auth_failing_now(TRIGGER_ERROR, [timeout, OLD], observed_at=T0 + timedelta(minutes=4)) is False
    assert auth_failing_now(TRIGGER_ERROR, [SERIES, FIRST], observed_at=later)


def test_no_event_or_another_objects_event_is_not_an_auth_failure() -> None:
    assert not auth_failing_now(TRIGGER_ERROR, [], observed_at=T0)
    other = copy.deepcopy(doc("event-keda-2.20-series.json"))
    other["involvedObject"]["name"] = "another-agent"
    started = event("event-keda-2.20-first.json", reason="KEDAScalersStarted")
    assert not auth_failing_now(TRIGGER_ERROR, [parse_event(other), started], observed_at=T0)


def test_a_failed_controller_check_is_not_a_failing_poll() -> None:
    check_failed = scaler("False", "ScaledJobCheckFailed", "ScaledJob.Spec.JobTargetRef not found")
    assert not auth_failing_now(check_failed, [OLD], observed_at=T0 + timedelta(minutes=1))
    assert auth_failing_now(check_failed, [OLD], observed_at=T0)    # the Event is newer
