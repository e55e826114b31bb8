"""What the SQS queue does beyond the contract: batching within SQS's limits,
receives larger than one call, dead letters that stay listable, and the
redrive policy's dead letters."""

from __future__ import annotations

import time

from eventtrail.aws.sqs import SQSQueue
from tests.aws.conftest import Aws
from tests.aws.proxy import proxy
from tests.aws.test_contracts import make_sqs_queue
from tests.contract.queue_contract import receive_all


def through(queue: SQSQueue, aws: Aws) -> SQSQueue:
    """The same queue, reached through ``aws`` (a counting proxy)."""
    return SQSQueue(aws.sqs(), queue.queue_url, queue.dlq_url, max_receives=queue.max_receives)


def test_sends_go_in_batches_of_ten_within_the_request_size_limit(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    with proxy(moto.url or "") as front:
        counted = through(queue, Aws("proxy", front.url))
        counted.send([f"small {n}" for n in range(25)])
        assert front.calls["SendMessageBatch"] == 3
        front.calls.clear()
        big = ["x" * 300_000 + str(n) for n in range(7)]  # 3 fit in 1 MiB, not 4
        ids = counted.send(big)
        assert front.calls["SendMessageBatch"] == 3
    assert len(set(ids)) == 7
    bodies = {message.body for message in receive_all(queue, 32, patience=10)}
    assert set(big) <= bodies and len(bodies) == 32


def test_a_receive_of_more_than_ten_makes_several_calls(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    queue.send([str(n) for n in range(35)])
    received: list[str] = []
    deadline = time.monotonic() + 10
    while len(received) < 35 and time.monotonic() < deadline:
        received += [m.body for m in queue.receive(1000, visibility_timeout=30, wait_seconds=1)]
    assert sorted(received, key=int) == [str(n) for n in range(35)]


def test_listing_dead_letters_neither_loses_nor_hides_them(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    queue.send([f"bad {n}" for n in range(12)])
    for message in receive_all(queue, 12):
        queue.dead_letter(message, f"reason of {message.body}")
    first = queue.dead_letters()
    assert len(first) == 12
    # At once again, and each one with its own reason: listing made them visible.
    second = queue.dead_letters(limit=5)
    assert [letter.id for letter in second] == [letter.id for letter in first][:5]
    assert all(letter.reason == f"reason of {letter.body}" for letter in first)
    assert queue.stats().dead == 12


def test_the_redrive_policy_dead_letter_says_why(moto: Aws) -> None:
    queue = make_sqs_queue(moto, max_receives=1)
    (message_id,) = queue.send(["keeps failing"])
    (message,) = receive_all(queue, 1)
    queue.release([message], delay=0, error="store unavailable")
    deadline = time.monotonic() + 10
    while not queue.dead_letters() and time.monotonic() < deadline:
        queue.receive(10, visibility_timeout=30, wait_seconds=1)
    letter = queue.get_dead_letter(message_id)
    assert letter.body == "keeps failing"
    assert letter.reason == "not processed after 1 receive (the queue's maxReceiveCount)"
    assert queue.redrive([message_id]) == 1
    (back,) = receive_all(queue, 1)
    assert back.body == "keeps failing" and back.receive_count == 1
