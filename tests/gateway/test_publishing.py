"""Publishing off the request path: a queue that fails, a spill file that
holds the events meanwhile, delivery after recovery, and shutdown flushing."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventtrail.calls import call_request
from eventtrail.config import load_settings
from eventtrail.consumer import Consumer
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import Event
from eventtrail.gateway.metrics import GatewayMetrics
from eventtrail.gateway.offload import ProcessQueue
from eventtrail.gateway.publisher import Publisher
from eventtrail.gateway.records import (
    UnsentRecords,
    bodies_of,
    call_id_of,
    encoded,
    error_record,
    new_call,
    pack,
    request_record,
)
from eventtrail.gateway.spill import Journal, SpillFile
from eventtrail.queue import DeadLetter, Message, Queue, QueueError, QueueStats
from eventtrail.worker import Worker
from tests.faults.conftest import LockHolder
from tests.gateway.conftest import GatewayFactory, queued_events


class SwitchableQueue(Queue):
    """The SQLite queue, with sends that fail while ``down`` is set."""

    def __init__(self, inner: SQLiteQueue) -> None:
        self.inner = inner
        self.max_receives = inner.max_receives
        self.down = threading.Event()
        self.failed_sends = 0

    def send(self, bodies: Sequence[str]) -> list[str]:
        if self.down.is_set():
            self.failed_sends += 1
            raise QueueError("queue unavailable (switched off by the test)")
        return self.inner.send(bodies)

    def receive(
        self, max_messages: int, *, visibility_timeout: float, wait_seconds: float = 0.0
    ) -> list[Message]:
        return self.inner.receive(
            max_messages, visibility_timeout=visibility_timeout, wait_seconds=wait_seconds
        )

    def ack(self, messages: Sequence[Message]) -> None:
        self.inner.ack(messages)

    def release(self, messages: Sequence[Message], *, delay: float, error: str) -> None:
        self.inner.release(messages, delay=delay, error=error)

    def dead_letter(self, message: Message, reason: str) -> None:
        self.inner.dead_letter(message, reason)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self.inner.dead_letters(limit)

    def get_dead_letter(self, message_id: str) -> DeadLetter:
        return self.inner.get_dead_letter(message_id)

    def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        return self.inner.redrive(message_ids)

    def stats(self) -> QueueStats:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()


def _wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_queue_outage_every_request_served_every_event_delivered_once(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    queue = SwitchableQueue(SQLiteQueue(tmp_path / "queue.db"))
    gateway = make_gateway(
        queue=queue,
        publisher_options={
            "flush_interval": 0.01,
            "batch_size": 20,
            "retry_interval": 0.05,
            "max_retry_interval": 0.2,
        },
    )
    publisher = gateway.publisher
    assert publisher is not None

    client = httpx.Client(limits=httpx.Limits(max_connections=8))

    def call(index: int) -> int:
        answer = client.get(f"{gateway.url}/echo/{index}", headers={"X-Request-Id": f"req-{index}"})
        return answer.status_code

    with client, ThreadPoolExecutor(8) as pool:
        before = list(pool.map(call, range(100)))
        _wait_until(lambda: publisher.counts().sent == 200)
        queue.down.set()
        during = list(pool.map(call, range(100, 300)))
        _wait_until(lambda: publisher.counts().buffered == 0)
        metrics = client.get(f"{gateway.url}/metrics").text
        queue.down.clear()
        after = list(pool.map(call, range(300, 400)))
    assert before + during + after == [200] * 400
    assert queue.failed_sends >= 1
    assert "eventtrail_gateway_queue_errors_total 0" not in metrics
    assert "eventtrail_gateway_events_spilled_total 0" not in metrics
    _wait_until(lambda: publisher.counts().spill_pending == 0 and publisher.counts().sent == 800)
    counts = gateway.stop()
    assert counts is not None
    assert (counts.published, counts.sent, counts.dropped, counts.buffered) == (800, 800, 0, 0)
    assert counts.spilled >= 1

    # Every event is in the queue exactly once, and lands in the store once.
    events = queued_events(tmp_path / "queue.db")
    assert len(events) == 800
    assert len({event.id for event in events}) == 800
    assert {event.request_id for event in events} == {f"req-{index}" for index in range(400)}
    with SQLiteQueue(tmp_path / "queue.db") as worker_queue, SQLiteStore(tmp_path / "events.db") as store:
        report = Worker(worker_queue, Consumer(store), visibility_timeout=0.1).run(drain=True)
        assert report.stored == 800
        assert store.count() == 800
        assert len(store.flow("req-250")) == 2


def test_with_no_queue_and_no_spill_file_events_are_counted_as_dropped(tmp_path: Path) -> None:
    queue = SwitchableQueue(SQLiteQueue(tmp_path / "queue.db"))
    queue.down.set()
    publisher = Publisher(queue, None, flush_interval=0.01).start()
    for index in range(10):
        publisher.publish(call_request(f"r{index}", "c", "S", "GET", "/"))
    counts = publisher.close()
    assert (counts.published, counts.sent, counts.dropped) == (10, 0, 10)


def test_a_full_buffer_counts_drops_instead_of_blocking(tmp_path: Path) -> None:
    publisher = Publisher(SQLiteQueue(tmp_path / "queue.db"), buffer_size=5)  # not started: nothing drains
    for index in range(8):
        publisher.publish(call_request(f"r{index}", "c", "S", "GET", "/"))
    assert publisher.counts().dropped == 3
    assert publisher.close().sent == 5


def test_events_spilled_by_a_previous_run_are_sent_by_the_next(tmp_path: Path) -> None:
    queue = SwitchableQueue(SQLiteQueue(tmp_path / "queue.db"))
    queue.down.set()
    first = Publisher(queue, SpillFile(tmp_path / "spill.db"), flush_interval=0.01).start()
    for index in range(7):
        first.publish(call_request(f"r{index}", "c", "S", "GET", "/"))
    assert first.close().spill_pending == 7
    second = Publisher(
        SQLiteQueue(tmp_path / "queue.db"), SpillFile(tmp_path / "spill.db"), flush_interval=0.01
    ).start()
    _wait_until(lambda: second.counts().spill_pending == 0)
    assert second.close().sent == 7
    assert sorted(event.request_id for event in queued_events(tmp_path / "queue.db")) == [
        f"r{index}" for index in range(7)
    ]


def test_shutdown_flushes_what_is_buffered(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    # A long flush interval and a large batch: nothing leaves before shutdown.
    gateway = make_gateway(publisher_options={"flush_interval": 60, "batch_size": 10_000})
    for index in range(25):
        assert httpx.get(f"{gateway.url}/echo/{index}").status_code == 200
    publisher = gateway.publisher
    assert publisher is not None
    # A response event is published once its body went out: maybe just after the client read it.
    _wait_until(lambda: publisher.counts().published == 50)
    assert publisher.counts().buffered == 50
    assert queued_events(tmp_path / "queue.db") == []
    counts = gateway.stop()
    assert counts is not None
    assert (counts.sent, counts.buffered) == (50, 0)
    assert len(queued_events(tmp_path / "queue.db")) == 50


def test_the_queue_process_is_replaced_when_it_dies(tmp_path: Path) -> None:
    settings = load_settings({"backend": "local", "data_dir": str(tmp_path)}, environ={})
    queue = ProcessQueue(settings)
    publisher = Publisher(
        queue, SpillFile(tmp_path / "spill.db"), flush_interval=0.01, retry_interval=0.05
    ).start()
    publisher.publish(call_request("before", "c", "S", "GET", "/"))
    _wait_until(lambda: publisher.counts().sent == 1)
    queue._process.kill()  # the child dies: the next send fails, spills, then a new child takes over
    for index in range(5):
        publisher.publish(call_request(f"after-{index}", "c", "S", "GET", "/"))
    _wait_until(lambda: publisher.counts().sent == 6)
    counts = publisher.close()
    # A new child that is slow to start counts as the queue being down too.
    assert counts.queue_errors >= 1
    assert (counts.spilled, counts.dropped, counts.spill_pending) == (5, 0, 0)
    assert sorted(event.request_id for event in queued_events(tmp_path / "queue.db")) == [
        *(f"after-{index}" for index in range(5)),
        "before",
    ]


def _break_queue_file(path: Path, broken: bool) -> None:
    """Make every send to the queue file fail (or work again) by moving the
    table its sends write to."""
    names = ("messages", "messages_away") if broken else ("messages_away", "messages")
    with sqlite3.connect(path) as db:
        db.execute(f"ALTER TABLE {names[0]} RENAME TO {names[1]}")


def test_the_queue_process_makes_the_bodies_and_returns_those_it_could_not_send(tmp_path: Path) -> None:
    settings = load_settings({"backend": "local", "data_dir": str(tmp_path)}, environ={})
    call = new_call(1_700_000_000_123_456_789)
    call_id = call_id_of(call)
    records = [
        request_record(1_700_000_000_123_456_789, "r1", call, "S", "Gateway", "GET", "/x", {"query": "a=1"}),
        error_record(1_700_000_000_223_456_789, "r1", call, "S", "Gateway", "timeout", 100.0, "no answer"),
    ]
    queue = ProcessQueue(settings)
    try:
        assert queue.send_packed([pack(records)]) == []
        _break_queue_file(tmp_path / "queue.db", broken=True)
        with pytest.raises(UnsentRecords) as unsent:
            queue.send_packed([pack(records[:1]), pack(records[1:])])
        assert unsent.value.bodies == bodies_of(records)
    finally:
        queue.close()
    _break_queue_file(tmp_path / "queue.db", broken=False)
    sent = queued_events(tmp_path / "queue.db")
    assert [event.type for event in sent] == ["MICROSERVICE_REQUEST", "MICROSERVICE_ERROR"]
    assert sent[0].timestamp == "2023-11-14T22:13:20.123456Z"
    assert sent[0].data == {"Name": "S", "callId": call_id, "method": "GET", "path": "/x", "query": "a=1"}
    assert sent[1].data["elapsedMs"] == 100.0 and sent[1].data["detail"] == "no answer"


def test_an_outage_of_the_queue_process_spills_then_delivers_every_event_once(tmp_path: Path) -> None:
    settings = load_settings({"backend": "local", "data_dir": str(tmp_path)}, environ={})
    publisher = Publisher(
        ProcessQueue(settings),
        SpillFile(tmp_path / "spill.db"),
        flush_interval=0.01,
        retry_interval=0.05,
        max_retry_interval=0.1,
    ).start()
    for index in range(10):
        publisher.publish(call_request(f"before-{index}", "c", "S", "GET", "/"))
    _wait_until(lambda: publisher.counts().sent == 10)
    _break_queue_file(tmp_path / "queue.db", broken=True)
    for index in range(20):
        publisher.publish(call_request(f"during-{index}", "c", "S", "GET", "/"))
    _wait_until(lambda: publisher.counts().spilled == 20)
    _break_queue_file(tmp_path / "queue.db", broken=False)
    _wait_until(lambda: publisher.counts().sent == 30)
    counts = publisher.close()
    assert counts.queue_errors >= 1 and (counts.dropped, counts.spill_pending) == (0, 0)
    request_ids = [event.request_id for event in queued_events(tmp_path / "queue.db")]
    assert sorted(request_ids) == sorted(
        [*(f"before-{index}" for index in range(10)), *(f"during-{index}" for index in range(20))]
    )


def test_a_removal_the_spill_file_refuses_never_sends_a_body_twice(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.db")
    spill.append(
        bodies_of([encoded(call_request(f"old-{index}", "c", "S", "GET", "/")) for index in range(30)])
    )
    queue = SQLiteQueue(tmp_path / "queue.db")
    # Another connection holds the spill file's write lock: every deletion
    # of what was sent fails (after the spill file's 1 s busy timeout).
    with LockHolder(tmp_path / "spill.db"):
        publisher = Publisher(queue, spill, batch_size=10, flush_interval=0.01).start()
        for index in range(5):
            publisher.publish(call_request(f"new-{index}", "c", "S", "GET", "/"))
        _wait_until(lambda: publisher.counts().sent == 35, timeout=20)
        during = publisher.counts()
    _wait_until(lambda: SpillFile(tmp_path / "spill.db").pending == 0)
    counts = publisher.close()
    assert during.spill_errors >= 1 and during.spill_pending == 0
    assert (counts.published, counts.inherited, counts.sent, counts.dropped) == (5, 30, 35, 0)
    request_ids = [event.request_id for event in queued_events(tmp_path / "queue.db")]
    assert sorted(request_ids) == sorted([*(f"old-{i}" for i in range(30)), *(f"new-{i}" for i in range(5))])


def test_a_body_too_large_for_the_queue_is_dropped_and_counted_and_the_rest_flows(tmp_path: Path) -> None:
    def event(request_id: str, path_length: int = 1) -> Event:
        return call_request(request_id, "c", "S", "GET", "/" + "x" * path_length)

    spill = SpillFile(tmp_path / "spill.db")
    # An oversized body at the head of the spill file, left by an older run.
    spill.append(bodies_of([encoded(event("huge-old", 5000)), encoded(event("small-old"))]))
    publisher = Publisher(
        SQLiteQueue(tmp_path / "queue.db"), spill, flush_interval=0.01, max_body_bytes=4000
    ).start()
    for request_id, path_length in (("small-1", 1), ("huge-new", 6000), ("small-2", 1)):
        publisher.publish(event(request_id, path_length))
    _wait_until(lambda: publisher.counts().sent == 3 and publisher.counts().spill_pending == 0)
    metrics = GatewayMetrics().render(publisher).decode()
    counts = publisher.close()
    assert (counts.published, counts.inherited) == (3, 2)
    assert (counts.sent, counts.dropped, dict(counts.dropped_by_reason)) == (3, 2, {"too_large": 2})
    assert 'eventtrail_gateway_events_dropped_by_reason_total{reason="too_large"} 2' in metrics
    assert "eventtrail_gateway_events_dropped_total 2" in metrics
    assert sorted(e.request_id for e in queued_events(tmp_path / "queue.db")) == [
        "small-1",
        "small-2",
        "small-old",
    ]


def test_what_a_killed_predecessor_left_in_the_journal_is_sent_by_the_next_start(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.db")
    # A predecessor journals two frames and is killed before confirming them.
    predecessor = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\n"
            "from eventtrail.calls import call_request\n"
            "from eventtrail.gateway.records import encoded, pack\n"
            "from eventtrail.gateway.spill import Journal\n"
            "journal = Journal(sys.argv[1])\n"
            "records = [encoded(call_request(f'left-{i}', 'c', 'S', 'GET', '/')) for i in range(12)]\n"
            "journal.write(pack(records[:5]))\n"
            "journal.write(pack(records[5:]))\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
            str(tmp_path / "spill.db-journal"),
        ],
        capture_output=True,
        timeout=60,
    )
    assert predecessor.returncode == -signal.SIGKILL, predecessor.stderr
    publisher = Publisher(SQLiteQueue(tmp_path / "queue.db"), spill, flush_interval=0.01).start()
    _wait_until(lambda: publisher.counts().sent == 12)
    counts = publisher.close()
    assert (counts.published, counts.inherited, counts.sent, counts.dropped) == (0, 12, 12, 0)
    assert sorted(event.request_id for event in queued_events(tmp_path / "queue.db")) == sorted(
        f"left-{index}" for index in range(12)
    )
    assert list(tmp_path.glob("spill.db-journal.*")) == []


def test_the_journal_keeps_what_is_unsent_at_close_for_the_next_start(tmp_path: Path) -> None:
    queue = SwitchableQueue(SQLiteQueue(tmp_path / "queue.db"))
    queue.down.set()
    first = Publisher(queue, None, journal=Journal(tmp_path / "journal"), flush_interval=0.01)
    first.start()
    for index in range(4):
        first.publish(call_request(f"r{index}", "c", "S", "GET", "/"))
    counts = first.close()
    # No spill file: the queue being down drops them, counted, and the
    # journal is emptied since every frame was dealt with.
    assert (counts.dropped, dict(counts.dropped_by_reason)) == (4, {"no_spill_file": 4})
    assert [path.stat().st_size for path in tmp_path.glob("journal.*")] == []


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=0, max_value=10_000))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_torn_journal_reads_back_as_a_prefix_of_its_frames(
    tmp_path: Path, frames: list[bytes], cut: int
) -> None:
    folder = tmp_path / uuid.uuid4().hex
    journal = Journal(folder / "journal", empty_bytes=1)
    numbers = [journal.write(frame) for frame in frames]
    assert numbers == list(range(1, len(frames) + 1))
    [path] = folder.glob("journal.*")
    assert list(Journal.frames(path)) == frames
    data = path.read_bytes()
    path.write_bytes(data[: min(cut, len(data))])
    read = list(Journal.frames(path))
    assert read == frames[: len(read)]
    journal.confirm(len(frames))
    assert path.stat().st_size == 0


@pytest.mark.slow
@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=40)), min_size=1, max_size=6))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_sequence_of_outages_sends_each_event_once_and_counts_it_once(
    tmp_path: Path, phases: list[tuple[bool, int]]
) -> None:
    folder = tmp_path / uuid.uuid4().hex
    queue = SwitchableQueue(SQLiteQueue(folder / "queue.db"))
    publisher = Publisher(
        queue,
        SpillFile(folder / "spill.db"),
        batch_size=7,
        flush_interval=0.005,
        retry_interval=0.01,
        max_retry_interval=0.02,
    ).start()
    published = 0
    for down, count in phases:
        (queue.down.set if down else queue.down.clear)()
        for _ in range(count):
            publisher.publish(call_request(f"r{published}", "c", "S", "GET", "/"))
            published += 1
        time.sleep(0.02)
        snapshot = publisher.counts()
        assert snapshot.sent <= snapshot.published
    queue.down.clear()
    _wait_until(lambda: publisher.counts().sent == published and publisher.counts().spill_pending == 0)
    counts = publisher.close()
    assert (counts.published, counts.sent, counts.buffered, counts.dropped) == (published, published, 0, 0)
    assert counts.published + counts.inherited == counts.sent + counts.buffered + counts.spill_pending
    request_ids = [event.request_id for event in queued_events(folder / "queue.db")]
    assert sorted(request_ids) == sorted(f"r{index}" for index in range(published))


_SPILL_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(min_value=0, max_value=5)),
        st.tuples(st.just("send"), st.integers(min_value=1, max_value=4)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=25,
)


@pytest.mark.slow
@given(_SPILL_STEPS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_spill_file_hands_each_body_back_once_in_order_and_counts_what_waits(
    tmp_path: Path, steps: list[tuple[str, int]]
) -> None:
    path = tmp_path / uuid.uuid4().hex / "spill.db"
    spill = SpillFile(path)
    waiting: list[str] = []
    handed: list[str] = []
    made = 0
    for action, amount in steps:
        if action == "append":
            bodies = [f"body-{made + index}" for index in range(amount)]
            made += amount
            spill.append(bodies)
            waiting += bodies
        elif action == "send":
            mark, bodies = spill.oldest(amount)
            assert bodies == waiting[:amount]
            spill.sent(mark, len(bodies))
            handed += bodies
            del waiting[: len(bodies)]
        else:
            spill.close()
            spill = SpillFile(path)
        assert spill.pending == len(waiting)
    spill.close()
    assert len(set(handed)) == len(handed)
    assert handed + waiting == [f"body-{index}" for index in range(made)]
