"""The store port on a SQLite file in WAL mode.

One row per event, unique on the event id (invariant 2: a redelivered event is
one row, a different event reusing an id is reported as a conflict), with an
index per access pattern: ``(request_id, ts)`` for flows, ``(type, ts)`` and
``(source, ts)`` for the time-range queries. Ties on the timestamp are ordered
by id, so two events of a request with the same timestamp are both kept and
always come back in the same order (invariants 1 and 3).

Every SQLite or file system error becomes a :class:`StoreError`: a
:class:`TransientStoreError` when it may pass (locked, disk full, I/O error),
a :class:`CorruptStore` when the file is not a usable database, which no
retry can help.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from eventtrail.embedded.rows import COLUMNS, Row, event_of, row_of
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
from eventtrail.event import Event
from eventtrail.readmodels.sqlite import SQLiteReadModels, read_models_path
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
    same_event,
)

__all__ = ["CorruptStore", "SQLiteStore"]


class CorruptStore(StoreError):
    """The store's file is not a usable database: stop, never retry."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id         TEXT NOT NULL PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts         TEXT NOT NULL,
    type       TEXT NOT NULL,
    source     TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS store_meta (
    name  TEXT NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO store_meta (name, value)
    VALUES ('next_rowid', (SELECT coalesce(max(rowid), 0) + 1 FROM events));
CREATE INDEX IF NOT EXISTS events_by_request_time ON events (request_id, ts, id);
CREATE INDEX IF NOT EXISTS events_by_type_time ON events (type, ts, id);
CREATE INDEX IF NOT EXISTS events_by_source_time ON events (source, ts, id);
DROP INDEX IF EXISTS events_by_request;
DROP INDEX IF EXISTS events_by_type;
DROP INDEX IF EXISTS events_by_source;
"""
# Every read orders by (ts, id) within one request, type or source: the id in
# the index saves a sort per page (no temporary B-tree), whatever the size.
_INDEXES = {"events_by_request_time", "events_by_type_time", "events_by_source_time"}

_INSERT = f"INSERT INTO events (rowid, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_CHUNK = 500
# The counter, or past the newest row when something else wrote rows.
_NEXT_ROWID = (
    "SELECT max((SELECT value FROM store_meta WHERE name = 'next_rowid'),"
    " (SELECT coalesce(max(rowid), 0) + 1 FROM events))"
)
_PURGE_BATCH = 10_000
_TABLES = {"events", "store_meta"}
# Where the read models lived before they had a file of their own.
_FORMER_READ_MODEL_TABLES = (
    "rm_service_rollups",
    "rm_operation_rollups",
    "rm_open_calls",
    "rm_requests",
    "rm_request_services",
    "rm_meta",
)


def _numbered(first: int, rows: Sequence[Row]) -> list[tuple[int | str, ...]]:
    """``rows`` with their rowids, from ``first`` on.

    The store numbers its rows itself (SQLite would reuse the rowid of a
    purged newest row): the read models follow the log by rowid, and a rowid
    given twice would be passed over.
    """
    return [(first + index, *row) for index, row in enumerate(rows)]


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
    return stored == new or same_event(event_of(stored), event_of(new))


class SQLiteStore(Store):
    """The store port on one SQLite file (created on first use), with its
    read models in a file beside it (:mod:`eventtrail.readmodels.sqlite`).

    ``read_only`` opens an existing file without ever writing to it or
    creating it (a missing or zero-byte file reads as an empty store).

    ``project``: whether :meth:`append` brings the read models up to date
    before it returns (each call reads what the one before stored). A
    consumer that runs a follower of its own (:mod:`eventtrail.readmodels.follower`)
    turns it off, so that storing never waits for the projections.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        project: bool = True,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.project = project and not read_only
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        with self._errors("cannot open the store"):
            self._db = self._open()
        try:
            self.read_models = SQLiteReadModels(
                read_models_path(self.path),
                self.path,
                self._errors,
                read_only=read_only,
                busy_timeout_ms=busy_timeout_ms,
            )
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            return open_read_only(self.path, _SCHEMA, busy_timeout_ms=self.busy_timeout_ms)
        db = connect(self.path, busy_timeout_ms=self.busy_timeout_ms)
        try:
            # Creating tables takes the write lock: skip it when they exist.
            # A file made before the current indexes gets them now, once.
            if not has_tables(db, _TABLES, _INDEXES):
                db.executescript(_SCHEMA)
            if has_tables(db, {"rm_meta"}):
                # Read models of an earlier version, inside the store's file:
                # they live beside it now (and are rebuilt there).
                with write_transaction(db):
                    for table in _FORMER_READ_MODEL_TABLES:
                        db.execute(f"DROP TABLE IF EXISTS {table}")
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _errors(self, doing: str, path: Path | None = None) -> Iterator[None]:
        """Turn SQLite and file system errors into store errors naming the
        cause and the file (``path``, else the store's)."""
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            text = f"{doing}: {describe(error, path or self.path)}"
            failure = classify(error)
            if failure is Failure.TRANSIENT:
                raise TransientStoreError(text) from error
            if failure is Failure.CORRUPT:
                raise CorruptStore(text) from error
            raise StoreError(text) from error

    def close(self) -> None:
        with self._lock, self._errors("cannot close the store"):
            self._db.close()
        self.read_models.close()

    def append(self, events: Sequence[Event]) -> list[AppendResult]:
        rows = [row_of(event) for event in events]
        with self._errors("cannot write to the store"), self._lock, write_transaction(self._db) as db:
            # Redeliveries are rare: insert optimistically, and compare with
            # what is stored only when the unique id says some are not new.
            (first,) = db.execute(_NEXT_ROWID).fetchone()
            db.execute("SAVEPOINT optimistic")
            try:
                db.executemany(_INSERT, _numbered(first, rows))
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK TO optimistic")
                results, new_rows = self._append_checked(db, rows)
                db.executemany(_INSERT, _numbered(first, new_rows))
                stored = len(new_rows)
            else:
                results = [STORED] * len(rows)
                stored = len(rows)
            db.execute("UPDATE store_meta SET value = ? WHERE name = 'next_rowid'", (first + stored,))
            db.execute("RELEASE optimistic")
        if self.project:
            # The events are stored whatever happens here: a failure leaves
            # them past the position, for the next catch-up to fold.
            self.read_models.catch_up()
        return results

    def _append_checked(
        self, db: sqlite3.Connection, rows: list[Row]
    ) -> tuple[list[AppendResult], list[Row]]:
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
        return results, new_rows

    @staticmethod
    def _existing(db: sqlite3.Connection, ids: Iterable[str]) -> dict[str, Row]:
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Row] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in db.execute(f"SELECT {COLUMNS} FROM events WHERE id IN ({marks})", chunk):
                found[row[0]] = row
        return found

    def _query(self, sql: str, parameters: Sequence[object]) -> list[Row]:
        with self._errors("cannot read the store"), self._lock:
            return self._db.execute(sql, parameters).fetchall()

    def flow(self, request_id: str) -> list[Event]:
        rows = self._query(
            f"SELECT {COLUMNS} FROM events WHERE request_id = ? ORDER BY ts, id", (request_id,)
        )
        return [event_of(row) for row in rows]

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
            # A row value: the index on (column, ts, id) seeks straight to it.
            clauses.append("(ts, id) < (?, ?)" if newest_first else "(ts, id) > (?, ?)")
            parameters += [after.timestamp, after.id]
        order = "DESC" if newest_first else "ASC"
        parameters.append(limit)
        rows = self._query(
            f"SELECT {COLUMNS} FROM events WHERE {' AND '.join(clauses)}"
            f" ORDER BY ts {order}, id {order} LIMIT ?",
            parameters,
        )
        return [event_of(row) for row in rows]

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
        # Type by type, through the (type, ts, id) index: each batch reads only
        # what it deletes, never the rest of the table. Small transactions: a
        # purge must not hold the write lock for long.
        for event_type in self._types():
            while True:
                with self._errors("cannot purge the store"), self._lock, write_transaction(self._db) as db:
                    count = db.execute(
                        "DELETE FROM events WHERE rowid IN"
                        " (SELECT rowid FROM events WHERE type = ? AND ts < ? LIMIT ?)",
                        (event_type, cutoff, _PURGE_BATCH),
                    ).rowcount
                with self._errors("cannot purge the store"), self._lock:
                    # Give the freed pages back (a file made with auto_vacuum);
                    # executescript steps the pragma to its end.
                    self._db.executescript("PRAGMA incremental_vacuum")
                removed += count
                if count < _PURGE_BATCH:
                    break
        self.read_models.purge(cutoff)
        return removed

    def _types(self) -> list[str]:
        """The distinct event types, one index seek each (a handful of them,
        however many events)."""
        types: list[str] = []
        while True:
            rows = self._query(
                "SELECT type FROM events WHERE type > ? ORDER BY type LIMIT 1", (types[-1] if types else "",)
            )
            if not rows:
                return types
            types.append(str(rows[0][0]))

    def count(self) -> int:
        """How many events are stored."""
        return int(self._query("SELECT count(*) FROM events", ())[0][0])
