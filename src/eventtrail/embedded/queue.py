"""A durable queue in a SQLite file, with SQS's delivery semantics.

A received message stays in the table, hidden until its visibility timeout
passes; acknowledging deletes it. Every receive counts, and a message due for
its ``max_receives + 1``-th receive moves to the dead letters with the last
error instead. Receives happen in ``BEGIN IMMEDIATE`` transactions, so any
number of worker processes can share one file without taking a message twice
while it is hidden, and without losing one.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from eventtrail.embedded.sqlite import connect, write_transaction
from eventtrail.queue import DeadLetter, Message, Queue, QueueError, QueueStats, UnknownDeadLetter

__all__ = ["SQLiteQueue"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    body          TEXT    NOT NULL,
    sent_at       REAL    NOT NULL,
    visible_at    REAL    NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq           INTEGER PRIMARY KEY,
    body          TEXT    NOT NULL,
    sent_at       REAL    NOT NULL,
    failed_at     REAL    NOT NULL,
    receive_count INTEGER NOT NULL,
    reason        TEXT    NOT NULL
);
"""

# SQLite's default limit on bound parameters is 32,766; stay far below it.
_CHUNK = 500


def _receipt(seq: int, receive_count: int) -> str:
    return f"{seq}:{receive_count}"


def _parse_receipt(receipt: str) -> tuple[int, int]:
    seq, _, count = receipt.partition(":")
    return int(seq), int(count)


def _seq(message_id: str) -> int:
    try:
        return int(message_id)
    except ValueError:
        raise UnknownDeadLetter(f"no dead letter has the id {message_id!r}") from None


class SQLiteQueue(Queue):
    """The queue port on one SQLite file (created on first use)."""

    def __init__(self, path: Path | str, *, max_receives: int = 5) -> None:
        if max_receives < 1:
            raise ValueError("max_receives must be at least 1")
        self.path = Path(path)
        self.max_receives = max_receives
        self._lock = threading.Lock()
        try:
            self._db = connect(self.path)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise QueueError(f"cannot open the queue at {self.path}: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def send(self, bodies: Sequence[str]) -> list[str]:
        now = time.time()
        with self._lock, write_transaction(self._db) as db:
            # seq is AUTOINCREMENT, so a batch gets consecutive ids after the last one.
            db.executemany(
                "INSERT INTO messages (body, sent_at, visible_at) VALUES (?, ?, ?)",
                [(body, now, now) for body in bodies],
            )
            if not bodies:
                return []
            (last,) = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        first = last - len(bodies) + 1
        return [str(seq) for seq in range(first, last + 1)]

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
        received: list[Message] = []
        with self._lock, write_transaction(self._db) as db:
            while len(received) < max_messages:
                rows = db.execute(
                    "SELECT seq, body, sent_at, receive_count, last_error FROM messages"
                    " WHERE visible_at <= ? ORDER BY seq LIMIT ?",
                    (now, max_messages - len(received)),
                ).fetchall()
                if not rows:
                    break
                exhausted = [row for row in rows if row[3] >= self.max_receives]
                if exhausted:
                    self._move_to_dead_letters(
                        db,
                        [
                            (seq, last_error or f"not acknowledged after {count} receives")
                            for seq, _, _, count, last_error in exhausted
                        ],
                        now,
                    )
                deliver = [row for row in rows if row[3] < self.max_receives]
                db.executemany(
                    "UPDATE messages SET visible_at = ?, receive_count = receive_count + 1 WHERE seq = ?",
                    [(now + visibility_timeout, row[0]) for row in deliver],
                )
                received.extend(
                    Message(str(seq), body, _receipt(seq, count + 1), count + 1, sent_at)
                    for seq, body, sent_at, count, _ in deliver
                )
        return received

    @staticmethod
    def _move_to_dead_letters(db: sqlite3.Connection, reasons: list[tuple[int, str]], now: float) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO dead_letters"
            " (seq, body, sent_at, failed_at, receive_count, reason)"
            " SELECT seq, body, sent_at, ?, receive_count, ? FROM messages WHERE seq = ?",
            [(now, reason, seq) for seq, reason in reasons],
        )
        db.executemany("DELETE FROM messages WHERE seq = ?", [(seq,) for seq, _ in reasons])

    def ack(self, messages: Sequence[Message]) -> None:
        receipts = [_parse_receipt(m.receipt) for m in messages]
        with self._lock, write_transaction(self._db) as db:
            db.executemany("DELETE FROM messages WHERE seq = ? AND receive_count = ?", receipts)

    def release(self, messages: Sequence[Message], *, delay: float, error: str) -> None:
        visible_at = time.time() + max(delay, 0.0)
        with self._lock, write_transaction(self._db) as db:
            db.executemany(
                "UPDATE messages SET visible_at = ?, last_error = ? WHERE seq = ? AND receive_count = ?",
                [(visible_at, error, *_parse_receipt(m.receipt)) for m in messages],
            )

    def dead_letter(self, message: Message, reason: str) -> None:
        seq, count = _parse_receipt(message.receipt)
        with self._lock, write_transaction(self._db) as db:
            # A stale receipt means another worker holds the message now; it
            # will reach the same verdict.
            current = db.execute(
                "SELECT 1 FROM messages WHERE seq = ? AND receive_count = ?", (seq, count)
            ).fetchone()
            if current:
                self._move_to_dead_letters(db, [(seq, reason)], time.time())

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body, reason, receive_count, sent_at, failed_at"
                " FROM dead_letters ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadLetter(str(row[0]), *row[1:]) for row in rows]

    def get_dead_letter(self, message_id: str) -> DeadLetter:
        with self._lock:
            row = self._db.execute(
                "SELECT seq, body, reason, receive_count, sent_at, failed_at FROM dead_letters WHERE seq = ?",
                (_seq(message_id),),
            ).fetchone()
        if row is None:
            raise UnknownDeadLetter(f"no dead letter has the id {message_id!r}")
        return DeadLetter(str(row[0]), *row[1:])

    def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        now = time.time()
        with self._lock, write_transaction(self._db) as db:
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
                "INSERT INTO messages (seq, body, sent_at, visible_at)"
                " SELECT seq, body, sent_at, ? FROM dead_letters WHERE seq = ?",
                [(now, seq) for seq in seqs],
            )
            db.executemany("DELETE FROM dead_letters WHERE seq = ?", [(seq,) for seq in seqs])
        return len(seqs)

    def stats(self) -> QueueStats:
        now = time.time()
        with self._lock:
            visible, in_flight = self._db.execute(
                "SELECT coalesce(sum(visible_at <= ?), 0), coalesce(sum(visible_at > ?), 0) FROM messages",
                (now, now),
            ).fetchone()
            (dead,) = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()
        return QueueStats(visible=visible, in_flight=in_flight, dead=dead)
