"""What the embedded queue and store share: how a SQLite file is opened, how a
write transaction is taken, and what a SQLite error means.

Files are private to their owner: the data folder is created ``0700`` and each
database ``0600`` (SQLite gives its ``-wal`` and ``-shm`` files the mode of
the database file). A read-only open never creates anything and never takes
the write lock, so ``status`` and the other readers answer while a writer
holds it.

A zero-byte database file (left by a crash or a full disk while it was being
created) holds nothing to lose: it is used as a new database, with a warning
that names it.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator, Set
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DataFolderMissing",
    "Failure",
    "classify",
    "connect",
    "connect_read_only",
    "describe",
    "ensure_data_folder",
    "has_tables",
    "is_busy",
    "write_transaction",
]

log = logging.getLogger(__name__)

#: How long a writer waits for another process's transaction before failing.
BUSY_TIMEOUT_MS = 10_000

#: Less free space than this on a device where a write failed: the disk is full.
_NEARLY_FULL_BYTES = 256 * 1024

_FOLDER_MODE = 0o700
_FILE_MODE = 0o600


class DataFolderMissing(FileNotFoundError):
    """A reader was pointed at a data folder that does not exist."""


class Failure(enum.Enum):
    """What a failed SQLite call means for its caller."""

    TRANSIENT = "may pass"
    """Locked, disk full, I/O error: retrying later may succeed."""
    CORRUPT = "corrupt"
    """Not a database, or a damaged one: retrying cannot help."""
    PERMANENT = "permanent"
    """Anything else (read-only file, missing table...)."""


_TRANSIENT_CODES = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_PROTOCOL,
}
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def classify(error: sqlite3.Error | OSError) -> Failure:
    """Whether ``error`` may pass, means a damaged file, or neither."""
    if isinstance(error, OSError):
        return (
            Failure.TRANSIENT if error.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT) else Failure.PERMANENT
        )
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return Failure.PERMANENT
    primary = code & 0xFF  # extended codes (SQLITE_IOERR_WRITE...) keep the primary in the low byte
    if primary in _TRANSIENT_CODES:
        return Failure.TRANSIENT
    if primary in _CORRUPT_CODES:
        return Failure.CORRUPT
    return Failure.PERMANENT


def describe(error: sqlite3.Error | OSError, path: Path) -> str:
    """One line naming the cause and the file, for an ``error:`` line or a log."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if code is not None else None
    if primary == sqlite3.SQLITE_FULL or (isinstance(error, OSError) and error.errno == errno.ENOSPC):
        return f"the disk is full at {path} ({_reason(error)})"
    if primary == sqlite3.SQLITE_IOERR and _no_space_left(path):
        # SQLite reports a failed write of its -wal or -shm file as an I/O
        # error; with no space left on the device, the cause is plain.
        return f"the disk is full at {path} ({_reason(error)}, {getattr(error, 'sqlite_errorname', '')})"
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return f"{path} is locked by another process ({_reason(error)})"
    if primary in _CORRUPT_CODES:
        return f"{path} is not a usable SQLite database ({_reason(error)}); move it away to start afresh"
    return f"{path}: {_reason(error)}"


def _no_space_left(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def _reason(error: sqlite3.Error | OSError) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def ensure_data_folder(folder: Path) -> None:
    """Create ``folder`` (``0700``) unless it exists; parents get the usual mode.

    Raises :class:`OSError` when it cannot be a folder (a file is in the way).
    """
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=_FOLDER_MODE)
    except FileExistsError:
        if not folder.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, "a file is in the way of the data folder", str(folder)
            ) from None


class OpenedFile(enum.Enum):
    """What was at the path before a read-write open."""

    EXISTING = "existing"
    NEW = "new"
    EMPTY = "empty"
    """A zero-byte file: opened as a new database, with a warning."""


def _prepare_file(path: Path) -> OpenedFile:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        ensure_data_folder(path.parent)
        # Created here, private, so that SQLite gives the same mode to -wal and -shm.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, _FILE_MODE))
        return OpenedFile.NEW
    if size == 0:
        log.warning("%s is an empty file (0 bytes): using it as a new, empty database", path)
        return OpenedFile.EMPTY
    return OpenedFile.EXISTING


def connect(
    path: Path | str,
    *,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    synchronous: str = "FULL",
    auto_vacuum: bool = True,
) -> sqlite3.Connection:
    """Open ``path`` read-write in WAL mode, in autocommit (transactions are
    explicit), creating the file and its folder if needed.

    ``synchronous=FULL`` (the default) fsyncs every commit: what was committed
    survives a power cut, not only a crash of the process. ``NORMAL`` leaves
    the fsync to the next FULL commit or checkpoint: the file stays
    consistent, but the last commits may roll back after a power cut.
    ``auto_vacuum`` makes a new file give freed pages back on
    ``PRAGMA incremental_vacuum``.

    Raises :class:`sqlite3.Error` or :class:`OSError`; :func:`classify` and
    :func:`describe` say what they mean.
    """
    opened = OpenedFile.EXISTING
    if str(path) != ":memory:":
        opened = _prepare_file(Path(path))
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if opened is not OpenedFile.EXISTING and auto_vacuum:
            # Only takes effect before the first table is created.
            connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
        # Asking is a read; setting it again would take the write lock.
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() != "wal":
            connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {synchronous}")
        connection.execute("PRAGMA cache_size = -65536")
    except BaseException:
        connection.close()
        raise
    return connection


def connect_read_only(path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection | None:
    """Open ``path`` for reading only, or return ``None`` when there is no
    database there yet (a missing or zero-byte file in an existing folder).

    Raises :class:`DataFolderMissing` when the folder itself does not exist:
    readers never create anything.
    """
    if not path.parent.is_dir():
        if path.parent.exists():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(path.parent))
        raise DataFolderMissing(errno.ENOENT, "no such folder", str(path.parent))
    try:
        if path.stat().st_size == 0:
            log.warning("%s is an empty file (0 bytes): nothing is recorded there", path)
            return None
    except FileNotFoundError:
        return None
    connection = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        timeout=busy_timeout_ms / 1000,
    )
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        connection.execute("PRAGMA query_only = ON")
        connection.execute("PRAGMA cache_size = -65536")
        # Reading the schema now turns "not a database" into an error at open.
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        connection.close()
        raise
    return connection


def has_tables(connection: sqlite3.Connection, names: Set[str], indexes: Set[str] = frozenset()) -> bool:
    """Whether every table of ``names`` and index of ``indexes`` exists (a
    read: no write lock)."""
    rows = connection.execute("SELECT type, name FROM sqlite_master").fetchall()
    tables = {name for kind, name in rows if kind == "table"}
    present = {name for kind, name in rows if kind == "index"}
    return names <= tables and indexes <= present


@contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock up front, so
    that two processes never deadlock upgrading a read to a write."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    try:
        connection.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full) leaves the transaction open: end it, so
        # that the next call starts clean.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def is_busy(error: sqlite3.OperationalError) -> bool:
    """The database was locked by another connection past the busy timeout."""
    return error.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def open_read_only(path: Path, schema: str, *, busy_timeout_ms: int) -> sqlite3.Connection:
    """``path`` opened read-only; when there is no file yet, an empty database
    of ``schema`` in memory, so that a reader answers "nothing" without
    creating a file."""
    found = connect_read_only(path, busy_timeout_ms=busy_timeout_ms)
    if found is not None:
        return found
    empty = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    empty.executescript(schema)
    return empty
