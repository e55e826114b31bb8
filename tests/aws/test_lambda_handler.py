"""The Lambda handler, called with SQS event documents as Lambda delivers
them (built from messages really received from moto's SQS), storing into
moto's DynamoDB."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from eventtrail.aws import lambda_handler
from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.lambda_handler import Runtime
from eventtrail.aws.sqs import SQSQueue
from eventtrail.config import Settings
from eventtrail.event import Event, encode_event
from eventtrail.store import AppendResult, AppendStatus, Store
from tests.aws.conftest import Aws
from tests.aws.lambda_events import sqs_event_of
from tests.aws.test_contracts import dynamodb_table, make_sqs_queue
from tests.contract.store_contract import make_event
from tests.test_consumer import POISON, POISON_MAX_BODY_BYTES

CONTEXT = SimpleNamespace(
    function_name="eventtrail-consumer",
    function_version="$LATEST",
    memory_limit_in_mb=256,
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:eventtrail-consumer",
    aws_request_id="c6af9ac6-7b61-11e6-9a41-93e812345678",
)


@pytest.fixture(scope="module")
def table(moto: Aws) -> Iterator[DynamoDBStore]:
    with dynamodb_table(moto) as store:
        yield store


@pytest.fixture
def queue(moto: Aws) -> SQSQueue:
    return make_sqs_queue(moto, max_receives=3)


def sqs_event(queue: SQSQueue, bodies: Sequence[str]) -> dict[str, Any]:
    """Send ``bodies`` and receive them back as the SQS event Lambda would pass."""
    queue.send(bodies)
    raw: list[dict[str, Any]] = []
    while len(raw) < len(bodies):
        response = queue.client.receive_message(
            QueueUrl=queue.queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=30,
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["All"],
        )
        raw += response.get("Messages", [])  # type: ignore[arg-type]
    arn = queue.client.get_queue_attributes(QueueUrl=queue.queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    return sqs_event_of(raw, arn)


def message_id_of(event: dict[str, Any], body: str) -> str:
    (record,) = [record for record in event["Records"] if record["body"] == body]
    return str(record["messageId"])


def runtime_for(queue: SQSQueue, store: Store) -> Runtime:
    return Runtime(Settings(backend="aws"), store=store, sqs=queue.client, dlq_url=queue.dlq_url)


class FlakyStore(Store):
    """The real store, except that chosen events fail this time (as when
    DynamoDB leaves them unprocessed)."""

    def __init__(self, inner: Store, failing_ids: set[str]) -> None:
        self.inner = inner
        self.failing_ids = failing_ids

    def append(self, events: Sequence[Event]) -> list[AppendResult]:
        passing = [event for event in events if event.id not in self.failing_ids]
        stored = iter(self.inner.append(passing))
        failed = AppendResult(AppendStatus.FAILED, "ProvisionedThroughputExceededException")
        return [failed if event.id in self.failing_ids else next(stored) for event in events]

    def flow(self, request_id: str) -> list[Event]:
        return self.inner.flow(request_id)

    def _events(self, kind: str, value: str, **query: Any) -> list[Event]:
        raise NotImplementedError

    def purge(self, older_than: Any) -> int:
        return 0


def test_good_and_poison_records_in_one_batch(queue: SQSQueue, table: DynamoDBStore) -> None:
    good = [make_event(), make_event(data={"status": 0, "ok": False})]
    poison = ["not json", '{"id": "x"}']
    bodies = [encode_event(event).decode() for event in good] + poison
    event = sqs_event(queue, bodies)

    response = runtime_for(queue, table).handle(event)

    assert response == {"batchItemFailures": []}
    for stored in good:
        assert table.flow(stored.request_id) == [stored]
    letters = {letter.body: letter for letter in queue.dead_letters()}
    assert set(letters) == set(poison)
    assert letters["not json"].id == message_id_of(event, "not json")
    assert "not valid JSON" in letters["not json"].reason
    assert "requestId" in letters['{"id": "x"}'].reason
    assert letters["not json"].receive_count == 1


def test_a_transient_store_failure_fails_only_its_records(queue: SQSQueue, table: DynamoDBStore) -> None:
    events = [make_event() for _ in range(4)]
    flaky = FlakyStore(table, {events[1].id, events[3].id})
    event = sqs_event(queue, [encode_event(e).decode() for e in events] + ["poison"])

    response = runtime_for(queue, flaky).handle(event)

    expected = [message_id_of(event, encode_event(events[n]).decode()) for n in (1, 3)]
    assert sorted(item["itemIdentifier"] for item in response["batchItemFailures"]) == sorted(expected)
    assert table.flow(events[0].request_id) == [events[0]]
    assert table.flow(events[1].request_id) == []
    assert [letter.body for letter in queue.dead_letters()] == ["poison"]


def test_a_dead_letter_that_cannot_be_sent_is_reported_not_lost(moto: Aws, table: DynamoDBStore) -> None:
    queue = make_sqs_queue(moto)
    event = sqs_event(queue, ["poison", encode_event(make_event()).decode()])
    broken = Runtime(
        Settings(backend="aws"), store=table, sqs=queue.client, dlq_url=queue.dlq_url + "-missing"
    )
    response = broken.handle(event)
    assert response == {"batchItemFailures": [{"itemIdentifier": message_id_of(event, "poison")}]}


@pytest.mark.parametrize(
    "event",
    [{}, {"Records": []}, {"Records": "nope"}, None, [], {"Records": [{"body": "no id"}, 42]}],
    ids=["empty", "no-records", "records-not-a-list", "none", "a-list", "records-without-ids"],
)
def test_empty_or_malformed_events_are_answered(event: Any, queue: SQSQueue, table: DynamoDBStore) -> None:
    assert runtime_for(queue, table).handle(event) == {"batchItemFailures": []}
    assert queue.dead_letters() == []


def test_handler_reads_its_settings_from_the_environment(
    moto: Aws, table: DynamoDBStore, queue: SQSQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    dlq_name = queue.dlq_url.rsplit("/", 1)[1]
    for name, value in {
        **moto.env,
        "EVENTTRAIL_TABLE_NAME": table.table_name,
        "EVENTTRAIL_DLQ_NAME": dlq_name,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("EVENTTRAIL_DLQ_URL", raising=False)
    monkeypatch.setattr(lambda_handler, "_runtime", None)
    good = make_event()
    event = sqs_event(queue, [encode_event(good).decode(), "poison"])

    output = io.StringIO()
    handler = lambda_handler.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(output)
    try:
        assert lambda_handler.handler(event, CONTEXT) == {"batchItemFailures": []}
        assert lambda_handler.handler({"Records": []}, CONTEXT) == {"batchItemFailures": []}
    finally:
        handler.setStream(previous)

    assert table.flow(good.request_id) == [good]
    (letter,) = queue.dead_letters()
    assert letter.id == message_id_of(event, "poison")
    logs = [json.loads(line) for line in output.getvalue().splitlines()]
    summary = next(log for log in logs if log["message"] == "batch processed")
    assert summary["function_request_id"] == CONTEXT.aws_request_id
    assert (summary["stored"], summary["dead_lettered"], summary["retry"]) == (1, 1, 0)
    assert summary["level"] == "INFO"


def test_the_handler_imports_no_cli_libraries() -> None:
    code = (
        "import sys, eventtrail.aws.lambda_handler;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'rich', 'click', 'shellingham'}))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"


def test_every_poison_kind_is_dead_lettered_and_fails_no_valid_record(
    queue: SQSQueue, table: DynamoDBStore
) -> None:
    poison = [kind for kind in POISON if kind.sqs]
    good = [make_event() for _ in range(len(poison))]
    bodies = [encode_event(stored).decode() for stored in good]
    for index, kind in enumerate(poison):
        bodies.insert(2 * index + 1, kind.body)
    event = sqs_event(queue, bodies)
    runtime = Runtime(
        Settings(backend="aws", max_body_bytes=POISON_MAX_BODY_BYTES),
        store=table,
        sqs=queue.client,
        dlq_url=queue.dlq_url,
    )

    response = runtime.handle(event)

    assert response == {"batchItemFailures": []}
    for stored in good:
        assert table.flow(stored.request_id) == [stored]
    letters = {letter.body: letter for letter in queue.dead_letters(limit=len(poison) + 1)}
    assert len(letters) == len(poison)
    for kind in poison:
        letter = letters[kind.body]
        assert letter.id == message_id_of(event, kind.body), kind.name
        assert kind.reason in letter.reason, (kind.name, letter.reason)
