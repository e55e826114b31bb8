"""A durable queue in a SQLite file, with SQS's delivery semantics.

A message body is written once, when it is sent, and deleted once, when it is
acknowledged. What changes in between lives in narrow rows: a message that was
never received is simply past the ``fresh`` mark; once received, its
``deliveries`` row holds when it becomes visible again and how often it was
received. Receiving a batch therefore writes a few bytes per message, not its
body again. A message due for its ``max_receives + 1``-th receive moves to the
dead letters with the last error instead.

Receives happen in ``BEGIN IMMEDIATE`` transactions, so any number of worker
processes can share one file without taking a message twice while it is
hidden, and without losing one.

Every SQLite or file system error becomes a :class:`QueueError`; one that may
pass (locked past the busy timeout, disk full, I/O error) a
:class:`TransientQueueError`, which the worker waits out.

The file gives freed pages back as it empties (``auto_vacuum =
INCREMENTAL``, and an ``incremental_vacuum`` after acknowledgements that
left many free pages), and deleted bodies are overwritten where that costs no
extra I/O (``secure_delete = FAST``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from eventtrail.embedded.sqlite import (
    BUSY_TIMEOUT_MS,
    Failure,
    classify,
    connect,
    describe,
    has_tables,
    open_read_only,
    write_transaction,
)
from eventtrail.queue import (
    DeadLetter,
    Message,
    Queue,
    QueueError,
    QueueStats,
    TransientQueueError,
    UnknownDeadLetter,
)

__all__ = ["SQLiteQueue"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    body          TEXT    NOT NULL,
    sent_at       REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq           INTEGER PRIMARY KEY,
    visible_at    REAL    NOT NULL,
    receive_count INTEGER NOT NULL,
    last_error    TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (visible_at);
CREATE TABLE IF NOT EXISTS fresh (
    one           INTEGER PRIMARY KEY CHECK (one = 1),
    next_seq      INTEGER NOT NULL
);
INSERT OR IGNORE INTO fresh (one, next_seq) VALUES (1, 1);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq           INTEGER PRIMARY KEY,
    body          TEXT    NOT NULL,
    sent_at       REAL    NOT NULL,
    failed_at     REAL    NOT NULL,
    receive_count INTEGER NOT NULL,
    reason        TEXT    NOT NULL
);
"""

_TABLES = {"messages", "deliveries", "fresh", "dead_letters"}
# A receive finds the deliveries due again by time, not by reading every
# delivery in flight.
_INDEXES = {"deliveries_due"}

# SQLite's default limit on bound parameters is 32,766; stay far below it.
_CHUNK = 500

# Free pages (4 KiB each) past which an acknowledgement gives pages back to
# the file system, and how many it gives back at once: enough that an emptied
# queue shrinks within a few acknowledgements, few enough that one
# acknowledgement stays short.
_VACUUM_FREE_PAGES = 256
_VACUUM_STEP = 2048


def _receipt(seq: int, receive_count: int) -> str:
    return f"{seq}:{receive_count}"


def _parse_receipt(receipt: str) -> tuple[int, int]:
    seq, _, count = receipt.partition(":")
    return int(seq), int(count)


def _runs(receipts: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Sorted (seq, receive count) pairs as (first, last, count) runs of
    consecutive ids: a batch received together is usually one run, deleted
    with one statement."""
    runs: list[tuple[int, int, int]] = []
    for seq, count in receipts:
        if runs and runs[-1][1] == seq - 1 and runs[-1][2] == count:
            runs[-1] = (runs[-1][0], seq, count)
        else:
            runs.append((seq, seq, count))
    return runs


@contextmanager
def _durable(db: sqlite3.Connection) -> Iterator[None]:
    """Commit with an fsync: a message the queue accepted survives a power cut."""
    db.execute("PRAGMA synchronous = FULL")
    try:
        yield
    finally:
        db.execute("PRAGMA synchronous = NORMAL")


def _seq(message_id: str) -> int:
    try:
        return int(message_id)
    except ValueError:
        raise UnknownDeadLetter(f"no dead letter has the id {message_id!r}") from None


class SQLiteQueue(Queue):
    """The queue port on one SQLite file (created on first use).

    ``read_only`` opens an existing file without ever writing to it or
    creating it (a missing or zero-byte file reads as an empty queue); the
    commands that only look use it, and answer while a writer holds the lock.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_receives: int = 5,
        read_only: bool = False,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        if max_receives < 1:
            raise ValueError("max_receives must be at least 1")
        self.path = Path(path)
        self.max_receives = max_receives
        self.read_only = read_only
        self.busy_timeout_ms = busy_timeout_ms
        self.exhausted = 0
        self._lock = threading.Lock()
        with self._errors("cannot open the queue"):
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            return open_read_only(self.path, _SCHEMA, busy_timeout_ms=self.busy_timeout_ms)
        # Receives and acknowledgements need no fsync of their own: losing one
        # to a power cut only delivers a message again, which the store
        # absorbs. Sends are made durable before they return (see send).
        db = connect(self.path, synchronous="NORMAL", busy_timeout_ms=self.busy_timeout_ms)
        try:
            db.execute("PRAGMA secure_delete = FAST")
            # Creating tables takes the write lock: skip it when they exist, so
            # that opening works while another process holds the lock.
            if not has_tables(db, _TABLES, _INDEXES):
                db.executescript(_SCHEMA)
            self._enable_auto_vacuum(db)
        except BaseException:
            db.close()
            raise
        return db

    def _enable_auto_vacuum(self, db: sqlite3.Connection) -> None:
        """Switch a file made before auto_vacuum to it, which takes a VACUUM:
        done only while the queue is empty, when it costs next to nothing."""
        (mode,) = db.execute("PRAGMA auto_vacuum").fetchone()
        if mode != 0:
            return
        (waiting,) = db.execute(
            "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM dead_letters)"
        ).fetchone()
        if waiting:
            return
        # Never wait for it: another process at work means "not now".
        db.execute("PRAGMA busy_timeout = 0")
        try:
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            db.execute("VACUUM")
        except sqlite3.OperationalError as error:
            log.info("%s: auto_vacuum not enabled yet (%s)", self.path, error)
        finally:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn SQLite and file system errors into queue errors naming the cause."""
        try:
            yield
        except UnicodeEncodeError as error:
            # A lone surrogate: the text cannot be stored as UTF-8.
            raise QueueError(f"{doing}: a message body is not valid Unicode text ({error.reason})") from error
        except (sqlite3.Error, OSError) as error:
            text = f"{doing}: {describe(error, self.path)}"
            if classify(error) is Failure.TRANSIENT:
                raise TransientQueueError(text) from error
            raise QueueError(text) from error

    def close(self) -> None:
        with self._lock, self._errors("cannot close the queue"):
            self._db.close()

    def send(self, bodies: Sequence[str]) -> list[str]:
        if not bodies:
            return []
        now = time.time()
        with (
            self._errors("cannot send to the queue"),
            self._lock,
            _durable(self._db),
            write_transaction(self._db) as db,
        ):
            # seq is AUTOINCREMENT: a batch gets consecutive ids after the last one.
            db.executemany(
                "INSERT INTO messages (body, sent_at) VALUES (?, ?)", [(body, now) for body in bodies]
            )
            (last,) = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        return [str(seq) for seq in range(last - len(bodies) + 1, last + 1)]

    def receive(
        self, max_messages: int, *, visibility_timeout: float, wait_seconds: float = 0.0
    ) -> list[Message]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        deadline = time.monotonic() + wait_seconds
        pause = 0.01
        while True:
            messages = self._receive_now(max_messages, visibility_timeout)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.2)

    def _receive_now(self, max_messages: int, visibility_timeout: float) -> list[Message]:
        now = time.time()
        hidden_until = now + visibility_timeout
        # An idle poll only reads (two index seeks): the write lock is taken
        # when there is something to take, so idle workers never hold up senders.
        with self._errors("cannot receive from the queue"), self._lock:
            (work,) = self._db.execute(
                "SELECT EXISTS (SELECT 1 FROM deliveries WHERE visible_at <= ?)"
                " OR EXISTS (SELECT 1 FROM messages WHERE seq >= (SELECT next_seq FROM fresh))",
                (now,),
            ).fetchone()
        if not work:
            return []
        with self._errors("cannot receive from the queue"), self._lock, write_transaction(self._db) as db:
            # Messages received before and visible again come first, the
            # longest due first.
            due = db.execute(
                "SELECT seq, receive_count, last_error FROM deliveries"
                " WHERE visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
                (now, max_messages),
            ).fetchall()
            exhausted = [
                (seq, error or f"not acknowledged after {count} receives")
                for seq, count, error in due
                if count >= self.max_receives
            ]
            if exhausted:
                self._move_to_dead_letters(db, exhausted, now)
                self.exhausted += len(exhausted)
            again = [(seq, count + 1) for seq, count, _ in due if count < self.max_receives]
            db.executemany(
                "UPDATE deliveries SET visible_at = ?, receive_count = ? WHERE seq = ?",
                [(hidden_until, count, seq) for seq, count in again],
            )
            rows = self._bodies(db, [seq for seq, _ in again])
            received = [
                Message(str(seq), rows[seq][0], _receipt(seq, count), count, rows[seq][1])
                for seq, count in again
            ]
            # Then messages never received, in the order they were sent.
            room = max_messages - len(received)
            if room > 0:
                (next_seq,) = db.execute("SELECT next_seq FROM fresh").fetchone()
                fresh = db.execute(
                    "SELECT seq, body, sent_at FROM messages WHERE seq >= ? ORDER BY seq LIMIT ?",
                    (next_seq, room),
                ).fetchall()
                if fresh:
                    db.executemany(
                        "INSERT INTO deliveries (seq, visible_at, receive_count) VALUES (?, ?, 1)",
                        [(seq, hidden_until) for seq, _, _ in fresh],
                    )
                    db.execute("UPDATE fresh SET next_seq = ?", (fresh[-1][0] + 1,))
                    received += [
                        Message(str(seq), body, _receipt(seq, 1), 1, sent_at) for seq, body, sent_at in fresh
                    ]
        return received

    @staticmethod
    def _bodies(db: sqlite3.Connection, seqs: list[int]) -> dict[int, tuple[str, float]]:
        found: dict[int, tuple[str, float]] = {}
        for start in range(0, len(seqs), _CHUNK):
            chunk = seqs[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for seq, body, sent_at in db.execute(
                f"SELECT seq, body, sent_at FROM messages WHERE seq IN ({marks})", chunk
            ):
                found[seq] = (body, sent_at)
        return found

    @staticmethod
    def _move_to_dead_letters(db: sqlite3.Connection, reasons: list[tuple[int, str]], now: float) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO dead_letters"
            " (seq, body, sent_at, failed_at, receive_count, reason)"
            " SELECT m.seq, m.body, m.sent_at, ?, coalesce(d.receive_count, 0), ?"
            " FROM messages m LEFT JOIN deliveries d ON d.seq = m.seq WHERE m.seq = ?",
            [(now, reason, seq) for seq, reason in reasons],
        )
        db.executemany("DELETE FROM messages WHERE seq = ?", [(seq,) for seq, _ in reasons])
        db.executemany("DELETE FROM deliveries WHERE seq = ?", [(seq,) for seq, _ in reasons])

    def ack(self, messages: Sequence[Message]) -> None:
        runs = _runs(sorted(_parse_receipt(m.receipt) for m in messages))
        with (
            self._errors("cannot acknowledge messages in the queue"),
            self._lock,
            write_transaction(self._db) as db,
        ):
            # A stale receipt (the message was received again since) keeps its
            # delivery row, and so its body.
            db.executemany("DELETE FROM deliveries WHERE seq BETWEEN ? AND ? AND receive_count = ?", runs)
            db.executemany(
                "DELETE FROM messages WHERE seq BETWEEN ?1 AND ?2"
                " AND seq NOT IN (SELECT seq FROM deliveries WHERE seq BETWEEN ?1 AND ?2)",
                [(first, last) for first, last, _ in runs],
            )
        self._give_pages_back()

    def _give_pages_back(self) -> None:
        """Truncate the file by up to ``_VACUUM_STEP`` free pages once enough
        are free (a file made with auto_vacuum; others keep their pages)."""
        with self._lock:
            try:
                (free_pages,) = self._db.execute("PRAGMA freelist_count").fetchone()
                if free_pages > _VACUUM_FREE_PAGES:
                    # executescript steps the pragma to its end; execute would
                    # free a single page.
                    self._db.executescript(f"PRAGMA incremental_vacuum({_VACUUM_STEP})")
            except sqlite3.Error as error:
                # The acknowledgement is committed; the pages wait for the next one.
                log.info("%s: free pages kept for now (%s)", self.path, error)

    def release(self, messages: Sequence[Message], *, delay: float, error: str) -> None:
        visible_at = time.time() + max(delay, 0.0)
        with (
            self._errors("cannot release messages in the queue"),
            self._lock,
            write_transaction(self._db) as db,
        ):
            db.executemany(
                "UPDATE deliveries SET visible_at = ?, last_error = ? WHERE seq = ? AND receive_count = ?",
                [(visible_at, error, *_parse_receipt(m.receipt)) for m in messages],
            )

    def dead_letter(self, message: Message, reason: str) -> None:
        seq, count = _parse_receipt(message.receipt)
        with (
            self._errors("cannot dead-letter a message in the queue"),
            self._lock,
            write_transaction(self._db) as db,
        ):
            # A stale receipt means another worker holds the message now; it
            # will reach the same verdict.
            current = db.execute(
                "SELECT 1 FROM deliveries WHERE seq = ? AND receive_count = ?", (seq, count)
            ).fetchone()
            if current:
                self._move_to_dead_letters(db, [(seq, reason)], time.time())

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._errors("cannot read the dead letters of the queue"), self._lock:
            rows = self._db.execute(
                "SELECT seq, body, reason, receive_count, sent_at, failed_at"
                " FROM dead_letters ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadLetter(str(row[0]), *row[1:]) for row in rows]

    def get_dead_letter(self, message_id: str) -> DeadLetter:
        with self._errors("cannot read the dead letters of the queue"), self._lock:
            row = self._db.execute(
                "SELECT seq, body, reason, receive_count, sent_at, failed_at FROM dead_letters WHERE seq = ?",
                (_seq(message_id),),
            ).fetchone()
        if row is None:
            raise UnknownDeadLetter(f"no dead letter has the id {message_id!r}")
        return DeadLetter(str(row[0]), *row[1:])

    def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        now = time.time()
        with (
            self._errors("cannot redrive dead letters in the queue"),
            self._lock,
            write_transaction(self._db) as db,
        ):
            if message_ids is None:
                seqs = [row[0] for row in db.execute("SELECT seq FROM dead_letters")]
            else:
                seqs = [_seq(message_id) for message_id in message_ids]
                known: set[int] = set()
                for start in range(0, len(seqs), _CHUNK):
                    chunk = seqs[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    known.update(
                        row[0]
                        for row in db.execute(f"SELECT seq FROM dead_letters WHERE seq IN ({marks})", chunk)
                    )
                missing = [str(seq) for seq in seqs if seq not in known]
                if missing:
                    raise UnknownDeadLetter(f"not dead letters: {', '.join(missing)}")
            # The message keeps its id; its receive count starts again.
            db.executemany(
                "INSERT INTO messages (seq, body, sent_at) SELECT seq, body, sent_at FROM dead_letters"
                " WHERE seq = ?",
                [(seq,) for seq in seqs],
            )
            db.executemany(
                "INSERT INTO deliveries (seq, visible_at, receive_count) VALUES (?, ?, 0)",
                [(seq, now) for seq in seqs],
            )
            db.executemany("DELETE FROM dead_letters WHERE seq = ?", [(seq,) for seq in seqs])
        return len(seqs)

    def stats(self) -> QueueStats:
        now = time.time()
        with self._errors("cannot read the queue"), self._lock:
            again, in_flight = self._db.execute(
                "SELECT coalesce(sum(visible_at <= ?), 0), coalesce(sum(visible_at > ?), 0) FROM deliveries",
                (now, now),
            ).fetchone()
            (fresh,) = self._db.execute(
                "SELECT count(*) FROM messages WHERE seq >= (SELECT next_seq FROM fresh)"
            ).fetchone()
            (dead,) = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()
        return QueueStats(visible=fresh + again, in_flight=in_flight, dead=dead)
