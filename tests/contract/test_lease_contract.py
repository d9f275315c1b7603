"""core.lease.LeaseLock against the sandbox API server, whose Lease validation parses MicroTime
as strictly as the real one (exactly six fractional digits)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from core import config
from core.errors import ConflictError
from core.kube import KubeCluster
from core.lease import LeaseLock
from sandbox.app import SandboxThread
from sandbox.http import Fault

pytestmark = pytest.mark.contract

NS = "azure-devops"
MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class Clock:
    """A settable clock, starting on a whole second (microsecond == 0: the isoformat trap)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now



@pytest.fixture(scope="module")
def kube(sandbox: SandboxThread) -> Iterator[KubeCluster]:
    with KubeCluster(config.Cluster(name="cft-ptl", context="cft-ptl",
                                    kubeconfig=sandbox.ready["kubeconfig"])) as cluster:
        yield cluster


def stored_spec(sandbox: SandboxThread, name: str) -> dict[str, object]:
    cluster = sandbox.world.clusters["cft-ptl"]
    obj = sandbox.call(cluster.get_object, "coordination.k8s.io/v1", "leases", NS, name)
    assert obj is not None
    spec: dict[str, object] = obj["spec"]
    return spec


def test_acquire_renew_and_refuse_while_held(sandbox: SandboxThread, kube: KubeCluster) -> None:
    clock = Clock()
    a = LeaseLock(kube, NS, "patrol-a", "worker-a", timedelta(seconds=15), clock=clock)
    b = LeaseLock(kube, NS, "patrol-a", "worker-b", timedelta(seconds=15), clock=clock)
    assert a.try_acquire_or_renew() is True                 # created, on a whole second
    spec = stored_spec(sandbox, "patrol-a")
    assert spec["holderIdentity"] == "worker-a"
    assert MICRO.match(str(spec["renewTime"])) and str(spec["renewTime"]).endswith(".000000Z")
    assert b.try_acquire_or_renew() is False
    assert a.holder() == b.holder() == "worker-a"
    clock.now += 5.25
    assert a.try_acquire_or_renew() is True                 # renewed
    renewed = stored_spec(sandbox, "patrol-a")
    assert str(renewed["renewTime"]).endswith(".250000Z")
    assert renewed["acquireTime"] == spec["acquireTime"]
    assert renewed["leaseTransitions"] == 0


def test_steal_after_expiry_then_the_old_holder_is_refused(sandbox: SandboxThread, kube: KubeCluster) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = LeaseLock(kube, NS, "patrol-b", "worker-a", timedelta(seconds=15), clock=clock_a)
    b = LeaseLock(kube, NS, "patrol-b", "worker-b", timedelta(seconds=15), clock=clock_b)
    assert a.try_acquire_or_renew() is True
    clock_b.now += 14
    assert b.try_acquire_or_renew() is False                # not yet expired
    clock_b.now += 2
    assert b.holder() is None                               # expired, from b's point of view
    assert b.try_acquire_or_renew() is True                 # stolen
    spec = stored_spec(sandbox, "patrol-b")
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("worker-b", 1)
    assert a.try_acquire_or_renew() is False                # b's renewTime is fresh for a's clock too
    assert a.holder() == "worker-b"


def test_release_lets_the_other_in_at_once(kube: KubeCluster) -> None:
    clock = Clock()
    a = LeaseLock(kube, NS, "patrol-c", "worker-a", timedelta(seconds=15), clock=clock)
    b = LeaseLock(kube, NS, "patrol-c", "worker-b", timedelta(seconds=15), clock=clock)
    assert a.try_acquire_or_renew() is True
    b.release()                                             # not b's: a no-op
    assert a.holder() == "worker-a"
    a.release()
    assert a.holder() is None
    assert b.try_acquire_or_renew() is True


def test_a_stale_resource_version_conflicts_and_the_lock_reports_lost(sandbox: SandboxThread,
                                                                       kube: KubeCluster) -> None:
    clock = Clock()
    a = LeaseLock(kube, NS, "patrol-d", "worker-a", timedelta(seconds=15), clock=clock)
    assert a.try_acquire_or_renew() is True
    stale = kube.read_lease(NS, "patrol-d")
    assert stale is not None
    clock.now += 1
    assert a.try_acquire_or_renew() is True                 # moves the resourceVersion on
    now = datetime.fromtimestamp(clock.now, UTC)
    with pytest.raises(ConflictError):
        kube.replace_lease(NS, "patrol-d", resource_version=stale.resource_version, holder="worker-b",
                           duration_seconds=15, acquire_time=now, renew_time=now, transitions=1)
    # the 409 seen by the lock itself (another writer between its read and its write)
    fault_id = sandbox.call(sandbox.world.faults.add, Fault(kind="status", service="kube:cft-ptl", status=409,
                                                            method="PUT", path_regex="/leases/patrol-d$"))
    try:
        assert a.try_acquire_or_renew() is False
    finally:
        sandbox.call(sandbox.world.faults.remove, fault_id)
    assert a.try_acquire_or_renew() is True


def test_the_python_clients_own_datetime_serialization_is_rejected(sandbox: SandboxThread) -> None:
    """Why core.kube sends MicroTime as strings: a datetime with microsecond == 0 goes out as
    ``isoformat()`` (no fraction), which the API server's MicroTime parser refuses."""
    api = k8s_config.new_client_from_config(config_file=sandbox.ready["kubeconfig"], context="cft-ptl",
                                            persist_config=False)
    try:
        whole_second = datetime.now(UTC).replace(microsecond=0)
        lease = k8s_client.V1Lease(metadata=k8s_client.V1ObjectMeta(name="patrol-isoformat", namespace=NS),
                                   spec=k8s_client.V1LeaseSpec(holder_identity="x", lease_duration_seconds=15,
                                                               acquire_time=whole_second,
                                                               renew_time=whole_second))
        with pytest.raises(ApiException) as info:
            k8s_client.CoordinationV1Api(api).create_namespaced_lease(NS, lease)
        assert info.value.status in (400, 422)
    finally:
        api.close()
        api.rest_client.pool_manager.clear()
