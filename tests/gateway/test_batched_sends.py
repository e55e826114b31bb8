"""Several batches in one call to the queue: each batch is still one queue
send of at most ``batch_size`` events, in order, and a queue that fails part
way through hands back exactly the events it did not take."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventtrail.config import load_settings
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.event import parse_event
from eventtrail.gateway.offload import ProcessQueue
from eventtrail.gateway.publisher import BATCHES_PER_SEND, Publisher
from eventtrail.gateway.records import (
    EncodingSink,
    Record,
    UnsentRecords,
    bodies_of,
    new_call,
    pack,
    request_record,
)
from eventtrail.gateway.spill import SpillFile
from tests.gateway.conftest import queued_events
from tests.gateway.test_publishing import SwitchableQueue


def _record(request_id: str) -> Record:
    unix_ns = time.time_ns()
    return request_record(
        unix_ns, request_id, new_call(unix_ns), "S", "Gateway", "GET", f"/{request_id}", None
    )


def _batches(sizes: Sequence[Sequence[int]]) -> list[list[list[Record]]]:
    """Batches of packs of records, sized by ``sizes`` (records per pack)."""
    number = 0
    batches = []
    for packs in sizes:
        batch = []
        for count in packs:
            batch.append([_record(f"r{number + index}") for index in range(count)])
            number += count
        batches.append(batch)
    return batches


def _break_table(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE messages RENAME TO messages_away")


class BreaksAfter(SwitchableQueue):
    """A real SQLite queue whose table is renamed away (so that its sends
    fail for real) once it took ``sends`` sends; it counts what each took."""

    def __init__(self, path: Path, sends: int) -> None:
        super().__init__(SQLiteQueue(path))
        self.path = path
        self.sends_left = sends
        self.sent: list[int] = []

    def send(self, bodies: Sequence[str]) -> list[str]:
        if self.sends_left == 0:
            _break_table(self.path)
        self.sends_left -= 1
        ids = super().send(bodies)
        self.sent.append(len(bodies))
        return ids


@given(
    sizes=st.lists(
        st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=3), min_size=1, max_size=6
    ),
    failing=st.integers(min_value=0, max_value=6),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_each_batch_is_one_send_and_a_failure_hands_back_exactly_what_was_not_sent(
    tmp_path: Path, sizes: list[list[int]], failing: int
) -> None:
    path = tmp_path / uuid.uuid4().hex / "queue.db"
    path.parent.mkdir()
    batches = _batches(sizes)
    queue = BreaksAfter(path, sends=failing)
    sink = EncodingSink(queue)
    bodies = [bodies_of([record for pack_ in batch for record in pack_]) for batch in batches]
    # A batch of no record is no send: the queue counts only those it gets.
    sending = [index for index, batch in enumerate(bodies) if batch]
    packed = [[pack(records) for records in batch] for batch in batches]
    if failing >= len(sending):
        assert sink.send_batches(packed) == []
        expected_sent = [body for batch in bodies for body in batch]
    else:
        with pytest.raises(UnsentRecords) as unsent:
            sink.send_batches(packed)
        first_unsent = sending[failing]
        assert unsent.value.bodies == [body for batch in bodies[first_unsent:] for body in batch]
        assert unsent.value.refused == []
        expected_sent = [body for batch in bodies[:first_unsent] for body in batch]
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE messages_away RENAME TO messages")
    # One send per batch that has events, of that batch's events, in order.
    assert queue.sent == [len(bodies[index]) for index in sending[:failing]]
    queue.close()
    assert [event.request_id for event in queued_events(path)] == [
        parse_event(body).request_id for body in expected_sent
    ]


def test_the_queue_process_sends_several_batches_in_one_call(tmp_path: Path) -> None:
    settings = load_settings({"backend": "local", "data_dir": str(tmp_path)}, environ={})
    batches = _batches([[3, 2], [4], [1, 1, 1]])
    packed = [[pack(records) for records in batch] for batch in batches]
    request_ids = [record[2] for batch in batches for records in batch for record in records]
    queue = ProcessQueue(settings)
    try:
        assert queue.send_batches(packed) == []
        _break_table(tmp_path / "queue.db")
        with pytest.raises(UnsentRecords) as unsent:
            queue.send_batches(packed)
    finally:
        queue.close()
    # Nothing of the second call went: every body comes back, in order.
    assert unsent.value.bodies == bodies_of(
        [record for batch in batches for records in batch for record in records]
    )
    with sqlite3.connect(tmp_path / "queue.db") as db:
        db.execute("ALTER TABLE messages_away RENAME TO messages")
    assert [event.request_id for event in queued_events(tmp_path / "queue.db")] == request_ids


def _publish(publisher: Publisher, first: int, count: int) -> None:
    # In steps a little apart, so that the request path journals and hands
    # over what it published (once per journal_interval).
    for index in range(first, first + count):
        publisher.publish_record(_record(f"r{index}"))
        if index % 5 == 4:
            time.sleep(0.01)


def test_under_load_the_sender_waits_for_several_batches_and_sends_each_within_batch_size(
    tmp_path: Path,
) -> None:
    batch_size = 5
    queue = BreaksAfter(tmp_path / "queue.db", sends=1_000_000)
    publisher = Publisher(
        queue, SpillFile(tmp_path / "spill.db"), batch_size=batch_size, flush_interval=30.0
    ).start()
    try:
        # Fewer than BATCHES_PER_SEND batches wait for flush_interval (30 s here).
        below = batch_size * BATCHES_PER_SEND - batch_size
        _publish(publisher, 0, below)
        time.sleep(0.3)
        assert publisher.counts().sent == 0
        # That many waiting wake the sender at once.
        _publish(publisher, below, 2 * batch_size)
        deadline = time.monotonic() + 10
        while publisher.counts().sent < batch_size * BATCHES_PER_SEND and time.monotonic() < deadline:
            time.sleep(0.02)
        assert publisher.counts().sent >= batch_size * BATCHES_PER_SEND
    finally:
        counts = publisher.close()
    total = below + 2 * batch_size
    assert (counts.sent, counts.dropped, counts.buffered) == (total, 0, 0)
    assert queue.sent and max(queue.sent) <= batch_size
    assert sorted(event.request_id for event in queued_events(tmp_path / "queue.db")) == sorted(
        f"r{index}" for index in range(total)
    )
