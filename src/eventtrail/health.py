"""Service health: per upstream service, how many calls, how many failed, how
slow, and which service is faulty and why.

A call counts once, when it ends: a ``MICROSERVICE_RESPONSE`` (failed when its
status is 5xx) or a ``MICROSERVICE_ERROR`` (timeout, refused, reset, error).
Its latency is ``latencyMs`` of the response or ``elapsedMs`` of the error, so
timeouts weigh on the percentiles as they weigh on callers.

A service is faulty when, with at least ``min_calls`` calls in the window:

- its error rate is over ``max_error_rate``; or
- its p95 latency is ``latency_factor`` times its own baseline p95 (the
  preceding window of the same length, itself with at least ``min_calls``
  calls) and at least ``min_latency_increase_ms`` above it, so that a service
  going from 2 ms to 7 ms is not called faulty.

Services with fewer calls get the status ``too few calls``: no verdict
either way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from eventtrail.calls import ERROR, ERROR_KINDS, RESPONSE
from eventtrail.store import Store, format_moment
from eventtrail.times import format_duration

__all__ = [
    "FAILURE_KINDS",
    "HealthReport",
    "HealthThresholds",
    "ServiceEdge",
    "ServiceHealth",
    "ServiceStatus",
    "service_health",
]

#: How a call can fail: a 5xx response, or one of the gateway's error kinds.
FAILURE_KINDS = ("5xx", *ERROR_KINDS)

ServiceStatus = Literal["ok", "faulty", "too few calls"]

_RESPONSE_KEYS = ("Name", "status", "latencyMs")
_ERROR_KEYS = ("Name", "error", "elapsedMs")


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
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    baseline_calls: int
    baseline_p95_ms: float | None
    status: ServiceStatus
    reasons: list[str]
    """Why the service is faulty (empty otherwise)."""


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


@dataclass(slots=True)
class _Tally:
    """Calls of one service (or of one caller to one service)."""

    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    calls: int = 0

    @property
    def errors(self) -> int:
        return sum(self.failures.values())

    def merge(self, other: _Tally) -> None:
        self.calls += other.calls
        self.latencies += other.latencies
        self.failures.update(other.failures)


@dataclass(slots=True)
class _Calls:
    """Calls in a time range, by (source, service) and by service."""

    edges: dict[tuple[str, str], _Tally] = field(default_factory=dict)

    @property
    def services(self) -> dict[str, _Tally]:
        services: dict[str, _Tally] = {}
        for (_, service), edge in self.edges.items():
            services.setdefault(service, _Tally()).merge(edge)
        return services


def _is_number(value: Any) -> bool:
    return value.__class__ is float or value.__class__ is int


def _read_calls(store: Store, since: datetime, until: datetime) -> _Calls:
    # The hot loop of the analysis (about 50,000 rows per 15 minutes of demo
    # traffic): one dict lookup per row, exact class checks (bool is an int).
    calls = _Calls()
    edges = calls.edges
    rows = store.event_fields(RESPONSE, _RESPONSE_KEYS, since=since, until=until)
    for _, source, service, status, latency in rows:
        if service.__class__ is not str:
            continue  # not a call event of the gateway's vocabulary
        tally = edges.get((source, service))
        if tally is None:
            tally = edges[(source, service)] = _Tally()
        tally.calls += 1
        if _is_number(latency):
            tally.latencies.append(latency)
        if status.__class__ is int and status >= 500:
            tally.failures["5xx"] += 1
    for _, source, service, kind, elapsed in store.event_fields(ERROR, _ERROR_KEYS, since=since, until=until):
        if service.__class__ is not str:
            continue
        tally = edges.get((source, service))
        if tally is None:
            tally = edges[(source, service)] = _Tally()
        tally.calls += 1
        if _is_number(elapsed):
            tally.latencies.append(elapsed)
        tally.failures[kind if kind in ERROR_KINDS else "error"] += 1
    return calls


def _percentiles(values: list[float], *quantiles: float) -> list[float | None]:
    """Nearest-rank percentiles (each one a latency that was observed)."""
    if not values:
        return [None] * len(quantiles)
    ordered = sorted(values)
    return [ordered[max(math.ceil(q * len(ordered)) - 1, 0)] for q in quantiles]


def _milliseconds(value: float) -> str:
    return format_duration(value / 1000)


def _failure_summary(failures: Counter[str]) -> str:
    names = {"5xx": "5xx", "timeout": "timeouts", "refused": "refused", "reset": "resets", "error": "other"}
    return ", ".join(f"{failures[kind]:,} {names[kind]}" for kind in FAILURE_KINDS if failures[kind])


def _judge(
    service: str,
    tally: _Tally,
    baseline: _Tally | None,
    thresholds: HealthThresholds,
    window: timedelta,
) -> ServiceHealth:
    p50, p95, p99 = _percentiles(tally.latencies, 0.5, 0.95, 0.99)
    baseline_calls = baseline.calls if baseline else 0
    (baseline_p95,) = _percentiles(baseline.latencies if baseline else [], 0.95)
    errors = tally.errors
    rate = errors / tally.calls if tally.calls else 0.0
    reasons: list[str] = []
    status: ServiceStatus = "ok"
    if tally.calls < thresholds.min_calls:
        status = "too few calls"
    else:
        if rate > thresholds.max_error_rate:
            reasons.append(
                f"{rate:.1%} of {tally.calls:,} calls failed ({_failure_summary(tally.failures)}),"
                f" over the {thresholds.max_error_rate:.1%} threshold"
            )
        if (
            p95 is not None
            and baseline_p95 is not None
            and baseline_calls >= thresholds.min_calls
            and p95 >= thresholds.latency_factor * baseline_p95
            and p95 - baseline_p95 >= thresholds.min_latency_increase_ms
        ):
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
        failures={kind: tally.failures[kind] for kind in FAILURE_KINDS},
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        baseline_calls=baseline_calls,
        baseline_p95_ms=baseline_p95,
        status=status,
        reasons=reasons,
    )


def _edges(edges: dict[tuple[str, str], _Tally]) -> Iterable[ServiceEdge]:
    for (source, service), tally in sorted(edges.items()):
        p50, p95 = _percentiles(tally.latencies, 0.5, 0.95)
        yield ServiceEdge(
            source=source,
            service=service,
            calls=tally.calls,
            errors=tally.errors,
            error_rate=tally.errors / tally.calls if tally.calls else 0.0,
            p50_ms=p50,
            p95_ms=p95,
        )


def _verdict(services: list[ServiceHealth]) -> str:
    if not services:
        return "no calls in this window"
    faulty = [health for health in services if health.status == "faulty"]
    if faulty:
        return "; ".join(f"{health.service} is faulty: {' and '.join(health.reasons)}" for health in faulty)
    judged = [health for health in services if health.status == "ok"]
    if not judged:
        return "too few calls for a verdict"
    unjudged = len(services) - len(judged)
    verdict = f"no faulty service ({len(judged)} healthy"
    return verdict + (f", {unjudged} with too few calls)" if unjudged else ")")


def _analyse(
    current: _Calls,
    baseline: _Calls,
    *,
    since: datetime,
    until: datetime,
    thresholds: HealthThresholds,
) -> HealthReport:
    """The report for calls in ``[since, until)`` against the preceding window."""
    window = until - since
    baseline_services = baseline.services
    services = [
        _judge(service, tally, baseline_services.get(service), thresholds, window)
        for service, tally in sorted(current.services.items())
    ]
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
    (default: now), with the window before it as the latency baseline."""
    if window <= timedelta(0):
        raise ValueError("the window must be a positive duration")
    until = until or datetime.now(UTC)
    try:
        since = until - window
        baseline_since = since - window
    except OverflowError:
        raise ValueError(
            f"a window of {window} with its baseline before it reaches past year 1 from {until:%Y-%m-%d}"
        ) from None
    return _analyse(
        _read_calls(store, since, until),
        _read_calls(store, baseline_since, since),
        since=since,
        until=until,
        thresholds=thresholds or HealthThresholds(),
    )
