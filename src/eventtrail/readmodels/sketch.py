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

The stored form (:meth:`LatencySketch.to_bytes`) holds a sketch's counts as
one run of 32-bit fields, one per bucket from its lowest to its highest, when
most buckets of that run are used: a sum of many stored rows
(:class:`SketchSum`, what a reader over a long window does) is then one
integer addition per row, done in C, instead of one dictionary update per
bucket. Sparse sketches and deltas (negative counts) keep (bucket, count)
pairs.
"""

from __future__ import annotations

import functools
import math
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from itertools import accumulate, compress

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
#: The stored form: the (bucket, count) pairs outside the run, the bounds,
#: then the run: its first bucket, the sum of its counts and its fields.
_Stored = tuple[list[tuple[int, int]], float | None, float | None, int, int, bytes]
_decode_stored = msgspec.msgpack.Decoder(_Stored).decode
#: A stored form read for summing: its run as one integer (0: no run).
_Decoded = tuple[list[tuple[int, int]], float | None, float | None, int, int, int]
#: The form written before runs existed: pairs and bounds only (still read).
_decode_pairs = msgspec.msgpack.Decoder(tuple[list[tuple[int, int]], float | None, float | None]).decode
#: msgpack's marker of a 6-element array: the first byte of every stored form.
_STORED_MARKER = 0x96

#: A field of the run: an unsigned 32-bit count, little-endian.
_FIELD_BITS = 32
_FIELD_MAX = 2**_FIELD_BITS - 1
#: A run is written when at least this share of its fields is used.
_RUN_DENSITY = 0.25
#: Beyond the bucket key of any finite number of milliseconds.
_MAX_KEY = 2**16
_MISMATCH = (
    "latency sketches that do not add up (a minute row is not part of its hour row):"
    " the read models are damaged; run `eventtrail rebuild`"
)


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
        """The stored form (one sketch, one form): the buckets as a run of
        fields when they are dense and none is negative, else as (bucket,
        count) pairs in key order; then the bounds."""
        counts = self.counts
        real = [key for key in counts if key != _ZERO]
        if real and all(count > 0 for count in counts.values()):
            first, last = min(real), max(real)
            total = sum(counts[key] for key in real)
            if len(real) >= _RUN_DENSITY * (last - first + 1) and total <= _FIELD_MAX:
                fields = array("I", bytes(4 * (last - first + 1)))
                for key in real:
                    fields[key - first] = counts[key]
                if sys.byteorder != "little":
                    fields.byteswap()
                pairs = [(_ZERO, counts[_ZERO])] if _ZERO in counts else []
                return _encode((pairs, self.low, self.high, first, total, fields.tobytes()))
        return _encode((sorted(counts.items()), self.low, self.high, 0, 0, b""))

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
        # Each form is merged once (an upsert writes a new one): not cached.
        total = SketchSum()
        total.add_decoded(_decode_run(stored))
        total.add_decoded(_decode_run(delta))
        return total.to_bytes()


class SketchSum:
    """The sum of many stored sketches (the :meth:`LatencySketch.to_bytes`
    form), read without building a sketch per form: what a reader over a
    long window runs on every row it reads. Runs of fields are added as one
    integer each (their fields line up once shifted to a common first
    bucket); the sum is read back into buckets before a field could carry
    into its neighbour."""

    __slots__ = ("_first", "_run", "_run_total", "counts", "high", "low")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.low: float | None = None
        self.high: float | None = None
        self._run = 0
        self._first = 0
        self._run_total = 0

    def add(self, raw: bytes) -> None:
        """Add the sketch ``raw``; a :class:`ValueError` if it is not one."""
        self.add_decoded(_decode_run_cached(raw))

    def add_decoded(self, decoded: _Decoded) -> None:
        """Add a stored sketch read by :func:`_decode_run`."""
        pairs, low, high, first, total, run = decoded
        if run:
            self._add_run_value(first, total, run)
        if pairs:
            counts = self.counts
            get = counts.get
            for key, count in pairs:
                counts[key] = get(key, 0) + count
        self._widen(low, high)

    def add_sum(self, other: SketchSum) -> None:
        """Add everything ``other`` holds."""
        if other._run_total:
            self._add_run_value(other._first, other._run_total, other._run)
        counts = self.counts
        for key, count in other.counts.items():
            counts[key] = counts.get(key, 0) + count
        self._widen(other.low, other.high)

    def _widen(self, low: float | None, high: float | None) -> None:
        """Take in the bounds of what was added."""
        if low is not None and (self.low is None or low < self.low):
            self.low = low
        if high is not None and (self.high is None or high > self.high):
            self.high = high

    def subtract(self, raw: bytes) -> None:
        """Take away the stored sketch ``raw``, part of what was added (a
        minute row out of its hour row); the bounds stay as they were: they
        stay bounds. Its run is taken from the run when that holds all of
        its buckets, else from the other buckets."""
        pairs, _, _, first, total, run = _decode_run_cached(raw)
        counts = self.counts
        if run:
            span = -(-run.bit_length() // _FIELD_BITS)
            inside = total <= self._run_total and first >= self._first
            if inside and not self._holds_apart(first, first + span):
                self._run -= run << (_FIELD_BITS * (first - self._first))
                self._run_total -= total
            else:
                for key, count in _field_counts(first, run.to_bytes(span * 4, "little")).items():
                    counts[key] = counts.get(key, 0) - count
        for key, count in pairs:
            counts[key] = counts.get(key, 0) - count

    def _holds_apart(self, first: int, end: int) -> bool:
        """Whether buckets ``first`` to ``end`` (excluded) have counts outside
        the run: a run taken away there must be taken from those too, or
        the run's fields would borrow from each other."""
        counts = self.counts
        if not counts:
            return False
        if len(counts) <= end - first:
            return any(first <= key < end for key, count in counts.items() if count)
        return any(counts.get(key) for key in range(first, end))

    def _add_run_value(self, first: int, total: int, value: int) -> None:
        if self._run_total + total > _FIELD_MAX:
            self._flush()
        if not self._run_total:
            self._run, self._first = value, first
        elif first >= self._first:
            self._run += value << (_FIELD_BITS * (first - self._first))
        else:
            self._run = (self._run << (_FIELD_BITS * (self._first - first))) + value
            self._first = first
        self._run_total += total

    def _fields(self) -> array[int]:
        """The run's fields. A subtraction of what was not added would have
        borrowed from a neighbouring field: the fields would no longer add
        up to the run's total."""
        run = self._run
        if run < 0:
            raise ValueError(_MISMATCH)
        fields = array("I", run.to_bytes(-(-run.bit_length() // _FIELD_BITS) * 4, "little"))
        if sys.byteorder != "little":
            fields.byteswap()
        if sum(fields) != self._run_total:
            raise ValueError(_MISMATCH)
        return fields

    def _flush(self) -> None:
        """Move the run's sum into :attr:`counts`."""
        if not self._run_total and not self._run:
            return
        counts = self.counts
        fields = self._fields()
        keys = range(self._first, self._first + len(fields))
        for key, count in zip(compress(keys, fields), compress(fields, fields), strict=True):
            counts[key] = counts.get(key, 0) + count
        self._run = self._run_total = 0

    def add_sketch(self, sketch: LatencySketch) -> None:
        """Add a sketch already read."""
        counts = self.counts
        for key, count in sketch.counts.items():
            counts[key] = counts.get(key, 0) + count
        self._widen(sketch.low, sketch.high)

    def quantiles(self, *qs: float) -> list[float | None]:
        """:meth:`LatencySketch.quantiles` of the sum; read on the run of
        fields itself, the other buckets folded in (a cumulative sum and a
        binary search per quantile, done in C)."""
        folded = self._with_pairs() if self._run_total else None
        if folded is None:
            sketch = self.sketch()
            if any(count < 0 for count in sketch.counts.values()):
                raise ValueError(_MISMATCH)
            return sketch.quantiles(*qs)
        if any(not 0 <= q <= 1 for q in qs):
            raise ValueError("a quantile is between 0 and 1")
        first, fields, zeros = folded
        cumulative = list(accumulate(fields, initial=zeros))
        total = cumulative[-1]
        found: list[float | None] = []
        for q in qs:
            rank = max(math.ceil(q * total), 1)
            estimate = 0.0 if rank <= zeros else value_of(first + bisect_left(cumulative, rank) - 1)
            if self.low is not None:
                estimate = max(estimate, self.low)
            if self.high is not None:
                estimate = min(estimate, self.high)
            found.append(estimate)
        return found

    def sketch(self) -> LatencySketch:
        self._flush()
        sketch = LatencySketch(low=self.low, high=self.high)
        sketch.counts = {key: count for key, count in self.counts.items() if count}
        return sketch

    def to_bytes(self) -> bytes:
        """The stored form of the sum: its run with the other buckets folded
        in when the result is a dense run of counts in range (the common
        case of a stored row and a delta), else as a sketch writes it."""
        folded = self._folded() if self._run_total else None
        return folded if folded is not None else self.sketch().to_bytes()

    def _with_pairs(self) -> tuple[int, array[int], int] | None:
        """``(first bucket, fields, zero count)``: the run with the other
        buckets folded in; ``None`` when a count would leave a field's range."""
        fields = self._fields()
        first = self._first
        zeros = 0
        for key, count in self.counts.items():
            if key == _ZERO:
                zeros += count
                continue
            if not count:
                continue
            if not -_MAX_KEY <= key <= _MAX_KEY:
                return None  # not a finite latency's bucket: read as pairs
            if key < first:
                fields[:0] = array("I", bytes(4 * (first - key)))
                first = key
            elif key - first >= len(fields):
                fields.extend(array("I", bytes(4 * (key - first - len(fields) + 1))))
            value = fields[key - first] + count
            if not 0 <= value <= _FIELD_MAX:
                return None
            fields[key - first] = value
        return (first, fields, zeros) if zeros >= 0 else None

    def _folded(self) -> bytes | None:
        folded = self._with_pairs()
        if folded is None:
            return None
        first, fields, zeros = folded
        total = sum(fields)
        pairs = [(_ZERO, zeros)] if zeros else []
        # Fields a delta emptied at either end are not written.
        while fields and not fields[-1]:
            fields.pop()
        empty = 0
        while empty < len(fields) and not fields[empty]:
            empty += 1
        if not fields or not 0 < total <= _FIELD_MAX:
            return None
        if len(fields) - fields.count(0) < _RUN_DENSITY * (len(fields) - empty):
            return None
        if sys.byteorder != "little":
            fields.byteswap()
        return _encode((pairs, self.low, self.high, first + empty, total, fields[empty:].tobytes()))


def _field_counts(first: int, run: bytes) -> dict[int, int]:
    """The buckets of a run of fields as stored."""
    fields = array("I", run)
    if sys.byteorder != "little":
        fields.byteswap()
    keys = range(first, first + len(fields))
    return dict(zip(compress(keys, fields), compress(fields, fields), strict=True))


def _decode(raw: bytes) -> _Stored:
    try:
        if raw[:1] == bytes([_STORED_MARKER]):
            stored: _Stored = _decode_stored(raw)
            first, run = stored[3], stored[5]
            # Every finite latency's bucket is within these keys.
            if len(run) % 4 or not -_MAX_KEY <= first <= first + len(run) // 4 <= _MAX_KEY:
                raise ValueError("not a latency sketch: a run out of range")
            return stored
        pairs, low, high = _decode_pairs(raw)
    except msgspec.DecodeError as error:
        raise ValueError(f"not a latency sketch: {error}") from None
    return pairs, low, high, 0, 0, b""


def _decode_run(raw: bytes) -> _Decoded:
    """:func:`_decode` with the run read as one integer, checked."""
    pairs, low, high, first, total, run = _decode(raw)
    if run and not 0 < total <= _FIELD_MAX:
        raise ValueError("not a latency sketch: a run's total is out of range")
    return pairs, low, high, first, total, int.from_bytes(run, "little")


#: The widest run that a stored form's (bucket, count) pairs are folded into
#: when it is read for summing: bounds what a hostile form makes a reader hold.
_FOLD_FIELDS = 4096


def _decode_for_sum(raw: bytes) -> _Decoded:
    """:func:`_decode_run` with the pairs a run can hold (real buckets,
    counts in a field's range) folded into the run, as long as it spans at
    most :data:`_FOLD_FIELDS` fields: a sparse form (stored as pairs) is then
    added as one integer, instead of one dictionary update per pair for
    every row a reader sums. The run's total stays within a field's range,
    as a stored run's does."""
    decoded = pairs, low, high, first, total, run = _decode_run(raw)
    foldable: list[tuple[int, int]] = []
    kept: list[tuple[int, int]] = []
    for key, count in pairs:
        # The zero bucket's key is beyond any other's: it stays a pair.
        holds = 0 < count <= _FIELD_MAX and -_MAX_KEY <= key <= _MAX_KEY
        (foldable if holds else kept).append((key, count))
    if not foldable:
        return decoded
    keys = [key for key, _ in foldable]
    low_key, high_key = min(keys), max(keys)
    if run:
        low_key = min(low_key, first)
        high_key = max(high_key, first + (run.bit_length() - 1) // _FIELD_BITS)
    added = sum(count for _, count in foldable)
    if high_key - low_key >= _FOLD_FIELDS or total + added > _FIELD_MAX:
        return decoded
    value = run << (_FIELD_BITS * (first - low_key)) if run else 0
    for key, count in foldable:
        value += count << (_FIELD_BITS * (key - low_key))
    return kept, low, high, low_key, total + added, value


#: A reader adds the same stored rows again and again (the closed buckets of
#: a window polled every few seconds): cached on the bytes themselves.
_decode_run_cached = functools.lru_cache(maxsize=4096)(_decode_for_sum)


def _read(raw: bytes) -> tuple[dict[int, int], float | None, float | None]:
    pairs, low, high, first, total, run = _decode(raw)
    if run:
        if not 0 < total <= _FIELD_MAX:
            raise ValueError("not a latency sketch: a run's total is out of range")
        found = _field_counts(first, run)
        for key, count in pairs:
            found[key] = found.get(key, 0) + count
    else:
        found = dict(pairs)
    # Stored forms hold no zero counts: the dict is built in C, and filtered
    # only when a hand-made form holds some.
    if 0 in found.values():
        found = {key: count for key, count in found.items() if count}
    return found, low, high
