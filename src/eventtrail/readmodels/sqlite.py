"""The read-model port on SQLite: tables in a file of their own beside the
store's (``events.db`` -> ``events.read-models.db``), kept by following the
store's log.

Tables (prefix ``rm_``):

- ``rm_service_rollups`` and ``rm_operation_rollups``: one row per step,
  bucket, service, caller (and operation), with the call and failure counts
  and the latency sketch; deltas are added by an upsert whose sketch merge is
  a SQL function of the connection, so a batch is one ``executemany``;
- ``rm_open_calls``: halves of calls waiting for their other half;
- ``rm_requests``: one row per request, indexed by start time and by status
  and start time; ``rm_request_services``: one row per (service, request),
  by start time, for the search by service;
- ``rm_meta``: the projection version, and the *position*: the rowid of the
  last event of the store's ``events`` table folded in.

Exactly once, by position: :meth:`SQLiteReadModels.catch_up` folds the
events stored after the position, in the order they were stored, and writes
the new position in the same transaction as their changes. An event is
stored once (a redelivery is not a new row), gets a rowid above every rowid
before it, and is folded by exactly one committed transaction, whichever
process runs it and however often it is interrupted. The store numbers its
rows from a counter of its own, so no rowid is given twice, even after a
purge of the newest rows.

Being a file of its own, the read models are written without the store's
write lock: a follower folding in another thread or process does not hold
up the consumer storing the next batch. Every public method holds this object's
lock; the primitives never take it (they run under it).
"""

from __future__ import annotations

import heapq
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from eventtrail.embedded.rows import COLUMNS, Row, event_of
from eventtrail.embedded.sqlite import (
    BUSY_TIMEOUT_MS,
    connect,
    connect_read_only,
    has_tables,
    open_read_only,
    write_transaction,
)
from eventtrail.event import Event
from eventtrail.readmodels.model import (
    ALL_OPERATIONS,
    FAILURE_KINDS,
    PROJECTION_VERSION,
    STEPS,
    WALK_STEPS,
    CallKey,
    Changes,
    OpenCall,
    RequestQuery,
    RequestState,
    RequestSummary,
    Rollup,
    RollupKey,
    StoredSketch,
    bucket_range,
    cover,
    minute_range,
)
from eventtrail.readmodels.pieces import Piece, window_pieces
from eventtrail.readmodels.port import (
    CALL_EVENT_TYPES,
    BucketCount,
    Edge,
    FailingRun,
    Progress,
    ReadModels,
    ReadModelsOutdated,
    Replay,
    RequestPage,
)
from eventtrail.readmodels.sketch import LatencySketch, SketchSum

__all__ = ["SQLiteReadModels", "read_models_path"]

_FAILURE_COLUMNS = ", ".join(f"failed_{kind}" for kind in FAILURE_KINDS)
#: A rollup row's counts, in the order of :meth:`Rollup.stored`'s arguments.
_COUNT_COLUMNS = f"calls, {_FAILURE_COLUMNS}, abandoned"
_FAILURE_DEFINITIONS = "".join(f"    failed_{kind} INTEGER NOT NULL,\n" for kind in FAILURE_KINDS)
#: A row's failed calls, of every kind.
_FAILED = " + ".join(f"failed_{kind}" for kind in FAILURE_KINDS)
_FAILURE_UPDATES = ", ".join(
    f"failed_{kind} = failed_{kind} + excluded.failed_{kind}" for kind in FAILURE_KINDS
)

_ROLLUP_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    step      TEXT NOT NULL,
    bucket    TEXT NOT NULL,
    service   TEXT NOT NULL,
    caller    TEXT NOT NULL,
    operation TEXT NOT NULL,
    calls     INTEGER NOT NULL,
{failures}    abandoned INTEGER NOT NULL DEFAULT 0,
    sketch    BLOB NOT NULL,
    PRIMARY KEY (step, bucket, service, caller, operation)
) WITHOUT ROWID;
"""

_SCHEMA = (
    _ROLLUP_TABLE.format(name="rm_service_rollups", failures=_FAILURE_DEFINITIONS)
    + _ROLLUP_TABLE.format(name="rm_operation_rollups", failures=_FAILURE_DEFINITIONS)
    + """
CREATE INDEX IF NOT EXISTS rm_service_rollups_by_service
    ON rm_service_rollups (service, step, bucket, calls, """
    + _FAILURE_COLUMNS
    + """);
CREATE TABLE IF NOT EXISTS rm_open_calls (
    request_id TEXT NOT NULL,
    call_id    TEXT NOT NULL,
    ts         TEXT NOT NULL,
    half       BLOB NOT NULL,
    PRIMARY KEY (request_id, call_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rm_open_calls_by_time ON rm_open_calls (ts);
CREATE TABLE IF NOT EXISTS rm_requests (
    request_id  TEXT NOT NULL PRIMARY KEY,
    started_at  TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    status      TEXT NOT NULL,
    state       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_requests_by_start ON rm_requests (started_at, request_id);
CREATE INDEX IF NOT EXISTS rm_requests_by_status ON rm_requests (status, started_at, request_id);
CREATE TABLE IF NOT EXISTS rm_request_services (
    service    TEXT NOT NULL,
    started_at TEXT NOT NULL,
    request_id TEXT NOT NULL,
    PRIMARY KEY (service, started_at, request_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rm_meta (
    name  TEXT NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
)

#: A service's calls per bucket, read without its sketches nor the other
#: services' rows (the walk back to "faulty since"); files made before it
#: get it at their next writable open.
_SERVICE_INDEX = "rm_service_rollups_by_service"

_ROLLUP_TABLES = ("rm_service_rollups", "rm_operation_rollups")

_TABLES = {
    "rm_service_rollups",
    "rm_operation_rollups",
    "rm_open_calls",
    "rm_requests",
    "rm_request_services",
    "rm_meta",
}

_UPSERT = (
    "INSERT INTO {table} (step, bucket, service, caller, operation, "
    + _COUNT_COLUMNS
    + ", sketch) VALUES (?, ?, ?, ?, ?, ?, "
    + ", ".join("?" * len(FAILURE_KINDS))
    + ", ?, ?) ON CONFLICT (step, bucket, service, caller, operation) DO UPDATE SET"
    " calls = calls + excluded.calls, "
    + _FAILURE_UPDATES
    + ", abandoned = abandoned + excluded.abandoned"
    + ", sketch = rm_merge_sketches(sketch, excluded.sketch)"
)

_REPLAY_BATCH = 2000
_PURGE_BATCH = 10_000
#: Events folded per transaction when catching up with the log.
_PROJECT_BATCH = 5000
_CHUNK = 400

_encode = msgspec.msgpack.Encoder().encode
_decode_half = msgspec.msgpack.Decoder(OpenCall).decode
_decode_state = msgspec.msgpack.Decoder(RequestState).decode


def _count_ranges(since: datetime, until: datetime, step: str | None) -> list[tuple[str, str, str]]:
    """The ``(step, first, last)`` bucket ranges that the walk's counts read:
    those of :func:`cover` at :data:`WALK_STEPS`, or the ``step`` buckets of
    the window."""
    if step is None:
        return list(cover(since, until, WALK_STEPS))
    found = bucket_range(since, until, step)
    return [(step, *found)] if found is not None else []


def _oldest(
    ranges: list[tuple[str, str, str]], found: dict[int, str | None], since: int
) -> tuple[str, str] | None:
    """``(step, bucket)`` of the oldest called bucket of the ranges from
    number ``since`` on, read by :meth:`SQLiteReadModels.failing_run`."""
    for number in range(since, len(ranges)):
        bucket = found[2 * number + 1]
        if bucket is not None:
            return ranges[number][0], bucket
    return None


def _create_tables(db: sqlite3.Connection) -> None:
    # One statement at a time: executescript would commit the open transaction.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


#: A rollup row as :meth:`SQLiteReadModels._summed` reads it: its piece's tag,
#: its edge, its counts, then its sketch.
_RollupRow = tuple[Any, ...]


def _time_order(row: Row) -> tuple[str, str]:
    """``(ts, id)``: the order of the store's time indexes."""
    return row[2], row[0]


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


Guard = Callable[[str, Path], AbstractContextManager[None]]


def read_models_path(store_path: Path) -> Path:
    """Where the read models of the store at ``store_path`` live."""
    return store_path.with_name(f"{store_path.stem}.read-models{store_path.suffix or '.db'}")


class SQLiteReadModels(ReadModels):
    """The read models of the store whose file is ``log_path``, in their own
    file at ``path``.

    ``guard(doing, path)`` turns SQLite errors into store errors (the store's
    own translation). A writer creates the tables when they are missing: at
    the current version when the store holds no events yet, else as never
    built (a rebuild fills them). ``read_only`` never writes nor creates
    anything.
    """

    # The worker's follower rebuilds read models of an older shape by itself.
    rebuilt_by = "a running `eventtrail worker` rebuilds them, or run `eventtrail rebuild`"
    # Ten-minute rows too: a window's edges are read from them (readmodels/pieces.py).
    steps = tuple(STEPS)
    version = PROJECTION_VERSION + 1

    def __init__(
        self,
        path: Path,
        log_path: Path,
        guard: Guard,
        *,
        read_only: bool = False,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self.path = path
        self.log_path = log_path
        self.read_only = read_only
        self._lock = threading.Lock()
        self._store_guard = guard
        with guard("cannot open the read models", path):
            if read_only:
                self._db = open_read_only(path, _SCHEMA, busy_timeout_ms=busy_timeout_ms)
                self._log = connect_read_only(log_path, busy_timeout_ms=busy_timeout_ms)
                return
            # What the read models hold is derived from the log: a power cut
            # may take their last commits back, position included, and the
            # next catch-up folds those events again.
            self._db = connect(path, busy_timeout_ms=busy_timeout_ms, synchronous="NORMAL")
            self._log = connect(log_path, busy_timeout_ms=busy_timeout_ms)
        with guard("cannot prepare the read models", path):
            self._log.execute("PRAGMA query_only = ON")
            self._db.create_function("rm_merge_sketches", 2, LatencySketch.merge_bytes, deterministic=True)
            if (
                not has_tables(self._db, _TABLES)
                or not self._has_index(_SERVICE_INDEX)
                or self._rollups_lack_abandoned()
            ):
                with write_transaction(self._db) as db:
                    # Another process may have made them meanwhile.
                    fresh = not has_tables(db, {"rm_meta"})
                    _create_tables(db)
                    if self._rollups_lack_abandoned():
                        # Tables of version 2: their rows count no abandoned
                        # call until the rebuild their version asks for.
                        for table in _ROLLUP_TABLES:
                            db.execute(f"ALTER TABLE {table} ADD COLUMN abandoned INTEGER NOT NULL DEFAULT 0")
                    if fresh and not self._holds_events():
                        db.execute(
                            "INSERT OR IGNORE INTO rm_meta (name, value) VALUES ('version', ?)",
                            (self.version,),
                        )

    def _guard(self, doing: str) -> AbstractContextManager[None]:
        return self._store_guard(doing, self.path)

    def close(self) -> None:
        with self._lock, self._guard("cannot close the read models"):
            self._db.close()
            if self._log is not None:
                self._log.close()

    # ------------------------------------------------------------ versions

    def _stored_version(self) -> int | None:
        try:
            row = self._db.execute("SELECT value FROM rm_meta WHERE name = 'version'").fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is None:
            # Nothing built yet: as good as current while there is nothing
            # to build from (a reader of a store no writer opened yet).
            return None if self._holds_events() else self.version
        return int(row[0])

    def _rollups_lack_abandoned(self) -> bool:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(rm_service_rollups)")}
        return bool(columns) and "abandoned" not in columns

    def _has_index(self, name: str) -> bool:
        found = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,))
        return found.fetchone() is not None

    def _holds_events(self) -> bool:
        if self._log is None:
            return False
        try:
            return self._log.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None
        except sqlite3.OperationalError:
            return False

    def _has_tables(self) -> bool:
        return has_tables(self._db, _TABLES)

    # ------------------------------------------------------------ writing

    def _open_calls(self, keys: Collection[CallKey]) -> dict[CallKey, OpenCall]:
        found: dict[CallKey, OpenCall] = {}
        wanted = set(keys)
        # By request id (the key's first column): a row-value IN would scan the table.
        for chunk in _chunks(sorted({key.request_id for key in wanted})):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT request_id, call_id, half FROM rm_open_calls WHERE request_id IN ({marks})",
                list(chunk),
            )
            for request_id, call_id, half in rows:
                key = CallKey(request_id, call_id)
                if key in wanted:
                    found[key] = _decode_half(half)
        return found

    def _request_states(self, request_ids: Collection[str]) -> dict[str, RequestState]:
        found: dict[str, RequestState] = {}
        for chunk in _chunks(list(request_ids)):
            marks = ",".join("?" * len(chunk))
            for (state,) in self._db.execute(
                f"SELECT state FROM rm_requests WHERE request_id IN ({marks})", list(chunk)
            ):
                decoded = _decode_state(state)
                found[decoded.request_id] = decoded
        return found

    def _commit(self, changes: Changes) -> None:
        db = self._db
        by_table: dict[str, list[tuple[Any, ...]]] = {"rm_service_rollups": [], "rm_operation_rollups": []}
        for key, rollup in changes.rollups.items():
            table = "rm_service_rollups" if key.operation == ALL_OPERATIONS else "rm_operation_rollups"
            by_table[table].append(
                (
                    key.step,
                    key.bucket,
                    key.service,
                    key.caller,
                    key.operation,
                    rollup.calls,
                    *rollup.failures,
                    rollup.abandoned,
                    rollup.sketch.to_bytes(),
                )
            )
        for table, rows in by_table.items():
            if rows:
                db.executemany(_UPSERT.format(table=table), rows)
        if changes.closed_calls:
            db.executemany(
                "DELETE FROM rm_open_calls WHERE request_id = ? AND call_id = ?", list(changes.closed_calls)
            )
        if changes.open_calls:
            db.executemany(
                "INSERT OR REPLACE INTO rm_open_calls (request_id, call_id, ts, half) VALUES (?, ?, ?, ?)",
                [
                    (key.request_id, key.call_id, half.timestamp, _encode(half))
                    for key, half in changes.open_calls.items()
                ],
            )
        stale_index: list[tuple[str, str, str]] = []
        new_index: list[tuple[str, str, str]] = []
        states: list[tuple[str, str, float, str, bytes]] = []
        for request_id, state in changes.requests.items():
            previous = changes.previous_requests.get(request_id)
            if previous is None or previous.started_at != state.started_at:
                if previous is not None:
                    stale_index += [
                        (service, previous.started_at, request_id) for service in previous.services
                    ]
                new_index += [(service, state.started_at, request_id) for service in state.services]
            else:
                known = set(previous.services)
                new_index += [
                    (service, state.started_at, request_id)
                    for service in state.services
                    if service not in known
                ]
            states.append((request_id, state.started_at, state.duration_ms, state.status, _encode(state)))
        if stale_index:
            db.executemany(
                "DELETE FROM rm_request_services WHERE service = ? AND started_at = ? AND request_id = ?",
                stale_index,
            )
        if new_index:
            db.executemany(
                "INSERT OR IGNORE INTO rm_request_services (service, started_at, request_id)"
                " VALUES (?, ?, ?)",
                new_index,
            )
        if states:
            db.executemany(
                "INSERT OR REPLACE INTO rm_requests (request_id, started_at, duration_ms, status, state)"
                " VALUES (?, ?, ?, ?, ?)",
                states,
            )

    def _expire_open_calls(self, before: str) -> None:
        self._db.execute("DELETE FROM rm_open_calls WHERE ts < ?", (before,))

    # ------------------------------------------------------------ following the log

    def catch_up(self, *, batches: int | None = None) -> int:
        """Fold the events stored since the position into the read models,
        :data:`_PROJECT_BATCH` at a time, each batch with its new position in
        one transaction; return how many events were passed (all types).

        ``batches``: stop after that many (``None``: when there is nothing
        left). Does nothing while the read models are outdated (a rebuild
        makes them current and sets the position). Safe to run from several
        threads or processes at once: they take turns, and none folds an
        event another has folded.
        """
        if self.read_only:
            raise ValueError("read models opened read-only cannot follow the log")
        passed = 0
        done = 0
        while batches is None or done < batches:
            count = self._fold_next()
            if count == 0:
                break
            passed += count
            done += 1
        return passed

    def lag(self) -> int:
        """How many events the store holds past the position (about: rowids
        freed by a purge count)."""
        with self._guard("cannot read the read models"), self._lock:
            newest = self._newest_rowid()
            return 0 if newest is None or not self.is_current() else max(0, newest - self._position())

    def _newest_rowid(self) -> int | None:
        if self._log is None:
            return None
        try:
            row = self._log.execute("SELECT max(rowid) FROM events").fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row[0] is None else int(row[0])

    def _position(self) -> int:
        row = self._db.execute("SELECT value FROM rm_meta WHERE name = 'position'").fetchone()
        return 0 if row is None else int(row[0])

    def _set_position(self, rowid: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO rm_meta (name, value) VALUES ('position', ?)", (rowid,))

    def _fold_next(self) -> int:
        with self._guard("cannot update the read models"), self._lock:
            newest = self._newest_rowid()
            # A look without the write lock first: an idle follower polls.
            if newest is None or newest <= self._position() or not self.is_current():
                return 0
            with write_transaction(self._db):
                position = self._position()
                return self._fold_after(position, newest, limit=_PROJECT_BATCH)

    def _fold_through(self, newest: int) -> None:
        """Fold every event up to rowid ``newest``, batch after batch, in the
        caller's transaction."""
        while self._fold_after(self._position(), newest, limit=_PROJECT_BATCH):
            pass

    def _fold_after(self, position: int, newest: int, *, limit: int) -> int:
        """Fold the events with rowids in ``(position, newest]`` (at most
        ``limit`` of them) and move the position past them, in the caller's
        transaction; return how many were passed."""
        assert self._log is not None
        rows = self._log.execute(
            f"SELECT rowid, {COLUMNS} FROM events WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?",
            (position, newest, limit),
        ).fetchall()
        if not rows:
            return 0
        calls = frozenset(CALL_EVENT_TYPES)
        # Only the call events are decoded (the fourth column is the type).
        events = [event_of(row[1:]) for row in rows if row[4] in calls]
        if events:
            self._apply(events, counting_from=None)
        self._set_position(int(rows[-1][0]))
        return len(rows)

    @contextmanager
    def _log_snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction on the store's file: every read sees the
        same events."""
        assert self._log is not None
        self._log.execute("BEGIN")
        try:
            yield self._log
        finally:
            self._log.execute("COMMIT")

    # ------------------------------------------------------------ retention

    def purge(self, before: str) -> int:
        """Forget the summaries of requests that started before ``before``
        (with their search index rows) and the open calls older than it, as
        the store forgets their events; return how many summaries went.
        Rollup rows are small and kept, as on DynamoDB. In small
        transactions: a purge must not hold the write lock for long."""
        if self.read_only:
            raise ValueError("read models opened read-only cannot be purged")
        removed = 0
        while True:
            with self._guard("cannot purge the read models"), self._lock, write_transaction(self._db) as db:
                rows = db.execute(
                    "SELECT request_id, started_at, state FROM rm_requests WHERE started_at < ?"
                    " ORDER BY started_at LIMIT ?",
                    (before, _PURGE_BATCH),
                ).fetchall()
                db.executemany(
                    "DELETE FROM rm_request_services WHERE service = ? AND started_at = ? AND request_id = ?",
                    [
                        (service, started_at, request_id)
                        for request_id, started_at, state in rows
                        for service in _decode_state(state).services
                    ],
                )
                db.executemany("DELETE FROM rm_requests WHERE request_id = ?", [(row[0],) for row in rows])
                if len(rows) < _PURGE_BATCH:
                    db.execute("DELETE FROM rm_open_calls WHERE ts < ?", (before,))
            removed += len(rows)
            if len(rows) < _PURGE_BATCH:
                return removed

    # ------------------------------------------------------------ replay

    @contextmanager
    def _replaying(self, cut: str | None, join_from: str | None) -> Iterator[Replay]:
        with (
            self._guard("cannot rebuild the read models"),
            self._lock,
            write_transaction(self._db) as db,
            self._log_snapshot() as log,
        ):
            if not self._has_tables():
                _create_tables(db)
            newest = self._newest_rowid() or 0
            if cut is not None:
                # A partial rebuild replays from the cut on: fold first what
                # the position has not reached, wherever in time it lies.
                self._fold_through(newest)
            self._clear(cut, join_from)
            since = join_from or ""
            marks = ",".join("?" * len(CALL_EVENT_TYPES))
            (total,) = log.execute(
                f"SELECT count(*) FROM events WHERE type IN ({marks}) AND ts >= ? AND rowid <= ?",
                (*CALL_EVENT_TYPES, since, newest),
            ).fetchone()
            yield Replay(self._replay_batches(since, newest), int(total))
            db.execute("INSERT OR REPLACE INTO rm_meta (name, value) VALUES ('version', ?)", (self.version,))
            self._set_position(newest)

    def _clear(self, cut: str | None, join_from: str | None) -> None:
        db = self._db
        if cut is None:
            for table in ("rm_service_rollups", "rm_operation_rollups", "rm_open_calls", "rm_requests"):
                db.execute(f"DELETE FROM {table}")
            db.execute("DELETE FROM rm_request_services")
            return
        for table in ("rm_service_rollups", "rm_operation_rollups"):
            db.execute(f"DELETE FROM {table} WHERE bucket >= ?", (cut,))
        db.execute("DELETE FROM rm_open_calls WHERE ts >= ?", (join_from or cut,))
        db.execute("DELETE FROM rm_requests WHERE started_at >= ?", (cut,))
        db.execute("DELETE FROM rm_request_services WHERE started_at >= ?", (cut,))

    def _replay_batches(self, since: str, newest: int) -> Iterator[list[Event]]:
        assert self._log is not None
        streams = [
            self._log.execute(
                f"SELECT {COLUMNS} FROM events WHERE type = ? AND ts >= ? AND rowid <= ? ORDER BY ts, id",
                (type_, since, newest),
            )
            for type_ in CALL_EVENT_TYPES
        ]
        batch: list[Event] = []
        for row in heapq.merge(*streams, key=_time_order):
            batch.append(event_of(row))
            if len(batch) >= _REPLAY_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def rebuild(self, since: datetime | None = None, progress: Progress | None = None) -> int:
        if self.read_only:
            raise ValueError("read models opened read-only cannot be rebuilt")
        return super().rebuild(since, progress)

    # ------------------------------------------------------------ reading

    def _read_rollups(
        self, step: str, first: str, last: str, *, service: str | None, operations: bool
    ) -> Iterator[tuple[RollupKey, Rollup]]:
        table = "rm_operation_rollups" if operations else "rm_service_rollups"
        try:
            rows = self._rows(table, step, first, last, service)
        except sqlite3.OperationalError:
            if self._holds_events() or self._has_tables():
                raise
            return iter(())
        return iter(
            [
                (
                    RollupKey(step, bucket, caller, name, operation),
                    Rollup.stored(counts[0], counts[1:-1], counts[-1], sketch),
                )
                for bucket, (caller, name, operation), counts, sketch in rows
            ]
        )

    def _find_requests(
        self, query: RequestQuery, after: tuple[str, str] | None, limit: int
    ) -> list[RequestSummary]:
        clauses: list[str] = []
        parameters: list[object] = []
        if query.service is not None:
            source = "rm_request_services AS s JOIN rm_requests AS r ON r.request_id = s.request_id"
            start, rid = "s.started_at", "s.request_id"
            clauses.append("s.service = ?")
            parameters.append(query.service)
        else:
            source = "rm_requests AS r"
            start, rid = "r.started_at", "r.request_id"
        if query.status is not None:
            clauses.append("r.status = ?")
            parameters.append(query.status)
        if query.since is not None:
            clauses.append(f"{start} >= ?")
            parameters.append(query.since)
        if query.until is not None:
            clauses.append(f"{start} < ?")
            parameters.append(query.until)
        if after is not None:
            clauses.append(f"({start}, {rid}) < (?, ?)")
            parameters += list(after)
        if query.min_duration_ms is not None:
            clauses.append("r.duration_ms >= ?")
            parameters.append(query.min_duration_ms)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        parameters.append(limit)
        try:
            rows = self._db.execute(
                f"SELECT r.state FROM {source}{where} ORDER BY {start} DESC, {rid} DESC LIMIT ?", parameters
            ).fetchall()
        except sqlite3.OperationalError:
            if self._holds_events() or self._has_tables():
                raise
            return []
        return [_decode_state(state).summary() for (state,) in rows]

    # Every public reader holds the store's lock (the primitives never do).

    def rollups(
        self, since: datetime, until: datetime, *, service: str | None = None, operations: bool = False
    ) -> dict[Edge, Rollup]:
        """As the port's, reading fewer rows: at each edge of the window, a
        bucket that sticks out of it may be read less its part outside
        (:func:`window_pieces`; one probe finds the stored minutes nearest to
        the window, so that a bucket sticking out where nothing is stored is
        read whole, as at the end of a window that ends now); every row
        comes from one statement, and rows are summed without building a
        sketch per row. A bucket's row is the sum of its finer rows, so the
        totals are the same; the latency bounds of a bucket read less a part
        are the bucket's (wider than the window's: still bounds)."""
        with self._guard("cannot read the read models"), self._lock:
            self.check()
            table = "rm_operation_rollups" if operations else "rm_service_rollups"
            first, last = minute_range(since, until)
            if first > last:
                return {}
            try:
                before, after = self._stored_around(table, first, last, service)
                return self._summed(table, window_pieces(first, last, before, after), service)
            except sqlite3.OperationalError:
                if self._holds_events() or self._has_tables():
                    raise
                return {}

    def _stored_around(
        self, table: str, first: str, last: str, service: str | None
    ) -> tuple[str | None, str | None]:
        """The newest stored minute before ``first`` and the oldest after
        ``last`` (of ``service`` where an index has it first; of any service
        otherwise, which only makes the guess more careful)."""
        only = " AND service = ?" if service is not None and table == "rm_service_rollups" else ""
        found = dict(
            self._db.execute(
                f"SELECT 0, max(bucket) FROM {table} WHERE step = '1m' AND bucket < ?{only}"
                f" UNION ALL SELECT 1, min(bucket) FROM {table} WHERE step = '1m' AND bucket > ?{only}",
                [first, service, last, service] if only else [first, last],
            ).fetchall()
        )
        return found[0], found[1]

    def _summed(self, table: str, parts: Sequence[Piece], service: str | None) -> dict[Edge, Rollup]:
        """The rows of ``parts`` summed per edge, read with one statement: a
        row's first column is its piece's number, doubled, plus one for a
        row to take away from its edge's row of the piece's bucket."""
        selects: list[str] = []
        parameters: list[object] = []
        only = " AND service = ?" if service is not None else ""
        for number, part in enumerate(parts):
            ranges = [(2 * number, part.step, part.first, part.last)]
            ranges += [(2 * number + 1, *outside) for outside in part.outside]
            for tag, step, first, last in ranges:
                selects.append(
                    f"SELECT {tag}, caller, service, operation, {_COUNT_COLUMNS}, sketch"
                    f" FROM {table} WHERE step = ? AND bucket >= ? AND bucket <= ?{only}"
                )
                parameters += [step, first, last] if service is None else [step, first, last, service]
        if not selects:
            return {}
        # Per edge, its rows; and per (piece, edge), the row of a bucket read
        # for its part inside the window and the finer rows to take away from
        # it: a finer row is taken away from its own bucket's sketch, whose
        # fields hold it.
        added: dict[Edge, list[_RollupRow]] = {}
        bucket_rows: dict[tuple[int, Edge], _RollupRow] = {}
        taken_away: dict[tuple[int, Edge], list[_RollupRow]] = {}
        for row in self._db.execute(" UNION ALL ".join(selects), parameters):
            tag, edge = row[0], row[1:4]
            if tag % 2:
                taken_away.setdefault((tag - 1, edge), []).append(row)
            elif parts[tag // 2].outside:
                bucket_rows[tag, edge] = row
            else:
                added.setdefault(edge, []).append(row)
        trimmed: dict[Edge, list[tuple[list[int], SketchSum]]] = {}
        for key, rows in taken_away.items():
            bucket_row = bucket_rows.pop(key, None)
            if bucket_row is None:
                raise ReadModelsOutdated(
                    "the read models are damaged (a row without the row of its coarser bucket):"
                    " run `eventtrail rebuild`"
                )
            total = SketchSum()
            total.add(bucket_row[-1])
            for row in rows:
                total.subtract(row[-1])
            away = map(sum, zip(*(row[4:-1] for row in rows), strict=True))
            counts = [kept - taken for kept, taken in zip(bucket_row[4:-1], away, strict=True)]
            trimmed.setdefault(key[1], []).append((counts, total))
        for (_, edge), row in bucket_rows.items():
            added.setdefault(edge, []).append(row)
        totals: dict[Edge, Rollup] = {}
        for edge in added.keys() | trimmed.keys():
            rows = added.get(edge, [])
            parts_of_edge = trimmed.get(edge, [])
            columns = [*(row[4:-1] for row in rows), *(counts for counts, _ in parts_of_edge)]
            calls, *failures, abandoned = map(sum, zip(*columns, strict=True))
            sketches: list[StoredSketch] = [row[-1] for row in rows]
            sketches += [total for _, total in parts_of_edge]
            rollup = Rollup.stored(calls, failures, abandoned, *sketches)
            if not rollup.is_empty():
                totals[edge] = rollup
        return totals

    def _rows(
        self, table: str, step: str, first: str, last: str, service: str | None
    ) -> list[tuple[str, Edge, list[int], bytes]]:
        """``(bucket, edge, [calls, failures..., abandoned], sketch)`` of the rows of
        ``step`` with ``first <= bucket <= last``."""
        sql = (
            f"SELECT bucket, caller, service, operation, {_COUNT_COLUMNS}, sketch FROM {table}"
            " WHERE step = ? AND bucket >= ? AND bucket <= ?"
        )
        parameters: list[object] = [step, first, last]
        if service is not None:
            sql += " AND service = ?"
            parameters.append(service)
        rows = self._db.execute(sql, parameters)
        return [(row[0], (row[1], row[2], row[3]), list(row[4:-1]), row[-1]) for row in rows]

    def all_time(self) -> dict[Edge, Rollup]:
        with self._guard("cannot read the read models"), self._lock:
            return super().all_time()

    def buckets(
        self,
        since: datetime,
        until: datetime,
        *,
        service: str | None = None,
        operations: bool = False,
        step: str = "1m",
    ) -> Iterator[tuple[RollupKey, Rollup]]:
        with self._guard("cannot read the read models"), self._lock:
            rows = super().buckets(since, until, service=service, operations=operations, step=step)
            return iter(list(rows))

    def bucket_counts(
        self, since: datetime, until: datetime, *, service: str, step: str | None = None
    ) -> list[BucketCount]:
        """As the port's, summed by SQLite (one small row per bucket)."""
        with self._guard("cannot read the read models"), self._lock:
            self.check()
            counts: list[BucketCount] = []
            try:
                # The ranges follow each other in time: newest first, read
                # newest first. The rows of a bucket's callers come together
                # from the index, and are summed here (cheaper than GROUP BY).
                for bucket_step, first, last in reversed(_count_ranges(since, until, step)):
                    rows = self._db.execute(
                        f"SELECT bucket, calls, {_FAILED} FROM rm_service_rollups"
                        " WHERE step = ? AND bucket >= ? AND bucket <= ? AND service = ?"
                        " ORDER BY bucket DESC",
                        (bucket_step, first, last, service),
                    )
                    for bucket, calls, errors in rows:
                        if counts and counts[-1].bucket == bucket and counts[-1].step == bucket_step:
                            previous = counts[-1]
                            counts[-1] = previous._replace(
                                calls=previous.calls + calls, errors=previous.errors + errors
                            )
                        else:
                            counts.append(BucketCount(bucket_step, bucket, calls, errors))
            except sqlite3.OperationalError:
                if self._holds_events() or self._has_tables():
                    raise
                return []
            return counts

    def failing_run(
        self,
        since: datetime,
        until: datetime,
        *,
        service: str,
        max_error_rate: float,
        step: str | None = None,
    ) -> FailingRun:
        """As the port's, with indexed probes (SQLite reads a ``max`` or
        ``min`` of an index's column as its first matching entry): one
        statement finds, per range of buckets, its newest bucket with a
        caller's row whose own rate is within the bound (and a hair, for the
        rounding of its division) and its oldest called bucket; the newest
        such bucket is then summed over its callers, with the oldest called
        bucket after it in its range. A bucket within the bound has such a
        row, since a sum of fractions is never below the smallest of them;
        when the sum is over the bound (a caller within it, the others
        failing), the port's walk decides."""
        ranges = _count_ranges(since, until, step)
        if not ranges:
            return FailingRun(None, None)
        of_service = "FROM rm_service_rollups WHERE step = ? AND bucket >= ? AND bucket <= ? AND service = ?"
        loose = max_error_rate + abs(max_error_rate) * 1e-9
        selects: list[str] = []
        parameters: list[object] = []
        for number, covered in enumerate(ranges):
            selects += [
                f"SELECT {2 * number}, max(bucket) {of_service}"
                f" AND calls > 0 AND CAST({_FAILED} AS REAL) / calls <= ?",
                f"SELECT {2 * number + 1}, min(bucket) {of_service} AND calls > 0",
            ]
            parameters += [*covered, service, loose, *covered, service]
        with self._guard("cannot read the read models"), self._lock:
            self.check()
            try:
                found = dict(self._db.execute(" UNION ALL ".join(selects), parameters).fetchall())
            except sqlite3.OperationalError:
                if self._holds_events() or self._has_tables():
                    raise
                return FailingRun(None, None)
            calm_in = [number for number in range(len(ranges)) if found[2 * number] is not None]
            if not calm_in:
                return FailingRun(_oldest(ranges, found, 0), None)
            newest = calm_in[-1]
            bucket_step, _, last = ranges[newest]
            calm = found[2 * newest]
            (calls, errors), (after, _) = self._db.execute(
                f"SELECT sum(calls), sum({_FAILED}) FROM rm_service_rollups"
                " WHERE step = ? AND bucket = ? AND service = ?"
                " UNION ALL SELECT min(bucket), NULL FROM rm_service_rollups"
                " WHERE step = ? AND bucket > ? AND bucket <= ? AND service = ? AND calls > 0",
                (bucket_step, calm, service, bucket_step, calm, last, service),
            ).fetchall()
        if not calls or errors / calls > max_error_rate:
            return super().failing_run(
                since, until, service=service, max_error_rate=max_error_rate, step=step
            )
        start = (bucket_step, after) if after is not None else _oldest(ranges, found, newest + 1)
        return FailingRun(start, BucketCount(bucket_step, calm, calls, errors))

    def covering(
        self, since: datetime, until: datetime, *, service: str | None = None
    ) -> list[tuple[RollupKey, Rollup]]:
        with self._guard("cannot read the read models"), self._lock:
            return super().covering(since, until, service=service)

    def requests(self, query: RequestQuery, *, limit: int = 50, cursor: str | None = None) -> RequestPage:
        with self._guard("cannot read the read models"), self._lock:
            return super().requests(query, limit=limit, cursor=cursor)
