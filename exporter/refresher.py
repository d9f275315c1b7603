"""The background refresher: every source refreshed on its own interval, scrapes never wait.

One thread per source sleeps for the source's interval between refreshes, so a slow or dead
source (a timing-out cluster) delays nobody else. Sources come in *stages*: the sinks are read
before anything that needs what they hold (validity probes, the pipeline's token), so the first
refresh of a later stage starts only after every source of the earlier stages tried once.
After each refresh the exposition is invalidated and rendered, off the scrape path.

Throttling slows a source down instead of failing it: a refresh that ended throttled waits the
server's ``Retry-After`` (at least), and consecutive throttled refreshes back off further, up to
:data:`MAX_THROTTLE_FACTOR` times the interval.

Readiness (``/readyz``) means every source has completed one refresh attempt, successful or not:
the exporter then serves everything it can know, and a down source says so in its own
``patrol_source_up``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from exporter.source import Outcome, SourceCollector

log = logging.getLogger("patrol.exporter")

MAX_THROTTLE_FACTOR = 16


def next_delay(interval: float, outcome: Outcome, throttled_in_a_row: int) -> float:
    """Seconds until the next refresh after ``outcome`` (pure)."""
    if outcome.retry_after is None:
        return interval
    factor = float(min(2 ** max(throttled_in_a_row - 1, 0), MAX_THROTTLE_FACTOR))
    return max(float(outcome.retry_after), interval * factor)


class Refresher:
    def __init__(self, stages: Sequence[Sequence[SourceCollector]], *,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.stages = tuple(tuple(stage) for stage in stages)
        self.sources = tuple(s for stage in self.stages for s in stage)
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique: {sorted(names)}")
        self._on_change = on_change
        self._stop = threading.Event()
        self._stage_done = [threading.Event() for _ in self.stages]
        self._first_done: set[str] = set()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        if not self.sources:
            self._ready.set()

    # -- synchronous use (tests, one-shot runs) --------------------------------------------------

    def refresh_once(self) -> None:
        """Refresh every source once, stage by stage, sources of a stage side by side."""
        for index, stage in enumerate(self.stages):
            threads = [threading.Thread(target=self._refresh, args=(source, index)) for source in stage]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    # -- background use --------------------------------------------------------------------------

    def start(self) -> None:
        for index, stage in enumerate(self.stages):
            for source in stage:
                thread = threading.Thread(target=self._loop, args=(source, index), daemon=True,
                                          name=f"patrol-refresh-{source.name}")
                self._threads.append(thread)
                thread.start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def pending(self) -> list[str]:
        """Sources that have not completed a first refresh."""
        with self._lock:
            return [s.name for s in self.sources if s.name not in self._first_done]

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    # -- internals -------------------------------------------------------------------------------

    def _refresh(self, source: SourceCollector, stage: int) -> Outcome:
        outcome = source.refresh()
        try:
            self._on_change()
        except Exception:
            log.exception("rendering the exposition after refreshing %s failed", source.name)
        with self._lock:
            self._first_done.add(source.name)
            if all(s.name in self._first_done for s in self.stages[stage]):
                self._stage_done[stage].set()
            if len(self._first_done) == len(self.sources):
                self._ready.set()
        return outcome

    def _loop(self, source: SourceCollector, stage: int) -> None:
        if stage > 0:
            while not self._stage_done[stage - 1].wait(0.1):
                if self._stop.is_set():
                    return
        throttled = 0
        while not self._stop.is_set():
            outcome = self._refresh(source, stage)
            throttled = throttled + 1 if outcome.retry_after is not None else 0
            self._stop.wait(next_delay(source.interval, outcome, throttled))
