"""Where the gateway keeps events on local disk: the journal and the spill file.

The journal (:class:`Journal`) is an append-only file of packed call records,
written with plain ``write()`` calls (no fsync) a few milliseconds after the
records were published: the kernel keeps what was written when the gateway's
process is killed, so a killed gateway loses at most what it had not yet
journaled. Records leave the journal once the queue or the spill file took
them; whatever a killed predecessor left in it is spilled at the next start.

The spill file (:class:`SpillFile`) holds encoded bodies while the queue
cannot take them. A SQLite file (one table of bodies) rather than a log: a
batch is written in one durable transaction, and a batch that reached the
queue is deleted in another, so a crash between the two only sends that batch
again, which the store absorbs (it keeps one copy of an event, by its id).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from eventtrail.embedded.sqlite import connect, write_transaction

__all__ = ["Journal", "JournalError", "SpillError", "SpillFile"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS spilled (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)"


class SpillError(Exception):
    """The spill file cannot be written or read (disk full, bad path...)."""


class SpillFile:
    """Bodies kept durably in arrival order, taken back oldest first.

    A body handed back by :meth:`oldest` and reported sent with
    :meth:`sent` is never handed back again by this object, even when
    deleting it from the file failed: the deletion is retried, not the send.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # Rows up to this mark reached the queue; deleting them may still be due.
        self._sent_mark = 0
        self._unremoved = False
        try:
            # FULL: an event the gateway spilled survives a power cut.
            self._db = connect(self.path, busy_timeout_ms=1_000, synchronous="FULL")
            self._db.execute(_SCHEMA)
            (self._pending,) = self._db.execute("SELECT count(*) FROM spilled").fetchone()
        except sqlite3.Error as error:
            raise SpillError(f"cannot open the spill file {self.path}: {error}") from error

    @property
    def pending(self) -> int:
        """Bodies waiting in the file (not yet sent)."""
        return int(self._pending)

    def append(self, bodies: Sequence[str]) -> None:
        """Keep ``bodies``; the count changes only once they are committed."""
        if not bodies:
            return
        try:
            with self._lock:
                with write_transaction(self._db) as db:
                    db.executemany("INSERT INTO spilled (body) VALUES (?)", [(body,) for body in bodies])
                self._pending += len(bodies)
        except sqlite3.Error as error:
            self._abandon()
            raise SpillError(f"cannot write the spill file {self.path}: {error}") from error

    def oldest(self, limit: int) -> tuple[int, list[str]]:
        """Up to ``limit`` oldest unsent bodies and the mark to report them
        :meth:`sent` by."""
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, body FROM spilled WHERE seq > ? ORDER BY seq LIMIT ?",
                    (self._sent_mark, limit),
                ).fetchall()
        except sqlite3.Error as error:
            raise SpillError(f"cannot read the spill file {self.path}: {error}") from error
        return (rows[-1][0] if rows else self._sent_mark), [body for _, body in rows]

    def sent(self, up_to: int, count: int) -> None:
        """The ``count`` bodies up to mark ``up_to`` reached the queue: never
        hand them back, and delete them (now, or at a later call if the
        file cannot be written now; raises :class:`SpillError` then)."""
        with self._lock:
            if up_to > self._sent_mark:
                self._sent_mark = up_to
                self._pending -= count
                self._unremoved = True
        self.remove_sent()

    def remove_sent(self) -> None:
        """Delete what was reported sent and is still in the file."""
        with self._lock:
            if not self._unremoved:
                return
            try:
                with write_transaction(self._db) as db:
                    db.execute("DELETE FROM spilled WHERE seq <= ?", (self._sent_mark,))
            except sqlite3.Error as error:
                self._abandon()
                raise SpillError(f"cannot update the spill file {self.path}: {error}") from error
            # Nothing sent is left in the file; an emptied table numbers its
            # next rows from 1 again, and those are unsent.
            self._unremoved = False
            self._sent_mark = 0

    def _abandon(self) -> None:
        # A COMMIT that failed may leave its transaction open (SQLite rolls
        # back some failures itself, not all): the next one must start clean.
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                if self._unremoved:
                    with write_transaction(self._db) as db:
                        db.execute("DELETE FROM spilled WHERE seq <= ?", (self._sent_mark,))
            self._db.close()


def _held_by_a_live_process(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True  # gone or unreadable: nothing to take over
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


class JournalError(Exception):
    """The journal cannot be written (disk full, bad path...)."""


_FRAME_HEADER = struct.Struct("<I")


class Journal:
    """Frames (opaque byte strings) appended to files named ``<path>.<n>``.

    :meth:`write` appends a frame and returns its number; :meth:`confirm`
    says that every frame up to a number is safe elsewhere: full files
    holding only such frames are deleted, the current one is emptied once it
    holds ``empty_bytes``. Files found when the
    journal is opened belong to a predecessor: :meth:`leftovers` reads them,
    :meth:`discard` deletes one once its frames are safe. Thread-safe (one
    writer and one confirmer at a time is the intended use).
    """

    def __init__(
        self, path: Path | str, *, rotate_bytes: int = 4 * 1024 * 1024, empty_bytes: int = 256 * 1024
    ) -> None:
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self.empty_bytes = empty_bytes
        self._lock = threading.Lock()
        pattern = re.compile(re.escape(self.path.name) + r"\.(\d+)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            found = sorted(
                (int(match.group(1)), entry)
                for entry in self.path.parent.iterdir()
                if (match := pattern.fullmatch(entry.name))
            )
        except OSError as error:
            raise JournalError(f"cannot open the journal {self.path}: {error}") from error
        # A file another live process holds (it keeps its files locked) is not a leftover.
        self._leftovers = [entry for _, entry in found if not _held_by_a_live_process(entry)]
        self._file_number = found[-1][0] if found else 0
        self._written = 0
        self._confirmed = 0
        # Full files waiting for their last frame to be confirmed.
        self._sealed: list[tuple[Path, int]] = []
        self._fd = -1
        self._size = 0
        self._current = self._open_next()

    def _open_next(self) -> Path:
        self._file_number += 1
        current = self.path.with_name(f"{self.path.name}.{self._file_number:06d}")
        try:
            self._fd = os.open(current, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self._fd = -1
            raise JournalError(f"cannot open the journal {current}: {error}") from error
        self._size = 0
        return current

    def write(self, frame: bytes) -> int:
        """Append ``frame``; return its number. On failure the file is
        left as it was (no partial frame) and :class:`JournalError` raised."""
        data = _FRAME_HEADER.pack(len(frame)) + frame
        with self._lock:
            if self._fd < 0:
                self._current = self._open_next()
            try:
                written = os.write(self._fd, data)
                if written != len(data):
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
            except OSError as error:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise JournalError(f"cannot write the journal {self._current}: {error}") from error
            self._size += len(data)
            self._written += 1
            if self._size >= self.rotate_bytes:
                self._sealed.append((self._current, self._written))
                os.close(self._fd)
                self._fd = -1
            return self._written

    def confirm(self, through: int) -> None:
        """Frames up to number ``through`` are safe: drop the files that hold nothing else."""
        with self._lock:
            self._confirmed = max(self._confirmed, through)
            while self._sealed and self._sealed[0][1] <= self._confirmed:
                path, _ = self._sealed.pop(0)
                with contextlib.suppress(OSError):
                    path.unlink()
            # Emptying the file on every confirmation cost more than the
            # writes (a truncation holds this lock while the writer waits):
            # it is emptied once it is large, and a crash before then only
            # sends some confirmed frames again, which the store absorbs.
            if self._fd >= 0 and self._size >= self.empty_bytes and self._confirmed >= self._written:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, 0)
                    self._size = 0

    def leftovers(self) -> list[Path]:
        """The files a predecessor left, oldest first."""
        return list(self._leftovers)

    @staticmethod
    def frames(path: Path) -> Iterator[bytes]:
        """The whole frames in a journal file (a torn last frame is skipped)."""
        data = path.read_bytes()
        offset = 0
        while offset + _FRAME_HEADER.size <= len(data):
            (length,) = _FRAME_HEADER.unpack_from(data, offset)
            start = offset + _FRAME_HEADER.size
            if start + length > len(data):
                return
            yield data[start : start + length]
            offset = start + length

    def discard(self, path: Path) -> None:
        """Delete a leftover file whose frames are now safe elsewhere."""
        path.unlink(missing_ok=True)
        if path in self._leftovers:
            self._leftovers.remove(path)

    def close(self) -> None:
        """Close the current file; it is deleted if every frame was confirmed."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._confirmed >= self._written:
                for path, _ in self._sealed:
                    path.unlink(missing_ok=True)
                self._sealed.clear()
                self._current.unlink(missing_ok=True)
