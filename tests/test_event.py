from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventtrail.event import (
    MAX_DATA_DEPTH,
    Event,
    InvalidEvent,
    encode_event,
    normalise_timestamp,
    parse_event,
)

# The reference article's test/message.json, byte for byte.
ARTICLE_MESSAGE = (
    b'{"id":"5b070a84-c5d5-460a-ac98-a0717cbc8e56","requestId":"677afffc-373e-42f0-8363-f24bc675bcf6",'
    b'"timestamp":"2020-05-01T20:00:00Z","type":"MICROSERVICE_REQUEST","source":"Gateway",'
    b'"data":{"Name":"Microservice A"}}'
)


def body(**changes: Any) -> str:
    document = json.loads(ARTICLE_MESSAGE)
    for key, value in changes.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document)


def test_the_articles_message_is_accepted_and_round_trips() -> None:
    event = parse_event(ARTICLE_MESSAGE)
    assert event.id == "5b070a84-c5d5-460a-ac98-a0717cbc8e56"
    assert event.request_id == "677afffc-373e-42f0-8363-f24bc675bcf6"
    assert event.timestamp == "2020-05-01T20:00:00.000000Z"
    assert (event.type, event.source) == ("MICROSERVICE_REQUEST", "Gateway")
    assert event.data == {"Name": "Microservice A"}
    encoded = encode_event(event)
    assert json.loads(encoded) == {**json.loads(ARTICLE_MESSAGE), "timestamp": "2020-05-01T20:00:00.000000Z"}
    assert parse_event(encoded) == event


def test_data_keeps_its_json_types() -> None:
    data = {"n": 0, "f": 1.5, "no": False, "empty": "", "null": None, "list": [1, {"a": []}], "o": {}}
    event = parse_event(body(data=data))
    assert event.data == data
    assert event.data["no"] is False and event.data["n"] == 0 and type(event.data["n"]) is int


def test_data_is_optional() -> None:
    assert parse_event(body(data=...)).data == {}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2020-05-01T20:00:00Z", "2020-05-01T20:00:00.000000Z"),
        ("2020-05-01T20:00:00.5Z", "2020-05-01T20:00:00.500000Z"),
        ("2020-05-01T22:00:00+02:00", "2020-05-01T20:00:00.000000Z"),
        ("2020-05-01T20:00:00.123456789Z"[:26] + "Z", "2020-05-01T20:00:00.123456Z"),
        ("2020-05-01T15:30:00-04:30", "2020-05-01T20:00:00.000000Z"),
        ("0999-01-01T00:00:00Z", "0999-01-01T00:00:00.000000Z"),
    ],
)
def test_timestamps_are_normalised_to_fixed_width_utc(given: str, expected: str) -> None:
    assert normalise_timestamp(given) == expected


def test_mixed_precisions_sort_by_time_once_normalised() -> None:
    # As raw strings, "...:00.5Z" sorts before "...:00Z" although it is later.
    assert "2020-05-01T20:00:00.5Z" < "2020-05-01T20:00:00Z"
    assert normalise_timestamp("2020-05-01T20:00:00.5Z") > normalise_timestamp("2020-05-01T20:00:00Z")


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "not a JSON object"),
        (b'"text"', None, "not a JSON object"),
        (body(type=...).encode(), "type", "required field is missing"),
        (body(id=42).encode(), "id", "expected `str`, got `int`"),
        (body(requestId="").encode(), "requestId", "length >= 1"),
        (body(data=[1, 2]).encode(), "data", "expected `object`, got `array`"),
        (body(extra=1).encode(), "extra", "unknown field"),
        (body(timestamp="yesterday").encode(), "timestamp", "not an ISO 8601 timestamp"),
        (body(timestamp="2020-05-01T20:00:00").encode(), "timestamp", "no UTC offset"),
        (body(timestamp="2020-13-01T20:00:00Z").encode(), "timestamp", "not an ISO 8601"),
    ],
)
def test_every_rejection_names_the_field_and_why(raw: bytes, field: str | None, words: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    assert caught.value.field == field
    assert words in caught.value.reason
    if field:
        assert f"`{field}`" in str(caught.value)


def test_a_body_over_the_size_limit_is_rejected_before_parsing() -> None:
    big = body(data={"blob": "x" * 2000})
    assert parse_event(big, max_bytes=4000).data["blob"] == "x" * 2000
    with pytest.raises(InvalidEvent, match="over the limit of 1,000 bytes"):
        parse_event(big, max_bytes=1000)
    # The limit is in bytes, not characters.
    wide = body(data={"blob": "é" * 700})
    with pytest.raises(InvalidEvent, match="over the limit"):
        parse_event(wide, max_bytes=1500)


def test_the_default_size_limit_is_sqs_maximum() -> None:
    filler = "x" * (1024 * 1024)
    with pytest.raises(InvalidEvent, match="1,048,576"):
        parse_event(body(data={"blob": filler}))


def test_nesting_deeper_than_the_limit_is_rejected() -> None:
    ok: Any = "leaf"
    for _ in range(MAX_DATA_DEPTH):  # data itself is the first level
        ok = {"d": ok}
    assert parse_event(body(data=ok)).data == ok
    with pytest.raises(InvalidEvent) as caught:
        parse_event(body(data={"d": ok}))
    assert caught.value.field == "data"
    assert "nested deeper" in caught.value.reason


def test_absurd_nesting_is_rejected_without_crashing() -> None:
    raw = '{"id": "x", "data": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    with pytest.raises(InvalidEvent, match="nested too deeply"):
        parse_event(raw)


def test_events_built_in_code_are_validated_too() -> None:
    with pytest.raises(InvalidEvent):
        Event(id="a", request_id="r", timestamp="later", type="t", source="s")


# Property-based: any valid event survives a round trip, and normalised
# timestamp order is time order.

_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False)
)
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_key = st.text(min_size=1, max_size=40)
_moments = st.datetimes(
    min_value=datetime(1000, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@given(
    event_id=_key,
    request_id=_key,
    moment=_moments,
    type_=_key,
    source=_key,
    data=st.dictionaries(st.text(max_size=10), _json, max_size=6),
)
def test_any_valid_event_round_trips(
    event_id: str, request_id: str, moment: datetime, type_: str, source: str, data: dict[str, Any]
) -> None:
    raw = msgspec.json.encode(
        {
            "id": event_id,
            "requestId": request_id,
            "timestamp": _iso(moment),
            "type": type_,
            "source": source,
            "data": data,
        }
    )
    event = parse_event(raw)
    assert parse_event(encode_event(event)) == event
    assert event.data == data
    assert event.moment == moment


@given(first=_moments, second=_moments)
def test_normalised_string_order_is_time_order(first: datetime, second: datetime) -> None:
    a, b = normalise_timestamp(_iso(first)), normalise_timestamp(_iso(second))
    assert (a < b) == (first < second)
    assert (a == b) == (first == second)
    assert len(a) == len(b) == 27
