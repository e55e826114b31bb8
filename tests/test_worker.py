from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from eventtrail.consumer import Consumer
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import CorruptStore, SQLiteStore
from eventtrail.event import Event, encode_event
from eventtrail.queue import QueueStats
from eventtrail.retry import Backoff
from eventtrail.store import AppendResult, AppendStatus
from eventtrail.worker import Worker, WorkerState, retry_delay
from tests.contract.store_contract import make_event
from tests.test_consumer import POISON, POISON_MAX_BODY_BYTES, FlakyStore

#: Waits short enough for tests (the worker's own default starts at 0.2 s).
QUICK = Backoff(attempts=None, base=0.001, cap=0.01)


def test_drain_stores_good_messages_and_dead_letters_poison(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    store = SQLiteStore(tmp_path / "events.db")
    events = [make_event() for _ in range(50)]
    queue.send(
        [encode_event(e).decode() for e in events[:25]]
        + ['{"broken": true}']
        + [encode_event(e).decode() for e in events[25:]]
    )
    total = Worker(queue, Consumer(store), batch_size=20).run(drain=True)
    assert (total.received, total.stored, total.dead_lettered, total.retried) == (51, 50, 1, 0)
    assert store.count() == 50
    (letter,) = queue.dead_letters()
    assert letter.body == '{"broken": true}'
    assert "unknown field" in letter.reason
    assert queue.stats().pending == 0


def test_a_store_outage_is_waited_out_without_spending_receives(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    store = FlakyStore(tmp_path / "events.db", failures=3)
    event = make_event()
    queue.send([encode_event(event).decode()])
    states: list[WorkerState] = []
    worker = Worker(queue, Consumer(store, attempts=1), backoff=QUICK, on_state=states.append)
    total = worker.run(drain=True)
    assert (total.received, total.retried, total.stored, total.dead_lettered) == (1, 0, 1, 0)
    assert store.calls == 4
    assert states == [WorkerState.STORE_UNAVAILABLE, WorkerState.RUNNING]
    assert worker.state is WorkerState.RUNNING
    assert store.flow(event.request_id) == [event]


def test_a_store_that_never_recovers_is_waited_for_until_stopped(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db", max_receives=2)
    store = FlakyStore(tmp_path / "events.db", failures=10**9)
    queue.send([encode_event(make_event()).decode()])
    stop = threading.Event()
    worker = Worker(queue, Consumer(store, attempts=1), backoff=QUICK, visibility_timeout=60)
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop, "drain": True})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while store.calls < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.calls >= 20
        assert worker.state is WorkerState.STORE_UNAVAILABLE
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    # Handed back at once, not spent: it is neither a dead letter nor hidden.
    assert queue.dead_letters() == []
    assert (queue.stats().visible, queue.stats().in_flight) == (1, 0)


class RefusingStore(SQLiteStore):
    """A real store that answers every event with FAILED (a partial failure,
    such as DynamoDB's UnprocessedItems), rather than raising."""

    def append(self, events: Sequence[Event]) -> list[AppendResult]:
        return [AppendResult(AppendStatus.FAILED, "throttled")] * len(events)


def test_messages_the_store_keeps_refusing_end_in_the_dead_letters(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db", max_receives=3)
    store = RefusingStore(tmp_path / "events.db")
    queue.send([encode_event(make_event()).decode()])
    total = Worker(queue, Consumer(store, attempts=1), retry_base=0.01).run(drain=True)
    assert total.retried == 3
    # The fourth receive moved it to the dead letters: the report counts it.
    assert total.dead_lettered == 1
    assert total.reasons["not processed after 3 receives"] == 1
    (letter,) = queue.dead_letters()
    assert letter.reason == "throttled"


def test_stop_finishes_the_batch_in_progress(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    store = SQLiteStore(tmp_path / "events.db")
    queue.send([encode_event(make_event()).decode() for _ in range(10)])
    stop = threading.Event()
    worker = Worker(queue, Consumer(store), batch_size=5)
    total = worker.run(stop=stop, on_batch=lambda _: stop.set())
    assert total.received == 5 and store.count() == 5
    assert queue.stats().visible == 5 and queue.stats().in_flight == 0


def test_a_polling_worker_picks_up_new_messages(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    store = SQLiteStore(tmp_path / "events.db")
    stop = threading.Event()
    worker = Worker(queue, Consumer(store), wait_seconds=0.2)
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    thread.start()
    try:
        event = make_event()
        queue.send([encode_event(event).decode()])
        deadline = time.monotonic() + 5
        while not store.flow(event.request_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.flow(event.request_id) == [event]
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_retry_delay_doubles_up_to_a_cap() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert retry_delay(20) == 60


def test_every_poison_kind_is_dead_lettered_and_the_valid_messages_of_its_batches_stored(
    tmp_path: Path,
) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    store = SQLiteStore(tmp_path / "events.db")
    poison = [kind for kind in POISON if kind.sqlite]
    good = [make_event() for _ in range(2 * len(poison))]
    bodies = [encode_event(event).decode() for event in good]
    for index, kind in enumerate(poison):
        bodies.insert(3 * index + 1, kind.body)
    queue.send(bodies)
    # Small batches: every batch mixes valid messages with poison.
    worker = Worker(queue, Consumer(store, max_body_bytes=POISON_MAX_BODY_BYTES), batch_size=7)

    total = worker.run(drain=True)

    assert (total.received, total.stored, total.dead_lettered, total.retried) == (
        len(bodies),
        len(good),
        len(poison),
        0,
    )
    assert store.count() == len(good)
    for event in good:
        assert store.flow(event.request_id) == [event]
    letters = {letter.body: letter for letter in queue.dead_letters(limit=len(poison) + 1)}
    assert len(letters) == len(poison)
    for kind in poison:
        assert letters[kind.body].receive_count == 1, kind.name
        assert kind.reason in letters[kind.body].reason, (kind.name, letters[kind.body].reason)
    assert queue.stats().pending == 0


def test_a_polling_worker_keeps_running_through_poison(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    store = SQLiteStore(tmp_path / "events.db")
    stop = threading.Event()
    worker = Worker(queue, Consumer(store, max_body_bytes=POISON_MAX_BODY_BYTES), wait_seconds=0.2)
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    thread.start()
    try:
        poison = [kind.body for kind in POISON if kind.sqlite]
        for round_ in range(2):
            # Every poison, then a valid event: only a worker still polling
            # after the poison can store it.
            queue.send(poison)
            event = make_event()
            queue.send([encode_event(event).decode()])
            deadline = time.monotonic() + 10
            while not store.flow(event.request_id) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.flow(event.request_id) == [event], f"round {round_}"
            assert thread.is_alive()
        deadline = time.monotonic() + 10
        while len(queue.dead_letters(limit=1000)) < 2 * len(poison) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(queue.dead_letters(limit=1000)) == 2 * len(poison)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_store_that_can_never_work_stops_the_worker_and_keeps_the_messages(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    broken = CorruptStore("events.db is not a usable SQLite database")
    store = FlakyStore(tmp_path / "events.db", failures=10**9, error=broken)
    queue.send([encode_event(make_event()).decode() for _ in range(30)])
    worker = Worker(queue, Consumer(store, attempts=1), batch_size=10, backoff=QUICK)
    with pytest.raises(CorruptStore):
        worker.run(drain=True)
    # Never dead-lettered: the batch in hand and the one received ahead are
    # handed back at once.
    assert queue.dead_letters() == []
    assert queue.stats() == QueueStats(visible=30, in_flight=0, dead=0)


def test_the_worker_waits_out_a_queue_held_by_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    queue = SQLiteQueue(path, busy_timeout_ms=20)
    store = SQLiteStore(tmp_path / "events.db")
    events = [make_event() for _ in range(20)]
    states: list[WorkerState] = []
    stop = threading.Event()
    worker = Worker(queue, Consumer(store), backoff=QUICK, wait_seconds=0.05, on_state=states.append)
    # Work waits; an idle poll only reads, so the lock matters once there is work to take.
    queue.send([encode_event(event).decode() for event in events])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while worker.state is not WorkerState.QUEUE_UNAVAILABLE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.state is WorkerState.QUEUE_UNAVAILABLE
        holder.execute("ROLLBACK")
        while store.count() < len(events) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
        holder.close()
    assert not thread.is_alive()
    assert states == [WorkerState.QUEUE_UNAVAILABLE, WorkerState.RUNNING]
    assert {e.id for e in events} == {e.id for r in {e.request_id for e in events} for e in store.flow(r)}
