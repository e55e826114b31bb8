"""The latency sketch against exact percentiles (hypothesis): within 1%."""

from __future__ import annotations

import contextlib
import math

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eventtrail.readmodels.sketch import RELATIVE_ACCURACY, LatencySketch, SketchSum, _decode

latencies = st.lists(
    st.floats(min_value=1e-3, max_value=1e7, allow_nan=False, allow_infinity=False), min_size=1, max_size=400
)
quantiles = st.sampled_from([0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0])


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


@given(latencies, quantiles)
def test_a_quantile_is_within_one_percent_of_the_exact_one(values: list[float], q: float) -> None:
    estimate = LatencySketch.of(values).quantile(q)
    exact = nearest_rank(values, q)
    assert estimate is not None
    assert abs(estimate - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9)


@given(st.lists(latencies, min_size=1, max_size=8), quantiles)
def test_merged_sketches_answer_as_the_sketch_of_every_value(parts: list[list[float]], q: float) -> None:
    merged = LatencySketch()
    for part in parts:
        merged.merge(LatencySketch.of(part))
    everything = [value for part in parts for value in part]
    assert merged == LatencySketch.of(everything)
    estimate = merged.quantile(q)
    assert estimate is not None
    assert estimate == pytest.approx(nearest_rank(everything, q), rel=RELATIVE_ACCURACY)


@given(latencies)
def test_the_compact_form_reads_back_the_same_sketch(values: list[float]) -> None:
    sketch = LatencySketch.of([*values, 0.0])
    raw = sketch.to_bytes()
    assert LatencySketch.from_bytes(raw) == sketch
    # A few bytes per bucket: a run of fields is written only when dense.
    assert len(raw) <= 40 + 16 * len(sketch.counts)
    merged = LatencySketch.from_bytes(LatencySketch.merge_bytes(raw, LatencySketch.of(values[:3]).to_bytes()))
    expected = LatencySketch.of([*values, 0.0, *values[:3]])
    assert merged == expected


@given(latencies, latencies)
def test_a_negative_delta_takes_values_away(kept: list[float], moved: list[float]) -> None:
    sketch = LatencySketch.of(kept + moved)
    sketch.merge(LatencySketch.of(moved).negated())
    assert sketch.counts == LatencySketch.of(kept).counts
    assert sketch.count == len(kept)


@settings(max_examples=50)
@given(st.binary(max_size=64))
def test_any_bytes_are_a_sketch_or_a_value_error(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        LatencySketch.from_bytes(raw)


def test_equal_latencies_read_back_exactly_and_zero_is_zero() -> None:
    assert LatencySketch.of([900.0] * 50).quantiles(0.5, 0.95) == [900.0, 900.0]
    assert LatencySketch.of([0.0, 0.0, 5.0]).quantile(0.5) == 0.0
    assert LatencySketch().quantile(0.5) is None
    with pytest.raises(ValueError, match="finite"):
        LatencySketch().add(math.inf)
    with pytest.raises(ValueError, match="finite"):
        LatencySketch().add(-1.0)


@given(latencies, st.lists(quantiles, min_size=1, max_size=5))
def test_several_quantiles_at_once_answer_as_one_at_a_time(values: list[float], qs: list[float]) -> None:
    sketch = LatencySketch.of(values)
    assert sketch.quantiles(*qs) == [sketch.quantile(q) for q in qs]
    assert LatencySketch().quantiles(*qs) == [None] * len(qs)


@given(st.lists(st.lists(latencies, min_size=1, max_size=3), min_size=1, max_size=6))
def test_a_sum_of_stored_forms_is_the_merged_sketch(parts: list[list[list[float]]]) -> None:
    """What a reader over a long window computes from stored rows without a
    sketch per row equals merging the sketches, bounds included (a row may
    hold a delta that took values away)."""
    total = SketchSum()
    expected = LatencySketch()
    for kept, *moved in parts:
        row = LatencySketch.of(kept + [value for values in moved for value in values])
        for values in moved:
            for value in values:
                row.add(value, -1)
        total.add(row.to_bytes())
        expected.merge(row)
    assert total.sketch() == expected


@given(latencies, latencies, st.integers(min_value=0, max_value=400), st.booleans())
def test_merging_stored_forms_is_merging_sketches(
    stored: list[float], added: list[float], taken: int, zeros: bool
) -> None:
    """What the database's merge function writes for a stored row and a
    delta (calls added, and calls of the row moved away) reads back as the
    merged sketch, whichever forms the row and the delta have."""
    row = LatencySketch.of(stored + ([0.0, 0.0] if zeros else []))
    delta = LatencySketch.of(added)
    for value in stored[:taken]:
        delta.add(value, -1)
    expected = LatencySketch.of(stored + ([0.0, 0.0] if zeros else []))
    expected.merge(delta)
    merged = LatencySketch.merge_bytes(row.to_bytes(), delta.to_bytes())
    assert LatencySketch.from_bytes(merged) == expected
    assert LatencySketch.merge_bytes(merged, LatencySketch().to_bytes()) == merged


@given(
    st.lists(latencies, min_size=1, max_size=5),
    st.integers(0, 3),
    st.lists(quantiles, min_size=1, max_size=4),
)
def test_quantiles_of_a_sum_are_those_of_the_merged_sketch(
    parts: list[list[float]], zeros: int, qs: list[float]
) -> None:
    total = SketchSum()
    expected = LatencySketch()
    for part in parts:
        sketch = LatencySketch.of(part + [0.0] * zeros)
        total.add(sketch.to_bytes())
        expected.merge(sketch)
    assert total.quantiles(*qs) == expected.quantiles(*qs)
    assert SketchSum().quantiles(*qs) == [None] * len(qs)


@given(st.lists(st.lists(latencies, min_size=1, max_size=3), min_size=1, max_size=4))
def test_sums_of_sums_are_the_merged_sketch(groups: list[list[list[float]]]) -> None:
    total = SketchSum()
    expected = LatencySketch()
    for group in groups:
        partial = SketchSum()
        for part in group:
            sketch = LatencySketch.of(part)
            partial.add(sketch.to_bytes())
            expected.merge(sketch)
        total.add_sum(partial)
    assert total.sketch() == expected


def test_a_pair_beyond_any_latencys_bucket_is_merged_without_a_run_to_reach_it() -> None:
    run = LatencySketch.of([10.0 + n / 10 for n in range(100)])
    far = msgspec.msgpack.encode(([(2**40, 1)], None, None, 0, 0, b""))
    merged = LatencySketch.from_bytes(LatencySketch.merge_bytes(run.to_bytes(), far))
    assert merged.counts[2**40] == 1 and merged.count == 101


def test_taking_away_what_was_not_added_is_an_error_not_a_wrong_answer() -> None:
    for taken in ([15.0] * 50, [25.0], [5.0]):
        total = SketchSum()
        total.add(LatencySketch.of([10.0 + n / 10 for n in range(100)]).to_bytes())
        total.subtract(LatencySketch.of(taken).to_bytes())
        with pytest.raises(ValueError, match="eventtrail rebuild"):
            total.quantiles(0.5)


def test_a_sum_refuses_what_is_not_a_stored_sketch() -> None:
    with pytest.raises(ValueError, match="not a latency sketch"):
        SketchSum().add(b"\xc1")
    # A run placed beyond any latency's bucket, or of partial fields.
    for first, run in ((2**40, b"\x01\x00\x00\x00"), (0, b"\x01\x00")):
        raw = msgspec.msgpack.encode(([], None, None, first, 1, run))
        with pytest.raises(ValueError, match="not a latency sketch"):
            SketchSum().add(raw)
        with pytest.raises(ValueError, match="not a latency sketch"):
            LatencySketch.from_bytes(raw)
    # A run whose total is out of range, refused every time it is read.
    for total in (0, 2**32):
        raw = msgspec.msgpack.encode(([], None, None, 0, total, b"\x01\x00\x00\x00"))
        for _ in range(2):
            with pytest.raises(ValueError, match="a run's total is out of range"):
                SketchSum().add(raw)


@given(latencies)
def test_forms_written_before_runs_existed_still_read_and_sum(values: list[float]) -> None:
    sketch = LatencySketch.of([*values, 0.0])
    older = msgspec.msgpack.encode((sorted(sketch.counts.items()), sketch.low, sketch.high))
    assert LatencySketch.from_bytes(older) == sketch
    total = SketchSum()
    total.add(older)
    total.add(sketch.to_bytes())
    doubled = LatencySketch.of([*values, 0.0])
    doubled.merge(sketch)
    assert total.sketch() == doubled
    assert LatencySketch.from_bytes(LatencySketch.merge_bytes(older, sketch.to_bytes())) == doubled


def test_dense_latencies_are_stored_as_a_run_and_sparse_ones_as_pairs() -> None:
    dense = LatencySketch.of([10.0 + n / 10 for n in range(1000)])
    *_, total, run = msgspec.msgpack.decode(dense.to_bytes())
    assert total == 1000 and len(run) > 0
    sparse = LatencySketch.of([0.01, 60_000.0])
    pairs, *_, run = msgspec.msgpack.decode(sparse.to_bytes())
    assert len(pairs) == 2 and run == b""


def test_a_sum_past_a_fields_range_stays_exact() -> None:
    """Runs whose counts add up beyond 32 bits are read back before a field
    could carry into the next one."""
    big = LatencySketch()
    big.add(5.0, 2**31)
    big.add(5.1, 3)
    total = SketchSum()
    for _ in range(5):
        total.add(big.to_bytes())
    expected = LatencySketch()
    for _ in range(5):
        expected.merge(big)
    assert total.sketch() == expected
    assert total.sketch().count == 5 * (2**31 + 3)
    # A single sketch beyond a field's range is stored as pairs.
    huge = LatencySketch()
    huge.add(5.0, 2**33)
    assert LatencySketch.from_bytes(huge.to_bytes()) == huge


def test_sparse_forms_read_for_a_sum_add_up_exactly_whatever_their_pairs() -> None:
    """Pairs are folded into a run when read for summing, when a run can
    hold them: the sum is the same either way."""
    sparse = LatencySketch.of([0.0, 0.01, 3.0, 900.0, 60_000.0])
    sparse_with_run = LatencySketch.of([*(10.0 + n / 10 for n in range(200)), 50_000.0])
    pair_forms = [
        ([(-(2**31), 2), (10, 5), (400, 7)], 0.0, 1e6),  # the zero bucket is never folded
        ([(-(2**16) - 5, 1), (3, 1)], None, None),  # a key past any latency's
        ([(0, 2**31), (1, 2**31)], 1.0, 1.0),  # more than a field's range in all
        ([(0, 1), (4096, 1)], 1.0, 1e9),  # wider than a folded run may be
    ]
    forms = [sparse.to_bytes(), sparse_with_run.to_bytes()]
    forms += [msgspec.msgpack.encode((pairs, low, high, 0, 0, b"")) for pairs, low, high in pair_forms]
    total = SketchSum()
    expected = LatencySketch()
    for raw in forms * 2:
        total.add(raw)
        expected.merge(LatencySketch.from_bytes(raw))
    qs = (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)
    assert total.sketch() == expected
    summed_again = SketchSum()
    for raw in forms * 2:
        summed_again.add(raw)
    assert summed_again.quantiles(*qs) == expected.quantiles(*qs)


@pytest.mark.parametrize("taken", [[1e6], [1e6, 1.1e6]], ids=["one bucket", "a run wider than what is apart"])
def test_what_is_taken_away_is_taken_from_where_the_sum_holds_it(taken: list[float]) -> None:
    # A dense run, then far outliers whose buckets span too many fields to
    # join the run: the sum holds them apart. Taking some outliers away
    # again (a form that alone is a run) must not borrow from the run.
    spread = [10.0 + n / 10 for n in range(100)]
    outliers = [1e6, 1.1e6, 1e300]
    total = SketchSum()
    total.add(LatencySketch.of(spread).to_bytes())
    total.add(LatencySketch.of(outliers).to_bytes())
    taken_form = LatencySketch.of(taken).to_bytes()
    assert _decode(taken_form)[5], "the form taken away is a run"
    total.subtract(taken_form)
    expected = LatencySketch.of(spread + [value for value in outliers if value not in taken])
    assert total.sketch().counts == expected.counts
    assert total.quantiles(0.5, 0.99) == expected.quantiles(0.5, 0.99)


# Latencies as far apart as a float goes: the forms of such sketches hold
# some buckets as pairs apart from their runs, and so do their sums.
far_apart = st.lists(
    st.one_of(
        st.floats(min_value=1.0, max_value=50.0),
        st.sampled_from([0.0, 1e-300, 1e-6, 1e6, 1.1e6, 1e300, 1e308]),
    ),
    min_size=1,
    max_size=30,
)


@given(
    st.lists(st.lists(st.one_of(latencies, far_apart), min_size=1, max_size=4), min_size=1, max_size=3),
    st.sets(st.integers(0, 11)),
)
# A row held apart (its buckets too far apart for a run), another row's run
# below it, and a minute of the first taken away as a run.
@example(rows=[[[5.0], [1e300]], [[2.0]]], taken={0})
def test_rows_less_some_of_their_minutes_are_the_sum_of_the_other_minutes(
    rows: list[list[list[float]]], taken: set[int]
) -> None:
    # Each row is the sum of its minutes (an hour's row), added as one form;
    # minutes of any row are then taken away, each as a form of its own.
    total = SketchSum()
    minutes = [values for row in rows for values in row]
    added = LatencySketch()
    for row in rows:
        merged = LatencySketch()
        for values in row:
            merged.merge(LatencySketch.of(values))
        total.add(merged.to_bytes())
        added.merge(merged)
    expected = LatencySketch()
    for index, values in enumerate(minutes):
        if index in taken:
            total.subtract(LatencySketch.of(values).to_bytes())
        else:
            expected.merge(LatencySketch.of(values))
    assert {key: count for key, count in total.sketch().counts.items() if count} == expected.counts
    # The bounds are the rows': still bounds of what is left.
    assert (total.low, total.high) == (added.low, added.high)
