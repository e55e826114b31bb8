"""What the embedded queue and store share: how a SQLite file is opened and
how a write transaction is taken."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["connect", "is_busy", "write_transaction"]

#: How long a writer waits for another process's transaction before failing.
BUSY_TIMEOUT_MS = 10_000


def connect(
    path: Path | str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, synchronous: str = "FULL"
) -> sqlite3.Connection:
    """Open ``path`` in WAL mode, in autocommit (transactions are explicit).

    ``synchronous=FULL`` (the default) fsyncs every commit: what was committed
    survives a power cut, not only a crash of the process. ``NORMAL`` leaves
    the fsync to the next FULL commit or checkpoint: the file stays
    consistent, but the last commits may roll back after a power cut.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute(f"PRAGMA synchronous = {synchronous}")
    connection.execute("PRAGMA cache_size = -65536")
    return connection


@contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock up front, so
    that two processes never deadlock upgrading a read to a write."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def is_busy(error: sqlite3.OperationalError) -> bool:
    """The database was locked by another connection past the busy timeout."""
    return error.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
