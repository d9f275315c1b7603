"""KEDA: auth-failure classification, count deltas that never go backwards, watch with list
fallback, the Ready gauge and the consumer info metric."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from core.errors import UnavailableError
from core.keda import is_auth_failure
from exporter.fanout import Fanout
from exporter.keda import ConsumerInfo, EventTally, Keda
from tests.unit.exporter_world import CONSUMERS, FakeCluster, daily_token, keda_token

LABELS = {"cluster": "cft-ptl", "namespace": "azure-devops", "kind": "ScaledJob", "name": "azure-devops-agent"}
KEDA_401 = ("error parsing azure Pipelines metadata: the Azure DevOps REST API returned error. urlString: "
            "http://127.0.0.1:1/org/_apis/distributedtask/pools?poolName=hmcts-agents status: 401 response: ")
KEDA_203 = ("the Azure DevOps REST API returned error. url: https://dev.azure.com/org/_apis/x status: 203 "
            "response: <html>")
KEDA_HTML = "invalid character '<' looking for beginning of value"
KEDA_500 = "the Azure DevOps REST API returned error. urlString: https://dev.azure.com/x status: 500 response: oops"


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


def test_tally_counts_deltas_and_never_goes_backwards() -> None:
    c = FakeCluster()
    tally = EventTally([("ScaledJob", "azure-devops-agent")])
    key = ("ScaledJob", "azure-devops-agent")
    tally.apply("ADDED", c.event("e1", 1, KEDA_401))
    tally.apply("MODIFIED", c.event("e1", 4, KEDA_401))        # aggregated: +3
    tally.apply("MODIFIED", c.event("e1", 4, KEDA_401))        # same count again: +0
    tally.apply("ADDED", c.event("e2", 2, KEDA_500))           # not authentication
    tally.apply("ADDED", c.event("e3", 5, KEDA_401, name="someone-else"))
    tally.apply("ADDED", c.event("e4", 5, KEDA_401, reason="KEDAScalersStarted"))
    assert tally.totals()[key] == 4
    tally.apply("DELETED", c.event("e1", 4, KEDA_401))         # expired: nothing subtracted
    assert tally.totals()[key] == 4
    tally.relist([c.event("e5", 2, KEDA_HTML)])                # e2 forgotten too
    assert tally.totals()[key] == 6
    tally.relist([c.event("e5", 3, KEDA_HTML)])
    assert tally.totals()[key] == 7


def test_tally_counts_growth_of_an_event_whose_message_turned_into_auth() -> None:
    c = FakeCluster()
    tally = EventTally([("ScaledJob", "azure-devops-agent")])
    tally.apply("ADDED", c.event("e1", 3, KEDA_500))
    tally.apply("MODIFIED", c.event("e1", 5, KEDA_401))
    assert tally.totals()[("ScaledJob", "azure-devops-agent")] == 2


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class World:
    def __init__(self, fanout: Fanout) -> None:
        self.cluster = FakeCluster("cft-ptl")
        self.cluster.put_scaler("azure-devops", "azure-devops-agent", True)
        self.source = Keda("cft-ptl", CONSUMERS, self.cluster, fanout=fanout, interval=30.0, watch_timeout=1,
                           watch_retry_delay=0.05)
        self.registry = CollectorRegistry()
        self.registry.register(self.source)

    def close(self) -> None:
        self.source.feed("azure-devops").stop()
        self.cluster.stream.put(None)                          # end an open watch now
        self.source.close()

    def failures(self) -> float | None:
        return self.registry.get_sample_value("patrol_keda_scaler_auth_failures_total", LABELS)

    def ready(self) -> float | None:
        return self.registry.get_sample_value("patrol_keda_scaler_ready", LABELS)


def test_lists_then_watches_and_the_counter_follows_the_watch(fanout: Fanout) -> None:
    w = World(fanout)
    try:
        assert w.failures() == 0.0                             # exported at 0 from the start
        w.cluster.events["e1"] = w.cluster.event("e1", 2, KEDA_401)
        w.source.refresh()
        assert w.failures() == 2.0
        assert w.ready() == 1.0
        assert w.cluster.lists == 1
        feed = w.source.feed("azure-devops")
        wait_until(lambda: feed.watching and w.cluster.watches == 1)

        w.cluster.stream.put(("MODIFIED", w.cluster.event("e1", 5, KEDA_401)))
        wait_until(lambda: w.failures() == 5.0)
        w.cluster.stream.put(("DELETED", w.cluster.event("e1", 5, KEDA_401)))
        w.cluster.stream.put(("ADDED", w.cluster.event("e2", 1, KEDA_203)))
        wait_until(lambda: w.failures() == 6.0)
        w.source.refresh()
        assert w.cluster.lists == 1                            # the watch is healthy: no list
        # only one sample for the configured consumer in this cluster
        assert w.registry.get_sample_value("patrol_keda_scaler_auth_failures_total",
                                           {**LABELS, "cluster": "sds-ptl"}) is None
    finally:
        w.close()


def test_a_gone_watch_falls_back_to_a_list(fanout: Fanout) -> None:
    w = World(fanout)
    try:
        w.source.refresh()
        feed = w.source.feed("azure-devops")
        wait_until(lambda: feed.watching)
        w.cluster.events["e9"] = w.cluster.event("e9", 3, KEDA_HTML)   # missed while the watch dies
        w.cluster.expire_watch()
        wait_until(lambda: not feed.watching)
        w.source.refresh()
        assert w.cluster.lists == 2
        assert w.failures() == 3.0
        assert w.source.health.up
    finally:
        w.close()


def test_a_cluster_that_cannot_be_listed_is_down_and_keeps_its_values(fanout: Fanout) -> None:
    w = World(fanout)
    try:
        w.cluster.events["e1"] = w.cluster.event("e1", 2, KEDA_401)
        w.cluster.watch_fail = UnavailableError("watch Events: cannot reach the API server")
        w.source.refresh()
        feed = w.source.feed("azure-devops")
        wait_until(lambda: not feed.watching)
        w.cluster.fail = UnavailableError("list Events: cannot reach the API server")
        w.source.refresh()
        assert not w.source.health.up
        assert w.failures() == 2.0
        assert w.ready() == 1.0
    finally:
        w.close()


@pytest.mark.parametrize(("ready", "value"), [(True, 1.0), (False, 0.0), (None, 0.0)])
def test_ready_gauge_follows_the_ready_condition(fanout: Fanout, ready: bool | None, value: float) -> None:
    w = World(fanout)
    try:
        w.cluster.put_scaler("azure-devops", "azure-devops-agent", ready)
        w.source.refresh()
        assert w.ready() == value
    finally:
        w.close()


def test_a_missing_scaledjob_is_not_ready(fanout: Fanout) -> None:
    w = World(fanout)
    try:
        w.cluster.scalers.clear()
        w.source.refresh()
        assert w.ready() == 0.0
        assert w.source.health.up
    finally:
        w.close()


def test_consumer_info_maps_each_consumer_to_its_token() -> None:
    registry = CollectorRegistry()
    registry.register(ConsumerInfo([keda_token(), daily_token()]))
    assert registry.get_sample_value("patrol_consumer_info", {**LABELS, "token": "keda", "pool": "hmcts-agents"}) == 1
    assert registry.get_sample_value("patrol_consumer_info", {**LABELS, "cluster": "sds-ptl", "token": "keda",
                                                               "pool": "sds-agents"}) == 1
