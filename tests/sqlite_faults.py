"""A full volume as sqlite sees it, for the journal's tests (unit and end to end)."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

WRITES = ("INSERT", "UPDATE", "DELETE", "COMMIT")


def full_disk() -> tuple[type[sqlite3.Connection], threading.Event]:
    """A connection class that fails every write like sqlite on a full volume while ``full`` is set."""
    full = threading.Event()

    class FullDisk(sqlite3.Connection):
        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            if full.is_set() and sql.lstrip().upper().startswith(WRITES):
                raise sqlite3.OperationalError("database or disk is full")
            return super().execute(sql, parameters)

        def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
            if full.is_set() and sql.lstrip().upper().startswith(WRITES):
                raise sqlite3.OperationalError("database or disk is full")
            return super().executemany(sql, parameters)

    return FullDisk, full
