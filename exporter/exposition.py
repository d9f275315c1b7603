"""The ``/metrics`` body, rendered once per change and served from memory.

Why a cache: a scrape must cost the same at any scrape rate and with any number of tokens
(docs/benchmarks.md measures it). The sources change only when the refresher finishes a refresh, so the text
exposition is rendered then — once — and every scrape in between returns the same bytes (and
the same gzip bytes, compressed at most once per rendering).

Why a merge: several sources export the same metric family (every source has a
``patrol_source_up`` sample; every organization's PAT source has expiry samples), and the text
format allows each family once. :class:`MergedCollector` concatenates the samples of
same-named families from all sources into one family, in a stable order.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector as RegistryCollector

# generate_latest's default ("underscores" escaping) is the classic text format every Prometheus reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


def merge(families: Iterable[Metric]) -> list[Metric]:
    """One family per name, samples concatenated in arrival order; families in first-seen order."""
    merged: dict[str, Metric] = {}
    for family in families:
        into = merged.get(family.name)
        if into is None:
            into = Metric(family.name, family.documentation, family.type, family.unit)
            merged[family.name] = into
        into.samples.extend(family.samples)
    return list(merged.values())


class MergedCollector(RegistryCollector):
    """A prometheus_client collector over many sources, yielding each family once."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self._collectors = tuple(collectors)

    def collect(self) -> Iterator[Metric]:
        yield from merge(f for c in self._collectors for f in c.collect())


class Exposition:
    """The rendered text exposition of ``collectors``, re-rendered only after :meth:`invalidate`.

    Thread-safe: the refresher threads invalidate, scrapes (and the refresher, eagerly) read.
    """

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MergedCollector(collectors))
        self._version = 1
        self._rendered_version = 0
        self._body = b""
        self._gzip_version = 0
        self._gzip = b""
        self._render_lock = threading.Lock()
        self.renders = 0                      # how many times the text was generated (for tests)

    def invalidate(self) -> None:
        """A snapshot changed: the next read renders again."""
        with self._render_lock:
            self._version += 1

    @property
    def stale(self) -> bool:
        return self._rendered_version != self._version

    def body(self) -> bytes:
        """The current exposition (renders first if something changed since the last render)."""
        if not self.stale:
            return self._body
        with self._render_lock:
            version = self._version
            if self._rendered_version != version:
                self._body = generate_latest(self.registry)
                self._rendered_version = version
                self.renders += 1
            return self._body

    def gzip_body(self) -> bytes:
        """The current exposition, gzip-compressed (once per rendering)."""
        self.body()
        with self._render_lock:
            if self._gzip_version != self._rendered_version:
                self._gzip = gzip.compress(self._body, compresslevel=6)
                self._gzip_version = self._rendered_version
            return self._gzip
