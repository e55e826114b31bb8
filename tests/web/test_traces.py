"""Request summaries and waterfalls from constructed flows, in a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventtrail.calls import call_error, call_request, call_response
from eventtrail.demo import demo_flows
from eventtrail.embedded.store import SQLiteStore
from eventtrail.store import format_moment
from eventtrail.web.traces import find_requests, flow_view, summarise

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(ms: float) -> str:
    return format_moment(T0 + timedelta(milliseconds=ms))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "events.db") as store:
        yield store


def test_calls_pair_requests_with_their_response_or_error(store: SQLiteStore) -> None:
    store.append(
        [
            call_request("r1", "c1", "A", "GET", "/a", timestamp=at(0)),
            call_request("r1", "c2", "B", "PUT", "/b", timestamp=at(1)),
            call_response(
                "r1", "c1", "A", status=200, latency_ms=20, bytes_in=0, bytes_out=5, timestamp=at(20)
            ),
            call_error("r1", "c2", "B", error="timeout", elapsed_ms=99, timestamp=at(100)),
            call_request("r1", "c3", "A", "GET", "/late", timestamp=at(120)),
        ]
    )
    view = flow_view(store, "r1")
    assert view is not None
    shape = [(c.call_id, c.offset_ms, c.duration_ms, c.status, c.error, c.outcome) for c in view.calls]
    assert shape == [
        ("c1", 0.0, 20.0, 200, None, "ok"),
        ("c2", 1.0, 99.0, None, "timeout", "failed"),
        ("c3", 120.0, None, None, None, "pending"),
    ]
    summary = view.summary
    assert (summary.status, summary.calls, summary.errors, summary.duration_ms) == ("error", 3, 1, 120.0)
    assert summary.services == ["A", "B"]
    assert flow_view(store, "unknown") is None


def test_a_pending_call_makes_a_pending_request(store: SQLiteStore) -> None:
    store.append([call_request("r2", "c1", "A", "GET", "/", timestamp=at(0))])
    view = flow_view(store, "r2")
    assert view is not None and view.summary.status == "pending"


def test_a_call_its_client_gave_up_on_is_abandoned_not_failed(store: SQLiteStore) -> None:
    store.append(
        [
            call_request("r3", "c1", "A", "GET", "/slow", timestamp=at(0)),
            call_error("r3", "c1", "A", error="disconnected", elapsed_ms=400, timestamp=at(400)),
        ]
    )
    view = flow_view(store, "r3")
    assert view is not None
    [call] = view.calls
    assert (call.error, call.outcome, call.duration_ms) == ("disconnected", "abandoned", 400.0)
    assert (view.summary.status, view.summary.errors) == ("ok", 0)


def test_the_request_search_finds_every_match_a_page_at_a_time(store: SQLiteStore) -> None:
    flows = list(demo_flows(120, start=T0, seed=5, spacing_ms=100))
    for flow in flows:
        store.append(flow)
    everything = find_requests(store, limit=500)
    assert len(everything.requests) == 120 and everything.cursor is None
    assert find_requests(store, limit=10, service="nobody").requests == []
    # A request is in the range when its first call starts in it.
    expected = {flow[0].request_id for flow in flows if at(2000) <= min(e.timestamp for e in flow) < at(4000)}
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        page = find_requests(
            store, limit=3, since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=4), cursor=cursor
        )
        seen += [row.request_id for row in page.requests]
        cursor = page.cursor
        if cursor is None:
            break
    assert expected and seen and set(seen) == expected and len(seen) == len(expected)
    for flow in flows[:20]:
        summary = summarise(flow)
        [found] = [row for row in everything.requests if row.request_id == summary.request_id]
        assert found == summary  # the projection agrees with the flow read whole
