"""Creating the queue, its DLQ, the table and its read-model table on an
endpoint (``eventtrail aws init``), for local development and tests;
production uses the CDK stack.

Every step is idempotent: what exists is checked and, where it differs from
the settings, brought in line (redrive policy) or reported (shard count,
which must not change under a table that holds events).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from eventtrail.aws.backend import queue_url
from eventtrail.aws.dynamodb import error_code
from eventtrail.aws.schema import INDEX_SHARDS_TAG, READ_MODELS, TABLE, read_models_table_name
from eventtrail.queue import QueueError
from eventtrail.readmodels.dynamodb import record_new_table
from eventtrail.store import StoreError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

__all__ = ["QueueSpec", "TableSpec", "ensure_queues", "ensure_table"]

#: SQS keeps messages at most 14 days: the DLQ keeps them that long.
_FOURTEEN_DAYS = 14 * 24 * 3600


@dataclass(frozen=True, slots=True)
class QueueSpec:
    queue_name: str
    dlq_name: str
    max_receives: int
    visibility_timeout: float
    max_body_bytes: int


@dataclass(frozen=True, slots=True)
class TableSpec:
    table_name: str
    index_shards: int


def _existing_url(client: SQSClient, name: str) -> str | None:
    try:
        return queue_url(client, name)
    except QueueError as error:
        if "does not exist" in str(error):
            return None
        raise


def ensure_queues(client: SQSClient, spec: QueueSpec) -> list[str]:
    """Create the DLQ and the queue (with its redrive policy); say what was done."""
    done: list[str] = []
    try:
        dlq_url = _existing_url(client, spec.dlq_name)
        if dlq_url is None:
            dlq_url = client.create_queue(
                QueueName=spec.dlq_name, Attributes={"MessageRetentionPeriod": str(_FOURTEEN_DAYS)}
            )["QueueUrl"]
            done.append(f"created dead-letter queue {spec.dlq_name}")
        else:
            done.append(f"dead-letter queue {spec.dlq_name} exists")
        dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": spec.max_receives})
        attributes: Any = {
            "VisibilityTimeout": str(math.ceil(spec.visibility_timeout)),
            "MaximumMessageSize": str(max(1024, spec.max_body_bytes)),
            "RedrivePolicy": policy,
        }
        url = _existing_url(client, spec.queue_name)
        if url is None:
            client.create_queue(QueueName=spec.queue_name, Attributes=attributes)
            done.append(f"created queue {spec.queue_name} (dead letters after {spec.max_receives} receives)")
        else:
            current = client.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
            existing = json.loads(current.get("Attributes", {}).get("RedrivePolicy") or "{}")
            wanted = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": spec.max_receives}
            if {key: existing.get(key) for key in wanted} != wanted:
                client.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy})
                done.append(
                    f"queue {spec.queue_name} exists; set its redrive policy"
                    f" (dead letters after {spec.max_receives} receives)"
                )
            else:
                done.append(f"queue {spec.queue_name} exists")
    except ClientError as error:
        raise QueueError(f"SQS refused to set up the queues: {error}") from None
    except BotoCoreError as error:
        raise QueueError(f"cannot reach SQS: {error}") from None
    return done


def _wait_active(client: DynamoDBClient, name: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        table = client.describe_table(TableName=name)["Table"]
        indexes = table.get("GlobalSecondaryIndexes", [])
        if table.get("TableStatus") == "ACTIVE" and all(i.get("IndexStatus") == "ACTIVE" for i in indexes):
            return table["TableArn"]
        if time.monotonic() > deadline:
            raise StoreError(f"table {name} is not active after {timeout:.0f}s")
        time.sleep(0.2)


def _create_table(client: DynamoDBClient, spec: TableSpec) -> None:
    client.create_table(
        TableName=spec.table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": kind}  # type: ignore[typeddict-item]
            for name, kind in TABLE.key_attributes()
        ],
        KeySchema=[
            {"AttributeName": TABLE.partition_key, "KeyType": "HASH"},
            {"AttributeName": TABLE.sort_key, "KeyType": "RANGE"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": index.name,
                "KeySchema": [
                    {"AttributeName": index.partition_key, "KeyType": "HASH"},
                    {"AttributeName": TABLE.sort_key, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index in TABLE.indexes
        ],
        # Tagged at creation: a tag added afterwards can take a while to be
        # listed, and a writer must never miss it.
        Tags=[{"Key": INDEX_SHARDS_TAG, "Value": str(spec.index_shards)}],
    )


def ensure_table(client: DynamoDBClient, spec: TableSpec) -> list[str]:
    """Create the table (on demand, sharded indexes, TTL, shard tag); say what was done."""
    done: list[str] = []
    try:
        try:
            client.describe_table(TableName=spec.table_name)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
            _create_table(client, spec)
            indexes = ", ".join(index.name for index in TABLE.indexes)
            done.append(f"created table {spec.table_name} (on demand, indexes {indexes})")
        else:
            done.append(f"table {spec.table_name} exists")
        arn = _wait_active(client, spec.table_name)
        done.append(_ensure_shard_tag(client, arn, spec))
        done.append(_ensure_ttl(client, spec.table_name, TABLE.ttl))
        done += _ensure_read_models_table(client, spec.table_name)
    except ClientError as error:
        raise StoreError(f"DynamoDB refused to set up table {spec.table_name}: {error}") from None
    except BotoCoreError as error:
        raise StoreError(f"cannot reach DynamoDB: {error}") from None
    return done


def _ensure_shard_tag(client: DynamoDBClient, arn: str, spec: TableSpec) -> str:
    try:
        tags = {
            tag["Key"]: tag["Value"] for tag in client.list_tags_of_resource(ResourceArn=arn).get("Tags", [])
        }
    except ClientError as error:
        return f"cannot read tags ({error_code(error)}): the store uses index_shards={spec.index_shards}"
    recorded = tags.get(INDEX_SHARDS_TAG)
    if recorded is None:
        try:
            client.tag_resource(
                ResourceArn=arn, Tags=[{"Key": INDEX_SHARDS_TAG, "Value": str(spec.index_shards)}]
            )
        except ClientError as error:
            return (
                f"cannot tag the table ({error_code(error)}): the store uses index_shards={spec.index_shards}"
            )
        return f"recorded {spec.index_shards} index shards on the table (tag {INDEX_SHARDS_TAG})"
    if recorded != str(spec.index_shards):
        return (
            f"the table records {recorded} index shards (tag {INDEX_SHARDS_TAG}); it keeps them"
            f" (index_shards={spec.index_shards} is ignored for this table)"
        )
    return f"the table records {recorded} index shards"


def _ensure_ttl(client: DynamoDBClient, name: str, attribute: str) -> str:
    try:
        status = client.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
        if (
            status.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
            and status.get("AttributeName") == attribute
        ):
            return f"time to live on {attribute} is enabled"
        client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute}
        )
    except ClientError as error:
        return f"time to live not set: this endpoint does not support it ({error_code(error)})"
    return f"enabled time to live on {attribute}"


def _ensure_read_models_table(client: DynamoDBClient, events_table: str) -> list[str]:
    """The read-model table beside ``events_table`` (on demand, the request
    index, TTL). Made beside events that are already stored, it is recorded
    as never built, so that readers ask for ``eventtrail rebuild`` instead of
    showing only what came after it."""
    name = read_models_table_name(events_table)
    done: list[str] = []
    try:
        client.describe_table(TableName=name)
    except ClientError as error:
        if error_code(error) != "ResourceNotFoundException":
            raise
        index = READ_MODELS.requests_index
        client.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": attribute, "AttributeType": kind}  # type: ignore[typeddict-item]
                for attribute, kind in READ_MODELS.key_attributes()
            ],
            KeySchema=[
                {"AttributeName": READ_MODELS.partition_key, "KeyType": "HASH"},
                {"AttributeName": READ_MODELS.sort_key, "KeyType": "RANGE"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": index.name,
                    "KeySchema": [
                        {"AttributeName": index.partition_key, "KeyType": "HASH"},
                        {"AttributeName": index.attribute, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        )
        _wait_active(client, name)
        events_stored = bool(client.scan(TableName=events_table, Limit=1).get("Items"))
        record_new_table(client, name, events_stored=events_stored)
        done.append(
            f"created read-model table {name} (on demand, index {index.name})"
            + ("; events are already stored: run `eventtrail rebuild`" if events_stored else "")
        )
    else:
        _wait_active(client, name)
        done.append(f"read-model table {name} exists")
    done.append(_ensure_ttl(client, name, READ_MODELS.ttl))
    return done
