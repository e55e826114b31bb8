"""Opening the AWS backend from the settings: AWS clients and the adapters.

Region, credentials and endpoint come from the AWS SDK's own chain
(``AWS_REGION`` or ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_SQS`` / ``AWS_ENDPOINT_URL_DYNAMODB``...); eventtrail
adds no settings of its own for them. Queues and the table are found by name (``queue_name``, ``dlq_name``,
``table_name``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, cast

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.sqs import MAX_BATCH_BYTES, SQSQueue, queue_error
from eventtrail.queue import QueueError
from eventtrail.store import StoreError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

    from eventtrail.config import Settings

__all__ = ["dynamodb_client", "open_dynamodb_store", "open_sqs_queue", "queue_url", "sqs_client"]

#: botocore's standard retry mode backs off on throttling by itself (3 tries
#: per call; the store retries what is still throttled or unprocessed).
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 3},
    connect_timeout=5,
    read_timeout=30,
    max_pool_connections=32,
)

# Where credentials and endpoints were found is not news in a worker's log.
for _chatty in ("botocore.credentials", "botocore.configprovider"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

_NO_REGION = "no AWS region configured: set AWS_REGION (or a profile's region)"


def _client(service: str) -> Any:
    # botocore directly: boto3 would add about 50 ms of imports (s3transfer)
    # to every Lambda cold start for nothing.
    session = botocore.session.get_session()
    # AWS_REGION (what the other AWS SDKs and Lambda set) counts when
    # botocore's own AWS_DEFAULT_REGION or profile gives none.
    region = session.get_config_variable("region") or os.environ.get("AWS_REGION") or None
    return session.create_client(service, region_name=region, config=CLIENT_CONFIG)


def sqs_client() -> SQSClient:
    """An SQS client from botocore's configuration chain."""
    try:
        return cast("SQSClient", _client("sqs"))
    except BotoCoreError as error:
        raise QueueError(_NO_REGION if "region" in str(error).lower() else str(error)) from None


def dynamodb_client() -> DynamoDBClient:
    """A DynamoDB client from botocore's configuration chain."""
    try:
        return cast("DynamoDBClient", _client("dynamodb"))
    except BotoCoreError as error:
        raise StoreError(_NO_REGION if "region" in str(error).lower() else str(error)) from None


def queue_url(client: SQSClient, name: str) -> str:
    """The URL of the queue called ``name``; a clear error if it does not
    exist, a :class:`~eventtrail.queue.TransientQueueError` if SQS cannot be
    reached or asks to wait."""
    try:
        return client.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
            raise QueueError(f"SQS queue {name!r} does not exist (run `eventtrail aws init`)") from None
        raise queue_error(f"find queue {name!r}", error) from None
    except BotoCoreError as error:
        raise queue_error(f"find queue {name!r}", error) from None


def _limits(client: SQSClient, url: str, fallback_receives: int) -> tuple[int, int]:
    """The redrive policy's maxReceiveCount and the MaximumMessageSize: the
    queue decides, not the settings."""
    try:
        attributes = client.get_queue_attributes(
            QueueUrl=url, AttributeNames=["RedrivePolicy", "MaximumMessageSize"]
        ).get("Attributes", {})
    except (BotoCoreError, ClientError) as error:
        raise queue_error("read the queue's attributes", error) from None
    policy = attributes.get("RedrivePolicy")
    max_receives = (
        int(json.loads(policy).get("maxReceiveCount", fallback_receives)) if policy else fallback_receives
    )
    return max_receives, int(attributes.get("MaximumMessageSize") or MAX_BATCH_BYTES)


def open_sqs_queue(settings: Settings) -> SQSQueue:
    """The configured SQS queue and its DLQ."""
    client = sqs_client()
    url = queue_url(client, settings.queue_name)
    dlq_url = queue_url(client, settings.dlq_name)
    max_receives, max_message_bytes = _limits(client, url, settings.max_receives)
    return SQSQueue(client, url, dlq_url, max_receives=max_receives, max_message_bytes=max_message_bytes)


def open_dynamodb_store(settings: Settings) -> DynamoDBStore:
    """The configured DynamoDB table (nothing is called until it is used)."""
    return DynamoDBStore(
        dynamodb_client(),
        settings.table_name,
        index_shards=settings.index_shards,
        retention_days=settings.retention_days,
    )
