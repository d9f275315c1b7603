"""A bound on concurrent API calls, shared by every source of the exporter.

Why: refresh cost must grow with organizations, pools and clusters, and those calls should run
side by side — but never so many at once that ADO throttles us or a cluster's API server
notices. Every call a source makes goes through :meth:`Fanout.call` (one call, on the
caller's thread) or :meth:`Fanout.map` (many calls on the shared worker pool); both hold one of
``concurrency`` slots while the call runs, so the whole exporter never has more than
``concurrency`` API calls in flight. A slot is held through the adapter's own retry sleeps,
which is what "throttling slows the refresher down" means in practice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from core.errors import TransientError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Result(Generic[T]):
    """A call's value or the exception it raised (``map`` never raises for one item)."""

    value: T | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Fanout:
    def __init__(self, concurrency: int = 8) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="patrol-exporter-call")
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self.peak_in_flight = 0               # the most calls ever in flight at once (for tests)
        self.submitted = 0                    # tasks ever handed to the pool (for tests)
        self._closing = threading.Event()

    def call(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` on this thread while holding a slot."""
        with self._slots:
            with self._count_lock:
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            try:
                return fn()
            finally:
                with self._count_lock:
                    self._in_flight -= 1

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[Result[R]]:
        """``fn`` over ``items`` concurrently (bounded); results in input order.

        At most ``concurrency`` tasks are queued per call, each taking the next item until none
        is left: a map over 1,000 sinks holds a handful of futures, not 1,000 (each future
        carries a condition and two locks; a thousand of them made the refresh's peak, and
        glibc kept that peak as resident memory).
        """
        batch = list(items)
        if not batch:
            return []
        if len(batch) == 1:
            return [self._result(fn, batch[0])]
        results: list[Result[R] | None] = [None] * len(batch)
        indices = iter(range(len(batch)))
        take = threading.Lock()

        def drain() -> None:
            while True:
                with take:
                    index = next(indices, None)
                if index is None:
                    return
                if self._closing.is_set():       # stopping: the items not started are not run
                    results[index] = Result(error=TransientError("not read: the exporter is stopping"))
                    continue
                results[index] = self._result(fn, batch[index])

        tasks = [self._pool.submit(drain) for _ in range(min(self.concurrency, len(batch)))]
        with self._count_lock:
            self.submitted += len(tasks)
        for task in tasks:
            task.result()
        return [r for r in results if r is not None]

    def _result(self, fn: Callable[[T], R], item: T) -> Result[R]:
        try:
            return Result(value=self.call(lambda: fn(item)))
        except Exception as exc:
            return Result(error=exc)

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        """Finish the calls in flight, start no other, and stop the pool."""
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
