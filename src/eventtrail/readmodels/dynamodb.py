"""The read-model port on Amazon DynamoDB: a second table beside the events
(:func:`eventtrail.aws.schema.read_models_table_name`, shaped by
:data:`eventtrail.aws.schema.READ_MODELS`).

DynamoDB makes one item atomic, not a batch (and dynalite, like any endpoint
without transactions, not even two items), so the design puts every change
that must not be lost or made twice on one item, and keeps the rest additive:

- a request's summary *and* the open halves of its calls live in one item,
  written whole on the condition that its ``Version`` is still the one read.
  The events of a batch are folded request by request; a writer that loses
  the race to another consumer reads the item again and folds its events
  anew, so two consumers never both join (and count) one call, and a request
  summary never loses an update;
- rollup deltas (calls, failures by kind, latency sketch counts) are added
  with ``ADD`` once the request items they come from are written: additions
  commute, so consumers racing on one bucket lose nothing. The sketch's
  bucket counts are top-level number attributes (``b<key>``) so that ``ADD``
  creates and adds them in one step; its bounds are lowered or raised by a
  conditional ``SET`` only when a delta goes past the stored ones.

Only the events the store reports as newly ``STORED`` are applied (the store
calls :meth:`apply` right after its conditional puts), so a redelivered or
re-sent event, reported as ``DUPLICATE``, never counts again. What DynamoDB
cannot give without a transaction is storing the event and projecting it in
one unit: a process killed between the two leaves those events out of the
read models (``eventtrail rebuild --since`` puts them back).
``docs/read-models.md`` weighs this against the alternatives.

Rollup rows are keyed ``rollup#<step>#<all|op>#<day or month>#<shard>`` +
``<bucket>#<digest of caller, service, operation>``: a window is a handful of
range queries (one per day and shard), whose cost is the rows of its buckets,
never its events. Request summaries are listed newest first through the
``Requests-Index`` (``<start day>#<shard>``, ``<start>#<request id>``) with
the service, status and duration as filters, so a search reads the requests
started in its range and finds every match however rare.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec
from botocore.exceptions import BotoCoreError, ClientError

from eventtrail.aws.schema import READ_MODELS
from eventtrail.event import Event
from eventtrail.readmodels.model import (
    ALL_OPERATIONS,
    FAILURE_KINDS,
    PROJECTION_VERSION,
    CallKey,
    Changes,
    OpenCall,
    RequestQuery,
    RequestState,
    RequestSummary,
    Rollup,
    RollupKey,
)
from eventtrail.readmodels.port import CALL_EVENT_TYPES, ReadModels, Replay
from eventtrail.readmodels.sketch import LatencySketch
from eventtrail.retry import Backoff
from eventtrail.store import Store, StoreError, TransientStoreError
from eventtrail.times import moment_of

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["DynamoDBReadModels", "record_new_table"]

log = logging.getLogger(__name__)

Item = dict[str, Any]

_KEY = READ_MODELS.partition_key
_SORT = READ_MODELS.sort_key
_INDEX = READ_MODELS.requests_index

_META = "meta"
_VERSION_SORT = "version"
_DAYS_SORT = "request-days"
#: The item listing the months that hold rollup rows: a range over many
#: months queries only those.
_MONTHS_SORT = "rollup-months"
_CURRENT = "current"
_REBUILDING = "rebuilding"
_NEVER_BUILT = "never-built"

_FAILED = [f"Failed_{kind}" for kind in FAILURE_KINDS]
_BIN_PREFIX = "b"
#: Sketch buckets added per UpdateItem: keeps each expression well under
#: DynamoDB's 4 KB expression limit.
_BINS_PER_UPDATE = 100
#: The sort key of the request index takes at most 1024 bytes.
_MAX_ORDER_BYTES = 1000

#: Error codes worth retrying.
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

#: Rounds of a request whose item another consumer keeps changing under it.
CONFLICT_RETRY = Backoff(attempts=8, base=0.02, cap=0.5)
#: Seconds before a store whose read-model table was missing looks again.
MISSING_TABLE_RECHECK = 60.0
#: Rounds of writes that DynamoDB throttled (after botocore's own retries).
WRITE_RETRY = Backoff(attempts=3, base=0.1, cap=1.0)

_encode_half = msgspec.msgpack.Encoder().encode
_decode_half = msgspec.msgpack.Decoder(OpenCall).decode


class _Conflict(Exception):
    """Another consumer changed the request item since it was read."""


def _code(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "ClientError"))
    return type(error).__name__


def _store_error(what: str, error: BaseException) -> StoreError:
    code = _code(error)
    if code == "ResourceNotFoundException":
        return StoreError(f"{what}: the read-model table does not exist (run `eventtrail aws init`)")
    if isinstance(error, BotoCoreError) or code in _RETRYABLE:
        return TransientStoreError(f"{what}: {code}: {error}")
    return StoreError(f"{what}: {code}: {error}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _number(value: float) -> str:
    return str(Decimal(repr(float(value)))) if isinstance(value, float) else str(value)


def _int(item: Item, name: str) -> int:
    found = item.get(name)
    return int(Decimal(found["N"])) if found else 0


# ---------------------------------------------------------------- rollup rows


def _period(step: str, bucket: str) -> str:
    """The partition a bucket's rows live in: its day (minute rows) or month (coarser rows)."""
    return bucket[:10] if step == "1m" else bucket[:7]


def _periods(step: str, first: str, last: str) -> list[str]:
    """Every period from ``first``'s to ``last``'s, in order."""
    if step == "1m":
        day, end = moment_of(first[:10] + "T00:00:00Z").date(), moment_of(last[:10] + "T00:00:00Z").date()
        days = []
        while day <= end:
            days.append(day.isoformat())
            day += timedelta(days=1)
        return days
    year, month = int(first[:4]), int(first[5:7])
    end_year, end_month = int(last[:4]), int(last[5:7])
    months = []
    while (year, month) <= (end_year, end_month):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def _rollup_partition(step: str, operations: bool, period: str, shard: int) -> str:
    return f"rollup#{step}#{'op' if operations else 'all'}#{period}#{shard}"


def _rollup_key(key: RollupKey) -> dict[str, dict[str, str]]:
    edge = _digest(json.dumps([key.caller, key.service, key.operation]))
    shard = int(edge[:8], 16) % READ_MODELS.rollup_shards
    partition = _rollup_partition(
        key.step, key.operation != ALL_OPERATIONS, _period(key.step, key.bucket), shard
    )
    return {_KEY: {"S": partition}, _SORT: {"S": f"{key.bucket}#{edge}"}}


def _rollup_of(item: Item, step: str) -> tuple[RollupKey, Rollup]:
    counts: dict[int, int] = {}
    for name, value in item.items():
        if name.startswith(_BIN_PREFIX) and "N" in value:
            counts[int(name[len(_BIN_PREFIX) :])] = int(Decimal(value["N"]))
    low = float(item["Low"]["N"]) if "Low" in item else None
    high = float(item["High"]["N"]) if "High" in item else None
    key = RollupKey(
        step, item["Bucket"]["S"], item["Caller"]["S"], item["Service"]["S"], item["Operation"]["S"]
    )
    rollup = Rollup(
        _int(item, "Calls"),
        [_int(item, name) for name in _FAILED],
        LatencySketch(counts, low, high),
        _int(item, "Abandoned"),
    )
    return key, rollup


# ---------------------------------------------------------------- request items


def _request_key(request_id: str) -> dict[str, dict[str, str]]:
    return {_KEY: {"S": f"request#{_digest(request_id)}"}, _SORT: {"S": "state"}}


def _order_key(started_at: str, request_id: str) -> str:
    """Where a request stands in the index: start time, then request id
    (a request id too long for an index key is cut, which only changes the
    order among requests that start at the same microsecond)."""
    order = f"{started_at}#{request_id}"
    encoded = order.encode("utf-8", "surrogatepass")
    if len(encoded) <= _MAX_ORDER_BYTES:
        return order
    return encoded[:_MAX_ORDER_BYTES].decode("utf-8", "ignore")


def _request_day(started_at: str, request_id: str) -> str:
    shard = zlib.crc32(request_id.encode("utf-8", "surrogatepass")) % READ_MODELS.request_shards
    return f"{started_at[:10]}#{shard}"


def _summary_of(item: Item) -> RequestSummary:
    return RequestSummary(
        request_id=item["RequestId"]["S"],
        started_at=item["StartedAt"]["S"],
        ended_at=item["EndedAt"]["S"],
        duration_ms=float(item["DurationMs"]["N"]),
        services=[value["S"] for value in item["Services"]["L"]],
        calls=_int(item, "Calls"),
        errors=_int(item, "Errors"),
        status=item["Status"]["S"],
    )


def _state_of(item: Item) -> RequestState | None:
    if "StartedAt" not in item:
        return None
    return RequestState(
        request_id=item["RequestId"]["S"],
        started_at=item["StartedAt"]["S"],
        ended_at=item["EndedAt"]["S"],
        services=[value["S"] for value in item["Services"]["L"]],
        calls=_int(item, "Calls"),
        ended=_int(item, "Ended"),
        errors=_int(item, "Errors"),
    )


def _halves_of(item: Item) -> dict[str, OpenCall]:
    halves = item.get("Open", {}).get("M", {})
    # Map keys are ``c<call id>``: an attribute name is never empty.
    return {name[1:]: _decode_half(bytes(value["B"])) for name, value in halves.items()}


class _Update:
    """An UpdateExpression of SETs and ADDs, with its placeholders."""

    def __init__(self) -> None:
        self.sets: list[str] = []
        self.adds: list[str] = []
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def _placeholders(self, name: str, value: Any) -> tuple[str, str]:
        number = len(self.names)
        self.names[f"#n{number}"] = name
        self.values[f":v{number}"] = value
        return f"#n{number}", f":v{number}"

    def set(self, name: str, value: Any, *, if_absent: bool = False) -> None:
        attribute, placeholder = self._placeholders(name, value)
        if if_absent:
            self.sets.append(f"{attribute} = if_not_exists({attribute}, {placeholder})")
        else:
            self.sets.append(f"{attribute} = {placeholder}")

    def add(self, name: str, count: int) -> None:
        if count:
            attribute, placeholder = self._placeholders(name, {"N": str(count)})
            self.adds.append(f"{attribute} {placeholder}")

    def __bool__(self) -> bool:
        return bool(self.sets or self.adds)

    def request(self) -> dict[str, Any]:
        parts = []
        if self.sets:
            parts.append("SET " + ", ".join(self.sets))
        if self.adds:
            parts.append("ADD " + ", ".join(self.adds))
        return {
            "UpdateExpression": " ".join(parts),
            "ExpressionAttributeNames": self.names,
            "ExpressionAttributeValues": self.values,
        }


class _Request:
    """One request's item as read, and what its fold produced."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.loaded = False
        self.version: int | None = None
        self.state: RequestState | None = None
        self.halves: dict[str, OpenCall] = {}
        self.rollups: dict[RollupKey, Rollup] = {}


def _version_record(state: str) -> Item:
    return {
        _KEY: {"S": _META},
        _SORT: {"S": _VERSION_SORT},
        "Version": {"N": str(PROJECTION_VERSION)},
        "State": {"S": state},
    }


def record_new_table(client: DynamoDBClient, table_name: str, *, events_stored: bool) -> None:
    """Record the state of a read-model table just made: current when no
    event is stored yet, never built otherwise (readers then ask for
    ``eventtrail rebuild`` rather than show only what came after)."""
    try:
        client.put_item(
            TableName=table_name,
            Item=_version_record(_NEVER_BUILT if events_stored else _CURRENT),
            ConditionExpression="attribute_not_exists(#k)",
            ExpressionAttributeNames={"#k": _KEY},
        )
    except ClientError as error:
        if _code(error) != "ConditionalCheckFailedException":
            raise


class DynamoDBReadModels(ReadModels):
    """The read models of the events in ``events`` (the store that calls
    :meth:`apply`), kept in the table ``table_name``.

    ``retention_days`` sets each request summary's ``ExpiresAt`` (its start
    plus the retention), as the store does for events; rollup rows are small
    and kept. ``threads`` bounds the requests in flight at once.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        events: Store,
        retention_days: float | None = None,
        threads: int = 16,
    ) -> None:
        self.client = client
        self.table_name = table_name
        self.events = events
        self.retention_days = retention_days
        self.threads = threads
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._horizon = ""
        # A rebuild reads the rows it just wrote (the all-time rows are set
        # from the six-hour ones at its end): strongly consistent reads then.
        self._consistent_reads = False
        self._days_recorded: set[str] = set()
        self._months_recorded: set[str] = set()
        self._missing_table_logged = False
        self._missing_until = 0.0

    # ------------------------------------------------------------ plumbing

    def _threads(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.threads, thread_name_prefix="eventtrail-read-models"
                )
            return self._pool

    def _map(self, work: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
        if len(jobs) <= 1:
            return [work(job) for job in jobs]
        return list(self._threads().map(work, jobs))

    def _call(self, what: str, operation: str, **request: Any) -> Any:
        """One DynamoDB call; throttling is retried, everything else raised as a StoreError."""
        method = getattr(self.client, operation)
        last: BaseException | None = None
        for _ in WRITE_RETRY.delays():
            try:
                return method(TableName=self.table_name, **request)
            except ClientError as error:
                if _code(error) not in _RETRYABLE:
                    raise _store_error(what, error) from None
                last = error
            except BotoCoreError as error:
                last = error
        assert last is not None
        raise _store_error(what, last) from None

    def _query(self, what: str, **request: Any) -> Iterator[Item]:
        while True:
            response = self._call(what, "query", **request)
            yield from response.get("Items", [])
            last = response.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None

    # ------------------------------------------------------------ writing

    def apply(self, events: Sequence[Event]) -> None:
        """Fold newly stored ``events`` into the read models (see the module
        docstring for what makes it count each event once). A request that
        keeps failing is logged and left out: its events are stored, and
        ``eventtrail rebuild --since`` counts them."""
        if not any(event.type in CALL_EVENT_TYPES for event in events):
            return
        if time.monotonic() < self._missing_until:
            return
        try:
            if not self.is_current():
                return
        except TransientStoreError as error:
            log.error(
                "read models: %d events left out (%s); `eventtrail rebuild --since` counts them",
                len(events),
                error,
            )
            return
        except StoreError as error:
            # A deployment without the read-model table keeps storing events;
            # whether the table came is asked again a minute later.
            self._missing_until = time.monotonic() + MISSING_TABLE_RECHECK
            if not self._missing_table_logged:
                self._missing_table_logged = True
                log.warning("read models not kept: %s", error)
            return
        self._apply(events, counting_from=None)

    def _apply(self, events: Sequence[Event], *, counting_from: str | None) -> None:
        groups: dict[str, list[Event]] = {}
        for event in events:
            if event.type in CALL_EVENT_TYPES:
                groups.setdefault(event.request_id, []).append(event)
        if not groups:
            return
        folded = self._map(lambda group: self._fold_request(group, counting_from), list(groups.values()))
        deltas: dict[RollupKey, Rollup] = {}
        for request in folded:
            if request is None:
                continue
            for key, rollup in request.rollups.items():
                found = deltas.get(key)
                if found is None:
                    deltas[key] = rollup
                else:
                    found.merge(rollup)
        self._add_rollups([(key, rollup) for key, rollup in deltas.items() if not rollup.is_empty()])

    def _fold_request(self, events: list[Event], counting_from: str | None) -> _Request | None:
        """Fold one request's events and write its item; the rollup deltas
        come back for the caller to add once every request item is written."""
        request_id = events[0].request_id
        for _ in CONFLICT_RETRY.delays():
            request = _Request(request_id)
            self._local.request = request
            try:
                super()._apply(events, counting_from=counting_from)
                return request
            except _Conflict:
                continue
            except StoreError as error:
                log.error(
                    "read models: request %r left out (%s); `eventtrail rebuild --since` counts it",
                    request_id,
                    error,
                )
                return None
            finally:
                self._local.request = None
        log.error(
            "read models: request %r kept changing under this consumer; left out"
            " (`eventtrail rebuild --since` counts it)",
            request_id,
        )
        return None

    def _folding(self) -> _Request:
        """The request this thread is folding."""
        request: _Request | None = getattr(self._local, "request", None)
        if request is None:
            raise RuntimeError("read-model primitives run inside _fold_request only")
        return request

    def _current(self) -> _Request:
        """The request this thread is folding, its item read (once)."""
        request = self._folding()
        if not request.loaded:
            response = self._call(
                "read a request summary",
                "get_item",
                Key=_request_key(request.request_id),
                ConsistentRead=True,
            )
            item = response.get("Item")
            if item is not None:
                request.version = _int(item, "Version")
                request.state = _state_of(item)
                request.halves = _halves_of(item)
            request.loaded = True
        return request

    def _open_calls(self, keys: Collection[CallKey]) -> dict[CallKey, OpenCall]:
        request = self._current()
        found: dict[CallKey, OpenCall] = {}
        for key in keys:
            half = request.halves.get(key.call_id)
            if half is not None and half.timestamp >= self._horizon:
                found[key] = half
        return found

    def _request_states(self, request_ids: Collection[str]) -> dict[str, RequestState]:
        request = self._current()
        if request.state is None or request.request_id not in request_ids:
            return {}
        return {request.request_id: msgspec.structs.replace(request.state)}

    def _commit(self, changes: Changes) -> None:
        if getattr(self._local, "request", None) is None:
            # Rollup deltas alone, outside a request's fold (a rebuild's last step).
            self._add_rollups(
                [(key, rollup) for key, rollup in changes.rollups.items() if not rollup.is_empty()]
            )
            return
        if changes.open_calls or changes.closed_calls or changes.requests:
            request = self._current()
            halves = {
                call_id: half for call_id, half in request.halves.items() if half.timestamp >= self._horizon
            }
            for key in changes.closed_calls:
                halves.pop(key.call_id, None)
            for key, half in changes.open_calls.items():
                halves[key.call_id] = half
            state = changes.requests.get(request.request_id, request.state)
            self._write_request(request, state, halves)
        # Added once every request item of the batch is written.
        self._folding().rollups = changes.rollups

    def _write_request(
        self, request: _Request, state: RequestState | None, halves: dict[str, OpenCall]
    ) -> None:
        """Write the request's item whole, on the condition that nobody wrote
        it since it was read; :class:`_Conflict` otherwise."""
        version = (request.version or 0) + 1
        item: Item = {
            **_request_key(request.request_id),
            "RequestId": {"S": request.request_id},
            "Version": {"N": str(version)},
        }
        if halves:
            item["Open"] = {
                "M": {f"c{call_id}": {"B": _encode_half(half)} for call_id, half in halves.items()}
            }
        if state is not None:
            summary = state.summary()
            item |= {
                "StartedAt": {"S": summary.started_at},
                "EndedAt": {"S": summary.ended_at},
                "DurationMs": {"N": _number(summary.duration_ms)},
                "Services": {"L": [{"S": service} for service in summary.services]},
                "Calls": {"N": str(summary.calls)},
                "Ended": {"N": str(state.ended)},
                "Errors": {"N": str(summary.errors)},
                "Status": {"S": summary.status},
                _INDEX.partition_key: {"S": _request_day(summary.started_at, request.request_id)},
                _INDEX.attribute: {"S": _order_key(summary.started_at, request.request_id)},
            }
            if self.retention_days is not None:
                expires = moment_of(summary.started_at).timestamp() + self.retention_days * 86400
                item[READ_MODELS.ttl] = {"N": str(int(expires))}
            self._record_day(summary.started_at[:10])
        if request.version is None:
            condition: dict[str, Any] = {
                "ConditionExpression": "attribute_not_exists(#k)",
                "ExpressionAttributeNames": {"#k": _KEY},
            }
        else:
            condition = {
                "ConditionExpression": "#v = :v",
                "ExpressionAttributeNames": {"#v": "Version"},
                "ExpressionAttributeValues": {":v": {"N": str(request.version)}},
            }
        try:
            self.client.put_item(TableName=self.table_name, Item=item, **condition)
        except ClientError as error:
            if _code(error) == "ConditionalCheckFailedException":
                raise _Conflict from None
            raise _store_error("write a request summary", error) from None
        except BotoCoreError as error:
            raise _store_error("write a request summary", error) from None

    def _record_day(self, day: str) -> None:
        """Add ``day`` to the days the request index holds: the search walks
        those days, newest first."""
        self._record(_DAYS_SORT, "Days", {day}, self._days_recorded, "record a day of requests")

    def _record_months(self, months: set[str]) -> None:
        """Add ``months`` (``YYYY-MM``) to the months that hold rollup rows,
        before their rows are written: a reader never finds a row in a month
        not listed."""
        self._record(_MONTHS_SORT, "Months", months, self._months_recorded, "record the months of rollups")

    def _record(self, sort: str, attribute: str, values: set[str], recorded: set[str], doing: str) -> None:
        """Add ``values`` to the string set ``attribute`` of the meta item
        ``sort``, each once per process (``recorded`` holds those added)."""
        new = values - recorded
        if not new:
            return
        self._call(
            doing,
            "update_item",
            Key={_KEY: {"S": _META}, _SORT: {"S": sort}},
            UpdateExpression="ADD #a :v",
            ExpressionAttributeNames={"#a": attribute},
            ExpressionAttributeValues={":v": {"SS": sorted(new)}},
        )
        with self._lock:
            recorded |= new

    def _add_rollups(self, deltas: list[tuple[RollupKey, Rollup]]) -> None:
        if not deltas:
            return
        try:
            self._record_months({key.bucket[:7] for key, _ in deltas})
        except StoreError as error:
            log.error(
                "read models: %d rollup rows not updated (%s); `eventtrail rebuild --since` repairs them",
                len(deltas),
                error,
            )
            return
        failures = [error for error in self._map(self._add_rollup, deltas) if error is not None]
        if failures:
            log.error(
                "read models: %d rollup rows not updated (first: %s);"
                " `eventtrail rebuild --since` repairs them",
                len(failures),
                failures[0],
            )

    def _add_rollup(self, job: tuple[RollupKey, Rollup]) -> str | None:
        """Add one delta to its row (the row's names set on the way); the
        error, if the row could not be updated."""
        key, delta = job
        row = _rollup_key(key)
        bins = sorted(delta.sketch.counts.items())
        chunks = [bins[start : start + _BINS_PER_UPDATE] for start in range(0, len(bins), _BINS_PER_UPDATE)]
        try:
            stored: Item = {}
            for index, chunk in enumerate(chunks or [[]]):
                update = _Update()
                if index == 0:
                    for name, text in (
                        ("Bucket", key.bucket),
                        ("Caller", key.caller),
                        ("Service", key.service),
                        ("Operation", key.operation),
                    ):
                        update.set(name, {"S": text})
                    for name, count in (
                        ("Calls", delta.calls),
                        *zip(_FAILED, delta.failures, strict=True),
                        ("Abandoned", delta.abandoned),
                    ):
                        update.add(name, count)
                    for bound, value in (("Low", delta.sketch.low), ("High", delta.sketch.high)):
                        if value is not None:
                            update.set(bound, {"N": _number(value)}, if_absent=True)
                for bucket, count in chunk:
                    update.add(f"{_BIN_PREFIX}{bucket}", count)
                if not update:
                    continue
                response = self._call(
                    "add to a rollup row",
                    "update_item",
                    Key=row,
                    **update.request(),
                    ReturnValues="ALL_NEW" if index == 0 else "NONE",
                )
                if index == 0:
                    stored = response.get("Attributes", {})
            self._widen_bounds(row, delta.sketch, stored)
        except StoreError as error:
            return str(error)
        return None

    def _widen_bounds(self, row: dict[str, Any], sketch: LatencySketch, stored: Item) -> None:
        """Lower ``Low`` / raise ``High`` when the delta goes past them: a
        conditional SET, so concurrent writers keep the extreme one."""
        for bound, value, compare in (("Low", sketch.low, ">"), ("High", sketch.high, "<")):
            if value is None or bound not in stored:
                continue
            current = float(stored[bound]["N"])
            if not (current > value if compare == ">" else current < value):
                continue
            try:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=row,
                    UpdateExpression="SET #b = :v",
                    ConditionExpression=f"#b {compare} :v",
                    ExpressionAttributeNames={"#b": bound},
                    ExpressionAttributeValues={":v": {"N": _number(value)}},
                )
            except ClientError as error:
                if _code(error) != "ConditionalCheckFailedException":
                    raise _store_error("widen a rollup row's bounds", error) from None
            except BotoCoreError as error:
                raise _store_error("widen a rollup row's bounds", error) from None

    def _expire_open_calls(self, before: str) -> None:
        # Open halves live in their request's item: the ones older than the
        # horizon are ignored from now on and dropped when the item is next written.
        with self._lock:
            if before > self._horizon:
                self._horizon = before

    # ------------------------------------------------------------ versions

    def _version_item(self) -> Item | None:
        response = self._call(
            "read the read models' version",
            "get_item",
            Key={_KEY: {"S": _META}, _SORT: {"S": _VERSION_SORT}},
            ConsistentRead=True,
        )
        item: Item | None = response.get("Item")
        return item

    def _stored_version(self) -> int | None:
        item = self._version_item()
        if item is None:
            # A new table: ``eventtrail aws init`` records "never built" when
            # it adds this table beside events that are already stored.
            return PROJECTION_VERSION
        if item.get("State", {}).get("S") != _CURRENT:
            return None
        return _int(item, "Version")

    def _record_version(self, state: str) -> None:
        self._call("record the read models' version", "put_item", Item=_version_record(state))

    # ------------------------------------------------------------ replay

    def _replaying(self, cut: str | None, join_from: str | None) -> AbstractContextManager[Replay]:
        return self._replay(cut, join_from)

    @contextmanager
    def _replay(self, cut: str | None, join_from: str | None) -> Iterator[Replay]:
        # Consumers see the read models as outdated (and leave them alone)
        # until the replay ends; an error leaves them so.
        self._record_version(_REBUILDING)
        self._drop(cut, join_from)
        with self._lock:
            self._horizon = ""
        self._consistent_reads = True
        try:
            yield Replay(self._replayed_batches(join_from), None)
        finally:
            self._consistent_reads = False
        self._record_version(_CURRENT)

    def _drop(self, cut: str | None, join_from: str | None) -> None:
        """Delete the rollup rows from ``cut`` on, the requests that started
        from it, and the open halves from ``join_from`` on (all when ``None``)."""
        doomed: list[dict[str, Any]] = []
        request: dict[str, Any] = {
            "ConsistentRead": True,
            # Every name escaped: Bucket, Open, Version... are reserved words.
            "ProjectionExpression": "#k, #s, #b, #t, #o",
            "ExpressionAttributeNames": {
                "#k": _KEY,
                "#s": _SORT,
                "#b": "Bucket",
                "#t": "StartedAt",
                "#o": "Open",
            },
        }
        while True:
            response = self._call("list the read models", "scan", **request)
            for item in response.get("Items", []):
                partition = item[_KEY]["S"]
                key = {_KEY: item[_KEY], _SORT: item[_SORT]}
                if partition.startswith("rollup#"):
                    if cut is None or item["Bucket"]["S"] >= cut:
                        doomed.append(key)
                elif partition.startswith("request#"):
                    started = item.get("StartedAt", {}).get("S")
                    if cut is None or started is None or started >= cut:
                        doomed.append(key)
                    elif join_from is not None:
                        self._drop_halves(key, item, join_from)
            last = response.get("LastEvaluatedKey")
            if not last:
                break
            request["ExclusiveStartKey"] = last
        for start in range(0, len(doomed), 25):
            self._delete_all(doomed[start : start + 25])

    def _drop_halves(self, key: dict[str, Any], item: Item, join_from: str) -> None:
        halves = _halves_of(item)
        gone = [call_id for call_id, half in halves.items() if half.timestamp >= join_from]
        if not gone:
            return
        names = {f"#c{index}": f"c{call_id}" for index, call_id in enumerate(gone)}
        self._call(
            "drop open calls",
            "update_item",
            Key=key,
            UpdateExpression="REMOVE " + ", ".join(f"#o.{name}" for name in names),
            ExpressionAttributeNames={"#o": "Open", **names},
        )

    def _delete_all(self, keys: list[dict[str, Any]]) -> None:
        pending: list[Any] = [{"DeleteRequest": {"Key": key}} for key in keys]
        for _ in WRITE_RETRY.delays():
            try:
                response = self.client.batch_write_item(RequestItems={self.table_name: pending})
            except (ClientError, BotoCoreError) as error:
                raise _store_error("delete read models", error) from None
            pending = response.get("UnprocessedItems", {}).get(self.table_name, [])
            if not pending:
                return
        raise TransientStoreError(f"DynamoDB kept {len(pending)} deletions of read models unprocessed")

    def _replayed_batches(self, join_from: str | None, batch_size: int = 500) -> Iterator[list[Event]]:
        """The stored call events from ``join_from`` on, in time order (the
        three types merged), in batches."""
        since = moment_of(join_from) if join_from else None
        streams = [self._events_of(type_, since) for type_ in CALL_EVENT_TYPES]
        merged = heapq.merge(*streams, key=lambda event: (event.timestamp, event.id))
        while True:
            batch = list(itertools.islice(merged, batch_size))
            if not batch:
                return
            yield batch

    def _events_of(self, type_: str, since: datetime | None) -> Iterator[Event]:
        cursor: str | None = None
        while True:
            page = self.events.events(type=type_, since=since, limit=1000, cursor=cursor)
            yield from page.events
            if page.cursor is None:
                return
            cursor = page.cursor

    # ------------------------------------------------------------ reading

    def _read_rollups(
        self, step: str, first: str, last: str, *, service: str | None, operations: bool
    ) -> Iterator[tuple[RollupKey, Rollup]]:
        periods = _periods(step, first, last)
        if first[:7] != last[:7]:
            # One read of the months holding rows instead of a query per
            # month and shard (a range from year 1, as a partial rebuild
            # sums the six-hour rows, spans 120,000 months).
            months = self._rollup_months()
            periods = [period for period in periods if period[:7] in months]
        partitions = [
            _rollup_partition(step, operations, period, shard)
            for period in periods
            for shard in range(READ_MODELS.rollup_shards)
        ]
        consistent = self._consistent_reads

        def rows(partition: str) -> list[Item]:
            request: dict[str, Any] = {
                "ConsistentRead": consistent,
                "KeyConditionExpression": "#k = :k AND #s BETWEEN :first AND :last",
                "ExpressionAttributeNames": {"#k": _KEY, "#s": _SORT},
                "ExpressionAttributeValues": {
                    ":k": {"S": partition},
                    ":first": {"S": f"{first}#"},
                    # Row keys are ``<bucket>#<hex digest>``: "~" sorts after any digest.
                    ":last": {"S": f"{last}#~"},
                },
            }
            if service is not None:
                request["FilterExpression"] = "#svc = :svc"
                request["ExpressionAttributeNames"]["#svc"] = "Service"
                request["ExpressionAttributeValues"][":svc"] = {"S": service}
            return list(self._query("read rollups", **request))

        for found in self._map(rows, partitions):
            for item in found:
                yield _rollup_of(item, step)

    def _rollup_months(self) -> set[str]:
        return self._recorded(_MONTHS_SORT, "Months", "read the months of rollups")

    def _days(self) -> list[str]:
        return sorted(self._recorded(_DAYS_SORT, "Days", "read the days of requests"), reverse=True)

    def _recorded(self, sort: str, attribute: str, doing: str) -> set[str]:
        """The string set ``attribute`` of the meta item ``sort`` (see :meth:`_record`)."""
        response = self._call(
            doing, "get_item", Key={_KEY: {"S": _META}, _SORT: {"S": sort}}, ConsistentRead=True
        )
        return set(response.get("Item", {}).get(attribute, {}).get("SS", []))

    def _find_requests(
        self, query: RequestQuery, after: tuple[str, str] | None, limit: int
    ) -> list[RequestSummary]:
        upper: str | None = query.until
        upper_inclusive = False
        if after is not None:
            past = _order_key(*after)
            if upper is None or past < upper:
                upper = past
        lower = query.since
        days = [
            day
            for day in self._days()
            if (lower is None or day >= lower[:10]) and (upper is None or day <= upper[:10])
        ]
        found: list[RequestSummary] = []
        for day in days:
            streams = [
                self._index_items(f"{day}#{shard}", query, lower, upper, upper_inclusive, limit)
                for shard in range(READ_MODELS.request_shards)
            ]
            merged = heapq.merge(*streams, key=lambda item: item[_INDEX.attribute]["S"], reverse=True)
            for item in itertools.islice(merged, limit - len(found)):
                found.append(_summary_of(item))
            if len(found) >= limit:
                break
        return found

    def _index_items(
        self,
        partition: str,
        query: RequestQuery,
        lower: str | None,
        upper: str | None,
        upper_inclusive: bool,
        page_size: int,
    ) -> Iterator[Item]:
        names = {"#p": _INDEX.partition_key}
        values: dict[str, Any] = {":p": {"S": partition}}
        condition = "#p = :p"
        if lower is not None or upper is not None:
            names["#o"] = _INDEX.attribute
        if lower is not None and upper is not None:
            condition += " AND #o BETWEEN :lo AND :hi"
            values[":lo"] = {"S": lower}
            values[":hi"] = {"S": upper}
        elif lower is not None:
            condition += " AND #o >= :lo"
            values[":lo"] = {"S": lower}
        elif upper is not None:
            condition += " AND #o < :hi"
            values[":hi"] = {"S": upper}
        filters = []
        if query.service is not None:
            filters.append("contains(#svcs, :svc)")
            names["#svcs"] = "Services"
            values[":svc"] = {"S": query.service}
        if query.status is not None:
            filters.append("#st = :st")
            names["#st"] = "Status"
            values[":st"] = {"S": query.status}
        if query.min_duration_ms is not None:
            filters.append("#d >= :d")
            names["#d"] = "DurationMs"
            values[":d"] = {"N": _number(float(query.min_duration_ms))}
        request: dict[str, Any] = {
            "IndexName": _INDEX.name,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": max(10, page_size),
        }
        if filters:
            request["FilterExpression"] = " AND ".join(filters)
        for item in self._query("search requests", **request):
            order = item[_INDEX.attribute]["S"]
            # BETWEEN includes its upper bound, which is exclusive here.
            if upper is not None and not upper_inclusive and order >= upper:
                continue
            yield item
