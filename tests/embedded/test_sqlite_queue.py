from __future__ import annotations

import time
from pathlib import Path

import pytest

from eventtrail.embedded.queue import SQLiteQueue
from tests.contract.queue_contract import QueueContract, QueueFactory, receive_all


class TestSQLiteQueue(QueueContract):
    @pytest.fixture
    def make_queue(self, tmp_path: Path) -> QueueFactory:
        made: list[SQLiteQueue] = []

        def make(max_receives: int = 5) -> SQLiteQueue:
            queue = SQLiteQueue(tmp_path / f"queue-{len(made)}.db", max_receives=max_receives)
            made.append(queue)
            return queue

        return make


def test_dead_letter_reason_is_the_last_error(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db", max_receives=2)
    queue.send(["x"])
    for attempt in (1, 2):
        (message,) = queue.receive(1, visibility_timeout=30)
        queue.release([message], delay=0, error=f"database is locked ({attempt})")
    assert queue.receive(1, visibility_timeout=30) == []
    (letter,) = queue.dead_letters()
    assert letter.reason == "database is locked (2)"
    assert letter.receive_count == 2


def test_a_stale_receipt_neither_acknowledges_nor_dead_letters(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    queue.send(["x"])
    (stale,) = queue.receive(1, visibility_timeout=0.05)
    time.sleep(0.1)
    (current,) = queue.receive(1, visibility_timeout=30)
    queue.ack([stale])
    queue.dead_letter(stale, "late verdict")
    assert queue.stats().in_flight == 1
    assert queue.dead_letters() == []
    queue.ack([current])
    assert queue.stats().pending == 0


def test_messages_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with SQLiteQueue(path) as queue:
        ids = queue.send(["kept"])
    with SQLiteQueue(path) as queue:
        (message,) = receive_all(queue, 1)
    assert (message.id, message.body) == (ids[0], "kept")


def test_redriven_message_keeps_its_id(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    (message_id,) = queue.send(["x"])
    (message,) = queue.receive(1, visibility_timeout=30)
    queue.dead_letter(message, "bad")
    queue.redrive([message_id])
    assert queue.send(["y"]) != [message_id]
    (back, _) = sorted(queue.receive(10, visibility_timeout=30), key=lambda m: int(m.id))
    assert back.id == message_id


def test_max_receives_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SQLiteQueue(tmp_path / "queue.db", max_receives=0)
