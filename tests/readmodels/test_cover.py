"""cover(): the stored buckets that a window is read from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from eventtrail.readmodels.model import STEPS, bucket_start, cover
from eventtrail.times import EARLIEST, LATEST, format_moment, moment_of

_MINUTE = timedelta(minutes=1)
_moments = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999), timezones=st.just(UTC)
)


def _whole_minutes(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """``[since, until)`` widened to whole minutes, as its last minute (the
    minute after it may be past year 9999)."""
    start = since.replace(second=0, microsecond=0)
    last = (until - timedelta(microseconds=1)).replace(second=0, microsecond=0)
    return start, last


def _check_tiling(since: datetime, until: datetime) -> list[tuple[str, str, str]]:
    ranges = list(cover(since, until))
    if until <= since:
        assert ranges == []
        return ranges
    start, last = _whole_minutes(since, until)
    covered_to = start - _MINUTE if start > EARLIEST else None
    for step, first, final in ranges:
        size = timedelta(seconds=STEPS[step])
        first_moment, final_moment = moment_of(first), moment_of(final)
        # Whole buckets of its step, right after what the ranges before cover.
        assert bucket_start(first, step) == first and bucket_start(final, step) == final
        assert first_moment == (covered_to + _MINUTE if covered_to is not None else start)
        assert first_moment <= final_moment
        covered_to = final_moment + (size - _MINUTE)
    # Nothing of the window left out, nothing after it read.
    assert covered_to == last
    return ranges


@given(since=_moments, length=st.integers(min_value=0, max_value=40 * 24 * 60 * 60))
def test_the_ranges_tile_the_window_exactly_with_whole_buckets(since: datetime, length: int) -> None:
    until = since + timedelta(seconds=length) if since < LATEST - timedelta(seconds=length) else LATEST
    _check_tiling(since, until)


@given(since=_moments, until=_moments)
def test_any_two_moments_are_covered_or_refused_as_empty(since: datetime, until: datetime) -> None:
    _check_tiling(since, until)


def test_a_long_window_reads_a_bounded_number_of_ranges_and_buckets() -> None:
    until = datetime(2024, 3, 1, 13, 37, tzinfo=UTC)
    for days in (1, 7, 365, 3650):
        ranges = _check_tiling(until - timedelta(days=days), until)
        # Minutes, ten minutes and hours at each edge, six hours between: at
        # most 7 ranges, and the finer buckets at the edges are bounded
        # whatever the length.
        assert len(ranges) <= 7
        finer = sum(
            (moment_of(final) - moment_of(first)) // timedelta(seconds=STEPS[step]) + 1
            for step, first, final in ranges
            if step != "6h"
        )
        assert finer <= 2 * (9 + 5 + 5)


def test_the_whole_storable_range_is_covered() -> None:
    ranges = _check_tiling(EARLIEST, LATEST)
    assert ranges[0] == ("6h", format_moment(EARLIEST), "9999-12-31T18:00:00.000000Z")
