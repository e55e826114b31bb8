"""Throughput of the embedded pipeline: send -> queue -> worker -> store.

Pushes N events (default 200,000) of demo traffic through the SQLite queue
and a worker into the SQLite store, and prints events/s next to the raw limit
of this machine measured in the same run: plain SQLite ``executemany`` of the
same rows into the same schema, with the same pragmas. Each worker runs as
``eventtrail worker`` does: it stores without folding, and a follower process
beside it folds the events into the read models; the time until the last
event is in the read models is printed too. Target: the pipeline reaches at
least 40% of the raw limit.

    .venv/bin/python benchmarks/pipeline.py [--events 200000] [--batch-size 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from eventtrail.consumer import Consumer
from eventtrail.demo import demo_flows
from eventtrail.embedded.follower import FollowerProcess
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.sqlite import connect
from eventtrail.embedded.store import _SCHEMA, SQLiteStore
from eventtrail.event import Event, encode_event
from eventtrail.worker import Worker

TARGET_RATIO = 0.40


def make_events(count: int) -> list[Event]:
    events: list[Event] = []
    for flow in demo_flows(count // 4 + 1, seed=1):
        events.extend(flow)
        if len(events) >= count:
            break
    return events[:count]


def raw_insert(path: Path, events: list[Event], batch: int) -> float:
    """Seconds to insert the rows with executemany, no eventtrail code involved."""
    rows = [
        (e.id, e.request_id, e.timestamp, e.type, e.source, msgspec.json.encode(e.data).decode())
        for e in events
    ]
    db = connect(path)
    db.executescript(_SCHEMA)
    start = time.perf_counter()
    for offset in range(0, len(rows), batch):
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows[offset : offset + batch])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def _send(queue_path: Path, bodies: list[str], batch: int) -> None:
    with SQLiteQueue(queue_path) as queue:
        for offset in range(0, len(bodies), batch):
            queue.send(bodies[offset : offset + batch])


def _work(folder: Path, batch: int, stop: Any) -> None:
    # As `eventtrail worker` runs: the store does not fold, a follower
    # process beside it does.
    follower = FollowerProcess(folder / "events.db", busy_timeout_ms=10_000).start()
    try:
        with (
            SQLiteQueue(folder / "queue.db") as queue,
            SQLiteStore(folder / "events.db", project=False) as store,
        ):
            Worker(queue, Consumer(store), batch_size=batch, wait_seconds=0.05).run(stop=stop)
    finally:
        follower.stop()


def _lag(path: Path) -> int:
    with SQLiteStore(path, read_only=True) as store:
        return store.read_models.lag()


def _stored(path: Path) -> int:
    # Rows are never deleted here, so the last rowid is the count, and cheap.
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0])
    finally:
        db.close()


def pipeline(folder: Path, events: list[Event], batch: int, *, workers: int) -> tuple[float, float]:
    """Seconds from the first send until every event is stored, and until
    every event is folded into the read models, with the producer and
    ``workers`` worker processes (each with its follower) running at the
    same time."""
    bodies = [encode_event(e).decode() for e in events]
    SQLiteQueue(folder / "queue.db").close()
    SQLiteStore(folder / "events.db").close()
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    consumers = [spawn.Process(target=_work, args=(folder, batch, stop)) for _ in range(workers)]
    for process in consumers:
        process.start()
    time.sleep(1.0)  # let the workers import and start polling
    start = time.perf_counter()
    sender = spawn.Process(target=_send, args=(folder / "queue.db", bodies, batch))
    sender.start()
    while _stored(folder / "events.db") < len(bodies):
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    while _lag(folder / "events.db"):
        time.sleep(0.02)
    folded = time.perf_counter() - start
    stop.set()
    sender.join()
    for process in consumers:
        process.join()
    return elapsed, folded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args()
    events = make_events(args.events)
    print(f"{len(events):,} events, batches of {args.batch_size:,}, SQLite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        raw = raw_insert(root / "raw.db", events, args.batch_size)
        raw_rate = len(events) / raw
        print(f"raw SQLite executemany into the store schema: {raw_rate:>10,.0f} events/s ({raw:.2f} s)")
        results = {}
        for workers in (1, 2):
            folder = root / f"workers-{workers}"
            folder.mkdir()
            elapsed, folded = pipeline(folder, events, args.batch_size, workers=workers)
            assert _stored(folder / "events.db") == len(events)
            results[workers] = len(events) / elapsed
            print(
                f"pipeline, sender || {workers} worker process{'es' if workers > 1 else ''}:"
                f" {results[workers]:>10,.0f} events/s ({elapsed:.2f} s)"
                f"  = {results[workers] / raw_rate:.0%} of raw;"
                f" all in the read models after {folded:.2f} s ({len(events) / folded:,.0f} events/s)"
            )
    best = max(results.values())
    verdict = "meets" if best / raw_rate >= TARGET_RATIO else "MISSES"
    print(f"target >= {TARGET_RATIO:.0%} of raw: {verdict} ({best / raw_rate:.0%})")


if __name__ == "__main__":
    main()
