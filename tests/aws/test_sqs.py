"""What the SQS queue does beyond the contract: batching within SQS's limits,
receives larger than one call, dead letters that stay listable, the redrive
policy's dead letters, and failures: which may pass (network, throttling,
5xx), which stay, what a send that stops part way reports, and the failed
entries of a batch call that succeeded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.config import Config

from eventtrail.aws.backend import CLIENT_CONFIG, open_sqs_queue
from eventtrail.aws.provision import QueueSpec, ensure_queues
from eventtrail.aws.sqs import SQSQueue
from eventtrail.config import load_settings
from eventtrail.queue import BodyTooLarge, PartialSend, QueueError, TransientQueueError
from eventtrail.retry import Backoff
from tests.aws.conftest import Aws, unique_name
from tests.aws.proxy import CUT, Proxy, TcpProxy, proxy
from tests.aws.test_contracts import make_sqs_queue
from tests.contract.queue_contract import receive_all

#: Retries of failed entries without the waits (what is retried is the point).
QUICK = Backoff(attempts=3, base=0.001, cap=0.01)
#: One HTTP call per operation: botocore's own retries tested once, below.
ONE_TRY = CLIENT_CONFIG.merge(Config(retries={"mode": "standard", "total_max_attempts": 1}))


def through(queue: SQSQueue, aws: Aws, config: Config = CLIENT_CONFIG) -> SQSQueue:
    """The same queue, reached through ``aws`` (a counting proxy)."""
    client = aws.session().client("sqs", endpoint_url=aws.url, config=config)
    return SQSQueue(
        client, queue.queue_url, queue.dlq_url, max_receives=queue.max_receives, entry_backoff=QUICK
    )


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


def error(code: str, status: int = 400) -> tuple[int, dict[str, str]]:
    """An SQS error answer in its JSON protocol."""
    return status, {"__type": f"com.amazonaws.sqs#{code}", "message": f"{code} from the test"}


def failing(operation: str, answer: Any) -> Callable[[str, dict[str, Any]], Any]:
    return lambda name, request: answer if name == operation else None


OPERATIONS: dict[str, Callable[[SQSQueue], object]] = {
    "SendMessageBatch": lambda queue: queue.send(["one", "two"]),
    "ReceiveMessage": lambda queue: queue.receive(5, visibility_timeout=30),
    "GetQueueAttributes": lambda queue: queue.stats(),
}


@pytest.mark.parametrize(
    ("answer", "transient"),
    [
        (error("ThrottlingException"), True),
        (error("RequestThrottled"), True),
        (error("KmsThrottled"), True),
        (error("OverLimit", 403), True),
        (error("InternalError", 500), True),
        (error("ServiceUnavailable", 503), True),
        ((502, {"message": "bad gateway"}), True),
        (CUT, True),
        (error("InvalidParameterValue"), False),
        (error("AccessDenied", 403), False),
        (error("QueueDoesNotExist"), False),
    ],
    ids=lambda value: value if isinstance(value, str | bool) else str(value[1].get("__type", value[0])),
)
def test_a_failure_that_may_pass_is_transient_and_one_that_stays_is_not(
    moto: Aws, answer: Any, transient: bool
) -> None:
    queue = make_sqs_queue(moto)
    with proxy(moto.url or "") as front:
        behind = through(queue, Aws("proxy", front.url), ONE_TRY)
        for operation, call in OPERATIONS.items():
            front.fault = failing(operation, answer)
            with pytest.raises(QueueError) as raised:
                call(behind)
            assert isinstance(raised.value, TransientQueueError) is transient, operation
            assert "\n" not in str(raised.value) and "SQS" in str(raised.value)
            assert not isinstance(raised.value, PartialSend)


def test_botocore_retries_a_throttled_call_before_it_becomes_transient(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    with proxy(moto.url or "") as front:
        front.fault = failing("GetQueueAttributes", error("ThrottlingException"))
        with pytest.raises(TransientQueueError):
            through(queue, Aws("proxy", front.url)).stats()
        assert front.calls["GetQueueAttributes"] == vars(CLIENT_CONFIG)["retries"]["total_max_attempts"]
        front.fault = None
        assert through(queue, Aws("proxy", front.url)).stats().visible == 0


def test_a_cut_network_is_transient_for_every_call_and_passes_when_restored(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    (sent,) = queue.send(["before the cut"])
    (message,) = receive_all(queue, 1)
    port = int((moto.url or "").rsplit(":", 1)[1])
    with TcpProxy(port) as network:
        behind = through(queue, Aws("tcp", network.url), ONE_TRY)
        network.cut()
        calls: list[Callable[[], object]] = [
            lambda: behind.send(["during the cut"]),
            lambda: behind.receive(10, visibility_timeout=30),
            lambda: behind.ack([message]),
            lambda: behind.release([message], delay=0, error="cut"),
            lambda: behind.dead_letter(message, "cut"),
            lambda: behind.stats(),
            lambda: behind.dead_letters(),
        ]
        for call in calls:
            with pytest.raises(TransientQueueError, match="cannot reach SQS"):
                call()
        assert network.resets >= len(calls)
        network.restore()
        behind.ack([message])
        assert behind.send(["after the cut"])
    (after,) = receive_all(queue, 1)
    assert after.body == "after the cut" and after.id != sent


def test_a_send_cut_part_way_reports_what_was_accepted(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    bodies = [f"message {n}" for n in range(50)]
    with proxy(moto.url or "") as front:
        front.fault = lambda name, request: CUT if front.calls["SendMessageBatch"] > 2 else None
        with pytest.raises(PartialSend) as raised:
            through(queue, Aws("proxy", front.url), ONE_TRY).send(bodies)
    partial = raised.value
    assert (partial.sent, partial.first_unsent, len(partial.ids)) == (20, 20, 50)
    assert all(partial.ids[:20]) and not any(partial.ids[20:])
    assert partial.transient and isinstance(partial.cause, TransientQueueError)
    assert str(partial).startswith("20 of 50 messages were sent: cannot reach SQS")
    # Sending the rest completes the send: each body is on the queue once.
    rest = queue.send(bodies[partial.first_unsent :])
    assert len(set(rest) | {found for found in partial.ids if found}) == 50
    assert sorted(m.body for m in receive_all(queue, 50, patience=15)) == sorted(bodies)


def fail_entries(
    front: Proxy, operation: str, ids: set[str], *, times: int, code: str = "InternalError"
) -> None:
    """Let the first ``times`` calls of ``operation`` do all but the entries
    ``ids``, reported as failed with ``code`` (the sender's fault unless it
    is ``InternalError``)."""

    def fault(name: str, request: dict[str, Any]) -> Any:
        if name != operation or front.calls[operation] > times:
            return None
        kept = [entry for entry in request["Entries"] if entry["Id"] not in ids]
        failed = [
            {"Id": entry["Id"], "SenderFault": code != "InternalError", "Code": code, "Message": "no"}
            for entry in request["Entries"]
            if entry["Id"] in ids
        ]
        if not kept:
            return 200, {"Successful": [], "Failed": failed}
        return {"request": {**request, "Entries": kept}, "extra": {"Failed": failed}}

    front.fault = fault


def test_entries_failed_on_sqs_side_are_sent_again_and_only_they(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    bodies = [f"entry {n}" for n in range(10)]
    with proxy(moto.url or "") as front:
        fail_entries(front, "SendMessageBatch", {"3", "7"}, times=1)
        ids = through(queue, Aws("proxy", front.url)).send(bodies)
        assert front.calls["SendMessageBatch"] == 2
    assert len(set(ids)) == 10
    assert sorted(m.body for m in receive_all(queue, 10, patience=10)) == sorted(bodies)


def test_entries_failing_every_time_are_a_transient_partial_send(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    with proxy(moto.url or "") as front:
        fail_entries(front, "SendMessageBatch", {"4"}, times=100)
        with pytest.raises(PartialSend) as raised:
            through(queue, Aws("proxy", front.url)).send([f"entry {n}" for n in range(10)])
        assert front.calls["SendMessageBatch"] == QUICK.attempts
    assert raised.value.sent == 9 and raised.value.first_unsent == 4 and raised.value.transient


def test_an_entry_refused_as_the_senders_fault_is_not_sent_again(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    with proxy(moto.url or "") as front:
        fail_entries(front, "SendMessageBatch", {"0"}, times=100, code="InvalidMessageContents")
        with pytest.raises(PartialSend) as raised:
            through(queue, Aws("proxy", front.url)).send(["refused", "taken"])
        assert front.calls["SendMessageBatch"] == 1
    assert not raised.value.transient and "SQS refused message 1" in str(raised.value)
    assert raised.value.ids[1] is not None


def test_acks_and_releases_retry_entries_failed_on_sqs_side(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    queue.send([f"m{n}" for n in range(4)])
    messages = receive_all(queue, 4)
    with proxy(moto.url or "") as front:
        behind = through(queue, Aws("proxy", front.url))
        fail_entries(front, "ChangeMessageVisibilityBatch", {"1"}, times=1)
        behind.release(messages, delay=0, error="again")
        assert front.calls["ChangeMessageVisibilityBatch"] == 2
        again = receive_all(queue, 4)
        fail_entries(front, "DeleteMessageBatch", {"0", "2"}, times=1)
        behind.ack(again)
        assert front.calls["DeleteMessageBatch"] == 2
        # A stale receipt (the sender's fault) is settled by the newer delivery.
        fail_entries(front, "DeleteMessageBatch", {"0"}, times=100, code="ReceiptHandleIsInvalid")
        behind.ack(again[:1])
    assert queue.stats().pending == 0


def test_a_receive_that_fails_after_its_first_call_returns_what_it_holds(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    queue.send([str(n) for n in range(20)])
    with proxy(moto.url or "") as front:
        front.fault = lambda name, request: (
            error("ServiceUnavailable", 503) if name == "ReceiveMessage" and front.calls[name] > 1 else None
        )
        behind = through(queue, Aws("proxy", front.url), ONE_TRY)
        deadline = time.monotonic() + 10
        held: list[str] = []
        while not held and time.monotonic() < deadline:
            front.calls.clear()
            held = [m.body for m in behind.receive(20, visibility_timeout=30, wait_seconds=1)]
        assert held and front.calls["ReceiveMessage"] == 2
        with pytest.raises(TransientQueueError):
            behind.receive(20, visibility_timeout=30)


def test_a_redrive_cut_part_way_leaves_only_the_unsent_in_the_dead_letters(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    queue.send([f"dead {n}" for n in range(15)])
    for message in receive_all(queue, 15):
        queue.dead_letter(message, "failed")
    with proxy(moto.url or "") as front:
        front.fault = lambda name, request: (
            CUT if name == "SendMessageBatch" and front.calls[name] > 1 else None
        )
        with pytest.raises(PartialSend) as raised:
            through(queue, Aws("proxy", front.url), ONE_TRY).redrive()
    assert raised.value.sent == 10
    assert queue.stats().dead == 5
    assert len(receive_all(queue, 10)) == 10


def test_bodies_over_the_queues_size_limit_are_named_and_the_others_sent(
    moto: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique_name("small")
    spec = QueueSpec(name, f"{name}-dlq", max_receives=5, visibility_timeout=30, max_body_bytes=1024)
    ensure_queues(moto.sqs(), spec)
    for variable, value in moto.env.items():
        monkeypatch.setenv(variable, value)
    settings = load_settings({"backend": "aws", "queue_name": name, "dlq_name": f"{name}-dlq"}, environ={})
    with open_sqs_queue(settings) as queue:
        assert queue.max_message_bytes == 1024  # read from the queue
        with pytest.raises(BodyTooLarge) as raised:
            queue.send(["small 0", "x" * 1025, "small 2", "\u00e9" * 513, "small 4"])
        assert raised.value.indexes == [1, 3]
        assert "MaximumMessageSize is 1,024 bytes" in str(raised.value)
        assert sorted(m.body for m in receive_all(queue, 3)) == ["small 0", "small 2", "small 4"]


def test_an_entry_refused_for_its_size_is_named_and_the_others_sent(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    with proxy(moto.url or "") as front:
        fail_entries(front, "SendMessageBatch", {"2"}, times=1, code="BatchEntryTooLong")
        with pytest.raises(BodyTooLarge) as raised:
            through(queue, Aws("proxy", front.url)).send([f"entry {n}" for n in range(12)])
        assert front.calls["SendMessageBatch"] == 2
    assert raised.value.indexes == [2]
    assert len(receive_all(queue, 11)) == 11
