"""Rate, errors and latency over time, per service (and per operation), read
from the rollups: the data of the Monitor view and of ``/api/series``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from eventtrail.readmodels.model import ALL_OPERATIONS, STEPS, Rollup, SeriesPoint, minute_ceiling
from eventtrail.readmodels.port import ReadModels
from eventtrail.times import format_moment, moment_before, moment_of

__all__ = ["MAX_POINTS", "BadSeries", "Series", "SeriesReport", "default_step", "series"]

#: The most points one series may have (window / step).
MAX_POINTS = 1440


class BadSeries(ValueError):
    """A window, step or end that makes no series; ``parameter`` names it."""

    def __init__(self, parameter: str, reason: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {reason}")


class Series(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    service: str
    operation: str | None = None
    points: list[SeriesPoint]


class SeriesReport(msgspec.Struct, kw_only=True, rename="camel"):
    step: str
    since: str
    until: str
    series: list[Series]


_STEPS_MINUTES = (1, 2, 5, 10, 15, 30)
_STEPS_HOURS = (1, 2, 3, 6, 12, 24)


def default_step(window: timedelta) -> timedelta:
    """The step of about 60 points or fewer: minutes up to six hours, whole
    hours beyond (read from the hour rollups, so a day costs 24 rows per
    series rather than 1,440)."""
    if window <= timedelta(hours=6):
        for minutes in _STEPS_MINUTES:
            if window / timedelta(minutes=minutes) <= 60:
                return timedelta(minutes=minutes)
    for hours in _STEPS_HOURS:
        if window / timedelta(hours=hours) <= 60:
            return timedelta(hours=hours)
    return timedelta(days=1)


def step_name(step: timedelta) -> str:
    """``1m``, ``5m``, ``1h``, ``1d``: the largest unit that divides ``step``."""
    seconds = int(step.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise ValueError("a step is a whole number of minutes")


def _stored_step(since: datetime, seconds: float, steps: tuple[str, ...]) -> str:
    """The coarsest of the stored ``steps`` that divides ``seconds`` and whose
    buckets start on ``since``: every point is then whole buckets of it."""
    found = "1m"
    for name in steps:
        size = STEPS[name]
        if seconds % size == 0 and since.timestamp() % size == 0:
            found = name
    return found


def series(
    models: ReadModels,
    window: timedelta,
    step: timedelta,
    *,
    until: datetime | None = None,
    service: str | None = None,
    operations: bool = False,
) -> SeriesReport:
    """One point per ``step`` over the ``window`` before ``until`` (rounded
    up to a whole minute; default now), per service, or per operation of
    each service when ``operations`` is asked for. Steps without calls are
    points with zero calls, so that every series has the same times."""
    seconds = step.total_seconds()
    if seconds < 60 or seconds % 60:
        raise BadSeries("step", "a whole number of minutes, at least 1m")
    if window < step:
        raise BadSeries("window", "at least one step long")
    count = int(window.total_seconds() // seconds)
    if count > MAX_POINTS:
        raise BadSeries("step", f"at most {MAX_POINTS} points per window, not {count}: take a longer step")
    try:
        end = minute_ceiling(until or datetime.now(UTC))
        if seconds % 3600 == 0 and end.minute:
            # Whole-hour steps end on an hour, so that they read hour rows.
            end = minute_ceiling(end.replace(minute=59, second=1))
        since = moment_before(end, step * count)
    except ValueError as error:
        raise BadSeries("until", str(error)) from None
    rows = models.buckets(
        since, end, service=service, operations=operations, step=_stored_step(since, seconds, models.steps)
    )
    grouped: dict[tuple[str, str], list[Rollup | None]] = {}
    for key, rollup in rows:
        index = int((moment_of(key.bucket) - since).total_seconds() // seconds)
        if not 0 <= index < count:
            continue
        operation = key.operation
        steps = grouped.get((key.service, operation))
        if steps is None:
            steps = grouped[(key.service, operation)] = [None] * count
        so_far = steps[index]
        if so_far is None:
            # Rows are read fresh for this call: the first of a step is its start.
            steps[index] = rollup
        else:
            so_far.merge(rollup)
    times = [format_moment(since + step * index) for index in range(count)]
    found: list[Series] = []
    for (name, operation), found_steps in sorted(grouped.items()):
        rollups = [rollup if rollup is not None else Rollup() for rollup in found_steps]
        if not any(rollup.calls for rollup in rollups):
            continue
        found.append(
            Series(
                service=name,
                operation=None if operation == ALL_OPERATIONS else operation,
                points=[_point(moment, rollup) for moment, rollup in zip(times, rollups, strict=True)],
            )
        )
    return SeriesReport(
        step=step_name(step), since=format_moment(since), until=format_moment(end), series=found
    )


def _point(moment: str, rollup: Rollup) -> SeriesPoint:
    p50, p95, p99 = rollup.quantiles(0.5, 0.95, 0.99)
    return SeriesPoint(
        t=moment,
        calls=rollup.calls,
        errors=rollup.errors,
        abandoned=rollup.abandoned,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
    )
