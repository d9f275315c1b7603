"""The rotation journal: an audit trail of every rotation, its steps and its decisions.

SQLite in WAL mode under the state dir, one commit per step transition, so a crash loses at
most the step that was running (and every step is idempotent, so recovery simply runs it
again). The journal is *not* the only truth: recovery re-reads ADO, the sinks and the clusters
and reconciles the journal with them (docs/rotation.md, "Guarantees"). It stores identifiers (rotation id, token
name, authorizationId) and never a token value; free text (errors, details) passes through the
log redaction before it is written, as a second guard.

The webhook's deduplication keys (alert fingerprint + startsAt) live here too, so a duplicate
delivered after a restart is still recognised.

Because the world is the truth, the journal may be lost without harm, and it never stops the
worker: a file that is not a database (or fails its integrity check) at open is moved aside
under a timestamped name and a fresh one started (:attr:`Journal.reset_from`); a write that
fails (disk full, I/O error) marks it unwritable until a later write or :meth:`Journal.probe`
succeeds, which the worker reports as not ready. A state dir it cannot write at all is a
:class:`core.errors.ConfigError` naming the directory. Its size is bounded: :meth:`prune` drops
decisions and finished rotations past their retention, and :class:`DecisionBudget` caps how
many decisions are written per minute, per alert fingerprint and in all.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from core.errors import ConfigError
from core.logs import redact

log = logging.getLogger("patrol.journal")

# Journals written before drain/confirm existed lack those rows: start_step adds a missing row,
# and a record lists only the steps it has, so old rotations still load and resume.
STEPS: tuple[str, ...] = ("plan", "create", "deliver", "switch", "verify", "drain", "revoke", "confirm",
                          "record")
StepStatus = Literal["pending", "running", "done", "failed", "skipped"]
Outcome = Literal["succeeded", "failed", "skipped"]
JOURNAL_FILE = "journal.sqlite3"
_MAX_TEXT = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS health (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rotations (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    trigger TEXT NOT NULL,
    reason TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT,
    error TEXT NOT NULL DEFAULT '',
    old_authorization_id TEXT,
    new_authorization_id TEXT,
    new_valid_to REAL
);
CREATE INDEX IF NOT EXISTS rotations_token ON rotations (token, created_at);
CREATE INDEX IF NOT EXISTS rotations_finished ON rotations (finished_at);
CREATE TABLE IF NOT EXISTS steps (
    rotation_id TEXT NOT NULL REFERENCES rotations (id),
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at REAL,
    finished_at REAL,
    detail TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rotation_id, name)
);
CREATE TABLE IF NOT EXISTS targets (
    rotation_id TEXT NOT NULL REFERENCES rotations (id),
    step TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    PRIMARY KEY (rotation_id, step, target)
);
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    rotation_id TEXT,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    token TEXT,
    alertname TEXT NOT NULL DEFAULT '',
    fingerprint TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    rotation_id TEXT
);
CREATE INDEX IF NOT EXISTS decisions_at ON decisions (at);
CREATE INDEX IF NOT EXISTS deliveries_seen ON deliveries (seen_at);
"""


@dataclass(frozen=True)
class StepRecord:
    name: str
    status: StepStatus
    started_at: float | None = None
    finished_at: float | None = None
    detail: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class TargetRecord:
    """Progress of one step on one sink or consumer (e.g. deliver → keyvault/...)."""

    step: str
    target: str
    status: StepStatus
    detail: str
    updated_at: float


@dataclass(frozen=True)
class RotationRecord:
    id: str
    token: str
    trigger: str
    reason: str
    state: str                        # the step in progress, or "finished"
    created_at: float
    received_at: float                # when the request arrived (alert received → recovered)
    updated_at: float
    finished_at: float | None
    outcome: Outcome | None
    error: str
    old_authorization_id: str | None
    new_authorization_id: str | None
    new_valid_to: float | None
    steps: tuple[StepRecord, ...]
    targets: tuple[TargetRecord, ...] = ()

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def step(self, name: str) -> StepRecord:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready view for ``GET /rotations`` and ``patrol history`` (no token values)."""
        return {
            "id": self.id, "token": self.token, "trigger": self.trigger, "reason": self.reason,
            "state": self.state, "created_at": self.created_at, "received_at": self.received_at,
            "updated_at": self.updated_at, "finished_at": self.finished_at,
            "outcome": self.outcome, "error": self.error,
            "old_authorization_id": self.old_authorization_id,
            "new_authorization_id": self.new_authorization_id,
            "new_valid_to": self.new_valid_to,
            "steps": [
                {"name": s.name, "status": s.status, "started_at": s.started_at,
                 "finished_at": s.finished_at, "detail": s.detail, "attempts": s.attempts}
                for s in self.steps
            ],
            "targets": [
                {"step": t.step, "target": t.target, "status": t.status, "detail": t.detail,
                 "updated_at": t.updated_at}
                for t in self.targets
            ],
        }


@dataclass(frozen=True)
class DecisionRecord:
    at: float
    token: str | None
    alertname: str
    fingerprint: str
    action: str
    reason: str
    rotation_id: str | None


def _clean(text: str) -> str:
    return redact(text)[:_MAX_TEXT]


class DecisionBudget:
    """At most ``per_minute`` decision rows a minute in all, and a tenth of that per fingerprint.

    Decisions are an audit of what was dropped and why; a flood of distinct alerts (an
    authenticated sender gone wild, or a fuzzer) must not grow the journal without bound. With
    the retention this bounds the table to ``per_minute x retention`` rows. Over budget, the
    decision is still made and answered, only not written (counted in :attr:`dropped`).
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.per_source = max(1, per_minute // 10)
        self._clock = clock
        self._window = -1.0
        self._total = 0
        self._by_source: OrderedDict[str, int] = OrderedDict()
        self.dropped = 0

    def allow(self, source: str) -> bool:
        window = self._clock() // 60
        if window != self._window:
            self._window, self._total = window, 0
            self._by_source.clear()
        used = self._by_source.get(source, 0)
        if self._total >= self.per_minute or used >= self.per_source:
            self.dropped += 1
            return False
        self._total += 1
        self._by_source[source] = used + 1
        return True


def _storage_failure(exc: sqlite3.DatabaseError) -> bool:
    """Disk full, I/O error, read-only, locked (OperationalError) or a corrupt page: not our data."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _integrity_problem(db: sqlite3.Connection) -> str | None:
    row = db.execute("PRAGMA quick_check(1)").fetchone()
    result = str(row[0]) if row is not None else "no answer"
    return None if result == "ok" else result


class Journal:
    """Thread-safe: one connection guarded by a lock; every write is its own transaction.

    ``factory`` is the :class:`sqlite3.Connection` class to open (tests inject one that fails
    like a full disk). ``on_write_error`` is called with each failed write's exception.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time,
                 factory: type[sqlite3.Connection] = sqlite3.Connection,
                 decision_budget: DecisionBudget | None = None) -> None:
        self.path = Path(path)
        self._clock = clock
        self._factory = factory
        self._lock = threading.Lock()
        self.decision_budget = decision_budget
        self.writable = True
        self.write_errors = 0
        self.last_write_error = ""
        self.reset_from: Path | None = None
        self._error_listeners: list[Callable[[BaseException], None]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unusable(exc.strerror or str(exc)) from None
        try:
            self._db = self._open()
        except sqlite3.OperationalError as exc:
            raise self._unusable(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            # "file is not a database", "database disk image is malformed": the world is the
            # truth (recovery rebuilds from it), so keep the bad file for a human and go on.
            self.reset_from = self._move_aside(str(exc))
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as again:
                raise self._unusable(str(again)) from None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                             timeout=30.0, factory=self._factory)
        try:
            db.row_factory = sqlite3.Row
            # Only takes effect on a new file: lets prune() give pages back to the volume.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (the failure we design for);
            # only a power loss can lose the last commits.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            problem = _integrity_problem(db)
            if problem is not None:
                raise sqlite3.DatabaseError(f"integrity check failed: {problem[:200]}")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, why: str) -> Path:
        stamp = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                src = self.path.with_name(self.path.name + suffix)
                if src.exists():
                    src.replace(aside.with_name(aside.name + suffix))
        except OSError as exc:
            raise self._unusable(f"{why}; moving it aside failed: {exc.strerror or exc}") from None
        log.error("journal %s is unreadable (%s): moved aside to %s, starting a fresh one; "
                  "recovery rebuilds the state from ADO, the sinks and the clusters",
                  self.path, why, aside.name, extra={"journal": str(self.path), "moved_to": str(aside)})
        return aside

    def _unusable(self, why: str) -> ConfigError:
        directory = self.path.parent
        return ConfigError(
            str(directory), "", f"cannot keep the rotation journal here: {why}",
            f"make {directory} a writable directory for the worker's user (in Kubernetes mount a "
            "writable volume, e.g. the emptyDir in deploy/base/worker.yaml), or choose another with "
            "--state-dir, PATROL_STATE_DIR or worker.state_dir")

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, *, clock: Callable[[], float] = time.time,
                     factory: type[sqlite3.Connection] = sqlite3.Connection,
                     decision_budget: DecisionBudget | None = None) -> Journal:
        return cls(Path(state_dir) / JOURNAL_FILE, clock=clock, factory=factory,
                   decision_budget=decision_budget)

    def on_write_error(self, listener: Callable[[BaseException], None]) -> None:
        """Call ``listener(exc)`` on every failed write (e.g. to count it in a metric)."""
        self._error_listeners.append(listener)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if not _storage_failure(exc):
                    raise                     # a constraint or a bug: the storage is fine
                # Disk full, I/O error, read-only volume: nothing of this write is kept.
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                self._write_failed(exc)
                raise
        if not self.writable:
            self.writable = True
            log.warning("journal %s is writable again", self.path, extra={"journal": str(self.path)})

    def _write_failed(self, exc: sqlite3.DatabaseError) -> None:
        self.write_errors += 1
        self.last_write_error = str(exc)[:200]
        if self.writable:
            log.error("journal %s cannot be written (%s): not ready until a write succeeds",
                      self.path, self.last_write_error, extra={"journal": str(self.path)})
        self.writable = False
        for listener in self._error_listeners:
            listener(exc)

    def probe(self) -> bool:
        """One small write; True (and writable again) if it went through."""
        try:
            with self._tx() as db:
                db.execute("INSERT INTO health (id, probed_at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE"
                           " SET probed_at=excluded.probed_at", (self._clock(),))
        except sqlite3.DatabaseError:
            return False
        return True

    # -- rotations ---------------------------------------------------------------------------

    def create_rotation(self, rotation_id: str, token: str, *, trigger: str, reason: str,
                        received_at: float | None = None,
                        dedupe_keys: Iterable[str] = ()) -> RotationRecord:
        """Record a new rotation (all steps pending) and its deliveries, atomically."""
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO rotations (id, token, trigger, reason, state, created_at, received_at,"
                " updated_at) VALUES (?, ?, ?, ?, 'plan', ?, ?, ?)",
                (rotation_id, token, trigger, _clean(reason), now,
                 now if received_at is None else received_at, now),
            )
            db.executemany("INSERT INTO steps (rotation_id, name, status) VALUES (?, ?, 'pending')",
                           [(rotation_id, name) for name in STEPS])
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (key, token, rotation_id, seen_at) VALUES (?, ?, ?, ?)",
                [(key, token, rotation_id, now) for key in dedupe_keys],
            )
        return self.get(rotation_id)

    def start_step(self, rotation_id: str, step: str) -> None:
        self._check_step(step)
        now = self._clock()
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO steps (rotation_id, name, status) VALUES (?, ?, 'pending')",
                       (rotation_id, step))
            db.execute(
                "UPDATE steps SET status='running', started_at=COALESCE(started_at, ?),"
                " attempts=attempts+1, finished_at=NULL WHERE rotation_id=? AND name=?",
                (now, rotation_id, step),
            )
            db.execute("UPDATE rotations SET state=?, updated_at=? WHERE id=?", (step, now, rotation_id))

    def finish_step(self, rotation_id: str, step: str, status: StepStatus = "done",
                    detail: str = "") -> None:
        self._check_step(step)
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE steps SET status=?, finished_at=?, detail=?,"
                " started_at=COALESCE(started_at, ?) WHERE rotation_id=? AND name=?",
                (status, now, _clean(detail), now, rotation_id, step),
            )
            db.execute("UPDATE rotations SET updated_at=? WHERE id=?", (now, rotation_id))

    def note_step(self, rotation_id: str, step: str, detail: str) -> None:
        """What a long-running step waits for now (the drain), shown while it runs."""
        self._check_step(step)
        now = self._clock()
        with self._tx() as db:
            db.execute("UPDATE steps SET detail=? WHERE rotation_id=? AND name=?",
                       (_clean(detail), rotation_id, step))
            db.execute("UPDATE rotations SET updated_at=? WHERE id=?", (now, rotation_id))

    def set_target(self, rotation_id: str, step: str, target: str, status: StepStatus,
                   detail: str = "") -> None:
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO targets (rotation_id, step, target, status, detail, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rotation_id, step, target) DO UPDATE SET"
                " status=excluded.status, detail=excluded.detail, updated_at=excluded.updated_at",
                (rotation_id, step, target, status, _clean(detail), now),
            )

    def set_authorizations(self, rotation_id: str, *, old: str | None = None, new: str | None = None,
                           new_valid_to: float | None = None) -> None:
        """Record authorizationIds (identifiers, not secrets); ``None`` leaves a value unchanged."""
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE rotations SET old_authorization_id=COALESCE(?, old_authorization_id),"
                " new_authorization_id=COALESCE(?, new_authorization_id),"
                " new_valid_to=COALESCE(?, new_valid_to), updated_at=? WHERE id=?",
                (old, new, new_valid_to, now, rotation_id),
            )

    def finish(self, rotation_id: str, outcome: Outcome, error: str = "") -> None:
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE rotations SET state='finished', outcome=?, error=?, finished_at=?, updated_at=?"
                " WHERE id=?",
                (outcome, _clean(error), now, now, rotation_id),
            )
            # Steps that never ran are marked skipped so the record reads as complete.
            db.execute("UPDATE steps SET status='skipped' WHERE rotation_id=? AND status='pending'",
                       (rotation_id,))
            db.execute("UPDATE steps SET status='failed', finished_at=? WHERE rotation_id=?"
                       " AND status='running'", (now, rotation_id))

    def get(self, rotation_id: str) -> RotationRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM rotations WHERE id=?", (rotation_id,)).fetchone()
            if row is None:
                raise KeyError(rotation_id)
            return self._record(row)

    def find(self, rotation_id: str) -> RotationRecord | None:
        try:
            return self.get(rotation_id)
        except KeyError:
            return None

    def recent(self, token: str | None = None, limit: int = 50) -> list[RotationRecord]:
        with self._lock:
            if token is None:
                rows = self._db.execute(
                    "SELECT * FROM rotations ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
            else:
                rows = self._db.execute(
                    "SELECT * FROM rotations WHERE token=? ORDER BY created_at DESC, rowid DESC LIMIT ?",
                    (token, limit))
            return [self._record(row) for row in rows.fetchall()]

    def unfinished(self) -> list[RotationRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM rotations WHERE outcome IS NULL ORDER BY created_at").fetchall()
            return [self._record(row) for row in rows]

    def last_success(self, token: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(finished_at) FROM rotations WHERE token=? AND outcome='succeeded'",
                (token,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def count(self, token: str | None = None) -> int:
        with self._lock:
            if token is None:
                row = self._db.execute("SELECT COUNT(*) FROM rotations").fetchone()
            else:
                row = self._db.execute("SELECT COUNT(*) FROM rotations WHERE token=?", (token,)).fetchone()
        return int(row[0])

    def tokens(self) -> list[str]:
        """The token names the journal has rotations of (``patrol history`` without a config)."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT token FROM rotations ORDER BY token").fetchall()
        return [str(row[0]) for row in rows]

    def _record(self, row: sqlite3.Row) -> RotationRecord:
        steps = {
            s["name"]: StepRecord(name=s["name"], status=s["status"], started_at=s["started_at"],
                                  finished_at=s["finished_at"], detail=s["detail"],
                                  attempts=s["attempts"])
            for s in self._db.execute("SELECT * FROM steps WHERE rotation_id=?", (row["id"],))
        }
        targets = tuple(
            TargetRecord(step=t["step"], target=t["target"], status=t["status"], detail=t["detail"],
                         updated_at=t["updated_at"])
            for t in self._db.execute(
                "SELECT * FROM targets WHERE rotation_id=? ORDER BY step, target", (row["id"],))
        )
        return RotationRecord(
            id=row["id"], token=row["token"], trigger=row["trigger"], reason=row["reason"],
            state=row["state"], created_at=row["created_at"], received_at=row["received_at"],
            updated_at=row["updated_at"], finished_at=row["finished_at"], outcome=row["outcome"],
            error=row["error"], old_authorization_id=row["old_authorization_id"],
            new_authorization_id=row["new_authorization_id"], new_valid_to=row["new_valid_to"],
            steps=tuple(steps[name] for name in STEPS if name in steps),
            targets=targets,
        )

    @staticmethod
    def _check_step(step: str) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}")

    # -- deduplication and decisions -----------------------------------------------------------

    def seen(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM deliveries WHERE key=?", (key,)).fetchone()
        return row is not None

    def seen_keys(self, since: float) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT key FROM deliveries WHERE seen_at >= ?", (since,)).fetchall()
        return {row[0] for row in rows}

    def remember(self, keys: Iterable[str], token: str, rotation_id: str | None = None) -> None:
        now = self._clock()
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (key, token, rotation_id, seen_at) VALUES (?, ?, ?, ?)",
                [(key, token, rotation_id, now) for key in keys],
            )

    def forget(self, keys: Iterable[str]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM deliveries WHERE key=?", [(key,) for key in keys])

    def record_decision(self, *, token: str | None, alertname: str, fingerprint: str, action: str,
                        reason: str, rotation_id: str | None = None) -> bool:
        """Write a decision unless over the :class:`DecisionBudget`; False if it was not written."""
        if self.decision_budget is not None:
            with self._lock:
                allowed = self.decision_budget.allow(fingerprint)
            if not allowed:
                return False
        with self._tx() as db:
            db.execute(
                "INSERT INTO decisions (at, token, alertname, fingerprint, action, reason, rotation_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self._clock(), token, alertname[:200], fingerprint[:100], action, _clean(reason),
                 rotation_id),
            )
        return True

    def decisions(self, limit: int = 100) -> list[DecisionRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM decisions ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [DecisionRecord(at=r["at"], token=r["token"], alertname=r["alertname"],
                               fingerprint=r["fingerprint"], action=r["action"], reason=r["reason"],
                               rotation_id=r["rotation_id"]) for r in rows]

    def prune(self, older_than: float, *, rotations_older_than: float | None = None,
              deliveries_older_than: float | None = None) -> int:
        """Drop decisions older than ``older_than``, dedupe keys older than
        ``deliveries_older_than`` (default: ``older_than``), and rotations finished before
        ``rotations_older_than`` (never an unfinished one) with their steps; returns rows removed.

        Freed pages go back to the volume (incremental vacuum) and the WAL is truncated, so the
        file shrinks too.
        """
        keys_before = older_than if deliveries_older_than is None else deliveries_older_than
        removed = 0
        with self._tx() as db:
            removed += db.execute("DELETE FROM decisions WHERE at < ?", (older_than,)).rowcount
            removed += db.execute("DELETE FROM deliveries WHERE seen_at < ?", (keys_before,)).rowcount
            if rotations_older_than is not None:
                old = "SELECT id FROM rotations WHERE outcome IS NOT NULL AND finished_at < ?"
                for table in ("steps", "targets"):
                    removed += db.execute(f"DELETE FROM {table} WHERE rotation_id IN ({old})",  # noqa: S608
                                          (rotations_older_than,)).rowcount
                removed += db.execute("DELETE FROM rotations WHERE outcome IS NOT NULL AND finished_at < ?",
                                      (rotations_older_than,)).rowcount
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA incremental_vacuum")
        self.checkpoint()
        return removed

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (after a prune, or once a full disk
        has room again: a WAL left large is space the volume does not get back)."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @property
    def resets(self) -> int:
        """1 if this journal replaced an unreadable file at open, else 0."""
        return 0 if self.reset_from is None else 1

    @property
    def decisions_dropped(self) -> int:
        return 0 if self.decision_budget is None else self.decision_budget.dropped

    def size(self) -> dict[str, int]:
        """Row counts per table (for tests, benchmarks and the bound on the journal's growth)."""
        with self._lock:
            return {table: int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
                    for table in ("rotations", "steps", "targets", "deliveries", "decisions")}
