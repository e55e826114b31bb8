"""Read models on the embedded store: readers over long windows, ingest with
and without projections, and replay.

1. Readers: service health, series (default step) and a rare-request search
   (the failed calls of a service called once in about 5,000 requests) over
   windows of 15 minutes, 2 hours and 24 hours that end at the newest event,
   each against the same call over a 1-minute window in the same run. Target:
   under 50 ms at 10M events, within 3x of the 1-minute call. Then health
   again over windows that end at other minutes of the hour
   (:data:`ENDS_BEFORE`), where their edges read other rows.
2. Ingest: events/s through ``SQLiteStore.append`` in batches the size a
   worker takes, as the worker runs it (``project=False``, a follower process
   folding the log into the read models at the same time) and with no read
   models at all (no follower), same run, same events; then how long the
   follower took to fold the last event, and, for reference, the rate when
   each append folds its batch itself (``project=True``). Target: at least
   85% kept.
3. Replay: ``rebuild`` throughput (events/s) while building the reader file.

    .venv/bin/python benchmarks/read_models.py [--events 1000000] [--ingest 100000] [--rounds 3]
        [--rebuild]

The reader file (demo traffic spread over 26 hours, plus the rare service) is
built once per size and kept in the temp directory: raw inserts, then
``eventtrail rebuild``'s replay, which is timed.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from eventtrail.calls import call_error, call_request
from eventtrail.demo import demo_flows
from eventtrail.embedded.follower import FollowerProcess
from eventtrail.embedded.sqlite import connect
from eventtrail.embedded.store import _SCHEMA, SQLiteStore
from eventtrail.event import Event
from eventtrail.health import HealthReport, service_health
from eventtrail.readmodels import read_models_of
from eventtrail.readmodels.port import RequestPage
from eventtrail.readmodels.series import SeriesReport, default_step, series
from eventtrail.times import format_moment
from eventtrail.web.traces import find_requests

START = datetime(2024, 1, 1, tzinfo=UTC)
SPAN = timedelta(hours=26)
EVENTS_PER_REQUEST = 4.6
RARE = "Microservice R"
RARE_EVERY = 5000
WINDOWS = {
    "1m": timedelta(minutes=1),
    "15m": timedelta(minutes=15),
    "2h": timedelta(hours=2),
    "24h": timedelta(days=1),
}
TARGET_SECONDS = 0.050
TARGET_RATIO = 3.0
#: Where health's windows end, in minutes before the newest event's: a
#: window's edges fall at another minute of their hours (and of coarser
#: buckets), and the edges are where a window's rows are read; 0 is a window
#: that ends now, the others end in the past (nothing stored after them is
#: left out).
ENDS_BEFORE = (0, 10, 26, 30, 44)

_encode = msgspec.json.Encoder().encode


def traffic(
    count: int, *, start: datetime = START, span: timedelta = SPAN, seed: int = 2024
) -> Iterator[Event]:
    """Demo traffic spread over ``span``, plus a rare service's failed call in
    one request of every :data:`RARE_EVERY`."""
    requests = max(int(count / EVENTS_PER_REQUEST), 1)
    spacing_ms = span.total_seconds() * 1000 / requests
    for index, flow in enumerate(demo_flows(requests, start=start, seed=seed, spacing_ms=spacing_ms)):
        yield from flow
        if index % RARE_EVERY == RARE_EVERY // 2:
            first = flow[0]
            call_id = f"rare-{index}"
            yield call_request(
                first.request_id, call_id, RARE, "GET", f"/stock/{index}", timestamp=first.timestamp
            )
            yield call_error(
                first.request_id,
                call_id,
                RARE,
                error="timeout",
                elapsed_ms=2500.0,
                timestamp=flow[-1].timestamp,
            )


def build(path: Path, count: int) -> float:
    """Write ``count`` events with big raw batches, then replay them into the
    read models; return the replay's events/s."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = connect(path, synchronous="OFF")
    db.executescript(_SCHEMA)
    rows: list[tuple[str, str, str, str, str, str]] = []
    written = 0
    began = time.perf_counter()
    for e in traffic(count):
        rows.append((e.id, e.request_id, e.timestamp, e.type, e.source, _encode(e.data).decode()))
        if len(rows) >= 100_000:
            db.execute("BEGIN")
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            written += len(rows)
            rows.clear()
    if rows:
        db.execute("BEGIN")
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        written += len(rows)
    db.close()
    print(f"wrote {written:,} events in {time.perf_counter() - began:.1f} s: {path}", flush=True)
    with SQLiteStore(path) as store:
        began = time.perf_counter()
        replayed = read_models_of(store).rebuild()
        elapsed = time.perf_counter() - began
    with sqlite3.connect(path) as analysed:
        analysed.execute("ANALYZE")
    rate = replayed / elapsed
    print(f"rebuild: {replayed:,} events replayed in {elapsed:.1f} s, {rate:,.0f} events/s", flush=True)
    (path.parent / f"{path.name}.rebuild").write_text(f"{replayed} {elapsed}\n")
    return rate


def reader_file(count: int, rebuild: bool) -> tuple[Path, str]:
    path = Path(tempfile.gettempdir()) / "eventtrail-bench" / f"read-models-{count}.db"
    note = path.parent / f"{path.name}.rebuild"
    if rebuild or not path.exists() or not note.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build(path, count)
    else:
        with SQLiteStore(path) as store:
            models = read_models_of(store)
            if not models.is_current():
                # A file from an eventtrail whose read models had another shape.
                began = time.perf_counter()
                count = models.rebuild()
                note.write_text(f"{count} {time.perf_counter() - began}\n")
    replayed, elapsed = note.read_text().split()
    return (
        path,
        f"{int(replayed):,} events in {float(elapsed):.1f} s, {int(replayed) / float(elapsed):,.0f} events/s",
    )


#: Each sample of a reader times calls for about this long (one call of a
#: fraction of a millisecond is at the mercy of the scheduler).
SAMPLE_SECONDS = 0.02


def median_seconds(runs: dict[str, Callable[[], object]], samples: int) -> dict[str, tuple[float, object]]:
    """Per run, the median time of one call over ``samples`` samples, and
    what it returned. Each sample repeats a call for about
    :data:`SAMPLE_SECONDS`, and the runs take turns sample by sample, so that
    a machine slowing down meanwhile slows them all alike."""
    answers: dict[str, object] = {}
    repeats: dict[str, int] = {}
    for label, run in runs.items():
        began = time.perf_counter()
        answers[label] = run()  # warms the page cache and the statement cache
        repeats[label] = max(1, int(SAMPLE_SECONDS / max(time.perf_counter() - began, 1e-6)))
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(samples):
        for label, run in runs.items():
            began = time.perf_counter()
            for _ in range(repeats[label]):
                run()
            times[label].append((time.perf_counter() - began) / repeats[label])
    return {label: (statistics.median(times[label]), answers[label]) for label in runs}


def answer_size(answer: object, seconds: float) -> str:
    """What a reader returned, counted, and the time per thing returned where
    that grows with the window while the data read does not (a series has a
    point per step, a search returns every match up to its page)."""
    if isinstance(answer, HealthReport):
        return f"{len(answer.services)} services"
    if isinstance(answer, SeriesReport):
        count, unit = sum(len(entry.points) for entry in answer.series), "points"
    elif isinstance(answer, RequestPage):
        count, unit = len(answer.requests), "requests"
    else:
        return "-"
    return f"{count} {unit}" + (f", {seconds / count * 1e6:.1f} µs each" if count else "")


def readers(path: Path, samples: int) -> list[tuple[str, str, float, float, str]]:
    """(reader, window, seconds, ratio to the 1-minute window, what it returned)."""
    results: list[tuple[str, str, float, float, str]] = []
    with SQLiteStore(path, read_only=True) as store:
        models = read_models_of(store)
        newest = store._query("SELECT max(ts) FROM events", ())[0][0]
        end = datetime.fromisoformat(newest.replace("Z", "+00:00"))
        calls: dict[str, Callable[[timedelta], object]] = {
            "health": lambda window: service_health(store, window, until=end),
            "series": lambda window: series(models, window, default_step(window), until=end),
            "rare search": lambda window: find_requests(
                store, service=RARE, status="error", since=end - window, until=end, limit=50
            ),
        }
        for name, call in calls.items():
            timed = median_seconds(
                {label: functools.partial(call, window) for label, window in WINDOWS.items()}, samples
            )
            base = timed["1m"][0]
            for label, (seconds, answer) in timed.items():
                results.append((name, label, seconds, seconds / base, answer_size(answer, seconds)))
        found = find_requests(
            store, service=RARE, status="error", since=end - WINDOWS["24h"], until=end, limit=500
        )
        print(f"rare search over 24 h: {len(found.requests)} requests found (exhaustive)", flush=True)
    return results


def health_by_end(path: Path, samples: int) -> list[tuple[int, dict[str, float]]]:
    """Per window end of :data:`ENDS_BEFORE`: health's ratio over each
    window to the 1-minute window ending there."""
    found: list[tuple[int, dict[str, float]]] = []
    with SQLiteStore(path, read_only=True) as store:
        newest = store._query("SELECT max(ts) FROM events", ())[0][0]
        end = datetime.fromisoformat(newest.replace("Z", "+00:00"))
        for minutes in ENDS_BEFORE:
            until = end - timedelta(minutes=minutes)
            timed = median_seconds(
                {
                    label: functools.partial(service_health, store, window, until=until)
                    for label, window in WINDOWS.items()
                },
                samples,
            )
            base = timed["1m"][0]
            found.append((minutes, {label: seconds / base for label, (seconds, _) in timed.items()}))
    return found


def ingest(count: int, batch: int, rounds: int) -> list[tuple[float, float, float, float]]:
    """(followed, off, folded, inline) events/s: appending with a follower
    process at work, appending with none, every event folded (from the first
    append to the follower's last fold), and appending with the fold in each
    append. Alternating rounds (followed then off, then off then followed),
    so that a change in the machine's load weighs on both sides."""
    events = list(traffic(count, start=datetime(2025, 1, 1, tzinfo=UTC), span=timedelta(hours=2), seed=7))
    results = []
    for round_ in range(rounds):
        rates: dict[str, float] = {}
        for mode in ("followed", "off", "inline") if round_ % 2 == 0 else ("off", "followed", "inline"):
            folder = Path(tempfile.mkdtemp(prefix="eventtrail-ingest-"))
            path = folder / "events.db"
            with SQLiteStore(path, project=mode == "inline") as store:
                follower = None
                if mode == "followed":
                    follower = FollowerProcess(path, busy_timeout_ms=10_000).start()
                    # Started and idle, as beside a worker that was waiting for work.
                    while store.read_models.lag() or not _following(follower):
                        time.sleep(0.01)
                began = time.perf_counter()
                for start in range(0, len(events), batch):
                    store.append(events[start : start + batch])
                rates[mode] = len(events) / (time.perf_counter() - began)
                if follower is not None:
                    behind = store.read_models.lag()
                    while store.read_models.lag():
                        time.sleep(0.005)
                    rates["folded"] = len(events) / (time.perf_counter() - began)
                    follower.stop()
                    print(f"  the follower was {behind:,} events behind at the last append", flush=True)
            shutil.rmtree(folder)
        results.append((rates["followed"], rates["off"], rates["folded"], rates["inline"]))
        followed, off, folded, inline = results[-1]
        print(
            f"round {round_ + 1}: followed {followed:,.0f} events/s, off {off:,.0f} events/s,"
            f" kept {followed / off:.0%}; all folded at {folded:,.0f} events/s;"
            f" folded in each append {inline:,.0f} events/s ({inline / off:.0%})",
            flush=True,
        )
    return results


def _following(follower: FollowerProcess) -> bool:
    """Whether the follower's process has opened the read models (it holds
    their file open)."""
    pid = follower.pid
    if pid is None:
        return False
    try:
        links = list(Path(f"/proc/{pid}/fd").iterdir())
        return any(link.resolve().name.endswith(".read-models.db") for link in links)
    except (FileNotFoundError, PermissionError):
        return False


def _load() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        nargs="*",
        default=[1_000_000],
        help="reader file sizes (none: skip the readers)",
    )
    parser.add_argument("--ingest", type=int, default=100_000, help="events to ingest, each way (0: skip)")
    parser.add_argument(
        "--batch", type=int, default=1000, help="events per append (the worker's default batch)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating ingest rounds")
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--rebuild", action="store_true", help="build the reader files again")
    args = parser.parse_args()
    print(f"load average at the start: {_load()} (1, 5, 15 min; 2 vCPU shared)", flush=True)

    for count in args.events:
        path, rebuild_note = reader_file(count, args.rebuild)
        print(f"\n{count:,} events ({path.stat().st_size / 1e6:,.0f} MB), rebuild: {rebuild_note}")
        print("| reader | window | median | vs 1 min | target | returns |")
        print("| --- | --- | ---: | ---: | --- | ---: |")
        for name, window, seconds, ratio, returned in readers(path, args.samples):
            met = seconds < TARGET_SECONDS and ratio <= TARGET_RATIO
            print(
                f"| {name} | {window} | {seconds * 1000:.2f} ms | {ratio:.2f}x |"
                f" {'met' if met or window == '1m' else 'MISSED'} | {returned} |",
                flush=True,
            )
        longer = [label for label in WINDOWS if label != "1m"]
        print("\nhealth, by where the window ends (ratio to the 1-minute window ending there):")
        print("| ends | " + " | ".join(longer) + " |")
        print("| --- | " + " | ".join("---:" for _ in longer) + " |")
        by_end = health_by_end(path, args.samples)
        for minutes, ratios in by_end:
            ends = "the newest event" if not minutes else f"{minutes} min before"
            print(f"| {ends} | " + " | ".join(f"{ratios[label]:.2f}x" for label in longer) + " |", flush=True)
        worst = max(ratio for _, ratios in by_end for ratio in ratios.values())
        print(
            f"worst: {worst:.2f}x (target <= {TARGET_RATIO:.0f}x):"
            f" {'met' if worst <= TARGET_RATIO else 'MISSED'}",
            flush=True,
        )
    if args.ingest:
        print(f"\ningest, {args.ingest:,} events in batches of {args.batch} (synchronous=FULL):")
        results = ingest(args.ingest, args.batch, args.rounds)
        followed = statistics.median(row[0] for row in results)
        off = statistics.median(row[1] for row in results)
        kept = statistics.median(row[0] / row[1] for row in results)
        folded = statistics.median(row[2] for row in results)
        inline = statistics.median(row[3] / row[1] for row in results)
        print(
            f"median of {len(results)} rounds: followed {followed:,.0f} events/s; off {off:,.0f} events/s;"
            f" kept {kept:.0%} (target >= 85%): {'met' if kept >= 0.85 else 'MISSED'};"
            f" all folded at {folded:,.0f} events/s; folding in each append keeps {inline:.0%}"
        )
    print(f"\nrun at {format_moment(datetime.now(UTC))}, load average {_load()} (1, 5, 15 min)")


if __name__ == "__main__":
    main()
