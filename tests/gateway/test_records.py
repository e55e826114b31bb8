"""Call records made into events: the same events the ``calls`` helpers
make, with ids that do not change when a batch is made into bodies again."""

from __future__ import annotations

import uuid

import msgspec

from eventtrail.calls import call_response
from eventtrail.event import parse_event
from eventtrail.gateway.records import (
    bodies_of,
    call_id_of,
    encoded,
    error_record,
    new_call,
    request_record,
    response_record,
)

AT_NS = 1_700_000_000_123_456_789


def test_a_record_becomes_the_event_the_calls_helpers_make() -> None:
    call = new_call(AT_NS)
    call_id = call_id_of(call)
    [body] = bodies_of([response_record(AT_NS, "r1", call, "Orders", "Gateway", 503, 12.34567, 10, 20, None)])
    event = parse_event(body)
    made = call_response(
        "r1",
        call_id,
        "Orders",
        status=503,
        latency_ms=12.34567,
        bytes_in=10,
        bytes_out=20,
        timestamp="2023-11-14T22:13:20.123456Z",
    )
    expected = msgspec.structs.replace(made, id=event.id)  # only the id is the record's own
    assert event == expected


def test_event_ids_are_stable_distinct_per_kind_and_ordered_by_their_call() -> None:
    call = new_call(AT_NS)
    call_id = call_id_of(call)
    records = [
        request_record(AT_NS, "r1", call, "S", "Gateway", "GET", "/", None),
        response_record(AT_NS + 5_000_000, "r1", call, "S", "Gateway", 200, 5.0, 0, 2, None),
        error_record(AT_NS + 5_000_000, "r1", call, "S", "Gateway", "reset", 5.0, ""),
    ]
    first, again = bodies_of(records), bodies_of(records)
    assert first == again
    ids = [parse_event(body).id for body in first]
    assert len({call_id, *ids}) == 4
    assert all(uuid.UUID(one).version == 7 and one[:-1] == call_id[:-1] for one in ids)
    later = parse_event(
        bodies_of([request_record(AT_NS, "r1", new_call(AT_NS), "S", "Gateway", "GET", "/", None)])[0]
    )
    assert later.id > max(ids)


def test_any_event_published_as_is_keeps_its_body() -> None:
    event = parse_event(
        bodies_of([request_record(AT_NS, "r", new_call(AT_NS), "S", "Gateway", "GET", "/", None)])[0]
    )
    assert parse_event(bodies_of([encoded(event)])[0]) == event


def test_a_call_id_is_a_uuid7_of_the_calls_millisecond_unique_to_the_call() -> None:
    ids = [call_id_of(new_call(AT_NS)) for _ in range(1000)]
    assert len(set(ids)) == 1000
    parsed = [uuid.UUID(one) for one in ids]
    assert all(one.version == 7 and one.variant == uuid.RFC_4122 for one in parsed)
    assert {one.int >> 80 for one in parsed} == {AT_NS // 1_000_000}


def test_the_events_of_consecutive_calls_never_share_an_id() -> None:
    records = []
    for _ in range(500):
        call = new_call(AT_NS)
        records.append(request_record(AT_NS, "r", call, "S", "Gateway", "GET", "/", None))
        records.append(response_record(AT_NS, "r", call, "S", "Gateway", 200, 1.0, 0, 0, None))
        records.append(error_record(AT_NS, "r", call, "S", "Gateway", "reset", 1.0, ""))
    assert len({parse_event(body).id for body in bodies_of(records)}) == 1500
