"""The queue port's contract: every adapter passes these tests unchanged.

An adapter's test module subclasses :class:`QueueContract` and provides the
``make_queue`` fixture: a factory of new, empty queues. Timeouts are whole
seconds because SQS counts visibility in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from eventtrail.queue import Message, Queue, UnknownDeadLetter

QueueFactory = Callable[..., Queue]


def receive_all(
    queue: Queue, expected: int, *, visibility_timeout: float = 30, patience: float = 5
) -> list[Message]:
    """Receive until ``expected`` messages came (SQS returns partial batches)."""
    messages: list[Message] = []
    deadline = time.monotonic() + patience
    while len(messages) < expected and time.monotonic() < deadline:
        messages += queue.receive(
            min(10, expected - len(messages)), visibility_timeout=visibility_timeout, wait_seconds=1
        )
    return messages


class QueueContract:
    @pytest.fixture
    def make_queue(self) -> QueueFactory:
        raise NotImplementedError("an adapter's test class provides make_queue(max_receives=5)")

    @pytest.fixture
    def queue(self, make_queue: QueueFactory) -> Queue:
        return make_queue()

    def test_sent_bodies_are_received_once_each(self, queue: Queue) -> None:
        bodies = [f'{{"n": {n}, "text": "héllo ✓"}}' for n in range(25)]
        ids = queue.send(bodies)
        assert len(ids) == len(set(ids)) == 25
        messages = receive_all(queue, 25)
        assert sorted(m.body for m in messages) == sorted(bodies)
        assert {m.id for m in messages} == set(ids)
        assert all(m.receive_count == 1 for m in messages)
        assert queue.receive(10, visibility_timeout=30, wait_seconds=0) == []

    def test_sending_nothing_sends_nothing(self, queue: Queue) -> None:
        assert queue.send([]) == []
        assert queue.receive(10, visibility_timeout=30) == []

    def test_large_body_round_trips(self, queue: Queue) -> None:
        body = '{"blob": "' + "x" * 200_000 + '"}'
        queue.send([body])
        (message,) = receive_all(queue, 1)
        assert message.body == body

    def test_acknowledged_messages_are_gone(self, queue: Queue) -> None:
        queue.send(["a", "b"])
        messages = receive_all(queue, 2, visibility_timeout=1)
        queue.ack(messages)
        time.sleep(1.5)
        assert queue.receive(10, visibility_timeout=30, wait_seconds=0) == []
        assert queue.stats().pending == 0

    def test_unacknowledged_message_comes_back_after_visibility_timeout(self, queue: Queue) -> None:
        queue.send(["again"])
        (first,) = receive_all(queue, 1, visibility_timeout=1)
        assert queue.receive(10, visibility_timeout=1, wait_seconds=0) == []
        time.sleep(1.5)
        (second,) = receive_all(queue, 1, visibility_timeout=30)
        assert second.id == first.id
        assert second.body == "again"
        assert second.receive_count == 2

    def test_released_message_returns_after_its_delay(self, queue: Queue) -> None:
        queue.send(["later"])
        (message,) = receive_all(queue, 1)
        queue.release([message], delay=1, error="store busy")
        assert queue.receive(10, visibility_timeout=30, wait_seconds=0) == []
        time.sleep(1.5)
        (again,) = receive_all(queue, 1)
        assert again.id == message.id
        assert again.receive_count == 2

    def test_release_without_delay_is_visible_at_once(self, queue: Queue) -> None:
        queue.send(["now"])
        (message,) = receive_all(queue, 1)
        queue.release([message], delay=0, error="retry")
        (again,) = receive_all(queue, 1)
        assert again.id == message.id

    def test_dead_lettered_message_is_listed_with_its_reason(self, queue: Queue) -> None:
        ids = queue.send(["good", "not json"])
        messages = {m.body: m for m in receive_all(queue, 2)}
        queue.dead_letter(messages["not json"], "the body is not valid JSON")
        queue.ack([messages["good"]])
        letters = queue.dead_letters()
        assert [(letter.id, letter.body) for letter in letters] == [(ids[1], "not json")]
        assert letters[0].reason == "the body is not valid JSON"
        shown = queue.get_dead_letter(ids[1])
        assert shown.body == "not json"
        assert shown.reason == "the body is not valid JSON"
        assert queue.receive(10, visibility_timeout=30, wait_seconds=0) == []
        assert queue.stats().dead == 1

    def test_unknown_dead_letter_is_an_error(self, queue: Queue) -> None:
        with pytest.raises(UnknownDeadLetter):
            queue.get_dead_letter("no-such-message")
        with pytest.raises(UnknownDeadLetter):
            queue.redrive(["no-such-message"])

    def test_message_moves_to_dead_letters_after_max_receives(self, make_queue: QueueFactory) -> None:
        queue = make_queue(max_receives=2)
        assert queue.max_receives == 2
        (message_id,) = queue.send(["poison"])
        for attempt in (1, 2):
            (message,) = receive_all(queue, 1)
            assert message.receive_count == attempt
            queue.release([message], delay=0, error=f"store failed, attempt {attempt}")
        deadline = time.monotonic() + 10
        while not queue.dead_letters() and time.monotonic() < deadline:
            assert queue.receive(10, visibility_timeout=30, wait_seconds=1) == []
        (letter,) = queue.dead_letters()
        assert letter.id == message_id
        assert letter.body == "poison"
        assert letter.reason
        # Counted where the adapter moves it; SQS's redrive policy moves it
        # out of sight, so an adapter may count 0 but never more than moved.
        assert queue.exhausted in (0, 1)

    def test_redrive_sends_dead_letters_back(self, queue: Queue) -> None:
        ids = queue.send(["one", "two", "three"])
        for message in receive_all(queue, 3):
            queue.dead_letter(message, "failed")
        assert queue.redrive([ids[0]]) == 1
        (back,) = receive_all(queue, 1)
        assert back.body == "one"
        assert back.receive_count == 1
        queue.ack([back])
        assert sorted(letter.body for letter in queue.dead_letters()) == ["three", "two"]
        assert queue.redrive() == 2
        assert sorted(m.body for m in receive_all(queue, 2)) == ["three", "two"]
        assert queue.dead_letters() == []

    def test_stats_count_visible_in_flight_and_dead(self, queue: Queue) -> None:
        queue.send(["a", "b", "c"])
        (first,) = receive_all(queue, 1)
        queue.dead_letter(first, "bad")
        receive_all(queue, 1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # SQS's counts are eventually consistent
            stats = queue.stats()
            if (stats.visible, stats.in_flight, stats.dead) == (1, 1, 1):
                break
            time.sleep(0.2)
        assert (stats.visible, stats.in_flight, stats.dead) == (1, 1, 1)
        assert stats.pending == 2
