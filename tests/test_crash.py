"""Delivery under failure, with real worker processes on real SQLite files."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import encode_event
from tests.cli import run, spawn
from tests.contract.store_contract import make_event

pytestmark = pytest.mark.slow


def fill_queue(data_dir: Path, count: int) -> set[str]:
    events = [make_event() for _ in range(count)]
    with SQLiteQueue(data_dir / "queue.db") as queue:
        queue.send([encode_event(e).decode() for e in events])
    return {e.id for e in events}


def stored_ids(data_dir: Path) -> list[str]:
    db = sqlite3.connect(data_dir / "events.db")
    try:
        return [row[0] for row in db.execute("SELECT id FROM events")]
    finally:
        db.close()


def in_flight_event_ids(data_dir: Path) -> set[str]:
    db = sqlite3.connect(data_dir / "queue.db")
    try:
        rows = db.execute(
            "SELECT body FROM messages JOIN deliveries USING (seq) WHERE visible_at > ?", (time.time(),)
        )
        return {json.loads(body)["id"] for (body,) in rows}
    finally:
        db.close()


def test_a_worker_killed_mid_batch_loses_nothing_and_stores_nothing_twice(tmp_path: Path) -> None:
    ids = fill_queue(tmp_path, 20_000)
    SQLiteStore(tmp_path / "events.db").close()
    worker = spawn(tmp_path, "worker", "--batch-size", "1000", "--visibility-timeout", "2", "-q")
    # Freeze the worker until it is caught holding a batch that it has stored
    # but not yet acknowledged: the worst moment to die.
    caught = False
    deadline = time.monotonic() + 60
    try:
        while not caught and time.monotonic() < deadline and worker.poll() is None:
            worker.send_signal(signal.SIGSTOP)
            caught = bool(in_flight_event_ids(tmp_path) & set(stored_ids(tmp_path)))
            if not caught:
                worker.send_signal(signal.SIGCONT)
                time.sleep(0.001)
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
    ids = fill_queue(tmp_path, 10_000)
    SQLiteStore(tmp_path / "events.db").close()
    workers = [spawn(tmp_path, "worker", "--drain", "--batch-size", "100") for _ in range(2)]
    try:
        outputs = [w.communicate(timeout=120) for w in workers]
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
