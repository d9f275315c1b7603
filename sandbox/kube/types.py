"""The resource types one simulated API server serves, and the version it claims to be.

Guarantees: every type the server routes is in :data:`RESOURCE_TYPES`, with the field labels a
field selector may use and the time fields the decoder checks (``metav1.Time`` vs ``MicroTime``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
Listener = Callable[[str, "ResourceType", JSON], None]

SERVER_VERSION: JSON = {
    "major": "1", "minor": "30", "gitVersion": "v1.30.3",
    "gitCommit": "6fc0a69044f1ac4c13841ec4391224a2df241460", "gitTreeState": "clean",
    "buildDate": "2024-07-16T23:48:12Z", "goVersion": "go1.22.5", "compiler": "gc",
    "platform": "linux/amd64",
}
# ---------------------------------------------------------------------------------------------
# Resource types served
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool = True
    custom: bool = False                 # a CRD: unstructured, no strategic merge, tracks generation
    status_subresource: bool = False
    field_labels: frozenset[str] = frozenset({"metadata.name", "metadata.namespace"})
    micro_time_fields: tuple[tuple[str, ...], ...] = ()
    time_fields: tuple[tuple[str, ...], ...] = ()
    unconditional_update: bool = True    # PUT without resourceVersion allowed
    short_names: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def key(self) -> str:
        return f"{self.group_version}/{self.plural}"


_EVENT_FIELDS = frozenset({
    "metadata.name", "metadata.namespace", "involvedObject.kind", "involvedObject.namespace",
    "involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion",
    "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "reportingComponent",
    "source", "type",
})

NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", "namespace", namespaced=False,
                          field_labels=frozenset({"metadata.name", "status.phase"}), short_names=("ns",))
SECRETS = ResourceType("", "v1", "secrets", "Secret", "secret",
                       field_labels=frozenset({"metadata.name", "metadata.namespace", "type"}))
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", "configmap", short_names=("cm",))
EVENTS = ResourceType("", "v1", "events", "Event", "event", field_labels=_EVENT_FIELDS,
                      micro_time_fields=(("eventTime",), ("series", "lastObservedTime")),
                      time_fields=(("firstTimestamp",), ("lastTimestamp",)), short_names=("ev",))
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease", "lease",
                      micro_time_fields=(("spec", "acquireTime"), ("spec", "renewTime")))
SCALEDJOBS = ResourceType("keda.sh", "v1alpha1", "scaledjobs", "ScaledJob", "scaledjob", custom=True,
                          status_subresource=True, unconditional_update=False, short_names=("sj",))
SCALEDOBJECTS = ResourceType("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject", "scaledobject",
                             custom=True, status_subresource=True, unconditional_update=False,
                             short_names=("so",))
# batch/v1 Jobs: the agent Jobs KEDA creates for a ScaledJob (pkg/scaling/executor/scale_jobs.go).
JOBS = ResourceType("batch", "v1", "jobs", "Job", "job", status_subresource=True,
                    field_labels=frozenset({"metadata.name", "metadata.namespace", "status.successful"}),
                    time_fields=(("status", "startTime"), ("status", "completionTime")))
# events.k8s.io/v1 Events: another view of the same storage as core/v1 events (the API server
# converts between them), so it has no key of its own in the store; see sandbox.kube.eventsv1.
EVENTS_V1 = ResourceType("events.k8s.io", "v1", "events", "Event", "event",
                         field_labels=frozenset({
                             "metadata.name", "metadata.namespace", "regarding.kind", "regarding.namespace",
                             "regarding.name", "regarding.uid", "regarding.apiVersion",
                             "regarding.resourceVersion", "regarding.fieldPath", "reason", "reportingController",
                             "type"}),
                         micro_time_fields=(("eventTime",), ("series", "lastObservedTime")),
                         time_fields=(("deprecatedFirstTimestamp",), ("deprecatedLastTimestamp",)),
                         short_names=("ev",))
TRIGGERAUTHENTICATIONS = ResourceType("keda.sh", "v1alpha1", "triggerauthentications",
                                      "TriggerAuthentication", "triggerauthentication", custom=True,
                                      unconditional_update=False, short_names=("ta", "triggerauth"))

RESOURCE_TYPES: tuple[ResourceType, ...] = (
    NAMESPACES, SECRETS, CONFIGMAPS, EVENTS, LEASES, JOBS, SCALEDJOBS, SCALEDOBJECTS, TRIGGERAUTHENTICATIONS,
)
# what the server routes: the stored types plus the views over another type's storage
SERVED_TYPES: tuple[ResourceType, ...] = (*RESOURCE_TYPES, EVENTS_V1)
BY_GV_PLURAL: dict[tuple[str, str], ResourceType] = {(r.group_version, r.plural): r for r in SERVED_TYPES}
