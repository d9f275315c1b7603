"""Event recorders as client-go implements them, writing into one cluster's store.

Guarantees: the core/v1 recorder (``tools/record``, KEDA <= 2.19) aggregates on the full key
including the message, bumping ``count``/``lastTimestamp`` of the existing Event; with a spam
filter on, throttled emissions only bump the recorder's in-memory count, as client-go does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox.kube.gotime import format_time
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
