"""The read-model port's contract: every backend passes these tests unchanged,
with no capability flags.

A backend's test module subclasses :class:`ReadModelsContract` and provides
the ``opener`` fixture: a picklable callable with no arguments that opens a
store of that backend (whose ``append`` applies the read models, see
:func:`eventtrail.readmodels.read_models_of`), always the same one. It is
called in the test's process and, for the race between two consumers, in two
child processes. Tests use fresh request ids and service names, and filter
on them, so they also pass on a store that holds other events.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from eventtrail.calls import call_error, call_request, call_response
from eventtrail.event import Event
from eventtrail.ids import uuid7_str
from eventtrail.readmodels import ReadModels, RequestQuery, read_models_of
from eventtrail.readmodels.model import (
    ALL_OPERATIONS,
    ALL_TIME,
    ALL_TIME_BUCKET,
    STEPS,
    UNKNOWN_OPERATION,
    WALK_STEPS,
    Changes,
    Rollup,
    RollupKey,
    bucket_start,
)
from eventtrail.readmodels.port import BucketCount, FailingRun
from eventtrail.readmodels.prometheus import render_metrics
from eventtrail.readmodels.sketch import RELATIVE_ACCURACY, LatencySketch
from eventtrail.store import AppendStatus, InvalidCursor, Store
from eventtrail.times import format_moment

T0 = datetime(2021, 3, 4, 10, 0, 0, tzinfo=UTC)
CALLER = "Gateway"

Opener = Callable[[], Store]


def unique_service(prefix: str = "svc") -> str:
    return f"{prefix}-{uuid7_str()}"


def a_call(
    service: str,
    at: datetime,
    *,
    latency_ms: float = 10.0,
    status: int = 200,
    error: str | None = None,
    method: str = "GET",
    path: str = "/orders/42",
    request_id: str | None = None,
    caller: str = CALLER,
) -> tuple[Event, Event]:
    """A call's request event at ``at`` and its outcome ``latency_ms`` later."""
    request_id = request_id or uuid7_str()
    call_id = uuid7_str()
    request = call_request(
        request_id, call_id, service, method, path, source=caller, timestamp=format_moment(at)
    )
    ended = format_moment(at + timedelta(milliseconds=latency_ms))
    if error is not None:
        outcome = call_error(
            request_id, call_id, service, error=error, elapsed_ms=latency_ms, source=caller, timestamp=ended
        )
    else:
        outcome = call_response(
            request_id,
            call_id,
            service,
            status=status,
            latency_ms=latency_ms,
            bytes_in=0,
            bytes_out=0,
            source=caller,
            timestamp=ended,
        )
    return request, outcome


def spread_calls(service: str, count: int, *, hours: tuple[int, int], seed: int) -> list[tuple[Event, Event]]:
    """``count`` calls of ``service`` at random moments from ``hours[0]`` to
    ``hours[1]`` hours after :data:`T0`, a third failing, with latencies of
    1 to 900 ms."""
    rng = random.Random(seed)
    return [
        a_call(
            service,
            T0 + timedelta(seconds=rng.randrange(hours[0] * 3600, hours[1] * 3600)),
            status=rng.choice([200, 200, 503]),
            latency_ms=rng.uniform(1, 900),
        )
        for _ in range(count)
    ]


def flat(calls: list[tuple[Event, Event]]) -> list[Event]:
    return [event for call in calls for event in call]


def totals(models: ReadModels, service: str, since: datetime, until: datetime) -> Rollup:
    found = models.rollups(since, until, service=service)
    return found.get((CALLER, service, ALL_OPERATIONS), Rollup())


def by_operation(models: ReadModels, service: str, since: datetime, until: datetime) -> dict[str, int]:
    found = models.rollups(since, until, service=service, operations=True)
    return {operation: rollup.calls for (_, _, operation), rollup in found.items() if rollup.calls}


def snapshot(models: ReadModels, service: str, since: datetime, until: datetime) -> dict[str, Any]:
    """Everything the read models say of ``service``: per bucket of every
    step, per operation and whole, and its requests."""
    buckets = {
        (key.step, key.bucket, key.operation): (rollup.calls, rollup.failures, rollup.sketch.to_bytes())
        for step in models.steps
        for operations in (True, False)
        for key, rollup in models.buckets(since, until, service=service, operations=operations, step=step)
        if rollup.calls
    }
    whole = {
        edge: (rollup.calls, rollup.failures, rollup.sketch.to_bytes())
        for edge, rollup in models.rollups(since, until, service=service, operations=True).items()
        if rollup.calls
    }
    requests = msgspec.to_builtins(all_requests(models, RequestQuery(service=service)))
    # Counts only: the all-time rows' latency bounds after a partial rebuild
    # are those of before too (bounds are never taken away).
    all_time = {
        edge: (rollup.calls, rollup.failures, rollup.sketch.counts)
        for edge, rollup in models.all_time().items()
        if edge[1] == service
    }
    return {"buckets": buckets, "whole": whole, "requests": requests, "all_time": all_time}


def all_requests(models: ReadModels, query: RequestQuery, *, limit: int = 7) -> list[Any]:
    found: list[Any] = []
    cursor: str | None = None
    for _ in range(10_000):
        page = models.requests(query, limit=limit, cursor=cursor)
        found += page.requests
        if page.cursor is None:
            return found
        cursor = page.cursor
    raise AssertionError("the request pages never ended")


def _append_in_child(opener: Opener, events_json: bytes, chunk: int) -> None:
    events = msgspec.json.decode(events_json, type=list[Event])
    store = opener()
    try:
        for start in range(0, len(events), chunk):
            pending = events[start : start + chunk]
            for _ in range(200):
                results = store.append(pending)
                if all(result.ok for result in results):
                    break
                pending = [e for e, r in zip(pending, results, strict=True) if not r.ok]
    finally:
        store.close()


class ReadModelsContract:
    @pytest.fixture
    def opener(self) -> Opener:
        raise NotImplementedError("a backend's test class provides the opener fixture")

    @pytest.fixture
    def store(self, opener: Opener) -> Iterator[Store]:
        store = opener()
        yield store
        store.close()

    @staticmethod
    def models(store: Store) -> ReadModels:
        return read_models_of(store)

    # ---------------------------------------------------------------- rollups

    def test_calls_failures_and_latencies_are_counted_per_service(self, store: Store) -> None:
        service = unique_service()
        calls = [a_call(service, T0 + timedelta(seconds=i), latency_ms=10.0 + i) for i in range(20)]
        calls += [a_call(service, T0 + timedelta(seconds=30), status=503, latency_ms=40)]
        calls += [a_call(service, T0 + timedelta(seconds=31), error="timeout", latency_ms=1000)]
        calls += [a_call(service, T0 + timedelta(seconds=32), error="refused", latency_ms=1)]
        calls += [a_call(service, T0 + timedelta(seconds=33), error="weird", latency_ms=2)]
        assert all(result.ok for result in store.append(flat(calls)))
        rollup = totals(self.models(store), service, T0, T0 + timedelta(minutes=1))
        assert rollup.calls == 24
        assert rollup.failures_by_kind() == {"5xx": 1, "timeout": 1, "refused": 1, "reset": 0, "error": 1}
        latencies = sorted([10.0 + i for i in range(20)] + [40, 1000, 1, 2])
        exact_p50 = latencies[11]
        assert rollup.sketch.quantile(0.5) == pytest.approx(exact_p50, rel=RELATIVE_ACCURACY)
        assert rollup.sketch.quantile(1.0) == pytest.approx(1000, rel=RELATIVE_ACCURACY)

    def test_a_call_its_client_gave_up_on_is_counted_and_is_no_failure(self, store: Store) -> None:
        service = unique_service()
        request_id = uuid7_str()
        calls = [a_call(service, T0, error="disconnected", latency_ms=5000, request_id=request_id)]
        calls += [a_call(service, T0 + timedelta(seconds=1), latency_ms=10)]
        assert all(result.ok for result in store.append(flat(calls)))
        models = self.models(store)
        rollup = totals(models, service, T0, T0 + timedelta(minutes=1))
        assert (rollup.calls, rollup.errors, rollup.abandoned) == (2, 0, 1)
        # Its time until the client left is its latency: a slow service still shows.
        assert rollup.sketch.quantile(1.0) == pytest.approx(5000, rel=RELATIVE_ACCURACY)
        [summary] = [
            found
            for found in models.requests(RequestQuery(service=service)).requests
            if found.request_id == request_id
        ]
        assert (summary.status, summary.errors) == ("ok", 0)
        # An outcome before its request moves to its operation, abandoned still.
        request, outcome = a_call(service, T0 + timedelta(seconds=2), error="disconnected", path="/slow")
        store.append([outcome])
        store.append([request])
        found = models.rollups(T0, T0 + timedelta(minutes=1), service=service, operations=True)
        assert {operation: (r.calls, r.abandoned) for (_, _, operation), r in found.items() if r.calls} == {
            "GET /orders/{id}": (2, 1),
            "GET /slow": (1, 1),
        }
        assert models.all_time()[(CALLER, service, ALL_OPERATIONS)].abandoned == 2
        metrics = render_metrics(models).decode()
        labels = f'{{caller="{CALLER}",service="{service}"}}'
        assert f"eventtrail_service_calls_abandoned_total{labels} 2\n" in metrics
        assert f"eventtrail_service_calls_total{labels} 3\n" in metrics

    def test_a_redelivered_or_resent_event_never_counts_twice(self, store: Store) -> None:
        service = unique_service()
        calls = [a_call(service, T0 + timedelta(seconds=i), status=500 if i % 3 else 200) for i in range(30)]
        events = flat(calls)
        store.append(events)
        models = self.models(store)
        before = snapshot(models, service, T0, T0 + timedelta(hours=1))
        # The whole batch again, then halves, then single events, shuffled.
        assert {r.status for r in store.append(events)} == {AppendStatus.DUPLICATE}
        store.append(events[::2])
        shuffled = events[:]
        random.Random(7).shuffle(shuffled)
        for event in shuffled[:10]:
            store.append([event])
        assert snapshot(models, service, T0, T0 + timedelta(hours=1)) == before
        assert totals(models, service, T0, T0 + timedelta(hours=1)).calls == 30
        assert totals(models, service, T0, T0 + timedelta(hours=1)).failures_by_kind()["5xx"] == 20

    def test_a_batch_mixing_new_and_redelivered_events_counts_only_the_new(self, store: Store) -> None:
        service = unique_service()
        old = flat([a_call(service, T0 + timedelta(seconds=i)) for i in range(5)])
        store.append(old)
        new = flat([a_call(service, T0 + timedelta(seconds=10 + i), status=502) for i in range(3)])
        results = store.append(old[:4] + new + old[4:])
        assert [r.status for r in results].count(AppendStatus.STORED) == len(new)
        rollup = totals(self.models(store), service, T0, T0 + timedelta(minutes=1))
        assert (rollup.calls, rollup.errors) == (8, 3)

    def test_a_late_event_lands_in_its_own_bucket(self, store: Store) -> None:
        service = unique_service()
        store.append(flat([a_call(service, T0 + timedelta(minutes=30, seconds=i)) for i in range(4)]))
        late = a_call(service, T0 + timedelta(minutes=2, seconds=5), status=500)
        store.append(list(late))
        models = self.models(store)
        minutes = {
            key.bucket: rollup.calls
            for key, rollup in models.buckets(T0, T0 + timedelta(hours=1), service=service)
            if rollup.calls
        }
        assert minutes == {
            format_moment(T0 + timedelta(minutes=2)): 1,
            format_moment(T0 + timedelta(minutes=30)): 4,
        }
        assert totals(models, service, T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)).errors == 1

    def test_an_outcome_before_its_request_is_counted_once_under_its_operation(self, store: Store) -> None:
        service = unique_service()
        request, outcome = a_call(service, T0, path="/orders/42", status=500)
        store.append([outcome])
        models = self.models(store)
        window = (T0, T0 + timedelta(minutes=5))
        assert totals(models, service, *window).calls == 1
        assert by_operation(models, service, *window) == {UNKNOWN_OPERATION: 1}
        store.append([request])
        assert totals(models, service, *window).calls == 1
        assert totals(models, service, *window).errors == 1
        assert by_operation(models, service, *window) == {"GET /orders/{id}": 1}
        [summary] = models.requests(RequestQuery(service=service)).requests
        assert (summary.calls, summary.errors, summary.status) == (1, 1, "error")

    def test_ids_in_paths_collapse_into_one_operation(self, store: Store) -> None:
        service = unique_service()
        paths = [
            "/orders/42",
            "/orders/43",
            "/orders/8f14e45f-ceea-467f-a0e6-1f5d4b1f3c2a",
            "/orders/7/items",
        ]
        store.append(flat([a_call(service, T0 + timedelta(seconds=i), path=p) for i, p in enumerate(paths)]))
        store.append(list(a_call(service, T0, method="POST", path="/orders")))
        assert by_operation(self.models(store), service, T0, T0 + timedelta(minutes=1)) == {
            "GET /orders/{id}": 3,
            "GET /orders/{id}/items": 1,
            "POST /orders": 1,
        }

    def test_each_steps_buckets_are_the_sums_of_the_finer_steps_buckets(self, store: Store) -> None:
        service = unique_service()
        calls = spread_calls(service, 300, hours=(0, 16), seed=5)
        store.append(flat(calls))
        models = self.models(store)
        window = (T0 - timedelta(hours=10), T0 + timedelta(hours=20))
        for finer, coarser in itertools.pairwise(models.steps):
            for operations in (False, True):
                summed: dict[tuple[str, str], Rollup] = {}
                for key, rollup in models.buckets(
                    *window, service=service, operations=operations, step=finer
                ):
                    summed.setdefault((bucket_start(key.bucket, coarser), key.operation), Rollup()).merge(
                        rollup
                    )
                stored = {
                    (key.bucket, key.operation): rollup
                    for key, rollup in models.buckets(
                        *window, service=service, operations=operations, step=coarser
                    )
                }
                assert sum(rollup.calls for rollup in stored.values()) == 300
                assert {key: (r.calls, r.failures, r.sketch.counts) for key, r in stored.items()} == {
                    key: (r.calls, r.failures, r.sketch.counts) for key, r in summed.items() if r.calls
                }

    def test_the_all_time_rows_count_every_call_once_through_rebuilds(self, store: Store) -> None:
        service = unique_service()
        calls = spread_calls(service, 120, hours=(-6, 20), seed=9)
        events = flat(calls)
        random.Random(9).shuffle(events)
        for start in range(0, len(events), 50):
            store.append(events[start : start + 50])
        models = self.models(store)
        latencies = [outcome.data["latencyMs"] for _, outcome in calls]
        failed = sum(outcome.data["status"] >= 500 for _, outcome in calls)

        def check() -> None:
            [rollup] = [rollup for edge, rollup in models.all_time().items() if edge[1] == service]
            assert (rollup.calls, rollup.errors) == (120, failed)
            assert rollup.sketch.counts == LatencySketch.of(latencies).counts
            # The sum of the coarsest step's rows.
            summed = Rollup()
            for _, found in models.buckets(
                T0 - timedelta(days=1), T0 + timedelta(days=2), service=service, step=models.steps[-1]
            ):
                summed.merge(found)
            assert (summed.calls, summed.failures, summed.sketch.counts) == (
                rollup.calls,
                rollup.failures,
                rollup.sketch.counts,
            )

        check()
        models.rebuild()
        check()
        # Rows that drifted from their events (a process killed between
        # storing and projecting leaves calls out): a rebuild from a cut sets
        # the all-time rows from the rows it rebuilt, not from what they held.
        drift = Changes()
        drift.rollup(RollupKey(ALL_TIME, ALL_TIME_BUCKET, CALLER, service, ALL_OPERATIONS)).count_call(
            None, 5.0
        )
        models._commit(drift)
        assert models.all_time()[(CALLER, service, ALL_OPERATIONS)].calls == 121
        # From 12:00 on, in the middle of the calls: only what follows is replayed.
        models.rebuild(since=T0 + timedelta(hours=3))
        check()

    def test_any_window_adds_up_from_buckets_of_every_step(self, store: Store) -> None:
        service = unique_service()
        rng = random.Random(3)
        moments = [T0 + timedelta(seconds=rng.randrange(0, 15 * 3600)) for _ in range(300)]
        moments += [T0 + timedelta(minutes=59, seconds=30), T0 + timedelta(minutes=60, seconds=30)]
        calls = [a_call(service, moment, latency_ms=rng.uniform(1, 500)) for moment in moments]
        store.append(flat(calls))
        models = self.models(store)
        for since, until in [
            (T0, T0 + timedelta(hours=15)),
            # Minutes, hours, the six hours from 12:00, hours, minutes.
            (T0 + timedelta(minutes=17), T0 + timedelta(hours=9, minutes=41)),
            (T0 + timedelta(minutes=17), T0 + timedelta(hours=3, minutes=41)),
            (T0 + timedelta(minutes=59), T0 + timedelta(hours=1, minutes=1)),
        ]:
            # A call counts at its outcome's time, with the latency it reports.
            ended = [
                outcome.data["latencyMs"]
                for _, outcome in calls
                if format_moment(since) <= outcome.timestamp < format_moment(until)
            ]
            rollup = totals(models, service, since, until)
            assert rollup.calls == len(ended)
            assert rollup.sketch.counts == LatencySketch.of(ended).counts
            # Bounds of the latencies: an hour read less some of its minutes
            # keeps the hour's, so they hold the window's, maybe loosely.
            assert rollup.sketch.low is not None and rollup.sketch.high is not None
            assert rollup.sketch.low <= min(ended) and rollup.sketch.high >= max(ended)

    # ---------------------------------------------------------------- walks back

    def test_a_services_last_failing_run_is_read_whatever_its_length(self, store: Store) -> None:
        service = unique_service()

        def minute(at: int, calls: int, failed: int, caller: str = CALLER) -> list[tuple[Event, Event]]:
            moments = [T0 + timedelta(minutes=at, seconds=index) for index in range(calls)]
            return [
                a_call(service, moment, status=503 if index < failed else 200, caller=caller)
                for index, moment in enumerate(moments)
            ]

        store.append(
            flat(
                minute(5, 10, 0)
                + minute(7, 20, 1)  # 5%: on the bound is within it
                # One caller within any bound, the other failing: 50% in all.
                + minute(9, 10, 0)
                + minute(9, 10, 10, caller="Batch")
                + minute(10, 10, 5)
                + minute(11, 10, 5)
                + minute(12, 10, 5)
                + minute(90, 4, 4)
            )
        )
        models = self.models(store)
        at = "2021-03-04T{}:00.000000Z".format
        quarter = (T0, T0 + timedelta(minutes=15))
        # Minutes, newest first: 10:12, 10:11, 10:10 and 10:09 fail at 50%.
        assert models.failing_run(*quarter, service=service, max_error_rate=0.05) == FailingRun(
            ("1m", at("10:09")), BucketCount("1m", at("10:07"), 20, 1)
        )
        assert models.failing_run(*quarter, service=service, max_error_rate=0.049) == FailingRun(
            ("1m", at("10:07")), BucketCount("1m", at("10:05"), 10, 0)
        )
        assert models.failing_run(*quarter, service=service, max_error_rate=0.5) == FailingRun(
            None, BucketCount("1m", at("10:12"), 10, 5)
        )
        assert models.failing_run(*quarter, service="nobody", max_error_rate=0.0) == FailingRun(None, None)
        # Three hours, read as hour buckets: all of 10:00 fails at 32.5%.
        hours = (T0, T0 + timedelta(hours=3))
        assert models.failing_run(*hours, service=service, max_error_rate=0.05) == FailingRun(
            ("1h", at("10:00")), None
        )
        assert models.failing_run(*hours, service=service, max_error_rate=0.5) == FailingRun(
            ("1h", at("11:00")), BucketCount("1h", at("10:00"), 80, 26)
        )
        assert models.failing_run(*hours, service=service, max_error_rate=0.05, step="1m") == FailingRun(
            ("1m", at("10:09")), BucketCount("1m", at("10:07"), 20, 1)
        )
        # Minutes up to 11:00, then the hour of 11:00: the run starts in the latter.
        edge = (T0 + timedelta(minutes=5), T0 + timedelta(hours=2))
        assert models.failing_run(*edge, service=service, max_error_rate=0.5) == FailingRun(
            ("1h", at("11:00")), BucketCount("1m", at("10:12"), 10, 5)
        )
        # Each as the port defines it from the counts per bucket.
        for window, step in ((quarter, None), (hours, None), (hours, "1m"), (edge, None)):
            for rate in (0.0, 0.05, 0.25, 0.5, 1.0):
                found = models.failing_run(*window, service=service, max_error_rate=rate, step=step)
                assert found == ReadModels.failing_run(
                    models, *window, service=service, max_error_rate=rate, step=step
                )

    # ---------------------------------------------------------------- requests

    def test_request_summaries_follow_their_calls(self, store: Store) -> None:
        service, other = unique_service(), unique_service()
        request_id = uuid7_str()
        first = a_call(service, T0, request_id=request_id, latency_ms=100)
        second_request, second_outcome = a_call(
            other, T0 + timedelta(milliseconds=200), request_id=request_id, latency_ms=300
        )
        store.append([*first, second_request])
        models = self.models(store)
        [pending] = models.requests(RequestQuery(service=other)).requests
        assert (pending.status, pending.calls, pending.services) == ("pending", 2, [service, other])
        store.append([second_outcome])
        [summary] = models.requests(RequestQuery(service=service)).requests
        assert summary.request_id == request_id
        assert summary.started_at == format_moment(T0)
        assert summary.ended_at == format_moment(T0 + timedelta(milliseconds=500))
        assert summary.duration_ms == 500
        assert (summary.status, summary.calls, summary.errors) == ("ok", 2, 0)

    def test_request_search_is_exhaustive_and_cursor_paged_however_rare_the_match(self, store: Store) -> None:
        common, rare = unique_service("common"), unique_service("rare")
        events: list[Event] = []
        wanted: list[str] = []
        for i in range(300):
            at = T0 + timedelta(seconds=i * 7)
            request_id = uuid7_str()
            events += a_call(common, at, request_id=request_id)
            if i % 97 == 5:
                events += a_call(rare, at + timedelta(milliseconds=20), request_id=request_id, status=503)
                wanted.append(request_id)
            elif i % 50 == 0:
                events += a_call(rare, at + timedelta(milliseconds=1), request_id=request_id, latency_ms=5)
        store.append(events)
        models = self.models(store)
        found = all_requests(models, RequestQuery(service=rare, status="error"), limit=1)
        assert [summary.request_id for summary in found] == wanted[::-1]
        slow = all_requests(models, RequestQuery(service=common, min_duration_ms=25))
        assert {summary.request_id for summary in slow} == set(wanted)
        ranged = all_requests(
            models,
            RequestQuery(
                service=common,
                since=format_moment(T0 + timedelta(seconds=700)),
                until=format_moment(T0 + timedelta(seconds=1400)),
            ),
        )
        assert len(ranged) == 100
        assert [s.started_at for s in ranged] == sorted((s.started_at for s in ranged), reverse=True)

    def test_a_cursor_of_another_search_is_refused(self, store: Store) -> None:
        service = unique_service()
        store.append(flat([a_call(service, T0 + timedelta(seconds=i)) for i in range(3)]))
        models = self.models(store)
        page = models.requests(RequestQuery(service=service), limit=1)
        assert page.cursor is not None
        with pytest.raises(InvalidCursor):
            models.requests(RequestQuery(service=service, status="ok"), limit=1, cursor=page.cursor)
        with pytest.raises(InvalidCursor):
            models.requests(RequestQuery(service=service), limit=1, cursor="not-a-cursor")

    # ---------------------------------------------------------------- replay

    def test_rebuild_equals_incremental(self, store: Store) -> None:
        service = unique_service()
        rng = random.Random(11)
        calls = []
        for i in range(120):
            at = T0 + timedelta(seconds=rng.randrange(0, 3 * 3600))
            kind = rng.random()
            if kind < 0.1:
                calls.append(a_call(service, at, error=rng.choice(["timeout", "reset"]), latency_ms=900))
            else:
                calls.append(
                    a_call(
                        service,
                        at,
                        status=rng.choice([200, 200, 200, 503]),
                        latency_ms=rng.uniform(1, 300),
                        path=f"/items/{i}" if i % 2 else "/health",
                    )
                )
        # In time order but shuffled within windows of a few minutes:
        # outcomes before their requests, late events, batches across buckets.
        events = sorted(flat(calls), key=lambda event: event.timestamp)
        for start in range(0, len(events), 30):
            nearby = events[start : start + 30]
            rng.shuffle(nearby)
            events[start : start + 30] = nearby
        for start in range(0, len(events), 37):
            store.append(events[start : start + 37])
        models = self.models(store)
        window = (T0 - timedelta(hours=1), T0 + timedelta(hours=5))
        incremental = snapshot(models, service, *window)
        assert set(WALK_STEPS) <= set(models.steps) <= set(STEPS)
        for step in models.steps:
            assert (
                sum(
                    calls
                    for (at, _, op), (calls, _, _) in incremental["buckets"].items()
                    if (at, op) == (step, "*")
                )
                == 120
            )
        replayed = models.rebuild()
        assert replayed >= len(events)
        assert snapshot(models, service, *window) == incremental
        # From 12:00 (the cut of the coarsest step's bucket), inside the calls.
        models.rebuild(since=T0 + timedelta(hours=2, minutes=20))
        assert snapshot(models, service, *window) == incremental

    def test_progress_is_reported_during_a_rebuild(self, store: Store) -> None:
        service = unique_service()
        store.append(flat([a_call(service, T0 + timedelta(seconds=i)) for i in range(10)]))
        seen: list[tuple[int, int | None]] = []
        replayed = self.models(store).rebuild(progress=lambda done, total: seen.append((done, total)))
        assert seen[0][0] == 0
        assert seen[-1][0] == replayed >= 20

    # ---------------------------------------------------------------- races

    def test_two_consumers_racing_on_one_bucket_lose_nothing(self, opener: Opener) -> None:
        service = unique_service()
        calls = [
            a_call(service, T0 + timedelta(milliseconds=i * 50), status=500 if i % 4 == 0 else 200)
            for i in range(400)
        ]
        events = flat(calls)
        # Both consumers get every event (at-least-once), in different orders
        # and batch sizes: every event must count once.
        reordered = events[:]
        random.Random(5).shuffle(reordered)
        context = multiprocessing.get_context("spawn")
        children = [
            context.Process(target=_append_in_child, args=(opener, msgspec.json.encode(batch), size))
            for batch, size in ((events, 25), (reordered, 40))
        ]
        for child in children:
            child.start()
        for child in children:
            child.join(120)
            assert child.exitcode == 0
        with _opened(opener) as store:
            models = self.models(store)
            rollup = totals(models, service, T0, T0 + timedelta(minutes=5))
            assert (rollup.calls, rollup.errors) == (400, 100)
            assert sum(by_operation(models, service, T0, T0 + timedelta(minutes=5)).values()) == 400
            found = all_requests(models, RequestQuery(service=service), limit=500)
            assert len(found) == 400
            assert {summary.status for summary in found} == {"ok", "error"}


@contextmanager
def _opened(opener: Opener) -> Iterator[Store]:
    store = opener()
    try:
        yield store
    finally:
        store.close()
