"""The store port's contract: every adapter passes these tests unchanged.

An adapter's test module subclasses :class:`StoreContract` and provides the
``store`` fixture. Tests use fresh request ids, types and sources, so they
also pass on a shared table (real AWS) that holds other events.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from eventtrail.event import Event
from eventtrail.ids import uuid7_str
from eventtrail.store import AppendStatus, InvalidCursor, Store, format_moment

T0 = datetime(2020, 5, 1, 20, 0, 0, tzinfo=UTC)


def make_event(
    *,
    request_id: str | None = None,
    at: datetime = T0,
    type: str = "MICROSERVICE_REQUEST",
    source: str = "Gateway",
    data: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> Event:
    return Event(
        id=event_id or uuid7_str(),
        request_id=request_id or uuid7_str(),
        timestamp=format_moment(at),
        type=type,
        source=source,
        data={"Name": "Microservice A"} if data is None else data,
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid7_str()}"


class StoreContract:
    #: Whether the backend reports a different event reusing an id (SQLite
    #: can, cheaply; DynamoDB keys on the request and time, so it cannot).
    detects_id_conflicts = True
    #: Whether ``purge`` deletes on demand (DynamoDB expires items by TTL).
    purges_on_demand = True
    #: Whether a redelivered event is reported as DUPLICATE rather than STORED
    #: (DynamoDB's BatchWriteItem rewrites the identical item without saying).
    reports_duplicates = True

    @pytest.fixture
    def store(self) -> Store:
        raise NotImplementedError("an adapter's test class provides the store fixture")

    def test_flow_comes_back_in_time_order(self, store: Store) -> None:
        request_id = uuid7_str()
        events = [
            make_event(request_id=request_id, at=T0 + timedelta(milliseconds=ms)) for ms in (30, 0, 20, 10)
        ]
        results = store.append(events)
        assert [r.status for r in results] == [AppendStatus.STORED] * 4
        assert store.flow(request_id) == sorted(events, key=lambda e: e.timestamp)

    def test_unknown_request_has_an_empty_flow(self, store: Store) -> None:
        assert store.flow(uuid7_str()) == []

    def test_appending_nothing_is_fine(self, store: Store) -> None:
        assert store.append([]) == []

    def test_two_events_with_the_same_timestamp_are_both_kept(self, store: Store) -> None:
        request_id = uuid7_str()
        first = make_event(request_id=request_id, data={"Name": "Microservice A"})
        second = make_event(request_id=request_id, data={"Name": "Microservice B"})
        store.append([first])
        store.append([second])
        assert store.flow(request_id) == sorted([first, second], key=lambda e: e.id)

    def test_the_same_event_twice_is_stored_once(self, store: Store) -> None:
        event = make_event()
        assert store.append([event])[0].status is AppendStatus.STORED
        again = store.append([event])[0]
        assert again.ok
        if self.reports_duplicates:
            assert again.status is AppendStatus.DUPLICATE
        assert store.flow(event.request_id) == [event]

    def test_a_duplicate_inside_one_batch_is_stored_once(self, store: Store) -> None:
        event = make_event()
        statuses = [r.status for r in store.append([event, event])]
        assert statuses == [AppendStatus.STORED, AppendStatus.DUPLICATE]
        assert store.flow(event.request_id) == [event]

    def test_an_id_reused_by_another_event_is_a_conflict(self, store: Store) -> None:
        if not self.detects_id_conflicts:
            pytest.skip("this backend cannot see id reuse across requests cheaply")
        original = make_event()
        impostor = make_event(event_id=original.id, data={"Name": "someone else"})
        store.append([original])
        (result,) = store.append([impostor])
        assert result.status is AppendStatus.CONFLICT
        assert result.reason and original.id in result.reason
        assert store.flow(original.request_id) == [original]
        assert store.flow(impostor.request_id) == []

    def test_data_keeps_its_json_types(self, store: Store) -> None:
        data: dict[str, Any] = {
            "Name": "Microservice A",
            "status": 503,
            "latencyMs": 12.5,
            "ratio": 0.1,
            "tiny": 1e-7,
            "big": 2**53 + 1,
            "negative": -42,
            "zero": 0,
            "no": False,
            "yes": True,
            "empty": "",
            "nothing": None,
            "list": [1, "two", None, {"three": [3.0]}],
            "nested": {"a": {"b": {"c": []}}, "d": {}},
            "unicode": "Grüße ✓ 😀",
        }
        event = make_event(data=data)
        store.append([event])
        (back,) = store.flow(event.request_id)
        assert back.data == data
        for key in ("status", "big", "zero", "negative"):
            assert type(back.data[key]) is int, key
        for key in ("latencyMs", "ratio", "tiny"):
            assert type(back.data[key]) is float, key
        assert back.data["no"] is False and back.data["nothing"] is None

    def test_a_large_batch_is_stored_whole(self, store: Store) -> None:
        request_id = uuid7_str()
        events = [make_event(request_id=request_id, at=T0 + timedelta(microseconds=n)) for n in range(120)]
        assert all(r.ok for r in store.append(events))
        assert store.flow(request_id) == events

    def _seed(self, store: Store, *, kind: str, count: int) -> tuple[str, list[Event]]:
        value = unique(kind)
        fields: dict[str, Any] = {"type": value} if kind == "type" else {"source": value}
        events = [make_event(at=T0 + timedelta(seconds=n), **fields) for n in range(count)]
        # Two events share a timestamp: ties must neither be lost nor repeated.
        events.append(make_event(at=T0 + timedelta(seconds=3), **fields))
        store.append(events)
        return value, sorted(events, key=lambda e: (e.timestamp, e.id))

    @pytest.mark.parametrize("kind", ["type", "source"])
    def test_time_range_is_inclusive_then_exclusive(self, store: Store, kind: str) -> None:
        value, events = self._seed(store, kind=kind, count=10)
        query: dict[str, Any] = {kind: value}
        page = store.events(
            **query, since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=5), limit=100
        )
        assert page.events == [
            e
            for e in events
            if format_moment(T0 + timedelta(seconds=2))
            <= e.timestamp
            < format_moment(T0 + timedelta(seconds=5))
        ]
        assert len(page.events) == 4
        assert page.cursor is None

    @pytest.mark.parametrize("kind", ["type", "source"])
    @pytest.mark.parametrize("newest_first", [False, True])
    def test_pages_cover_everything_once(self, store: Store, kind: str, newest_first: bool) -> None:
        value, events = self._seed(store, kind=kind, count=10)
        seen: list[Event] = []
        cursor = None
        pages = 0
        while True:
            query: dict[str, Any] = {kind: value}
            page = store.events(**query, limit=3, cursor=cursor, newest_first=newest_first)
            seen += page.events
            pages += 1
            cursor = page.cursor
            if cursor is None:
                break
        assert seen == (events[::-1] if newest_first else events)
        assert pages == 4

    def test_a_type_does_not_return_other_types(self, store: Store) -> None:
        value, events = self._seed(store, kind="type", count=2)
        other, _ = self._seed(store, kind="type", count=2)
        assert store.events(type=value).events == events
        assert store.events(type=other).events != events

    def test_bad_cursors_are_rejected(self, store: Store) -> None:
        value, _ = self._seed(store, kind="type", count=5)
        cursor = store.events(type=value, limit=2).cursor
        assert cursor
        with pytest.raises(InvalidCursor):
            store.events(type=value, limit=2, cursor="not-a-cursor")
        with pytest.raises(InvalidCursor):
            store.events(source=value, limit=2, cursor=cursor)
        with pytest.raises(InvalidCursor):
            store.events(type=value, limit=2, cursor=cursor, newest_first=True)

    def test_query_needs_exactly_one_of_type_and_source(self, store: Store) -> None:
        with pytest.raises(ValueError):
            store.events()
        with pytest.raises(ValueError):
            store.events(type="a", source="b")
        with pytest.raises(ValueError):
            store.events(type="a", limit=0)

    def test_purge_removes_events_older_than_the_cutoff(self, store: Store) -> None:
        if not self.purges_on_demand:
            pytest.skip("this backend expires events by itself (TTL)")
        request_id = uuid7_str()
        old = make_event(request_id=request_id, at=datetime(2001, 1, 1, tzinfo=UTC))
        new = make_event(request_id=request_id, at=datetime.now(UTC))
        store.append([old, new])
        assert store.purge(datetime(2002, 1, 1, tzinfo=UTC)) >= 1
        assert store.flow(request_id) == [new]

    def test_event_fields_reads_the_keys_of_a_type_in_a_time_range(self, store: Store) -> None:
        value = unique("type")
        datas: list[dict[str, Any]] = [
            {"Name": "Microservice A", "status": 200, "latencyMs": 12.5},
            {"Name": "Microservice B", "status": 503},
            {"Name": "Microservice B", "latencyMs": 7, "nested": {"status": 1}},
            {"status": True, "latencyMs": None, "Name": ["not", "a", "name"]},
        ]
        events = [
            make_event(at=T0 + timedelta(seconds=n), type=value, source=f"Source {n}", data=data)
            for n, data in enumerate(datas, start=1)
        ]
        outside = [
            make_event(at=T0, type=value),
            make_event(at=T0 + timedelta(seconds=5), type=value),
            make_event(at=T0 + timedelta(seconds=2), type=unique("other")),
        ]
        store.append(events + outside)
        rows = store.event_fields(
            value,
            ("Name", "status", "latencyMs"),
            since=T0 + timedelta(seconds=1),
            until=T0 + timedelta(seconds=5),
        )
        assert rows == [
            (e.timestamp, e.source, e.data.get("Name"), e.data.get("status"), e.data.get("latencyMs"))
            for e in events
        ]
        assert store.event_fields(value, (), since=T0, until=T0 + timedelta(seconds=1)) == [
            (outside[0].timestamp, outside[0].source)
        ]
