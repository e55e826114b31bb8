"""The pieces a window's rollup rows are read as on SQLite: whole stored
buckets, and at each edge of the window at most one bucket that sticks out
of it, read less the rows of its part outside (a bucket's row is the sum of
its finer rows), whichever reads the fewest rows.

What lies outside the window is known from the stored minutes nearest to
it: ``before``, the newest before its first minute, and ``after``, the oldest
after its last. A bucket that sticks out only where nothing is stored is
read whole, with nothing taken away (a window that ends now)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from eventtrail.readmodels.model import STEPS, cover_minutes
from eventtrail.times import format_moment, moment_of

__all__ = ["Piece", "window_pieces"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The steps' names and lengths in minutes, finest first.
_NAMES = tuple(STEPS)
_SIZES = tuple(seconds // 60 for seconds in STEPS.values())


class Piece(NamedTuple):
    """Rollup rows of ``step`` with ``first <= bucket <= last``, less the rows
    of each ``(step, first, last)`` of ``outside``: the part outside the
    window of a bucket that sticks out of it (then ``first == last``)."""

    step: str
    first: str
    last: str
    outside: tuple[tuple[str, str, str], ...] = ()


def _minutes(bucket: str) -> int:
    """Minutes since the epoch of a stored bucket (negative before 1970)."""
    return (moment_of(bucket) - _EPOCH) // timedelta(minutes=1)


def _moment(minutes: int) -> datetime:
    return _EPOCH + timedelta(minutes=minutes)


def _count(first: int, end: int, level: int = len(_SIZES) - 1) -> int:
    """How many buckets :func:`cover_minutes` reads for the minutes
    ``[first, end)`` with the steps up to ``level`` (the same recursion,
    counted: coarsest whole buckets in the middle, finer ones at the edges)."""
    if end <= first:
        return 0
    if level == 0:
        return end - first
    size = _SIZES[level]
    whole_first = -(-first // size) * size
    whole_end = end // size * size
    if whole_first >= whole_end:
        return _count(first, end, level - 1)
    middle = (whole_end - whole_first) // size
    return _count(first, whole_first, level - 1) + middle + _count(whole_end, end, level - 1)


class _Edge(NamedTuple):
    """A bucket of ``level`` that sticks out of the window at one edge:
    ``start`` to ``end`` (minutes), and its part outside that holds rows
    (``outside_first`` to ``outside_end``; empty when nothing is stored there)."""

    level: int
    start: int
    end: int
    outside_first: int
    outside_end: int

    def rows(self) -> int:
        return 1 + _count(self.outside_first, self.outside_end)


def _left_edges(first: int, before: int | None) -> list[_Edge | None]:
    """At the window's start (minute ``first``): no bucket sticking out
    (``None``), or one of each step that starts before it."""
    edges: list[_Edge | None] = [None]
    for level in range(1, len(_SIZES)):
        start = first // _SIZES[level] * _SIZES[level]
        if start < first:
            # Rows outside are stored only up to the newest minute before the window.
            stored_end = start if before is None or before < start else before + 1
            edges.append(_Edge(level, start, start + _SIZES[level], start, stored_end))
    return edges


def _right_edges(end: int, after: int | None) -> list[_Edge | None]:
    """At the window's end (``end``, the minute after its last): no bucket
    sticking out, or one of each step that ends after it."""
    edges: list[_Edge | None] = [None]
    for level in range(1, len(_SIZES)):
        bucket_end = -(-end // _SIZES[level]) * _SIZES[level]
        if bucket_end > end:
            # Rows outside are stored only from the oldest minute after the window.
            stored_first = bucket_end if after is None or after >= bucket_end else after
            edges.append(_Edge(level, bucket_end - _SIZES[level], bucket_end, stored_first, bucket_end))
    return edges


def _ranges(first: int, end: int) -> tuple[tuple[str, str, str], ...]:
    """:func:`cover_minutes` of the minutes ``[first, end)``."""
    return cover_minutes(_moment(first), _moment(end - 1)) if first < end else ()


def _piece(edge: _Edge, *also_outside: tuple[str, str, str]) -> Piece:
    bucket = format_moment(_moment(edge.start))
    outside = (*_ranges(edge.outside_first, edge.outside_end), *also_outside)
    return Piece(_NAMES[edge.level], bucket, bucket, outside)


@functools.lru_cache(maxsize=1024)
def window_pieces(first: str, last: str, before: str | None, after: str | None) -> tuple[Piece, ...]:
    """The pieces whose rows sum to the rows of the minutes ``first`` to
    ``last`` (both included, stored buckets), given the newest stored minute
    before ``first`` and the oldest after ``last`` (``None``: none). Each
    edge of the window is read as the :func:`cover_minutes` buckets there, or
    as one coarser bucket less its part outside, whichever reads fewer rows
    (counting a row for every bucket, a guess for rows inside: a wrong one
    costs rows, never totals). Pure, and asked for on every read: cached."""
    start, end = _minutes(first), _minutes(last) + 1
    left_edges = _left_edges(start, None if before is None else _minutes(before))
    right_edges = _right_edges(end, None if after is None else _minutes(after))
    best: tuple[int, _Edge | None, _Edge | None] | None = None
    for left in left_edges:
        for right in right_edges:
            middle_first = left.end if left else start
            middle_end = right.start if right else end
            if left and right and (left.level, left.start) == (right.level, right.start):
                # One bucket sticks out at both edges: read less both parts outside.
                rows = (
                    1
                    + _count(left.outside_first, left.outside_end)
                    + _count(right.outside_first, right.outside_end)
                )
            elif middle_first > middle_end:
                continue  # the two buckets would overlap
            else:
                rows = (
                    (left.rows() if left else 0)
                    + _count(middle_first, middle_end)
                    + (right.rows() if right else 0)
                )
            if best is None or rows < best[0]:
                best = (rows, left, right)
    assert best is not None  # (None, None) is always a candidate
    _, left, right = best
    if left and right and (left.level, left.start) == (right.level, right.start):
        return (_piece(left, *_ranges(right.outside_first, right.outside_end)),)
    pieces = [_piece(left)] if left else []
    middle = _ranges(left.end if left else start, right.start if right else end)
    pieces += [Piece(step, bucket_first, bucket_last) for step, bucket_first, bucket_last in middle]
    if right:
        pieces.append(_piece(right))
    return tuple(pieces)
