"""The AWS Lambda handler: an SQS batch in, ``batchItemFailures`` out.

It calls the same consumer core as ``eventtrail worker``
(:meth:`eventtrail.consumer.Consumer.process`), whose store keeps the read
models as it stores events (:mod:`eventtrail.readmodels.dynamodb`):

- ``SUCCESS``: nothing to report, Lambda deletes the message;
- ``RETRY``: reported in ``batchItemFailures``, so SQS delivers it again
  (and its redrive policy dead-letters it after ``maxReceiveCount``);
- ``DEAD_LETTER``: sent to the DLQ at once with its reason, then treated as
  handled; if that send fails it is reported in ``batchItemFailures`` instead,
  so it is never lost.

The function's environment (set by the CDK stack) holds the usual settings,
``EVENTTRAIL_<NAME>`` (see :mod:`eventtrail.config`): ``EVENTTRAIL_TABLE_NAME``,
``EVENTTRAIL_INDEX_SHARDS`` (used only if the table has no shard tag),
``EVENTTRAIL_RETENTION_DAYS``, ``EVENTTRAIL_MAX_BODY_BYTES``, and for the DLQ
either ``EVENTTRAIL_DLQ_URL`` or ``EVENTTRAIL_DLQ_NAME`` (its URL is looked up
once, on the first dead letter). Clients are made once per cold start.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from eventtrail.aws.backend import dynamodb_client, queue_url, sqs_client
from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.sqs import DeadLetterEntry, send_dead_letters
from eventtrail.config import Settings, load_settings
from eventtrail.consumer import Consumer, Outcome, Record, Verdict
from eventtrail.queue import QueueError
from eventtrail.store import Store

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

__all__ = ["DLQ_URL_VARIABLE", "Runtime", "handler"]

#: The DLQ's URL, when the deployment knows it (saves one lookup per cold start).
DLQ_URL_VARIABLE = "EVENTTRAIL_DLQ_URL"

logger = Logger(service="eventtrail")
# The core's own log lines (retries, store errors) come out as the same JSON.
copy_config_to_registered_loggers(
    source_logger=logger,
    include={"eventtrail.consumer", "eventtrail.aws.dynamodb", "eventtrail.readmodels.dynamodb"},
)


class Runtime:
    """What lives for the whole life of one Lambda execution environment."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        sqs: SQSClient | None = None,
        dlq_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.store: Store = store or DynamoDBStore(
            dynamodb_client(),
            settings.table_name,
            index_shards=settings.index_shards,
            retention_days=settings.retention_days,
        )
        self.consumer = Consumer(self.store, max_body_bytes=settings.max_body_bytes)
        self.sqs = sqs or sqs_client()
        self._dlq_url = dlq_url or os.environ.get(DLQ_URL_VARIABLE) or None

    @property
    def dlq_url(self) -> str:
        if self._dlq_url is None:
            self._dlq_url = queue_url(self.sqs, self.settings.dlq_name)
        return self._dlq_url

    def handle(self, event: Any) -> dict[str, list[dict[str, str]]]:
        records, entries = _records(event)
        if not records:
            return {"batchItemFailures": []}
        try:
            outcomes = self.consumer.process(records)
        except Exception:
            # Not expected (the core reports failures per message); the batch
            # comes back rather than being lost.
            logger.exception("the consumer failed on the whole batch", extra={"records": len(records)})
            return _failures(record.message_id for record in records)
        retry = [outcome.message_id for outcome in outcomes if outcome.verdict is Verdict.RETRY]
        dead = [outcome for outcome in outcomes if outcome.verdict is Verdict.DEAD_LETTER]
        for outcome in outcomes:
            if outcome.verdict is Verdict.RETRY:
                logger.warning("to retry", extra={"message_id": outcome.message_id, "reason": outcome.reason})
        unsent = self._dead_letter(dead, entries) if dead else []
        logger.info(
            "batch processed",
            extra={
                "records": len(records),
                "stored": len(outcomes) - len(retry) - len(dead),
                "retry": len(retry),
                "dead_lettered": len(dead) - len(unsent),
                "dead_letter_send_failed": len(unsent),
            },
        )
        return _failures([*retry, *unsent])

    def _dead_letter(self, dead: list[Outcome], entries: dict[str, dict[str, Any]]) -> list[str]:
        letters = []
        for outcome in dead:
            record = entries[outcome.message_id]
            attributes = record.get("attributes") if isinstance(record.get("attributes"), dict) else {}
            assert isinstance(attributes, dict)
            letters.append(
                DeadLetterEntry(
                    message_id=outcome.message_id,
                    body=str(record.get("body") or ""),
                    reason=outcome.reason or "unknown",
                    receive_count=_int(attributes.get("ApproximateReceiveCount"), 1),
                    sent_at=_int(attributes.get("SentTimestamp"), 0) / 1000,
                )
            )
            logger.warning("dead letter", extra={"message_id": outcome.message_id, "reason": outcome.reason})
        try:
            url = self.dlq_url
        except QueueError:
            logger.exception("cannot find the dead-letter queue; the messages will be retried")
            return [letter.message_id for letter in letters]
        unsent = send_dead_letters(self.sqs, url, letters)
        if unsent:
            logger.error(
                "could not send to the dead-letter queue; retrying them", extra={"message_ids": unsent}
            )
        return unsent


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _records(event: Any) -> tuple[list[Record], dict[str, dict[str, Any]]]:
    """The records of an SQS event, and each raw record by message id."""
    raw = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(raw, list):
        logger.error("not an SQS event: no Records list", extra={"event_type": type(event).__name__})
        return [], {}
    records: list[Record] = []
    entries: dict[str, dict[str, Any]] = {}
    for record in raw:
        message_id = record.get("messageId") if isinstance(record, dict) else None
        if not isinstance(message_id, str) or not message_id:
            # Without a message id it cannot be reported; SQS keeps it anyway.
            logger.error("an SQS record without a messageId was skipped")
            continue
        if message_id in entries:
            continue
        body = record.get("body")
        records.append(Record(message_id, body if isinstance(body, str) else ""))
        entries[message_id] = record
    return records, entries


def _failures(message_ids: Any) -> dict[str, list[dict[str, str]]]:
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in message_ids]}


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The execution environment's runtime, made on the first invocation."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(load_settings())
    return _runtime


def handler(event: Any, context: Any) -> dict[str, list[dict[str, str]]]:
    """Lambda's entry point for SQS batches (``ReportBatchItemFailures``)."""
    logger.append_keys(
        function_request_id=getattr(context, "aws_request_id", None),
        function_name=getattr(context, "function_name", None),
    )
    try:
        current = runtime()
    except Exception:
        # Misconfiguration (bad setting, no region): fail the invocation so
        # SQS keeps every message, and say why.
        logger.exception("cannot start: check the function's EVENTTRAIL_* settings")
        raise
    return current.handle(event)
