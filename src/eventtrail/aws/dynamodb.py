"""The store port on an Amazon DynamoDB table (shape: :mod:`eventtrail.aws.schema`).

Every event is one conditional ``PutItem`` (``attribute_not_exists``), the
puts of a batch side by side: BatchWriteItem takes no condition, so it would
let a different event with a stored event's key replace it. A refused put is
told apart by comparing the stored item with the event in their canonical
form (:func:`eventtrail.store.same_event`): the same event is a ``DUPLICATE``,
another one a ``CONFLICT``, and nothing is ever written over. Throttled puts
are retried by botocore, then once more here (:class:`eventtrail.retry.Backoff`),
then reported per event as ``FAILED`` so that the queue delivers them again
(the budget of each layer: ``docs/retries.md``). By-type and by-source reads
query every write shard of the index and merge the shards by ``TimestampId``
into one time-ordered page; nothing ever scans the table.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from eventtrail.aws.items import Item, ItemError, event_from_item, item_key, item_of
from eventtrail.aws.schema import INDEX_SHARDS_TAG, TABLE, IndexSchema, read_models_table_name
from eventtrail.event import Event
from eventtrail.readmodels.dynamodb import DynamoDBReadModels
from eventtrail.retry import Backoff
from eventtrail.store import (
    DUPLICATE,
    STORED,
    AppendResult,
    AppendStatus,
    Position,
    Store,
    StoreError,
    same_event,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["DEFAULT_RETRY", "DynamoDBStore", "error_code"]

log = logging.getLogger(__name__)

#: The store's own retry of puts still throttled after botocore's attempts:
#: one more round, because botocore stops retrying when its retry quota runs
#: dry, which is what lasting throttling does.
DEFAULT_RETRY = Backoff(attempts=2, base=0.1, cap=1.0)

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


@dataclass(frozen=True, slots=True)
class _Put:
    """What became of one conditional put: its result, the event the table
    holds under its key when known, and whether trying again may help."""

    result: AppendResult
    holder: Event | None = None
    retryable: bool = False


def _conflict(event: Event, holder: Event) -> AppendResult:
    return AppendResult(
        AppendStatus.CONFLICT,
        f"id {event.id} already belongs to another event"
        f" (request {holder.request_id}, {holder.type} at {holder.timestamp})",
    )


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
    ``retry`` bounds the rounds of puts that failed in a way that may pass;
    ``threads`` bounds the requests in flight at once (keep it within the
    client's ``max_pool_connections``).
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        index_shards: int = 8,
        retention_days: float | None = None,
        retry: Backoff = DEFAULT_RETRY,
        threads: int = 16,
    ) -> None:
        self.client = client
        self.table_name = table_name
        self.default_shards = index_shards
        self.retention_days = retention_days
        self.retry = retry
        self.threads = threads
        self._shards: int | None = None
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None
        self.read_models = DynamoDBReadModels(
            client, read_models_table_name(table_name), events=self, retention_days=retention_days
        )

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
        if not events:
            return []
        try:
            shards = self.index_shards
        except StoreError as error:
            # A missing or unreachable table can be fixed: let the queue retry.
            return [AppendResult(AppendStatus.FAILED, str(error))] * len(events)
        results: list[AppendResult | None] = [None] * len(events)
        firsts: dict[tuple[str, str], int] = {}
        copies: list[tuple[int, int]] = []
        pending: dict[int, Item] = {}
        for index, event in enumerate(events):
            key = item_key(event.request_id, event.timestamp, event.id)
            if key in firsts:
                # Decided once the batch's first event of this key is written.
                copies.append((index, firsts[key]))
                continue
            firsts[key] = index
            try:
                pending[index] = item_of(event, shards=shards, expires_at=self._expires_at(event))
            except ItemError as error:
                results[index] = AppendResult(AppendStatus.REJECTED, str(error))
        holders: dict[int, Event] = {}
        for _ in self.retry.delays():
            retry_later: dict[int, Item] = {}
            for index, put in zip(pending, self._put_all(pending, events), strict=True):
                results[index] = put.result
                if put.holder is not None:
                    holders[index] = put.holder
                if put.retryable:
                    retry_later[index] = pending[index]
            pending = retry_later
            if not pending:
                break
        for index, first in copies:
            results[index] = self._copy_result(
                events[index], events[first], results[first], holders.get(first)
            )
        assert all(result is not None for result in results)
        self.read_models.apply(
            [e for e, r in zip(events, results, strict=True) if r and r.status is AppendStatus.STORED]
        )
        return [result for result in results if result is not None]

    @staticmethod
    def _copy_result(
        event: Event, first: Event, first_result: AppendResult | None, holder: Event | None
    ) -> AppendResult:
        """The result of an event whose key an earlier event of its batch holds."""
        if holder is not None:
            # What the table holds under the key is known: compare with it.
            return DUPLICATE if same_event(holder, event) else _conflict(event, holder)
        if same_event(first, event):
            assert first_result is not None
            return first_result
        return AppendResult(
            AppendStatus.FAILED,
            f"another event of this batch claims id {event.id} and was not written; retry to decide",
        )

    def _put_all(self, items: dict[int, Item], events: Sequence[Event]) -> list[_Put]:
        """Put every item (side by side); one outcome per item, in order."""
        jobs = [(item, events[index]) for index, item in items.items()]
        if len(jobs) == 1:
            return [self._put(*jobs[0])]
        return list(self._pool().map(lambda job: self._put(*job), jobs))

    def _put(self, item: Item, event: Event) -> _Put:
        """Write one item unless its key is taken; tell a redelivery of the
        stored event from another event claiming its key."""
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=item,
                ConditionExpression="attribute_not_exists(#pk)",
                ExpressionAttributeNames={"#pk": TABLE.partition_key},
                # DynamoDB hands back the stored item with the refusal, for no
                # extra read; endpoints that do not are asked with GetItem.
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            code = error_code(error)
            if code == "ConditionalCheckFailedException":
                stored: Item | None = error.response.get("Item")  # type: ignore[assignment]
                return self._compare(item, event, stored)
            if code == "ValidationException":
                return _Put(
                    AppendResult(AppendStatus.REJECTED, f"DynamoDB refused the item: {_describe(error)}")
                )
            return _Put(AppendResult(AppendStatus.FAILED, _describe(error)), retryable=code in _RETRYABLE)
        except BotoCoreError as error:
            return _Put(AppendResult(AppendStatus.FAILED, _describe(error)), retryable=True)
        return _Put(STORED, holder=event)

    def _compare(self, item: Item, event: Event, stored: Item | None) -> _Put:
        if stored is None:
            try:
                stored = self.client.get_item(  # type: ignore[assignment]
                    TableName=self.table_name,
                    Key={key: item[key] for key in (TABLE.partition_key, TABLE.sort_key)},
                    ConsistentRead=True,
                ).get("Item")
            except (ClientError, BotoCoreError) as error:
                reason = f"the key is taken and the stored item could not be read: {_describe(error)}"
                return _Put(AppendResult(AppendStatus.FAILED, reason), retryable=True)
            if stored is None:
                # Expired (TTL) between the put and the read: write it again.
                return _Put(AppendResult(AppendStatus.FAILED, "the stored item went away"), retryable=True)
        holder = event_from_item(stored)
        return _Put(DUPLICATE if same_event(holder, event) else _conflict(event, holder), holder=holder)

    def _pool(self) -> ThreadPoolExecutor:
        """Threads that put items or query shards side by side (boto3 clients
        are thread-safe; the client's connection pool bounds what runs at once)."""
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(
                    max_workers=self.threads, thread_name_prefix="eventtrail-dynamodb"
                )
            return self._threads

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
        heads = list(self._pool().map(lambda stream: next(stream, None), streams))
        merged = heapq.merge(
            *(itertools.chain([head], stream) for head, stream in zip(heads, streams, strict=True) if head),
            key=lambda item: item[TABLE.sort_key]["S"],
            reverse=newest_first,
        )
        return [event_from_item(item) for item in itertools.islice(merged, limit)]

    def purge(self, older_than: datetime) -> int:
        """DynamoDB deletes expired items itself (TTL on ``ExpiresAt``, set from
        ``retention_days`` at write time): nothing to do on demand."""
        return 0

    def close(self) -> None:
        self.read_models.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None
