"""What every data source of the exporter shares: a refresh that does the I/O, a collect that
only reads memory, and the source's own health.

A source (the PAT Lifecycle API of one organization, one Key Vault, one cluster's KEDA
objects, ...) is a :class:`SourceCollector`. Its subclass implements :meth:`fetch`, which calls
the APIs and swaps in a new immutable snapshot, and :meth:`samples`, which turns the current
snapshot into metric families. :meth:`refresh` wraps ``fetch`` the way node_exporter wraps each
collector: it times it, records success or failure as data (``patrol_source_up``,
``patrol_source_last_success_timestamp_seconds``, ``patrol_source_duration_seconds``) and is
the one place that logs why a source fails — once when its state changes, not every cycle.
A failed fetch leaves the previous snapshot in place, so the source's metrics stay visible
(stale) instead of vanishing.

Throttling is not failure: a :class:`~core.errors.ThrottledError` leaves the health as it was
and tells the refresher how long to wait (:attr:`Outcome.retry_after`).
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from core.errors import PatrolError, ThrottledError
from core.logs import redact

log = logging.getLogger("patrol.exporter")

UP = "patrol_source_up"
LAST_SUCCESS = "patrol_source_last_success_timestamp_seconds"
DURATION = "patrol_source_duration_seconds"

# Failures that are the outside world's (logged as warnings); anything else is our bug.
_EXPECTED: tuple[type[BaseException], ...] = (PatrolError,)


@dataclass(frozen=True)
class Health:
    """The outcome of a source's last refresh attempt."""

    attempted: bool = False
    up: bool = False
    last_success: float | None = None        # unix time of the last successful refresh
    duration: float | None = None            # seconds the last attempt took
    reason: str | None = None                # why the source is down (safe to log)


@dataclass(frozen=True)
class Outcome:
    """What the refresher needs to know after one refresh."""

    ok: bool
    changed: bool                            # the exposition must be re-rendered
    retry_after: float | None = None         # throttled: wait at least this long


class SourceCollector(abc.ABC):
    """One data source: ``fetch`` does the I/O, ``samples`` reads the snapshot.

    ``clock`` gives unix time for timestamps, ``monotonic`` measures durations; both are
    constructor arguments so tests drive them.
    """

    def __init__(self, name: str, interval: float, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.interval = interval
        self._clock = clock
        self._monotonic = monotonic
        self._health = Health()
        self._lock = threading.Lock()        # one refresh at a time per source

    @abc.abstractmethod
    def fetch(self) -> None:
        """Call the APIs and replace the snapshot; raise to report failure (keep the old one)."""

    @abc.abstractmethod
    def samples(self) -> Iterable[Metric]:
        """The source's metric families, built from the current snapshot only."""

    @property
    def health(self) -> Health:
        return self._health

    def refresh(self) -> Outcome:
        """Run :meth:`fetch` once, record health, log on a change of state. Never raises."""
        with self._lock:
            started = self._monotonic()
            previous = self._health
            try:
                self.fetch()
            except ThrottledError as exc:
                duration = self._monotonic() - started
                delay = exc.delay if exc.delay is not None else self.interval
                log.info("source %s throttled; next refresh in %.1fs", self.name, delay,
                         extra={"source": self.name})
                self._health = Health(attempted=True, up=previous.up if previous.attempted else True,
                                      last_success=previous.last_success, duration=duration,
                                      reason=previous.reason)
                return Outcome(ok=False, changed=True, retry_after=max(delay, 0.0))
            except Exception as exc:
                duration = self._monotonic() - started
                reason = _reason(exc)
                self._health = Health(attempted=True, up=False, last_success=previous.last_success,
                                      duration=duration, reason=reason)
                if previous.up or not previous.attempted or previous.reason != reason:
                    if isinstance(exc, _EXPECTED):
                        log.warning("source %s is down: %s", self.name, reason,
                                    extra={"source": self.name})
                    else:
                        log.error("source %s is down (unexpected %s): %s", self.name,
                                  type(exc).__name__, reason, extra={"source": self.name},
                                  exc_info=exc)
                return Outcome(ok=False, changed=True)
            duration = self._monotonic() - started
            self._health = Health(attempted=True, up=True, last_success=self._clock(), duration=duration)
            if previous.attempted and not previous.up:
                log.info("source %s is up again", self.name, extra={"source": self.name})
            return Outcome(ok=True, changed=True)

    def health_samples(self) -> Iterator[Metric]:
        """The three ``patrol_source_*`` families for this source (merged across sources later)."""
        health = self._health
        if not health.attempted:
            return
        up = GaugeMetricFamily(UP, "1 if the data source's last refresh succeeded", labels=["source"])
        up.add_metric([self.name], 1.0 if health.up else 0.0)
        yield up
        if health.last_success is not None:
            last = GaugeMetricFamily(LAST_SUCCESS, "Unix time of the data source's last successful refresh",
                                     labels=["source"])
            last.add_metric([self.name], health.last_success)
            yield last
        if health.duration is not None:
            duration = GaugeMetricFamily(DURATION, "How long the data source's last refresh took",
                                         labels=["source"])
            duration.add_metric([self.name], health.duration)
            yield duration

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector protocol: the snapshot's families, then health."""
        yield from self.samples()
        yield from self.health_samples()

    def stop(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Ask background work of the source (watches) to end soon, without waiting."""

    def close(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Release what the source holds (threads, clients it created). Default: nothing."""


def _reason(exc: BaseException) -> str:
    text = redact(str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__
