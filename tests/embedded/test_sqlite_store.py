from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventtrail.embedded.store import SQLiteStore
from eventtrail.store import AppendStatus, TransientStoreError
from tests.contract.store_contract import StoreContract, make_event


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


def test_same_data_in_another_key_order_is_a_duplicate(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    event = make_event(data={"a": 1, "b": True})
    reordered = make_event(event_id=event.id, request_id=event.request_id, data={"b": True, "a": 1})
    store.append([event])
    assert store.append([reordered])[0].status is AppendStatus.DUPLICATE
    # ... but 1 and true are not the same value.
    changed = make_event(event_id=event.id, request_id=event.request_id, data={"a": True, "b": True})
    assert store.append([changed])[0].status is AppendStatus.CONFLICT


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
