"""Call records made into events: the same events the ``calls`` helpers
make, with ids that do not change when a batch is made into bodies again."""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventtrail.calls import call_response
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.event import parse_event
from eventtrail.gateway.records import (
    bodies_of,
    body_size,
    call_id_of,
    encoded,
    error_record,
    new_call,
    pack,
    request_record,
    response_record,
    send_bodies,
    unpack,
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


def test_packed_records_come_back_the_same() -> None:
    call = new_call(AT_NS)
    records = [
        request_record(AT_NS, "r1", call, "Orders", "Gateway", "GET", "/x", {"query": "a=1"}),
        response_record(AT_NS, "r1", call, "Orders", "Gateway", 200, 1.5, 0, 2, None),
        encoded(call_response("r2", "c", "S", status=204, latency_ms=1.0, bytes_in=0, bytes_out=0)),
    ]
    assert unpack(pack(records)) == records
    assert bodies_of(unpack(pack(records))) == bodies_of(records)


def test_a_pack_that_names_code_is_refused_without_running_it() -> None:
    hostile = pickle.dumps([(os.system, ("true",))])
    with pytest.raises(ValueError, match=r"names posix\.system"):
        unpack(hostile)


@given(st.binary(max_size=200))
def test_any_bytes_unpack_to_records_or_a_value_error(data: bytes) -> None:
    try:
        records = unpack(data)
    except ValueError:
        return
    assert isinstance(records, list) and all(isinstance(record, tuple) for record in records)


def test_bodies_too_large_are_refused_by_id_and_the_rest_are_sent(tmp_path: Path) -> None:
    small = bodies_of(
        [encoded(call_response("s", "c", "S", status=200, latency_ms=1, bytes_in=0, bytes_out=0))]
    )
    big_event = call_response("b", "c", "S", status=200, latency_ms=1, bytes_in=0, bytes_out=0)
    big_event = msgspec.structs.replace(big_event, data={**(big_event.data or {}), "pad": "é" * 600})
    big = bodies_of([encoded(big_event)])
    with SQLiteQueue(tmp_path / "queue.db") as queue:
        refused = send_bodies(queue, [*big, *small], max_body_bytes=1000)
        assert refused == [(big_event.id, body_size(big[0]))]
        assert body_size(big[0]) > 1000 > len(big[0])  # measured in UTF-8 bytes, not characters
        assert [message.body for message in queue.receive(10, visibility_timeout=60)] == small
