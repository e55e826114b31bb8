"""Series over the rollups: steps, alignment, and the points of each step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from eventtrail.embedded.store import SQLiteStore
from eventtrail.readmodels import read_models_of
from eventtrail.readmodels.series import BadSeries, SeriesReport, default_step, series
from eventtrail.times import format_moment
from tests.contract.readmodels_contract import T0, a_call, flat, unique_service


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "events.db") as store:
        yield store


def _traced(store: SQLiteStore, read: Callable[[], SeriesReport]) -> tuple[SeriesReport, list[str]]:
    """What ``read`` returned, and the statements it ran on the read models."""
    statements: list[str] = []
    store.read_models._db.set_trace_callback(statements.append)
    try:
        return read(), statements
    finally:
        store.read_models._db.set_trace_callback(None)


def test_default_steps_give_at_most_sixty_points_in_minutes_then_hours() -> None:
    assert default_step(timedelta(minutes=15)) == timedelta(minutes=1)
    assert default_step(timedelta(hours=2)) == timedelta(minutes=2)
    assert default_step(timedelta(hours=6)) == timedelta(minutes=10)
    assert default_step(timedelta(hours=24)) == timedelta(hours=1)
    assert default_step(timedelta(days=7)) == timedelta(hours=3)
    for hours in range(1, 24 * 7):
        window = timedelta(hours=hours)
        assert window / default_step(window) <= 60


def test_points_count_each_step_minute_or_hour(store: SQLiteStore) -> None:
    service = unique_service()
    # 3 calls a minute for 3 hours, one failure in each hour's first minute,
    # one abandoned call in its second.
    calls = []
    for minute in range(180):
        for second in (0, 20, 40):
            status = 500 if minute % 60 == 0 and second == 0 else 200
            left = "disconnected" if minute % 60 == 1 and second == 0 else None
            calls.append(
                a_call(service, T0 + timedelta(minutes=minute, seconds=second), status=status, error=left)
            )
    store.append(flat(calls))
    models = read_models_of(store)
    until = T0 + timedelta(hours=3)
    by_minute = series(models, timedelta(minutes=30), timedelta(minutes=5), until=until, service=service)
    [entry] = by_minute.series
    assert by_minute.step == "5m" and len(entry.points) == 6
    assert entry.points[0].t == format_moment(until - timedelta(minutes=30))
    assert [p.calls for p in entry.points] == [15] * 6
    hourly = series(models, timedelta(hours=3), timedelta(hours=1), until=until - timedelta(minutes=1))
    [entry] = [s for s in hourly.series if s.service == service]
    assert hourly.step == "1h" and hourly.until == format_moment(until)
    assert [(p.calls, p.errors, p.abandoned) for p in entry.points] == [(180, 1, 1)] * 3
    assert all(p.p50_ms == pytest.approx(10.0, rel=0.01) for p in entry.points)


def test_steps_of_six_hours_read_six_hour_rows_and_count_the_same(store: SQLiteStore) -> None:
    service = unique_service()
    # One call every 10 minutes for 30 hours from 10:00, one in ten failing.
    calls = [
        a_call(service, T0 + timedelta(minutes=10 * index), status=500 if index % 10 == 0 else 200)
        for index in range(180)
    ]
    store.append(flat(calls))
    models = read_models_of(store)
    until = T0 + timedelta(hours=26)  # 12:00 the next day: six-hour buckets from 12:00
    coarse, statements = _traced(
        store, lambda: series(models, timedelta(hours=24), timedelta(hours=6), until=until, service=service)
    )
    assert any("step = '6h'" in sql for sql in statements), statements
    hourly = series(models, timedelta(hours=24), timedelta(hours=1), until=until, service=service)
    [entry], [hours] = coarse.series, hourly.series
    assert coarse.step == "6h" and [p.t for p in entry.points] == [
        format_moment(until - timedelta(hours=6 * (4 - index))) for index in range(4)
    ]
    assert [(p.calls, p.errors) for p in entry.points] == [
        (
            sum(p.calls for p in hours.points[index : index + 6]),
            sum(p.errors for p in hours.points[index : index + 6]),
        )
        for index in range(0, 24, 6)
    ]
    assert sum(p.calls for p in entry.points) == 144


def test_steps_of_thirty_minutes_read_ten_minute_rows_on_sqlite(store: SQLiteStore) -> None:
    service = unique_service()
    calls = [a_call(service, T0 + timedelta(minutes=3 * index)) for index in range(60)]  # 3 hours
    store.append(flat(calls))
    models = read_models_of(store)
    until = T0 + timedelta(hours=3)
    halves, statements = _traced(
        store, lambda: series(models, timedelta(hours=3), timedelta(minutes=30), until=until, service=service)
    )
    assert any("step = '10m'" in sql for sql in statements), statements
    minutes = series(models, timedelta(hours=3), timedelta(minutes=1), until=until, service=service)
    [entry], [each] = halves.series, minutes.series
    assert (
        [p.calls for p in entry.points]
        == [sum(p.calls for p in each.points[index : index + 30]) for index in range(0, 180, 30)]
        == [10] * 6
    )


@pytest.mark.parametrize(
    ("window", "step", "parameter"),
    [
        (timedelta(hours=1), timedelta(seconds=30), "step"),
        (timedelta(hours=1), timedelta(seconds=90), "step"),
        (timedelta(minutes=5), timedelta(minutes=10), "window"),
        (timedelta(days=2), timedelta(minutes=1), "step"),
    ],
)
def test_unfit_windows_and_steps_name_their_parameter(
    store: SQLiteStore, window: timedelta, step: timedelta, parameter: str
) -> None:
    with pytest.raises(BadSeries) as raised:
        series(read_models_of(store), window, step, until=T0)
    assert raised.value.parameter == parameter
