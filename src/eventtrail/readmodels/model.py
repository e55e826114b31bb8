"""The shapes of the read models and the pure functions that derive them from
events: nothing here reads or writes a backend.

Rollups are kept per time bucket at three steps, a minute, an hour and six
hours, so that any window is covered by a bounded number of buckets (minutes
at its edges, then hours, six-hour buckets in between) whatever its length.
Each rollup row is keyed by step, bucket, caller (the event's source),
service (``data.Name``) and operation (:func:`operation_name`), plus one row
per (caller, service) over all operations (:data:`ALL_OPERATIONS`), which is
what health and the service map read.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

import msgspec

from eventtrail.calls import DISCONNECTED, ERROR_KINDS
from eventtrail.readmodels.sketch import LatencySketch, SketchSum
from eventtrail.times import format_moment, moment_of

__all__ = [
    "ALL_OPERATIONS",
    "ALL_TIME",
    "ALL_TIME_BUCKET",
    "FAILURE_KINDS",
    "PROJECTION_VERSION",
    "STEPS",
    "UNKNOWN_OPERATION",
    "WALK_STEPS",
    "CallKey",
    "Changes",
    "OpenCall",
    "RequestQuery",
    "RequestState",
    "RequestStatus",
    "RequestSummary",
    "Rollup",
    "RollupKey",
    "SeriesPoint",
    "StoredSketch",
    "bucket_range",
    "bucket_start",
    "client_left",
    "cover",
    "cover_minutes",
    "failure_kind",
    "minute_ceiling",
    "minute_floor",
    "minute_range",
    "operation_name",
    "path_template",
]

#: The shape of every read model. A store whose read models carry another
#: version refuses to read them until they are rebuilt from the events.
#: 3: rollups count the calls their clients abandoned. A backend may keep
#: more than every backend does (its own rows): it then has a version of its
#: own (:attr:`~eventtrail.readmodels.port.ReadModels.version`).
PROJECTION_VERSION = 3

#: How a call can fail: a 5xx response, or one of the gateway's error kinds
#: (``error`` is any other failure).
FAILURE_KINDS: tuple[str, ...] = ("5xx", *ERROR_KINDS)

#: The steps at which rollups may be kept, in seconds, finest first. Each
#: step divides the next, and six hours divide a day (so that buckets of
#: every step start on the step's multiples since the epoch and on a day's
#: bounds). Every backend keeps those of :data:`WALK_STEPS`; ten minutes
#: keep the edges of a window cheap wherever they fall in their hours, where
#: a row read costs more than a row written (SQLite: on DynamoDB each range
#: of a window is queries of its own, and each row a write per batch).
STEPS: dict[str, int] = {"1m": 60, "10m": 600, "1h": 3600, "6h": 6 * 3600}

#: The steps every backend keeps, and whose buckets a walk back in time
#: judges, finest first (the buckets covering a window, then the finer
#: buckets within the one where a run starts: a bucket is judged on all its
#: calls, so every step between the minute and the run's coarse bucket would
#: be one more bucket in which the run's first minutes may be outweighed).
WALK_STEPS: tuple[str, ...] = ("1m", "1h", "6h")

#: The operation of the rollup rows that count every operation of a service.
ALL_OPERATIONS = "*"

#: The step of the rollup rows that count every call since the first, in one
#: bucket (:data:`ALL_TIME_BUCKET`): what a Prometheus scrape reads, one row
#: per edge and operation however long the read models have been kept. Always
#: the sum of the coarsest step's rows.
ALL_TIME = "all"
ALL_TIME_BUCKET = "0001-01-01T00:00:00.000000Z"

#: The operation of a call whose request event was not (yet) seen.
UNKNOWN_OPERATION = "(unknown)"

RequestStatus = Literal["ok", "error", "pending"]


# ---------------------------------------------------------------- operations

_METHOD = re.compile(r"[A-Z]{1,16}")
_UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.IGNORECASE)
_HEX = re.compile(r"[0-9a-f]{16,}", re.IGNORECASE)
#: Words with a short version number (``v1``, ``api2``, ``oauth2``) are names, not ids.
_VERSIONED_WORD = re.compile(r"[A-Za-z][A-Za-z_-]{0,11}[0-9]{1,2}")
_MAX_WORD = 40
_MAX_SEGMENTS = 12
ID_PLACEHOLDER = "{id}"


def _is_id(segment: str) -> bool:
    if len(segment) > _MAX_WORD or segment.isdigit():
        return True
    if _UUID.fullmatch(segment) or _HEX.fullmatch(segment):
        return True
    if not any(character.isdigit() for character in segment):
        # Words (``orders``, ``by-name``) name resources; but a mail address
        # or other punctuated value names one instance.
        return "@" in segment or "%" in segment or "=" in segment
    return not _VERSIONED_WORD.fullmatch(segment)


def path_template(path: str) -> str:
    """``path`` with its query dropped and every segment that looks like an id
    (numbers, UUIDs, hex of 16 digits or more, anything mixing digits into a
    word, over-long or punctuated segments) replaced by ``{id}``: one
    template per route, so the number of operations stays bounded."""
    # Routes repeat: short paths are remembered (long ones are rare and
    # would make the cache hold megabytes).
    return _cached_template(path) if len(path) <= _CACHED_PATH_LENGTH else _template(path)


_CACHED_PATH_LENGTH = 512


@functools.lru_cache(maxsize=8192)
def _cached_template(path: str) -> str:
    return _template(path)


def _template(path: str) -> str:
    path = path.split("?", 1)[0].split("#", 1)[0]
    segments = [segment for segment in path.split("/") if segment]
    shown = [ID_PLACEHOLDER if _is_id(segment) else segment for segment in segments[:_MAX_SEGMENTS]]
    if len(segments) > _MAX_SEGMENTS:
        shown.append("...")
    return "/" + "/".join(shown)


def operation_name(method: object, path: object) -> str:
    """``GET /orders/{id}``: the method and the path's template;
    :data:`UNKNOWN_OPERATION` when either is missing or not text."""
    if method.__class__ is not str or path.__class__ is not str:
        if not isinstance(method, str) or not isinstance(path, str):
            return UNKNOWN_OPERATION
        method, path = str(method), str(path)
    # Named once per call event on ingest: the same routes repeat (a method
    # longer than any verb is never one, and is not kept).
    if len(path) <= _CACHED_PATH_LENGTH and len(method) <= 16:
        return _cached_operation(method, path)
    return _operation(method, path)


@functools.lru_cache(maxsize=8192)
def _cached_operation(method: str, path: str) -> str:
    return _operation(method, path)


def _operation(method: str, path: str) -> str:
    verb = method.upper()
    if not _METHOD.fullmatch(verb):
        verb = "OTHER"
    return f"{verb} {path_template(path)}"


def failure_kind(event_type_is_error: bool, status: object, error: object) -> str | None:
    """The failure kind of a call's outcome (``None``: it did not fail; a
    call whose client left before it was answered is no failure of the
    service's, and its time until then still counts as its latency)."""
    if event_type_is_error:
        if error == DISCONNECTED:
            return None
        return error if isinstance(error, str) and error in ERROR_KINDS else "error"
    if status.__class__ is int and status >= 500:
        return "5xx"
    return None


def client_left(event_type_is_error: bool, error: object) -> bool:
    """Whether a call's client left before it was answered: counted, with
    its time until then as its latency, and apart (no failure of the
    service's, but a sign of one that keeps its clients waiting)."""
    return event_type_is_error and error == DISCONNECTED


# ---------------------------------------------------------------- buckets


def bucket_start(timestamp: str, step: str) -> str:
    """The start of the ``step`` bucket holding ``timestamp`` (the store's
    fixed-width form, which string slicing keeps)."""
    if step == "1m":
        return timestamp[:16] + ":00.000000Z"
    if step == "10m":
        return timestamp[:15] + "0:00.000000Z"
    if step == "1h":
        return timestamp[:13] + ":00:00.000000Z"
    if step == "6h":
        return f"{timestamp[:11]}{int(timestamp[11:13]) // 6 * 6:02d}:00:00.000000Z"
    raise ValueError(f"no rollups at step {step!r} (steps: {', '.join(STEPS)})")


def _floor(moment: datetime, seconds: int) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    offset = (moment - epoch) // timedelta(seconds=seconds)
    return epoch + offset * timedelta(seconds=seconds)


def _ceil(moment: datetime, seconds: int) -> datetime:
    floor = _floor(moment, seconds)
    return floor if floor == moment else floor + timedelta(seconds=seconds)


def minute_ceiling(moment: datetime) -> datetime:
    """``moment`` rounded up to a whole minute (a :class:`ValueError` past
    the last minute of year 9999)."""
    try:
        return _ceil(moment, 60)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} is too close to the end of year 9999") from None


def minute_floor(moment: datetime) -> datetime:
    """``moment`` rounded down to a whole minute."""
    return _floor(moment, 60)


def minute_range(since: datetime, until: datetime) -> tuple[str, str]:
    """The first and last minute buckets of ``[since, until)`` widened to
    whole minutes (the first is after the last when the range is empty)."""
    if until <= since:
        return format_moment(since), format_moment(since - timedelta(microseconds=1))
    start, last = _floor(since, 60), _floor(until - timedelta(microseconds=1), 60)
    return format_moment(start), format_moment(last)


def bucket_range(since: datetime, until: datetime, step: str) -> tuple[str, str] | None:
    """The first and last ``step`` buckets of ``[since, until)`` (widened to
    whole buckets); ``None`` when it holds none."""
    first, last = minute_range(since, until)
    if first > last:
        return None
    if step != "1m":
        first, last = bucket_start(first, step), bucket_start(last, step)
    return first, last


def cover(
    since: datetime, until: datetime, steps: tuple[str, ...] = tuple(STEPS)
) -> tuple[tuple[str, str, str], ...]:
    """The fewest stored buckets that cover ``[since, until)``, widened to
    whole minutes: ``(step, first bucket, last bucket)`` ranges in time
    order, the coarsest step's buckets in the middle and finer ones towards
    the edges (minutes at the very edges), so that the number of buckets read
    is bounded whatever the window; with the buckets of ``steps`` only (the
    minute first). Works up to the last minute of year 9999. Pure, and asked
    for several times per reader call: cached."""
    if until <= since:
        return ()
    return cover_minutes(_floor(since, 60), _floor(until - timedelta(microseconds=1), 60), steps)


def cover_minutes(
    first: datetime, last: datetime, steps: tuple[str, ...] = tuple(STEPS)
) -> tuple[tuple[str, str, str], ...]:
    """:func:`cover` of the whole minutes ``first`` to ``last``, both
    included (the minute after the last may be past year 9999)."""
    if last < first:
        return ()
    return _cover(first, last, _sizes(steps))


@functools.cache
def _sizes(steps: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    return tuple((step, STEPS[step]) for step in steps)


_MINUTE = timedelta(minutes=1)


@functools.lru_cache(maxsize=256)
def _cover(
    first: datetime, last: datetime, steps: tuple[tuple[str, int], ...]
) -> tuple[tuple[str, str, str], ...]:
    """:func:`cover` of the minutes ``first`` to ``last`` (both included:
    the minute after the last may be past year 9999)."""
    *finer, (step, seconds) = steps
    if not finer:
        return ((step, format_moment(first), format_moment(last)),)
    edges = tuple(finer)
    size = timedelta(seconds=seconds)
    try:
        whole_first = _ceil(first, seconds)
        whole_last = _floor(last - (size - _MINUTE), seconds)
    except OverflowError:
        return _cover(first, last, edges)
    if whole_first > whole_last:
        return _cover(first, last, edges)
    ranges = _cover(first, whole_first - _MINUTE, edges) if first < whole_first else ()
    ranges += ((step, format_moment(whole_first), format_moment(whole_last)),)
    end_of_whole = whole_last + (size - _MINUTE)
    return ranges + _cover(end_of_whole + _MINUTE, last, edges) if end_of_whole < last else ranges


# ---------------------------------------------------------------- rollups


class RollupKey(NamedTuple):
    step: str
    bucket: str
    """The bucket's start, in the store's fixed-width form."""
    caller: str
    service: str
    operation: str
    """An :func:`operation_name`, or :data:`ALL_OPERATIONS`."""


#: A latency sketch as a backend stored it (the :meth:`LatencySketch.to_bytes`
#: form), or a sum of such.
StoredSketch = bytes | SketchSum


class Rollup:
    """Calls of one rollup row: how many, how many failed and how, how many
    their clients abandoned, and their latencies. A delta may hold negative
    numbers (a call moved away)."""

    __slots__ = ("_sketch", "_stored", "abandoned", "calls", "failures")

    def __init__(
        self,
        calls: int = 0,
        failures: Sequence[int] | None = None,
        sketch: LatencySketch | None = None,
        abandoned: int = 0,
    ) -> None:
        self.calls = calls
        self.failures: list[int] = list(failures) if failures is not None else [0] * len(FAILURE_KINDS)
        self.abandoned = abandoned
        self._sketch: LatencySketch | None = sketch if sketch is not None else LatencySketch()
        #: Stored sketches not read yet (while ``_sketch`` is ``None``).
        self._stored: list[StoredSketch] = []

    @classmethod
    def stored(cls, calls: int, failures: Sequence[int], abandoned: int, *sketches: StoredSketch) -> Rollup:
        """Stored rows' calls, their sketches (the :meth:`LatencySketch.to_bytes`
        form, or sums of such forms) read when first asked for: a walk back
        over many rows mostly needs their counts only, and rows merged
        before then are summed in their stored form."""
        rollup = cls.__new__(cls)
        rollup.calls = calls
        rollup.failures = list(failures)
        rollup.abandoned = abandoned
        rollup._sketch = None
        rollup._stored = list(sketches)
        return rollup

    @property
    def sketch(self) -> LatencySketch:
        if self._sketch is None:
            self._sketch = self._summed().sketch()
            self._stored = []
        return self._sketch

    def _summed(self) -> SketchSum:
        total = SketchSum()
        self.add_to(total)
        return total

    def add_to(self, total: SketchSum) -> None:
        """Add this row's latencies to ``total``."""
        if self._sketch is None:
            for part in self._stored:
                if isinstance(part, bytes):
                    total.add(part)
                else:
                    total.add_sum(part)
        else:
            total.add_sketch(self._sketch)

    def quantiles(self, *qs: float) -> list[float | None]:
        """:meth:`LatencySketch.quantiles` of the calls' latencies."""
        if self._sketch is None:
            return self._summed().quantiles(*qs)
        return self._sketch.quantiles(*qs)

    @property
    def errors(self) -> int:
        return sum(self.failures)

    def count_call(
        self, failure: str | None, latency_ms: float | None, sign: int = 1, *, abandoned: bool = False
    ) -> None:
        self.calls += sign
        if failure is not None:
            self.failures[FAILURE_KINDS.index(failure)] += sign
        if abandoned:
            self.abandoned += sign
        if latency_ms is not None:
            self.sketch.add(latency_ms, sign)

    def merge(self, other: Rollup) -> None:
        self.calls += other.calls
        self.failures = [mine + theirs for mine, theirs in zip(self.failures, other.failures, strict=True)]
        self.abandoned += other.abandoned
        if self._sketch is None and other._sketch is None:
            self._stored = self._stored + other._stored
        else:
            self.sketch.merge(other.sketch)

    def failures_by_kind(self) -> dict[str, int]:
        return dict(zip(FAILURE_KINDS, self.failures, strict=True))

    def negated(self) -> Rollup:
        """The delta that takes these calls away (the latency bounds stay)."""
        failures = [-count for count in self.failures]
        return Rollup(-self.calls, failures, self.sketch.negated(), -self.abandoned)

    def is_empty(self) -> bool:
        if self._sketch is None:
            # Stored rows hold no negative count: no calls, no latencies.
            return not self.calls and not any(self.failures) and not self.abandoned
        return not self.calls and not any(self.failures) and not self.abandoned and not self._sketch

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Rollup)
            and (self.calls, self.failures, self.abandoned) == (other.calls, other.failures, other.abandoned)
            and self.sketch == other.sketch
        )

    def __hash__(self) -> int:
        raise TypeError("a rollup is mutable")

    def __repr__(self) -> str:
        counts = f"calls={self.calls}, failures={self.failures}, abandoned={self.abandoned}"
        return f"Rollup({counts}, {self.sketch!r})"


def merged(rollups: Iterable[Rollup]) -> Rollup:
    total = Rollup()
    for rollup in rollups:
        total.merge(rollup)
    return total


class SeriesPoint(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One step of a series."""

    t: str
    calls: int
    errors: int
    abandoned: int
    """Calls whose client left before they were answered (not errors)."""
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


# ---------------------------------------------------------------- the call join


class CallKey(NamedTuple):
    request_id: str
    call_id: str


class OpenCall(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One half of a call whose other half was not seen yet.

    ``outcome`` false: the request event was seen (``operation`` is its
    operation). ``outcome`` true: the response or error was seen and counted
    under :data:`UNKNOWN_OPERATION` (``caller``, ``service``, ``bucket``,
    ``failure``, ``latency_ms`` say where and how, so that the request event
    can move it to its operation).
    """

    timestamp: str
    outcome: bool
    operation: str = UNKNOWN_OPERATION
    caller: str = ""
    service: str = ""
    failure: str | None = None
    latency_ms: float | None = None
    abandoned: bool = False


# ---------------------------------------------------------------- requests


class RequestSummary(msgspec.Struct, kw_only=True, rename="camel"):
    """One row of the request list."""

    request_id: str
    started_at: str
    ended_at: str
    duration_ms: float
    services: list[str]
    """Services called, in the order of their first call."""
    calls: int
    errors: int
    status: RequestStatus
    """``error`` if any call failed, else ``pending`` if a call has not ended, else ``ok``."""


def milliseconds_between(start: str, end: str) -> float:
    if start[:11] == end[:11] and _TIME_OF_DAY.fullmatch(start, 11) and _TIME_OF_DAY.fullmatch(end, 11):
        # Most requests start and end on one day: the fixed positions of the
        # stored form give the time of day without building datetimes.
        micros = _micros_of_day(end) - _micros_of_day(start)
        return round(micros / 1_000_000 * 1000, 3)
    delta = moment_of(end) - moment_of(start)
    return round(delta.total_seconds() * 1000, 3)


_TIME_OF_DAY = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z")


def _micros_of_day(timestamp: str) -> int:
    seconds = int(timestamp[11:13]) * 3600 + int(timestamp[14:16]) * 60 + int(timestamp[17:19])
    return seconds * 1_000_000 + int(timestamp[20:26])


class RequestState(msgspec.Struct, kw_only=True, array_like=True):
    """What the projection keeps of a request to update its summary with
    each new call event."""

    request_id: str
    started_at: str
    ended_at: str
    services: list[str]
    calls: int = 0
    ended: int = 0
    errors: int = 0

    @property
    def status(self) -> RequestStatus:
        if self.errors:
            return "error"
        return "pending" if self.ended < self.calls else "ok"

    @property
    def duration_ms(self) -> float:
        return milliseconds_between(self.started_at, self.ended_at)

    def summary(self) -> RequestSummary:
        return RequestSummary(
            request_id=self.request_id,
            started_at=self.started_at,
            ended_at=self.ended_at,
            duration_ms=self.duration_ms,
            services=list(self.services),
            calls=self.calls,
            errors=self.errors,
            status=self.status,
        )


class RequestQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which requests to list: started in ``[since, until)`` (stored
    timestamps, ``None`` for no bound), and optionally with a call to
    ``service``, with ``status``, lasting at least ``min_duration_ms``."""

    since: str | None = None
    until: str | None = None
    service: str | None = None
    status: RequestStatus | None = None
    min_duration_ms: float | None = None

    def matches(self, summary: RequestSummary) -> bool:
        return (
            (self.since is None or summary.started_at >= self.since)
            and (self.until is None or summary.started_at < self.until)
            and (self.service is None or self.service in summary.services)
            and (self.status is None or summary.status == self.status)
            and (self.min_duration_ms is None or summary.duration_ms >= self.min_duration_ms)
        )


# ---------------------------------------------------------------- one write


class Changes:
    """What applying a batch of events changes, for a backend to write at once.

    ``rollups``: deltas to add to rollup rows (created at zero when missing).
    ``open_calls``: halves of calls to keep; ``closed_calls``: to forget.
    ``requests``: request states to write whole, each with the state it
    replaces in ``previous_requests`` (``None`` for a new request), so that a
    backend can move index entries and check for concurrent writers.
    """

    __slots__ = ("closed_calls", "open_calls", "previous_requests", "requests", "rollups")

    def __init__(self) -> None:
        self.rollups: dict[RollupKey, Rollup] = {}
        self.open_calls: dict[CallKey, OpenCall] = {}
        self.closed_calls: set[CallKey] = set()
        self.requests: dict[str, RequestState] = {}
        self.previous_requests: dict[str, RequestState | None] = {}

    def rollup(self, key: RollupKey) -> Rollup:
        found = self.rollups.get(key)
        if found is None:
            found = self.rollups[key] = Rollup()
        return found

    def __bool__(self) -> bool:
        return bool(self.rollups or self.open_calls or self.closed_calls or self.requests)
