"""The real ``kubernetes`` client (37.x), unpatched, against the sandbox's Kubernetes API server."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from loop_thread import FakeClock, LoopThread

from sandbox.http import FaultTable, RequestLog
from sandbox.kube import ClusterState, parse_go_time

pytestmark = pytest.mark.contract

TOKEN = "sandbox-cluster-token"
NS = "azure-devops"


@dataclass
class Kube:
    lt: LoopThread
    state: ClusterState
    api: client.ApiClient
    log: RequestLog
    clock: FakeClock
    kubeconfig: Path
    port: int

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def coordination(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.api)

    def requests(self, method: str, path_part: str) -> list[Any]:
        return [r for r in self.log.records("kube") if r.method == method and path_part in r.path]

    def watches(self, path_part: str, at_least: int) -> list[Any]:
        """Watch requests, once ``at_least`` are logged (a request is logged when the server ends it)."""
        deadline = time.monotonic() + 5
        # 37 sends booleans as "true" (31 sent "True"); the API server parses either (strconv.ParseBool).
        while len(found := [r for r in self.requests("GET", path_part)
                            if "watch=true" in r.query.lower()]) < at_least:
            assert time.monotonic() < deadline, found
            time.sleep(0.02)
        return found

    def raw(self, method: str, path: str, *, body: Any = None,
            content_type: str = "application/json") -> Any:
        """One request with ``body`` sent as given and the answer as parsed JSON; ApiException if
        not 2xx. 37's generated methods first convert a dict body into its model (a Lease's
        MicroTime strings become datetimes and go out as ``isoformat()``), and its ``call_api``
        takes an already serialized request (``param_serialize``)."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.api.param_serialize(method, path, header_params=headers, body=body,
                                           auth_settings=["BearerToken"])
        response = self.api.call_api(*request)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return json.loads(response.data)


def _write_kubeconfig(path: Path, port: int, token: str) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sandbox",
        "clusters": [{"name": "sandbox", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "sandbox", "user": {"token": token}}],
        "contexts": [{"name": "sandbox",
                      "context": {"cluster": "sandbox", "user": "sandbox", "namespace": NS}}],
    }))


def _api_client(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), context="sandbox", client_configuration=cfg)
    return client.ApiClient(cfg)


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Kube]:
    lt = LoopThread()
    clock = FakeClock()
    state = lt.call(ClusterState, "test", TOKEN, clock=clock, history_size=5, bookmark_interval=0.3,
                    event_ttl=600.0, reap_interval=0.05)
    log = RequestLog()
    port = lt.serve(state.app(log=log, faults=FaultTable()))
    lt.call(state.create_namespace, NS)
    kubeconfig = tmp_path / "kubeconfig"
    _write_kubeconfig(kubeconfig, port, TOKEN)
    api = _api_client(kubeconfig)
    try:
        yield Kube(lt, state, api, log, clock, kubeconfig, port)
    finally:
        api.close()
        lt.close()


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _status(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


# --- auth, discovery, unknown paths ------------------------------------------------------------


def test_wrong_token_gets_401_status(kube: Kube, tmp_path: Path) -> None:
    bad = tmp_path / "bad-kubeconfig"
    _write_kubeconfig(bad, kube.port, "not-the-token")
    with _api_client(bad) as api, pytest.raises(ApiException) as err:
        client.CoreV1Api(api).read_namespace(NS)
    assert err.value.status == 401
    assert _status(err.value) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": "Unauthorized", "reason": "Unauthorized", "code": 401}


def test_discovery_and_unknown_paths(kube: Kube) -> None:
    version = client.VersionApi(kube.api).get_code()
    assert version.git_version.startswith("v1.")
    groups = client.ApisApi(kube.api).get_api_versions()
    assert {g.name for g in groups.groups} >= {"keda.sh", "coordination.k8s.io"}
    with pytest.raises(ApiException) as err:
        kube.custom.get_namespaced_custom_object("example.com", "v1", NS, "widgets", "w")
    assert err.value.status == 404
    assert _status(err.value)["message"] == "the server could not find the requested resource"
    assert kube.core.read_namespace(NS).status.phase == "Active"


# --- Secrets ------------------------------------------------------------------------------------


def test_read_secret_has_real_shape(kube: Kube) -> None:
    kube.lt.call(kube.state.put_secret, NS, "azure-devops-token", {"token": "pat-one"})
    secret = kube.core.read_namespaced_secret("azure-devops-token", NS)
    assert secret.kind == "Secret" and secret.api_version == "v1" and secret.type == "Opaque"
    assert secret.data == {"token": _b64("pat-one")}
    assert secret.metadata.resource_version.isdigit()
    assert len(secret.metadata.uid) == 36
    assert secret.metadata.creation_timestamp.tzinfo is not None
    assert secret.metadata.generation is None           # built-in types carry no generation
    [entry] = secret.metadata.managed_fields
    assert (entry.manager, entry.operation, entry.fields_type) == ("kubectl", "Update", "FieldsV1")
    assert entry.fields_v1 == {"f:data": {".": {}, "f:token": {}}, "f:type": {}}
    with pytest.raises(ApiException) as err:
        kube.core.read_namespaced_secret("missing", NS)
    assert err.value.status == 404
    assert _status(err.value)["message"] == 'secrets "missing" not found'
    assert _status(err.value)["details"] == {"name": "missing", "kind": "secrets"}


def test_patch_secret_with_a_dict_is_strategic_merge(kube: Kube) -> None:
    kube.lt.call(kube.state.put_secret, NS, "s", {"token": "old", "other": "keep"})
    rv = int(kube.core.read_namespaced_secret("s", NS).metadata.resource_version)
    patched = kube.core.patch_namespaced_secret("s", NS, {"data": {"token": _b64("new")}})
    [req] = kube.requests("PATCH", "/secrets/s")
    assert req.headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert patched.data == {"token": _b64("new"), "other": _b64("keep")}
    assert int(patched.metadata.resource_version) > rv
    assert kube.lt.call(kube.state.secret_value, NS, "s", "token") == "new"
    managers = {m.manager: m for m in patched.metadata.managed_fields}
    assert set(managers) == {"kubectl", "OpenAPI-Generator"}      # default manager = User-Agent prefix
    assert managers["OpenAPI-Generator"].fields_v1 == {"f:data": {"f:token": {}}}
    assert managers["kubectl"].fields_v1 == {"f:data": {".": {}, "f:other": {}}, "f:type": {}}


def test_patch_secret_with_a_list_is_json_patch(kube: Kube) -> None:
    kube.lt.call(kube.state.put_secret, NS, "s", {"token": "old"})
    patched = kube.core.patch_namespaced_secret(
        "s", NS, [{"op": "test", "path": "/data/token", "value": _b64("old")},
                  {"op": "replace", "path": "/data/token", "value": _b64("new")}])
    [req] = kube.requests("PATCH", "/secrets/s")
    assert req.headers["Content-Type"] == "application/json-patch+json"
    assert patched.data["token"] == _b64("new")
    with pytest.raises(ApiException) as err:
        kube.core.patch_namespaced_secret("s", NS, [{"op": "test", "path": "/data/token",
                                                     "value": _b64("x")}])
    assert err.value.status == 422


def test_merge_patch_and_string_data(kube: Kube) -> None:
    kube.lt.call(kube.state.put_secret, NS, "s", {"token": "old", "drop": "me"})
    data = kube.raw("PATCH", f"/api/v1/namespaces/{NS}/secrets/s", content_type="application/merge-patch+json",
                    body={"data": {"drop": None}, "stringData": {"token": "plain-new"}})
    assert data["data"] == {"token": _b64("plain-new")}      # stringData folded into data, null deleted
    assert "stringData" not in data
    raw = kube.core.read_namespaced_secret("s", NS)
    assert raw.string_data is None


def test_stale_resource_version_is_a_409_conflict(kube: Kube) -> None:
    kube.lt.call(kube.state.put_secret, NS, "ado-pat-keda", {"token": "one"})
    first = kube.core.read_namespaced_secret("ado-pat-keda", NS)
    stale_rv = first.metadata.resource_version
    # no resourceVersion in the patch: last writer wins
    kube.core.patch_namespaced_secret("ado-pat-keda", NS, {"data": {"token": _b64("two")}})
    first.data = {"token": _b64("three")}
    with pytest.raises(ApiException) as err:
        kube.core.replace_namespaced_secret("ado-pat-keda", NS, first)
    assert err.value.status == 409
    assert _status(err.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'Operation cannot be fulfilled on secrets "ado-pat-keda": the object has been modified; '
                   "please apply your changes to the latest version and try again",
        "reason": "Conflict", "details": {"name": "ado-pat-keda", "kind": "secrets"}, "code": 409}
    with pytest.raises(ApiException) as err:
        kube.core.patch_namespaced_secret("ado-pat-keda", NS, {"metadata": {"resourceVersion": stale_rv},
                                                               "data": {"token": _b64("three")}})
    assert err.value.status == 409
    current = kube.core.read_namespaced_secret("ado-pat-keda", NS)
    assert current.data["token"] == _b64("two")
    ok = kube.core.patch_namespaced_secret("ado-pat-keda", NS, {
        "metadata": {"resourceVersion": current.metadata.resource_version}, "data": {"token": _b64("three")}})
    assert int(ok.metadata.resource_version) > int(current.metadata.resource_version)
    current = kube.core.read_namespaced_secret("ado-pat-keda", NS)
    current.data = {"token": _b64("four")}
    replaced = kube.core.replace_namespaced_secret("ado-pat-keda", NS, current)
    assert replaced.data == {"token": _b64("four")}


def test_no_op_write_keeps_resource_version_and_rv_is_cluster_wide(kube: Kube) -> None:
    kube.lt.call(kube.state.put_secret, NS, "a", {"k": "v"})
    rv_a = int(kube.core.read_namespaced_secret("a", NS).metadata.resource_version)
    same = kube.core.patch_namespaced_secret("a", NS, {"data": {"k": _b64("v")}})
    assert int(same.metadata.resource_version) == rv_a
    kube.lt.call(kube.state.put_secret, "default", "b", {"k": "v"})
    rv_b = int(kube.core.read_namespaced_secret("b", "default").metadata.resource_version)
    assert rv_b > rv_a
    listed = kube.core.list_namespaced_secret(NS)
    assert int(listed.metadata.resource_version) >= rv_b
    assert [s.metadata.name for s in listed.items] == ["a"]


def test_list_pages_with_limit_and_continue(kube: Kube) -> None:
    for i in range(5):
        kube.lt.call(kube.state.put_secret, NS, f"s{i}", {"k": str(i)})
    first = kube.core.list_namespaced_secret(NS, limit=2)
    assert [s.metadata.name for s in first.items] == ["s0", "s1"]
    assert first.metadata.remaining_item_count == 3 and first.metadata._continue
    names = [s.metadata.name for s in first.items]
    token = first.metadata._continue
    while token:
        page = kube.core.list_namespaced_secret(NS, limit=2, _continue=token)
        names += [s.metadata.name for s in page.items]
        token = page.metadata._continue
    assert names == [f"s{i}" for i in range(5)]


def test_create_secret_and_errors(kube: Kube) -> None:
    body = client.V1Secret(metadata=client.V1ObjectMeta(name="new", labels={"app": "x"}),
                           string_data={"token": "v"})
    created = kube.core.create_namespaced_secret(NS, body)
    assert created.data == {"token": _b64("v")} and created.type == "Opaque"
    with pytest.raises(ApiException) as err:
        kube.core.create_namespaced_secret(NS, body)
    assert err.value.status == 409 and _status(err.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as err:
        kube.core.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(name="bad"),
                                                               data={"token": "%%%"}))
    assert err.value.status == 400
    assert _status(err.value)["message"].startswith(
        'Secret in version "v1" cannot be handled as a Secret: illegal base64 data at input byte 0')
    labelled = kube.core.list_namespaced_secret(NS, label_selector="app=x").items
    assert [s.metadata.name for s in labelled] == ["new"]
    assert kube.core.list_namespaced_secret(NS, label_selector="app notin (x)").items == []


def test_flux_managed_secret_shows_kustomize_controller(kube: Kube) -> None:
    kube.lt.call(lambda: kube.state.put_secret(NS, "flux-pat", {"token": "git"},
                                               field_manager="kustomize-controller"))
    secret = kube.core.read_namespaced_secret("flux-pat", NS)
    assert secret.metadata.labels == {"kustomize.toolkit.fluxcd.io/name": "flux-system",
                                      "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}
    [entry] = secret.metadata.managed_fields
    assert (entry.manager, entry.operation) == ("kustomize-controller", "Apply")
    patched = kube.core.patch_namespaced_secret("flux-pat", NS, {"data": {"token": _b64("cluster-edit")}},
                                                field_manager="patrol")
    owners = {m.manager: m.fields_v1 for m in patched.metadata.managed_fields}
    assert owners["patrol"] == {"f:data": {"f:token": {}}}
    assert owners["kustomize-controller"]["f:data"] == {".": {}}     # the in-cluster edit took f:token


# --- Events -------------------------------------------------------------------------------------

SJ_REF = {"kind": "ScaledJob", "namespace": NS, "name": "azure-devops-agent",
          "uid": "3c3b8e62-2f8d-4a55-9a1e-5d1e1f0b8a11", "apiVersion": "keda.sh/v1alpha1"}
SELECTOR = "involvedObject.kind=ScaledJob,involvedObject.name=azure-devops-agent,reason=KEDAScalerFailed"


def test_events_aggregate_and_field_selectors(kube: Kube) -> None:
    for _ in range(3):
        kube.lt.call(kube.state.emit_event, NS, SJ_REF, "KEDAScalerFailed", "boom")
        kube.clock.advance(5)
    kube.lt.call(kube.state.emit_event, NS, SJ_REF, "KEDAScalersStarted", "Started scalers watch", "Normal")
    failed = kube.core.list_namespaced_event(NS, field_selector=SELECTOR)
    [ev] = failed.items
    assert ev.count == 3 and ev.type == "Warning" and ev.message == "boom"
    assert ev.source.component == "scale-handler" and ev.reporting_component == "scale-handler"
    assert (ev.last_timestamp - ev.first_timestamp).total_seconds() == 10
    assert ev.metadata.name.startswith("azure-devops-agent.")
    assert ev.involved_object.uid == SJ_REF["uid"]
    normal = kube.core.list_namespaced_event(NS, field_selector="type=Normal,source=scale-handler")
    assert [e.reason for e in normal.items] == ["KEDAScalersStarted"]
    others = kube.core.list_namespaced_event(NS, field_selector="reason!=KEDAScalerFailed").items
    assert [e.type for e in others] == ["Normal"]
    with pytest.raises(ApiException) as err:
        kube.core.list_namespaced_event(NS, field_selector="foo=bar")
    assert err.value.status == 400 and _status(err.value)["message"] == "field label not supported: foo"


def test_watch_events_with_field_selector(kube: Kube) -> None:
    start_rv = kube.core.list_namespaced_event(NS).metadata.resource_version
    kube.lt.later(0.2, kube.state.emit_event, NS, SJ_REF, "KEDAJobsCreated", "Created 1 jobs", "Normal")
    kube.lt.later(0.3, kube.state.emit_event, NS, SJ_REF, "KEDAScalerFailed", "boom")
    kube.lt.later(0.4, kube.state.emit_event, NS, SJ_REF, "KEDAScalerFailed", "boom")
    w = watch.Watch()
    seen = []
    for event in w.stream(kube.core.list_namespaced_event, NS, field_selector=SELECTOR,
                          resource_version=start_rv, timeout_seconds=5):
        seen.append((event["type"], event["object"].reason, event["object"].count))
        if len(seen) == 2:
            w.stop()
    assert seen == [("ADDED", "KEDAScalerFailed", 1), ("MODIFIED", "KEDAScalerFailed", 2)]
    [req] = kube.watches("/events", 1)
    assert "timeoutSeconds=5" in req.query and "fieldSelector=" in req.query


def test_watch_sends_initial_state_and_bookmarks(kube: Kube) -> None:
    kube.lt.call(kube.state.put_secret, NS, "s1", {"k": "v"})
    types = []
    for event in watch.Watch().stream(kube.core.list_namespaced_secret, NS, allow_watch_bookmarks=True,
                                      timeout_seconds=1):
        types.append(event["type"])
        if event["type"] == "BOOKMARK":
            rv = event["raw_object"]["metadata"]["resourceVersion"]
            assert int(rv) == kube.state.resource_version
    assert types[0] == "ADDED"
    assert "BOOKMARK" in types


def test_event_watches_get_no_bookmarks(kube: Kube) -> None:
    """Events are not watch-cached (DefaultWatchCacheSizes: events 0): no BOOKMARK even if asked."""
    kube.lt.call(kube.state.emit_event, NS, SJ_REF, "KEDAScalerFailed", "boom")
    types = [event["type"] for event in watch.Watch().stream(
        kube.core.list_namespaced_event, NS, allow_watch_bookmarks=True, timeout_seconds=1)]
    assert types == ["ADDED"]


def test_watch_from_compacted_resource_version_gets_410(kube: Kube) -> None:
    old_rv = kube.core.list_namespaced_event(NS).metadata.resource_version
    for i in range(8):                                   # history_size=5: the oldest changes fall out
        kube.lt.call(kube.state.emit_event, NS, SJ_REF, "KEDAScalerFailed", f"boom {i}")
    with pytest.raises(ApiException) as err:             # no timeout_seconds: the client retries once
        for _ in watch.Watch().stream(kube.core.list_namespaced_event, NS, resource_version=old_rv):
            pass
    assert err.value.status == 410
    assert err.value.reason.startswith(f"Expired: too old resource version: {old_rv} (")
    time.sleep(0.1)
    assert len(kube.watches("/events", 2)) == 2
    # the documented recovery: list for a fresh resourceVersion and watch from there
    fresh = kube.core.list_namespaced_event(NS)
    assert len(fresh.items) == 8
    kube.lt.later(0.2, kube.state.emit_event, NS, SJ_REF, "KEDAScalerFailed", "after")
    w = watch.Watch()
    for event in w.stream(kube.core.list_namespaced_event, NS,
                          resource_version=fresh.metadata.resource_version, timeout_seconds=5):
        assert (event["type"], event["object"].message) == ("ADDED", "after")
        w.stop()


def test_events_expire_after_ttl_with_deleted_frames(kube: Kube) -> None:
    kube.lt.call(kube.state.emit_event, NS, SJ_REF, "KEDAScalerFailed", "old")
    rv = kube.core.list_namespaced_event(NS).metadata.resource_version
    kube.clock.advance(601)                              # event_ttl=600 in the fixture
    seen = []
    w = watch.Watch()
    for event in w.stream(kube.core.list_namespaced_event, NS, resource_version=rv, timeout_seconds=5):
        seen.append((event["type"], event["object"].message))
        w.stop()
    assert seen == [("DELETED", "old")]
    assert kube.core.list_namespaced_event(NS).items == []


def test_create_event_like_patrol(kube: Kube) -> None:
    body = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="azure-devops-agent."),
        involved_object=client.V1ObjectReference(**{"kind": "ScaledJob", "namespace": NS,
                                                    "name": "azure-devops-agent",
                                                    "api_version": "keda.sh/v1alpha1"}),
        reason="PatRotated", message="patrol rotated the PAT", type="Normal",
        source=client.V1EventSource(component="patrol"),
        first_timestamp=datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=UTC),
        last_timestamp=datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC), count=1)
    created = kube.core.create_namespaced_event(NS, body)
    assert created.metadata.name.startswith("azure-devops-agent.") and len(created.metadata.name) == 24
    raw = kube.raw("GET", f"/api/v1/namespaces/{NS}/events/{created.metadata.name}")
    assert raw["firstTimestamp"] == "2025-01-01T12:00:00Z"
    listed = kube.core.list_namespaced_event(NS, field_selector="source=patrol")
    assert [e.reason for e in listed.items] == ["PatRotated"]
    body.metadata = client.V1ObjectMeta(name="x.1")
    body.involved_object.namespace = "elsewhere"
    with pytest.raises(ApiException) as err:
        kube.core.create_namespaced_event(NS, body)
    assert err.value.status == 422
    assert _status(err.value)["message"] == ('Event "x.1" is invalid: involvedObject.namespace: Invalid '
                                             'value: "elsewhere": does not match event.namespace')


# --- keda.sh custom objects --------------------------------------------------------------------


def _put_sj(kube: Kube) -> None:
    kube.lt.call(lambda: kube.state.put_scaledjob(
        NS, "azure-devops-agent", organization_url="http://127.0.0.1:1/org", pool_name="Agents",
        secret_name="azure-devops-token", secret_key="token", polling_interval=30))


def test_scaledjob_generation_moves_only_with_spec(kube: Kube) -> None:
    _put_sj(kube)
    args = ("keda.sh", "v1alpha1", NS, "scaledjobs", "azure-devops-agent")
    sj = kube.custom.get_namespaced_custom_object(*args)
    assert sj["kind"] == "ScaledJob" and sj["metadata"]["generation"] == 1
    assert sj["spec"]["triggers"][0]["metadata"]["personalAccessTokenFromEnv"] == "AZP_TOKEN"
    assert [c["status"] for c in sj["status"]["conditions"]] == ["Unknown"] * 4
    rv = int(sj["metadata"]["resourceVersion"])

    annotated = kube.custom.patch_namespaced_custom_object(*args, {"metadata": {"annotations": {"a": "b"}}})
    assert annotated["metadata"]["generation"] == 1
    assert int(annotated["metadata"]["resourceVersion"]) > rv
    [req] = kube.requests("PATCH", "/scaledjobs/azure-devops-agent")
    assert req.headers["Content-Type"] == "application/merge-patch+json"

    bumped = kube.custom.patch_namespaced_custom_object(*args, {"spec": {"jobTargetRef": {"template": {
        "metadata": {"annotations": {"patrol.io/pat-rotated-at": "2025-01-01T00:00:00Z"}}}}}})
    assert bumped["metadata"]["generation"] == 2
    assert bumped["spec"]["jobTargetRef"]["template"]["metadata"]["labels"] == {"app": "azure-devops-agent"}

    status_only = kube.custom.patch_namespaced_custom_object_status(*args,
                                                                    {"status": {"lastActiveTime": "x"}})
    assert status_only["metadata"]["generation"] == 2 and status_only["status"]["lastActiveTime"] == "x"
    ignored = kube.custom.patch_namespaced_custom_object(*args, {"status": {"lastActiveTime": "y"}})
    assert ignored["status"]["lastActiveTime"] == "x"    # status only changes through /status

    listed = kube.custom.list_namespaced_custom_object("keda.sh", "v1alpha1", NS, "scaledjobs")
    assert listed["kind"] == "ScaledJobList" and listed["items"][0]["kind"] == "ScaledJob"

    body = kube.custom.get_namespaced_custom_object(*args)
    del body["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as err:
        kube.custom.replace_namespaced_custom_object(*args, body)
    assert err.value.status == 422
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in \
        _status(err.value)["message"]
    with pytest.raises(ApiException) as err:
        kube.raw("PATCH", f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledjobs/azure-devops-agent",
                 content_type="application/strategic-merge-patch+json", body={"metadata": {"labels": {"x": "y"}}})
    assert err.value.status == 415


# --- Leases -------------------------------------------------------------------------------------


def _micro(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_lease_microtime_and_optimistic_locking(kube: Kube) -> None:
    coord = kube.coordination
    now = datetime(2025, 6, 1, 10, 0, 0, tzinfo=UTC)
    spec: dict[str, Any] = {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                            "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": 0}
    lease = {"metadata": {"name": "patrol-worker"}, "spec": spec}
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    created = kube.raw("POST", leases, body=lease)     # raw: 37's model would isoformat() the times
    assert created["spec"]["renewTime"] == _micro(now) and created["spec"]["holderIdentity"] == "pod-a"
    assert coord.read_namespaced_lease("patrol-worker", NS).spec.renew_time == now
    raw = kube.raw("GET", f"{leases}/patrol-worker")
    assert raw["spec"]["renewTime"] == "2025-06-01T10:00:00.000000Z"

    stale = coord.read_namespaced_lease("patrol-worker", NS)
    renewed = coord.patch_namespaced_lease("patrol-worker", NS, {"spec": {"renewTime": _micro(now)}})
    assert renewed.metadata.resource_version == stale.metadata.resource_version   # same value: no-op
    fresh = {"metadata": {"name": "patrol-worker", "resourceVersion": stale.metadata.resource_version},
             "spec": {**spec, "holderIdentity": "pod-b"}}
    kube.raw("PUT", f"{leases}/patrol-worker", body=fresh)
    with pytest.raises(ApiException) as err:      # the loser of a leader race
        kube.raw("PUT", f"{leases}/patrol-worker", body=fresh)
    assert err.value.status == 409
    assert _status(err.value)["message"].startswith(
        'Operation cannot be fulfilled on leases.coordination.k8s.io "patrol-worker": the object has been '
        "modified")

    deleted = coord.delete_namespaced_lease("patrol-worker", NS)
    assert deleted["status"] == "Success"         # 37: delete answers are typed "object", a dict
    with pytest.raises(ApiException) as err:
        coord.read_namespaced_lease("patrol-worker", NS)
    assert _status(err.value)["message"] == 'leases.coordination.k8s.io "patrol-worker" not found'


@pytest.mark.parametrize(("value", "expected"), [
    # datetime.isoformat() of a whole second: no fraction
    (datetime(2025, 6, 1, 10, 0, 0, tzinfo=UTC),
     'parsing time "2025-06-01T10:00:00+00:00" as "2006-01-02T15:04:05.000000Z07:00": '
     'cannot parse "+00:00" as ".000000"'),
    # a naive datetime: no offset
    (datetime(2025, 6, 1, 10, 0, 0, 123456),
     'parsing time "2025-06-01T10:00:00.123456" as "2006-01-02T15:04:05.000000Z07:00": '
     'cannot parse "" as "Z07:00"'),
    # milliseconds, as JavaScript writes them
    ("2025-06-01T10:00:00.123Z",
     'parsing time "2025-06-01T10:00:00.123Z" as "2006-01-02T15:04:05.000000Z07:00": '
     'cannot parse ".123Z" as ".000000"'),
])
def test_lease_rejects_non_microtime(kube: Kube, value: Any, expected: str) -> None:
    # A datetime as the client serializes it (ApiClient.sanitize_for_serialization: isoformat());
    # a string sent raw, since 37's V1LeaseSpec would parse it into a datetime first.
    renew = kube.api.sanitize_for_serialization(value)
    lease = {"metadata": {"name": "l"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
                                                 "renewTime": renew}}
    with pytest.raises(ApiException) as err:
        kube.raw("POST", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", body=lease)
    assert err.value.status == 400
    status = _status(err.value)
    assert status["reason"] == "BadRequest"
    assert status["message"] == f'Lease in version "v1" cannot be handled as a Lease: {expected}'


def test_lease_patch_with_bad_microtime_is_422(kube: Kube) -> None:
    now = _micro(datetime(2025, 6, 1, 10, 0, 0, 1, tzinfo=UTC))
    kube.coordination.create_namespaced_lease(NS, {"metadata": {"name": "l"}, "spec": {"renewTime": now}})
    with pytest.raises(ApiException) as err:
        kube.coordination.patch_namespaced_lease("l", NS, {"spec": {"renewTime": "2025-06-01T10:00:00Z"}})
    assert err.value.status == 422
    status = _status(err.value)
    assert status["reason"] == "Invalid"
    assert 'cannot parse "Z" as ".000000"' in status["message"]
    assert status["details"]["causes"][0]["field"] == "patch"
    accepted = datetime(2025, 6, 1, 10, 0, 0, 1, tzinfo=UTC)
    lease = kube.coordination.patch_namespaced_lease("l", NS, {"spec": {"renewTime": accepted.isoformat()}})
    assert lease.spec.renew_time == accepted


def test_go_time_parser_matches_go() -> None:
    assert parse_go_time("2022-09-28T11:20:22.4633333Z", micro=False).microsecond == 463333
    with pytest.raises(ValueError, match='month out of range'):
        parse_go_time("2022-13-28T11:20:22Z", micro=False)
    with pytest.raises(ValueError, match=r'extra text: "x"'):
        parse_go_time("2022-09-28T11:20:22Zx", micro=False)
    with pytest.raises(ValueError, match=r'cannot parse "789Z" as "Z07:00"'):
        parse_go_time("2022-09-28T11:20:22.123456789Z", micro=True)
