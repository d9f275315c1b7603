"""One simulated Kubernetes API server per cluster, faithful enough for the real client.

patrol talks to Kubernetes only through the official ``kubernetes`` Python client (37.x), so the
sandbox must serve what that client sends and parses, with the API server's real semantics:
``resourceVersion`` as one cluster-wide counter bumped on every write (and *not* on a no-op
write), 409 Conflict on a stale ``resourceVersion`` (in a PUT body or inside a patch body),
the three PATCH content types, ``stringData`` folded into ``data``, ``managedFields`` per field
manager (so a Flux-managed Secret can be told apart), ``metadata.generation`` bumped only by
spec changes on custom resources (KEDA's scaler cache is keyed on it), Lease ``MicroTime``
parsing exactly as Go's ``time.Parse`` does it, Events recorded the way client-go's recorders
do and expired after a TTL, and list/watch with field selectors, bookmarks and the 410
``ERROR`` frame when a watch asks for history that has been compacted away.

Errors are ``Status`` objects with the real reasons and message formats (apimachinery
``errors.New*``), because patrol's adapter maps them to its own error classes.

Where to look: ``types`` (what is served), ``store`` (storage semantics), ``recorder`` (Event
recorders), ``watch`` (watch streams), ``server`` (HTTP routing), ``cluster`` (the scenario and
actor API), ``gotime``/``patch``/``selectors``/``managed``/``errors`` (the API machinery).
"""

from sandbox.kube.cluster import ClusterState, scaledjob_spec
from sandbox.kube.errors import ApiError
from sandbox.kube.gotime import GoTimeError, format_micro_time, format_time, parse_go_time
from sandbox.kube.types import (
    CONFIGMAPS,
    EVENTS,
    EVENTS_V1,
    JOBS,
    JSON,
    LEASES,
    NAMESPACES,
    RESOURCE_TYPES,
    SCALEDJOBS,
    SCALEDOBJECTS,
    SECRETS,
    TRIGGERAUTHENTICATIONS,
    ResourceType,
)

__all__ = [
    "CONFIGMAPS", "EVENTS", "EVENTS_V1", "JOBS", "JSON", "LEASES", "NAMESPACES", "RESOURCE_TYPES",
    "SCALEDJOBS", "SCALEDOBJECTS", "SECRETS", "TRIGGERAUTHENTICATIONS", "ApiError", "ClusterState", "GoTimeError",
    "ResourceType",    "format_micro_time", "format_time", "parse_go_time", "scaledjob_spec",
]
