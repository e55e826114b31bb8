"""Delivery under failure, with real worker processes on real SQLite files."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import encode_event
from eventtrail.retry import Backoff, RetriesExhausted
from tests.cli import run, spawn
from tests.contract.store_contract import make_event

pytestmark = pytest.mark.slow


def fill_queue(data_dir: Path, count: int) -> set[str]:
    events = [make_event() for _ in range(count)]
    with SQLiteQueue(data_dir / "queue.db") as queue:
        queue.send([encode_event(e).decode() for e in events])
    return {e.id for e in events}


class FrozenMoment(Exception):
    """SQLite could not take a WAL read lock at this moment."""


def read_rows(path: Path, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on a file a (possibly frozen) worker writes.

    A reader that opens a WAL database while its writer is frozen by SIGSTOP
    can get SQLITE_PROTOCOL ("locking protocol": a race for a read lock that
    the frozen process cannot finish) or SQLITE_BUSY (the writer was frozen
    while restarting the WAL). Either may pass, so the read is retried
    briefly, then :class:`~eventtrail.retry.RetriesExhausted` says that this
    moment cannot be read. The file is opened read-only, so the reader never
    changes what the test looks at.
    """

    def attempt() -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=0.1)
        try:
            return db.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode in (sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_BUSY):
                raise FrozenMoment(str(error)) from error
            if str(error).startswith("no such table"):
                return []  # the file is made before the worker's first write creates the table
            raise
        finally:
            db.close()

    return Backoff(attempts=10, base=0.001, cap=0.05).run(attempt, retry_on=(FrozenMoment,))


def stored_ids(data_dir: Path) -> list[str]:
    return [row[0] for row in read_rows(data_dir / "events.db", "SELECT id FROM events")]


def in_flight_event_ids(data_dir: Path) -> set[str]:
    rows = read_rows(
        data_dir / "queue.db",
        "SELECT body FROM messages JOIN deliveries USING (seq) WHERE visible_at > ?",
        (time.time(),),
    )
    return {json.loads(body)["id"] for (body,) in rows}


def test_a_worker_killed_mid_batch_loses_nothing_and_stores_nothing_twice(tmp_path: Path) -> None:
    ids = fill_queue(tmp_path, 20_000)
    SQLiteStore(tmp_path / "events.db").close()
    worker = spawn(tmp_path, "worker", "--batch-size", "1000", "--visibility-timeout", "2", "-q")
    # Freeze the worker until it is caught holding a batch that it has stored
    # but not yet acknowledged: the worst moment to die.
    caught = False
    deadline = time.monotonic() + 120
    try:
        while not caught and time.monotonic() < deadline and worker.poll() is None:
            worker.send_signal(signal.SIGSTOP)
            try:
                caught = bool(in_flight_event_ids(tmp_path) & set(stored_ids(tmp_path)))
            except RetriesExhausted:
                # Frozen at a moment where no reader can get in: let it run
                # on and look at another moment.
                caught = False
            if not caught:
                worker.send_signal(signal.SIGCONT)
                # Let it run a while between two looks (on a loaded machine,
                # a fixed 1 ms starved it), stopping it at varied moments.
                time.sleep(random.uniform(0.001, 0.02))
                with contextlib.suppress(RetriesExhausted):
                    if not read_rows(tmp_path / "queue.db", "SELECT 1 FROM messages LIMIT 1"):
                        # It got through everything between two looks: give it more.
                        ids |= fill_queue(tmp_path, 20_000)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    assert caught, "the worker was never caught between storing and acknowledging a batch"
    stored_before = len(stored_ids(tmp_path))
    assert 0 < stored_before < len(ids)

    restarted = run(tmp_path, "worker", "--drain", "--visibility-timeout", "2", timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    stored = stored_ids(tmp_path)
    assert len(stored) == len(set(stored)) == len(ids)
    assert set(stored) == ids
    with SQLiteQueue(tmp_path / "queue.db") as queue:
        assert queue.stats().pending == 0
        assert queue.dead_letters() == []


def test_two_workers_on_one_queue_lose_nothing(tmp_path: Path) -> None:
    SQLiteQueue(tmp_path / "queue.db").close()
    SQLiteStore(tmp_path / "events.db").close()
    workers = [spawn(tmp_path, "worker", "--batch-size", "100") for _ in range(2)]
    ids: set[str] = set()
    try:
        for w in workers:
            assert w.stderr is not None
            # Both poll the empty queue before anything arrives, so neither
            # can find the work done by the other before it started.
            while "consuming" not in (line := w.stderr.readline()):
                assert line, f"a worker exited before consuming: {w.wait()}"
        # Messages arrive in small sends, as from a gateway, for as long as
        # both workers are busy: each receive races the other's.
        for _ in range(50):
            ids |= fill_queue(tmp_path, 200)
            time.sleep(0.02)
        deadline = time.monotonic() + 120
        while len(stored_ids(tmp_path)) < len(ids):
            assert time.monotonic() < deadline, "the workers did not store everything"
            assert all(w.poll() is None for w in workers)
            time.sleep(0.05)
        for w in workers:
            w.send_signal(signal.SIGTERM)
        outputs = [w.communicate(timeout=60) for w in workers]
    finally:
        for w in workers:
            w.kill()
            w.wait()
    assert [w.returncode for w in workers] == [0, 0], outputs
    received = [int(err.strip().splitlines()[-1].split(" received")[0]) for _, err in outputs]
    assert all(count > 0 for count in received), "both workers must have taken part"
    assert sum(received) == len(ids)
    stored = stored_ids(tmp_path)
    assert len(stored) == len(ids) and set(stored) == ids
    with SQLiteQueue(tmp_path / "queue.db") as queue:
        assert queue.stats().pending == 0


def test_sigterm_finishes_the_batch_and_exits_cleanly(tmp_path: Path) -> None:
    fill_queue(tmp_path, 5_000)
    SQLiteStore(tmp_path / "events.db").close()
    worker = spawn(tmp_path, "worker", "--batch-size", "500")
    try:
        deadline = time.monotonic() + 30
        while not stored_ids(tmp_path):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == 0, err
    assert "SIGTERM received: finishing the current batch" in err
    with SQLiteQueue(tmp_path / "queue.db") as queue:
        assert queue.stats().in_flight == 0
        remaining = queue.stats().visible
    assert len(stored_ids(tmp_path)) + remaining == 5_000
