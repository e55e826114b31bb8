"""Read models kept by a follower of the SQLite store's log: exactly once by
position, whoever folds, however often it is killed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from eventtrail.embedded.follower import FollowerProcess
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import Event, encode_event
from eventtrail.readmodels import (
    ReadModels,
    ReadModelsOutdated,
    RequestQuery,
    read_models_of,
)
from eventtrail.readmodels.follower import Follower
from eventtrail.readmodels.sketch import LatencySketch
from eventtrail.readmodels.sqlite import SQLiteReadModels, read_models_path
from tests.cli import run, spawn
from tests.contract.readmodels_contract import (
    T0,
    a_call,
    all_requests,
    flat,
    snapshot,
    totals,
    unique_service,
)

WINDOW = (T0 - timedelta(hours=1), T0 + timedelta(hours=3))


def traffic(service: str, count: int, seed: int = 5) -> list[Event]:
    """``count`` calls of ``service`` over half an hour, a fifth of them
    failed, in a shuffled order of arrival (outcomes before their requests
    too; all within the grace that a call's halves have to meet)."""
    chooser = random.Random(seed)
    calls = [
        a_call(
            service,
            T0 + timedelta(seconds=chooser.uniform(0, 1800)),
            latency_ms=chooser.uniform(1, 900),
            status=500 if index % 5 == 0 else 200,
            path=f"/orders/{index}",
        )
        for index in range(count)
    ]
    events = flat(calls)
    chooser.shuffle(events)
    return events


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def kill_and_await_its_successor(follower: FollowerProcess, killed: int) -> int:
    """SIGKILL the follower process and wait until it was started again;
    return how many times it was killed."""
    assert follower.pid is not None
    os.kill(follower.pid, signal.SIGKILL)
    wait_until(lambda: follower.restarts > killed, 30, "the follower to be started again")
    return killed + 1


def counted(models: ReadModels, service: str) -> dict[str, Any]:
    """What the read models say of ``service``, with each latency sketch as
    its counts per bucket. A call counted under the unknown operation and
    moved to its own when its request event came leaves its latency in the
    unknown row's bounds (bounds cannot be taken away), so the bounds depend
    on which events were folded together; the counts never do."""
    found = snapshot(models, service, *WINDOW)
    for part in ("buckets", "whole"):
        found[part] = {
            key: (calls, failures, LatencySketch.from_bytes(sketch).counts)
            for key, (calls, failures, sketch) in found[part].items()
        }
    return found


def folded_inline(tmp_path: Path, events: list[Event], service: str) -> dict[str, Any]:
    """What the read models say of ``events`` folded as each batch is stored."""
    with SQLiteStore(tmp_path / "inline" / "events.db") as store:
        for start in range(0, len(events), 100):
            store.append(events[start : start + 100])
        return counted(read_models_of(store), service)


@pytest.mark.slow
def test_a_follower_process_killed_again_and_again_counts_each_event_once(tmp_path: Path) -> None:
    service = unique_service()
    events = traffic(service, 3000)
    path = tmp_path / "events.db"
    with SQLiteStore(path, project=False) as store:
        follower = FollowerProcess(path, busy_timeout_ms=10_000).start()
        killed = 0
        try:
            for start in range(0, len(events), 100):
                # Redelivered batches too: the store reports them as duplicates.
                store.append(events[start : start + 100])
                if start % 1000 == 0:
                    store.append(events[max(0, start - 100) : start + 100])
                if start % 1500 == 0 and follower.pid is not None:
                    killed = kill_and_await_its_successor(follower, killed)
        finally:
            assert follower.stop(), "the follower did not stop by itself"
        assert follower.restarts == killed >= 2
        models = read_models_of(store)
        assert models.lag() == 0
        followed = counted(models, service)
        rollup = totals(models, service, *WINDOW)
    assert (rollup.calls, rollup.errors) == (3000, 600)
    assert followed == folded_inline(tmp_path, events, service)


def test_followers_racing_with_inline_folding_count_each_event_once(tmp_path: Path) -> None:
    service = unique_service()
    events = traffic(service, 1500, seed=9)
    path = tmp_path / "events.db"
    SQLiteStore(path).close()
    # Two followers in threads, each with its own connections, and a store
    # that folds after each append itself: three writers of one position.
    stores = [SQLiteStore(path, project=False) for _ in range(2)]
    followers = [Follower(store.read_models, idle_seconds=0.001).start() for store in stores]
    try:
        with SQLiteStore(path) as folding, SQLiteStore(path, project=False) as plain:
            for number, start in enumerate(range(0, len(events), 50)):
                batch = events[start : start + 50]
                if number % 3 == 0:
                    # Left to the followers alone: the folding store may win
                    # every race on a busy machine, and the followers must
                    # be seen to fold.
                    plain.append(batch)
                    wait_until(lambda: plain.read_models.lag() == 0, 30, "the followers to fold")
                else:
                    folding.append(batch)
    finally:
        for follower in followers:
            follower.stop()
        for store in stores:
            store.close()
    assert sum(follower.folded for follower in followers) > 0, "the followers never took part"
    with SQLiteStore(path, read_only=True) as store:
        models = read_models_of(store)
        assert models.lag() == 0
        rollup = totals(models, service, *WINDOW)
        assert (rollup.calls, rollup.errors) == (1500, 300)
        assert counted(models, service) == folded_inline(tmp_path, events, service)


def test_an_event_stored_after_the_newest_were_purged_is_still_counted(tmp_path: Path) -> None:
    service = unique_service()
    path = tmp_path / "events.db"
    with SQLiteStore(path) as store:
        store.append(flat([a_call(service, T0 + timedelta(seconds=i)) for i in range(3)]))
        # Everything purged: SQLite alone would give the next row a rowid the
        # read models have passed.
        assert store.purge(T0 + timedelta(days=1)) == 6
        late = list(a_call(service, T0 + timedelta(minutes=30)))
        store.append(late)
        assert store.count() == 2
        rollup = totals(read_models_of(store), service, *WINDOW)
    assert rollup.calls == 4


def _followers_of(pid: int) -> list[int]:
    """The follower processes among the children of ``pid`` (not
    multiprocessing's resource tracker)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    found = []
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command:
            found.append(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_the_worker_stops_caught_up_and_its_follower_never_outlives_it(tmp_path: Path) -> None:
    service = unique_service()
    events = traffic(service, 500)
    body = "".join(encode_event(event).decode() + "\n" for event in events)
    assert run(tmp_path, "send", "-", input=body).returncode == 0
    drained = run(tmp_path, "worker", "--drain", "-q")
    assert drained.returncode == 0, drained.stderr
    with SQLiteStore(tmp_path / "events.db", read_only=True) as store:
        models = read_models_of(store)
        assert models.lag() == 0
        assert totals(models, service, *WINDOW).calls == 500

    # A worker killed outright: its follower sees the pipe close and exits.
    worker = spawn(tmp_path, "worker")
    try:
        wait_until(lambda: bool(_followers_of(worker.pid)), 30, "the worker's follower process")
        (follower,) = _followers_of(worker.pid)
        more = traffic(service, 100, seed=6)
        body = "".join(encode_event(event).decode() + "\n" for event in more)
        assert run(tmp_path, "send", "-", input=body).returncode == 0
        with SQLiteStore(tmp_path / "events.db", read_only=True) as store:
            wait_until(lambda: totals(read_models_of(store), service, *WINDOW).calls == 600, 30, "folding")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        wait_until(lambda: not _alive(follower), 30, "the orphaned follower to exit")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == -signal.SIGKILL


def test_status_says_how_far_behind_the_read_models_are(tmp_path: Path) -> None:
    service = unique_service()
    with SQLiteStore(tmp_path / "events.db", project=False) as store:
        store.append(flat([a_call(service, T0)]))
    behind = run(tmp_path, "status")
    assert behind.returncode == 0, behind.stderr
    assert "read models: 2 events behind the store" in behind.stdout
    with SQLiteStore(tmp_path / "events.db") as store:
        read_models_of(store).catch_up()
    assert "read models: up to date" in run(tmp_path, "status").stdout


def test_a_partial_rebuild_first_folds_what_the_follower_has_not_reached(tmp_path: Path) -> None:
    service = unique_service()
    early = [a_call(service, T0 + timedelta(minutes=i), status=500) for i in range(4)]
    late = [a_call(service, T0 + timedelta(hours=2, minutes=i)) for i in range(3)]
    with SQLiteStore(tmp_path / "events.db", project=False) as store:
        store.append(flat(early + late))
        models = read_models_of(store)
        assert models.lag() == 14
        # From the later hour on: the early calls, before the cut, are folded
        # from the position, the later ones replayed; each counted once.
        models.rebuild(since=T0 + timedelta(hours=2))
        assert models.lag() == 0
        rollup = totals(models, service, *WINDOW)
        assert (rollup.calls, rollup.errors) == (7, 4)
        assert len(all_requests(models, RequestQuery(service=service))) == 7


def _set_version(path: Path, version: int) -> None:
    """What an older eventtrail leaves: read models of another version."""
    db = sqlite3.connect(read_models_path(path))
    with db:
        db.execute("UPDATE rm_meta SET value = ? WHERE name = 'version'", (version,))
    db.close()


def test_the_worker_follower_rebuilds_read_models_of_another_version_then_follows(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    service = unique_service()
    events = traffic(service, 300)
    with SQLiteStore(path) as store:
        store.append(events[:400])
    _set_version(path, SQLiteReadModels.version - 1)
    with SQLiteStore(path, project=False) as store:
        models = read_models_of(store)
        with pytest.raises(ReadModelsOutdated, match="a running `eventtrail worker` rebuilds them"):
            models.rollups(*WINDOW)
        status = run(tmp_path, "status")
        assert "read models: not built for this version: a running `eventtrail worker`" in status.stdout
        # Stored while the read models are outdated: folded once they are rebuilt.
        store.append(events[400:])
        follower = FollowerProcess(path, busy_timeout_ms=5000).start()
        try:
            wait_until(lambda: models.is_current() and models.lag() == 0, 60, "the rebuild")
            store.append(flat([a_call(service, T0 + timedelta(minutes=40))]))
            wait_until(lambda: models.lag() == 0, 30, "the follower to fold a new call")
        finally:
            assert follower.stop()
        assert totals(models, service, *WINDOW).calls == 301
        assert (
            counted(models, service)["whole"]
            == folded_inline(
                tmp_path, [*events, *flat([a_call(service, T0 + timedelta(minutes=40))])], service
            )["whole"]
        )


@pytest.mark.slow
def test_a_follower_killed_while_rebuilding_leaves_them_as_they_were_and_its_successor_rebuilds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    service = unique_service()
    events = traffic(service, 4000)
    with SQLiteStore(path) as store:
        for start in range(0, len(events), 1000):
            store.append(events[start : start + 1000])
    _set_version(path, SQLiteReadModels.version - 1)
    with SQLiteStore(path, project=False) as store:
        models = read_models_of(store)
        follower = FollowerProcess(path, busy_timeout_ms=10_000).start()
        killed = 0
        try:
            # SIGKILL the follower again and again, whatever it is doing: its
            # replay is one transaction, so the read models are either as
            # they were (outdated) or rebuilt whole, never half.
            while killed < 3 and not models.is_current():
                time.sleep(0.15)
                if follower.pid is not None:
                    killed = kill_and_await_its_successor(follower, killed)
            wait_until(lambda: models.is_current() and models.lag() == 0, 120, "the rebuild")
        finally:
            assert follower.stop(), "the follower did not stop by itself"
        assert killed >= 1
        rollup = totals(models, service, *WINDOW)
        assert (rollup.calls, rollup.errors) == (4000, 800)
        assert counted(models, service) == folded_inline(tmp_path, events, service)


def test_a_follower_stopped_while_rebuilding_leaves_the_read_models_as_they_were(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    service = unique_service()
    with SQLiteStore(path) as store:
        store.append(traffic(service, 50))
    _set_version(path, SQLiteReadModels.version - 1)
    with SQLiteStore(path, project=False) as store:
        models = store.read_models
        rows = models._db.execute("SELECT count(*) FROM rm_service_rollups").fetchone()[0]
        assert rows > 0
        stop = threading.Event()
        stop.set()
        follower = Follower(models)
        follower.run(stop)
        assert follower.rebuilt == 0 and follower.folded == 0
        assert not models.is_current()
        # Rolled back: the replay had emptied the tables before its first batch.
        assert models._db.execute("SELECT count(*) FROM rm_service_rollups").fetchone()[0] == rows


def test_a_follower_leaves_read_models_of_a_newer_version_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.db"
    service = unique_service()
    with SQLiteStore(path) as store:
        store.append(traffic(service, 20))
    _set_version(path, SQLiteReadModels.version + 1)
    with SQLiteStore(path, project=False) as store:
        follower = Follower(store.read_models)
        follower.start()
        follower.stop(timeout=10)
        assert follower.rebuilt == 0 and follower.folded == 0
    db = sqlite3.connect(read_models_path(path))
    assert db.execute("SELECT value FROM rm_meta WHERE name = 'version'").fetchone() == (
        SQLiteReadModels.version + 1,
    )
    db.close()
    assert "built by a newer eventtrail" in caplog.text
