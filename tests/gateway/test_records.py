"""Call records made into events: the same events the ``calls`` helpers
make, with ids that do not change when a batch is made into bodies again."""

from __future__ import annotations

import uuid

from eventtrail.calls import call_response
from eventtrail.event import parse_event
from eventtrail.gateway.records import bodies_of, encoded, error_record, request_record, response_record
from eventtrail.ids import uuid7_str

AT_NS = 1_700_000_000_123_456_789


def test_a_record_becomes_the_event_the_calls_helpers_make() -> None:
    call_id = uuid7_str()
    [body] = bodies_of(
        [response_record(AT_NS, "r1", call_id, "Orders", "Gateway", 503, 12.34567, 10, 20, None)]
    )
    event = parse_event(body)
    expected = call_response(
        "r1",
        call_id,
        "Orders",
        status=503,
        latency_ms=12.34567,
        bytes_in=10,
        bytes_out=20,
        timestamp="2023-11-14T22:13:20.123456Z",
        event_id=event.id,
    )
    assert event == expected


def test_event_ids_are_stable_distinct_per_kind_and_of_the_events_millisecond() -> None:
    call_id = uuid7_str()
    records = [
        request_record(AT_NS, "r1", call_id, "S", "Gateway", "GET", "/", None),
        response_record(AT_NS + 5_000_000, "r1", call_id, "S", "Gateway", 200, 5.0, 0, 2, None),
        error_record(AT_NS + 5_000_000, "r1", call_id, "S", "Gateway", "reset", 5.0, ""),
    ]
    first, again = bodies_of(records), bodies_of(records)
    assert first == again
    ids = [uuid.UUID(parse_event(body).id) for body in first]
    assert len(set(ids)) == 3
    assert all(one.version == 7 for one in ids)
    assert [one.int >> 80 for one in ids] == [1_700_000_000_123, 1_700_000_000_128, 1_700_000_000_128]
    other_call = bodies_of([request_record(AT_NS, "r1", uuid7_str(), "S", "Gateway", "GET", "/", None)])
    assert parse_event(other_call[0]).id != str(ids[0])


def test_any_event_published_as_is_keeps_its_body() -> None:
    event = parse_event(
        bodies_of([request_record(AT_NS, "r", uuid7_str(), "S", "Gateway", "GET", "/", None)])[0]
    )
    assert parse_event(bodies_of([encoded(event)])[0]) == event
