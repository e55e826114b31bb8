"""The reference article's design, reproduced faithfully in Python: its
DynamoDB table and its Lambda (Node.js), statement by statement.

For each SQS record the Lambda parses the body, keeps only the *truthy*
values of ``data``, turning each into a string, and calls PutItem on a table
keyed by ``RequestId`` + ``Timestamp``. The tests show what that loses; the
AWS requests benchmark counts what it costs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from eventtrail.ids import uuid7_str

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["article_handler", "article_table", "js_to_string"]


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
    name = f"article-{uuid7_str()}"
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
