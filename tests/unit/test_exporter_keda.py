"""KEDA source: the auth-failing gauge (Ready and the newest Event, whichever is newer), the
series-aware counter that never goes backwards nor counts twice, the Events watch that
re-watches when a stream ends and relists on 410 Gone, the Ready gauge and the consumer info."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from core.errors import UnavailableError
from core.keda import is_auth_failure
from core.kube import KedaScaler, KubeEvent, format_micro_time, format_time, parse_event
from exporter.fanout import Fanout
from exporter.keda import ConsumerInfo, EventTally, Keda
from tests.unit.exporter_world import FakeCluster, daily_token, keda_token

LABELS = {"cluster": "build-a", "namespace": "azure-devops", "kind": "ScaledJob", "name": "azure-devops-agent"}
OBJ = ("ScaledJob", "azure-devops-agent")
KEDA_401 = ("error parsing azure Pipelines metadata: the Azure DevOps REST API returned error. urlString: "
            "http://127.0.0.1:1/org/_apis/distributedtask/pools?poolName=agents-a status: 401 response: ")
KEDA_203 = ("the Azure DevOps REST API returned error. url: https://dev.azure.com/org/_apis/x status: 203 "
            "response: <html>")
KEDA_HTML = "invalid character '<' looking for beginning of value"
KEDA_500 = "the Azure DevOps REST API returned error. urlString: https://dev.azure.com/x status: 500 response: oops"
T0 = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)


def new_event(name: str, message: str, *, at: datetime, series: int | None = None,
              last: datetime | None = None, version: int = 1, kind: str = "ScaledJob",
              obj: str = "azure-devops-agent") -> KubeEvent:
    """A KEDAScalerFailed Event as KEDA >= 2.20 leaves it (events.k8s.io recorder, core/v1 view)."""
    raw: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "azure-devops", "uid": f"uid-{name}-{version}",
                     "resourceVersion": str(version)},
        "involvedObject": {"kind": kind, "namespace": "azure-devops", "name": obj,
                           "apiVersion": "keda.sh/v1alpha1"},
        "reason": "KEDAScalerFailed", "message": message, "type": "Warning", "source": {},
        "firstTimestamp": None, "lastTimestamp": None, "eventTime": format_micro_time(at),
        "action": "KEDAScalerFailed", "reportingComponent": "scale-handler",
        "reportingInstance": "scale-handler-keda-operator-0"}
    if series is not None:
        raw["series"] = {"count": series, "lastObservedTime": format_micro_time(last or at)}
    return parse_event(raw)


def old_event(name: str, message: str, count: int, *, first: datetime, last: datetime,
              version: int = 1) -> KubeEvent:
    """A KEDAScalerFailed Event as KEDA <= 2.19 leaves it (tools/record, core/v1)."""
    return parse_event({
        "metadata": {"name": name, "namespace": "azure-devops", "uid": f"uid-{name}",
                     "resourceVersion": str(version)},
        "involvedObject": {"kind": "ScaledJob", "namespace": "azure-devops", "name": "azure-devops-agent",
                           "apiVersion": "keda.sh/v1alpha1"},
        "reason": "KEDAScalerFailed", "message": message, "type": "Warning",
        "source": {"component": "scale-handler"}, "firstTimestamp": format_time(first),
        "lastTimestamp": format_time(last), "count": count, "eventTime": None,
        "reportingComponent": "scale-handler", "reportingInstance": ""})


def scaler(ready: bool | None, reason: str | None = None) -> KedaScaler:
    return KedaScaler(name="azure-devops-agent", namespace="azure-devops", uid="uid-sj", generation=1,
                      ready=ready, ready_reason=reason, ready_message=None)


TRIGGER_ERROR = scaler(False, "TriggerError")
READY = scaler(True, "ScaledJobReady")


@pytest.fixture
def fanout() -> Iterator[Fanout]:
    pool = Fanout(4)
    yield pool
    pool.close()


@pytest.mark.parametrize(("message", "auth"), [
    (KEDA_401, True), (KEDA_203, True), (KEDA_HTML, True),
    ("Cannot unmarshal ADO JobRequests API response", True),
    ("the Azure DevOps REST API returned error. urlString: u status: 403 response: ", True),
    (KEDA_500, False), ("agent pool with name `x` not found", False),
    ("json: cannot unmarshal array into Go value of type scalers.JobRequests", False),
    ("error getting pipelines queue length: context deadline exceeded", False),
    ("status: 401 response: {\"message\":\"TF400813: The user '' is not authorized\"}", True),
    ("VS30063: You are not authorized to access https://dev.azure.com", True),
    ("Access Denied: The Personal Access Token used has expired.", True),
    ("status: 500 response: oops", False),
])
def test_classifies_authentication_failures(message: str, auth: bool) -> None:
    assert is_auth_failure(message) is auth


class Clock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_old_recorder_counts_count_deltas_and_never_goes_backwards() -> None:
    tally = EventTally([OBJ])
    tally.apply("ADDED", old_event("e1", KEDA_401, 1, first=T0, last=T0))
    tally.apply("MODIFIED", old_event("e1", KEDA_401, 4, first=T0, last=T0 + timedelta(seconds=6)))   # +3
    tally.apply("MODIFIED", old_event("e1", KEDA_401, 4, first=T0, last=T0 + timedelta(seconds=6)))   # +0
    tally.apply("ADDED", old_event("e2", KEDA_500, 2, first=T0, last=T0))                             # not auth
    tally.apply("ADDED", new_event("e3", KEDA_401, at=T0, obj="someone-else"))
    assert tally.totals()[OBJ] == 4
    tally.apply("DELETED", old_event("e1", KEDA_401, 4, first=T0, last=T0))          # expired: nothing subtracted
    assert tally.totals()[OBJ] == 4
    tally.relist([old_event("e5", KEDA_HTML, 2, first=T0, last=T0)])
    assert tally.totals()[OBJ] == 6
    tally.relist([old_event("e5", KEDA_HTML, 3, first=T0, last=T0)])
    assert tally.totals()[OBJ] == 7


def test_old_recorder_counts_growth_of_an_event_whose_message_turned_into_auth() -> None:
    tally = EventTally([OBJ])
    tally.apply("ADDED", old_event("e1", KEDA_500, 3, first=T0, last=T0))
    tally.apply("MODIFIED", old_event("e1", KEDA_401, 5, first=T0, last=T0))
    assert tally.totals()[OBJ] == 2


def test_new_recorder_series_counts_what_is_flushed_never_one_per_event() -> None:
    tally = EventTally([OBJ])
    tally.apply("ADDED", new_event("s1", KEDA_401, at=T0))                            # 1st occurrence
    assert tally.totals()[OBJ] == 1
    tally.apply("MODIFIED", new_event("s1", KEDA_401, at=T0, series=2, last=T0 + timedelta(seconds=2)))
    assert tally.totals()[OBJ] == 2
    # 3rd..40th occurrences only raise the recorder's in-memory count: nothing arrives, nothing
    # moves; the 30-minute refresh (or the final flush) writes series.count=40 at once
    tally.apply("MODIFIED", new_event("s1", KEDA_401, at=T0, series=40, last=T0 + timedelta(seconds=80)))
    assert tally.totals()[OBJ] == 40
    tally.apply("MODIFIED", new_event("s1", KEDA_401, at=T0, series=40, last=T0 + timedelta(seconds=80)))
    assert tally.totals()[OBJ] == 40


def test_an_event_recreated_under_its_name_with_the_cumulative_count_is_not_counted_twice() -> None:
    # Both recorders re-create a vanished Event (a Patch answered 404) under the same name,
    # carrying the whole count (event_broadcaster.go recordEvent; events_cache.go).
    tally = EventTally([OBJ])
    tally.apply("MODIFIED", new_event("s1", KEDA_401, at=T0, series=7))
    tally.apply("DELETED", new_event("s1", KEDA_401, at=T0, series=7))
    assert tally.events(OBJ) == []
    tally.apply("ADDED", new_event("s1", KEDA_401, at=T0, series=9, version=2))
    assert tally.totals()[OBJ] == 9


def test_names_are_forgotten_only_after_the_retention() -> None:
    clock = Clock()
    tally = EventTally([OBJ], monotonic=clock, retention=100.0)
    tally.apply("ADDED", new_event("s1", KEDA_401, at=T0, series=3))
    tally.apply("DELETED", new_event("s1", KEDA_401, at=T0, series=3))
    clock.now = 50.0
    tally.relist([])
    assert tally.remembered == 1
    clock.now = 200.0
    tally.relist([new_event("s2", KEDA_401, at=T0)])
    assert tally.remembered == 1 and tally.totals()[OBJ] == 4          # s1 forgotten, s2 counted


def test_a_watch_that_never_relists_still_forgets_old_names() -> None:
    clock = Clock()
    tally = EventTally([OBJ], monotonic=clock, retention=240.0)
    for i in range(50):                                # an Event an hour, each expiring later
        clock.now = i * 100.0
        tally.apply("ADDED", new_event(f"s{i}", KEDA_401, at=T0))
        tally.apply("DELETED", new_event(f"s{i}", KEDA_401, at=T0))
    assert tally.remembered <= 4
    assert tally.totals()[OBJ] == 50


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Cluster(FakeCluster):
    """The fake cluster, recording the version each watch starts from."""

    def __init__(self) -> None:
        super().__init__("build-a")
        self.watched_from: list[str] = []

    def watch_events(self, ns: str, *, field_selector: str, resource_version: str,
                     timeout_seconds: int) -> Iterator[tuple[str, KubeEvent]]:
        self.watched_from.append(resource_version)
        return super().watch_events(ns, field_selector=field_selector, resource_version=resource_version,
                                    timeout_seconds=timeout_seconds)


class World:
    def __init__(self, fanout: Fanout, *, watch_timeout: int = 5) -> None:
        self.cluster = Cluster()
        self.cluster.put_scaler("azure-devops", "azure-devops-agent", True)
        self.clock = Clock(T0.timestamp())
        self.changes = 0
        self.changed = threading.Event()
        self.source = Keda("build-a", [keda_token()], self.cluster, fanout=fanout, interval=30.0,
                           watch_timeout=watch_timeout, watch_retry_delay=0.05, clock=self.clock)
        self.source.on_change = self._on_change
        self.registry = CollectorRegistry()
        self.registry.register(self.source)

    def _on_change(self) -> None:
        self.changes += 1
        self.changed.set()

    def set_scaler(self, value: KedaScaler) -> None:
        self.cluster.scalers[("azure-devops", "azure-devops-agent")] = value

    def refresh_at(self, seconds: float) -> None:
        self.clock.now = (T0 + timedelta(seconds=seconds)).timestamp()
        self.source.refresh()

    def close(self) -> None:
        self.source.feed("azure-devops").stop()
        self.cluster.stream.put(None)                          # end an open watch now
        self.source.close()

    def failures(self) -> float | None:
        return self.registry.get_sample_value("patrol_keda_scaler_auth_failures_total", LABELS)

    def failing(self) -> float | None:
        return self.registry.get_sample_value("patrol_keda_scaler_auth_failing", {**LABELS, "token": "keda"})

    def ready(self) -> float | None:
        return self.registry.get_sample_value("patrol_keda_scaler_ready", LABELS)


@pytest.fixture
def world(fanout: Fanout) -> Iterator[World]:
    w = World(fanout)
    yield w
    w.close()


def test_lists_then_watches_and_the_counter_follows_the_watch(world: World) -> None:
    w = world
    assert w.failures() == 0.0                             # exported at 0 from the start
    w.cluster.events["e1"] = old_event("e1", KEDA_401, 2, first=T0, last=T0)
    w.refresh_at(1)
    assert w.failures() == 2.0
    assert w.ready() == 1.0
    assert w.cluster.lists == 1
    feed = w.source.feed("azure-devops")
    wait_until(lambda: feed.watching and w.cluster.watches == 1)

    w.cluster.stream.put(("MODIFIED", old_event("e1", KEDA_401, 5, first=T0, last=T0)))
    wait_until(lambda: w.failures() == 5.0)
    w.cluster.stream.put(("DELETED", old_event("e1", KEDA_401, 5, first=T0, last=T0)))
    w.cluster.stream.put(("ADDED", old_event("e2", KEDA_203, 1, first=T0, last=T0)))
    wait_until(lambda: w.failures() == 6.0)
    w.refresh_at(2)
    assert w.cluster.lists == 1                            # the watch is healthy: no list
    # only one sample for the configured consumer in this cluster
    assert w.registry.get_sample_value("patrol_keda_scaler_auth_failures_total",
                                       {**LABELS, "cluster": "build-b"}) is None


def test_a_stream_that_ends_is_watched_again_from_the_last_version(world: World) -> None:
    w = world
    w.refresh_at(1)
    wait_until(lambda: w.cluster.watches == 1)
    w.cluster.stream.put(("ADDED", new_event("s1", KEDA_401, at=T0, version=812)))
    w.cluster.stream.put(None)                             # the server ends the stream
    wait_until(lambda: w.cluster.watches == 2)
    assert w.cluster.watched_from == [str(w.cluster.version), "812"]
    assert w.cluster.lists == 1 and w.failures() == 1.0


def test_410_gone_relists_at_once_and_counts_nothing_twice(world: World) -> None:
    w = world
    w.cluster.events["s1"] = new_event("s1", KEDA_401, at=T0, series=2)
    w.refresh_at(1)
    feed = w.source.feed("azure-devops")
    wait_until(lambda: feed.watching)
    assert w.failures() == 2.0
    # while the watch's version was compacted away: the series was flushed and a new Event came
    w.cluster.events["s1"] = new_event("s1", KEDA_401, at=T0, series=9, version=3)
    w.cluster.events["s2"] = new_event("s2", KEDA_HTML, at=T0 + timedelta(seconds=30))
    w.changed.clear()
    w.cluster.expire_watch()
    wait_until(lambda: w.cluster.lists == 2)               # listed by the watch, not by a refresh
    wait_until(lambda: w.cluster.watches == 2)
    assert feed.watching
    assert w.changed.wait(2)
    assert w.failures() == 10.0                            # 9 of the series + 1, nothing twice
    w.cluster.expire_watch()                               # and again: the same list adds nothing
    wait_until(lambda: w.cluster.lists == 3 and w.cluster.watches == 3)
    assert w.failures() == 10.0


def test_gauge_follows_ready_and_the_newest_event(world: World) -> None:
    w = world
    w.refresh_at(0)
    assert w.failing() == 0.0
    wait_until(lambda: w.source.feed("azure-devops").watching)
    # KEDA's poll fails at 00:02: the Event arrives through the watch before any refresh
    w.changed.clear()
    w.cluster.stream.put(("ADDED", new_event("s1", KEDA_401, at=T0 + timedelta(seconds=2))))
    assert w.changed.wait(2)
    assert w.failing() == 1.0
    # the next refresh reads Ready False/TriggerError: still failing, with a flat series
    w.set_scaler(TRIGGER_ERROR)
    w.cluster.stream.put(("MODIFIED", new_event("s1", KEDA_401, at=T0 + timedelta(seconds=2), series=2,
                                               last=T0 + timedelta(seconds=4))))
    wait_until(lambda: w.failures() == 2.0)
    for second in (5, 30, 600):
        w.refresh_at(second)
        assert w.failing() == 1.0 and w.failures() == 2.0
    # recovery: KEDA's next poll succeeds and Ready turns True; the series Event stays as it is
    w.set_scaler(READY)
    w.refresh_at(602)
    assert w.failing() == 0.0 and w.ready() == 1.0
    assert w.failures() == 2.0


def test_a_failing_trigger_that_is_not_authentication_is_not_auth_failing(world: World) -> None:
    w = world
    w.cluster.events["e1"] = old_event("e1", KEDA_401, 3, first=T0, last=T0)
    w.cluster.events["e2"] = old_event("e2", KEDA_500, 1, first=T0, last=T0 + timedelta(seconds=10))
    w.set_scaler(TRIGGER_ERROR)
    w.refresh_at(12)
    assert w.failing() == 0.0 and w.failures() == 3.0


def test_a_missing_scaler_is_neither_ready_nor_failing(world: World) -> None:
    w = world
    w.cluster.events["e1"] = old_event("e1", KEDA_401, 3, first=T0, last=T0)
    w.cluster.scalers.clear()
    w.refresh_at(5)
    assert w.ready() == 0.0 and w.failing() == 0.0
    assert w.source.health.up


def test_the_gauge_is_absent_until_the_scaler_was_read(world: World) -> None:
    w = world
    assert w.failing() is None and w.ready() is None


def test_a_cluster_that_cannot_be_listed_is_down_and_keeps_its_values(fanout: Fanout) -> None:
    w = World(fanout, watch_timeout=1)
    try:
        w.cluster.events["e1"] = old_event("e1", KEDA_401, 2, first=T0, last=T0)
        w.set_scaler(TRIGGER_ERROR)
        w.cluster.watch_fail = UnavailableError("watch Events: cannot reach the API server")
        w.refresh_at(1)
        feed = w.source.feed("azure-devops")
        wait_until(lambda: not feed.watching)
        w.cluster.fail = UnavailableError("list Events: cannot reach the API server")
        w.refresh_at(2)
        assert not w.source.health.up
        assert w.failures() == 2.0
        assert w.ready() == 0.0 and w.failing() == 1.0
    finally:
        w.close()


def test_a_watch_that_fails_to_relist_leaves_the_list_to_the_refresh(world: World) -> None:
    w = world
    w.refresh_at(1)
    feed = w.source.feed("azure-devops")
    wait_until(lambda: feed.watching)
    w.cluster.fail = UnavailableError("list Events: cannot reach the API server")
    w.cluster.expire_watch()
    wait_until(lambda: not feed.watching)
    w.refresh_at(2)
    assert not w.source.health.up
    w.cluster.fail = None
    w.cluster.events["e1"] = old_event("e1", KEDA_401, 2, first=T0, last=T0)
    w.refresh_at(3)
    assert w.source.health.up and w.failures() == 2.0


@pytest.mark.parametrize(("ready", "value"), [(True, 1.0), (False, 0.0), (None, 0.0)])
def test_ready_gauge_follows_the_ready_condition(world: World, ready: bool | None, value: float) -> None:
    world.cluster.put_scaler("azure-devops", "azure-devops-agent", ready)
    world.refresh_at(1)
    assert world.ready() == value


def test_consumer_info_maps_each_consumer_to_its_token() -> None:
    registry = CollectorRegistry()
    registry.register(ConsumerInfo([keda_token(), daily_token()]))
    assert registry.get_sample_value("patrol_consumer_info", {**LABELS, "token": "keda", "pool": "agents-a"}) == 1
    assert registry.get_sample_value("patrol_consumer_info", {**LABELS, "cluster": "build-b", "token": "keda",
                                                               "pool": "agents-b"}) == 1
