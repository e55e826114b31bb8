from __future__ import annotations

import threading
import time
from pathlib import Path

from eventtrail.consumer import Consumer
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import encode_event
from eventtrail.worker import Worker, retry_delay
from tests.contract.store_contract import make_event
from tests.test_consumer import FlakyStore


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


def test_a_failing_store_retries_then_succeeds(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    store = FlakyStore(tmp_path / "events.db", failures=2)
    event = make_event()
    queue.send([encode_event(event).decode()])
    worker = Worker(queue, Consumer(store, attempts=1), retry_base=0.05)
    total = worker.run(drain=True)
    assert (total.received, total.retried, total.stored) == (3, 2, 1)
    assert store.flow(event.request_id) == [event]


def test_a_store_that_never_recovers_ends_in_the_dead_letters(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db", max_receives=3)
    store = FlakyStore(tmp_path / "events.db", failures=99)
    queue.send([encode_event(make_event()).decode()])
    total = Worker(queue, Consumer(store, attempts=1), retry_base=0.01).run(drain=True)
    assert total.retried == 3
    (letter,) = queue.dead_letters()
    assert "store unavailable" in letter.reason


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
