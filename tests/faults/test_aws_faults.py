"""The AWS side under network faults, with real processes and real sockets.

SQS on moto's server is reached through a TCP proxy started by the test, in
front of an HTTP proxy that can answer for SQS (DynamoDB goes to moto
directly). Under a running ``eventtrail worker`` (``EVENTTRAIL_BACKEND=aws``)
the test cuts the TCP proxy (every connection, open or new, is reset), slows
it, has SQS throttle every receive and fail every acknowledgement for a
while, and restores: the worker waits the faults out, says so in its log, and
in the end the set of ids sent is the set of ids stored, each once.

``eventtrail send`` through an HTTP proxy that resets the connection after a
few SendMessageBatch calls says how many events were sent and the command that
sends the rest; running it stores every event once. A cut short enough for the
command's own retries costs nothing. A queue that refuses some events for
their size takes the others, and the command names the ones refused.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.provision import QueueSpec, ensure_queues
from eventtrail.aws.sqs import SQSQueue
from eventtrail.event import encode_event
from tests.aws.conftest import Aws, unique_name
from tests.aws.proxy import CUT, TcpProxy, proxy
from tests.aws.test_contracts import dynamodb_table, make_sqs_queue
from tests.contract.store_contract import make_event
from tests.faults.conftest import RunningProcess, stop_process
from tests.servers import LOCAL_AWS_ENV, moto_server

pytestmark = pytest.mark.slow

EVENTTRAIL = [sys.executable, "-m", "eventtrail"]


@pytest.fixture(scope="module")
def moto() -> Iterator[Aws]:
    with moto_server() as endpoint:
        yield Aws("moto", endpoint.url)


@dataclass
class Pipeline:
    """A queue and a table on moto, and the environment of an ``eventtrail``
    process that reaches SQS at ``sqs_url`` and DynamoDB directly."""

    aws: Aws
    queue: SQSQueue
    store: DynamoDBStore

    def env(self, sqs_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTTRAIL_", "AWS_"))}
        queue_name = self.queue.queue_url.rsplit("/", 1)[1]
        return {
            **env,
            **LOCAL_AWS_ENV,
            "AWS_ENDPOINT_URL": self.aws.url or "",
            "AWS_ENDPOINT_URL_SQS": sqs_url,
            "EVENTTRAIL_BACKEND": "aws",
            "EVENTTRAIL_QUEUE_NAME": queue_name,
            "EVENTTRAIL_DLQ_NAME": f"{queue_name}-dlq",
            "EVENTTRAIL_TABLE_NAME": self.store.table_name,
            # Unsettled messages come back soon after the network does.
            "EVENTTRAIL_VISIBILITY_TIMEOUT": "5",
        }

    def stored_ids(self) -> Counter[str]:
        """How many items of the table hold each event id."""
        counts: Counter[str] = Counter()
        pages = self.aws.dynamodb().get_paginator("scan").paginate(TableName=self.store.table_name)
        for page in pages:
            counts.update(item["Id"]["S"] for item in page.get("Items", []) if "Id" in item)
        return counts

    def wait_stored(self, ids: set[str], *, timeout: float) -> Counter[str]:
        deadline = time.monotonic() + timeout
        while True:
            stored = self.stored_ids()
            if ids <= set(stored) or time.monotonic() > deadline:
                return stored
            time.sleep(0.5)


@pytest.fixture
def pipeline(moto: Aws) -> Iterator[Pipeline]:
    # Many receives may fail during the faults; none may dead-letter a message.
    queue = make_sqs_queue(moto, max_receives=100)
    with dynamodb_table(moto) as store:
        yield Pipeline(moto, queue, store)


def produce(queue: SQSQueue, sent: set[str], count: int) -> None:
    """Send ``count`` new events straight to SQS (the producer's network is fine)."""
    events = [make_event() for _ in range(count)]
    queue.send([encode_event(event).decode() for event in events])
    sent.update(event.id for event in events)


def running_again(pipeline: Pipeline, sent: set[str]) -> None:
    """Wait until the worker stores a new event: it is polling again, not
    sleeping out its backoff (the next fault meets it running)."""
    produce(pipeline.queue, sent, 1)
    assert set(pipeline.wait_stored(sent, timeout=90)) == sent


class ForSeconds:
    """A fault: answer every ``operation`` request with ``answer`` for
    ``seconds`` from now, counting the requests answered so."""

    def __init__(self, seconds: float, operation: str, answer: Any) -> None:
        self.until = time.monotonic() + seconds
        self.operation = operation
        self.answer = answer
        self.answered = 0

    def __call__(self, operation: str, request: dict[str, Any]) -> Any:
        if operation != self.operation or time.monotonic() >= self.until:
            return None
        self.answered += 1
        return self.answer


THROTTLED = (400, {"__type": "com.amazonaws.sqs#RequestThrottled", "message": "Rate exceeded"})


def test_the_aws_worker_waits_out_cut_and_slow_networks_and_stores_everything_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    sent: set[str] = set()
    log_path = tmp_path / "worker.log"
    with proxy(pipeline.aws.url or "") as sqs, TcpProxy(int(sqs.url.rsplit(":", 1)[1])) as network:
        # Started during a cut: it waits for SQS instead of exiting.
        network.cut()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [*EVENTTRAIL, "worker"], env=pipeline.env(network.url), stdout=log, stderr=log, cwd=tmp_path
            )
        worker = RunningProcess(process, log_path)
        try:
            produce(pipeline.queue, sent, 20)
            time.sleep(4)
            assert process.poll() is None, worker.log
            network.restore()
            assert set(pipeline.wait_stored(sent, timeout=60)) == sent, worker.log
            running_again(pipeline, sent)

            # An 8 s cut under a running worker, with events arriving meanwhile.
            network.cut()
            produce(pipeline.queue, sent, 30)
            time.sleep(8)
            assert process.poll() is None, worker.log
            network.restore()
            assert set(pipeline.wait_stored(sent, timeout=90)) == sent, worker.log
            running_again(pipeline, sent)

            # A cut just after a batch arrives (being received, stored or
            # acknowledged: what is not acknowledged comes back).
            produce(pipeline.queue, sent, 30)
            time.sleep(0.5)
            network.cut()
            time.sleep(6)
            network.restore()
            assert set(pipeline.wait_stored(sent, timeout=90)) == sent, worker.log
            running_again(pipeline, sent)

            # SQS throttles every receive for 6 s.
            throttled = sqs.fault = ForSeconds(6, "ReceiveMessage", THROTTLED)
            produce(pipeline.queue, sent, 10)
            time.sleep(6)
            assert set(pipeline.wait_stored(sent, timeout=90)) == sent, worker.log
            assert throttled.answered > 0
            running_again(pipeline, sent)

            # Acknowledgements fail for 6 s: the worker acknowledges once SQS
            # answers again; a message whose visibility timeout ran out
            # meanwhile is delivered again and stored over itself.
            unacknowledged = sqs.fault = ForSeconds(6, "DeleteMessageBatch", CUT)
            produce(pipeline.queue, sent, 10)
            assert set(pipeline.wait_stored(sent, timeout=90)) == sent, worker.log
            time.sleep(6)
            assert unacknowledged.answered > 0
            running_again(pipeline, sent)

            # A slow network: every chunk waits before it is forwarded.
            network.slow(0.3)
            produce(pipeline.queue, sent, 30)
            assert set(pipeline.wait_stored(sent, timeout=90)) == sent, worker.log
            assert process.poll() is None, worker.log
            network.restore()
            assert network.resets > 0
        finally:
            if process.poll() is None:
                log_text = stop_process(worker, signal.SIGTERM, timeout=60)
            else:
                log_text = worker.log
    stored = pipeline.stored_ids()
    assert set(stored) == sent and len(sent) == 135
    assert set(stored.values()) == {1}
    assert pipeline.queue.stats().dead == 0
    assert "Traceback" not in log_text
    # It said what it waited for, each time.
    for said in ("cannot start yet", "cannot reach SQS to", "RequestThrottled", "queue back after"):
        assert said in log_text, log_text


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EVENTTRAIL, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def cut_send_batches(after: int, count: int | None = None) -> Callable[[str, dict[str, Any]], Any]:
    """Reset the connection of every SendMessageBatch request after the
    first ``after`` (of ``count`` of them, when given; botocore's own retries
    count)."""
    seen = 0

    def fault(operation: str, request: dict[str, Any]) -> Any:
        nonlocal seen
        if operation != "SendMessageBatch":
            return None
        seen += 1
        if seen > after and (count is None or seen <= after + count):
            return CUT
        return None

    return fault


def test_a_send_cut_part_way_says_where_to_resume_and_resuming_stores_each_event_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    events = [make_event() for _ in range(50)]
    (tmp_path / "events.ndjson").write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    with proxy(pipeline.aws.url or "") as front:
        front.fault = cut_send_batches(after=2)
        env = pipeline.env(front.url)
        stopped = cli(env, tmp_path, "send", "events.ndjson")
        assert stopped.returncode == 1, stopped.stderr
        (line,) = stopped.stderr.splitlines()
        assert line.startswith(
            "error: sent 20 of 50 events; the rest were not sent: resume from events.ndjson line 21"
            " with `eventtrail send --skip 20 events.ndjson`"
        ), line
        assert "cannot reach SQS" in line
        # Nothing is left half done: 20 on the queue, the rest not.
        assert pipeline.queue.stats().visible == 20
        command = re.search(r"`eventtrail (send [^`]*)`", line)
        assert command is not None
        front.fault = None
        resumed = cli(env, tmp_path, *command[1].split())
        assert resumed.returncode == 0 and resumed.stderr.strip() == "sent 30 messages", resumed.stderr
    drained = cli(pipeline.env(pipeline.aws.url or ""), tmp_path, "worker", "--drain", "--quiet")
    assert drained.returncode == 0, drained.stderr
    stored = pipeline.stored_ids()
    assert set(stored) == {event.id for event in events} and set(stored.values()) == {1}


def test_a_short_cut_during_a_send_is_retried_by_the_command_itself(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    events = [make_event() for _ in range(50)]
    (tmp_path / "events.json").write_bytes(b"[" + b",".join(encode_event(e) for e in events) + b"]")
    with proxy(pipeline.aws.url or "") as front:
        # Every try of the third batch (botocore tries each call 3 times).
        front.fault = cut_send_batches(after=2, count=3)
        sent = cli(pipeline.env(front.url), tmp_path, "send", "events.json")
        assert sent.returncode == 0 and sent.stderr.strip() == "sent 50 messages", sent.stderr
        assert front.calls["SendMessageBatch"] == 5 + 3
    assert pipeline.queue.stats().visible == 50


def test_a_send_the_queue_takes_in_part_names_what_it_refused_for_size(moto: Aws, tmp_path: Path) -> None:
    name = unique_name("small")
    client = moto.sqs()
    ensure_queues(
        client, QueueSpec(name, f"{name}-dlq", max_receives=5, visibility_timeout=30, max_body_bytes=1024)
    )
    queue = SQSQueue(
        client,
        client.get_queue_url(QueueName=name)["QueueUrl"],
        client.get_queue_url(QueueName=f"{name}-dlq")["QueueUrl"],
        max_receives=5,
    )
    events = [make_event(), make_event(data={"note": "x" * 2000}), make_event()]
    (tmp_path / "mixed.ndjson").write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    with dynamodb_table(moto) as store:
        result = cli(Pipeline(moto, queue, store).env(moto.url or ""), tmp_path, "send", "mixed.ndjson")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: sent 2 of 3 events; 1 too large for the queue (mixed.ndjson line 2): SQS refused 1 of 3"
        " messages for their size (the queue's MaximumMessageSize is 1,024 bytes)"
    ]
    assert queue.stats().visible == 2


def fail_entries_holding(marker: str) -> Callable[[str, dict[str, Any]], Any]:
    """SQS fails, on its side, every SendMessageBatch entry whose body holds
    ``marker``, and takes the others."""

    def fault(operation: str, request: dict[str, Any]) -> Any:
        if operation != "SendMessageBatch":
            return None
        entries = request["Entries"]
        failed = [
            {"Id": entry["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try later"}
            for entry in entries
            if marker in entry["MessageBody"]
        ]
        kept = [entry for entry in entries if marker not in entry["MessageBody"]]
        if not kept:
            return 200, {"Successful": [], "Failed": failed}
        return {"request": {**request, "Entries": kept}, "extra": {"Failed": failed}}

    return fault


def test_a_send_that_sent_events_after_the_first_unsent_one_says_so(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    events = [make_event() for _ in range(30)]
    (tmp_path / "events.ndjson").write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    with proxy(pipeline.aws.url or "") as front:
        front.fault = fail_entries_holding(events[3].id)
        result = cli(pipeline.env(front.url), tmp_path, "send", "events.ndjson")
        # Each of the command's 3 rounds sends one batch of 10 but the 4th event.
        assert front.calls["SendMessageBatch"] == 3 * 3
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        "error: sent 27 of 30 events; the rest were not sent: resume from events.ndjson line 4 with"
        " `eventtrail send --skip 3 events.ndjson` and the same settings (24 after it were sent too;"
        " sending them again stores nothing twice): SQS could not send messages (1 failed 3 times):"
        " InternalError: try later"
    ), line
    assert pipeline.queue.stats().visible == 27
