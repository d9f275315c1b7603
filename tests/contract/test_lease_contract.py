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
    with KubeCluster(config.Cluster(name="build-a", context="build-a",
                                    kubeconfig=sandbox.ready["kubeconfig"])) as cluster:
        yield cluster


def stored_spec(sandbox: SandboxThread, name: str) -> dict[str, object]:
    cluster = sandbox.world.clusters["build-a"]
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


class Monotonic:
    """A settable monotonic clock (each replica's own; never compared across replicas)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_steal_after_expiry_then_the_old_holder_is_refused(sandbox: SandboxThread, kube: KubeCluster) -> None:
    clock_a, clock_b, mono_b = Clock(), Clock(), Monotonic()
    a = LeaseLock(kube, NS, "patrol-b", "worker-a", timedelta(seconds=15), clock=clock_a)
    b = LeaseLock(kube, NS, "patrol-b", "worker-b", timedelta(seconds=15), clock=clock_b, monotonic=mono_b)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False                # b first sees a's record now
    mono_b.now += 14
    assert b.try_acquire_or_renew() is False                # unchanged for 14 s of b's time: not yet expired
    mono_b.now += 2
    assert b.holder() is None                               # unchanged for 16 s: expired, from b's point of view
    assert b.try_acquire_or_renew() is True                 # stolen
    spec = stored_spec(sandbox, "patrol-b")
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("worker-b", 1)
    assert a.try_acquire_or_renew() is False                # a sees a new record: fresh, whatever its clock
    assert a.holder() == "worker-b"


def test_a_replica_whose_clock_runs_40s_ahead_never_takes_a_live_lease(kube: KubeCluster) -> None:
    """Issue 10 defect 12: judged by comparing its wall clock with the holder's renewTime, a
    replica 40 s ahead saw every lease as expired and took it from a live holder."""
    clock_a, mono_a, mono_b = Clock(), Monotonic(), Monotonic()
    clock_b = Clock()
    clock_b.now += 40                                       # NTP broken on b's node
    a = LeaseLock(kube, NS, "patrol-skew", "worker-a", timedelta(seconds=15), clock=clock_a, monotonic=mono_a)
    b = LeaseLock(kube, NS, "patrol-skew", "worker-b", timedelta(seconds=15), clock=clock_b, monotonic=mono_b)
    assert a.try_acquire_or_renew() is True
    for _ in range(12):                                     # a minute of a renewing every 5 s
        assert b.try_acquire_or_renew() is False
        assert b.holder() == "worker-a"
        for clock in (clock_a, clock_b, mono_a, mono_b):
            clock.now += 5
        assert a.try_acquire_or_renew() is True


def test_failover_within_one_duration_of_the_holder_stopping_whatever_the_skew(kube: KubeCluster) -> None:
    """A standby 40 s *behind* used to wait 15 + 40 s; judged on its own clock it takes over one
    lease duration after the holder's record stopped changing."""
    clock_a, clock_b, mono_b = Clock(), Clock(), Monotonic()
    clock_b.now -= 40
    a = LeaseLock(kube, NS, "patrol-failover", "worker-a", timedelta(seconds=15), clock=clock_a)
    b = LeaseLock(kube, NS, "patrol-failover", "worker-b", timedelta(seconds=15), clock=clock_b, monotonic=mono_b)
    assert a.try_acquire_or_renew() is True
    for _ in range(3):                                      # b watches a renew
        assert b.try_acquire_or_renew() is False
        clock_a.now += 5
        clock_b.now += 5
        mono_b.now += 5
        assert a.try_acquire_or_renew() is True             # a's last renewal
    stopped = mono_b.now
    taken_after = None
    for _ in range(60):                                     # b polls every second of its own time
        if b.try_acquire_or_renew():
            taken_after = mono_b.now - stopped
            break
        mono_b.now += 1
        clock_b.now += 1
    assert taken_after is not None and 15 <= taken_after <= 16, taken_after


def test_two_leaderships_with_skewed_clocks_fail_over_in_real_time(sandbox: SandboxThread) -> None:
    """In-process, real time, each replica with its own API client: b's wall clock 40 s ahead
    never makes it leader while a renews; when a stops (killed: no release), b leads within
    about one lease duration."""
    from remediation.leadership import Leadership

    def cluster() -> KubeCluster:
        return KubeCluster(config.Cluster(name="build-a", context="build-a",
                                          kubeconfig=sandbox.ready["kubeconfig"]))

    with cluster() as kube_a, cluster() as kube_b:
        a = Leadership(LeaseLock(kube_a, NS, "patrol-live", "worker-a", timedelta(seconds=2)))
        b = Leadership(LeaseLock(kube_b, NS, "patrol-live", "worker-b", timedelta(seconds=2),
                                 clock=lambda: time.time() + 40))
        assert a.tick() and a.is_leader()
        a.start()
        b.start()
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:              # several renew periods of both
                assert a.is_leader() and not b.is_leader()
                time.sleep(0.05)
            a.stop(release=False)                           # the holder dies without releasing
            stopped = time.monotonic()
            while not b.is_leader():
                assert time.monotonic() - stopped < 2 + 2 * b.renew_every + 1.0, "no failover"
                time.sleep(0.02)
            assert time.monotonic() - stopped >= 1.0        # not before the record went stale
        finally:
            b.stop()
            a.stop()


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
    fault_id = sandbox.call(sandbox.world.faults.add, Fault(kind="status", service="kube:build-a", status=409,
                                                            method="PUT", path_regex="/leases/patrol-d$"))
    try:
        assert a.try_acquire_or_renew() is False
    finally:
        sandbox.call(sandbox.world.faults.remove, fault_id)
    assert a.try_acquire_or_renew() is True


def test_the_python_clients_own_datetime_serialization_is_rejected(sandbox: SandboxThread) -> None:
    """Why core.kube sends MicroTime as strings: a datetime with microsecond == 0 goes out as
    ``isoformat()`` (no fraction), which the API server's MicroTime parser refuses."""
    api = k8s_config.new_client_from_config(config_file=sandbox.ready["kubeconfig"], context="build-a",
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
