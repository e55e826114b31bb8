"""The gateway under real faults: its queue locked by another connection past
the busy timeout, the gateway SIGKILLed under load, its spill file on a tiny
filesystem that fills and frees, the worker child of ``up`` killed. Every
test ends by comparing the calls answered (or events published) with what
was stored or queued."""

from __future__ import annotations

import collections
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from eventtrail.calls import call_request
from eventtrail.config import load_settings
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.event import parse_event
from eventtrail.gateway.offload import ProcessQueue
from eventtrail.gateway.publisher import Publisher
from eventtrail.gateway.spill import SpillFile
from tests.faults.conftest import (
    CallLoad,
    LockHolder,
    TmpfsFactory,
    drain_into_store,
    eventtrail_process,
    fill,
    stop_process,
    stored_request_ids,
    wait_until,
    write_gateway_config,
)
from tests.servers import free_port

pytestmark = pytest.mark.slow

# Past SQLite's busy timeout in the queue (10 s): every attempt to write the
# queue while the lock is held fails.
LOCK_SECONDS = 11.0

# The documented bound (README, "What a crash can lose"): a killed gateway
# loses at most the calls answered in the last few milliseconds before the
# kill. The journal is written every 5 ms; the rest is slack for a thread
# waiting for the CPU on a loaded 2-core machine.
LOSS_WINDOW_SECONDS = 0.1


def _metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name.removeprefix("eventtrail_gateway_")] = float(value)
    return found


def _queued_bodies(path: Path) -> list[str]:
    """Every body waiting in the queue file (left waiting)."""
    with SQLiteQueue(path) as queue:
        messages = queue.receive(1_000_000, visibility_timeout=600)
        queue.release(messages, delay=0, error="")
    return [message.body for message in messages]


def _assert_each_queued_once(path: Path) -> int:
    ids = [parse_event(body).id for body in _queued_bodies(path)]
    duplicates = [event_id for event_id, count in collections.Counter(ids).items() if count > 1]
    assert not duplicates, f"{len(duplicates)} events queued more than once"
    return len(ids)


def _wait_settled(port: int, what: str, timeout: float = 60) -> None:
    """Wait until the gateway on ``port`` holds no event in memory or in its spill file."""

    def settled() -> bool:
        found = _metrics(port)
        return found["events_buffered"] == 0 and found["events_spill_pending"] == 0

    try:
        wait_until(settled, timeout, what)
    except AssertionError as error:
        raise AssertionError(f"{error}; metrics: {_metrics(port)}") from None


def test_a_queue_locked_at_start_and_under_load_delays_delivery_and_loses_nothing(
    tmp_path: Path, echo_upstream: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    queue_path = data_dir / "queue.db"
    SQLiteQueue(queue_path).close()
    config = write_gateway_config(tmp_path / "gateway.toml", echo_upstream)
    port = free_port()
    url = f"http://127.0.0.1:{port}/echo"
    with LockHolder(queue_path) as lock:
        locked_at = time.monotonic()
        with eventtrail_process(
            ["gateway", "--config", str(config), "--port", str(port)], data_dir, port=port
        ) as gateway:
            # It started although the queue cannot be opened, and proxies.
            with CallLoad(url, threads=4) as first:
                time.sleep(2.0)
            assert len(first.answered) > 50 and first.failed == 0
            wait_until(lambda: _metrics(port)["events_spilled_total"] > 0, 10, "events spilled")
            time.sleep(max(0.0, LOCK_SECONDS - (time.monotonic() - locked_at)))
            lock.release()
            _wait_settled(port, "the spill file drained")
            # Locked again, now that the queue is open, under load.
            with CallLoad(url, threads=4) as second:
                time.sleep(1.0)
                lock.hold()
                time.sleep(LOCK_SECONDS)
                lock.release()
                time.sleep(1.0)
            assert len(second.answered) > 50 and second.failed == 0
            _wait_settled(port, "the spill file drained again")
            during = _metrics(port)
            log = stop_process(gateway)
    assert during["events_dropped_total"] == 0
    assert during["events_sent_total"] == during["events_published_total"]
    assert during["queue_errors_total"] >= 2
    assert "dropped" in log and "Traceback" not in log
    answered = set(first.answered) | set(second.answered)
    # Every event reached the queue once, and every call is stored.
    assert _assert_each_queued_once(queue_path) == 2 * len(answered)
    stored = drain_into_store(data_dir)
    assert set(stored) == answered
    assert set(stored.values()) == {2}


@pytest.mark.parametrize("queue_locked", [False, True], ids=["queue-healthy", "queue-locked"])
def test_a_gateway_killed_under_load_loses_at_most_its_last_milliseconds(
    tmp_path: Path, echo_upstream: str, queue_locked: bool
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    queue_path = data_dir / "queue.db"
    SQLiteQueue(queue_path).close()
    config = write_gateway_config(tmp_path / "gateway.toml", echo_upstream)
    port = free_port()
    url = f"http://127.0.0.1:{port}/echo"
    lock = LockHolder(queue_path)
    try:
        with (
            eventtrail_process(
                ["gateway", "--config", str(config), "--port", str(port)], data_dir, port=port
            ) as gateway,
            CallLoad(url, threads=6) as load,
        ):
            time.sleep(1.0)
            if queue_locked:
                lock.hold()
            time.sleep(3.0)
            killed_at = time.monotonic()
            gateway.process.send_signal(signal.SIGKILL)
            gateway.process.wait(30)
        lock.release()
        answered = dict(load.answered)
        assert len(answered) > 100
        port = free_port()
        with eventtrail_process(
            ["gateway", "--config", str(config), "--port", str(port)],
            data_dir,
            port=port,
            log_name="next.log",
        ) as successor:
            _wait_settled(port, "the successor sent what its predecessor left")
            inherited = _metrics(port)["events_inherited_total"]
            stop_process(successor)
    finally:
        lock.close()
    stored = drain_into_store(data_dir)
    missing = {request_id: at for request_id, at in answered.items() if request_id not in stored}
    halves = [request_id for request_id in answered if stored.get(request_id) == 1]
    late = sorted(killed_at - at for at in missing.values())
    print(
        f"{len(answered)} calls answered, {int(inherited)} events inherited from the journal,"
        f" {len(missing)} calls without events (answered {late[:3]} s before the kill),"
        f" {len(halves)} with only their request event"
    )
    assert all(killed_at - at <= LOSS_WINDOW_SECONDS for at in missing.values()), late
    assert all(killed_at - answered[request_id] <= LOSS_WINDOW_SECONDS for request_id in halves)
    if queue_locked:
        # Nothing could be sent for 3 s: the successor sends it from the
        # journal. With a healthy queue, whether anything was still unsent
        # at the instant of the kill is timing (none on a starved machine).
        assert inherited > 0


def test_a_spill_file_on_a_filesystem_that_fills_then_frees_keeps_every_event_once(
    tmp_path: Path, tmpfs: TmpfsFactory
) -> None:
    disk = tmpfs(size="2m")
    settings = load_settings({"backend": "local", "data_dir": str(tmp_path / "data")}, environ={})
    queue_path = Path(settings.queue_path)
    SQLiteQueue(queue_path).close()
    spill = SpillFile(disk / "spill.db")
    filler = fill(disk, leave_bytes=256 * 1024)
    total = 3_000
    with LockHolder(queue_path) as lock:
        publisher = Publisher(
            ProcessQueue(settings, call_timeout=0.5, open_wait=0.5),
            spill,
            flush_interval=0.01,
            retry_interval=0.05,
            max_retry_interval=0.2,
        ).start()
        for index in range(total):
            publisher.publish(call_request(f"r{index}", f"c{index}", "S", "GET", f"/{'x' * 200}"))
            if index % 100 == 0:
                time.sleep(0.01)
        wait_until(lambda: publisher.counts().spill_errors > 0, 30, "the spill file filled")
        full = publisher.counts()
        assert full.buffered > 0 and full.dropped == 0
        filler.unlink()  # the space frees: what waited in memory is spilled
        wait_until(lambda: publisher.counts().buffered == 0, 30, "everything spilled")
        lock.release()
    wait_until(lambda: publisher.counts().spill_pending == 0, 60, "the spill file drained")
    counts = publisher.close()
    assert counts.spilled > full.spilled and counts.spill_errors > 0
    assert (counts.published, counts.sent, counts.dropped, counts.buffered) == (total, total, 0, 0)
    assert counts.published + counts.inherited == counts.sent + counts.spill_pending + counts.dropped
    assert _assert_each_queued_once(queue_path) == total
    assert {parse_event(body).request_id for body in _queued_bodies(queue_path)} == {
        f"r{index}" for index in range(total)
    }


def test_up_restarts_a_killed_worker_and_every_call_is_stored(tmp_path: Path, echo_upstream: str) -> None:
    data_dir = tmp_path / "data"
    config = write_gateway_config(tmp_path / "gateway.toml", echo_upstream)
    port = free_port()
    url = f"http://127.0.0.1:{port}/echo"
    # What the killed worker had received comes back after this visibility timeout.
    with eventtrail_process(
        ["up", "--config", str(config), "--port", str(port)],
        data_dir,
        port=port,
        environment={"EVENTTRAIL_VISIBILITY_TIMEOUT": "3"},
    ) as up:
        wait_until(lambda: "worker: started" in up.log, 30, "the worker started")
        [first_pid] = re.findall(r"worker: started \(pid (\d+)\)", up.log)
        with CallLoad(url, threads=3) as load:
            time.sleep(1.0)
            os.kill(int(first_pid), signal.SIGKILL)
            wait_until(lambda: up.log.count("worker: started") == 2, 30, "the worker restarted")
            time.sleep(1.0)
        answered = set(load.answered)
        wait_until(
            lambda: answered <= set(stored_request_ids(data_dir)),
            60,
            "the restarted worker stored every call",
        )
        assert _metrics(port)["worker_restarts_total"] == 1
        log = stop_process(up, timeout=120)
    assert "killed by signal 9" in log and "restarted 1 times" in log
    stored = stored_request_ids(data_dir)
    assert set(stored) == answered and set(stored.values()) == {2}
