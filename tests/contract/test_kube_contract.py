"""core.kube with the real ``kubernetes`` client against the sandbox API server (kubeconfig
context per cluster): Secrets, Events list/watch, KEDA ScaledJobs, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from core import config
from core.errors import ConflictError, NotFoundError, PermanentError, ServerError, UnauthorizedError
from core.kube import KubeCluster, ResourceExpiredError
from core.secret import Secret
from sandbox.app import SandboxThread
from sandbox.http import Fault

pytestmark = pytest.mark.contract

NS = "azure-devops"
NEW_PAT = "newpatvalue234567abcdefghijklmnopqrstuvwxyz234567abcd"



@pytest.fixture(scope="module")
def kube(sandbox: SandboxThread) -> Iterator[KubeCluster]:
    with KubeCluster(config.Cluster(name="build-a", context="build-a",
                                    kubeconfig=sandbox.ready["kubeconfig"])) as cluster:
        yield cluster


def state(sandbox: SandboxThread, name: str = "build-a"):  # type: ignore[no-untyped-def]
    return sandbox.world.clusters[name]


def test_each_cluster_is_its_own_client(sandbox: SandboxThread, kube: KubeCluster) -> None:
    sandbox.call(state(sandbox, "build-b").put_secret, NS, "only-in-build-b", {"k": "v"})
    with KubeCluster(config.Cluster(name="build-b", context="build-b",
                                    kubeconfig=sandbox.ready["kubeconfig"])) as build_b:
        assert build_b.read_secret(NS, "only-in-build-b").name == "only-in-build-b"
    with pytest.raises(NotFoundError):
        kube.read_secret(NS, "only-in-build-b")


def test_read_the_seeded_secret(sandbox: SandboxThread, kube: KubeCluster) -> None:
    secret = kube.read_secret(NS, "azure-devops-token")
    seeded = sandbox.call(state(sandbox).secret_value, NS, "azure-devops-token", "token")
    assert secret.data["token"] == Secret(seeded)
    assert secret.resource_version
    assert secret.flux_managed is False
    assert secret.flux_ssa is None


def test_patch_with_the_read_version_then_a_stale_one_conflicts(sandbox: SandboxThread,
                                                                 kube: KubeCluster) -> None:
    sandbox.call(state(sandbox).put_secret, NS, "patrol-patch", {"token": "old-value-abcdefgh"})
    before = kube.read_secret(NS, "patrol-patch")
    after = kube.patch_secret(NS, "patrol-patch", key="token", value=Secret(NEW_PAT),
                              annotations={"patrol.io/authorization-id": "auth-2"},
                              resource_version=before.resource_version)
    assert after.data["token"] == Secret(NEW_PAT)
    assert after.annotations["patrol.io/authorization-id"] == "auth-2"
    assert after.resource_version != before.resource_version
    assert sandbox.call(state(sandbox).secret_value, NS, "patrol-patch", "token") == NEW_PAT
    with pytest.raises(ConflictError) as info:
        kube.patch_secret(NS, "patrol-patch", key="token", value=Secret("another-value-12345678"),
                          annotations={}, resource_version=before.resource_version)
    assert info.value.status == 409
    assert NEW_PAT not in str(info.value) and "another-value-12345678" not in str(info.value)
    assert sandbox.call(state(sandbox).secret_value, NS, "patrol-patch", "token") == NEW_PAT


def test_flux_managed_secret_is_detected(sandbox: SandboxThread, kube: KubeCluster) -> None:
    sandbox.call(lambda: state(sandbox).put_secret(
        NS, "flux-token", {"token": "from-git-value-1234"}, field_manager="kustomize-controller",
        annotations={"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"}))
    secret = kube.read_secret(NS, "flux-token")
    assert secret.flux_managed is True
    assert "kustomize-controller" in secret.field_managers
    assert secret.flux_ssa == "IfNotPresent"


def test_missing_secret_is_not_found(kube: KubeCluster) -> None:
    with pytest.raises(NotFoundError) as info:
        kube.read_secret(NS, "no-such-secret")
    assert info.value.status == 404


def test_create_list_and_watch_events(sandbox: SandboxThread, kube: KubeCluster) -> None:
    scaler = kube.get_scaler(NS, "scaledjobs", "azure-devops-agent")
    selector = "involvedObject.name=azure-devops-agent,reason=PatrolContract"
    _, version = kube.list_events(NS, field_selector=selector)
    created = kube.create_event(NS, involved_kind="ScaledJob", involved_name=scaler.name,
                                involved_uid=scaler.uid, api_version="keda.sh/v1alpha1",
                                reason="PatrolContract", message="rotated to authorization auth-2")
    assert (created.reason, created.type, created.involved_kind) == ("PatrolContract", "Normal", "ScaledJob")
    events, _ = kube.list_events(NS, field_selector=selector)
    assert [e.uid for e in events] == [created.uid]
    assert events[0].message == "rotated to authorization auth-2"
    assert events[0].first_timestamp is not None

    seen = []
    for kind, event in kube.watch_events(NS, field_selector=selector, resource_version=version,
                                         timeout_seconds=3):
        seen.append((kind, event.uid))
        if kind == "ADDED":
            break
    assert ("ADDED", created.uid) in seen


def test_watch_from_a_compacted_version_raises_resource_expired(sandbox: SandboxThread,
                                                                 kube: KubeCluster) -> None:
    _, version = kube.list_events(NS, field_selector="reason=PatrolContract")
    sandbox.call(state(sandbox).put_secret, NS, "bump-rv", {"k": "v"})
    kube.create_event(NS, involved_kind="Secret", involved_name="bump-rv", involved_uid="u",
                      api_version="v1", reason="PatrolContract", message="moves the resourceVersion on")
    sandbox.call(state(sandbox).compact)
    with pytest.raises(ResourceExpiredError) as info:
        list(kube.watch_events(NS, field_selector="reason=PatrolContract", resource_version=version,
                               timeout_seconds=2))
    assert info.value.status == 410
    assert isinstance(info.value, ConflictError)


def test_scaled_job_bump_changes_generation_and_pod_template(kube: KubeCluster) -> None:
    before = kube.get_scaler(NS, "scaledjobs", "azure-devops-agent")
    after = kube.bump_scaler(NS, "scaledjobs", "azure-devops-agent", annotation="patrol.io/rotation",
                             value="rot-42")
    assert after.generation == before.generation + 1
    assert after.pod_template_annotations["patrol.io/rotation"] == "rot-42"
    assert kube.get_scaler(NS, "scaledjobs", "azure-devops-agent").generation == after.generation
    assert before.ready in (True, False, None)


def test_scaled_object_bump_is_refused(kube: KubeCluster) -> None:
    with pytest.raises(PermanentError, match="revoke-triggered refresh"):
        kube.bump_scaler(NS, "scaledobjects", "azure-devops-agent", annotation="a", value="b")
    with pytest.raises(NotFoundError):
        kube.get_scaler(NS, "scaledobjects", "azure-devops-agent")


def test_server_errors_from_the_api_server(sandbox: SandboxThread, kube: KubeCluster) -> None:
    fault_id = sandbox.call(sandbox.world.faults.add, Fault(kind="status", service="kube:build-a", status=503,
                                                            path_regex="/secrets/azure-devops-token$"))
    try:
        with pytest.raises(ServerError) as info:
            kube.read_secret(NS, "azure-devops-token")
        assert info.value.status == 503
    finally:
        sandbox.call(sandbox.world.faults.remove, fault_id)


def test_a_wrong_bearer_token_is_unauthorized(sandbox: SandboxThread, tmp_path: Path) -> None:
    doc = yaml.safe_load(Path(sandbox.ready["kubeconfig"]).read_text())
    for user in doc["users"]:
        user["user"]["token"] = "not-a-valid-token"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    with KubeCluster(config.Cluster(name="build-a", context="build-a", kubeconfig=str(path))) as bad, \
            pytest.raises(UnauthorizedError) as info:
        bad.read_secret(NS, "azure-devops-token")
    assert info.value.status == 401
    assert "not-a-valid-token" not in str(info.value)


def test_what_goes_on_the_wire_is_named_by_patrol_not_by_the_client(sandbox: SandboxThread,
                                                                   kube: KubeCluster) -> None:
    """kubernetes >= 37 would default a patch to json-patch+json and send its model's view of a
    body; core.kube names each Content-Type and sends its own JSON (see its module docstring)."""
    since = sandbox.call(lambda: sandbox.world.log.records("kube")[-1].time)
    sandbox.call(state(sandbox).put_secret, NS, "patrol-wire", {"token": "old-value-abcdefgh"})
    before = kube.read_secret(NS, "patrol-wire")
    kube.annotate_secret(NS, "patrol-wire", annotations={"patrol.io/x": "y"},
                         resource_version=before.resource_version)
    kube.bump_scaler(NS, "scaledjobs", "azure-devops-agent", annotation="patrol.io/rotation", value="wire")
    kube.list_events(NS, field_selector="reason=PatrolWire")
    records = sandbox.call(sandbox.world.log.records, "kube", since)
    patches = {r.path.rsplit("/", 1)[-1]: r.headers.get("Content-Type") for r in records if r.method == "PATCH"}
    assert patches == {"patrol-wire": "application/strategic-merge-patch+json",
                       "azure-devops-agent": "application/merge-patch+json"}
    [listed] = [r for r in records if r.method == "GET" and r.path.endswith("/events")]
    assert "fieldSelector=reason%3DPatrolWire" in listed.query
    assert all(r.headers.get("Accept") == "application/json" for r in records if r.service.startswith("kube"))
    assert all(r.headers.get("Authorization", "").startswith("Bearer") for r in records)
