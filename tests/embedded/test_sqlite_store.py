from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventtrail.embedded.store import SQLiteStore
from eventtrail.ids import uuid7_str
from eventtrail.store import AppendStatus, TransientStoreError, canonical
from tests.contract.store_contract import T0, StoreContract, make_event


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        with SQLiteStore(tmp_path / "events.db") as store:
            yield store


def test_file_is_in_wal_mode_with_the_query_indexes(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "events.db").close()
    db = sqlite3.connect(tmp_path / "events.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    plans = {
        "flow": "SELECT * FROM events WHERE request_id = 'r' ORDER BY ts, id",
        "type": "SELECT * FROM events WHERE type = 't' AND ts >= '2020' ORDER BY ts, id LIMIT 10",
        "source": "SELECT * FROM events WHERE source = 's' AND ts >= '2020' ORDER BY ts, id LIMIT 10",
    }
    for name, sql in plans.items():
        plan = " ".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "USING INDEX" in plan, (name, plan)
        assert "SCAN events" not in plan, (name, plan)


def test_an_id_reused_under_another_request_or_time_is_a_conflict(tmp_path: Path) -> None:
    # SQLite keys rows on the id alone, so it sees an id reused on another
    # key for free; DynamoDB keys on (request, time, id) and stores both.
    with SQLiteStore(tmp_path / "events.db") as store:
        original = make_event()
        elsewhere = make_event(event_id=original.id, data=original.data)
        later = make_event(event_id=original.id, request_id=original.request_id, at=T0 + timedelta(seconds=1))
        store.append([original])
        for impostor in (elsewhere, later):
            (result,) = store.append([impostor])
            assert result.status is AppendStatus.CONFLICT
            assert result.reason and original.id in result.reason
        assert [canonical(e) for e in store.flow(original.request_id)] == [canonical(original)]
        assert store.flow(elsewhere.request_id) == []


def test_purge_removes_events_older_than_the_cutoff(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "events.db") as store:
        request_id = uuid7_str()
        old = make_event(request_id=request_id, at=datetime(2001, 1, 1, tzinfo=UTC))
        new = make_event(request_id=request_id, at=datetime.now(UTC))
        store.append([old, new])
        assert store.purge(datetime(2002, 1, 1, tzinfo=UTC)) == 1
        assert store.flow(request_id) == [new]


def test_a_locked_database_is_a_transient_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SQLiteStore(path)
    store._db.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientStoreError):
            store.append([make_event()])
    finally:
        blocker.execute("ROLLBACK")
    assert store.append([make_event()])[0].status is AppendStatus.STORED
