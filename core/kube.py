"""The Kubernetes API as patrol uses it: one client per configured cluster.

Why a wrapper: patrol talks to several clusters at once (one sink or consumer each), so every
call goes through the :class:`KubeCluster` of that cluster — never through the ``kubernetes``
package's process-wide default configuration. Responses are read as raw JSON
(``_preload_content=False``) and parsed by the pure functions below into frozen records, so the
parsing is tested on recorded JSON and no generated model's validation stands between us and
the wire. Every ``ApiException`` and urllib3 failure leaves here as a :mod:`core.errors` type.

Wire details that matter (API-CONTRACTS §7): a dict body to ``patch_namespaced_secret`` goes
out as a strategic merge patch, and to custom objects as a JSON merge patch; a
``metadata.resourceVersion`` in a patch is a precondition (409 if stale); Lease times are
``MicroTime`` and must carry exactly six fractional digits, so they are sent as pre-formatted
strings (:func:`format_micro_time`) — the client would otherwise ``isoformat()`` a datetime.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from core import config
from core.errors import (
    BadRequestError,
    ConfigError,
    ConflictError,
    NotFoundError,
    PatrolError,
    PermanentError,
    ServerError,
    ThrottledError,
    UnauthorizedError,
    UnavailableError,
)
from core.logs import redact
from core.secret import Secret

log = logging.getLogger("patrol.kube")

T = TypeVar("T")
ScalerResource = Literal["scaledjobs", "scaledobjects"]

KEDA_GROUP = "keda.sh"
KEDA_VERSION = "v1alpha1"
FLUX_NAME_LABEL = "kustomize.toolkit.fluxcd.io/name"
FLUX_SSA_ANNOTATION = "kustomize.toolkit.fluxcd.io/ssa"
FLUX_MANAGER = "kustomize-controller"
MICRO_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class ResourceExpiredError(ConflictError):
    """410 Gone: the watched ``resourceVersion`` is too old. List again, then watch from the
    list's ``resourceVersion``. A :class:`ConflictError` (transient), so generic retry code
    treats it as "re-read and try again"."""

    def __init__(self, message: str, *, service: str = "") -> None:
        super().__init__(message, service=service, status=410)


# --------------------------------------------------------------------------------------------
# Records and pure parsing
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KubeSecret:
    name: str
    namespace: str
    resource_version: str
    data: Mapping[str, Secret] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    field_managers: tuple[str, ...] = ()
    flux_managed: bool = False
    flux_ssa: str | None = None           # value of kustomize.toolkit.fluxcd.io/ssa, if set


@dataclass(frozen=True)
class KubeEvent:
    uid: str
    name: str
    reason: str
    type: str
    message: str
    count: int
    first_timestamp: datetime | None
    last_timestamp: datetime | None
    involved_kind: str
    involved_name: str
    involved_namespace: str
    resource_version: str
    # events.k8s.io fields (KEDA >= 2.20 records through that API; client-go tools/events):
    # repeats of one key only raise series.count, and the message stays the first one's.
    event_time: datetime | None = None
    series_count: int | None = None
    reporting_controller: str = ""
    action: str = ""


DEFAULT_POLLING_INTERVAL = 30                 # KEDA's default spec.pollingInterval, seconds
KEDA_JOB_NAME_LABEL = "scaledjob.keda.sh/name"
KEDA_JOB_GENERATION_ANNOTATION = "scaledjob.keda.sh/generation"
ROLLOUT_DEFAULT = "default"
ROLLOUT_GRADUAL = "gradual"
ROLLOUT_NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class KedaScaler:
    name: str
    namespace: str
    uid: str
    generation: int
    ready: bool | None                    # the Ready condition; None if absent or Unknown
    ready_reason: str | None
    ready_message: str | None
    pod_template_annotations: Mapping[str, str] = field(default_factory=dict)
    resource_version: str = ""
    # What KEDA does to a ScaledJob's running Jobs when its spec changes: "default" deletes
    # them all, "gradual" lets them finish (keda-docs, ScaledJob spec, "Rollout Strategy").
    # Whatever the object says is kept verbatim; ScaledObjects have no Jobs: ROLLOUT_NOT_APPLICABLE.
    rollout_strategy: str = ROLLOUT_DEFAULT
    polling_interval: int = DEFAULT_POLLING_INTERVAL   # spec.pollingInterval, seconds
    # ScaledJobs: spec.jobTargetRef.activeDeadlineSeconds, copied onto every agent Job KEDA
    # creates (pkg/scaling/executor/scale_jobs.go, v2.20.0); None when unset (no bound).
    active_deadline_seconds: int | None = None


@dataclass(frozen=True)
class KubeJob:
    """A batch/v1 Job as the drain reads it (KEDA's agent Jobs: pkg/scaling/executor/scale_jobs.go)."""

    name: str
    namespace: str
    created: datetime | None
    start_time: datetime | None
    completion_time: datetime | None
    active: int
    succeeded: int
    failed: int
    finished: bool                          # a Complete or Failed condition is True
    generation: str | None                  # annotation scaledjob.keda.sh/generation
    active_deadline_seconds: int | None

    @property
    def started(self) -> datetime | None:
        """When its pod could first have read the Secret (startTime, else creation)."""
        return self.start_time or self.created

    @property
    def running(self) -> bool:
        return not self.finished and self.completion_time is None


@dataclass(frozen=True)
class LeaseRecord:
    name: str
    namespace: str
    resource_version: str
    holder: str | None
    duration_seconds: int | None
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int


def format_micro_time(when: datetime) -> str:
    """A metav1.MicroTime: UTC, exactly six fractional digits, ``Z`` (never ``isoformat()``)."""
    if when.tzinfo is None:
        raise ValueError("MicroTime needs an aware datetime")
    return when.astimezone(UTC).strftime(MICRO_TIME_FORMAT)


def format_time(when: datetime) -> str:
    """A metav1.Time (RFC 3339, whole seconds, UTC)."""
    if when.tzinfo is None:
        raise ValueError("Time needs an aware datetime")
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(value: object) -> datetime | None:
    """Time or MicroTime (any RFC 3339 form) → aware datetime; None for null/empty."""
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _decode(value: object) -> Secret:
    raw = base64.b64decode(str(value or ""), validate=False)
    return Secret(raw.decode("utf-8", errors="replace"))


def parse_secret(obj: Mapping[str, Any]) -> KubeSecret:
    """A core/v1 Secret (JSON) → :class:`KubeSecret`, values decoded from base64."""
    meta = _meta(obj)
    labels = _str_map(meta.get("labels"))
    annotations = _str_map(meta.get("annotations"))
    managers = tuple(str(m.get("manager", "")) for m in meta.get("managedFields") or []
                     if isinstance(m, Mapping))
    data = obj.get("data") if isinstance(obj.get("data"), Mapping) else {}
    return KubeSecret(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        data={str(k): _decode(v) for k, v in (data or {}).items()},
        labels=labels,
        annotations=annotations,
        field_managers=managers,
        flux_managed=FLUX_NAME_LABEL in labels or FLUX_MANAGER in managers,
        flux_ssa=annotations.get(FLUX_SSA_ANNOTATION),
    )


def parse_event(obj: Mapping[str, Any]) -> KubeEvent:
    """A core/v1 Event (JSON) → :class:`KubeEvent`.

    Events recorded through events.k8s.io (newer KEDA) may leave ``firstTimestamp``,
    ``lastTimestamp`` and ``count`` empty in the core/v1 view and fill ``eventTime`` and
    ``series`` instead (API-CONTRACTS §10), so those are the fallbacks.
    """
    meta = _meta(obj)
    involved = obj.get("involvedObject") if isinstance(obj.get("involvedObject"), Mapping) else {}
    series = obj.get("series") if isinstance(obj.get("series"), Mapping) else {}
    event_time = parse_time(obj.get("eventTime"))
    first = parse_time(obj.get("firstTimestamp")) or event_time
    last = (parse_time(obj.get("lastTimestamp")) or parse_time((series or {}).get("lastObservedTime"))
            or event_time or first)
    count = obj.get("count") or (series or {}).get("count") or 1
    return KubeEvent(
        uid=str(meta.get("uid", "")),
        name=str(meta.get("name", "")),
        reason=str(obj.get("reason") or ""),
        type=str(obj.get("type") or ""),
        message=str(obj.get("message") or ""),
        count=int(count),
        first_timestamp=first,
        last_timestamp=last,
        involved_kind=str((involved or {}).get("kind") or ""),
        involved_name=str((involved or {}).get("name") or ""),
        involved_namespace=str((involved or {}).get("namespace") or meta.get("namespace") or ""),
        resource_version=str(meta.get("resourceVersion", "")),
        event_time=event_time,
        series_count=series_count if isinstance(series_count := (series or {}).get("count"), int) else None,
        reporting_controller=str(obj.get("reportingComponent") or obj.get("reportingController") or ""),
        action=str(obj.get("action") or ""),
    )


def parse_scaler(obj: Mapping[str, Any], resource: str) -> KedaScaler:
    """A KEDA ScaledJob/ScaledObject (JSON) → :class:`KedaScaler`."""
    meta = _meta(obj)
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
    ready: bool | None = None
    reason = message = None
    for cond in (status or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            value = str(cond.get("status", "")).lower()
            ready = True if value == "true" else False if value == "false" else None
            reason = cond.get("reason") or None
            message = cond.get("message") or None
    annotations: dict[str, str] = {}
    rollout = ROLLOUT_NOT_APPLICABLE
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    spec = spec or {}
    deadline: int | None = None
    if resource == "scaledjobs":
        target = spec.get("jobTargetRef") if isinstance(spec.get("jobTargetRef"), Mapping) else {}
        template = ((target or {}).get("template") or {})
        annotations = _str_map((template.get("metadata") or {}).get("annotations"))
        rollout = _rollout_strategy(spec)
        deadline = _opt_int((target or {}).get("activeDeadlineSeconds"))
    polling = _opt_int(spec.get("pollingInterval"))
    return KedaScaler(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        ready=ready,
        ready_reason=str(reason) if reason is not None else None,
        ready_message=str(message) if message is not None else None,
        pod_template_annotations=annotations,
        resource_version=str(meta.get("resourceVersion", "")),
        rollout_strategy=rollout,
        polling_interval=polling if polling is not None and polling > 0 else DEFAULT_POLLING_INTERVAL,
        active_deadline_seconds=deadline,
    )


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _rollout_strategy(spec: Mapping[str, Any]) -> str:
    """The strategy KEDA acts on: the deprecated ``spec.rolloutStrategy`` whenever it is set,
    else ``spec.rollout.strategy``, else KEDA's default — the precedence of
    ``deletePreviousVersionScaleJobs`` (controllers/keda/scaledjob_controller.go, v2.20.0)."""
    deprecated = spec.get("rolloutStrategy")
    if deprecated:
        return str(deprecated)
    rollout = spec.get("rollout")
    strategy = rollout.get("strategy") if isinstance(rollout, Mapping) else None
    return str(strategy or ROLLOUT_DEFAULT)


def parse_job(obj: Mapping[str, Any]) -> KubeJob:
    """A batch/v1 Job (JSON) → :class:`KubeJob`."""
    meta = _meta(obj)
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
    status = status or {}
    finished = any(isinstance(c, Mapping) and c.get("type") in ("Complete", "Failed")
                   and str(c.get("status", "")).lower() == "true"
                   for c in status.get("conditions") or [])
    return KubeJob(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        created=parse_time(meta.get("creationTimestamp")),
        start_time=parse_time(status.get("startTime")),
        completion_time=parse_time(status.get("completionTime")),
        active=_opt_int(status.get("active")) or 0,
        succeeded=_opt_int(status.get("succeeded")) or 0,
        failed=_opt_int(status.get("failed")) or 0,
        finished=finished,
        generation=_str_map(meta.get("annotations")).get(KEDA_JOB_GENERATION_ANNOTATION),
        active_deadline_seconds=_opt_int((spec or {}).get("activeDeadlineSeconds")),
    )


def parse_lease(obj: Mapping[str, Any]) -> LeaseRecord:
    """A coordination.k8s.io/v1 Lease (JSON) → :class:`LeaseRecord`."""
    meta = _meta(obj)
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    spec = spec or {}
    duration = spec.get("leaseDurationSeconds")
    return LeaseRecord(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        holder=str(spec["holderIdentity"]) if spec.get("holderIdentity") else None,
        duration_seconds=int(duration) if duration is not None else None,
        acquire_time=parse_time(spec.get("acquireTime")),
        renew_time=parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def lease_body(namespace: str, name: str, *, holder: str | None, duration_seconds: int,
               acquire_time: datetime, renew_time: datetime, transitions: int,
               resource_version: str | None = None) -> dict[str, Any]:
    """A Lease as a plain dict whose MicroTimes are already strings (see module docstring)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_seconds,
            "acquireTime": format_micro_time(acquire_time),
            "renewTime": format_micro_time(renew_time),
            "leaseTransitions": transitions,
        },
    }


# --------------------------------------------------------------------------------------------
# Error translation
# --------------------------------------------------------------------------------------------

def _status_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str) and body:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, Mapping) and doc.get("message"):
            return redact(str(doc["message"]))
    return redact(str(exc.reason or "").strip().splitlines()[0] if exc.reason else "")


def _retry_after(exc: ApiException) -> float | None:
    headers = exc.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def translate_api_error(exc: BaseException, *, what: str, service: str = "kubernetes") -> PatrolError:
    """``ApiException`` by status (404, 409, 410, 401/403, 400/422, 429, 5xx) and urllib3
    failures (→ Unavailable) to patrol's errors; messages carry the API's Status message only."""
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return UnavailableError(f"{what}: cannot reach the API server: {type(exc).__name__}", service=service)
    if not isinstance(exc, ApiException):
        return ServerError(f"{what}: {type(exc).__name__}", service=service)
    status = int(exc.status or 0)
    text = _status_message(exc)
    line = f"{what}: HTTP {status} {text}".rstrip()
    if status == 0:
        return UnavailableError(f"{what}: cannot reach the API server ({text or 'TLS/connection error'})",
                                service=service)
    if status == 404:
        return NotFoundError(line, service=service, status=404)
    if status == 409:
        return ConflictError(line, service=service, status=409)
    if status == 410:
        return ResourceExpiredError(line, service=service)
    if status in (401, 403):
        return UnauthorizedError(line, service=service, status=status)
    if status == 429:
        return ThrottledError(line, service=service, delay=_retry_after(exc))
    if status >= 500:
        return ServerError(line, service=service, status=status, delay=_retry_after(exc))
    return BadRequestError(line, service=service, status=status)


# --------------------------------------------------------------------------------------------
# The cluster client
# --------------------------------------------------------------------------------------------

def _api_client(cluster: config.Cluster) -> k8s_client.ApiClient:
    try:
        if cluster.in_cluster:
            # type.__call__ skips the class-level default copy: a fresh, private Configuration.
            configuration = type.__call__(k8s_client.Configuration)
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s_client.ApiClient(configuration=configuration)
        return k8s_config.new_client_from_config(config_file=cluster.kubeconfig, context=cluster.context,
                                                 persist_config=False)
    except ConfigException as exc:
        where = "in-cluster service account" if cluster.in_cluster else (cluster.kubeconfig or "$KUBECONFIG")
        raise ConfigError(where, f"clusters[{cluster.name}].context",
                          f"cannot load Kubernetes credentials: {redact(str(exc))}",
                          "check the kubeconfig path and context name") from exc


class KubeCluster:
    """One configured cluster: its own ``ApiClient`` and the calls patrol makes."""

    def __init__(self, cluster: config.Cluster, *, request_timeout: float = 30.0) -> None:
        self.cluster = cluster
        self.service = f"kubernetes/{cluster.name}"
        self._api = _api_client(cluster)
        self._core = k8s_client.CoreV1Api(self._api)
        self._custom = k8s_client.CustomObjectsApi(self._api)
        self._coordination = k8s_client.CoordinationV1Api(self._api)
        self._batch = k8s_client.BatchV1Api(self._api)
        self._timeout = request_timeout

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run one API call with raw JSON out, translating every failure."""
        try:
            response = fn(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise translate_api_error(exc, what=what, service=self.service) from exc
        try:
            raw = response.data
        finally:
            response.release_conn()
        try:
            doc = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ServerError(f"{what}: the API server answered with invalid JSON",
                              service=self.service) from exc
        if not isinstance(doc, dict):
            raise ServerError(f"{what}: the API server answered with a non-object", service=self.service)
        return doc

    # -- Secrets ----------------------------------------------------------------------------

    def read_secret(self, ns: str, name: str) -> KubeSecret:
        doc = self._call(f"read Secret {ns}/{name}", self._core.read_namespaced_secret, name, ns)
        return parse_secret(doc)

    def patch_secret(self, ns: str, name: str, *, key: str, value: Secret,
                     annotations: Mapping[str, str], resource_version: str) -> KubeSecret:
        """Set ``data[key]`` (strategic merge patch) only if the Secret is still at
        ``resource_version``; a stale version raises :class:`ConflictError`."""
        body = {
            "metadata": {"resourceVersion": resource_version, "annotations": dict(annotations)},
            "data": {key: base64.b64encode(value.reveal().encode("utf-8")).decode("ascii")},
        }
        doc = self._call(f"patch Secret {ns}/{name}", self._core.patch_namespaced_secret, name, ns, body)
        return parse_secret(doc)

    def annotate_secret(self, ns: str, name: str, *, annotations: Mapping[str, str],
                        resource_version: str) -> KubeSecret:
        """Set ``annotations`` (strategic merge patch of metadata only: the data is untouched)
        only if the Secret is still at ``resource_version``; a stale version raises
        :class:`ConflictError`. ``patrol adopt`` labels a hand-pasted token this way."""
        body = {"metadata": {"resourceVersion": resource_version, "annotations": dict(annotations)}}
        doc = self._call(f"annotate Secret {ns}/{name}", self._core.patch_namespaced_secret, name, ns, body)
        return parse_secret(doc)

    # -- Events -----------------------------------------------------------------------------

    def list_events(self, ns: str, *, field_selector: str) -> tuple[list[KubeEvent], str]:
        """Events matching ``field_selector`` and the list's ``resourceVersion`` (to watch from)."""
        doc = self._call(f"list Events in {ns}", self._core.list_namespaced_event, ns,
                         field_selector=field_selector)
        items = [parse_event(item) for item in doc.get("items") or [] if isinstance(item, Mapping)]
        return items, str(_meta(doc).get("resourceVersion", ""))

    def watch_events(self, ns: str, *, field_selector: str, resource_version: str,
                     timeout_seconds: int) -> Iterator[tuple[str, KubeEvent]]:
        """Yield ``(type, event)`` from ``resource_version`` on, for at most ``timeout_seconds``.

        Types are ADDED/MODIFIED/DELETED, and BOOKMARK (only ``resource_version`` is set; keep it
        to resume) — though the API server sends none for Events: they have no watch cache, so
        a quiet watch's version only ages. If the version is older than the last compaction
        (410 Gone, as an ERROR event or as the answer) this raises :class:`ResourceExpiredError`:
        call :meth:`list_events` again and watch from its version. The stream simply ends after
        ``timeout_seconds``.
        """
        what = f"watch Events in {ns}"
        watcher = k8s_watch.Watch()
        stream = watcher.stream(self._core.list_namespaced_event, ns, field_selector=field_selector,
                                resource_version=resource_version, timeout_seconds=timeout_seconds,
                                allow_watch_bookmarks=True,
                                _request_timeout=(self._timeout, timeout_seconds + self._timeout))
        try:
            for item in stream:
                kind = str(item.get("type", ""))
                raw = item.get("raw_object")
                yield kind, parse_event(raw if isinstance(raw, Mapping) else {})
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise translate_api_error(exc, what=what, service=self.service) from exc
        finally:
            watcher.stop()
            stream.close()

    def create_event(self, ns: str, *, involved_kind: str, involved_name: str, involved_uid: str,
                     api_version: str, reason: str, message: str, type_: str = "Normal",
                     component: str = "patrol", now: datetime | None = None) -> KubeEvent:
        """Record a core/v1 Event on an object (named like client-go's recorder does)."""
        when = now or datetime.now(UTC)
        stamp = int(when.timestamp() * 1_000_000_000)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{involved_name}.{stamp:x}", "namespace": ns},
            "involvedObject": {"kind": involved_kind, "name": involved_name, "namespace": ns,
                               "uid": involved_uid, "apiVersion": api_version},
            "reason": reason,
            "message": redact(message),
            "type": type_,
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": format_time(when),
            "lastTimestamp": format_time(when),
            "count": 1,
        }
        doc = self._call(f"create Event on {involved_kind} {ns}/{involved_name}",
                         self._core.create_namespaced_event, ns, body)
        return parse_event(doc)

    # -- KEDA -------------------------------------------------------------------------------

    def get_scaler(self, ns: str, resource: ScalerResource, name: str) -> KedaScaler:
        _check_resource(resource)
        doc = self._call(f"read {resource} {ns}/{name}", self._custom.get_namespaced_custom_object,
                         KEDA_GROUP, KEDA_VERSION, ns, resource, name)
        return parse_scaler(doc, resource)

    def bump_scaler(self, ns: str, resource: ScalerResource, name: str, *, annotation: str,
                    value: str) -> KedaScaler:
        """Make KEDA rebuild the scaler (and so re-read the PAT) by changing the spec.

        KEDA does not watch Secrets; it rebuilds a scaler when ``metadata.generation`` changes
        (API-CONTRACTS §0.4). For a ScaledJob we set a pod-template annotation, which is spec,
        so the generation moves and the next jobs carry the annotation — nothing else changes.

        A ScaledObject has no pod template, and ``spec.advanced`` is a typed struct (HPA
        config, scaling modifiers) with no free-form field; the only maps are the triggers'
        ``metadata``, which each scaler parses (unknown keys are ignored today by KEDA's typed
        config, an implementation detail we will not build on). So ScaledObjects are refused
        here with a :class:`PermanentError`: for them the switch is the revoke-triggered
        refresh (revoke the old PAT; KEDA's next poll fails and rebuilds from the Secret).
        """
        _check_resource(resource)
        if resource == "scaledobjects":
            raise PermanentError(
                f"cannot bump ScaledObject {ns}/{name}: a ScaledObject has no pod template and no safe "
                "spec field to change; it picks up a new PAT through the revoke-triggered refresh "
                "(revoke the old PAT, KEDA's next failed poll rebuilds the scaler from the Secret)")
        body = {"spec": {"jobTargetRef": {"template": {"metadata": {"annotations": {annotation: value}}}}}}
        doc = self._call(f"patch {resource} {ns}/{name}", self._custom.patch_namespaced_custom_object,
                         KEDA_GROUP, KEDA_VERSION, ns, resource, name, body)
        return parse_scaler(doc, resource)

    # -- Jobs (the rotation's drain) --------------------------------------------------------

    def list_jobs(self, ns: str, *, label_selector: str) -> list[KubeJob]:
        """batch/v1 Jobs in ``ns`` matching ``label_selector`` (e.g. KEDA's
        ``scaledjob.keda.sh/name=<scaledjob>``)."""
        doc = self._call(f"list Jobs in {ns}", self._batch.list_namespaced_job, ns,
                         label_selector=label_selector)
        return [parse_job(item) for item in doc.get("items") or [] if isinstance(item, Mapping)]

    # -- Leases (used by core.lease.LeaseLock) -----------------------------------------------

    def read_lease(self, ns: str, name: str) -> LeaseRecord | None:
        """The Lease, or None if it does not exist."""
        try:
            doc = self._call(f"read Lease {ns}/{name}", self._coordination.read_namespaced_lease, name, ns)
        except NotFoundError:
            return None
        return parse_lease(doc)

    def create_lease(self, ns: str, name: str, *, holder: str, duration_seconds: int,
                     acquire_time: datetime, renew_time: datetime, transitions: int = 0) -> LeaseRecord:
        """Create the Lease; :class:`ConflictError` if someone created it first."""
        body = lease_body(ns, name, holder=holder, duration_seconds=duration_seconds,
                          acquire_time=acquire_time, renew_time=renew_time, transitions=transitions)
        doc = self._call(f"create Lease {ns}/{name}", self._coordination.create_namespaced_lease, ns, body)
        return parse_lease(doc)

    def replace_lease(self, ns: str, name: str, *, resource_version: str, holder: str | None,
                      duration_seconds: int, acquire_time: datetime, renew_time: datetime,
                      transitions: int) -> LeaseRecord:
        """Replace the Lease if still at ``resource_version``; :class:`ConflictError` if not."""
        body = lease_body(ns, name, holder=holder, duration_seconds=duration_seconds,
                          acquire_time=acquire_time, renew_time=renew_time, transitions=transitions,
                          resource_version=resource_version)
        doc = self._call(f"replace Lease {ns}/{name}", self._coordination.replace_namespaced_lease,
                         name, ns, body)
        return parse_lease(doc)

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self._api.close()
        # ApiClient.close() stops its thread pool only; drop the pooled sockets too.
        self._api.rest_client.pool_manager.clear()

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _check_resource(resource: str) -> None:
    if resource not in ("scaledjobs", "scaledobjects"):
        raise ValueError(f"resource must be 'scaledjobs' or 'scaledobjects', not {resource!r}")
