"""The KEDA source with the real ``kubernetes`` client against the sandbox API server: the
Events watch survives what a real API server does to it — streams that end, and 410 Gone once
its resourceVersion is older than the last compaction (Events send no bookmarks) — relisting
by itself and counting nothing twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from core.config import load_config
from core.kube import KubeCluster
from exporter.fanout import Fanout
from exporter.keda import Keda
from sandbox.app import SandboxThread

pytestmark = pytest.mark.contract

NS = "azure-devops"
LABELS = {"cluster": "build-a", "namespace": NS, "kind": "ScaledJob", "name": "azure-devops-agent"}
KEDA_401 = ("the Azure DevOps REST API returned error. urlString: https://dev.azure.com/sandbox-org/_apis/"
            "distributedtask/pools/1/jobrequests status: 401 response: ")


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def keda(sandbox: SandboxThread) -> Iterator[tuple[Keda, KubeCluster]]:
    cfg = load_config(sandbox.ready["config"])
    cluster = next(c for c in cfg.clusters if c.name == "build-a")
    fanout = Fanout(2)
    with KubeCluster(cluster) as kube:
        source = Keda("build-a", cfg.tokens, kube, fanout=fanout, interval=60.0, watch_timeout=1,
                      watch_retry_delay=0.1)
        try:
            yield source, kube
        finally:
            source.close()
            fanout.close()


def test_the_watch_relists_by_itself_on_410_and_counts_nothing_twice(
        sandbox: SandboxThread, keda: tuple[Keda, KubeCluster]) -> None:
    source, kube = keda
    registry = CollectorRegistry()
    registry.register(source)
    uid = kube.get_scaler(NS, "scaledjobs", "azure-devops-agent").uid

    def failures() -> float:
        return registry.get_sample_value("patrol_keda_scaler_auth_failures_total", LABELS) or 0.0

    source.refresh()
    assert source.health.up, source.health.reason
    feed = source.feed(NS)
    wait_until("the watch", lambda: feed.watching)
    before = failures()
    kube.create_event(NS, involved_kind="ScaledJob", involved_name="azure-devops-agent", involved_uid=uid,
                      api_version="keda.sh/v1alpha1", reason="KEDAScalerFailed", message=KEDA_401,
                      type_="Warning", component="scale-handler")
    wait_until("the watch to count the Event", lambda: failures() == before + 1)
    lists = feed.lists

    # etcd compacts; the sandbox world moves on (its job generator and KEDA write objects), so
    # the version the watch resumes from when its 1 s stream ends is now too old: 410 Gone.
    sandbox.call(sandbox.world.clusters["build-a"].compact)
    wait_until("the watch to relist on 410", lambda: feed.lists > lists)
    assert feed.watching
    assert failures() == before + 1                   # the relist saw the same Event: +0

    kube.create_event(NS, involved_kind="ScaledJob", involved_name="azure-devops-agent", involved_uid=uid,
                      api_version="keda.sh/v1alpha1", reason="KEDAScalerFailed", message=KEDA_401,
                      type_="Warning", component="scale-handler")
    wait_until("the new watch to count the next Event", lambda: failures() == before + 2)
    assert source.health.up
