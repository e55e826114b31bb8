"""The read-model port: projections of the event log, kept as events are
stored, read by the big-picture readers, rebuilt by replaying the log.

:class:`ReadModels` holds the logic every backend shares: turning a batch of
newly stored events into :class:`~eventtrail.readmodels.model.Changes`
(joining each call's request event with its outcome, whichever comes first),
the readers (rollups over any window, series, request search with cursors)
and the replay. A backend implements a few small primitives (the methods
whose names start with ``_``), each documented with what it must guarantee.

Exactly once, in one of two ways. A backend that folds events as it stores
them (DynamoDB) calls :meth:`ReadModels.apply` with only the events the store
reports as newly ``STORED``, so a redelivered event, which the store reports
as a ``DUPLICATE``, is never counted again. A backend that follows its log
(SQLite) folds the events stored after a position and moves the position in
the same transaction as their changes (:meth:`ReadModels.catch_up`), so each
stored event is folded by exactly one committed transaction.

The call join: a call's operation is in its ``MICROSERVICE_REQUEST`` event,
its outcome and latency in its ``MICROSERVICE_RESPONSE`` or
``MICROSERVICE_ERROR`` (same ``data.callId``). The outcome counts the call at
once, in the bucket of the outcome's timestamp, under its operation when the
request event was already seen and under
:data:`~eventtrail.readmodels.model.UNKNOWN_OPERATION` otherwise; a request
event that arrives after its outcome moves the call to its operation. Per
service totals are therefore exact whatever the order of arrival. The half of
a call whose other half has not come is an *open call*; open calls older than
:data:`CALL_GRACE` (event time) expire: an outcome whose request never comes
stays under the unknown operation.
"""

from __future__ import annotations

import abc
import base64
import binascii
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NamedTuple, Protocol

import msgspec

from eventtrail.calls import ERROR, REQUEST, RESPONSE
from eventtrail.event import Event
from eventtrail.readmodels.model import (
    ALL_OPERATIONS,
    ALL_TIME,
    ALL_TIME_BUCKET,
    FAILURE_KINDS,
    PROJECTION_VERSION,
    STEPS,
    UNKNOWN_OPERATION,
    WALK_STEPS,
    CallKey,
    Changes,
    OpenCall,
    RequestQuery,
    RequestState,
    RequestSummary,
    Rollup,
    RollupKey,
    bucket_range,
    bucket_start,
    client_left,
    cover,
    failure_kind,
    operation_name,
)
from eventtrail.readmodels.sketch import bucket_of
from eventtrail.store import InvalidCursor, Store, StoreError
from eventtrail.times import EARLIEST, LATEST, format_moment, moment_before, moment_of

__all__ = [
    "CALL_EVENT_TYPES",
    "CALL_GRACE",
    "BucketCount",
    "Edge",
    "FailingRun",
    "HasReadModels",
    "ReadModels",
    "ReadModelsOutdated",
    "RequestPage",
    "read_models_of",
]

#: The event types the projections read; every other type is ignored.
CALL_EVENT_TYPES = (REQUEST, RESPONSE, ERROR)

#: How long (event time) half of a call waits for its other half.
CALL_GRACE = timedelta(hours=1)

#: Progress of a replay: events replayed so far, and the total when known.
Progress = Callable[[int, int | None], None]

Edge = tuple[str, str, str]
"""``(caller, service, operation)``."""

#: After the start of any bucket.
_LAST_BUCKET = format_moment(LATEST)


class ReadModelsOutdated(StoreError):
    """The stored read models have another shape than this version of
    eventtrail reads (or were never built): ``eventtrail rebuild`` makes them."""


class BucketCount(NamedTuple):
    """A service's calls in one bucket, from every caller."""

    step: str
    bucket: str
    calls: int
    errors: int


class FailingRun(NamedTuple):
    """The last run of a service's failing buckets (see
    :meth:`ReadModels.failing_run`)."""

    start: tuple[str, str] | None
    """``(step, bucket)`` of its oldest bucket; ``None`` when the newest
    called bucket is not failing."""
    ended_by: BucketCount | None
    """The newest called bucket before it, which is not failing; ``None``
    when every called bucket fails."""


class RequestPage(msgspec.Struct, kw_only=True, rename="camel"):
    """One page of matching requests, newest first, and the cursor of the
    next page (``None`` when every match was listed)."""

    requests: list[RequestSummary]
    cursor: str | None


def _latency(value: object) -> float | None:
    """A latency a producer reported, when it is one (bool is an int: not one)."""
    if value.__class__ is not float and value.__class__ is not int:
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


_FAILURE_INDEX = {kind: index for index, kind in enumerate(FAILURE_KINDS)}

_cursor_decode = msgspec.json.Decoder(tuple[str, str, str]).decode


def _cursor(query: RequestQuery, summary: RequestSummary) -> str:
    raw = msgspec.json.encode([_query_key(query), summary.started_at, summary.request_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _query_key(query: RequestQuery) -> str:
    return msgspec.json.encode(query).decode()


def _after(cursor: str, query: RequestQuery) -> tuple[str, str]:
    try:
        key, started_at, request_id = _cursor_decode(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        )
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursor(f"{cursor[:64]!r} is not a cursor from a previous page") from None
    if key != _query_key(query):
        raise InvalidCursor("this cursor belongs to another search (other filters)")
    return started_at, request_id


class _Plan:
    """The changes of one batch, with the open calls and request states it
    read, updated as the batch's events are folded in."""

    def __init__(
        self,
        open_calls: dict[CallKey, OpenCall],
        states: dict[str, RequestState],
        counting_from: str | None,
        steps: tuple[str, ...],
    ) -> None:
        self.changes = Changes()
        self.steps = steps
        self.open_calls: dict[CallKey, OpenCall | None] = dict(open_calls)
        self.stored_calls = set(open_calls)
        self.states = states
        self.counting_from = counting_from
        self.frozen: set[str] = set()
        if counting_from is not None:
            # A replay from a cut keeps the summaries of requests that started
            # before it (they already hold every event of theirs).
            self.frozen = {rid for rid, state in states.items() if state.started_at < counting_from}
        self.touched: set[str] = set()
        self.newest = ""
        self.cells: dict[tuple[str, str, str, str, bool], Rollup] = {}

    def count(
        self,
        timestamp: str,
        caller: str,
        service: str,
        operation: str,
        failure: str | None,
        latency: float | None,
        *,
        abandoned: bool = False,
        sign: int = 1,
        with_total: bool = True,
    ) -> None:
        # The hot path of ingest: one cell per (minute, edge, operation) here,
        # keyed by the minute's prefix of the timestamp; the four rollup rows
        # a call counts in are made from the cells at the end.
        minute = timestamp[:16]
        if self.counting_from is not None and bucket_start(timestamp, "1m") < self.counting_from:
            return
        cell_key = (minute, caller, service, operation, with_total)
        cell = self.cells.get(cell_key)
        if cell is None:
            cell = self.cells[cell_key] = Rollup()
        cell.calls += sign
        if failure is not None:
            cell.failures[_FAILURE_INDEX[failure]] += sign
        elif abandoned:
            cell.abandoned += sign
        if latency is not None:
            cell.sketch.add_to_bucket(bucket_of(latency), latency, sign)

    def state(self, request_id: str, timestamp: str, service: str) -> RequestState | None:
        """The request's state, changed by this batch from now on (``None``:
        a replay from a cut leaves this request's summary as it is)."""
        if self.counting_from is not None and (timestamp < self.counting_from or request_id in self.frozen):
            return None
        state = self.states.get(request_id)
        if request_id not in self.touched:
            self.touched.add(request_id)
            # The loaded state is never changed: it is what the new one replaces.
            self.changes.previous_requests[request_id] = state
            if state is None:
                state = RequestState(
                    request_id=request_id, started_at=timestamp, ended_at=timestamp, services=[]
                )
            else:
                state = msgspec.structs.replace(state, services=list(state.services))
            self.states[request_id] = state
        assert state is not None
        if timestamp < state.started_at:
            state.started_at = timestamp
        if timestamp > state.ended_at:
            state.ended_at = timestamp
        if service not in state.services:
            state.services.append(service)
        return state

    def fold(self, event: Event) -> None:
        data = event.data
        service = data.get("Name")
        if service.__class__ is not str:
            return
        timestamp = event.timestamp
        if timestamp > self.newest:
            self.newest = timestamp
        call_id = data.get("callId")
        key = CallKey(event.request_id, call_id) if call_id.__class__ is str else None
        if event.type == REQUEST:
            if key is not None:
                self._request(key, event, service)
            return
        is_error = event.type == ERROR
        failure = failure_kind(is_error, data.get("status"), data.get("error"))
        left = client_left(is_error, data.get("error"))
        latency = _latency(data.get("elapsedMs" if is_error else "latencyMs"))
        if key is None:
            self.count(timestamp, event.source, service, UNKNOWN_OPERATION, failure, latency, abandoned=left)
            return
        self._outcome(key, event, service, failure, latency, left)

    def _request(self, key: CallKey, event: Event, service: str) -> None:
        half = self.open_calls.get(key)
        state = self.state(key.request_id, event.timestamp, service)
        if half is None:
            operation = operation_name(event.data.get("method"), event.data.get("path"))
            self._open(key, OpenCall(timestamp=event.timestamp, outcome=False, operation=operation))
            if state is not None:
                state.calls += 1
        elif half.outcome:
            operation = operation_name(event.data.get("method"), event.data.get("path"))
            if operation != UNKNOWN_OPERATION:
                self.count(
                    half.timestamp, half.caller, half.service, UNKNOWN_OPERATION,
                    half.failure, half.latency_ms, abandoned=half.abandoned, sign=-1, with_total=False,
                )  # fmt: skip
                self.count(
                    half.timestamp, half.caller, half.service, operation,
                    half.failure, half.latency_ms, abandoned=half.abandoned, with_total=False,
                )  # fmt: skip
            self._close(key)
        # A second request event for a call already open changes no count.

    def _outcome(
        self,
        key: CallKey,
        event: Event,
        service: str,
        failure: str | None,
        latency: float | None,
        left: bool,
    ) -> None:
        half = self.open_calls.get(key)
        state = self.state(key.request_id, event.timestamp, service)
        if half is not None and not half.outcome:
            self.count(
                event.timestamp, event.source, service, half.operation, failure, latency, abandoned=left
            )
            self._close(key)
        else:
            self.count(
                event.timestamp, event.source, service, UNKNOWN_OPERATION, failure, latency, abandoned=left
            )
            if half is None:
                self._open(
                    key,
                    OpenCall(
                        timestamp=event.timestamp,
                        outcome=True,
                        caller=event.source,
                        service=service,
                        failure=failure,
                        latency_ms=latency,
                        abandoned=left,
                    ),
                )
            if state is not None:
                state.calls += 1
        if state is not None:
            state.ended += 1
            state.errors += failure is not None

    def _open(self, key: CallKey, half: OpenCall) -> None:
        self.open_calls[key] = half
        self.changes.open_calls[key] = half
        self.changes.closed_calls.discard(key)

    def _close(self, key: CallKey) -> None:
        self.open_calls[key] = None
        self.changes.open_calls.pop(key, None)
        if key in self.stored_calls:
            # Only what is stored needs deleting (most calls close in the batch that opened them).
            self.changes.closed_calls.add(key)

    def finish(self) -> Changes:
        changes = self.changes
        for (prefix, caller, service, operation, with_total), cell in self.cells.items():
            for step in self.steps:
                bucket = bucket_start(prefix, step)
                changes.rollup(RollupKey(step, bucket, caller, service, operation)).merge(cell)
                if with_total:
                    changes.rollup(RollupKey(step, bucket, caller, service, ALL_OPERATIONS)).merge(cell)
            if self.counting_from is None:
                # A replay from a cut sets the all-time rows once it is done.
                changes.rollup(RollupKey(ALL_TIME, ALL_TIME_BUCKET, caller, service, operation)).merge(cell)
                if with_total:
                    key = RollupKey(ALL_TIME, ALL_TIME_BUCKET, caller, service, ALL_OPERATIONS)
                    changes.rollup(key).merge(cell)
        for request_id in self.touched:
            changes.requests[request_id] = self.states[request_id]
        changes.rollups = {key: rollup for key, rollup in changes.rollups.items() if not rollup.is_empty()}
        return changes


class ReadModels(abc.ABC):
    """Projections of the event log: per-bucket service rollups and one
    summary per request.

    Primitives a backend implements: :meth:`_open_calls`,
    :meth:`_request_states`, :meth:`_commit`, :meth:`_expire_open_calls`,
    :meth:`_read_rollups`, :meth:`_find_requests`, :meth:`_stored_version`
    and :meth:`_replaying`. Everything else is shared.
    """

    #: The steps at which this backend keeps rollups: those of
    #: :data:`~eventtrail.readmodels.model.WALK_STEPS` at least, the coarsest
    #: of :data:`~eventtrail.readmodels.model.STEPS` last.
    steps: ClassVar[tuple[str, ...]] = WALK_STEPS
    #: The shape of its read models (:data:`PROJECTION_VERSION` unless it
    #: keeps rows of its own).
    version: ClassVar[int] = PROJECTION_VERSION

    # ------------------------------------------------------------ writing

    def catch_up(self, *, batches: int | None = None) -> int:
        """Fold what the store holds and the read models have not folded
        yet; return how many events that passed. A backend that folds events
        as it stores them has nothing to catch up with."""
        return 0

    def lag(self) -> int:
        """About how many stored events the read models have not folded yet."""
        return 0

    def apply(self, events: Sequence[Event]) -> None:
        """Fold newly stored ``events`` into the read models.

        Called with exactly the events the store reports as newly stored, in
        the same atomic unit that stores them, so that each event counts once.
        Events of other types than :data:`CALL_EVENT_TYPES` are ignored. Does
        nothing while the read models are outdated (a rebuild makes them).
        """
        if not self.is_current():
            return
        self._apply(events, counting_from=None)

    def _apply(self, events: Sequence[Event], *, counting_from: str | None) -> None:
        calls = [event for event in events if event.type in CALL_EVENT_TYPES]
        if not calls:
            return
        keys: set[CallKey] = set()
        request_ids: set[str] = set()
        for event in calls:
            call_id = event.data.get("callId")
            if call_id.__class__ is str and event.data.get("Name").__class__ is str:
                keys.add(CallKey(event.request_id, call_id))
                request_ids.add(event.request_id)
        plan = _Plan(
            self._open_calls(keys) if keys else {},
            self._request_states(request_ids) if request_ids else {},
            counting_from,
            self.steps,
        )
        for event in calls:
            plan.fold(event)
        changes = plan.finish()
        if changes:
            self._commit(changes)
        if plan.newest:
            horizon = min(plan.newest, format_moment(datetime.now(UTC)))
            try:
                expired = format_moment(moment_before(moment_of(horizon), CALL_GRACE))
            except ValueError:
                return  # events of the first hour of year 1: nothing is older
            self._expire_open_calls(expired)

    @abc.abstractmethod
    def _open_calls(self, keys: Collection[CallKey]) -> dict[CallKey, OpenCall]:
        """The open calls stored under ``keys`` (absent keys are left out).

        Must see every change committed before, and, on a backend that cannot
        apply a batch atomically, be read in the same unit that
        :meth:`_commit` then writes (or be checked by it), so that two
        consumers racing on one call never both count it.
        """

    @abc.abstractmethod
    def _request_states(self, request_ids: Collection[str]) -> dict[str, RequestState]:
        """The stored states of ``request_ids`` (absent ids are left out),
        under the same rule as :meth:`_open_calls`."""

    @abc.abstractmethod
    def _commit(self, changes: Changes) -> None:
        """Write ``changes`` at once: in the unit that stores their events on
        a backend that folds as it stores, in the unit that moves the
        position on one that follows its log.

        - every rollup delta is *added* to its row (a missing row counts as
          zero): ``calls``, each failure count, and the sketch's counts per
          bucket; deltas may be negative; additions commute, so two consumers
          writing one row lose nothing;
        - every open call of ``changes.open_calls`` is written, every key of
          ``changes.closed_calls`` deleted;
        - every request state is written whole, and the search index follows
          it (its start time, services, status and duration may have
          changed; ``changes.previous_requests`` holds what each replaces, or
          ``None`` for a new request; a backend without transactions writes
          on the condition that the stored state is still the previous one
          and raises :class:`~eventtrail.store.TransientStoreError` otherwise,
          so that the batch is retried).

        Either all of it is written with the batch's events (or position) or
        none of it. A rebuild also commits rollup deltas alone, within its
        replay (:meth:`_replaying`), outside any batch.
        """

    @abc.abstractmethod
    def _expire_open_calls(self, before: str) -> None:
        """Forget open calls whose timestamp is before ``before``. Cheap when
        there are none (called after every batch)."""

    # ------------------------------------------------------------ versions

    @abc.abstractmethod
    def _stored_version(self) -> int | None:
        """The projection version the stored read models were built with
        (``None``: never built, on a store that holds events). A new, empty
        store starts at :attr:`version`."""

    #: Who makes read models of another shape current (what a reader says).
    rebuilt_by = "run `eventtrail rebuild`"

    def is_current(self) -> bool:
        return self._stored_version() == self.version

    def is_older(self) -> bool:
        """Whether the read models were built by an older eventtrail (or
        never): a rebuild makes them current. Newer ones are left alone."""
        version = self._stored_version()
        return version is None or version < self.version

    def check(self) -> None:
        """Raise :class:`ReadModelsOutdated` unless the read models can be read."""
        version = self._stored_version()
        if version == self.version:
            return
        found = "were never built" if version is None else f"are version {version}"
        raise ReadModelsOutdated(
            f"the read models of this store {found}; this eventtrail reads version"
            f" {self.version}: {self.rebuilt_by} (the events are all there)"
        )

    # ------------------------------------------------------------ replay

    @staticmethod
    def cut(since: datetime) -> str:
        """Where a rebuild from ``since`` starts: the start of the bucket of
        the coarsest step holding it, so that no stored bucket is half
        replayed."""
        return bucket_start(format_moment(since), list(STEPS)[-1])

    def rebuild(self, since: datetime | None = None, progress: Progress | None = None) -> int:
        """Drop and rebuild the read models from the stored events; return
        how many events were replayed.

        ``since``: rebuild only from the start of that moment's bucket of
        the coarsest step (:meth:`cut`) on (rollup buckets
        from there, and the requests that started there or later); the
        events of the :data:`CALL_GRACE` before it are replayed too, to join
        calls across the cut, without counting anything. A partial rebuild
        needs current read models; a full one (``since=None``) also makes
        them current.
        """
        cut: str | None = None
        join_from: str | None = None
        if since is not None:
            self.check()
            cut = self.cut(since)
            try:
                join_from = format_moment(moment_before(moment_of(cut), CALL_GRACE))
            except ValueError:
                join_from = format_moment(EARLIEST)  # a cut in year 1's first hours: join from its start
        replayed = 0
        with self._replaying(cut, join_from) as replay:
            total = replay.total
            if progress:
                progress(0, total)
            for batch in replay.batches:
                self._apply(batch, counting_from=cut)
                replayed += len(batch)
                if progress:
                    progress(replayed, total)
            if cut is not None:
                self._recount_all_time()
        return replayed

    def _recount_all_time(self) -> None:
        """Make the all-time rows the sum of the coarsest step's rows again
        (a replay from a cut changed the rows from the cut on), by adding the
        difference."""
        coarsest = list(STEPS)[-1]
        changes = Changes()
        for operations in (False, True):
            for key, rollup in self._read_rollups(
                coarsest, ALL_TIME_BUCKET, _LAST_BUCKET, service=None, operations=operations
            ):
                edge = RollupKey(ALL_TIME, ALL_TIME_BUCKET, key.caller, key.service, key.operation)
                changes.rollup(edge).merge(rollup)
            for key, rollup in self._read_rollups(
                ALL_TIME, ALL_TIME_BUCKET, ALL_TIME_BUCKET, service=None, operations=operations
            ):
                changes.rollup(key).merge(rollup.negated())
        changes.rollups = {key: delta for key, delta in changes.rollups.items() if not delta.is_empty()}
        if changes:
            self._commit(changes)

    @abc.abstractmethod
    def _replaying(self, cut: str | None, join_from: str | None) -> AbstractContextManager[Replay]:
        """A replay of the stored events, for :meth:`rebuild`.

        On entering: drop the rollup rows of buckets at or after ``cut``, the
        request states whose ``started_at`` is at or after ``cut``, and the
        open calls at or after ``join_from`` (everything when ``None``).
        The :class:`Replay` yields the stored events of
        :data:`CALL_EVENT_TYPES` with a timestamp at or after ``join_from``,
        in time order (timestamp, then id), in batches; the port applies each
        batch with the primitives above.

        On leaving without error: record :attr:`version` as the
        stored version and make everything durable. Nothing else may change
        the read models meanwhile (SQLite: one write transaction; a backend
        without one marks the read models as being rebuilt, so that
        :meth:`apply` and the readers see them as outdated until the end).
        On an error the read models must be left either as they were or
        outdated, never half rebuilt and current.
        """

    # ------------------------------------------------------------ reading

    @abc.abstractmethod
    def _read_rollups(
        self, step: str, first: str, last: str, *, service: str | None, operations: bool
    ) -> Iterator[tuple[RollupKey, Rollup]]:
        """The rollup rows of ``step`` with ``first <= bucket <= last``:
        only those of ``service`` when given; the per-operation rows when
        ``operations`` is true, else only the :data:`ALL_OPERATIONS` rows.
        Rows whose calls sum to zero may be left out. Cost: the rows read."""

    @abc.abstractmethod
    def _find_requests(
        self, query: RequestQuery, after: tuple[str, str] | None, limit: int
    ) -> list[RequestSummary]:
        """Up to ``limit`` request summaries matching ``query``, newest first
        (``started_at`` then request id, descending), strictly after ``after``
        in that order. Exhaustive: a match is never missed however rare,
        whatever the number of non-matching requests in the range."""

    def rollups(
        self,
        since: datetime,
        until: datetime,
        *,
        service: str | None = None,
        operations: bool = False,
    ) -> dict[Edge, Rollup]:
        """Calls in ``[since, until)`` (widened to whole minutes) per
        ``(caller, service, operation)``; the operation is
        :data:`ALL_OPERATIONS` unless ``operations`` is asked for. Reads a
        bounded number of buckets per edge, whatever the window."""
        self.check()
        totals: dict[Edge, Rollup] = {}
        for step, first, last in cover(since, until, self.steps):
            for key, rollup in self._read_rollups(step, first, last, service=service, operations=operations):
                edge = (key.caller, key.service, key.operation)
                found = totals.get(edge)
                if found is None:
                    totals[edge] = rollup
                else:
                    found.merge(rollup)
        return totals

    def all_time(self) -> dict[Edge, Rollup]:
        """Every call counted since the first, per ``(caller, service,
        ALL_OPERATIONS)``: one row per edge, whatever the time kept."""
        self.check()
        return {
            (key.caller, key.service, key.operation): rollup
            for key, rollup in self._read_rollups(
                ALL_TIME, ALL_TIME_BUCKET, ALL_TIME_BUCKET, service=None, operations=False
            )
            if not rollup.is_empty()
        }

    def buckets(
        self,
        since: datetime,
        until: datetime,
        *,
        service: str | None = None,
        operations: bool = False,
        step: str = "1m",
    ) -> Iterator[tuple[RollupKey, Rollup]]:
        """The rows of ``step`` buckets in ``[since, until)`` (widened to
        whole buckets)."""
        self.check()
        found = bucket_range(since, until, step)
        if found is None:
            return iter(())
        return self._read_rollups(step, *found, service=service, operations=operations)

    def covering(
        self, since: datetime, until: datetime, *, service: str | None = None
    ) -> list[tuple[RollupKey, Rollup]]:
        """The per-service rows of the fewest buckets of
        :data:`~eventtrail.readmodels.model.WALK_STEPS` covering ``[since,
        until)`` (see :func:`~eventtrail.readmodels.model.cover`), unmerged:
        what a walk back in time over a long window reads."""
        self.check()
        rows: list[tuple[RollupKey, Rollup]] = []
        for step, first, last in cover(since, until, WALK_STEPS):
            rows += self._read_rollups(step, first, last, service=service, operations=False)
        return rows

    def bucket_counts(
        self, since: datetime, until: datetime, *, service: str, step: str | None = None
    ) -> list[BucketCount]:
        """Calls and failed calls of ``service`` per bucket, summed over its
        callers, newest first: the buckets :meth:`covering` reads, or every
        ``step`` bucket in ``[since, until)`` when ``step`` is given. What a
        walk back over many buckets reads when it mostly needs counts."""
        rows = (
            self.covering(since, until, service=service)
            if step is None
            else list(self.buckets(since, until, service=service, step=step))
        )
        merged: dict[tuple[str, str], BucketCount] = {}
        for key, rollup in rows:
            so_far = merged.get((key.step, key.bucket))
            calls, errors = (so_far.calls, so_far.errors) if so_far is not None else (0, 0)
            merged[(key.step, key.bucket)] = BucketCount(
                key.step, key.bucket, calls + rollup.calls, errors + rollup.errors
            )
        return sorted(merged.values(), key=lambda count: count.bucket, reverse=True)

    def failing_run(
        self,
        since: datetime,
        until: datetime,
        *,
        service: str,
        max_error_rate: float,
        step: str | None = None,
    ) -> FailingRun:
        """The last run of the buckets :meth:`bucket_counts` reads (buckets
        without calls aside) in each of which ``service``'s calls failed at
        a rate over ``max_error_rate`` (``errors / calls``, as a float),
        walking back from the newest: where it starts, and the bucket that
        ends it. What a walk back to when a service turned faulty reads,
        whatever the run's length."""
        start = None
        for count in self.bucket_counts(since, until, service=service, step=step):
            if count.calls <= 0:
                continue
            if count.errors / count.calls <= max_error_rate:
                return FailingRun(start, count)
            start = count.step, count.bucket
        return FailingRun(start, None)

    def requests(self, query: RequestQuery, *, limit: int = 50, cursor: str | None = None) -> RequestPage:
        """One page of the requests matching ``query``, newest first."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        self.check()
        after = _after(cursor, query) if cursor else None
        found = self._find_requests(query, after, limit + 1)
        if len(found) <= limit:
            return RequestPage(requests=found, cursor=None)
        del found[limit:]
        return RequestPage(requests=found, cursor=_cursor(query, found[-1]))


class Replay:
    """What :meth:`ReadModels._replaying` hands to the port: the events to
    replay in batches, and how many there are (``None`` when unknown)."""

    def __init__(self, batches: Iterator[list[Event]], total: int | None) -> None:
        self.batches = batches
        self.total = total


class HasReadModels(Protocol):
    @property
    def read_models(self) -> ReadModels: ...


def read_models_of(store: Store | Any) -> ReadModels:
    """The read models kept beside ``store``'s events."""
    found = getattr(store, "read_models", None)
    if not isinstance(found, ReadModels):
        raise StoreError(f"{type(store).__name__} keeps no read models")
    return found
