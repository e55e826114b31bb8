"""Every statement the embedded store and queue run, as SQLite plans it: an
index seek plus the rows it returns, never a scan of a table or a sort whose
cost grows with what is stored.

The statements are the ones a real workload issues (SQLite's trace callback
records them with their parameters), so a query added later is checked too.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventtrail.calls import call_request, call_response
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore

#: Statements whose cost may follow the data, and why that is right.
ALLOWED = {
    "SELECT count(*) FROM events": "count() is a count",
    "coalesce(sum(visible_at": "stats() counts in-flight deliveries (status, --drain on an empty queue)",
    "count(*) FROM dead_letters": "stats() counts dead letters",
    "FROM dead_letters ORDER BY seq LIMIT": "the oldest dead letters: in key order, stopping at LIMIT",
    "SELECT seq FROM dead_letters": "redrive --all moves every dead letter",
}

_TABLES = re.compile(r"\b(?:FROM|UPDATE|INTO|JOIN)\s+(events|deliveries|messages|fresh|dead_letters)\b", re.I)


def _traced(connection: sqlite3.Connection, into: list[str]) -> None:
    connection.set_trace_callback(into.append)


def _plans(path: Path, statements: list[str]) -> Iterator[tuple[str, list[str]]]:
    reader = sqlite3.connect(path)
    try:
        for statement in dict.fromkeys(statements):
            head = statement.lstrip().split(None, 1)[0].upper()
            if head not in ("SELECT", "UPDATE", "DELETE", "INSERT") or not _TABLES.search(statement):
                continue
            if head == "INSERT" and "SELECT" not in statement.upper():
                continue
            rows = reader.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
            yield statement, [row[-1] for row in rows]
    finally:
        reader.close()


def _costly(detail: str) -> bool:
    # `fresh` holds one row (a CHECK keeps it so): reading all of it is one row.
    if detail in ("SCAN fresh", "SCAN CONSTANT ROW"):
        return False
    return (detail.startswith("SCAN") and "USING" not in detail) or "TEMP B-TREE" in detail


def test_every_store_statement_is_an_index_seek(tmp_path: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for number in range(300):
        moment = (start + timedelta(seconds=number)).isoformat().replace("+00:00", "Z")
        request = call_request(f"r{number % 40}", f"c{number}", "A", "GET", "/x", timestamp=moment)
        response = call_response(
            f"r{number % 40}",
            f"c{number}",
            "A",
            status=200,
            latency_ms=3,
            bytes_in=0,
            bytes_out=1,
            timestamp=moment,
        )
        events += [request, response]
    statements: list[str] = []
    with SQLiteStore(tmp_path / "events.db") as store:
        _traced(store._db, statements)
        store.append(events)
        store.append(events[:10])  # redeliveries: the checked path
        store.flow("r3")
        for newest_first in (False, True):
            for type_, source in (("MICROSERVICE_REQUEST", None), (None, "Gateway")):
                page = store.events(
                    type=type_,
                    source=source,
                    since=start,
                    until=start + timedelta(hours=1),
                    limit=50,
                    newest_first=newest_first,
                )
                assert page.cursor is not None
                store.events(
                    type=type_, source=source, limit=50, cursor=page.cursor, newest_first=newest_first
                )
        store.event_fields("MICROSERVICE_RESPONSE", ["status"], since=start, until=start + timedelta(hours=1))
        assert store.purge(start + timedelta(seconds=100)) == 200
        store.count()
    costly = {
        statement: [detail for detail in plan if _costly(detail)]
        for statement, plan in _plans(tmp_path / "events.db", statements)
        if not any(allowed in statement for allowed in ALLOWED)
    }
    assert {statement: details for statement, details in costly.items() if details} == {}
    assert any("events" in statement for statement, _ in _plans(tmp_path / "events.db", statements))


def test_every_queue_statement_is_an_index_seek(tmp_path: Path) -> None:
    statements: list[str] = []
    with SQLiteQueue(tmp_path / "queue.db", max_receives=2) as queue:
        _traced(queue._db, statements)
        queue.send([f'{{"n": {number}}}' for number in range(200)])
        first = queue.receive(50, visibility_timeout=0)
        queue.ack(first[:10])
        queue.release(first[10:20], delay=0, error="busy")
        again = queue.receive(50, visibility_timeout=0)
        assert again
        queue.dead_letter(again[0], "bad")
        queue.receive(500, visibility_timeout=0)
        queue.receive(500, visibility_timeout=0)  # past max_receives: to the dead letters
        letters = queue.dead_letters(10)
        queue.get_dead_letter(letters[0].id)
        queue.redrive([letters[0].id])
        queue.redrive()
        queue.stats()
        assert queue.receive(500, visibility_timeout=30)
    costly = {
        statement: [detail for detail in plan if _costly(detail)]
        for statement, plan in _plans(tmp_path / "queue.db", statements)
        if not any(allowed in statement for allowed in ALLOWED)
    }
    assert {statement: details for statement, details in costly.items() if details} == {}


@pytest.mark.parametrize("in_flight", [0, 5000])
def test_an_idle_poll_takes_no_write_lock(tmp_path: Path, in_flight: int) -> None:
    with SQLiteQueue(tmp_path / "queue.db") as queue:
        if in_flight:
            queue.send(["{}"] * in_flight)
            assert len(queue.receive(in_flight, visibility_timeout=300)) == in_flight
        holder = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process is writing
        try:
            # Nothing visible: the poll answers at once instead of waiting for the lock.
            assert queue.receive(10, visibility_timeout=30) == []
        finally:
            holder.execute("ROLLBACK")
            holder.close()
