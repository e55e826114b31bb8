"""The store port on an Amazon DynamoDB table (shape: :mod:`eventtrail.aws.schema`).

Writes go in BatchWriteItem calls of at most 25 items; what DynamoDB leaves
unprocessed or throttles is retried with exponential backoff and full jitter,
then reported per event as ``FAILED`` so that the queue delivers it again. A
redelivered event has the same key, so it stays one item. By-type and
by-source reads query every write shard of the index and merge the shards by
``TimestampId`` into one time-ordered page; nothing ever scans the table.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from eventtrail.aws.items import Item, ItemError, event_from_item, item_key, item_of
from eventtrail.aws.schema import INDEX_SHARDS_TAG, TABLE, IndexSchema
from eventtrail.event import Event
from eventtrail.store import (
    DUPLICATE,
    STORED,
    AppendResult,
    AppendStatus,
    Position,
    Store,
    StoreError,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["BATCH_WRITE_LIMIT", "DynamoDBStore", "error_code"]

log = logging.getLogger(__name__)

#: BatchWriteItem takes at most 25 items per call.
BATCH_WRITE_LIMIT = 25

#: Error codes worth retrying: DynamoDB or the network will let them pass.
_RETRYABLE = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)


def error_code(error: BaseException) -> str:
    """The AWS error code of a botocore error (its class name otherwise)."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "ClientError"))
    return type(error).__name__


def _describe(error: BaseException) -> str:
    if isinstance(error, ClientError):
        message = error.response.get("Error", {}).get("Message", "")
        return f"{error_code(error)}: {message}" if message else error_code(error)
    return f"{type(error).__name__}: {error}"


class DynamoDBStore(Store):
    """Events in one DynamoDB table.

    ``index_shards`` is used only when the table carries no
    ``eventtrail:index-shards`` tag (``eventtrail aws init`` and the CDK stack
    set it; dynalite keeps tags too): writers and readers must agree on it, so
    the table's tag wins. ``retention_days`` sets each item's ``ExpiresAt``
    (the event's time plus the retention) for DynamoDB's TTL to delete it.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        index_shards: int = 8,
        retention_days: float | None = None,
        attempts: int = 6,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.table_name = table_name
        self.default_shards = index_shards
        self.retention_days = retention_days
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._shards: int | None = None
        self._lock = threading.Lock()
        self._readers: ThreadPoolExecutor | None = None

    # -- configuration recorded on the table ---------------------------------

    @property
    def index_shards(self) -> int:
        """The table's shard count (its tag), read once; the setting if untagged."""
        if self._shards is None:
            with self._lock:
                if self._shards is None:
                    self._shards = self._read_shard_tag()
        return self._shards

    def _read_shard_tag(self) -> int:
        try:
            arn = self.client.describe_table(TableName=self.table_name)["Table"]["TableArn"]
            tags = self.client.list_tags_of_resource(ResourceArn=arn).get("Tags", [])
        except ClientError as error:
            if error_code(error) == "ResourceNotFoundException":
                raise StoreError(
                    f"DynamoDB table {self.table_name!r} does not exist (run `eventtrail aws init`)"
                ) from None
            if error_code(error) == "AccessDeniedException":
                log.warning(
                    "not allowed to read the tags of table %s (dynamodb:DescribeTable and"
                    " dynamodb:ListTagsOfResource); using index_shards=%d",
                    self.table_name,
                    self.default_shards,
                )
                return self.default_shards
            raise StoreError(f"cannot describe table {self.table_name!r}: {_describe(error)}") from None
        except BotoCoreError as error:
            raise StoreError(f"cannot reach DynamoDB: {_describe(error)}") from None
        for tag in tags:
            if tag["Key"] == INDEX_SHARDS_TAG:
                try:
                    shards = int(tag["Value"])
                except ValueError:
                    break
                if shards >= 1:
                    return shards
        log.info(
            "table %s has no %s tag; using index_shards=%d",
            self.table_name,
            INDEX_SHARDS_TAG,
            self.default_shards,
        )
        return self.default_shards

    # -- writes ---------------------------------------------------------------

    def _expires_at(self, event: Event) -> int | None:
        if self.retention_days is None:
            return None
        return int(event.moment.timestamp() + self.retention_days * 86400)

    def append(self, events: Sequence[Event]) -> list[AppendResult]:
        results: list[AppendResult | None] = [None] * len(events)
        if not events:
            return []
        try:
            shards = self.index_shards
        except StoreError as error:
            # A missing or unreachable table can be fixed: let the queue retry.
            return [AppendResult(AppendStatus.FAILED, str(error))] * len(events)
        pending: list[tuple[int, Item]] = []
        first_of_key: dict[tuple[str, str], int] = {}
        for index, event in enumerate(events):
            key = item_key(event.request_id, event.timestamp, event.id)
            if key in first_of_key:
                # DynamoDB refuses two puts of one key in one batch.
                same = events[first_of_key[key]] == event
                results[index] = (
                    DUPLICATE
                    if same
                    else AppendResult(
                        AppendStatus.CONFLICT, f"another event in this batch already has id {event.id}"
                    )
                )
                continue
            first_of_key[key] = index
            try:
                item = item_of(event, shards=shards, expires_at=self._expires_at(event))
            except ItemError as error:
                results[index] = AppendResult(AppendStatus.REJECTED, str(error))
                continue
            pending.append((index, item))
        for start in range(0, len(pending), BATCH_WRITE_LIMIT):
            chunk = pending[start : start + BATCH_WRITE_LIMIT]
            for index, result in self._write_batch(chunk):
                results[index] = result
        assert all(result is not None for result in results)
        return [result for result in results if result is not None]

    def _delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def _write_batch(self, chunk: list[tuple[int, Item]]) -> list[tuple[int, AppendResult]]:
        """Write up to 25 items; one result per item."""
        by_key = {(item[TABLE.partition_key]["S"], item[TABLE.sort_key]["S"]): index for index, item in chunk}
        requests: list[dict[str, Any]] = [{"PutRequest": {"Item": item}} for _, item in chunk]
        reason = ""
        for attempt in range(self.attempts):
            if attempt:
                self._sleep(self._delay(attempt))
            try:
                response = self.client.batch_write_item(
                    RequestItems={self.table_name: requests}  # type: ignore[dict-item]
                )
            except ClientError as error:
                code = error_code(error)
                if code == "ValidationException":
                    # One bad item fails the whole call: find it item by item.
                    return self._write_one_by_one(chunk)
                reason = _describe(error)
                if code not in _RETRYABLE:
                    break
                continue
            except BotoCoreError as error:
                reason = _describe(error)
                continue
            unprocessed = response.get("UnprocessedItems", {}).get(self.table_name, [])
            if not unprocessed:
                return [(index, STORED) for index, _ in chunk]
            requests = list(unprocessed)  # type: ignore[arg-type]
            reason = f"DynamoDB left {len(requests)} items unprocessed (throttled)"
        failed = {
            (
                request["PutRequest"]["Item"][TABLE.partition_key]["S"],
                request["PutRequest"]["Item"][TABLE.sort_key]["S"],
            )
            for request in requests
        }
        failure = AppendResult(AppendStatus.FAILED, f"not written after {self.attempts} attempts: {reason}")
        return [(index, failure if key in failed else STORED) for key, index in by_key.items()]

    def _write_one_by_one(self, chunk: list[tuple[int, Item]]) -> list[tuple[int, AppendResult]]:
        results: list[tuple[int, AppendResult]] = []
        for index, item in chunk:
            try:
                self.client.put_item(TableName=self.table_name, Item=item)
            except ClientError as error:
                status = (
                    AppendStatus.REJECTED
                    if error_code(error) == "ValidationException"
                    else AppendStatus.FAILED
                )
                results.append(
                    (index, AppendResult(status, f"DynamoDB refused the item: {_describe(error)}"))
                )
            except BotoCoreError as error:
                results.append((index, AppendResult(AppendStatus.FAILED, _describe(error))))
            else:
                results.append((index, STORED))
        return results

    # -- reads ----------------------------------------------------------------

    def _query(self, **request: Any) -> Iterator[Item]:
        """Every item a Query returns, page after page (lazily)."""
        request = {"TableName": self.table_name, **request}
        while True:
            try:
                response = self.client.query(**request)
            except ClientError as error:
                if error_code(error) == "ResourceNotFoundException":
                    raise StoreError(
                        f"DynamoDB table {self.table_name!r} does not exist (run `eventtrail aws init`)"
                    ) from None
                raise StoreError(f"DynamoDB query failed: {_describe(error)}") from None
            except BotoCoreError as error:
                raise StoreError(f"cannot reach DynamoDB: {_describe(error)}") from None
            yield from response.get("Items", [])  # type: ignore[misc]
            last = response.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last

    def flow(self, request_id: str) -> list[Event]:
        items = self._query(
            KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames={"#pk": TABLE.partition_key},
            ExpressionAttributeValues={":pk": {"S": request_id}},
            ConsistentRead=True,
        )
        return [event_from_item(item) for item in items]

    def _index(self, kind: str) -> IndexSchema:
        if kind == "type":
            return TABLE.by_type
        if kind == "source":
            return TABLE.by_source
        raise ValueError(f"unknown query kind {kind!r}")

    def _shard_items(
        self,
        index: IndexSchema,
        partition: str,
        lower: tuple[str, bool] | None,
        upper: tuple[str, bool] | None,
        page_size: int,
        newest_first: bool,
    ) -> Iterator[Item]:
        """The items of one index partition within the bounds (value,
        inclusive), in the requested order, read ``page_size`` at a time as
        they are consumed."""
        names = {"#pk": index.partition_key, "#sk": TABLE.sort_key}
        values: dict[str, Any] = {":pk": {"S": partition}}
        condition = "#pk = :pk"
        if lower and upper:
            # BETWEEN is inclusive; exclusive bounds are dropped below.
            condition += " AND #sk BETWEEN :lo AND :hi"
            values[":lo"] = {"S": lower[0]}
            values[":hi"] = {"S": upper[0]}
        elif lower:
            condition += f" AND #sk {'>=' if lower[1] else '>'} :lo"
            values[":lo"] = {"S": lower[0]}
        elif upper:
            condition += f" AND #sk {'<=' if upper[1] else '<'} :hi"
            values[":hi"] = {"S": upper[0]}
        else:
            del names["#sk"]
        for item in self._query(
            IndexName=index.name,
            KeyConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ScanIndexForward=not newest_first,
            Limit=page_size,
        ):
            sort_key = item[TABLE.sort_key]["S"]
            if lower and not lower[1] and sort_key == lower[0]:
                continue
            if upper and not upper[1] and sort_key == upper[0]:
                continue
            yield item

    def _events(
        self,
        kind: str,
        value: str,
        *,
        since: str | None,
        until: str | None,
        after: Position | None,
        limit: int,
        newest_first: bool,
    ) -> list[Event]:
        index = self._index(kind)
        # "ts#id" >= "since" exactly when ts >= since, and < "until" exactly
        # when ts < until (fixed-width timestamps).
        lower: tuple[str, bool] | None = (since, True) if since else None
        upper: tuple[str, bool] | None = (until, False) if until else None
        if after is not None:
            past = (TABLE.sort_key_of(after.timestamp, after.id), False)
            if newest_first:
                upper = past if upper is None or past[0] < upper[0] else upper
            else:
                lower = past if lower is None or past[0] >= lower[0] else lower
        if lower and upper and lower[0] > upper[0]:
            return []
        shards = self.index_shards
        # Events spread evenly over the shards: each shard's first read asks
        # for a little more than its share of the page, so a page usually
        # costs one Query per shard and reads about ``limit`` items, not
        # ``shards * limit``. A shard that runs short reads on as it is merged.
        page_size = min(limit + 1, max(10, math.ceil(limit * 1.25 / shards) + 2))
        streams = [
            self._shard_items(index, f"{value}#{shard}", lower, upper, page_size, newest_first)
            for shard in range(shards)
        ]
        # The first page of every shard is read side by side.
        heads = list(self._reader_pool(shards).map(lambda stream: next(stream, None), streams))
        merged = heapq.merge(
            *(itertools.chain([head], stream) for head, stream in zip(heads, streams, strict=True) if head),
            key=lambda item: item[TABLE.sort_key]["S"],
            reverse=newest_first,
        )
        return [event_from_item(item) for item in itertools.islice(merged, limit)]

    def _reader_pool(self, shards: int) -> ThreadPoolExecutor:
        """Threads that query the shards side by side (boto3 clients are thread-safe)."""
        with self._lock:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(
                    max_workers=min(shards, 16), thread_name_prefix="eventtrail-dynamodb"
                )
            return self._readers

    def purge(self, older_than: datetime) -> int:
        """DynamoDB deletes expired items itself (TTL on ``ExpiresAt``, set from
        ``retention_days`` at write time): nothing to do on demand."""
        return 0

    def close(self) -> None:
        if self._readers is not None:
            self._readers.shutdown(wait=False)
            self._readers = None
