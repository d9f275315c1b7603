"""core.kube: JSON → records, MicroTime, the ApiException table, and what the real client sends.

The wire tests run the real ``kubernetes`` client (through :class:`KubeCluster`, configured from
a kubeconfig file) against a loopback server that records each request and answers a canned
object: they check the bytes patrol puts on the wire (MicroTime strings, patch content types,
the resourceVersion precondition), which is where the Python client's own serialization bites.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes.client.rest import ApiException

from core import config, kube
from core.errors import (
    BadRequestError,
    ConfigError,
    ConflictError,
    NotFoundError,
    PermanentError,
    ServerError,
    ThrottledError,
    UnauthorizedError,
    UnavailableError,
)
from core.secret import Secret

PAT = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst"

SECRET_JSON: dict[str, Any] = {
    "kind": "Secret", "apiVersion": "v1", "type": "Opaque",
    "metadata": {
        "name": "azure-devops-token", "namespace": "azure-devops", "uid": "u-1", "resourceVersion": "4711",
        "labels": {"kustomize.toolkit.fluxcd.io/name": "apps",
                   "kustomize.toolkit.fluxcd.io/namespace": "flux-system"},
        "annotations": {"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"},
        "managedFields": [{"manager": "kustomize-controller", "operation": "Apply"},
                          {"manager": "patrol", "operation": "Update"}],
    },
    "data": {"token": base64.b64encode(PAT.encode()).decode()},
}

EVENT_JSON: dict[str, Any] = {
    "kind": "Event", "apiVersion": "v1",
    "metadata": {"name": "azure-devops-agent.17f0a", "namespace": "azure-devops", "uid": "e-1",
                 "resourceVersion": "900"},
    "involvedObject": {"kind": "ScaledJob", "namespace": "azure-devops", "name": "azure-devops-agent",
                       "uid": "sj-1", "apiVersion": "keda.sh/v1alpha1"},
    "reason": "KEDAScalerFailed", "type": "Warning",
    "message": "error parsing azure Pipelines metadata: ... 401",
    "source": {"component": "keda-operator"},
    "firstTimestamp": "2026-03-01T10:00:00Z", "lastTimestamp": "2026-03-01T10:05:00Z", "count": 6,
}

SCALED_JOB_JSON: dict[str, Any] = {
    "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob",
    "metadata": {"name": "azure-devops-agent", "namespace": "azure-devops", "uid": "sj-1", "generation": 3,
                 "resourceVersion": "77"},
    "spec": {"jobTargetRef": {"template": {"metadata": {"annotations": {"patrol.io/rotated": "r0"}},
                                           "spec": {"containers": [{"name": "agent"}]}}},
             "triggers": [{"type": "azure-pipelines", "metadata": {"poolName": "agents-a"}}]},
    "status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "ScaledJobCheckFailed", "message": "401 Unauthorized"},
        {"type": "Active", "status": "False"}]},
}


# -- pure parsing ------------------------------------------------------------------------------

def test_secret_is_decoded_and_flux_is_detected() -> None:
    secret = kube.parse_secret(SECRET_JSON)
    assert secret.name == "azure-devops-token"
    assert secret.namespace == "azure-devops"
    assert secret.resource_version == "4711"
    assert secret.data == {"token": Secret(PAT)}
    assert secret.field_managers == ("kustomize-controller", "patrol")
    assert secret.flux_managed is True
    assert secret.flux_ssa == "IfNotPresent"


def test_flux_detected_by_field_manager_alone_and_absent_otherwise() -> None:
    by_manager = {"metadata": {"name": "s", "managedFields": [{"manager": "kustomize-controller"}]}}
    assert kube.parse_secret(by_manager).flux_managed is True
    plain = {"metadata": {"name": "s", "managedFields": [{"manager": "kubectl-client-side-apply"}]},
             "data": {}}
    parsed = kube.parse_secret(plain)
    assert (parsed.flux_managed, parsed.flux_ssa, dict(parsed.data)) == (False, None, {})


def test_secret_values_never_show_in_the_record_repr() -> None:
    assert PAT not in repr(kube.parse_secret(SECRET_JSON))


def test_event_parsing() -> None:
    event = kube.parse_event(EVENT_JSON)
    assert event == kube.KubeEvent(
        uid="e-1", name="azure-devops-agent.17f0a", reason="KEDAScalerFailed", type="Warning",
        message="error parsing azure Pipelines metadata: ... 401", count=6,
        first_timestamp=datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
        last_timestamp=datetime(2026, 3, 1, 10, 5, tzinfo=UTC),
        involved_kind="ScaledJob", involved_name="azure-devops-agent", involved_namespace="azure-devops",
        resource_version="900")


def test_event_recorded_through_events_k8s_io_falls_back_to_event_time_and_series() -> None:
    doc = dict(EVENT_JSON, firstTimestamp=None, lastTimestamp=None, count=None,
               eventTime="2026-03-01T10:00:00.123456Z",
               series={"count": 4, "lastObservedTime": "2026-03-01T10:09:00.000000Z"})
    event = kube.parse_event(doc)
    assert event.first_timestamp == datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert event.last_timestamp == datetime(2026, 3, 1, 10, 9, tzinfo=UTC)
    assert event.count == 4


def test_scaled_job_parsing() -> None:
    scaler = kube.parse_scaler(SCALED_JOB_JSON, "scaledjobs")
    assert (scaler.name, scaler.namespace, scaler.uid, scaler.generation) == (
        "azure-devops-agent", "azure-devops", "sj-1", 3)
    assert (scaler.ready, scaler.ready_reason, scaler.ready_message) == (
        False, "ScaledJobCheckFailed", "401 Unauthorized")
    assert scaler.pod_template_annotations == {"patrol.io/rotated": "r0"}


def test_scaler_readiness_unknown_or_missing_is_none() -> None:
    unknown = dict(SCALED_JOB_JSON, status={"conditions": [{"type": "Ready", "status": "Unknown"}]})
    assert kube.parse_scaler(unknown, "scaledjobs").ready is None
    assert kube.parse_scaler({"metadata": {"name": "so"}}, "scaledobjects").ready is None
    assert kube.parse_scaler(SCALED_JOB_JSON, "scaledobjects").pod_template_annotations == {}


@pytest.mark.parametrize(("spec", "expected"), [
    ({}, "default"),                                                      # KEDA's default
    ({"rollout": {"strategy": "gradual"}}, "gradual"),
    ({"rollout": {"strategy": "default", "propagationPolicy": "foreground"}}, "default"),
    ({"rolloutStrategy": "gradual"}, "gradual"),                          # the deprecated field
    ({"rollout": {"propagationPolicy": "foreground"}, "rolloutStrategy": "gradual"}, "gradual"),
    ({"rollout": {"strategy": "default"}, "rolloutStrategy": "gradual"}, "gradual"),   # deprecated wins when set
    ({"rollout": None}, "default"),
    ({"rollout": {"strategy": "Gradual"}}, "Gradual"),                    # kept verbatim
])
def test_scaled_job_rollout_strategy(spec: dict[str, Any], expected: str) -> None:
    doc = dict(SCALED_JOB_JSON, spec={**SCALED_JOB_JSON["spec"], **spec})
    assert kube.parse_scaler(doc, "scaledjobs").rollout_strategy == expected


def test_scaled_object_has_no_rollout_strategy() -> None:
    doc = dict(SCALED_JOB_JSON, spec={"rollout": {"strategy": "gradual"}})
    assert kube.parse_scaler(doc, "scaledobjects").rollout_strategy == kube.ROLLOUT_NOT_APPLICABLE


def test_micro_time_has_six_digits_even_on_a_whole_second() -> None:
    whole = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
    assert kube.format_micro_time(whole) == "2026-03-01T10:00:00.000000Z"
    assert kube.format_micro_time(whole.replace(microsecond=42)) == "2026-03-01T10:00:00.000042Z"
    plus_two = whole.replace(microsecond=500000).astimezone(timezone(timedelta(hours=2)))
    assert kube.format_micro_time(plus_two) == "2026-03-01T10:00:00.500000Z"
    with pytest.raises(ValueError, match="aware"):
        kube.format_micro_time(datetime(2026, 3, 1))


def test_lease_round_trip() -> None:
    when = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
    body = kube.lease_body("ns", "patrol-worker", holder="a", duration_seconds=15, acquire_time=when,
                           renew_time=when + timedelta(seconds=5), transitions=2, resource_version="9")
    assert body["spec"]["renewTime"] == "2026-03-01T10:00:05.000000Z"
    assert body["metadata"]["resourceVersion"] == "9"
    record = kube.parse_lease(body)
    assert record == kube.LeaseRecord(name="patrol-worker", namespace="ns", resource_version="9", holder="a",
                                      duration_seconds=15, acquire_time=when,
                                      renew_time=when + timedelta(seconds=5), transitions=2)


# -- error translation ---------------------------------------------------------------------------

def _api_exception(status: int, *, message: str = "boom",
                   headers: dict[str, str] | None = None) -> ApiException:
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                       "code": status}).encode()
    response = urllib3.HTTPResponse(body=body, status=status, headers=headers or {}, reason="x",
                                    preload_content=True)
    return ApiException(http_resp=response)


@pytest.mark.parametrize(("status", "expected"), [
    (404, NotFoundError), (409, ConflictError), (410, kube.ResourceExpiredError), (401, UnauthorizedError),
    (403, UnauthorizedError), (400, BadRequestError), (422, BadRequestError), (429, ThrottledError),
    (500, ServerError), (504, ServerError), (0, UnavailableError),
])
def test_api_exception_table(status: int, expected: type[Exception]) -> None:
    exc = _api_exception(status) if status else ApiException(status=0, reason="SSLError\ncertificate verify")
    err = kube.translate_api_error(exc, what="read Secret a/b", service="kubernetes/build-a")
    assert type(err) is expected
    assert err.service == "kubernetes/build-a"  # type: ignore[attr-defined]


def test_status_message_is_used_and_retry_after_kept() -> None:
    message = ('Operation cannot be fulfilled on secrets "azure-devops-token": the object has been '
               "modified; please apply your changes to the latest version and try again")
    err = kube.translate_api_error(_api_exception(409, message=message), what="patch Secret a/b")
    assert "the object has been modified" in str(err)
    throttled = kube.translate_api_error(_api_exception(429, headers={"Retry-After": "4"}), what="x")
    assert isinstance(throttled, ThrottledError)
    assert throttled.delay == 4.0


def test_a_body_echoing_a_token_is_masked() -> None:
    Secret(PAT)
    exc = _api_exception(422, message=f"data[token]: Invalid value: {PAT}")
    err = kube.translate_api_error(exc, what="x")
    assert PAT not in str(err)


def test_urllib3_errors_are_unavailable() -> None:
    exc = urllib3.exceptions.MaxRetryError(None, "/api", reason=ConnectionRefusedError())  # type: ignore[arg-type]
    assert isinstance(kube.translate_api_error(exc, what="x"), UnavailableError)


# -- the wire, through the real client ------------------------------------------------------------

@dataclass
class Seen:
    method: str
    path: str
    content_type: str
    body: Any


@dataclass
class Recorder:
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def apiserver() -> Iterator[Recorder]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            recorder.seen.append(Seen(self.command, self.path, self.headers.get("Content-Type", ""),
                                      json.loads(raw) if raw else None))
            status, doc = recorder.answers.pop(0) if recorder.answers else (200, {})
            out = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_PATCH = _serve

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _kubeconfig(tmp_path: Path, server: str) -> str:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "other",
           "clusters": [{"name": "c", "cluster": {"server": server}}],
           "users": [{"name": "u", "user": {"token": "kube-token-value"}}],
           "contexts": [{"name": "build-a", "context": {"cluster": "c", "user": "u"}},
                        {"name": "other", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def cluster(tmp_path: Path, apiserver: Recorder) -> Iterator[kube.KubeCluster]:
    with kube.KubeCluster(config.Cluster(name="build-a", context="build-a",
                                         kubeconfig=_kubeconfig(tmp_path, apiserver.url))) as c:
        yield c


def test_lease_times_go_out_as_six_digit_strings(cluster: kube.KubeCluster, apiserver: Recorder) -> None:
    whole_second = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
    apiserver.answers.append((201, kube.lease_body("ns", "l", holder="a", duration_seconds=15,
                                                   acquire_time=whole_second, renew_time=whole_second,
                                                   transitions=0, resource_version="1")))
    record = cluster.create_lease("ns", "l", holder="a", duration_seconds=15, acquire_time=whole_second,
                                  renew_time=whole_second)
    sent = apiserver.seen[-1]
    assert (sent.method, sent.path) == ("POST", "/apis/coordination.k8s.io/v1/namespaces/ns/leases")
    assert sent.body["spec"]["acquireTime"] == "2026-03-01T10:00:00.000000Z"
    assert sent.body["spec"]["renewTime"] == "2026-03-01T10:00:00.000000Z"
    assert record.renew_time == whole_second


def test_secret_patch_is_a_strategic_merge_with_a_precondition(cluster: kube.KubeCluster,
                                                                apiserver: Recorder) -> None:
    apiserver.answers.append((200, SECRET_JSON))
    cluster.patch_secret("azure-devops", "azure-devops-token", key="token", value=Secret(PAT),
                         annotations={"patrol.io/authorization-id": "a1"}, resource_version="4710")
    sent = apiserver.seen[-1]
    assert sent.method == "PATCH"
    assert sent.path == "/api/v1/namespaces/azure-devops/secrets/azure-devops-token"
    assert sent.content_type == "application/strategic-merge-patch+json"
    assert sent.body == {"metadata": {"resourceVersion": "4710",
                                      "annotations": {"patrol.io/authorization-id": "a1"}},
                         "data": {"token": base64.b64encode(PAT.encode()).decode()}}


def test_scaled_job_bump_is_a_merge_patch_of_the_pod_template(cluster: kube.KubeCluster,
                                                              apiserver: Recorder) -> None:
    apiserver.answers.append((200, SCALED_JOB_JSON))
    cluster.bump_scaler("azure-devops", "scaledjobs", "azure-devops-agent", annotation="patrol.io/rotated",
                        value="r1")
    sent = apiserver.seen[-1]
    assert sent.path == "/apis/keda.sh/v1alpha1/namespaces/azure-devops/scaledjobs/azure-devops-agent"
    assert sent.content_type == "application/merge-patch+json"
    assert sent.body == {"spec": {"jobTargetRef": {"template": {"metadata": {
        "annotations": {"patrol.io/rotated": "r1"}}}}}}


def test_scaled_object_bump_is_refused_without_a_call(cluster: kube.KubeCluster, apiserver: Recorder) -> None:
    with pytest.raises(PermanentError, match="revoke-triggered refresh"):
        cluster.bump_scaler("ns", "scaledobjects", "so", annotation="a", value="v")
    assert apiserver.seen == []


def test_not_found(cluster: kube.KubeCluster, apiserver: Recorder) -> None:
    apiserver.answers.append((404, {"kind": "Status", "message": 'secrets "x" not found', "code": 404}))
    with pytest.raises(NotFoundError, match='secrets "x" not found'):
        cluster.read_secret("ns", "x")
    apiserver.answers.append((404, {"kind": "Status", "message": 'leases "l" not found', "code": 404}))
    assert cluster.read_lease("ns", "l") is None


def test_events_list_returns_the_list_version(cluster: kube.KubeCluster, apiserver: Recorder) -> None:
    apiserver.answers.append((200, {"kind": "EventList", "metadata": {"resourceVersion": "1234"},
                                    "items": [EVENT_JSON]}))
    events, version = cluster.list_events("azure-devops", field_selector="reason=KEDAScalerFailed")
    assert version == "1234"
    assert [e.reason for e in events] == ["KEDAScalerFailed"]
    assert "fieldSelector=reason%3DKEDAScalerFailed" in apiserver.seen[-1].path


def test_unknown_context_is_a_config_error(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="nope"):
        kube.KubeCluster(config.Cluster(name="x", context="nope", kubeconfig=path))


def test_unreachable_api_server_is_unavailable(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, "http://127.0.0.1:9")
    with kube.KubeCluster(config.Cluster(name="x", context="build-a", kubeconfig=path),
                          request_timeout=2) as c, pytest.raises(UnavailableError):
        c.read_secret("ns", "s")


class _Chunks:
    """A urllib3 response as _watch_lines reads it: chunks that ignore line boundaries."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        yield from self.chunks


def test_watch_lines_are_whole_lines_whatever_the_chunking() -> None:
    response = _Chunks(b'{"type":"ADDED"', b',"object":{}}\n\n{"type":"MOD', b'IFIED","object":{}}\n',
                       b'{"type":"DELETED","object":{}}')
    lines = list(kube._watch_lines(response))  # type: ignore[arg-type]
    assert [json.loads(line)["type"] for line in lines] == ["ADDED", "MODIFIED", "DELETED"]
