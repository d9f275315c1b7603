"""Whether this worker may rotate now: it must hold the Kubernetes Lease (when one is set up).

Several replicas can receive webhooks, but two must never rotate the same token at once
(docs/rotation.md, "Several replicas"). The holder of ``worker.lease`` is the only one that plans and runs steps; the
others answer 503 to work (so Alertmanager retries, reaching the holder through the Service) but
stay Ready: readiness says a replica can serve, leadership is the ``patrol_worker_leader``
gauge, so a healthy standby never trips ``KubeDeploymentReplicasMismatch``. Holding is judged
conservatively on our own monotonic clock: we count as leader only until one lease duration
after our last successful renewal, so a worker whose renewals stall stops starting steps before
anyone else can take the lease over. A standby also remembers who holds the lease (one read per
renewal), so its 503 names the replica to reach.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from core.errors import PatrolError

log = logging.getLogger("patrol.leadership")


class Lock(Protocol):
    """:class:`core.lease.LeaseLock` as leadership uses it."""

    identity: str
    duration_seconds: int

    def try_acquire_or_renew(self) -> bool: ...

    def release(self) -> None: ...

    def holder(self) -> str | None: ...


class Leadership:
    def __init__(self, lock: Lock | None, *, renew_every: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.lock = lock
        self._monotonic = monotonic
        duration = float(lock.duration_seconds) if lock is not None else 0.0
        self.renew_every = renew_every if renew_every is not None else max(0.2, duration / 3)
        self._valid_for = duration
        self._mutex = threading.Lock()
        self._held = False
        self._reported = False
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[bool], None]] = []
        self._holder: str | None = None
        self._reached_at: float | None = None

    def is_leader(self) -> bool:
        if self.lock is None:
            return True
        with self._mutex:
            return self._held and self._monotonic() < self._valid_until

    def holder(self) -> str | None:
        """Who held the lease at the last renewal attempt (ours or another replica's identity);
        None when nobody did, it was unknown (an API error), or there is no lock."""
        with self._mutex:
            return self._holder

    def api_reachable(self) -> bool:
        """Whether the Kubernetes API answered a lease call within the last lease duration
        (always True without a lock, and before the first attempt)."""
        if self.lock is None:
            return True
        with self._mutex:
            if self._reached_at is None:
                return True
            return self._monotonic() - self._reached_at < max(self._valid_for, 2 * self.renew_every)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True/False)`` when leadership is gained or lost (from the renew thread)."""
        self._listeners.append(listener)

    def tick(self) -> bool:
        """One acquire-or-renew attempt; an API error counts as not holding the lease."""
        if self.lock is None:
            return True
        started = self._monotonic()
        reached = True
        holder: str | None = None
        try:
            held = self.lock.try_acquire_or_renew()
            holder = self.lock.identity if held else self.lock.holder()
        except PatrolError as exc:
            log.warning("lease renewal failed: %s", exc, extra={"identity": self.lock.identity})
            held, reached = False, False
        with self._mutex:
            # A renewal slower than the lease (a throttled API server: the client sleeps its
            # Retry-After) lets leadership lapse without a failed tick; a running rotation
            # pauses then. Its success is a regain: say so, so the paused work resumes now.
            lapsed = self._reported and self._monotonic() >= self._valid_until
            was, self._reported = self._reported and not (held and lapsed), held
            self._held = held
            self._holder = holder
            if reached:
                self._reached_at = self._monotonic()
            elif self._reached_at is None:
                self._reached_at = started - self._valid_for - 2 * self.renew_every   # never reached
            if held:
                self._valid_until = started + self._valid_for
        if held != was:
            log.info("%s the lease", "holding" if held else "not holding",
                     extra={"identity": self.lock.identity})
            for listener in self._listeners:
                listener(held)
        return held

    def start(self) -> None:
        if self.lock is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="patrol-lease", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.renew_every)

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.lock is not None and release and self.is_leader():
            try:
                self.lock.release()
            except PatrolError as exc:
                log.warning("could not release the lease: %s", exc)
        with self._mutex:
            self._held = False
