"""KEDA's two Event recorders and Event watches, through the real ``kubernetes`` client.

KEDA >= 2.20 records through client-go's events.k8s.io recorder (``tools/events``): a repeat is
matched without its message, the 2nd occurrence writes ``series.count=2`` and later ones are only
flushed periodically. KEDA <= 2.19 used the core/v1 recorder (``tools/record``): count bumps and a
spam filter. The API server serves both ``events.k8s.io/v1`` and core/v1 views of one storage,
never sends BOOKMARKs on Event watches (no watch cache) and answers 410 once etcd compacted past
the requested resourceVersion.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from loop_thread import FakeClock, LoopThread

from sandbox.app import SandboxThread
from sandbox.http import FaultTable, RequestLog
from sandbox.keda.events import KedaEvents, uses_events_v1
from sandbox.kube import ClusterState
from sandbox.kube.recorder import EventsV1Recorder
from sandbox.scenarios import scenario

pytestmark = pytest.mark.contract

TOKEN = "sandbox-cluster-token"
NS = "azure-devops"
SJ_REF = {"kind": "ScaledJob", "namespace": NS, "name": "azure-devops-agent",
          "uid": "3c3b8e62-2f8d-4a55-9a1e-5d1e1f0b8a11", "apiVersion": "keda.sh/v1alpha1", "resourceVersion": "41"}
FLUSH, IDLE = 60.0, 20.0


@dataclass
class World:
    lt: LoopThread
    state: ClusterState
    clock: FakeClock
    api: client.ApiClient
    log: RequestLog

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def events_v1(self) -> client.EventsV1Api:
        return client.EventsV1Api(self.api)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    lt = LoopThread()
    clock = FakeClock()
    state = lt.call(ClusterState, "test", TOKEN, clock=clock, reap_interval=0.05, compaction_interval=3600.0)
    log = RequestLog()
    port = lt.serve(state.app(log=log, faults=FaultTable()))
    lt.call(state.create_namespace, NS)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sandbox",
        "clusters": [{"name": "sandbox", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "sandbox", "user": {"token": TOKEN}}],
        "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "sandbox", "namespace": NS}}],
    }))
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), context="sandbox", client_configuration=cfg)
    api = client.ApiClient(cfg)
    try:
        yield World(lt, state, clock, api, log)
    finally:
        api.close()
        lt.close()


def _recorder(w: World, controller: str = "scale-handler") -> EventsV1Recorder:
    return EventsV1Recorder(w.state, controller=controller, instance=f"{controller}-keda-operator-abc-x1y2z",
                            flush=FLUSH, idle=IDLE)


def _rv_writes(w: World) -> int:
    return w.lt.call(lambda: w.state.resource_version)


# --- KEDA >= 2.20: events.k8s.io series ---------------------------------------------------------


def test_series_keeps_first_message_counts_on_second_and_then_waits_for_the_flush(world: World) -> None:
    rec = world.lt.call(_recorder, world)
    world.lt.call(rec.emit, SJ_REF, "Warning", "KEDAScalerFailed", "KEDAScalerFailed", "first failure")
    [ev] = world.core.list_namespaced_event(NS).items
    assert ev.message == "first failure" and ev.series is None and ev.count is None
    assert ev.first_timestamp is None and ev.last_timestamp is None and ev.source.component is None
    assert (ev.reporting_component, ev.reporting_instance, ev.action) == (
        "scale-handler", "scale-handler-keda-operator-abc-x1y2z", "KEDAScalerFailed")
    assert ev.event_time is not None

    world.clock.advance(2)
    world.lt.call(rec.emit, SJ_REF, "Warning", "KEDAScalerFailed", "KEDAScalerFailed", "second, other text")
    [ev] = world.core.list_namespaced_event(NS).items
    assert ev.message == "first failure"                       # the note is not part of the key
    assert ev.series.count == 2 and ev.count is None
    rv_after_second = _rv_writes(world)

    for _ in range(5):                                         # repeats: no write until a flush
        world.clock.advance(2)
        world.lt.call(rec.emit, SJ_REF, "Warning", "KEDAScalerFailed", "KEDAScalerFailed", "again")
        world.lt.call(rec.tick)
    assert _rv_writes(world) == rv_after_second
    assert world.core.list_namespaced_event(NS).items[0].series.count == 2

    world.clock.advance(FLUSH)                                 # refreshExistingEventSeries
    world.lt.call(rec.tick)
    [ev] = world.core.list_namespaced_event(NS).items
    assert ev.series.count == 7 and ev.message == "first failure"

    # the events.k8s.io/v1 view of the same object
    [v1] = world.events_v1.list_namespaced_event(NS).items
    assert v1.metadata.name == ev.metadata.name and v1.note == "first failure"
    assert v1.regarding.name == "azure-devops-agent" and v1.regarding.resource_version == "41"
    assert v1.reporting_controller == "scale-handler" and v1.series.count == 7
    assert v1.deprecated_count is None and v1.deprecated_source.component is None


def test_finished_series_is_written_and_forgotten_so_a_new_failure_is_a_new_event(world: World) -> None:
    rec = world.lt.call(_recorder, world)
    for _ in range(3):
        world.lt.call(rec.emit, SJ_REF, "Warning", "KEDAScalerFailed", "KEDAScalerFailed", "boom")
        world.clock.advance(1)
    world.clock.advance(IDLE + 1)                              # finishSeries: idle for finishTime
    world.lt.call(rec.tick)
    [ev] = world.core.list_namespaced_event(NS).items
    assert ev.series.count == 3
    world.lt.call(rec.emit, SJ_REF, "Warning", "KEDAScalerFailed", "KEDAScalerFailed", "back again")
    events = sorted(world.core.list_namespaced_event(NS).items, key=lambda e: e.event_time)
    assert [e.message for e in events] == ["boom", "back again"] and events[1].series is None


def test_a_new_resource_version_of_the_regarding_object_is_a_new_event(world: World) -> None:
    rec = world.lt.call(_recorder, world)
    world.lt.call(rec.emit, SJ_REF, "Warning", "KEDAScalerFailed", "KEDAScalerFailed", "a")
    world.lt.call(rec.emit, {**SJ_REF, "resourceVersion": "42"}, "Warning", "KEDAScalerFailed",
                  "KEDAScalerFailed", "b")
    assert sorted(e.message for e in world.core.list_namespaced_event(NS).items) == ["a", "b"]


def test_keda_version_picks_the_recorder(world: World) -> None:
    assert uses_events_v1("2.20") and uses_events_v1("2.21") and not uses_events_v1("2.16")
    with pytest.raises(ValueError, match="keda_version must look like"):
        uses_events_v1("latest")
    old = world.lt.call(lambda: KedaEvents(world.state, keda_version="2.16"))
    for i in range(30):                                        # spam filter: 25, then 1 per 5 min
        world.lt.call(old.emit, "scale-handler", SJ_REF, "Warning", "KEDAScalerFailed", f"boom {i}")
    events = world.core.list_namespaced_event(NS).items
    assert len(events) == 25 and {e.source.component for e in events} == {"scale-handler"}
    assert all(e.count == 1 and e.series is None for e in events)
    world.clock.advance(300)
    world.lt.call(old.emit, "scale-handler", SJ_REF, "Warning", "KEDAScalerFailed", "boom 0")
    bumped = [e for e in world.core.list_namespaced_event(NS).items if e.message == "boom 0"]
    assert bumped[0].count == 2                                # the old key: count bumped


# --- the events.k8s.io/v1 API -----------------------------------------------------------------------


def test_events_v1_create_patch_and_both_views(world: World) -> None:
    now = datetime.now(UTC)
    body = client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="sj.17f0a"), event_time=now, reporting_controller="keda-operator",
        reporting_instance="keda-operator-x", action="KEDAScalerFailed", reason="KEDAScalerFailed",
        type="Warning", note="boom", regarding=client.V1ObjectReference(kind="ScaledJob", namespace=NS, name="sj"))
    created = world.events_v1.create_namespaced_event(NS, body)
    assert created.note == "boom" and created.series is None
    world.events_v1.patch_namespaced_event(
        "sj.17f0a", NS, {"series": {"count": 2, "lastObservedTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}})
    core = world.core.read_namespaced_event("sj.17f0a", NS)
    assert core.message == "boom" and core.series.count == 2 and core.reporting_component == "keda-operator"
    assert core.involved_object.name == "sj"
    got = world.events_v1.read_namespaced_event("sj.17f0a", NS)
    assert got.series.count == 2 and got.regarding.kind == "ScaledJob"
    selected = world.events_v1.list_namespaced_event(NS, field_selector="regarding.name=sj,reason=KEDAScalerFailed")
    assert [e.metadata.name for e in selected.items] == ["sj.17f0a"]
    with pytest.raises(ApiException) as err:                   # the v1 API requires the new fields
        world.events_v1.create_namespaced_event(NS, client.EventsV1Event(
            metadata=client.V1ObjectMeta(name="bad"), event_time=now, reason="X", type="Normal",
            regarding=client.V1ObjectReference(kind="ScaledJob", namespace=NS, name="sj")))
    assert err.value.status == 422 and "reportingController: Required value" in err.value.body
    groups = client.ApisApi(world.api).get_api_versions()
    assert "events.k8s.io" in [g.name for g in groups.groups] and "batch" in [g.name for g in groups.groups]


def test_events_v1_watch_converts_objects(world: World) -> None:
    rv = world.events_v1.list_namespaced_event(NS).metadata.resource_version
    rec = world.lt.call(_recorder, world, "keda-operator")
    world.lt.later(0.2, rec.emit, SJ_REF, "Normal", "ScaledJobReady", "ScaledJobReady", "ready")
    w = watch.Watch()
    seen: list[Any] = []
    for event in w.stream(world.events_v1.list_namespaced_event, NS, resource_version=rv, timeout_seconds=5):
        seen.append((event["type"], event["object"].note, event["object"].reporting_controller))
        w.stop()
    assert seen == [("ADDED", "ready", "keda-operator")]


# --- Event watches as a real API server serves them ------------------------------------------------


def test_event_watch_from_before_a_compaction_gets_410(world: World) -> None:
    rec = world.lt.call(_recorder, world)
    world.lt.call(rec.emit, SJ_REF, "Warning", "KEDAScalerFailed", "KEDAScalerFailed", "a")
    old_rv = world.core.list_namespaced_event(NS).metadata.resource_version
    world.lt.call(rec.emit, {**SJ_REF, "resourceVersion": "50"}, "Warning", "KEDAScalerFailed",
                  "KEDAScalerFailed", "b")
    # two compactor ticks: the first notes the revision, the second compacts to it
    world.lt.call(world.state.maybe_compact, 0.0)
    world.lt.call(rec.emit, {**SJ_REF, "resourceVersion": "51"}, "Warning", "KEDAScalerFailed",
                  "KEDAScalerFailed", "c")
    world.lt.call(world.state.maybe_compact, 3600.0)
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(world.core.list_namespaced_event, NS, resource_version=old_rv):
            pass
    assert err.value.status == 410
    assert err.value.reason == "Expired: The resourceVersion for the provided watch is too old."
    fresh = world.core.list_namespaced_event(NS)               # the recovery: list, then watch from there
    assert len(fresh.items) == 3
    # a resourceVersion after the compaction still resumes
    w = watch.Watch()
    world.lt.later(0.2, rec.emit, {**SJ_REF, "resourceVersion": "52"}, "Warning", "KEDAScalerFailed",
                   "KEDAScalerFailed", "d")
    for event in w.stream(world.core.list_namespaced_event, NS, resource_version=fresh.metadata.resource_version,
                          timeout_seconds=5):
        assert event["object"].message == "d"
        w.stop()


def test_compaction_runs_on_its_own_interval() -> None:
    lt = LoopThread()
    try:
        state = lt.call(ClusterState, "t", TOKEN, reap_interval=0.02, compaction_interval=0.2)
        lt.serve(state.app())
        lt.call(state.create_namespace, NS)
        lt.call(state.emit_event, NS, SJ_REF, "KEDAScalerFailed", "x")
        rv = lt.call(lambda: state.resource_version)
        deadline = time.monotonic() + 5
        while lt.call(lambda: state.compacted_rv) < rv:
            assert time.monotonic() < deadline, "no compaction within 5 s"
            time.sleep(0.05)
    finally:
        lt.close()


# --- the scenario parameter, end to end ------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.20", "2.16"])
def test_keda_version_scenario_picks_the_recorder_end_to_end(tmp_path: Path, version: str) -> None:
    params = scenario("default", keda_version=version, job_interval=None, pipeline_interval=None)
    with SandboxThread(str(tmp_path), params) as sb, httpx.Client(timeout=10) as http:
        control = sb.ready["control_url"]
        sink = {"kind": "kubernetes-secret", "cluster": "build-a", "namespace": NS,
                "secret": "azure-devops-token", "key": "token"}
        assert http.post(f"{control}/ado/sinks/revoke", json=sink).status_code == 200

        def failed() -> list[dict[str, Any]]:
            events = http.get(f"{control}/state").json()["kubernetes"]["build-a"]["events"]
            return [e for e in events if e["reason"] == "KEDAScalerFailed"]

        deadline = time.monotonic() + 20
        while not (found := [e for e in failed() if (e["series"] or {}).get("count", 0) >= 2
                             or (e["count"] or 0) >= 2]):
            assert time.monotonic() < deadline, failed()
            time.sleep(0.2)
        event = found[0]
        assert event["reportingComponent"] == "scale-handler"
        if version == "2.20":
            assert event["count"] is None and event["eventTime"] and event["lastTimestamp"] is None
        else:
            assert event["series"] is None and event["lastTimestamp"] and event["count"] >= 2
