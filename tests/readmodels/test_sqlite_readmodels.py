"""What the SQLite adapter adds to the contract: tables in a file beside the
store's, kept by position; the projection version; the query plans;
``eventtrail rebuild``."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import Event
from eventtrail.readmodels import ReadModelsOutdated, RequestQuery, read_models_of
from eventtrail.readmodels.model import Rollup
from eventtrail.readmodels.port import Edge, ReadModels
from eventtrail.readmodels.sqlite import SQLiteReadModels, read_models_path
from eventtrail.store import StoreError
from tests.cli import run
from tests.contract.readmodels_contract import T0, a_call, all_requests, flat, totals, unique_service

HOUR = (T0, T0 + timedelta(hours=1))


def _forget_read_models(path: Path, *, version: int | None = None) -> None:
    """What an older eventtrail leaves: events, and read models of another
    version (or none)."""
    db = sqlite3.connect(read_models_path(path))
    with db:
        for table in ("rm_service_rollups", "rm_operation_rollups", "rm_requests", "rm_meta"):
            db.execute(f"DELETE FROM {table}")
        if version is not None:
            db.execute("INSERT INTO rm_meta (name, value) VALUES ('version', ?)", (version,))
    db.close()


def test_the_read_models_live_beside_the_store_file_at_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteStore(path):
        pass
    assert read_models_path(path) == tmp_path / "events.read-models.db"
    store_db = sqlite3.connect(path)
    store_tables = {
        name for (name,) in store_db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    assert store_tables == {"events", "store_meta"}
    db = sqlite3.connect(read_models_path(path))
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"rm_service_rollups", "rm_operation_rollups", "rm_open_calls", "rm_requests"} <= tables
    assert db.execute("SELECT value FROM rm_meta WHERE name = 'version'").fetchone() == (
        SQLiteReadModels.version,
    )


def test_read_models_left_in_the_store_file_by_an_earlier_version_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    service = unique_service()
    with SQLiteStore(path) as store:
        store.append(list(a_call(service, T0)))
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE rm_meta (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("CREATE TABLE rm_requests (request_id TEXT)")
    db.commit()
    db.close()
    with SQLiteStore(path) as store:
        assert store.count() == 2
        assert totals(read_models_of(store), service, *HOUR).calls == 1
    db = sqlite3.connect(path)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"events", "store_meta"}


def test_a_failed_read_model_write_loses_no_event_and_counts_it_once_later(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    service = unique_service()
    events = list(a_call(service, T0))
    with SQLiteStore(path) as store:
        # Another connection makes the rollups refuse writes: the events are
        # stored all the same, past the read models' position.
        other = sqlite3.connect(read_models_path(path))
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON rm_service_rollups BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        other.commit()
        with pytest.raises(StoreError, match="no"):
            store.append(events)
        assert store.count() == 2
        models = read_models_of(store)
        assert models.lag() == 2
        assert totals(models, service, *HOUR).calls == 0
        other.execute("DROP TRIGGER refuse")
        other.commit()
        other.close()
        # The consumer's retry of the batch: duplicates, and the catch-up.
        store.append(events)
        assert store.count() == 2
        assert models.lag() == 0
        assert totals(models, service, *HOUR).calls == 1


def test_rollup_tables_of_version_2_get_their_abandoned_column_and_a_rebuild_counts_it(
    tmp_path: Path,
) -> None:
    """Version 2 kept no count of abandoned calls: a writer adds the column
    to its tables (its rows hold none until rebuilt), and a rebuild fills it."""
    path = tmp_path / "events.db"
    service = unique_service()
    calls = [a_call(service, T0, error="disconnected"), a_call(service, T0 + timedelta(seconds=1))]
    with SQLiteStore(path) as store:
        store.append(flat(calls))
    db = sqlite3.connect(read_models_path(path))
    with db:
        for table in ("rm_service_rollups", "rm_operation_rollups"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN abandoned")
        db.execute("UPDATE rm_meta SET value = 2 WHERE name = 'version'")
    db.close()
    with SQLiteStore(path, read_only=True) as store, pytest.raises(ReadModelsOutdated, match="are version 2"):
        read_models_of(store).rollups(*HOUR)
    with SQLiteStore(path) as store:
        models = read_models_of(store)
        with pytest.raises(ReadModelsOutdated, match="are version 2"):
            models.rollups(*HOUR)
        # Events still go in; the rebuild counts them all.
        store.append(list(a_call(service, T0 + timedelta(seconds=2), error="disconnected")))
        assert models.rebuild() == 6
        rollup = totals(models, service, *HOUR)
        assert (rollup.calls, rollup.errors, rollup.abandoned) == (3, 0, 2)


def test_read_models_of_another_version_refuse_to_answer_until_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    service = unique_service()
    with SQLiteStore(path) as store:
        store.append(flat([a_call(service, T0 + timedelta(seconds=i), status=500) for i in range(5)]))
    _forget_read_models(path, version=SQLiteReadModels.version - 1)
    with SQLiteStore(path) as store:
        models = read_models_of(store)
        with pytest.raises(
            ReadModelsOutdated, match=rf"are version {SQLiteReadModels.version - 1}.*run `eventtrail rebuild`"
        ):
            models.rollups(*HOUR)
        # Events still go in (not into stale shapes); a rebuild counts them all.
        store.append(list(a_call(service, T0 + timedelta(seconds=30))))
        with pytest.raises(ReadModelsOutdated):
            models.rebuild(since=T0)
        assert models.rebuild() == 12
        rollup = totals(models, service, *HOUR)
        assert (rollup.calls, rollup.errors) == (6, 5)
    _forget_read_models(path)
    with (
        SQLiteStore(path, read_only=True) as store,
        pytest.raises(ReadModelsOutdated, match="were never built"),
    ):
        read_models_of(store).requests(RequestQuery())


def test_a_reader_of_a_missing_or_new_file_sees_empty_read_models(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "nothing.db", read_only=True) as store:
        models = read_models_of(store)
        assert models.rollups(*HOUR) == {}
        assert models.requests(RequestQuery()).requests == []


def test_the_readers_use_their_indexes(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteStore(path):
        pass
    db = sqlite3.connect(read_models_path(path))
    plans = {
        "rollups": "SELECT * FROM rm_service_rollups WHERE step = '1m' AND bucket >= 'a' AND bucket <= 'b'",
        "by service": "SELECT * FROM rm_request_services AS s JOIN rm_requests AS r"
        " ON r.request_id = s.request_id WHERE s.service = 'x' AND s.started_at < 'z'"
        " ORDER BY s.started_at DESC, s.request_id DESC LIMIT 5",
        "by status": "SELECT * FROM rm_requests AS r WHERE r.status = 'error' AND r.started_at >= 'a'"
        " ORDER BY r.started_at DESC, r.request_id DESC LIMIT 5",
        "all": "SELECT * FROM rm_requests AS r WHERE (r.started_at, r.request_id) < ('b', 'x')"
        " ORDER BY r.started_at DESC, r.request_id DESC LIMIT 5",
        "expiry": "DELETE FROM rm_open_calls WHERE ts < 'x'",
    }
    for name, sql in plans.items():
        plan = " | ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "USING" in plan and "TEMP B-TREE" not in plan, (name, plan)
        assert not any(f"SCAN {table}" == step.strip() for step in plan.split("|") for table in ("r", "s")), (
            name,
            plan,
        )


@pytest.mark.slow
def test_rebuild_command(tmp_path: Path) -> None:
    service = unique_service()
    with SQLiteStore(tmp_path / "events.db") as store:
        store.append(flat([a_call(service, T0 + timedelta(minutes=i), status=503) for i in range(90)]))
    _forget_read_models(tmp_path / "events.db", version=SQLiteReadModels.version + 1)
    outdated = run(tmp_path, "health", "--until", (T0 + timedelta(hours=2)).isoformat())
    assert outdated.returncode == 1
    assert "run `eventtrail rebuild`" in outdated.stderr and "Traceback" not in outdated.stderr
    refused = run(tmp_path, "rebuild", "--since", T0.isoformat())
    assert refused.returncode == 2 and "run a full rebuild" in refused.stderr
    done = run(tmp_path, "rebuild")
    assert done.returncode == 0, done.stderr
    assert "180 events replayed" in done.stderr
    partial = run(tmp_path, "rebuild", "--since", (T0 + timedelta(minutes=75)).isoformat())
    assert partial.returncode == 0, partial.stderr
    # Cut at the start of the six-hour bucket holding 11:15.
    assert "from 2021-03-04 06:00 UTC on" in partial.stderr
    with SQLiteStore(tmp_path / "events.db", read_only=True) as store:
        rollup = totals(read_models_of(store), service, T0, T0 + timedelta(hours=2))
        assert (rollup.calls, rollup.errors) == (90, 90)
    bad = run(tmp_path, "rebuild", "--since", "soon")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --since") and "Traceback" not in bad.stderr


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.000000Z"])
def test_events_at_the_ends_of_time_are_counted(tmp_path: Path, moment: str) -> None:
    service = unique_service()
    request, outcome = a_call(service, T0)
    request = msgspec.structs.replace(request, timestamp=moment)
    outcome = msgspec.structs.replace(outcome, timestamp=moment)
    with SQLiteStore(tmp_path / "events.db") as store:
        assert all(result.ok for result in store.append([outcome, request]))
        models = read_models_of(store)
        [summary] = models.requests(RequestQuery(service=service)).requests
        assert summary.started_at == moment and summary.status == "ok"
        at = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        minute = at.replace(second=0, microsecond=0)
        rollup = totals(models, service, minute, at + timedelta(microseconds=1))
        assert rollup.calls == 1
        # A partial rebuild from that moment: its cut (and the hour before,
        # to join calls) may reach either end of time.
        models.rebuild(since=at)
        assert totals(models, service, minute, at + timedelta(microseconds=1)).calls == 1
        assert models.all_time()[("Gateway", service, "*")].calls == 1


@pytest.fixture(scope="module")
def three_hours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteStore]:
    """Calls of two services and two callers from 10:00 to about 12:40, at
    uneven minutes, with failures and spread latencies, in shuffled batches."""
    rng = random.Random(12)
    events: list[Event] = []
    for index in range(900):
        at = T0 + timedelta(seconds=rng.uniform(0, 160 * 60))
        service = rng.choice(["Orders", "Stock"])
        call = a_call(
            service,
            at,
            path=f"/orders/{index}" if index % 3 else "/stock",
            latency_ms=rng.lognormvariate(3, 1.2),
            status=rng.choice([200, 200, 200, 503]),
            caller=rng.choice(["Gateway", "Batch"]),
        )
        events += call
    rng.shuffle(events)
    store = SQLiteStore(tmp_path_factory.mktemp("three-hours") / "events.db")
    for start in range(0, len(events), 128):
        store.append(events[start : start + 128])
    yield store
    store.close()


minutes = st.integers(min_value=-30, max_value=4 * 60)


@settings(max_examples=80, deadline=None)
@given(
    start=minutes,
    length=st.integers(min_value=1, max_value=4 * 60),
    service=st.sampled_from([None, "Orders", "Stock"]),
    operations=st.booleans(),
)
def test_a_window_reads_the_same_totals_as_the_port_from_fewer_rows(
    three_hours: SQLiteStore, start: int, length: int, service: str | None, operations: bool
) -> None:
    """Reading an edge hour from its hour row (whole, or less its minutes
    outside the window) changes no count, failure or sketch bucket; the
    latency bounds are still bounds."""
    since = T0 + timedelta(minutes=start, seconds=start % 7)
    until = since + timedelta(minutes=length, seconds=length % 11)
    models = read_models_of(three_hours)
    expected = ReadModels.rollups(models, since, until, service=service, operations=operations)
    found = models.rollups(since, until, service=service, operations=operations)
    expected = {edge: rollup for edge, rollup in expected.items() if not rollup.is_empty()}
    assert found.keys() == expected.keys()
    for edge, rollup in found.items():
        wanted = expected[edge]
        assert (rollup.calls, rollup.failures) == (wanted.calls, wanted.failures)
        assert rollup.sketch.counts == wanted.sketch.counts
        assert rollup.quantiles(0.5, 0.99) == pytest.approx(wanted.quantiles(0.5, 0.99), rel=0.0201)
        low, high = wanted.sketch.low, wanted.sketch.high
        if low is not None and high is not None:
            assert rollup.sketch.low is not None and rollup.sketch.high is not None
            assert rollup.sketch.low <= low and rollup.sketch.high >= high


def read_rollups(
    store: SQLiteStore, since: datetime, until: datetime
) -> tuple[dict[Edge, Rollup], list[str]]:
    """The window's rollups, and the statements that read rollup rows for them."""
    statements: list[str] = []
    store.read_models._db.set_trace_callback(statements.append)
    try:
        found = read_models_of(store).rollups(since, until)
    finally:
        store.read_models._db.set_trace_callback(None)
    return found, [sql for sql in statements if ", sketch FROM" in sql]


def test_a_window_that_ends_now_reads_its_last_hour_as_one_row(three_hours: SQLiteStore) -> None:
    models = read_models_of(three_hours)
    since, until = T0 + timedelta(minutes=80), T0 + timedelta(minutes=170)
    found, reads = read_rollups(three_hours, since, until)
    last_hour = "2021-03-04T12:00:00.000000Z"
    assert any(f"step = '1h' AND bucket >= '{last_hour}'" in sql for sql in reads), reads
    assert not any(f"step = '1m' AND bucket >= '{last_hour[:14]}" in sql for sql in reads), reads
    assert sum(rollup.calls for rollup in found.values()) > 100
    assert {edge: (r.calls, r.failures, r.sketch.counts) for edge, r in found.items()} == {
        edge: (r.calls, r.failures, r.sketch.counts)
        for edge, r in ReadModels.rollups(models, since, until).items()
    }


def test_an_hour_mostly_in_the_window_is_read_as_its_row_less_the_minutes_outside(
    three_hours: SQLiteStore,
) -> None:
    models = read_models_of(three_hours)
    # 11:05 to 12:30: the hour of 11:00 lacks 5 of its minutes.
    since, until = T0 + timedelta(minutes=65), T0 + timedelta(minutes=150)
    found, reads = read_rollups(three_hours, since, until)
    assert any("step = '1h' AND bucket >= '2021-03-04T11:00:00.000000Z'" in sql for sql in reads), reads
    outside = "step = '1m' AND bucket >= '2021-03-04T11:00:00.000000Z' AND bucket <= '2021-03-04T11:04:00"
    assert any(outside in sql for sql in reads), reads
    expected = ReadModels.rollups(models, since, until)
    assert {edge: (r.calls, r.failures, r.sketch.counts) for edge, r in found.items()} == {
        edge: (r.calls, r.failures, r.sketch.counts) for edge, r in expected.items() if not r.is_empty()
    }


def test_a_windows_statements_read_indexes_only(three_hours: SQLiteStore) -> None:
    """Every statement a long window's readers run (the one that reads its
    rows, the probes at its edges, the walk's) searches an index and sorts
    nothing."""
    models = read_models_of(three_hours)
    statements: list[str] = []
    three_hours.read_models._db.set_trace_callback(statements.append)
    try:
        # 10:05 to 12:30, and 11:05 to 12:35: partial hours at both edges.
        for since, until in ((T0 + timedelta(minutes=5), T0 + timedelta(minutes=150)),
                             (T0 + timedelta(minutes=65), T0 + timedelta(minutes=155))):  # fmt: skip
            models.rollups(since, until)
            models.rollups(since, until, service="Orders")
            models.bucket_counts(since, until, service="Orders")
            models.failing_run(since, until, service="Orders", max_error_rate=0.25)
            models.failing_run(since, until, service="Orders", max_error_rate=0.25, step="1m")
    finally:
        three_hours.read_models._db.set_trace_callback(None)
    readers = [sql for sql in dict.fromkeys(statements) if "rm_service_rollups" in sql]
    assert any("UNION ALL" in sql for sql in readers) and any("max(bucket)" in sql for sql in readers)
    for sql in readers:
        plan = [row[3] for row in three_hours.read_models._db.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert all("TEMP B-TREE" not in step and not step.startswith("SCAN") for step in plan), (sql, plan)
        assert any(step.startswith("SEARCH") for step in plan), (sql, plan)


def test_a_minute_row_without_its_hour_row_asks_for_a_rebuild(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "events.db") as store:
        store.append(flat([a_call("Orders", T0 + timedelta(minutes=minute)) for minute in range(75)]))
        # 10:05 to 11:05: the hour of 10:00 is read as its row less 10:00-10:04.
        since, until = T0 + timedelta(minutes=5), T0 + timedelta(minutes=65)
        assert totals(read_models_of(store), "Orders", since, until).calls == 60
        with sqlite3.connect(read_models_path(store.path)) as damage:
            damage.execute(
                "DELETE FROM rm_service_rollups WHERE step = '1h' AND bucket = ?",
                (T0.strftime("%Y-%m-%dT%H:00:00.000000Z"),),
            )
        with pytest.raises(ReadModelsOutdated, match="run `eventtrail rebuild`"):
            read_models_of(store).rollups(since, until)


@st.composite
def walks(draw: st.DrawFn) -> tuple[datetime, datetime, str, str | None]:
    """A window over the three hours' data (and before and after it), a
    service (or one never called), and a step (``None``: the window's cover)."""
    start = draw(minutes)
    since = T0 + timedelta(minutes=start, seconds=start % 7)
    until = since + timedelta(minutes=draw(st.integers(min_value=1, max_value=4 * 60)))
    service = draw(st.sampled_from(["Orders", "Stock", "Nobody"]))
    return since, until, service, draw(st.sampled_from([None, "1m", "1h"]))


@settings(max_examples=60, deadline=None)
@given(walk=walks())
def test_counts_per_bucket_are_the_ports_summed_by_sqlite(
    three_hours: SQLiteStore, walk: tuple[datetime, datetime, str, str | None]
) -> None:
    since, until, service, step = walk
    models = read_models_of(three_hours)
    expected = ReadModels.bucket_counts(models, since, until, service=service, step=step)
    assert models.bucket_counts(since, until, service=service, step=step) == expected


@settings(max_examples=100, deadline=None)
@given(walk=walks(), rate=st.sampled_from([0.0, 0.2, 0.25, 1 / 3, 0.5, 1.0]) | st.floats(0, 1))
def test_a_services_last_failing_run_is_the_ports_found_by_sqlite(
    three_hours: SQLiteStore, walk: tuple[datetime, datetime, str, str | None], rate: float
) -> None:
    """Two callers per service, a quarter of the calls failing: buckets where
    one caller's calls are within the bound and the sum is not."""
    since, until, service, step = walk
    models = read_models_of(three_hours)
    expected = ReadModels.failing_run(models, since, until, service=service, max_error_rate=rate, step=step)
    assert models.failing_run(since, until, service=service, max_error_rate=rate, step=step) == expected


def test_counts_per_bucket_read_one_services_rows_from_an_index(three_hours: SQLiteStore) -> None:
    statements: list[str] = []
    three_hours.read_models._db.set_trace_callback(statements.append)
    try:
        read_models_of(three_hours).bucket_counts(T0, T0 + timedelta(hours=3), service="Orders")
    finally:
        three_hours.read_models._db.set_trace_callback(None)
    [query, *_] = [sql for sql in statements if "ORDER BY bucket DESC" in sql]
    plan = three_hours.read_models._db.execute(f"EXPLAIN QUERY PLAN {query}").fetchall()
    assert any(
        "COVERING INDEX rm_service_rollups_by_service (service=? AND step=?" in row[-1] for row in plan
    )


def test_purge_forgets_the_requests_of_purged_events_and_keeps_the_rollups(tmp_path: Path) -> None:
    service = unique_service()
    old = [a_call(service, T0 + timedelta(minutes=i), status=500) for i in range(5)]
    new = [a_call(service, T0 + timedelta(hours=2, minutes=i), status=500) for i in range(3)]
    window = (T0, T0 + timedelta(hours=3))
    with SQLiteStore(tmp_path / "events.db") as store:
        store.append(flat(old + new))
        models = read_models_of(store)
        assert store.purge(T0 + timedelta(hours=1)) == 10
        found = all_requests(models, RequestQuery(service=service, status="error"))
        assert sorted(summary.request_id for summary in found) == sorted(call[0].request_id for call in new)
        assert [s.request_id for s in all_requests(models, RequestQuery())] == [s.request_id for s in found]
        rollup = totals(models, service, *window)
        assert (rollup.calls, rollup.errors) == (8, 8)
    db = sqlite3.connect(read_models_path(tmp_path / "events.db"))
    assert db.execute("SELECT count(*) FROM rm_request_services").fetchone() == (3,)
