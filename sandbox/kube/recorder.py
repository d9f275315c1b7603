"""Event recorders as client-go implements them, writing into one cluster's store.

Guarantees: the events.k8s.io recorder (``tools/events``, KEDA >= 2.20) aggregates on the
reference and reasons but not the message, and writes a series only on the 2nd occurrence and
then periodically (see :class:`EventsV1Recorder`); the core/v1 recorder (``tools/record``,
KEDA <= 2.19) aggregates on the full key including the message, bumping ``count`` and
``lastTimestamp`` of the existing Event; with a spam filter on, throttled emissions only bump
the recorder's in-memory count, as client-go does.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox.kube.gotime import format_micro_time, format_time
from sandbox.kube.types import EVENTS, JSON

if TYPE_CHECKING:
    from sandbox.kube.store import Store


@dataclass
class RecorderEntry:
    """client-go EventCorrelator's memory of one event key (the 'logger' LRU)."""

    name: str
    count: int
    first: float
    last: float


@dataclass
class SpamBucket:
    tokens: float
    at: float


class CoreV1Recorder:
    """client-go ``tools/record`` EventRecorder + EventCorrelator (``events_cache.go``)."""

    def __init__(self, store: Store, *, spam_filter: tuple[int, float] | None = None) -> None:
        self.store = store
        self.spam_filter = spam_filter
        self._entries: dict[tuple[str, ...], RecorderEntry] = {}
        self._spam: dict[tuple[str, ...], SpamBucket] = {}

    def emit(  # noqa: PLR0917 - the shared sandbox interface
        self, ns: str, involved: JSON, reason: str, message: str, type_: str = "Warning",
        component: str = "scale-handler", *, manager: str = "keda",
    ) -> None:
        """Record an Event as client-go's ``record.EventRecorder`` would.

        Same source + involved object + type + reason + message → the existing Event's ``count``
        goes up and ``lastTimestamp`` moves (MODIFIED); otherwise a new Event named
        ``<involved name>.<unix nanos hex>`` is created (ADDED). With ``recorder_spam_filter`` on,
        throttled emissions only bump the recorder's in-memory count, as client-go does.
        """
        now = self.store.clock()
        inv = {k: involved[k] for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion",
                                        "fieldPath") if involved.get(k)}
        key = (component, "", inv.get("kind", ""), inv.get("namespace", ""), inv.get("name", ""),
               inv.get("fieldPath", ""), inv.get("uid", ""), inv.get("apiVersion", ""), type_, reason,
               message)
        entry = self._entries.get(key)
        if entry is None:
            nanos = int(now * 1e9)
            while (ns, f"{inv.get('name', 'event')}.{nanos:x}") in self.store.objects[EVENTS.key]:
                nanos += 1      # a frozen test clock must not make two events share a name
            entry = RecorderEntry(name=f"{inv.get('name', 'event')}.{nanos:x}", count=1, first=now, last=now)
            self._entries[key] = entry
        else:
            entry.count += 1
            entry.last = now
        if not self._spam_allows(key[:8], now):
            return
        existing = self.store.objects[EVENTS.key].get((ns, entry.name))
        if existing is not None and entry.count > 1:
            new = copy.deepcopy(existing)
            new["count"] = entry.count
            new["lastTimestamp"] = format_time(now)
            self.store.update(EVENTS, ns, entry.name, new, manager=manager)
            return
        body: JSON = {
            "metadata": {"name": entry.name, "namespace": ns}, "involvedObject": inv, "reason": reason,
            "message": message, "source": {"component": component},
            "firstTimestamp": format_time(entry.first),
            "lastTimestamp": format_time(now), "count": entry.count, "type": type_, "eventTime": None,
            "reportingComponent": component, "reportingInstance": "",
        }
        self.store.create(EVENTS, ns, body, manager=manager)

    def _spam_allows(self, key: tuple[str, ...], now: float) -> bool:
        if self.spam_filter is None:
            return True
        burst, per_token = self.spam_filter
        bucket = self._spam.get(key)
        if bucket is None:
            bucket = self._spam[key] = SpamBucket(tokens=float(burst), at=now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) / per_token)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False


@dataclass
class SeriesEntry:
    """One ``eventCache`` entry of client-go's events broadcaster: the Event as last written."""

    name: str
    namespace: str
    event_time: float
    ref: JSON                          # the regarding reference
    type: str
    reason: str
    action: str
    note: str                          # the first occurrence's message: the Event keeps it
    count: int = 1                     # 1 = no series yet
    last_observed: float = 0.0


class EventsV1Recorder:
    """client-go ``tools/events`` (the events.k8s.io/v1 recorder KEDA >= 2.20 uses).

    Modelled on ``vendor/k8s.io/client-go/tools/events/event_broadcaster.go`` at KEDA v2.20.0:

    * ``getKey``: repeats are matched on type, action, reason, reportingController,
      reportingInstance and the ``regarding`` reference *including its resourceVersion* (and
      ``related``) — not on the note, so the Event keeps the first occurrence's message;
    * ``recordToSink``: the first occurrence creates the Event (``eventTime``, no ``series``);
      the second sets ``series.count=2`` and ``lastObservedTime`` and patches the Event; later
      occurrences only bump the cached series, with no write;
    * ``refreshExistingEventSeries`` every ``refreshTime`` (30 min, ``flush``) writes every cached
      series; ``finishSeries`` every ``finishTime`` (6 min, ``idle``) writes and forgets series
      not observed for that long, and forgets single Events older than that, so the next
      occurrence starts a new Event.

    The two periods are time-scalable for tests; :meth:`tick` runs the two periodic jobs when due.
    """

    def __init__(self, store: Store, *, controller: str, instance: str, flush: float = 1800.0,
                 idle: float = 360.0, manager: str = "keda") -> None:
        self.store = store
        self.controller = controller
        self.instance = instance
        self.flush = flush
        self.idle = idle
        self.manager = manager
        self._cache: dict[str, SeriesEntry] = {}
        self._next_refresh: float | None = None
        self._next_finish: float | None = None

    def emit(self, regarding: JSON, type_: str, reason: str, action: str, note: str) -> None:
        """``Eventf(regarding, nil, type, reason, action, note)``."""
        now = self.store.clock()
        self._start_timers(now)
        ref = {k: regarding[k] for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion",
                                         "fieldPath") if regarding.get(k)}
        ns = ref.get("namespace") or "default"
        key = json.dumps([type_, action, reason, self.controller, self.instance, ref], sort_keys=True)
        entry = self._cache.get(key)
        if entry is not None:
            if entry.count > 1:
                entry.count += 1
                entry.last_observed = now
                return
            entry.count = 2
            entry.last_observed = now
            self._write(entry)
            return
        nanos = int(now * 1e9)
        while (ns, f"{ref.get('name', 'event')}.{nanos:x}") in self.store.objects[EVENTS.key]:
            nanos += 1      # a frozen test clock must not make two events share a name
        entry = SeriesEntry(name=f"{ref.get('name', 'event')}.{nanos:x}", namespace=ns, event_time=now,
                            ref=ref, type=type_, reason=reason, action=action, note=note)
        self._cache[key] = entry
        self._write(entry)

    def tick(self) -> None:
        """Run ``refreshExistingEventSeries``/``finishSeries`` if their period has come round."""
        now = self.store.clock()
        self._start_timers(now)
        assert self._next_refresh is not None and self._next_finish is not None
        if now >= self._next_refresh:
            self._next_refresh = now + self.flush
            for entry in self._cache.values():
                if entry.count > 1:
                    self._write(entry)
        if now >= self._next_finish:
            self._next_finish = now + self.idle
            for key, entry in list(self._cache.items()):
                if entry.count > 1:
                    if entry.last_observed < now - self.idle:
                        self._write(entry)
                        del self._cache[key]
                elif entry.event_time < now - self.idle:
                    del self._cache[key]

    def _start_timers(self, now: float) -> None:
        if self._next_refresh is None:
            self._next_refresh = now + self.flush
            self._next_finish = now + self.idle

    def _write(self, entry: SeriesEntry) -> None:
        """recordEvent: patch the series onto the Event, or create it (also when it has gone)."""
        series: JSON | None = ({"count": entry.count, "lastObservedTime": format_micro_time(entry.last_observed)}
                               if entry.count > 1 else None)
        existing = self.store.objects[EVENTS.key].get((entry.namespace, entry.name))
        if existing is not None and series is not None:
            new = copy.deepcopy(existing)
            new["series"] = series
            self.store.update(EVENTS, entry.namespace, entry.name, new, manager=self.manager)
            return
        body: JSON = {
            "metadata": {"name": entry.name, "namespace": entry.namespace}, "involvedObject": entry.ref,
            "reason": entry.reason, "message": entry.note, "source": {}, "firstTimestamp": None,
            "lastTimestamp": None, "type": entry.type, "eventTime": format_micro_time(entry.event_time),
            "action": entry.action,
            "reportingComponent": self.controller, "reportingInstance": self.instance,
        }
        if series is not None:
            body["series"] = series
        self.store.create(EVENTS, entry.namespace, body, manager=self.manager)
