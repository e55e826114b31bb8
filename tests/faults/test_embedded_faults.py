"""The embedded backend under real faults: a write lock held by another
connection past the busy timeout, and a filesystem that fills.

Each test runs the real ``eventtrail`` command in child processes and ends by
comparing the ids sent with the ids stored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import encode_event
from eventtrail.retry import Backoff
from tests.cli import run, spawn
from tests.contract.store_contract import make_event
from tests.faults.conftest import LockHolder, TmpfsFactory, child_pids, eventtrail_process, fill, wait_until

pytestmark = pytest.mark.slow

#: Far below the default 10 s, so that a lock held for a few seconds outlasts it.
SHORT_BUSY = {"EVENTTRAIL_BUSY_TIMEOUT": "0.3"}


def events_file(folder: Path, count: int, name: str) -> tuple[Path, set[str]]:
    events = [make_event() for _ in range(count)]
    path = folder / name
    path.write_text("".join(encode_event(event).decode() + "\n" for event in events))
    return path, {event.id for event in events}


class Unreadable(Exception):
    """The file could not be read at this moment (locked, or a WAL lock race)."""


def stored_ids(data_dir: Path) -> set[str]:
    """The ids in the store, read while a worker writes (retried briefly when
    SQLite reports a lock race, as a reader may see under load)."""
    path = data_dir / "events.db"

    def read() -> set[str]:
        if not path.exists():
            return set()
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return {row[0] for row in db.execute("SELECT id FROM events")}
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_PROTOCOL):
                raise Unreadable(str(error)) from error
            if str(error).startswith("no such table"):
                return set()  # the file is made before the worker's first write creates the table
            raise
        finally:
            db.close()

    return Backoff(attempts=20, base=0.01, cap=0.5).run(read, retry_on=(Unreadable,))


def stop_worker(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGTERM)
    try:
        _, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    assert worker.returncode == 0, err
    assert "Traceback" not in err, err
    return err


def test_the_worker_waits_out_a_held_queue_lock_and_readers_still_answer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    first, sent = events_file(tmp_path, 500, "first.ndjson")
    assert run(data, "send", str(first), env=SHORT_BUSY).returncode == 0
    worker = spawn(data, "worker", "--batch-size", "100", env=SHORT_BUSY)
    try:
        wait_until(lambda: stored_ids(data) == sent, 60, "the first events to be stored")
        # Work for the worker, then the lock: an idle poll only reads, so the
        # lock matters to a worker with something to take or to acknowledge
        # (enough that the lock is taken before the worker is through it).
        second, more = events_file(tmp_path, 5000, "second.ndjson")
        sent |= more
        assert run(data, "send", str(second), env=SHORT_BUSY).returncode == 0
        with LockHolder(data / "queue.db"):
            # Held for several busy timeouts: receives and acks fail and are retried.
            time.sleep(3)
            status = run(data, "status", env=SHORT_BUSY)
            letters = run(data, "dlq", "list", env=SHORT_BUSY)
            blocked_send = run(data, "send", str(first), env=SHORT_BUSY, timeout=120)
        assert status.returncode == 0, status.stderr
        assert "visible:" in status.stdout
        assert letters.returncode == 0, letters.stderr
        assert "no dead letters" in letters.stderr
        # A send retries a while, then says why in one line.
        assert blocked_send.returncode == 1
        assert blocked_send.stderr.startswith("error:") and "locked by another process" in blocked_send.stderr
        assert "Traceback" not in blocked_send.stderr
        wait_until(lambda: stored_ids(data) == sent, 60, "every event sent to be stored")
    finally:
        log = stop_worker(worker)
    assert "queue unavailable" in log and "locked by another process" in log
    assert "queue back after" in log
    assert log.count("queue unavailable") == 1, log
    assert stored_ids(data) == sent


def test_the_worker_waits_out_a_held_store_lock_without_dead_letters(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    first, sent = events_file(tmp_path, 200, "first.ndjson")
    assert run(data, "send", str(first)).returncode == 0
    assert run(data, "worker", "--drain", env=SHORT_BUSY).returncode == 0
    second, more = events_file(tmp_path, 300, "second.ndjson")
    sent |= more
    with LockHolder(data / "events.db"):
        assert run(data, "send", str(second)).returncode == 0
        worker = spawn(data, "worker", "--max-receives", "2", env=SHORT_BUSY)
        try:
            # Long enough for two rounds of the consumer's own retries and a
            # retry delay: handing the batch back to the queue each time
            # would have spent both receives and dead-lettered everything.
            time.sleep(5)
            assert worker.poll() is None
        except BaseException:
            worker.kill()
            raise
    try:
        wait_until(lambda: stored_ids(data) == sent, 60, "every event sent to be stored")
    finally:
        log = stop_worker(worker)
    assert "store unavailable" in log and "store back after" in log
    with SQLiteQueue(data / "queue.db", read_only=True) as queue:
        assert queue.dead_letters() == []
        assert queue.stats().pending == 0
    assert stored_ids(data) == sent


def test_send_and_the_worker_on_a_filesystem_that_fills(tmp_path: Path, tmpfs: TmpfsFactory) -> None:
    # Room for both sends and the WAL files once the filler is gone.
    disk = tmpfs("8m")
    data = disk / "data"
    first, sent = events_file(tmp_path, 300, "first.ndjson")
    assert run(tmp_path, "send", str(first), env={"EVENTTRAIL_DATA_DIR": str(data)}).returncode == 0
    filler = fill(disk)
    second, unsent = events_file(tmp_path, 1500, "second.ndjson")
    refused = run(tmp_path, "send", str(second), env={"EVENTTRAIL_DATA_DIR": str(data)}, timeout=120)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), refused.stderr
    assert "disk is full" in lines[0] and str(data / "queue.db") in lines[0]

    worker = spawn(tmp_path, "worker", "--batch-size", "50", env={"EVENTTRAIL_DATA_DIR": str(data)})
    try:
        # Started on a full disk, it waits until it can open its files.
        time.sleep(3)
        assert worker.poll() is None
        assert stored_ids(data) == set()
        filler.unlink()
        wait_until(lambda: stored_ids(data) == sent, 60, "the first events to be stored")
        # The disk fills again while messages wait: the running worker waits.
        worker.send_signal(signal.SIGSTOP)
        assert run(tmp_path, "send", str(second), env={"EVENTTRAIL_DATA_DIR": str(data)}).returncode == 0
        sent |= unsent
        filler = fill(disk)
        worker.send_signal(signal.SIGCONT)
        time.sleep(3)
        assert worker.poll() is None
        filler.unlink()
        wait_until(lambda: stored_ids(data) == sent, 60, "every event sent to be stored")
    finally:
        worker.send_signal(signal.SIGCONT)
        log = stop_worker(worker)
    assert "cannot start yet" in log and "disk is full" in log, log
    assert "unavailable" in log and "back after" in log, log
    with SQLiteQueue(data / "queue.db", read_only=True) as queue:
        assert queue.dead_letters() == []
    assert stored_ids(data) == sent


def test_a_held_read_model_lock_never_holds_up_storing_and_is_waited_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    first, sent = events_file(tmp_path, 300, "first.ndjson")
    assert run(data, "send", str(first), env=SHORT_BUSY).returncode == 0
    worker = spawn(data, "worker", "--batch-size", "100", env=SHORT_BUSY)
    try:
        wait_until(lambda: stored_ids(data) == sent, 60, "the first events to be stored")
        wait_until(lambda: "up to date" in run(data, "status").stdout, 60, "the first events to be folded")
        with LockHolder(data / "events.read-models.db"):
            # Held for many busy timeouts: the follower cannot fold, the
            # worker stores regardless, and readers still answer.
            second, more = events_file(tmp_path, 300, "second.ndjson")
            sent |= more
            assert run(data, "send", str(second), env=SHORT_BUSY).returncode == 0
            wait_until(lambda: stored_ids(data) == sent, 60, "events stored while the read models are locked")
            time.sleep(2)
            behind = run(data, "status", env=SHORT_BUSY)
            assert behind.returncode == 0, behind.stderr
            assert "read models: 300 events behind the store" in behind.stdout
        wait_until(lambda: "up to date" in run(data, "status").stdout, 60, "the follower to catch up")
    finally:
        log = stop_worker(worker)
    assert "cannot update the read models yet" in log and "locked by another process" in log
    assert log.count("cannot update the read models yet") == 1, log
    assert "updating the read models again" in log
    assert stored_ids(data) == sent


def _follower_of(pid: int) -> int | None:
    """The worker's follower: its child started by multiprocessing's spawn
    (its other child is multiprocessing's resource tracker)."""
    for child in child_pids(pid):
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return None


def _stored(data_dir: Path) -> int:
    with SQLiteStore(data_dir / "events.db", read_only=True) as store:
        return store.count()


def test_a_sigterm_to_the_whole_group_stops_the_worker_in_order(tmp_path: Path) -> None:
    """A service manager stops a unit by sending SIGTERM to every process of
    its group: the worker's follower (and the gateway's queue process) leave
    that to their parent, which stops them in order, instead of dying of it
    and being restarted while their parent stops."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    events = [make_event() for _ in range(20)]
    with eventtrail_process(["worker"], data_dir, own_group=True) as worker:
        wait_until(lambda: _follower_of(worker.process.pid) is not None, 30, "the worker's follower")
        # Past the follower's start, so that only ignoring the signal keeps it alive.
        time.sleep(1.0)
        with SQLiteQueue(data_dir / "queue.db") as queue:
            queue.send([encode_event(event).decode() for event in events])
        wait_until(lambda: _stored(data_dir) == len(events), 30, "the events stored")
        os.killpg(worker.process.pid, signal.SIGTERM)
        worker.process.wait(60)
        log = worker.log
    assert worker.process.returncode == 0, log
    assert "follower exited" not in log and "starting another" not in log, log
