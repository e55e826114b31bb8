"""The spill file: where encoded events wait, on local disk, while the queue
cannot take them.

A SQLite file (one table of bodies) rather than an append-only log: a batch
is written in one durable transaction, and a batch that reached the queue is
deleted in another, so a crash between the two only sends that batch again,
which the store absorbs (it keeps one copy of an event, by its id).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from eventtrail.embedded.sqlite import connect, write_transaction

__all__ = ["SpillError", "SpillFile"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS spilled (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)"


class SpillError(Exception):
    """The spill file cannot be written or read (disk full, bad path...)."""


class SpillFile:
    """Bodies kept durably in arrival order, taken back oldest first."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            # FULL: an event the gateway spilled survives a power cut.
            self._db = connect(self.path, busy_timeout_ms=1_000, synchronous="FULL")
            self._db.execute(_SCHEMA)
            (self._pending,) = self._db.execute("SELECT count(*) FROM spilled").fetchone()
        except sqlite3.Error as error:
            raise SpillError(f"cannot open the spill file {self.path}: {error}") from error

    @property
    def pending(self) -> int:
        """Bodies waiting in the file."""
        return int(self._pending)

    def append(self, bodies: Sequence[str]) -> None:
        try:
            with self._lock, write_transaction(self._db) as db:
                db.executemany("INSERT INTO spilled (body) VALUES (?)", [(body,) for body in bodies])
                self._pending += len(bodies)
        except sqlite3.Error as error:
            raise SpillError(f"cannot write the spill file {self.path}: {error}") from error

    def oldest(self, limit: int) -> tuple[int, list[str]]:
        """Up to ``limit`` oldest bodies and the mark to :meth:`remove` them by."""
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, body FROM spilled ORDER BY seq LIMIT ?", (limit,)
                ).fetchall()
        except sqlite3.Error as error:
            raise SpillError(f"cannot read the spill file {self.path}: {error}") from error
        return (rows[-1][0] if rows else 0), [body for _, body in rows]

    def remove(self, up_to: int) -> None:
        """Delete the bodies up to mark ``up_to`` (they reached the queue)."""
        try:
            with self._lock, write_transaction(self._db) as db:
                removed = db.execute("DELETE FROM spilled WHERE seq <= ?", (up_to,)).rowcount
                self._pending -= removed
        except sqlite3.Error as error:
            raise SpillError(f"cannot update the spill file {self.path}: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._db.close()
