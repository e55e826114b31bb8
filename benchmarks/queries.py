"""Read latency of the embedded store at 1,000,000 events.

Measures, through the store port (decoding included), a request's flow, a page
of 100 events of a type in a time range, and service health over a 15-minute
window of about 100,000 events; and, in the same run, raw SQLite running the
same SQL on the same file (rows fetched, nothing decoded; for health, the SQL
the adapter runs for both windows). Targets: flow p99 < 1 ms, page p99 < 5 ms,
health < 0.5 s (the window and the one before it, the latency baseline).
Health reads the read models (rollups); its "raw" column is the SQL health ran
on the events before them (every response and error of both windows, fetched).

    .venv/bin/python benchmarks/queries.py [--events 1000000] [--rebuild]

The store file is built once (demo traffic, one request about every 41 ms, so
that 15 minutes hold about 100,000 events) and kept in the temp directory,
keyed by size, with its read models built by replaying it (``eventtrail
rebuild``); a file from before the read models gets them on the next run.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from eventtrail.calls import ERROR, REQUEST, RESPONSE
from eventtrail.demo import demo_flows
from eventtrail.embedded.sqlite import connect
from eventtrail.embedded.store import _SCHEMA, SQLiteStore
from eventtrail.health import service_health
from eventtrail.store import format_moment

START = datetime(2024, 1, 1, tzinfo=UTC)
#: One request every ~41 ms averages 4.6 events per request: ~100,000 events
#: per 15 minutes.
SPACING_MS = 41.4
WINDOW = timedelta(minutes=15)
TARGETS = {"flow": 0.001, "page": 0.005, "health": 0.5}

_encode = msgspec.json.Encoder().encode


def build(path: Path, count: int) -> None:
    """Write ``count`` events of demo traffic with big executemany batches."""
    path.unlink(missing_ok=True)
    db = connect(path, synchronous="OFF")
    db.executescript(_SCHEMA)
    rows: list[tuple[str, str, str, str, str, str]] = []
    written = 0
    began = time.perf_counter()
    for flow in demo_flows(count // 4, start=START, seed=2024, spacing_ms=SPACING_MS):
        for e in flow:
            rows.append((e.id, e.request_id, e.timestamp, e.type, e.source, _encode(e.data).decode()))
        if len(rows) >= 100_000 or written + len(rows) >= count:
            rows = rows[: count - written]
            db.execute("BEGIN")
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            written += len(rows)
            rows.clear()
            if written >= count:
                break
    db.close()
    print(f"built {written:,} events in {time.perf_counter() - began:.1f} s: {path}")
    project(path)


def project(path: Path) -> None:
    """Build the read models health reads (``eventtrail rebuild``'s replay)."""
    began = time.perf_counter()
    with SQLiteStore(path) as store:
        replayed = store.read_models.rebuild()
    with sqlite3.connect(path) as db:
        db.execute("ANALYZE")
    print(f"read models: {replayed:,} events replayed in {time.perf_counter() - began:.1f} s")


def store_file(count: int, rebuild: bool) -> Path:
    path = Path(tempfile.gettempdir()) / "eventtrail-bench" / f"queries-{count}.db"
    if path.exists() and not rebuild:
        with sqlite3.connect(path) as db:
            complete = db.execute("SELECT count(*) FROM events").fetchone()[0] == count
        if complete:
            with SQLiteStore(path) as store:
                current = store.read_models.is_current()
            if not current:
                # A file from before the read models: project what it holds.
                project(path)
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    build(path, count)
    return path


def timings(run: Callable[[int], object], samples: int) -> list[float]:
    spent: list[float] = []
    for index in range(samples):
        began = time.perf_counter()
        run(index)
        spent.append(time.perf_counter() - began)
    return spent


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def show(name: str, port: list[float], raw: list[float], unit: str, note: str = "") -> None:
    scale = {"µs": 1e6, "ms": 1e3}[unit]
    p50, p99 = quantile(port, 0.5), quantile(port, 0.99)
    raw50, raw99 = quantile(raw, 0.5), quantile(raw, 0.99)
    target = TARGETS[name]
    verdict = "meets" if p99 < target else f"misses by {p99 / target:.1f}x"
    print(
        f"{name + note:<32} port p50 {p50 * scale:7.2f} {unit}  p99 {p99 * scale:7.2f} {unit}"
        f" | raw p50 {raw50 * scale:7.2f} {unit}  p99 {raw99 * scale:7.2f} {unit}"
        f" | p99 {p99 / raw99:5.1f}x raw | target p99 < {target * scale:g} {unit}: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--flows", type=int, default=3000, help="flows to time")
    parser.add_argument("--pages", type=int, default=2000, help="pages to time")
    parser.add_argument("--health-runs", type=int, default=7)
    parser.add_argument("--rebuild", action="store_true", help="build the store file again")
    arguments = parser.parse_args()

    path = store_file(arguments.events, arguments.rebuild)
    raw = connect(path)
    first, last = raw.execute("SELECT min(ts), max(ts) FROM events").fetchone()
    begin, end = datetime.fromisoformat(first), datetime.fromisoformat(last)
    span = (end - begin).total_seconds()
    rng = random.Random(1)
    total = raw.execute("SELECT max(rowid) FROM events").fetchone()[0]
    request_ids = [
        raw.execute("SELECT request_id FROM events WHERE rowid = ?", (rng.randint(1, total),)).fetchone()[0]
        for _ in range(arguments.flows)
    ]
    types = [REQUEST, RESPONSE, ERROR]
    ranges = []
    for _ in range(arguments.pages):
        since = begin + timedelta(seconds=rng.uniform(0, span - 600))
        ranges.append((rng.choice(types), since, since + timedelta(minutes=10)))
    print(
        f"{arguments.events:,} events over {span / 3600:.1f} h, SQLite {sqlite3.sqlite_version},"
        f" warm page cache; port = SQLiteStore (decoded events), raw = sqlite3 fetchall of the same SQL"
    )

    with SQLiteStore(path) as store:
        columns = "id, request_id, ts, type, source, data"
        flow_sql = f"SELECT {columns} FROM events WHERE request_id = ? ORDER BY ts, id"
        page_sql = (
            f"SELECT {columns} FROM events WHERE type = ? AND ts >= ? AND ts < ?"
            " ORDER BY ts ASC, id ASC LIMIT ?"
        )
        # Warm both paths once over the same data, so that both are timed warm.
        for request_id in request_ids:
            store.flow(request_id)
        for type_, since, until in ranges:
            store.events(type=type_, since=since, until=until, limit=100)

        flow_port = timings(lambda i: store.flow(request_ids[i]), len(request_ids))
        flow_raw = timings(lambda i: raw.execute(flow_sql, (request_ids[i],)).fetchall(), len(request_ids))
        assert len(store.flow(request_ids[0])) == len(raw.execute(flow_sql, (request_ids[0],)).fetchall())

        def page_port(index: int) -> object:
            type_, since, until = ranges[index]
            return store.events(type=type_, since=since, until=until, limit=100)

        def page_raw(index: int) -> object:
            type_, since, until = ranges[index]
            return raw.execute(page_sql, (type_, format_moment(since), format_moment(until), 101)).fetchall()

        page_port_times = timings(page_port, len(ranges))
        page_raw_times = timings(page_raw, len(ranges))

        # Health over 15 minutes (plus the 15 minutes before, its latency baseline).
        ends = [
            begin + 2 * WINDOW + timedelta(seconds=rng.uniform(0, span - 2 * WINDOW.total_seconds()))
            for _ in range(arguments.health_runs)
        ]
        in_window = [
            raw.execute(
                "SELECT count(*) FROM events WHERE ts >= ? AND ts < ?",
                (format_moment(until - WINDOW), format_moment(until)),
            ).fetchone()[0]
            for until in ends
        ]
        # The adapter's own SQL for event_fields, rows fetched and not decoded.
        health_sql = (
            "SELECT ts, source, data FROM events WHERE type = ? AND ts >= ? AND ts < ? ORDER BY ts, id"
        )

        def health_raw(index: int) -> object:
            until = ends[index]
            rows = []
            for since, upto in ((until - WINDOW, until), (until - 2 * WINDOW, until - WINDOW)):
                for type_ in (RESPONSE, ERROR):
                    rows += raw.execute(
                        health_sql, (type_, format_moment(since), format_moment(upto))
                    ).fetchall()
            return rows

        service_health(store, WINDOW, until=ends[0])
        health_port_times = timings(lambda i: service_health(store, WINDOW, until=ends[i]), len(ends))
        health_raw_times = timings(health_raw, len(ends))
        report = service_health(store, WINDOW, until=ends[0])

    show("flow", flow_port, flow_raw, "µs", f" (n={len(flow_port):,})")
    show("page", page_port_times, page_raw_times, "ms", f" of 100 (n={len(page_port_times):,})")
    show(
        "health",
        health_port_times,
        health_raw_times,
        "ms",
        f" 15m (~{statistics.mean(in_window):,.0f} ev, n={len(ends)})",
    )
    print(f"health verdict at {format_moment(ends[0])}: {report.verdict}")
    raw.close()


if __name__ == "__main__":
    main()
