"""The reference article's design (:mod:`tests.aws.article`) loses events
and data; ours does not. Both designs write to moto's DynamoDB."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.event import Event, encode_event
from tests.aws.article import article_handler, article_table
from tests.aws.conftest import Aws
from tests.aws.test_contracts import dynamodb_table
from tests.contract.store_contract import make_event


def sqs_event(events: list[Event]) -> dict[str, Any]:
    return {
        "Records": [
            {"messageId": f"m{n}", "body": encode_event(event).decode(), "eventSource": "aws:sqs"}
            for n, event in enumerate(events)
        ]
    }


@pytest.fixture(scope="module")
def ours(moto: Aws) -> Iterator[DynamoDBStore]:
    with dynamodb_table(moto) as store:
        yield store


def two_events_at_one_time_with_falsy_data() -> list[Event]:
    first = make_event(data={"Name": "Microservice A", "status": 503})
    second = make_event(
        request_id=first.request_id, data={"Name": "Microservice B", "status": 0, "ok": False, "note": ""}
    )
    assert first.timestamp == second.timestamp
    return [first, second]


def test_the_article_loses_an_event_and_the_falsy_data(moto: Aws) -> None:
    client = moto.dynamodb()
    events = two_events_at_one_time_with_falsy_data()
    with article_table(client) as table:
        article_handler(client, table, sqs_event(events))
        items = client.query(
            TableName=table,
            KeyConditionExpression="#r = :r",
            ExpressionAttributeNames={"#r": "RequestId"},
            ExpressionAttributeValues={":r": {"S": events[0].request_id}},
        )["Items"]
    # One event overwrote the other (same RequestId + Timestamp) ...
    assert len(items) == 1
    (item,) = items
    # ... and the survivor lost its falsy values and its number types.
    assert item["Data"] == {"M": {"Name": {"S": "Microservice B"}}}
    assert "0" not in json.dumps(item["Data"])


def test_our_design_keeps_both_events_and_every_value(ours: DynamoDBStore) -> None:
    events = two_events_at_one_time_with_falsy_data()
    assert all(result.ok for result in ours.append(events))
    flow = ours.flow(events[0].request_id)
    assert sorted(flow, key=lambda e: e.id) == sorted(events, key=lambda e: e.id)
    falsy = next(event for event in flow if event.data["Name"] == "Microservice B")
    assert falsy.data == {"Name": "Microservice B", "status": 0, "ok": False, "note": ""}
    assert type(falsy.data["status"]) is int and falsy.data["ok"] is False
