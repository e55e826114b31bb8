"""window_pieces(): the buckets a window's rows are read as on SQLite,
some of them less their part outside the window."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventtrail.readmodels.model import STEPS, bucket_start, cover_minutes
from eventtrail.readmodels.pieces import Piece, _count, window_pieces
from eventtrail.times import format_moment, moment_of

_MINUTE = timedelta(minutes=1)
T0 = datetime(2024, 3, 9, tzinfo=UTC)


def _minute(offset: int, base: datetime = T0) -> str:
    return format_moment(base + offset * _MINUTE)


def _stored_in(step: str, first: str, last: str, stored: set[str]) -> Counter[str]:
    """The stored minutes that the rows of ``step`` from ``first`` to
    ``last`` sum (a row of a bucket is the sum of its minutes)."""
    return Counter(minute for minute in stored if first <= bucket_start(minute, step) <= last)


def _read(pieces: tuple[Piece, ...], stored: set[str]) -> Counter[str]:
    """What reading the pieces sums, minute by minute (a minute taken away
    more often than added would show as a negative count)."""
    total: Counter[str] = Counter()
    for piece in pieces:
        total.update(_stored_in(piece.step, piece.first, piece.last, stored))
        for step, first, last in piece.outside:
            total.subtract(_stored_in(step, first, last, stored))
    return total


def _around(first: str, last: str, stored: set[str]) -> tuple[str | None, str | None]:
    before = [minute for minute in stored if minute < first]
    after = [minute for minute in stored if minute > last]
    return max(before, default=None), min(after, default=None)


def _rows(pieces: tuple[Piece, ...]) -> int:
    """Rows read for an edge called in every minute (a row per bucket)."""

    def buckets(step: str, first: str, last: str) -> int:
        return (moment_of(last) - moment_of(first)) // timedelta(seconds=STEPS[step]) + 1

    return sum(
        buckets(piece.step, piece.first, piece.last) + sum(buckets(*outside) for outside in piece.outside)
        for piece in pieces
    )


@given(
    start=st.integers(min_value=0, max_value=3 * 1440),
    length=st.integers(min_value=1, max_value=2 * 1440),
    stored=st.sets(st.integers(min_value=-400, max_value=6 * 1440), max_size=60),
)
def test_pieces_sum_exactly_the_stored_minutes_of_the_window(
    start: int, length: int, stored: set[int]
) -> None:
    minutes = {_minute(offset) for offset in stored}
    first, last = _minute(start), _minute(start + length - 1)
    pieces = window_pieces(first, last, *_around(first, last, minutes))
    read = _read(pieces, minutes)
    assert +read == Counter(minute for minute in minutes if first <= minute <= last)
    assert -read == Counter()  # nothing taken away that was not added
    for piece in pieces:
        assert piece.first <= piece.last
        assert not piece.outside or piece.first == piece.last


@given(
    start=st.integers(min_value=-1440, max_value=1440), length=st.integers(min_value=1, max_value=3 * 1440)
)
def test_the_rows_a_cover_reads_are_counted_as_it_reads_them(start: int, length: int) -> None:
    # The count that chooses between pieces is the cover's own, computed without it.
    epoch = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // _MINUTE
    ranges = cover_minutes(T0 + start * _MINUTE, T0 + (start + length - 1) * _MINUTE)
    assert _count(epoch + start, epoch + start + length) == _rows(
        tuple(Piece(step, first, last) for step, first, last in ranges)
    )


@given(start=st.integers(min_value=0, max_value=1440), length=st.integers(min_value=1, max_value=3 * 1440))
def test_a_window_with_rows_all_around_reads_a_few_rows_per_edge_wherever_it_falls(
    start: int, length: int
) -> None:
    # Every minute stored, before and after: no edge can be read whole for free.
    first, last = _minute(start), _minute(start + length - 1)
    pieces = window_pieces(first, last, _minute(start - 1), _minute(start + length))
    six_hours = -(-length // 360)
    assert _rows(pieces) <= 2 * 12 + six_hours + 5


def test_a_window_that_ends_now_reads_the_bucket_at_its_end_whole() -> None:
    # 24 hours to 01:56, nothing stored after: the six hours from 00:00 are one row.
    first, last = _minute(116), _minute(1440 + 115)
    pieces = window_pieces(first, last, _minute(115), None)
    assert pieces[-1] == Piece("6h", _minute(1440), _minute(1440))
    assert _rows(pieces) == 12  # 4 minutes, 4 hours and 4 six hours


def test_a_window_inside_one_hour_is_read_from_that_hour_when_that_is_cheaper() -> None:
    # 01:01 to 01:58 with minutes stored all around: the hour less 01:00 and 01:59.
    first, last = _minute(61), _minute(118)
    pieces = window_pieces(first, last, _minute(60), _minute(119))
    assert pieces == (
        Piece(
            "1h",
            _minute(60),
            _minute(60),
            (("1m", _minute(60), _minute(60)), ("1m", _minute(119), _minute(119))),
        ),
    )


@pytest.mark.parametrize(
    ("base", "span"),
    [(datetime(1, 1, 1, tzinfo=UTC), range(900)), (datetime(9999, 12, 31, tzinfo=UTC), range(540, 1440))],
)
def test_windows_at_the_ends_of_time_sum_exactly(base: datetime, span: range) -> None:
    stored = {_minute(offset, base) for offset in span if offset % 7 != 3}
    for start, end in [
        (span.start, span.stop),
        (span.start + 5, span.stop - 1),
        (span.start + 61, span.stop - 8),
    ]:
        first, last = _minute(start, base), _minute(end - 1, base)
        read = _read(window_pieces(first, last, *_around(first, last, stored)), stored)
        assert read == Counter(minute for minute in stored if first <= minute <= last)


def test_a_one_minute_window_is_its_minute() -> None:
    first = _minute(115)
    assert window_pieces(first, first, _minute(114), None) == (Piece("1m", first, first),)
    assert window_pieces(first, first, None, None) == (Piece("1m", first, first),)
