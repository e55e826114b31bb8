"""The store port on a SQLite file in WAL mode.

One row per event, unique on the event id (invariant 2: a redelivered event is
one row, a different event reusing an id is reported as a conflict), with an
index per access pattern: ``(request_id, ts)`` for flows, ``(type, ts)`` and
``(source, ts)`` for the time-range queries. Ties on the timestamp are ordered
by id, so two events of a request with the same timestamp are both kept and
always come back in the same order (invariants 1 and 3).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from eventtrail.embedded.sqlite import connect, is_busy, write_transaction
from eventtrail.event import Event
from eventtrail.store import (
    DUPLICATE,
    STORED,
    AppendResult,
    AppendStatus,
    Position,
    Store,
    StoreError,
    TransientStoreError,
    format_moment,
)

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id         TEXT NOT NULL PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts         TEXT NOT NULL,
    type       TEXT NOT NULL,
    source     TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_request ON events (request_id, ts);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, ts);
CREATE INDEX IF NOT EXISTS events_by_source ON events (source, ts);
"""

_COLUMNS = "id, request_id, ts, type, source, data"
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
_CHUNK = 500
_PURGE_BATCH = 10_000

_encode = msgspec.json.Encoder().encode
_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_decode_data = msgspec.json.Decoder(dict[str, Any]).decode

Row = tuple[str, str, str, str, str, str]


def _row(event: Event) -> Row:
    return (
        event.id,
        event.request_id,
        event.timestamp,
        event.type,
        event.source,
        _encode(event.data).decode(),
    )


def _event(row: Row) -> Event:
    event_id, request_id, ts, type_, source, data = row
    return Event(
        id=event_id,
        request_id=request_id,
        timestamp=ts,
        type=type_,
        source=source,
        data=_decode_data(data),
    )


@functools.lru_cache(maxsize=32)
def _fields_decoder(keys: tuple[str, ...]) -> Callable[[str], tuple[Any, ...]]:
    """A decoder of ``data`` that keeps only ``keys`` (in that order)."""
    names = [f"field_{index}" for index in range(len(keys))]
    fields = msgspec.defstruct(
        "DataFields",
        [(name, Any, None) for name in names],
        rename=dict(zip(names, keys, strict=True)),
        array_like=False,
    )
    decoder = msgspec.json.Decoder(fields)

    def decode(data: str) -> tuple[Any, ...]:
        return msgspec.structs.astuple(decoder.decode(data))

    return decode


def _same_event(stored: Row, new: Row) -> bool:
    if stored[:5] != new[:5]:
        return False
    # Key order in a JSON object carries no meaning; types do (1 is not true).
    return stored[5] == new[5] or _encode_sorted(_decode_data(stored[5])) == _encode_sorted(
        _decode_data(new[5])
    )


class SQLiteStore(Store):
    """The store port on one SQLite file (created on first use)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = connect(self.path)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the store at {self.path}: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, events: Sequence[Event]) -> list[AppendResult]:
        rows = [_row(event) for event in events]
        try:
            with self._lock, write_transaction(self._db) as db:
                # Redeliveries are rare: insert optimistically, and compare with
                # what is stored only when the unique id says some are not new.
                db.execute("SAVEPOINT optimistic")
                try:
                    db.executemany(_INSERT, rows)
                except sqlite3.IntegrityError:
                    db.execute("ROLLBACK TO optimistic")
                    results = self._append_checked(db, rows)
                else:
                    results = [STORED] * len(rows)
                db.execute("RELEASE optimistic")
        except sqlite3.OperationalError as error:
            if is_busy(error):
                raise TransientStoreError(f"{self.path} is locked: {error}") from error
            raise StoreError(f"cannot write to {self.path}: {error}") from error
        return results

    def _append_checked(self, db: sqlite3.Connection, rows: list[Row]) -> list[AppendResult]:
        stored = self._existing(db, (row[0] for row in rows))
        results: list[AppendResult] = []
        new_rows: list[Row] = []
        for row in rows:
            previous = stored.get(row[0])
            if previous is None:
                stored[row[0]] = row
                new_rows.append(row)
                results.append(STORED)
            elif _same_event(previous, row):
                results.append(DUPLICATE)
            else:
                results.append(
                    AppendResult(
                        AppendStatus.CONFLICT,
                        f"id {row[0]} already belongs to another event"
                        f" (request {previous[1]}, {previous[3]} at {previous[2]})",
                    )
                )
        db.executemany(_INSERT, new_rows)
        return results

    @staticmethod
    def _existing(db: sqlite3.Connection, ids: Iterable[str]) -> dict[str, Row]:
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Row] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in db.execute(f"SELECT {_COLUMNS} FROM events WHERE id IN ({marks})", chunk):
                found[row[0]] = row
        return found

    def _query(self, sql: str, parameters: Sequence[object]) -> list[Row]:
        try:
            with self._lock:
                return self._db.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if is_busy(error):
                raise TransientStoreError(f"{self.path} is locked: {error}") from error
            raise StoreError(f"cannot read {self.path}: {error}") from error

    def flow(self, request_id: str) -> list[Event]:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM events WHERE request_id = ? ORDER BY ts, id", (request_id,)
        )
        return [_event(row) for row in rows]

    def _events(
        self,
        kind: str,
        value: str,
        *,
        since: str | None,
        until: str | None,
        after: Position | None,
        limit: int,
        newest_first: bool,
    ) -> list[Event]:
        column = {"type": "type", "source": "source"}[kind]
        clauses = [f"{column} = ?"]
        parameters: list[object] = [value]
        if since is not None:
            clauses.append("ts >= ?")
            parameters.append(since)
        if until is not None:
            clauses.append("ts < ?")
            parameters.append(until)
        if after is not None:
            # Written so that the index on (column, ts) bounds the scan.
            if newest_first:
                clauses.append("ts <= ? AND (ts < ? OR id < ?)")
            else:
                clauses.append("ts >= ? AND (ts > ? OR id > ?)")
            parameters += [after.timestamp, after.timestamp, after.id]
        order = "DESC" if newest_first else "ASC"
        parameters.append(limit)
        rows = self._query(
            f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(clauses)}"
            f" ORDER BY ts {order}, id {order} LIMIT ?",
            parameters,
        )
        return [_event(row) for row in rows]

    def event_fields(
        self, type: str, keys: Sequence[str], *, since: datetime, until: datetime
    ) -> list[tuple[Any, ...]]:
        # Decoding only the wanted keys into a small struct is several times
        # faster than building whole events (or json_extract per key).
        decode = _fields_decoder(tuple(keys))
        rows = self._query(
            "SELECT ts, source, data FROM events WHERE type = ? AND ts >= ? AND ts < ? ORDER BY ts, id",
            (type, format_moment(since), format_moment(until)),
        )
        return [(row[0], row[1], *decode(row[2])) for row in rows]

    def purge(self, older_than: datetime) -> int:
        cutoff = format_moment(older_than)
        removed = 0
        # Small transactions: a purge must not hold the write lock for long.
        while True:
            try:
                with self._lock, write_transaction(self._db) as db:
                    count = db.execute(
                        "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE ts < ? LIMIT ?)",
                        (cutoff, _PURGE_BATCH),
                    ).rowcount
            except sqlite3.OperationalError as error:
                if is_busy(error):
                    raise TransientStoreError(f"{self.path} is locked: {error}") from error
                raise
            removed += count
            if count < _PURGE_BATCH:
                return removed

    def count(self) -> int:
        """How many events are stored."""
        return int(self._query("SELECT count(*) FROM events", ())[0][0])
