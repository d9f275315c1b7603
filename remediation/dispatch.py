"""Runs admitted rotations in the background, so the webhook can answer at once.

A rotation takes minutes (KEDA polls, verification waits for agents), while Alertmanager wants
an answer within its timeout. The receiver admits a request (planner: lock + journal row) and
hands it here; a small thread pool runs the saga, keeps the rotation metrics, and always
releases the token's lock. At most one rotation per token runs, and a rotation may spend a
long time draining (keeping the old PAT valid for builds in flight), so the pool has a thread
for every configured token (and one more): a draining token never delays another's rotation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from remediation.journal import Journal, Outcome
from remediation.metrics import WorkerMetrics
from remediation.planner import RotationRequest, TokenLocks

log = logging.getLogger("patrol.dispatch")

# What runs one rotation: returns the outcome, or None if it stopped early on purpose
# (lease lost, shutdown) and recovery will continue it.
Work = Callable[[RotationRequest], Outcome | None]


class Dispatcher:
    def __init__(self, work: Work, *, locks: TokenLocks, journal: Journal, metrics: WorkerMetrics,
                 max_workers: int = 4, tokens: int = 0, clock: Callable[[], float] = time.time) -> None:
        self._work = work
        self._locks = locks
        self._journal = journal
        self._metrics = metrics
        self._clock = clock
        self.max_workers = max(1, max_workers, tokens + 1)
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers,
                                        thread_name_prefix="patrol-rotation")
        self._futures: set[Future[None]] = set()
        self._mutex = threading.Lock()
        self._closed = False

    @property
    def accepting(self) -> bool:
        return not self._closed

    def submit(self, request: RotationRequest) -> bool:
        """Start ``request`` in the background; False if the dispatcher is shutting down."""
        with self._mutex:
            if self._closed:
                return False
            try:
                future = self._pool.submit(self._run, request)
            except RuntimeError:
                return False
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return True

    def _forget(self, future: Future[None]) -> None:
        with self._mutex:
            self._futures.discard(future)

    def busy(self) -> int:
        with self._mutex:
            return len(self._futures)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted rotation has finished (tests, benchmarks, shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._mutex:
                pending = list(self._futures)
            if not pending:
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                return False
            try:
                pending[0].result(timeout=remaining)
            except TimeoutError:
                return False
            except Exception:  # noqa: S112 - the rotation logged and journaled its own failure
                continue

    def shutdown(self, *, wait: bool = True) -> None:
        with self._mutex:
            self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=False)

    def _run(self, request: RotationRequest) -> None:
        token = request.token
        gauge = self._metrics.in_progress.labels(token=token)
        gauge.set(1)
        outcome: Outcome | None
        try:
            outcome = self._work(request)
        except Exception as exc:
            log.exception("rotation %s of %s crashed", request.rotation_id, token,
                          extra={"token": token, "rotation_id": request.rotation_id})
            outcome = "failed"
            record = self._journal.find(request.rotation_id)
            if record is not None and not record.finished:
                self._journal.finish(request.rotation_id, "failed", f"internal error: {type(exc).__name__}")
        finally:
            gauge.set(0)
            self._locks.release(token)
        if outcome is not None:
            self._metrics.rotations.labels(token=token, result=outcome).inc()
            if outcome == "succeeded":
                self._metrics.duration.labels(token=token).observe(
                    max(0.0, self._clock() - request.received_at))
