"""The worker assembled: one object that owns every part and their lifecycles.

:class:`WorkerService` wires planner, saga, dispatcher, recovery, leadership and the HTTP server
from a :class:`core.config.Config` and a :class:`remediation.world.World`, so the command line
(``patrol worker``), the end-to-end tests and the benchmarks build the very same thing.
:class:`WorkerThread` serves it on loopback from a background thread for tests and benchmarks.

The worker accepts work (webhook, ``POST /rotations``) only while it is not stopping, holds
the Lease, and can write its journal. It is ready (``/readyz``) while it can serve: not
stopping, journal writable, the Kubernetes API answering its lease calls; leading or not (a
standby is Ready; ``patrol_worker_leader`` tells which replica leads). A keeper thread tries a small journal write every
``journal_probe_interval``: a full volume turns readiness off before a rotation trips on it,
and space coming back turns it on again and resumes at once what was cut short. The same
thread prunes the journal every ``prune_interval`` by the configured retentions.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from core import config
from core.arenas import Trimmer
from core.secret import Secret
from remediation.dispatch import Dispatcher
from remediation.journal import DecisionBudget, Journal
from remediation.leadership import Leadership, Lock
from remediation.metrics import WorkerMetrics
from remediation.planner import DEDUPE_RETENTION, Planner, TokenLocks
from remediation.recovery import DEFAULT_ORPHAN_GRACE, Recovery, RecoveryReport
from remediation.saga import RotationSaga, SagaSettings, StepEvent
from remediation.server import ServerLimits, WorkerServer
from remediation.world import World

log = logging.getLogger("patrol.worker")


class WorkerService:
    def __init__(
        self,
        cfg: config.Config,
        world: World,
        *,
        state_dir: str | Path,
        webhook_token: Secret | str | None,
        insecure_no_auth: bool = False,
        lease: Lock | None = None,
        settings: SagaSettings | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_workers: int = 4,
        orphan_grace: float = DEFAULT_ORPHAN_GRACE,
        reconcile_interval: float | None = None,
        on_step: Callable[[StepEvent], None] | None = None,
        after_step: Callable[[str, str], None] | None = None,
        server_limits: ServerLimits | None = None,
        journal_factory: type[sqlite3.Connection] = sqlite3.Connection,
        journal_probe_interval: float = 10.0,
        prune_interval: float = 3600.0,
    ) -> None:
        self.config = cfg
        self.world = world
        self.state_dir = Path(state_dir)
        self._clock = clock
        self._stopping = threading.Event()
        self.journal = Journal.in_state_dir(
            self.state_dir, clock=clock, factory=journal_factory,
            decision_budget=DecisionBudget(cfg.worker.decisions_per_minute, clock=clock))
        self.metrics = WorkerMetrics()
        self.metrics.watch_journal(self.journal)
        self.journal_probe_interval = journal_probe_interval
        self.prune_interval = prune_interval
        # freed heap back to the kernel once per keeper round (core/arenas.py; docs/reliability.md)
        self.trim = Trimmer(every=journal_probe_interval)
        self._journal_keeper: threading.Thread | None = None
        self.metrics.declare_tokens([t.name for t in cfg.tokens])
        self.planner = Planner([t.name for t in cfg.tokens], self.journal, cooldown=cfg.worker.cooldown,
                               locks=TokenLocks(self.state_dir / "locks"), clock=clock,
                               rotate_alertnames=cfg.worker.rotate_alertnames)
        self.leadership = Leadership(lease)
        self.metrics.watch_leadership(self.leadership)
        self.saga = RotationSaga(cfg, world, self.journal, settings=settings, clock=clock, sleep=sleep,
                                 may_continue=self.may_rotate, on_step=on_step, after_step=after_step,
                                 metrics=self.metrics)
        self.dispatcher = Dispatcher(self.saga.run, locks=self.planner.locks, journal=self.journal,
                                     metrics=self.metrics, max_workers=max_workers, tokens=len(cfg.tokens),
                                     clock=clock)
        self.recovery = Recovery(cfg, world, self.journal, self.planner, submit=self.dispatcher.submit,
                                 may_act=self.may_rotate, clock=clock, sleep=sleep, orphan_grace=orphan_grace)
        self.server = WorkerServer(planner=self.planner, dispatcher=self.dispatcher, journal=self.journal,
                                   metrics=self.metrics, webhook_token=webhook_token,
                                   insecure_no_auth=insecure_no_auth, accepting=self.not_accepting_reason,
                                   ready=self.not_ready_reason, leader=self.leadership.holder,
                                   limits=server_limits, clock=clock)
        self.reconcile_interval = (reconcile_interval if reconcile_interval is not None
                                   else cfg.worker.reconcile_interval.total_seconds())
        self._reconcile_now = threading.Event()
        self._reconciler: threading.Thread | None = None
        self.leadership.on_change(lambda held: self._reconcile_now.set() if held else None)
        self.last_report: RecoveryReport | None = None

    # -- state ------------------------------------------------------------------------------------

    def may_rotate(self) -> bool:
        return not self._stopping.is_set() and self.leadership.is_leader()

    def not_ready_reason(self) -> str | None:
        """Why this replica cannot serve (``/readyz`` 503), or None; leadership is not a reason."""
        if self._stopping.is_set():
            return "shutting down"
        if not self.journal.writable:
            return f"the journal cannot be written ({self.journal.last_write_error or 'unknown error'})"
        if not self.leadership.api_reachable():
            return "the Kubernetes API does not answer lease calls"
        return None

    def not_accepting_reason(self) -> str | None:
        """Why this replica cannot take work now (a 503 that makes the sender retry), or None."""
        reason = self.not_ready_reason()
        if reason is None and not self.leadership.is_leader():
            return "not the lease holder"
        return reason

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the lease renewals and the reconcile loop (recovery runs at once, then periodically)."""
        self.leadership.start()
        if self.leadership.lock is None:
            self._reconcile_now.set()
        self._reconciler = threading.Thread(target=self._reconcile_loop, name="patrol-reconcile", daemon=True)
        self._reconciler.start()
        self._journal_keeper = threading.Thread(target=self._keep_journal, name="patrol-journal", daemon=True)
        self._journal_keeper.start()

    def reconcile(self) -> RecoveryReport:
        self.last_report = self.recovery.reconcile()
        return self.last_report

    def _reconcile_loop(self) -> None:
        while not self._stopping.is_set():
            self._reconcile_now.wait(self.reconcile_interval)
            self._reconcile_now.clear()
            if self._stopping.is_set():
                return
            try:
                self.reconcile()
            except Exception:
                log.exception("reconcile failed")

    def prune_journal(self) -> int:
        """Apply the configured retentions once (decisions, then finished rotations)."""
        now = self._clock()
        worker = self.config.worker
        return self.journal.prune(
            now - worker.decision_retention.total_seconds(),
            rotations_older_than=now - worker.rotation_retention.total_seconds(),
            deliveries_older_than=now - max(worker.decision_retention, DEDUPE_RETENTION).total_seconds())

    def _keep_journal(self) -> None:
        """Probe the journal with a small write every interval (so a full disk turns readiness
        off before a rotation trips on it, and back on when space returns, resuming at once what
        was cut short), and prune it every ``prune_interval``. Each round also hands the heap's free
        pages back to the kernel (:class:`core.arenas.Trimmer`): what a rotation's HTTP answers
        and JSON freed would otherwise stay resident until the next peak reuses it."""
        next_prune = 0.0
        while not self._stopping.is_set():
            was_writable = self.journal.writable
            if self.journal.probe() and not was_writable:
                self.journal.checkpoint()
                self._reconcile_now.set()
            if self.journal.writable and time.monotonic() >= next_prune:
                try:
                    removed = self.prune_journal()
                    log.info("journal pruned: %d rows removed", removed)
                except sqlite3.DatabaseError as exc:
                    log.warning("journal prune failed: %s", exc)
                next_prune = time.monotonic() + self.prune_interval
            self.trim()
            self._stopping.wait(self.journal_probe_interval)

    def stop(self) -> None:
        """Stop accepting, let running steps reach a boundary, release the lease, close."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._reconcile_now.set()
        self.dispatcher.shutdown(wait=True)
        if self._reconciler is not None:
            self._reconciler.join(timeout=30)
        if self._journal_keeper is not None:
            self._journal_keeper.join(timeout=30)
        self.leadership.stop()
        self.journal.close()

    async def serve(self, host: str, port: int, *, started: Callable[[int], None] | None = None,
                    stop: asyncio.Event | None = None) -> None:
        """Serve HTTP until ``stop`` is set; calls ``started(port)`` once listening."""
        async with self.server.serving(host, port) as bound:
            log.info("worker listening on %s:%d", host, bound)
            if started is not None:
                started(bound)
            await (stop or asyncio.Event()).wait()


class WorkerThread:
    """Run a :class:`WorkerService` (started, serving on 127.0.0.1:0) in a background thread."""

    def __init__(self, service: WorkerService, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self._host = host
        self._port = port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="patrol-worker-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def started(port: int) -> None:
                self.port = port
                self._ready.set()

            await self.service.serve(self._host, self._port, started=started, stop=self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self) -> WorkerThread:
        self.service.start()
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"worker did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop serving, then stop the service (idempotent)."""
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=30)
        self.service.stop()

    def __enter__(self) -> WorkerThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
