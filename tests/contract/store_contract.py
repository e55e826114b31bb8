"""The store port's contract: every adapter passes these tests unchanged,
with no capability flags: a rule that one backend cannot keep is not a rule
of the contract (it is tested with that backend alone).

An adapter's test module subclasses :class:`StoreContract` and provides the
``store`` fixture. Tests use fresh request ids, types and sources, so they
also pass on a shared table (real AWS) that holds other events.

An event's key is its request id, timestamp and id. On that key the contract
demands of every backend: the same event again is a ``DUPLICATE``; another
event (other content, or other JSON types) is a ``CONFLICT`` and changes
nothing stored. Events are compared by :func:`eventtrail.store.canonical`,
since ``==`` on Python values takes ``1``, ``1.0`` and ``True`` for equal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventtrail.event import Event
from eventtrail.ids import uuid7_str
from eventtrail.store import AppendStatus, InvalidCursor, Store, canonical, format_moment

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


def same_key(event: Event, data: dict[str, Any]) -> Event:
    """Another event on ``event``'s key, holding ``data``."""
    return msgspec.structs.replace(event, data=data)


def canonical_flow(store: Store, request_id: str) -> list[bytes]:
    return [canonical(event) for event in store.flow(request_id)]


#: Pairs of ``data`` that are different events on one key: types count
#: (1, 1.0, true and "1" all differ), at any depth; key order does not.
CONFLICTING_DATA: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"v": 1}, {"v": 1.0}),
    ({"v": 1}, {"v": True}),
    ({"v": 1.0}, {"v": True}),
    ({"v": 1}, {"v": "1"}),
    ({"v": 0}, {"v": False}),
    ({"v": 0}, {"v": None}),
    ({"v": 3.0}, {"v": 3}),
    ({"v": ""}, {"v": None}),
    ({"v": None}, {}),
    ({"v": [1, 2]}, {"v": [1, 2.0]}),
    ({"v": [1, 2]}, {"v": [2, 1]}),
    ({"v": {"w": {"x": [True]}}}, {"v": {"w": {"x": [1]}}}),
    ({"v": {"w": 1}}, {"v": {"w": 1, "x": None}}),
    ({"a": 1, "b": 2}, {"a": 2, "b": 1}),
    ({"big": 2**53 + 1}, {"big": float(2**53 + 1)}),
]

#: Contents that events on one key may carry: equal in Python (``==``), all
#: different events but for the two that differ only in key order.
DATA_VARIANTS: list[dict[str, Any]] = [
    {"v": 1, "w": [1]},
    {"w": [1], "v": 1},
    {"v": 1.0, "w": [1]},
    {"v": True, "w": [1]},
    {"v": 1, "w": [1.0]},
    {"v": 1, "w": [True]},
]

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**37), max_value=10**37)
    # DynamoDB numbers: magnitude 1e-130 to 1e126 (other numbers are REJECTED there).
    | st.floats(min_value=-1e125, max_value=1e125, allow_nan=False).filter(
        lambda number: number == 0 or abs(number) >= 1e-130
    )
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
)
_keys = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=6)
json_data = st.dictionaries(
    _keys,
    st.recursive(
        _json_scalars,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
)


class StoreContract:
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
        assert store.append([event])[0].status is AppendStatus.DUPLICATE
        assert store.flow(event.request_id) == [event]

    def test_a_duplicate_inside_one_batch_is_stored_once(self, store: Store) -> None:
        event = make_event()
        statuses = [r.status for r in store.append([event, event])]
        assert statuses == [AppendStatus.STORED, AppendStatus.DUPLICATE]
        assert store.flow(event.request_id) == [event]

    def test_the_same_data_in_another_key_order_is_a_duplicate(self, store: Store) -> None:
        event = make_event(data={"a": 1, "b": {"c": True, "d": [1.5, None]}})
        reordered = same_key(event, {"b": {"d": [1.5, None], "c": True}, "a": 1})
        assert store.append([event])[0].status is AppendStatus.STORED
        assert store.append([reordered])[0].status is AppendStatus.DUPLICATE
        assert store.append([event, reordered])[1].status is AppendStatus.DUPLICATE

    @pytest.mark.parametrize(("stored_data", "other_data"), CONFLICTING_DATA)
    def test_another_event_on_a_stored_key_is_a_conflict_and_changes_nothing(
        self, store: Store, stored_data: dict[str, Any], other_data: dict[str, Any]
    ) -> None:
        original = make_event(data=stored_data)
        impostor = same_key(original, other_data)
        assert store.append([original])[0].status is AppendStatus.STORED
        (result,) = store.append([impostor])
        assert result.status is AppendStatus.CONFLICT
        assert result.reason and original.id in result.reason
        # Compared canonically: `==` would take 1.0 for 1.
        assert canonical_flow(store, original.request_id) == [canonical(original)]
        # The stored event is still a duplicate of itself afterwards.
        assert store.append([original])[0].status is AppendStatus.DUPLICATE

    @pytest.mark.parametrize(("first_data", "second_data"), CONFLICTING_DATA)
    def test_two_events_on_one_key_in_one_batch_keep_the_first(
        self, store: Store, first_data: dict[str, Any], second_data: dict[str, Any]
    ) -> None:
        first = make_event(data=first_data)
        second = same_key(first, second_data)
        statuses = [r.status for r in store.append([first, second, first])]
        assert statuses == [AppendStatus.STORED, AppendStatus.CONFLICT, AppendStatus.DUPLICATE]
        assert canonical_flow(store, first.request_id) == [canonical(first)]

    def test_a_batch_mixing_new_redelivered_and_conflicting_events(self, store: Store) -> None:
        stored = make_event(data={"n": 1})
        store.append([stored])
        fresh = [make_event(request_id=stored.request_id, data={"n": n}) for n in range(30)]
        batch = [*fresh[:15], same_key(stored, {"n": 1.0}), stored, *fresh[15:]]
        statuses = [r.status for r in store.append(batch)]
        assert (
            statuses
            == [AppendStatus.STORED] * 15
            + [AppendStatus.CONFLICT, AppendStatus.DUPLICATE]
            + [AppendStatus.STORED] * 15
        )
        expected = sorted([stored, *fresh], key=lambda e: (e.timestamp, e.id))
        assert canonical_flow(store, stored.request_id) == [canonical(e) for e in expected]

    @settings(
        max_examples=30,
        deadline=None,
        # One contract, run by one test class per backend.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.differing_executors,
        ],
    )
    @given(data=json_data, other=json_data)
    def test_any_event_reads_back_canonically_equal_and_only_itself_is_a_duplicate(
        self, store: Store, data: dict[str, Any], other: dict[str, Any]
    ) -> None:
        event = make_event(data=data)
        impostor = same_key(event, other)
        assert store.append([event])[0].status is AppendStatus.STORED
        assert canonical_flow(store, event.request_id) == [canonical(event)]
        expected = (
            AppendStatus.DUPLICATE if canonical(impostor) == canonical(event) else AppendStatus.CONFLICT
        )
        assert store.append([impostor])[0].status is expected
        assert store.append([event])[0].status is AppendStatus.DUPLICATE
        assert canonical_flow(store, event.request_id) == [canonical(event)]

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.differing_executors,
        ],
    )
    @given(
        batches=st.lists(
            st.lists(
                st.tuples(st.integers(0, 2), st.sampled_from(range(len(DATA_VARIANTS)))),
                min_size=1,
                max_size=8,
            ),
            min_size=1,
            max_size=4,
        )
    )
    def test_batches_of_redeliveries_and_conflicts_keep_the_first_event_of_each_key(
        self, store: Store, batches: list[list[tuple[int, int]]]
    ) -> None:
        # A model of the table: the first event written on each key, in the
        # order of the batches and of the events in each batch, stays.
        request_id = uuid7_str()
        keys = [make_event(request_id=request_id, at=T0 + timedelta(seconds=n)) for n in range(3)]
        held: dict[int, Event] = {}
        for batch in batches:
            events = [same_key(keys[key], DATA_VARIANTS[variant]) for key, variant in batch]
            expected = []
            for (key, _), event in zip(batch, events, strict=True):
                if key not in held:
                    held[key] = event
                    expected.append(AppendStatus.STORED)
                elif canonical(held[key]) == canonical(event):
                    expected.append(AppendStatus.DUPLICATE)
                else:
                    expected.append(AppendStatus.CONFLICT)
            assert [r.status for r in store.append(events)] == expected
        assert canonical_flow(store, request_id) == [canonical(held[key]) for key in sorted(held)]

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
        assert canonical(back) == canonical(event)
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

    def test_purge_never_removes_events_at_or_after_the_cutoff(self, store: Store) -> None:
        # Whether older events go at once (SQLite) or when the backend's own
        # expiry gets to them (DynamoDB's TTL) is the backend's: its own tests.
        cutoff = datetime(2002, 1, 1, tzinfo=UTC)
        request_id = uuid7_str()
        kept = [make_event(request_id=request_id, at=at) for at in (cutoff, datetime.now(UTC))]
        store.append(kept)
        assert store.purge(cutoff) >= 0
        assert store.flow(request_id) == kept

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
