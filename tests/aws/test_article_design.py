"""The reference article's design loses events and data; ours does not.

The article's Lambda (Node.js) is reproduced faithfully here in Python: for
each SQS record it parses the body, keeps only the *truthy* values of
``data``, turning each into a string, and calls PutItem on a table keyed by
``RequestId`` + ``Timestamp``. Both designs write to moto's DynamoDB.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from mypy_boto3_dynamodb import DynamoDBClient

from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.event import Event, encode_event
from tests.aws.conftest import Aws, unique_name
from tests.aws.test_contracts import dynamodb_table
from tests.contract.store_contract import make_event


def js_to_string(value: Any) -> str:
    """JavaScript's ``value.toString()`` for JSON values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, list):
        return ",".join("" if item is None else js_to_string(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def article_handler(client: DynamoDBClient, table: str, event: dict[str, Any]) -> None:
    """The article's ``lambda.handler``, statement by statement."""
    for record in event["Records"]:
        message = json.loads(record["body"])
        data = {key: {"S": js_to_string(value)} for key, value in message["data"].items() if value}
        client.put_item(
            TableName=table,
            Item={
                "RequestId": {"S": message["requestId"]},
                "Timestamp": {"S": message["timestamp"]},
                "Data": {"M": data},
                "Id": {"S": message["id"]},
                "Type": {"S": message["type"]},
                "Source": {"S": message["source"]},
            },
        )


@contextlib.contextmanager
def article_table(client: DynamoDBClient) -> Iterator[str]:
    """The article's table: key RequestId + Timestamp, GSIs on Type and Source."""
    name = unique_name("article")
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": attribute, "AttributeType": "S"}
            for attribute in ("RequestId", "Timestamp", "Type", "Source")
        ],
        KeySchema=[
            {"AttributeName": "RequestId", "KeyType": "HASH"},
            {"AttributeName": "Timestamp", "KeyType": "RANGE"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": f"{attribute}-Index",
                "KeySchema": [
                    {"AttributeName": attribute, "KeyType": "HASH"},
                    {"AttributeName": "Timestamp", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for attribute in ("Type", "Source")
        ],
    )
    try:
        yield name
    finally:
        with contextlib.suppress(ClientError):
            client.delete_table(TableName=name)


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
