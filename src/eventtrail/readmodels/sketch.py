"""A mergeable latency sketch: logarithmic buckets (DDSketch, Masson et al.,
VLDB 2019) with a relative accuracy of 1%.

A value ``x > 0`` falls in bucket ``ceil(log_gamma(x))`` with
``gamma = (1 + a) / (1 - a)``; every value of a bucket is within ``a`` of the
bucket's representative value, so any quantile read from the sketch is within
1% (relative) of the exact one. Values at or below :data:`SMALLEST` (zero
latencies) share one bucket read back as ``0``.

Sketches merge by adding counts per bucket, which is what makes per-minute
rollups add up to any window. Counts may be negative in a *delta* (a call
moved from one rollup row to another); a stored sketch is a sum of deltas and
never holds a negative count.

A sketch also keeps bounds of its values (``low``, ``high``: the smallest and
largest value added), and clamps quantiles into them, as DDSketch
implementations do: a set of equal latencies reads back exactly. A delta that
takes values away leaves the bounds as they were: they stay bounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import msgspec

__all__ = ["RELATIVE_ACCURACY", "SMALLEST", "LatencySketch", "SketchSum"]

#: Quantiles read from a sketch are within this share of the exact ones.
RELATIVE_ACCURACY = 0.01

#: Values at or below this (milliseconds) count as zero.
SMALLEST = 1e-6

_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
#: The bucket key of the values read back as zero (no real bucket goes this low).
_ZERO = -(2**31)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[list[tuple[int, int]], float | None, float | None]).decode


def bucket_of(value: float) -> int:
    """The bucket key of ``value`` (milliseconds, not negative)."""
    if value <= SMALLEST:
        return _ZERO
    return math.ceil(math.log(value) / _LOG_GAMMA)


def value_of(bucket: int) -> float:
    """The representative value of a bucket: within the relative accuracy of
    every value that falls in it."""
    if bucket == _ZERO:
        return 0.0
    return 2 * _GAMMA**bucket / (_GAMMA + 1)


class LatencySketch:
    """Counts of values per logarithmic bucket."""

    __slots__ = ("counts", "high", "low")

    def __init__(
        self, counts: Mapping[int, int] | None = None, low: float | None = None, high: float | None = None
    ) -> None:
        self.counts: dict[int, int] = {key: count for key, count in (counts or {}).items() if count}
        self.low = low
        self.high = high

    @classmethod
    def of(cls, values: Iterable[float]) -> LatencySketch:
        sketch = cls()
        for value in values:
            sketch.add(value)
        return sketch

    def add(self, value: float, count: int = 1) -> None:
        """Count ``value`` (a finite number of milliseconds) ``count`` times
        (negative in a delta that takes it away)."""
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a latency must be a finite number of milliseconds >= 0, not {value!r}")
        self.add_to_bucket(bucket_of(value), value, count)

    def add_to_bucket(self, key: int, value: float, count: int) -> None:
        """:meth:`add` with ``key = bucket_of(value)`` already known (a call
        counts in several rollups at once), ``value`` already checked."""
        if count > 0:
            if self.low is None or value < self.low:
                self.low = value
            if self.high is None or value > self.high:
                self.high = value
        total = self.counts.get(key, 0) + count
        if total:
            self.counts[key] = total
        else:
            del self.counts[key]

    def merge(self, other: LatencySketch) -> None:
        """Add every count of ``other`` to this sketch."""
        if other.low is not None and (self.low is None or other.low < self.low):
            self.low = other.low
        if other.high is not None and (self.high is None or other.high > self.high):
            self.high = other.high
        counts = self.counts
        for key, count in other.counts.items():
            total = counts.get(key, 0) + count
            if total:
                counts[key] = total
            else:
                del counts[key]

    def negated(self) -> LatencySketch:
        """The delta that takes this sketch's values away."""
        return LatencySketch({key: -count for key, count in self.counts.items()}, self.low, self.high)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return bool(self.counts)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LatencySketch)
            and self.counts == other.counts
            and (self.low, self.high) == (other.low, other.high)
        )

    def __hash__(self) -> int:
        raise TypeError("a sketch is mutable")

    def __repr__(self) -> str:
        return f"LatencySketch({self.count} values in {len(self.counts)} buckets)"

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q``-quantile (the value of rank ``ceil(q * n)``),
        within the relative accuracy; ``None`` for an empty sketch."""
        if not 0 <= q <= 1:
            raise ValueError("a quantile is between 0 and 1")
        total = self.count
        if total <= 0:
            return None
        rank = max(math.ceil(q * total), 1)
        seen = 0
        estimate = value_of(max(self.counts))
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                estimate = value_of(key)
                break
        if self.low is not None:
            estimate = max(estimate, self.low)
        if self.high is not None:
            estimate = min(estimate, self.high)
        return estimate

    def quantiles(self, *qs: float) -> list[float | None]:
        """:meth:`quantile` of each of ``qs``, in one walk of the buckets."""
        if any(not 0 <= q <= 1 for q in qs):
            raise ValueError("a quantile is between 0 and 1")
        total = self.count
        if total <= 0:
            return [None] * len(qs)
        ranks = sorted((max(math.ceil(q * total), 1), index) for index, q in enumerate(qs))
        found: list[float | None] = [value_of(max(self.counts))] * len(qs)
        seen = 0
        next_rank = 0
        counts = self.counts
        for key in sorted(counts):
            seen += counts[key]
            while next_rank < len(ranks) and seen >= ranks[next_rank][0]:
                found[ranks[next_rank][1]] = value_of(key)
                next_rank += 1
            if next_rank == len(ranks):
                break
        low, high = self.low, self.high
        for index, estimate in enumerate(found):
            assert estimate is not None
            if low is not None:
                estimate = max(estimate, low)
            if high is not None:
                estimate = min(estimate, high)
            found[index] = estimate
        return found

    def to_bytes(self) -> bytes:
        """A compact form: msgpack of the (bucket key, count) pairs in key
        order (one sketch, one form; small integers take one byte), and the
        bounds."""
        return _encode((sorted(self.counts.items()), self.low, self.high))

    @classmethod
    def from_bytes(cls, raw: bytes) -> LatencySketch:
        """Read back :meth:`to_bytes`; raises :class:`ValueError` on anything else."""
        counts, low, high = _read(raw)
        sketch = cls(low=low, high=high)
        sketch.counts = counts
        return sketch

    @staticmethod
    def merge_bytes(stored: bytes, delta: bytes) -> bytes:
        """``stored`` with ``delta`` merged in, both in the :meth:`to_bytes`
        form, without building sketches (what a database's merge function
        runs on every upsert)."""
        counts, low, high = _read(stored)
        delta_counts, delta_low, delta_high = _read(delta)
        for key, count in delta_counts.items():
            total = counts.get(key, 0) + count
            if total:
                counts[key] = total
            else:
                counts.pop(key, None)
        if delta_low is not None and (low is None or delta_low < low):
            low = delta_low
        if delta_high is not None and (high is None or delta_high > high):
            high = delta_high
        return _encode((sorted(counts.items()), low, high))


class SketchSum:
    """The sum of many serialised sketches (the :meth:`LatencySketch.to_bytes`
    form), read without building a sketch per form: what a reader over a
    long window runs on every row it reads."""

    __slots__ = ("counts", "high", "low")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.low: float | None = None
        self.high: float | None = None

    def add(self, raw: bytes) -> None:
        """Add the sketch ``raw``; a :class:`ValueError` if it is not one."""
        try:
            pairs, low, high = _decode(raw)
        except msgspec.DecodeError as error:
            raise ValueError(f"not a latency sketch: {error}") from None
        counts = self.counts
        get = counts.get
        for key, count in pairs:
            counts[key] = get(key, 0) + count
        if low is not None and (self.low is None or low < self.low):
            self.low = low
        if high is not None and (self.high is None or high > self.high):
            self.high = high

    def sketch(self) -> LatencySketch:
        sketch = LatencySketch(low=self.low, high=self.high)
        sketch.counts = {key: count for key, count in self.counts.items() if count}
        return sketch


def _read(raw: bytes) -> tuple[dict[int, int], float | None, float | None]:
    try:
        counts, low, high = _decode(raw)
    except msgspec.DecodeError as error:
        raise ValueError(f"not a latency sketch: {error}") from None
    # Stored forms hold no zero counts: the dict is built in C, and filtered
    # only when a hand-made form holds some.
    found = dict(counts)
    if 0 in found.values():
        found = {key: count for key, count in found.items() if count}
    return found, low, high
