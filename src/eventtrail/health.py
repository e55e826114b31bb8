"""Service health: per upstream service, how many calls, how many failed, how
slow, which service is faulty and why, and since when.

Read from the read models (:mod:`eventtrail.readmodels`): rollups per
minute, hour and six hours (and ten minutes on SQLite), so a window of any
length costs a bounded number of buckets per service, never a read of its
events. Windows are whole minutes:
the window ends at ``until`` rounded up to a minute.

A call counts once, when it ends: a ``MICROSERVICE_RESPONSE`` (failed when its
status is 5xx) or a ``MICROSERVICE_ERROR`` (timeout, refused, reset, error).
Its latency is ``latencyMs`` of the response or ``elapsedMs`` of the error, so
timeouts weigh on the percentiles as they weigh on callers. Percentiles come
from merged latency sketches, within 1% of the exact ones.

A service is faulty when, with at least ``min_calls`` calls in the window:

- its error rate is over ``max_error_rate``; or
- its p95 latency is ``latency_factor`` times its own baseline p95 (the
  preceding window of the same length, itself with at least ``min_calls``
  calls) and at least ``min_latency_increase_ms`` above it, so that a service
  going from 2 ms to 7 ms is not called faulty.

A faulty service is faulty *since* the start of the earliest bucket of the
last run of buckets (in the window, newest first, skipping buckets without
calls) in which one of those rules held on the bucket's own calls.

Services with fewer calls get the status ``too few calls``: no verdict
either way.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from eventtrail.readmodels.model import (
    FAILURE_KINDS,
    STEPS,
    WALK_STEPS,
    Rollup,
    RollupKey,
    minute_ceiling,
    minute_floor,
)
from eventtrail.readmodels.port import BucketCount, ReadModels, read_models_of
from eventtrail.readmodels.sketch import SketchSum
from eventtrail.store import Store
from eventtrail.times import format_duration, format_moment, moment_before, moment_of

__all__ = [
    "FAILURE_KINDS",
    "HealthReport",
    "HealthThresholds",
    "ServiceEdge",
    "ServiceHealth",
    "ServiceStatus",
    "service_health",
    "service_health_since",
]

ServiceStatus = Literal["ok", "faulty", "too few calls"]

#: Each walked step's next finer one, where a walk back goes on within a bucket.
_FINER: dict[str, str] = {coarser: finer for finer, coarser in itertools.pairwise(WALK_STEPS)}


class HealthThresholds(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """When a service is called faulty."""

    max_error_rate: float = 0.05
    """Faulty above this share of failed calls (0.05 = 5%)."""
    latency_factor: float = 3.0
    """Faulty when p95 latency is this many times the baseline p95..."""
    min_latency_increase_ms: float = 100.0
    """...and at least this many milliseconds above it."""
    min_calls: int = 20
    """No verdict on a service with fewer calls in the window (or baseline)."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate < 1:
            raise ValueError("the maximum error rate must be between 0 and 1 (0.05 is 5%)")
        if not self.latency_factor > 1:
            raise ValueError("the latency factor must be greater than 1")
        if self.min_latency_increase_ms < 0:
            raise ValueError("the minimum latency increase must not be negative")
        if self.min_calls < 1:
            raise ValueError("the minimum number of calls must be at least 1")


class ServiceHealth(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One service over the window."""

    service: str
    calls: int
    errors: int
    error_rate: float
    failures: dict[str, int]
    """Failed calls by kind: ``5xx``, ``timeout``, ``refused``, ``reset``, ``error``."""
    abandoned: int
    """Calls whose client left before they were answered: among the calls,
    not the errors (their time until then is among the latencies)."""
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    baseline_calls: int
    baseline_p95_ms: float | None
    status: ServiceStatus
    reasons: list[str]
    """Why the service is faulty (empty otherwise)."""
    faulty_since: str | None = None
    """The start of the first bucket of the run in which the rule held (faulty services only)."""


class ServiceEdge(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Calls from one caller (an event source, e.g. ``Gateway``) to one service."""

    source: str
    service: str
    calls: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None


class HealthReport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Every service seen in the window, and the verdict."""

    since: str
    until: str
    window_seconds: float
    thresholds: HealthThresholds
    services: list[ServiceHealth]
    edges: list[ServiceEdge]
    faulty: list[str]
    verdict: str


class _Tally:
    """Calls of one service (or of one caller to one service)."""

    __slots__ = ("_parts", "_percentiles", "_sum", "_tallies", "abandoned", "calls", "failures")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = [0] * len(FAILURE_KINDS)
        self.abandoned = 0
        # Latencies are summed when a quantile is first asked for: a walk
        # back over a faulty service's buckets mostly needs counts only.
        self._parts: list[Rollup] = []
        self._tallies: list[_Tally] = []
        self._sum: SketchSum | None = None
        self._percentiles: list[float | None] | None = None

    @property
    def errors(self) -> int:
        return sum(self.failures)

    def latencies(self) -> SketchSum:
        if self._sum is None:
            self._sum = SketchSum()
            for part in self._parts:
                part.add_to(self._sum)
            for tally in self._tallies:
                self._sum.add_sum(tally.latencies())
            self._parts, self._tallies = [], []
        return self._sum

    def percentiles(self) -> list[float | None]:
        """p50, p95 and p99, read once (one walk of the sum gives all three)."""
        if self._percentiles is None:
            self._percentiles = self.latencies().quantiles(0.5, 0.95, 0.99)
        return self._percentiles

    def add(self, rollup: Rollup) -> None:
        self._count(rollup.calls, rollup.failures, rollup.abandoned)
        if self._sum is not None:
            rollup.add_to(self._sum)
        else:
            self._parts.append(rollup)

    def add_tally(self, tally: _Tally) -> None:
        """Add the calls of ``tally`` (its latencies are summed once, for both)."""
        self._count(tally.calls, tally.failures, tally.abandoned)
        if self._sum is not None:
            self._sum.add_sum(tally.latencies())
        else:
            self._tallies.append(tally)

    def _count(self, calls: int, failures: list[int], abandoned: int) -> None:
        self._percentiles = None
        self.calls += calls
        self.abandoned += abandoned
        self.failures = list(map(operator.add, self.failures, failures))

    def failures_by_kind(self) -> dict[str, int]:
        return dict(zip(FAILURE_KINDS, self.failures, strict=True))


class _Calls:
    """Calls in a time range, by (source, service) and by service."""

    def __init__(self, models: ReadModels, since: datetime, until: datetime) -> None:
        self.edges: dict[tuple[str, str], _Tally] = {}
        self.services: dict[str, _Tally] = {}
        for (caller, service, _), rollup in models.rollups(since, until).items():
            if rollup.calls:
                self.edges.setdefault((caller, service), _Tally()).add(rollup)
        callers: dict[str, list[_Tally]] = {}
        for (_, service), edge in self.edges.items():
            callers.setdefault(service, []).append(edge)
        for service, edges in callers.items():
            if len(edges) == 1:
                # One caller: the service's calls are that edge's (and its
                # latencies are read once for both).
                self.services[service] = edges[0]
                continue
            tally = self.services[service] = _Tally()
            for edge in edges:
                tally.add_tally(edge)


def _milliseconds(value: float) -> str:
    return format_duration(value / 1000)


def _failure_summary(failures: dict[str, int]) -> str:
    names = {"5xx": "5xx", "timeout": "timeouts", "refused": "refused", "reset": "resets", "error": "other"}
    return ", ".join(f"{failures[kind]:,} {names[kind]}" for kind in FAILURE_KINDS if failures[kind])


def _slower(p95: float | None, baseline_p95: float | None, thresholds: HealthThresholds) -> bool:
    """The latency rule (the baseline's size is checked by the caller)."""
    return (
        p95 is not None
        and baseline_p95 is not None
        and p95 >= thresholds.latency_factor * baseline_p95
        and p95 - baseline_p95 >= thresholds.min_latency_increase_ms
    )


def _failing(calls: int, errors: int, thresholds: HealthThresholds) -> bool:
    return calls > 0 and errors / calls > thresholds.max_error_rate


def _judge(
    service: str,
    tally: _Tally,
    baseline: _Tally | None,
    thresholds: HealthThresholds,
    window: timedelta,
) -> ServiceHealth:
    p50, p95, p99 = tally.percentiles()
    baseline_calls = baseline.calls if baseline else 0
    baseline_p95 = baseline.percentiles()[1] if baseline else None
    errors = tally.errors
    rate = errors / tally.calls if tally.calls else 0.0
    failures = tally.failures_by_kind()
    reasons: list[str] = []
    status: ServiceStatus = "ok"
    if tally.calls < thresholds.min_calls:
        status = "too few calls"
    else:
        if _failing(tally.calls, errors, thresholds):
            reasons.append(
                f"{rate:.1%} of {tally.calls:,} calls failed ({_failure_summary(failures)}),"
                f" over the {thresholds.max_error_rate:.1%} threshold"
            )
        if baseline_calls >= thresholds.min_calls and _slower(p95, baseline_p95, thresholds):
            assert p95 is not None and baseline_p95 is not None
            factor = p95 / baseline_p95 if baseline_p95 > 0 else math.inf
            reasons.append(
                f"p95 latency {_milliseconds(p95)} is {factor:.1f}x its baseline of"
                f" {_milliseconds(baseline_p95)} (the {format_duration(window.total_seconds())} before)"
            )
        if reasons:
            status = "faulty"
    return ServiceHealth(
        service=service,
        calls=tally.calls,
        errors=errors,
        error_rate=rate,
        failures=failures,
        abandoned=tally.abandoned,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        baseline_calls=baseline_calls,
        baseline_p95_ms=baseline_p95 if baseline_calls else None,
        status=status,
        reasons=reasons,
    )


def _walk_back(
    counts: list[BucketCount],
    rows: Callable[[], Iterable[tuple[RollupKey, Rollup]]],
    health: ServiceHealth,
    thresholds: HealthThresholds,
) -> tuple[str, str] | None:
    """``(step, bucket)`` of the earliest bucket of the last run in which
    the rule held, walking back from the newest bucket (buckets without
    calls neither break nor extend a run). The counts decide alone while
    calls fail often enough; the latencies (``rows``, read once, when first
    needed) decide the rest."""
    earliest: BucketCount | None = None
    latencies: dict[tuple[str, str], Rollup] | None = None
    for count in counts:
        if not count.calls:
            continue
        if not _failing(count.calls, count.errors, thresholds):
            if health.baseline_calls < thresholds.min_calls:
                break
            if latencies is None:
                latencies = _per_bucket(rows())
            if not _slower_in(latencies.get((count.step, count.bucket)), health, thresholds):
                break
        earliest = count
    return (earliest.step, earliest.bucket) if earliest else None


def _slower_in(bucket: Rollup | None, health: ServiceHealth, thresholds: HealthThresholds) -> bool:
    return bucket is not None and _slower(bucket.quantiles(0.95)[0], health.baseline_p95_ms, thresholds)


def _run_start(
    models: ReadModels,
    since: datetime,
    until: datetime,
    step: str | None,
    health: ServiceHealth,
    thresholds: HealthThresholds,
) -> tuple[str, str] | None:
    """:func:`_walk_back` over the buckets of ``[since, until)`` (those of
    :meth:`ReadModels.bucket_counts`), read as the service's last run of
    failing buckets unless slow calls extend it past the bucket that ended
    it: so a run costs the same however long it is."""
    service = health.service
    run = models.failing_run(
        since, until, service=service, max_error_rate=thresholds.max_error_rate, step=step
    )
    calm = run.ended_by
    if calm is not None and health.baseline_calls >= thresholds.min_calls:
        begin = moment_of(calm.bucket)
        end = begin + timedelta(seconds=STEPS[calm.step])
        latencies = _per_bucket(models.buckets(begin, end, service=service, step=calm.step))
        if _slower_in(latencies.get((calm.step, calm.bucket)), health, thresholds):
            # Slow calls extend the run past that bucket: walk every bucket.
            return _walk_back(
                models.bucket_counts(since, until, service=service, step=step),
                lambda: (
                    models.covering(since, until, service=service)
                    if step is None
                    else models.buckets(since, until, service=service, step=step)
                ),
                health,
                thresholds,
            )
    return run.start


def _per_bucket(rows: Iterable[tuple[RollupKey, Rollup]]) -> dict[tuple[str, str], Rollup]:
    """Rows of several callers merged per (step, bucket) (the rows are
    read for this call: merged in place)."""
    merged: dict[tuple[str, str], Rollup] = {}
    for key, rollup in rows:
        bucket = (key.step, key.bucket)
        found = merged.get(bucket)
        if found is None:
            merged[bucket] = rollup
        else:
            found.merge(rollup)
    return merged


def _faulty_since(
    models: ReadModels, health: ServiceHealth, since: datetime, until: datetime, thresholds: HealthThresholds
) -> str | None:
    """When the service turned faulty, within the window: read on the
    buckets covering it (minutes at its edges, coarser buckets between),
    then, while the run starts on a coarser bucket, on that bucket's buckets
    of the next finer step."""
    start = _run_start(models, since, until, None, health, thresholds)
    while start is not None and start[0] in _FINER:
        step, bucket = start
        begin = moment_of(bucket)
        end = begin + timedelta(seconds=STEPS[step])
        first = _run_start(models, begin, end, _FINER[step], health, thresholds)
        if first is None:
            break
        start = first
    return start[1] if start else None


def _edges(edges: dict[tuple[str, str], _Tally]) -> Iterable[ServiceEdge]:
    for (source, service), tally in sorted(edges.items()):
        p50, p95, _ = tally.percentiles()
        yield ServiceEdge(
            source=source,
            service=service,
            calls=tally.calls,
            errors=tally.errors,
            error_rate=tally.errors / tally.calls if tally.calls else 0.0,
            p50_ms=p50,
            p95_ms=p95,
        )


def _since(moment: str | None) -> str:
    return f", since {moment[:10]} {moment[11:16]} UTC" if moment else ""


def _verdict(services: list[ServiceHealth]) -> str:
    if not services:
        return "no calls in this window"
    faulty = [health for health in services if health.status == "faulty"]
    if faulty:
        return "; ".join(
            f"{health.service} is faulty: {' and '.join(health.reasons)}{_since(health.faulty_since)}"
            for health in faulty
        )
    judged = [health for health in services if health.status == "ok"]
    if not judged:
        return "too few calls for a verdict"
    unjudged = len(services) - len(judged)
    verdict = f"no faulty service ({len(judged)} healthy"
    return verdict + (f", {unjudged} with too few calls)" if unjudged else ")")


def _analyse(
    models: ReadModels,
    *,
    since: datetime,
    until: datetime,
    baseline_since: datetime,
    thresholds: HealthThresholds,
) -> HealthReport:
    """The report for calls in ``[since, until)`` against the preceding window."""
    window = until - since
    current = _Calls(models, since, until)
    baseline = _Calls(models, baseline_since, since)
    services = []
    for service, tally in sorted(current.services.items()):
        health = _judge(service, tally, baseline.services.get(service), thresholds, window)
        if health.status == "faulty":
            health = msgspec.structs.replace(
                health, faulty_since=_faulty_since(models, health, since, until, thresholds)
            )
        services.append(health)
    return HealthReport(
        since=format_moment(since),
        until=format_moment(until),
        window_seconds=window.total_seconds(),
        thresholds=thresholds,
        services=services,
        edges=list(_edges(current.edges)),
        faulty=[health.service for health in services if health.status == "faulty"],
        verdict=_verdict(services),
    )


def service_health(
    store: Store,
    window: timedelta = timedelta(minutes=15),
    *,
    until: datetime | None = None,
    thresholds: HealthThresholds | None = None,
) -> HealthReport:
    """Health of every service called in the ``window`` before ``until``
    (default: now; rounded up to a whole minute), with the window before it
    as the latency baseline. Reads the store's read models only."""
    if window <= timedelta(0):
        raise ValueError("the window must be a positive duration")
    end = minute_ceiling(until or datetime.now(UTC))
    since = minute_floor(moment_before(end, window))
    baseline_since = minute_floor(moment_before(since, end - since))
    return _analyse(
        read_models_of(store),
        since=since,
        until=end,
        baseline_since=baseline_since,
        thresholds=thresholds or HealthThresholds(),
    )


def service_health_since(
    store: Store,
    since: datetime,
    *,
    until: datetime | None = None,
    thresholds: HealthThresholds | None = None,
) -> HealthReport:
    """Health of every service called from ``since`` to ``until`` (default:
    now), over the whole minutes that cover both (``since`` rounded down,
    ``until`` up), with the window before it as the latency baseline."""
    end = minute_ceiling(until or datetime.now(UTC))
    start = minute_floor(since)
    if start >= end:
        raise ValueError("since must be before until")
    return _analyse(
        read_models_of(store),
        since=start,
        until=end,
        baseline_since=minute_floor(moment_before(start, end - start)),
        thresholds=thresholds or HealthThresholds(),
    )
