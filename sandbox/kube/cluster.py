"""One simulated cluster: its store, its API server, and what the scenario and actors call.

Guarantees: the sync methods (``put_secret``, ``emit_event``, ...) run on the sandbox's single
event loop and go through the same storage code as HTTP writes, so watchers and listeners see
them exactly as they see a client's write.
"""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Callable

from aiohttp import web

from sandbox.http import FaultTable, RequestLog
from sandbox.kube.errors import not_found
from sandbox.kube.recorder import CoreV1Recorder
from sandbox.kube.store import Store
from sandbox.kube.types import BY_GV_PLURAL, EVENTS, JSON, NAMESPACES, SCALEDJOBS, SECRETS


class ClusterState(Store):
    """The objects of one simulated cluster and the API server in front of them.

    ``event_ttl``: the API server's ``--event-ttl`` (default 1h): an Event is deleted that long
    after its last write. ``history_size``: how many changes per resource type a watch can
    resume from before it gets 410 Gone. ``bookmark_interval``: how often a watch with
    ``allowWatchBookmarks`` gets a BOOKMARK (the real server: about a minute, and ~2s before the
    watch times out). ``recorder_spam_filter``: ``(burst, seconds per token)`` to reproduce
    client-go's per-source+object event throttle (``(25, 300.0)`` in client-go); None = off.
    ``compaction_interval``: the API server's ``--etcd-compaction-interval`` (default 5m): every
    interval etcd is compacted to the revision seen at the previous tick
    (``storage/etcd3/compact.go``), after which an Event watch or list continuation from an older
    resourceVersion gets 410 Gone.
    """

    def __init__(self, name: str, bearer_token: str, *, clock: Callable[[], float] = time.time,
                 event_ttl: float = 3600.0, history_size: int = 10_000, bookmark_interval: float = 60.0,
                 watch_default_timeout: float = 1800.0, reap_interval: float = 1.0,
                 recorder_spam_filter: tuple[int, float] | None = None,
                 compaction_interval: float = 300.0) -> None:
        super().__init__(clock=clock, event_ttl=event_ttl, history_size=history_size)
        self.compaction_interval = compaction_interval
        self._next_compaction: float | None = None
        self._compaction_candidate = 0
        self.name = name
        self.bearer_token = bearer_token
        self.bookmark_interval = bookmark_interval
        self.watch_default_timeout = watch_default_timeout
        self.reap_interval = reap_interval
        self.core_recorder = CoreV1Recorder(self, spam_filter=recorder_spam_filter)
        self.port: int | None = None
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create_namespace(ns)

    @property
    def recorder_spam_filter(self) -> tuple[int, float] | None:
        return self.core_recorder.spam_filter

    @recorder_spam_filter.setter
    def recorder_spam_filter(self, value: tuple[int, float] | None) -> None:
        self.core_recorder.spam_filter = value

    def maybe_compact(self, now: float) -> None:
        """The compactor's tick (``now`` on a monotonic clock): compact to the previous tick's revision."""
        if self._next_compaction is None:
            self._next_compaction = now + self.compaction_interval
            self._compaction_candidate = self.resource_version
            return
        if now < self._next_compaction:
            return
        self.compact_events_to(self._compaction_candidate)
        self._compaction_candidate = self.resource_version
        self._next_compaction = now + self.compaction_interval

    def app(self, *, log: RequestLog | None = None, faults: FaultTable | None = None) -> web.Application:
        """The API server; with ``log``/``faults`` it gets the shared sandbox middlewares."""
        from sandbox.kube.server import ApiServer
        return ApiServer(self).app(log=log, faults=faults)

    # -- scenario / actor API ---------------------------------------------------------------

    def create_namespace(self, ns: str) -> None:
        if (("", ns)) in self.objects[NAMESPACES.key]:
            return
        body = {"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        self.create(NAMESPACES, "", body, manager="kube-apiserver")

    def put_secret(self, ns: str, name: str, data: dict[str, str], *, labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None, field_manager: str = "kubectl",
                   type_: str = "Opaque") -> JSON:
        """Create or replace a Secret from plain-text values.

        ``field_manager="kustomize-controller"`` stands for Flux: the write is an ``Apply`` and the
        Secret gets Flux's ``kustomize.toolkit.fluxcd.io/name``/``namespace`` labels (defaulting
        to ``flux-system``) unless the caller gives them.
        """
        labels = dict(labels or {})
        operation = "Update"
        if field_manager == "kustomize-controller":
            operation = "Apply"
            labels.setdefault("kustomize.toolkit.fluxcd.io/name", "flux-system")
            labels.setdefault("kustomize.toolkit.fluxcd.io/namespace", "flux-system")
        meta: JSON = {"name": name, "namespace": ns}
        if labels:
            meta["labels"] = labels
        if annotations:
            meta["annotations"] = dict(annotations)
        body: JSON = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": type_,
                      "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        self.create_namespace(ns)
        if (ns, name) in self.objects[SECRETS.key]:
            return self.update(SECRETS, ns, name, body, manager=field_manager, operation=operation)
        return self.create(SECRETS, ns, body, manager=field_manager, operation=operation)

    def secret_value(self, ns: str, name: str, key: str) -> str | None:
        obj = self.objects[SECRETS.key].get((ns, name))
        if obj is None:
            return None
        raw = (obj.get("data") or {}).get(key)
        return None if raw is None else base64.b64decode(raw).decode()

    def put_scaledjob(self, ns: str, name: str, *, organization_url: str, pool_name: str, secret_name: str,
                      secret_key: str, polling_interval: int, max_replica_count: int = 10,
                      field_manager: str = "kubectl", rollout_strategy: str | None = None,
                      active_deadline_seconds: int = 14400) -> JSON:
        """Create or replace an azure-pipelines ScaledJob shaped like a real agent deployment.

        ``rollout_strategy`` sets ``spec.rollout.strategy``; None leaves it out (KEDA's ``default``).
        """
        body: JSON = {
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob",
            "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/name": name}},
            "spec": scaledjob_spec(name=name, organization_url=organization_url, pool_name=pool_name,
                                   secret_name=secret_name, secret_key=secret_key,
                                   polling_interval=polling_interval, max_replica_count=max_replica_count,
                                   rollout_strategy=rollout_strategy,
                                   active_deadline_seconds=active_deadline_seconds),
        }
        self.create_namespace(ns)
        existing = self.objects[SCALEDJOBS.key].get((ns, name))
        if existing is not None:
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            return self.update(SCALEDJOBS, ns, name, body, manager=field_manager)
        created = self.create(SCALEDJOBS, ns, body, manager=field_manager)
        # what keda-operator's reconcile writes first (GetInitializedConditions)
        status = {"conditions": [{"type": t, "status": "Unknown"}
                                 for t in ("Ready", "Active", "Fallback", "Paused")]}
        return self.update(SCALEDJOBS, ns, name, {**created, "status": status}, manager="keda",
                           subresource="status")

    def set_status_condition(  # noqa: PLR0917 - the shared sandbox interface
        self, resource: str, ns: str, name: str, type_: str, status: str, reason: str, message: str,
    ) -> None:
        """Set one ``status.conditions[]`` entry of a keda.sh object (a no-op write if unchanged)."""
        rt = BY_GV_PLURAL[("keda.sh/v1alpha1", resource)]
        obj = self.objects[rt.key].get((ns, name))
        if obj is None:
            raise not_found(rt, name)
        new = copy.deepcopy(obj)
        conditions: list[JSON] = new.setdefault("status", {}).setdefault("conditions", [])
        entry = {"type": type_, "status": status, "reason": reason, "message": message}
        for i, c in enumerate(conditions):
            if c.get("type") == type_:
                conditions[i] = entry
                break
        else:
            conditions.append(entry)
        self.update(rt, ns, name, new, manager="keda", subresource="status")

    def set_status_fields(self, resource: str, ns: str, name: str, fields: JSON) -> None:
        """Merge ``fields`` into ``status`` of a keda.sh object (e.g. ``lastActiveTime``)."""
        rt = BY_GV_PLURAL[("keda.sh/v1alpha1", resource)]
        obj = self.objects[rt.key].get((ns, name))
        if obj is None:
            raise not_found(rt, name)
        new = copy.deepcopy(obj)
        new["status"] = {**(new.get("status") or {}), **fields}
        self.update(rt, ns, name, new, manager="keda", subresource="status")

    def emit_event(  # noqa: PLR0917 - the shared sandbox interface
        self, ns: str, involved: JSON, reason: str, message: str, type_: str = "Warning",
        component: str = "scale-handler", *, manager: str = "keda",
    ) -> None:
        """Record an Event as client-go's core/v1 ``record.EventRecorder`` would (see recorder.py)."""
        self.core_recorder.emit(ns, involved, reason, message, type_, component, manager=manager)

    def events(self, ns: str | None = None) -> list[JSON]:
        return self.list_objects("v1", "events", ns)

    def expire_events(self) -> int:
        """Delete Events whose TTL passed (DELETED to watchers); returns how many."""
        now = self.clock()
        expired = [k for k, at in self._event_expiry.items() if at <= now]
        for ns, name in expired:
            self._event_expiry.pop((ns, name), None)
            if (ns, name) in self.objects[EVENTS.key]:
                self.delete(EVENTS, ns, name)
        return len(expired)
# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def scaledjob_spec(*, name: str, organization_url: str, pool_name: str, secret_name: str, secret_key: str,
                   polling_interval: int, max_replica_count: int = 10,
                   rollout_strategy: str | None = None, active_deadline_seconds: int = 14400) -> JSON:
    """A ScaledJob spec as platform teams write it for ephemeral ``--once`` ADO agents.

    Without ``rollout_strategy`` there is no ``rollout`` field, as in most real manifests: KEDA
    then uses ``default`` and deletes running Jobs whenever the spec changes.
    """
    spec: JSON = {
        "jobTargetRef": {
            "parallelism": 1, "completions": 1, "activeDeadlineSeconds": active_deadline_seconds, "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1800,
                    "containers": [{
                        "name": "azure-devops-agent",
                        "image": "sandbox.azurecr.io/azure-devops-agent:ubuntu-22.04",
                        "args": ["--once"],
                        "env": [
                            {"name": "AZP_URL", "value": organization_url},
                            {"name": "AZP_POOL", "value": pool_name},
                            {"name": "AZP_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret_name,
                                                                                 "key": secret_key}}},
                        ],
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"cpu": "2", "memory": "4Gi"}},
                    }],
                },
            },
        },
        "pollingInterval": polling_interval,
        "successfulJobsHistoryLimit": 5,
        "failedJobsHistoryLimit": 5,
        "maxReplicaCount": max_replica_count,
        "scalingStrategy": {"strategy": "default"},
        "triggers": [{
            "type": "azure-pipelines",
            "metadata": {
                "poolName": pool_name,
                "organizationURLFromEnv": "AZP_URL",
                "personalAccessTokenFromEnv": "AZP_TOKEN",
            },
        }],
    }
    if rollout_strategy is not None:
        spec["rollout"] = {"strategy": rollout_strategy}
    return spec


