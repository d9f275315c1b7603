"""KEDA: authentication failures of the azure-pipelines scaler and the ``Ready`` condition, per
configured ScaledJob/ScaledObject, one source per cluster.

Failures come from ``KEDAScalerFailed`` Events on the configured objects. Kubernetes aggregates
repeats of an Event into one object whose ``count`` grows, and deletes Events after an hour, so
the counter adds *deltas of count per Event uid* and forgets an Event when it is deleted without
subtracting anything: ``patrol_keda_scaler_auth_failures_total`` never goes backwards.

Events are followed with a watch (a background thread per namespace, resumed from the last
``resourceVersion``) so count updates are not lost between refreshes; when there is no healthy
watch — at start, after a 410 Gone, after any watch error — the refresh lists the Events itself
(the list fallback) and starts a new watch from the list's ``resourceVersion``.

A failure is an *authentication* failure when its message shows one of the ways ADO rejects a
PAT as KEDA sees it (API-CONTRACTS §2.3, §4.2): ``status: 401`` (or 403) in KEDA's "Azure DevOps
REST API returned error" text, ``status: 203`` (the sign-in page), or the JSON error of decoding
that HTML page (``invalid character '<' looking for beginning of value``, which KEDA logs as
"Cannot unmarshal ADO JobRequests API response"). Timeouts, 5xx and unknown pools are not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from core import config
from core.errors import NotFoundError, PatrolError
from core.keda import is_auth_failure
from core.kube import KedaScaler, KubeEvent, ResourceExpiredError, ScalerResource
from exporter.fanout import Fanout
from exporter.source import SourceCollector

log = logging.getLogger("patrol.exporter.keda")

AUTH_FAILURES = "patrol_keda_scaler_auth_failures"          # exposed as ..._total
READY = "patrol_keda_scaler_ready"
CONSUMER_INFO = "patrol_consumer_info"
REASON = "KEDAScalerFailed"
FIELD_SELECTOR = f"reason={REASON}"


Object = tuple[str, str]                  # (kind, name), kind = ScaledJob | ScaledObject


class KedaApi(Protocol):
    """:class:`core.kube.KubeCluster` as the KEDA source uses it."""

    def get_scaler(self, ns: str, resource: ScalerResource, name: str) -> KedaScaler: ...
    def list_events(self, ns: str, *, field_selector: str) -> tuple[list[KubeEvent], str]: ...
    def watch_events(self, ns: str, *, field_selector: str, resource_version: str,
                     timeout_seconds: int) -> Iterator[tuple[str, KubeEvent]]: ...


class EventTally:
    """Auth-failure totals per object from a stream of Event states (thread-safe, pure state)."""

    def __init__(self, objects: Iterable[Object]) -> None:
        self._objects = frozenset(objects)
        self._seen: dict[str, int] = {}       # Event uid → the count already added
        self._totals: dict[Object, int] = dict.fromkeys(self._objects, 0)
        self._lock = threading.Lock()

    def apply(self, kind: str, event: KubeEvent) -> bool:
        """One watch event (ADDED/MODIFIED/DELETED); True if a total grew."""
        with self._lock:
            return self._apply(kind, event)

    def _apply(self, kind: str, event: KubeEvent) -> bool:
        if kind == "DELETED":
            self._seen.pop(event.uid, None)
            return False
        obj = (event.involved_kind, event.involved_name)
        if event.reason != REASON or obj not in self._objects or not event.uid:
            return False
        previous = self._seen.get(event.uid, 0)
        self._seen[event.uid] = event.count
        if event.count <= previous or not is_auth_failure(event.message):
            return False
        self._totals[obj] += event.count - previous
        return True

    def relist(self, events: Iterable[KubeEvent]) -> bool:
        """A full list: apply each Event, forget those no longer listed (deleted meanwhile)."""
        with self._lock:
            items = list(events)
            listed = {e.uid for e in items}
            for uid in [u for u in self._seen if u not in listed]:
                del self._seen[uid]
            grew = False
            for event in items:
                grew = self._apply("MODIFIED", event) or grew
            return grew

    def totals(self) -> Mapping[Object, int]:
        with self._lock:
            return dict(self._totals)


class EventFeed:
    """``KEDAScalerFailed`` Events of one namespace: a watch thread, and a list when it is not healthy."""

    def __init__(self, api: KedaApi, cluster: str, namespace: str, tally: EventTally, *,
                 watch: bool = True, watch_timeout: int = 60, retry_delay: float = 5.0) -> None:
        self._api = api
        self.cluster = cluster
        self.namespace = namespace
        self.tally = tally
        self._watch_enabled = watch
        self._watch_timeout = watch_timeout
        self._retry_delay = retry_delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch_error: str | None = None
        self.lists = 0                        # how many times the Events were listed (for tests)

    @property
    def watching(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def sync(self) -> None:
        """Make the tally current: nothing to do while the watch runs; else list and watch again."""
        if self.watching or self._stop.is_set():
            return
        items, resource_version = self._api.list_events(self.namespace, field_selector=FIELD_SELECTOR)
        self.lists += 1
        self.tally.relist(items)
        if not self._watch_enabled:
            return
        self._thread = threading.Thread(target=self._watch, args=(resource_version,), daemon=True,
                                        name=f"patrol-events-{self.cluster}-{self.namespace}")
        self._thread.start()

    def _watch(self, resource_version: str) -> None:
        version = resource_version
        while not self._stop.is_set():
            try:
                for kind, event in self._api.watch_events(
                        self.namespace, field_selector=FIELD_SELECTOR, resource_version=version,
                        timeout_seconds=self._watch_timeout):
                    if self._stop.is_set():
                        return
                    if event.resource_version:
                        version = event.resource_version
                    if kind != "BOOKMARK":
                        self.tally.apply(kind, event)
            except ResourceExpiredError:
                return                        # the next sync lists again
            except PatrolError as exc:
                if self._watch_error != str(exc):
                    log.info("watching Events in %s/%s failed, listing instead: %s", self.cluster,
                             self.namespace, exc, extra={"cluster": self.cluster})
                self._watch_error = str(exc)
                self._stop.wait(self._retry_delay)
                return
            if self._watch_error is not None:
                log.info("watching Events in %s/%s again", self.cluster, self.namespace,
                         extra={"cluster": self.cluster})
                self._watch_error = None

    def stop(self) -> None:
        """Ask the watch to end (it does at its next event or when its stream times out)."""
        self._stop.set()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the watch and wait up to ``timeout`` for it. A watch blocked on a quiet stream
        ends by itself within ``watch_timeout`` (its thread is a daemon: it never holds up exit)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


@dataclass(frozen=True)
class _Consumer:
    kind: str                                 # Kubernetes kind
    resource: ScalerResource
    namespace: str
    name: str


class Keda(SourceCollector):
    """Source ``keda/<cluster>``: every configured consumer in the cluster."""

    def __init__(self, cluster: str, consumers: Sequence[config.KedaConsumer], api: KedaApi, *,
                 fanout: Fanout, interval: float, watch: bool = True, watch_timeout: int = 60,
                 watch_retry_delay: float = 5.0,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(f"keda/{cluster}", interval, clock=clock, monotonic=monotonic)
        self.cluster = cluster
        unique = {(c.namespace, c.k8s_kind, c.name): c for c in consumers if c.cluster == cluster}
        self.consumers = tuple(_Consumer(kind=c.k8s_kind, resource=_resource(c), namespace=c.namespace,
                                         name=c.name) for c in unique.values())
        self._api = api
        self._fanout = fanout
        self._feeds = {
            ns: EventFeed(api, cluster, ns,
                          EventTally((c.kind, c.name) for c in self.consumers if c.namespace == ns),
                          watch=watch, watch_timeout=watch_timeout, retry_delay=watch_retry_delay)
            for ns in dict.fromkeys(c.namespace for c in self.consumers)}
        self._ready: Mapping[tuple[str, str, str], bool] = {}

    def feed(self, namespace: str) -> EventFeed:
        return self._feeds[namespace]

    def _scaler_ready(self, consumer: _Consumer) -> bool:
        try:
            scaler = self._api.get_scaler(consumer.namespace, consumer.resource, consumer.name)
        except NotFoundError:
            return False                      # not there: certainly not ready
        return scaler.ready is True

    def fetch(self) -> None:
        results = self._fanout.map(self._scaler_ready, self.consumers)
        ready = dict(self._ready)
        ready.update(((c.namespace, c.kind, c.name), r.value)
                     for c, r in zip(self.consumers, results, strict=True) if r.value is not None)
        self._ready = ready
        errors: list[BaseException] = [r.error for r in results if r.error is not None]
        for feed in self._feeds.values():
            try:
                self._fanout.call(feed.sync)
            except PatrolError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def samples(self) -> Iterable[Metric]:
        labels = ["cluster", "namespace", "kind", "name"]
        failures = CounterMetricFamily(AUTH_FAILURES, "KEDA scaler failures caused by authentication, "
                                       "counted from KEDAScalerFailed events", labels=labels)
        ready = GaugeMetricFamily(READY, "1 if the ScaledJob/ScaledObject Ready condition is True",
                                  labels=labels)
        totals = {ns: feed.tally.totals() for ns, feed in self._feeds.items()}
        for c in self.consumers:
            failures.add_metric([self.cluster, c.namespace, c.kind, c.name],
                                float(totals[c.namespace].get((c.kind, c.name), 0)))
            value = self._ready.get((c.namespace, c.kind, c.name))
            if value is not None:
                ready.add_metric([self.cluster, c.namespace, c.kind, c.name], 1.0 if value else 0.0)
        return (failures, ready)

    def stop(self) -> None:
        for feed in self._feeds.values():
            feed.stop()

    def close(self) -> None:
        self.stop()
        for feed in self._feeds.values():
            feed.close()


def _resource(consumer: config.KedaConsumer) -> ScalerResource:
    return "scaledjobs" if consumer.kind == "keda-scaledjob" else "scaledobjects"


class ConsumerInfo:
    """``patrol_consumer_info``: which token each configured KEDA consumer uses (static, from config)."""

    def __init__(self, tokens: Sequence[config.Token]) -> None:
        rows = {(t.name, c.cluster, c.namespace, c.k8s_kind, c.name, c.pool): None
                for t in tokens for c in t.consumers}
        self._rows = tuple(rows)

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(CONSUMER_INFO, "Which token a KEDA ScaledJob/ScaledObject uses and "
                                 "which agent pool it serves (always 1)",
                                 labels=["token", "cluster", "namespace", "kind", "name", "pool"])
        for row in self._rows:
            info.add_metric(list(row), 1.0)
        yield info
