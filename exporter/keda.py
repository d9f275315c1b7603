"""KEDA, per configured ScaledJob/ScaledObject, one source per cluster: whether the
azure-pipelines scaler is failing to authenticate *now*, its ``Ready`` condition, and the
authentication failures its ``KEDAScalerFailed`` Events account for.

Guarantees:

- ``patrol_keda_scaler_auth_failing`` is decided by :func:`core.keda.auth_failing_now` — the
  same function the worker uses — from the ``Ready`` condition as last read (with the time it
  was read: KEDA's condition has none) and the live ``KEDAScalerFailed`` Events of the object,
  whichever is newer. It falls to 0 at the first refresh after KEDA's first successful poll.
- ``patrol_keda_scaler_auth_failures_total`` never goes backwards and never counts an
  occurrence twice: it adds, per Event *name*, the growth of :func:`core.keda.occurrences`
  (``series.count`` for KEDA >= 2.20, ``count`` before) while the Event's message is an
  authentication failure. Names outlive their Event for :data:`TOMBSTONE_RETENTION`, because
  both recorders re-create a vanished Event under the same name with the cumulative count.
  It counts what the recorders have *written*, not failures: see docs/metrics.md.
- A scrape only reads memory: the refresh reads the objects, a watch thread per namespace keeps
  the Events current between refreshes and asks for a re-render (:attr:`Keda.on_change`) when
  one changes, so a failure shows without waiting for the next refresh.

The Events watch, as a real API server serves it: Events have no watch cache, so no bookmarks,
and a ``resourceVersion`` older than the last etcd compaction (every ~5 min) is answered
410 Gone. A stream that ends is resumed from the last version seen; a 410 makes the thread list
again and watch from the list's version (a relist applies the same per-name deltas, so nothing
is counted twice); any other error ends the thread, and the next refresh lists itself — that is
where a cluster that cannot be listed shows as ``patrol_source_up`` 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from core import config
from core.errors import NotFoundError, PatrolError
from core.keda import FAILURE_REASON, auth_failing_now, is_auth_failure, occurrences
from core.kube import KedaScaler, KubeEvent, ResourceExpiredError, ScalerResource
from exporter.fanout import Fanout
from exporter.source import SourceCollector

log = logging.getLogger("patrol.exporter.keda")

AUTH_FAILURES = "patrol_keda_scaler_auth_failures"          # exposed as ..._total
AUTH_FAILING = "patrol_keda_scaler_auth_failing"
READY = "patrol_keda_scaler_ready"
CONSUMER_INFO = "patrol_consumer_info"
REASON = FAILURE_REASON
FIELD_SELECTOR = f"reason={REASON}"
# Longer than an Event's life (the API server's --event-ttl, 1 h) plus the events.k8s.io
# recorder's refresh period (30 min): a name re-created after that is counted afresh.
TOMBSTONE_RETENTION = 24 * 3600.0


Object = tuple[str, str]                  # (kind, name), kind = ScaledJob | ScaledObject


class KedaApi(Protocol):
    """:class:`core.kube.KubeCluster` as the KEDA source uses it."""

    def get_scaler(self, ns: str, resource: ScalerResource, name: str) -> KedaScaler: ...
    def list_events(self, ns: str, *, field_selector: str) -> tuple[list[KubeEvent], str]: ...
    def watch_events(self, ns: str, *, field_selector: str, resource_version: str,
                     timeout_seconds: int) -> Iterator[tuple[str, KubeEvent]]: ...


@dataclass
class _Seen:
    occurrences: int                      # the highest occurrence count seen under this name
    touched: float                        # monotonic time of the last update


class EventTally:
    """The ``KEDAScalerFailed`` Events of one namespace's configured objects, from a stream of
    Event states: live Events per object and auth-failure totals (thread-safe, no I/O)."""

    def __init__(self, objects: Iterable[Object], *, monotonic: Callable[[], float] = time.monotonic,
                 retention: float = TOMBSTONE_RETENTION) -> None:
        self._objects = frozenset(objects)
        self._seen: dict[str, _Seen] = {}                 # Event name → what was already counted
        self._live: dict[Object, dict[str, KubeEvent]] = {o: {} for o in self._objects}
        self._totals: dict[Object, int] = dict.fromkeys(self._objects, 0)
        self._monotonic = monotonic
        self._retention = retention
        self._pruned = monotonic()
        self._lock = threading.Lock()

    def apply(self, kind: str, event: KubeEvent) -> bool:
        """One watch event (ADDED/MODIFIED/DELETED); True if an object's Events changed."""
        with self._lock:
            return self._apply(kind, event)

    def _apply(self, kind: str, event: KubeEvent) -> bool:
        obj = (event.involved_kind, event.involved_name)
        key = event.name or event.uid
        if event.reason != REASON or obj not in self._objects or not key:
            return False
        now = self._monotonic()
        if kind == "DELETED":                 # expired: nothing subtracted, the name is kept
            if key in self._seen:
                self._seen[key].touched = now
            if now - self._pruned > self._retention / 24:
                self._prune(now)
            return self._live[obj].pop(key, None) is not None
        self._live[obj][key] = event
        count = occurrences(event)
        seen = self._seen.get(key)
        previous = seen.occurrences if seen is not None else 0
        self._seen[key] = _Seen(max(count, previous), now)
        if count > previous and is_auth_failure(event.message):
            self._totals[obj] += count - previous
        return True

    def relist(self, events: Iterable[KubeEvent]) -> bool:
        """A full list: apply each Event; those no longer listed were deleted meanwhile."""
        with self._lock:
            items = list(events)
            listed = {e.name or e.uid for e in items}
            changed = False
            for live in self._live.values():
                for key in [k for k in live if k not in listed]:
                    del live[key]
                    changed = True
            for event in items:
                changed = self._apply("MODIFIED", event) or changed
            self._prune(self._monotonic())
            return changed

    def _prune(self, now: float) -> None:
        """Forget names untouched for the retention whose Event is gone (on relists, and on
        deletions at most every retention/24, so a watch that never relists stays bounded)."""
        self._pruned = now
        live_keys = {k for live in self._live.values() for k in live}
        horizon = now - self._retention
        for key in [k for k, s in self._seen.items() if s.touched < horizon and k not in live_keys]:
            del self._seen[key]

    def totals(self) -> Mapping[Object, int]:
        with self._lock:
            return dict(self._totals)

    def events(self, obj: Object) -> list[KubeEvent]:
        """The live ``KEDAScalerFailed`` Events of ``obj``."""
        with self._lock:
            return list(self._live.get(obj, {}).values())

    @property
    def remembered(self) -> int:
        """How many Event names are remembered (live or tombstones); bounded by the retention."""
        with self._lock:
            return len(self._seen)


class EventFeed:
    """``KEDAScalerFailed`` Events of one namespace: a watch thread that relists on 410 Gone,
    and a list from the refresh when there is no watch."""

    def __init__(self, api: KedaApi, cluster: str, namespace: str, tally: EventTally, *,
                 watch: bool = True, watch_timeout: int = 60, retry_delay: float = 5.0,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self._api = api
        self.cluster = cluster
        self.namespace = namespace
        self.tally = tally
        self._watch_enabled = watch
        self._watch_timeout = watch_timeout
        self._retry_delay = retry_delay
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch_error: str | None = None
        self.lists = 0                        # Event lists, by the refresh or the watch (for tests)

    @property
    def watching(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def sync(self) -> None:
        """Make the tally current: nothing to do while the watch runs; else list and watch again."""
        if self.watching or self._stop.is_set():
            return
        resource_version = self._list()
        if not self._watch_enabled:
            return
        self._thread = threading.Thread(target=self._watch, args=(resource_version,), daemon=True,
                                        name=f"patrol-events-{self.cluster}-{self.namespace}")
        self._thread.start()

    def _list(self) -> str:
        items, resource_version = self._api.list_events(self.namespace, field_selector=FIELD_SELECTOR)
        self.lists += 1
        self.tally.relist(items)
        return resource_version

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
                    if kind != "BOOKMARK" and self.tally.apply(kind, event):
                        self._changed()
            except ResourceExpiredError:
                # Compacted past our version (no bookmarks for Events): list, watch from there.
                try:
                    version = self._list()
                except PatrolError as exc:
                    self._failed(exc)
                    return                    # the next refresh lists, and reports the failure
                self._changed()
                continue
            except PatrolError as exc:
                self._failed(exc)
                self._stop.wait(self._retry_delay)
                return
            if self._watch_error is not None:
                log.info("watching Events in %s/%s again", self.cluster, self.namespace,
                         extra={"cluster": self.cluster})
                self._watch_error = None

    def _failed(self, exc: PatrolError) -> None:
        if self._watch_error != str(exc):
            log.info("watching Events in %s/%s failed, listing instead: %s", self.cluster,
                     self.namespace, exc, extra={"cluster": self.cluster})
        self._watch_error = str(exc)

    def _changed(self) -> None:
        try:
            self._on_change()
        except Exception:
            log.exception("re-rendering after an Event in %s/%s failed", self.cluster, self.namespace)

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
    tokens: tuple[str, ...]                   # the configured tokens it uses (normally one)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.kind, self.name)


@dataclass(frozen=True)
class _Reading:
    scaler: KedaScaler | None                 # None: the object does not exist
    observed_at: datetime


class Keda(SourceCollector):
    """Source ``keda/<cluster>``: every configured consumer in the cluster.

    ``on_change`` is called from a watch thread when an Event changed between refreshes; the
    exporter sets it to re-render the exposition.
    """

    def __init__(self, cluster: str, tokens: Sequence[config.Token], api: KedaApi, *,
                 fanout: Fanout, interval: float, watch: bool = True, watch_timeout: int = 60,
                 watch_retry_delay: float = 5.0,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(f"keda/{cluster}", interval, clock=clock, monotonic=monotonic)
        self.cluster = cluster
        uses: dict[tuple[str, str, str], tuple[config.KedaConsumer, list[str]]] = {}
        for token in tokens:
            for c in token.consumers:
                if c.cluster == cluster:
                    entry = uses.setdefault((c.namespace, c.k8s_kind, c.name), (c, []))
                    if token.name not in entry[1]:
                        entry[1].append(token.name)
        self.consumers = tuple(_Consumer(kind=c.k8s_kind, resource=_resource(c), namespace=c.namespace,
                                         name=c.name, tokens=tuple(names)) for c, names in uses.values())
        self._api = api
        self._fanout = fanout
        self.on_change: Callable[[], None] = lambda: None
        self._feeds = {
            ns: EventFeed(api, cluster, ns,
                          EventTally(((c.kind, c.name) for c in self.consumers if c.namespace == ns),
                                     monotonic=monotonic),
                          watch=watch, watch_timeout=watch_timeout, retry_delay=watch_retry_delay,
                          on_change=self._events_changed)
            for ns in dict.fromkeys(c.namespace for c in self.consumers)}
        self._readings: Mapping[tuple[str, str, str], _Reading] = {}

    def _events_changed(self) -> None:
        self.on_change()                      # looked up now: the exporter sets it after building

    def feed(self, namespace: str) -> EventFeed:
        return self._feeds[namespace]

    def _read(self, consumer: _Consumer) -> _Reading:
        try:
            scaler: KedaScaler | None = self._api.get_scaler(consumer.namespace, consumer.resource,
                                                             consumer.name)
        except NotFoundError:
            scaler = None                     # not there: certainly not ready, not failing
        return _Reading(scaler, datetime.fromtimestamp(self._clock(), UTC))

    def fetch(self) -> None:
        results = self._fanout.map(self._read, self.consumers)
        readings = dict(self._readings)
        readings.update((c.key, r.value) for c, r in zip(self.consumers, results, strict=True)
                        if r.value is not None)
        self._readings = readings
        errors: list[BaseException] = [r.error for r in results if r.error is not None]
        for feed in self._feeds.values():
            try:
                self._fanout.call(feed.sync)
            except PatrolError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def failing(self, consumer: _Consumer) -> bool | None:
        """The auth-failing decision for ``consumer`` from memory; None before its first reading."""
        reading = self._readings.get(consumer.key)
        if reading is None:
            return None
        if reading.scaler is None:
            return False
        events = self._feeds[consumer.namespace].tally.events((consumer.kind, consumer.name))
        return auth_failing_now(reading.scaler, events, observed_at=reading.observed_at)

    def samples(self) -> Iterable[Metric]:
        labels = ["cluster", "namespace", "kind", "name"]
        failures = CounterMetricFamily(
            AUTH_FAILURES, "Occurrences of KEDAScalerFailed authentication failures as KEDA's event "
            "recorder wrote them (series-aware; lags and undercounts, see docs/metrics.md)", labels=labels)
        failing = GaugeMetricFamily(
            AUTH_FAILING, "1 while KEDA's azure-pipelines scaler fails to authenticate (Ready condition "
            "and latest KEDAScalerFailed event, whichever is newer), else 0", labels=[*labels, "token"])
        ready = GaugeMetricFamily(READY, "1 if the ScaledJob/ScaledObject Ready condition is True",
                                  labels=labels)
        totals = {ns: feed.tally.totals() for ns, feed in self._feeds.items()}
        for c in self.consumers:
            values = [self.cluster, c.namespace, c.kind, c.name]
            failures.add_metric(values, float(totals[c.namespace].get((c.kind, c.name), 0)))
            now = self.failing(c)
            if now is not None:
                for token in c.tokens:
                    failing.add_metric([*values, token], 1.0 if now else 0.0)
            reading = self._readings.get(c.key)
            if reading is not None:
                is_ready = reading.scaler is not None and reading.scaler.ready is True
                ready.add_metric(values, 1.0 if is_ready else 0.0)
        return (failures, failing, ready)

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
