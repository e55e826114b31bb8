"""Service health on constructed event sets, in a real SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventtrail.calls import call_error, call_request, call_response
from eventtrail.demo import SERVICE_A, SERVICE_B, demo_flows
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import Event
from eventtrail.health import HealthThresholds, service_health, service_health_since
from eventtrail.ids import uuid7_str
from eventtrail.store import Store, format_moment
from tests.cli import run

UNTIL = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "events.db") as store:
        yield store


def calls(
    service: str,
    latencies: Sequence[float],
    *,
    start: datetime,
    failures: Sequence[str] = (),
    source: str = "Gateway",
) -> list[Event]:
    """One call per latency, a second apart from ``start``; the first calls
    fail with ``failures`` (``"500"``-style statuses or error kinds)."""
    events: list[Event] = []
    for index, latency in enumerate(latencies):
        at = start + timedelta(seconds=index)
        request_id, call_id = uuid7_str(), uuid7_str()
        ended = format_moment(at + timedelta(milliseconds=latency))
        events.append(
            call_request(request_id, call_id, service, "GET", "/", source=source, timestamp=format_moment(at))
        )
        failure = failures[index] if index < len(failures) else None
        if failure is not None and not failure.isdigit():
            events.append(
                call_error(
                    request_id,
                    call_id,
                    service,
                    error=failure,
                    elapsed_ms=latency,
                    source=source,
                    timestamp=ended,
                )
            )
        else:
            status = int(failure) if failure else 200
            events.append(
                call_response(
                    request_id,
                    call_id,
                    service,
                    status=status,
                    latency_ms=latency,
                    bytes_in=0,
                    bytes_out=10,
                    source=source,
                    timestamp=ended,
                )
            )
    return events


CURRENT = UNTIL - WINDOW + timedelta(seconds=5)
BASELINE = UNTIL - 2 * WINDOW + timedelta(seconds=5)


def test_the_service_failing_too_often_is_named_with_its_failures(store: Store) -> None:
    store.append(calls("A", [20.0] * 100, start=CURRENT, failures=["500"]))
    store.append(
        calls(
            "B",
            [30.0] * 100,
            start=CURRENT,
            failures=["500"] * 10 + ["503"] * 4 + ["timeout"] * 4 + ["refused"] * 2,
        )
    )
    report = service_health(store, WINDOW, until=UNTIL)
    assert report.faulty == ["B"]
    a, b = report.services
    assert (a.service, a.status, a.calls, a.errors) == ("A", "ok", 100, 1)
    assert (b.service, b.status, b.calls, b.errors) == ("B", "faulty", 100, 20)
    assert b.error_rate == pytest.approx(0.2)
    assert b.failures == {"5xx": 14, "timeout": 4, "refused": 2, "reset": 0, "error": 0}
    assert "20.0% of 100 calls failed" in b.reasons[0]
    assert "14 5xx, 4 timeouts, 2 refused" in b.reasons[0]
    assert report.verdict.startswith("B is faulty: 20.0% of 100 calls failed")


def test_the_service_much_slower_than_its_baseline_is_named(store: Store) -> None:
    for service, before, now in (("A", 40.0, 45.0), ("B", 100.0, 900.0)):
        store.append(calls(service, [before] * 50, start=BASELINE))
        store.append(calls(service, [now] * 50, start=CURRENT))
    report = service_health(store, WINDOW, until=UNTIL)
    assert report.faulty == ["B"]
    b = report.services[1]
    assert (b.p95_ms, b.baseline_p95_ms, b.baseline_calls, b.errors) == (900.0, 100.0, 50, 0)
    assert b.reasons == ["p95 latency 900 ms is 9.0x its baseline of 100 ms (the 15 min before)"]
    assert report.services[0].status == "ok"


def test_a_healthy_set_names_no_service(store: Store) -> None:
    for service in ("A", "B"):
        store.append(calls(service, [50.0] * 60, start=BASELINE))
        store.append(calls(service, [55.0] * 60, start=CURRENT, failures=["500"]))
    report = service_health(store, WINDOW, until=UNTIL)
    assert report.faulty == []
    assert [s.status for s in report.services] == ["ok", "ok"]
    assert report.verdict == "no faulty service (2 healthy)"


def test_small_samples_get_no_verdict(store: Store) -> None:
    store.append(calls("A", [20.0] * 40, start=CURRENT))
    store.append(calls("B", [5000.0] * 5, start=CURRENT, failures=["timeout"] * 5))
    report = service_health(store, WINDOW, until=UNTIL)
    assert report.faulty == []
    assert report.services[1].status == "too few calls"
    assert report.services[1].error_rate == 1.0
    assert report.verdict == "no faulty service (1 healthy, 1 with too few calls)"
    only_b = service_health(store, WINDOW, until=UNTIL, thresholds=HealthThresholds(min_calls=41))
    assert only_b.verdict == "too few calls for a verdict"


def test_latency_needs_a_big_enough_baseline_and_increase(store: Store) -> None:
    store.append(calls("tiny", [2.0] * 30, start=BASELINE))
    store.append(calls("tiny", [8.0] * 30, start=CURRENT))  # 4x, but only 6 ms more
    store.append(calls("new", [900.0] * 30, start=CURRENT))  # no baseline at all
    store.append(calls("thin", [100.0] * 5, start=BASELINE))  # baseline too small
    store.append(calls("thin", [900.0] * 30, start=CURRENT))
    report = service_health(store, WINDOW, until=UNTIL)
    assert report.faulty == []
    assert {s.service: s.baseline_calls for s in report.services} == {"new": 0, "thin": 5, "tiny": 30}


def test_thresholds_are_configurable(store: Store) -> None:
    store.append(calls("B", [10.0] * 50, start=CURRENT, failures=["502"] * 5))  # 10%
    assert service_health(store, WINDOW, until=UNTIL).faulty == ["B"]
    lenient = HealthThresholds(max_error_rate=0.15)
    assert service_health(store, WINDOW, until=UNTIL, thresholds=lenient).faulty == []
    with pytest.raises(ValueError, match="between 0 and 1"):
        HealthThresholds(max_error_rate=5)
    with pytest.raises(ValueError, match="greater than 1"):
        HealthThresholds(latency_factor=0.5)
    with pytest.raises(ValueError, match="at least 1"):
        HealthThresholds(min_calls=0)


def test_percentiles_and_window_bounds(store: Store) -> None:
    store.append(calls("A", [float(n) for n in range(1, 101)], start=CURRENT))
    # Just outside the window on both sides: not counted.
    store.append(calls("A", [1.0], start=UNTIL))
    store.append(calls("A", [1.0], start=UNTIL - WINDOW - timedelta(seconds=1)))
    report = service_health(store, WINDOW, until=UNTIL)
    a = report.services[0]
    assert a.calls == 100
    # Percentiles come from merged latency sketches: within 1% of the exact ones.
    assert [a.p50_ms, a.p95_ms, a.p99_ms] == pytest.approx([50.0, 95.0, 99.0], rel=0.01)
    assert a.baseline_calls == 1
    assert report.window_seconds == 900.0
    assert report.until == format_moment(UNTIL)


def test_health_since_a_moment_counts_every_call_from_it_across_a_minute_boundary(store: Store) -> None:
    # A run that starts 5 s before a minute and ends 5 s after it: a window
    # of its length counted back from the rounded-up end would miss the first
    # five seconds; counted from the start it misses nothing.
    started = UNTIL - timedelta(seconds=5)
    store.append(calls("B", [10.0] * 10, start=started, failures=["500"] * 5))
    store.append(calls("B", [10.0], start=started - timedelta(minutes=1)))  # the baseline
    ended = UNTIL + timedelta(seconds=5)
    report = service_health_since(store, started, until=ended)
    assert (report.since, report.until) == (
        format_moment(UNTIL - timedelta(minutes=1)),
        format_moment(UNTIL + timedelta(minutes=1)),
    )
    b = report.services[0]
    assert (b.calls, b.errors, b.baseline_calls) == (10, 5, 1)
    assert service_health(store, ended - started, until=ended).services[0].calls == 5
    with pytest.raises(ValueError, match="before"):
        service_health_since(store, ended + timedelta(minutes=2), until=ended)


def test_edges_count_calls_per_caller(store: Store) -> None:
    store.append(calls("A", [10.0] * 30, start=CURRENT, failures=["reset"] * 3))
    store.append(calls("A", [10.0] * 5, start=CURRENT, source="Batch job"))
    edges = {(e.source, e.service): (e.calls, e.errors) for e in service_health(store, until=UNTIL).edges}
    assert edges == {("Batch job", "A"): (5, 0), ("Gateway", "A"): (30, 3)}


@pytest.mark.slow  # 2,000 appends, each a transaction with its projections
def test_demo_traffic_names_service_b(store: Store) -> None:
    start = UNTIL - timedelta(minutes=14)
    for flow in demo_flows(2000, start=start, seed=7, spacing_ms=300):
        store.append(flow)
    report = service_health(store, WINDOW, until=UNTIL)
    assert report.faulty == [SERVICE_B]
    assert {s.service: s.status for s in report.services} == {SERVICE_A: "ok", SERVICE_B: "faulty"}
    assert SERVICE_B in report.verdict and "calls failed" in report.verdict


def test_the_port_default_reads_the_same_fields_as_the_sqlite_path(store: SQLiteStore) -> None:
    events = [e for flow in demo_flows(600, start=CURRENT, seed=3, spacing_ms=100) for e in flow]
    store.append(events)
    keys = ("Name", "status", "latencyMs", "missing")
    since, until = CURRENT, CURRENT + timedelta(minutes=5)
    fast = store.event_fields("MICROSERVICE_RESPONSE", keys, since=since, until=until)
    paged = Store.event_fields(store, "MICROSERVICE_RESPONSE", keys, since=since, until=until)
    assert len(fast) > 1000  # more than one page of the default implementation
    assert fast == paged


def test_cli_prints_the_table_and_json(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "events.db") as store:
        store.append(calls("B", [10.0] * 30, start=CURRENT, failures=["500"] * 9))
    until = UNTIL.isoformat()
    table = run(tmp_path, "health", "--until", until)
    assert table.returncode == 0, table.stderr
    assert "faulty" in table.stdout and "30.0% of 30 calls failed" in table.stdout
    as_json = run(tmp_path, "health", "--until", until, "--json", "--max-error-rate", "0.5")
    report = json.loads(as_json.stdout)
    assert report["faulty"] == [] and report["services"][0]["errorRate"] == 0.3
    bad = run(tmp_path, "health", "--window", "soon")
    assert bad.returncode == 2 and "'soon' is not a duration" in bad.stderr


def test_a_faulty_service_says_since_when_it_has_been_faulty(store: Store) -> None:
    until = UNTIL
    turned = until - timedelta(minutes=23, seconds=30)
    # Healthy for hours, then a fifth of the calls fail from `turned` on.
    for minute in range(6 * 60, 24, -1):
        store.append(calls("B", [20.0] * 10, start=until - timedelta(minutes=minute)))
    for minute in range(24):
        start = turned + timedelta(minutes=minute)
        store.append(calls("B", [20.0] * 50, start=start, failures=["500", "timeout"] * 5))
    for window in (timedelta(minutes=30), timedelta(hours=5)):
        report = service_health(store, window, until=until)
        [b] = report.services
        assert b.status == "faulty"
        # The first minute in which the rule held.
        assert b.faulty_since == format_moment(turned.replace(second=0))
        assert report.verdict.endswith(f"since {turned:%Y-%m-%d %H:%M} UTC")
    healthy = service_health(store, timedelta(minutes=30), until=turned - timedelta(minutes=1))
    assert healthy.services[0].faulty_since is None and healthy.faulty == []


def test_a_service_turned_slow_says_since_when_from_its_latencies(store: Store) -> None:
    """The walk back judges a bucket on its latencies when its calls did not
    fail often enough: minutes that fail and minutes that are slow both
    extend the run."""
    until = UNTIL
    turned = until - timedelta(hours=2, minutes=10, seconds=30)
    for minute in range(8 * 60, 131, -1):
        store.append(calls("B", [20.0] * 10, start=until - timedelta(minutes=minute)))
    for minute in range(131):
        start = turned + timedelta(minutes=minute)
        if minute % 3:
            store.append(calls("B", [900.0] * 20, start=start))  # slow, no failure
        else:
            store.append(calls("B", [20.0] * 20, start=start, failures=["500"] * 5))  # fast, failing
    # 5 hours: whole hour rows, the run starting inside the hour of `turned`.
    for window in (timedelta(hours=3), timedelta(hours=5)):
        report = service_health(store, window, until=until)
        [b] = report.services
        assert b.status == "faulty", report.verdict
        assert b.faulty_since == format_moment(turned.replace(second=0))


def test_a_run_that_starts_inside_a_six_hour_bucket_is_found_to_its_minute(store: Store) -> None:
    turned = datetime(2024, 2, 29, 19, 25, 30, tzinfo=UTC)
    # Ten calls every five minutes for 30 hours; half of them fail from `turned` on.
    slot = UNTIL - timedelta(hours=30) + timedelta(seconds=30)
    while slot < UNTIL + timedelta(minutes=13):
        failures = ["500"] * 5 if slot >= turned else []
        store.append(calls("B", [20.0] * 10, start=slot, failures=failures))
        slot += timedelta(minutes=5)
    # The 6-hour bucket of 18:00, its hour of 19:00, then that hour's minutes.
    for window, until in ((timedelta(hours=24), UNTIL), (timedelta(hours=26), UNTIL + timedelta(minutes=13))):
        report = service_health(store, window, until=until)
        [b] = report.services
        assert b.status == "faulty", report.verdict
        assert b.faulty_since == format_moment(turned.replace(second=0))


def test_a_long_window_reads_coarse_buckets_not_minutes(store: SQLiteStore) -> None:
    start = UNTIL - timedelta(hours=20)
    for hour in range(20):
        store.append(calls("A", [10.0 + hour] * 30, start=start + timedelta(hours=hour, minutes=7)))
    models = store.read_models
    rows = models.covering(UNTIL - timedelta(hours=20, minutes=30), UNTIL, service="A")
    steps = sorted({key.step for key, _ in rows})
    # 15:30 to 12:00 the next day: 30 minutes (no calls), the hours of 16:00
    # and 17:00, then three 6-hour buckets.
    assert steps == ["1h", "6h"]
    assert len(rows) == 2 + 3
    report = service_health(store, timedelta(hours=20, minutes=30), until=UNTIL)
    assert report.services[0].calls == 600
    assert report.services[0].p50_ms == pytest.approx(19.0, rel=0.01)


def test_calls_their_clients_abandoned_are_counted_apart_from_failures(store: Store) -> None:
    # A third of B's clients give up on slow calls: no failure of B's, but
    # shown, and their waits are among its latencies.
    store.append(calls("B", [900.0] * 10 + [20.0] * 20, start=CURRENT, failures=["disconnected"] * 10))
    [b] = service_health(store, until=UNTIL).services
    assert (b.calls, b.errors, b.abandoned, b.status) == (30, 0, 10, "ok")
    assert b.failures == {"5xx": 0, "timeout": 0, "refused": 0, "reset": 0, "error": 0}
    assert b.p99_ms is not None and b.p99_ms > 800
    assert isinstance(store, SQLiteStore)
    table = run(store.path.parent, "health", "--until", UNTIL.isoformat(), env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "ABANDONED" in table.stdout
    [row] = [line.split() for line in table.stdout.splitlines() if line.startswith("B ")]
    assert row[:6] == ["B", "ok", "30", "0", "0.0%", "10"]  # service, status, calls, errors, rate, abandoned
