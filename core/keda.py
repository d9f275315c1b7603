"""What KEDA says about the azure-pipelines scaler's credential: failing to authenticate *now*,
and how many failures its Events account for.

Guarantees, shared by the exporter (``patrol_keda_scaler_auth_failing``) and the worker (which
confirms recovery after a revoke), so both decide the same way:

- :func:`is_auth_failure` is the one classification of a ``KEDAScalerFailed`` message.
- :func:`auth_failing_now` is pure: from a scaler's ``Ready`` condition (read at a known time)
  and the ``KEDAScalerFailed`` Events of that object, it says whether KEDA's latest poll failed
  to authenticate — whichever of the two is newer decides.
- :func:`occurrences` reads an Event's occurrence count from either recorder KEDA uses.

Why the condition *and* the Events, and why neither alone (KEDA v2.20.0 sources):

- ``Ready`` is recomputed by every poll: ``True``/``ScaledJobReady`` when no trigger failed,
  ``False``/``TriggerError`` when all failed and none is active, ``Unknown``/``PartialTriggerError``
  when some failed but one is active (``pkg/scaling/executor/scale_jobs.go`` ``RequestJobScale``;
  ``scale_scaledobjects.go`` ``RequestScale``). It says *that* KEDA is failing now, not *why*,
  and carries no ``lastTransitionTime`` (``apis/keda/v1alpha1/condition_types.go``), so its age
  is when we read it.
- The Event says *why* (its message is the Go error), but since v2.20 KEDA records through
  client-go's events.k8s.io recorder (``vendor/k8s.io/client-go/tools/events/
  event_broadcaster.go``): ``getKey`` matches repeats on type, reason, action, reporting
  controller/instance and the regarding object — not the message; ``recordToSink`` creates the
  Event for the first occurrence, patches ``series.count=2`` for the second and afterwards only
  counts in memory; ``refreshExistingEventSeries`` writes the count every 30 min and
  ``finishSeries`` once more 6 min after the last occurrence. So an ongoing failure stops
  moving its Event after the second poll, and the Event keeps the *first* failure's message.
  KEDA <= 2.19 (``tools/record``; ``events_cache.go`` at v2.16.0) keeps one core/v1 Event per
  distinct message whose ``count`` and ``lastTimestamp`` grow, behind a spam filter keyed on
  source and object (``defaultSpamBurst = 25``, ``defaultSpamQPS = 1/300``: 25 Events, then
  one per 5 minutes).

Limits (documented in docs/metrics.md): a series whose first failure was an authentication
failure classifies every later failure of the same key the same way; a ScaledObject with a
``fallback`` keeps ``Ready`` True while its trigger fails, so for it only an Event newer than
the condition's reading shows the failure; Event times come from KEDA's clock and are compared
with the reader's, so clock skew between the two delays the decision by that much.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:                          # types only: core.kube loads the kubernetes client
    from core.kube import KedaScaler, KubeEvent

FAILURE_REASON = "KEDAScalerFailed"

# Ready reasons that mean "a trigger failed in the latest poll" (KEDA v2.20.0
# pkg/scaling/executor/scale_jobs.go and scale_scaledobjects.go). ScalingDegraded is a
# ScaledObject whose HPA is unhealthy too; its message names the SO's own reason.
TRIGGER_ERROR_REASONS = frozenset({"TriggerError", "PartialTriggerError"})
DEGRADED_REASON = "ScalingDegraded"

AUTH_FAILURE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # "the Azure DevOps REST API returned error. urlString: <url> status: 401 response: <body>"
    re.compile(r"\bstatus:?\s*(401|403|203)\b"),
    # a 2xx HTML sign-in page decoded as JSON (ADO without X-TFS-FedAuthRedirect: Suppress)
    re.compile(r"invalid character '<' looking for beginning of value"),
    re.compile(r"Cannot unmarshal ADO JobRequests API response"),
    # ADO's own refusal texts, when a 401 body is echoed: TF400813 (not authorized),
    # VS30063 (scope), and the expired-PAT service error
    re.compile(r"\bTF400813\b|\bVS30063\b|Personal Access Token used has expired"),
)


def is_auth_failure(message: str) -> bool:
    """Whether a ``KEDAScalerFailed`` message says ADO did not accept the credential."""
    return any(p.search(message) for p in AUTH_FAILURE_PATTERNS)


def occurrences(event: KubeEvent) -> int:
    """How many occurrences the Event accounts for as written to the API: ``series.count``
    (events.k8s.io recorder), else the core/v1 ``count`` (old recorder), at least 1."""
    return max(event.series_count or 0, event.count, 1)


def last_occurrence(event: KubeEvent) -> datetime | None:
    """The newest occurrence the Event shows: ``lastTimestamp`` (old recorder, whole seconds),
    else ``series.lastObservedTime``, else ``eventTime`` (see :func:`core.kube.parse_event`)."""
    return event.last_timestamp or event.event_time or event.first_timestamp


def trigger_failing(scaler: KedaScaler) -> bool:
    """``Ready`` says a trigger failed in KEDA's latest poll (not True, with a trigger-error reason)."""
    if scaler.ready is True:
        return False
    reason = scaler.ready_reason or ""
    if reason in TRIGGER_ERROR_REASONS:
        return True
    return reason == DEGRADED_REASON and "TriggerError" in (scaler.ready_message or "")


def latest_failure(scaler: KedaScaler, events: Iterable[KubeEvent]) -> KubeEvent | None:
    """The ``KEDAScalerFailed`` Event of ``scaler`` with the newest occurrence (ties: the later
    in ``events``). Events of other objects or reasons are ignored; pass one kind's Events."""
    latest: KubeEvent | None = None
    latest_at: datetime | None = None
    for event in events:
        if event.reason != FAILURE_REASON or event.involved_name != scaler.name:
            continue
        if event.involved_namespace and scaler.namespace and event.involved_namespace != scaler.namespace:
            continue
        at = last_occurrence(event)
        if latest is None or (at is not None and (latest_at is None or at >= latest_at)):
            latest, latest_at = event, at
    return latest


def auth_failing_now(scaler: KedaScaler, events: Iterable[KubeEvent], *, observed_at: datetime) -> bool:
    """Whether KEDA is failing to authenticate for ``scaler`` now.

    ``scaler`` is the ScaledJob/ScaledObject as read at ``observed_at`` (an aware datetime: the
    condition has no time of its own); ``events`` are the ``KEDAScalerFailed`` Events of that
    object (either recorder's shape). The newer of the two decides:

    - the newest Event occurred after ``observed_at``: it decides — failing iff its message is
      an authentication failure (a poll failed after the condition was read);
    - otherwise the condition decides: failing iff ``Ready`` says a trigger failed in the
      latest poll (:func:`trigger_failing`) and the newest Event — which names the cause, even
      when the recorder stopped updating it — is an authentication failure.

    ``Ready`` True (the latest poll succeeded) read after the last failure is recovery, however
    long ago that failure's Event was written and whatever its count: this is what lets the
    alert resolve one poll after recovery instead of when an Event ages out.
    """
    latest = latest_failure(scaler, events)
    if latest is None or not is_auth_failure(latest.message):
        return False
    at = last_occurrence(latest)
    if at is not None and at > observed_at:
        return True
    return trigger_failing(scaler)
