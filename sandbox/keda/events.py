"""The Events KEDA writes, through the recorder its version uses.

Guarantees: with ``keda_version >= 2.20`` (the default) KEDA's recorders are client-go's
events.k8s.io/v1 recorders (controller-runtime ``mgr.GetEventRecorder``), one per name:
``keda-operator`` for the controllers (``cmd/operator/main.go``) and ``scale-handler`` for the
ScaledJob scale handler and executor (``controllers/keda/scaledjob_controller.go`` line ~83 at
v2.20.0); ``action`` is the reason (KEDA calls ``Eventf(obj, nil, type, reason, reason, msg)``)
and ``reportingInstance`` is ``<controller>-<hostname>`` (``tools/events`` ``NewRecorder``).
With ``keda_version="2.16"`` both names go through client-go's old core/v1 recorder with its
spam filter (25 per source+object, then one per 5 minutes: ``tools/record/events_cache.go``).
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from sandbox.kube import ClusterState
from sandbox.kube.recorder import CoreV1Recorder, EventsV1Recorder

JSON = dict[str, Any]
Component = Literal["keda-operator", "scale-handler"]
COMPONENTS: tuple[Component, ...] = ("keda-operator", "scale-handler")
SPAM_FILTER = (25, 300.0)               # tools/record: defaultSpamBurst, defaultSpamQPS = 1/300


def uses_events_v1(keda_version: str) -> bool:
    """KEDA 2.20 moved to the events.k8s.io recorder; anything older uses core/v1."""
    try:
        major, minor = (int(p) for p in keda_version.split(".")[:2])
    except ValueError:
        raise ValueError(f"keda_version must look like '2.20' or '2.16', not {keda_version!r}") from None
    return (major, minor) >= (2, 20)


class KedaEvents:
    """One cluster's KEDA operator process: its Event recorders."""

    def __init__(self, cluster: ClusterState, *, keda_version: str, series_flush: float = 1800.0,
                 series_idle: float = 360.0) -> None:
        self.cluster = cluster
        self.events_v1 = uses_events_v1(keda_version)
        suffix = "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        self.hostname = f"keda-operator-7d6b9f5c8d-{suffix}"      # the operator pod's name
        self._v1 = {c: EventsV1Recorder(cluster, controller=c, instance=f"{c}-{self.hostname}",
                                        flush=series_flush, idle=series_idle) for c in COMPONENTS}
        self._core = CoreV1Recorder(cluster, spam_filter=SPAM_FILTER)

    def emit(self, component: Component, regarding: JSON, type_: str, reason: str, message: str) -> None:
        if self.events_v1:
            self._v1[component].emit(regarding, type_, reason, reason, message)
        else:
            self._core.emit(str(regarding.get("namespace") or "default"), regarding, reason, message, type_,
                            component)

    def tick(self) -> None:
        """The broadcaster's periodic series jobs (only the events.k8s.io recorder has them)."""
        if self.events_v1:
            for recorder in self._v1.values():
                recorder.tick()
