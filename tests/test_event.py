from __future__ import annotations

import json
import re
import time
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
    encode_new_event,
    normalise_timestamp,
    parse_event,
)
from eventtrail.times import parse_timestamp

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
        (body(timestamp="2020-13-01T20:00:00Z").encode(), "timestamp", "not a real date"),
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


# The fields of any valid event.
_EVENT_FIELDS = {
    "event_id": _key,
    "request_id": _key,
    "moment": _moments,
    "type_": _key,
    "source": _key,
    "data": st.dictionaries(st.text(max_size=10), _json, max_size=6),
}


@given(**_EVENT_FIELDS)
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


@given(**_EVENT_FIELDS)
def test_a_new_event_is_encoded_as_the_event_it_makes(
    event_id: str, request_id: str, moment: datetime, type_: str, source: str, data: dict[str, Any]
) -> None:
    timestamp = normalise_timestamp(_iso(moment))
    made = encode_new_event(event_id, request_id, timestamp, type_, source, data)
    assert made == encode_event(Event(event_id, request_id, timestamp, type_, source, data))
    assert parse_event(made) == Event(event_id, request_id, timestamp, type_, source, data)


@given(first=_moments, second=_moments)
def test_normalised_string_order_is_time_order(first: datetime, second: datetime) -> None:
    a, b = normalise_timestamp(_iso(first)), normalise_timestamp(_iso(second))
    assert (a < b) == (first < second)
    assert (a == b) == (first == second)
    assert len(a) == len(b) == 27


# Hostile input: whatever a body holds, parsing ends in an Event or an
# InvalidEvent with a reason, never in another exception.


def parsed_or_reason(raw: str | bytes) -> Event | InvalidEvent:
    try:
        return parse_event(raw)
    except InvalidEvent as error:
        assert error.reason
        return error


def envelope(timestamp: Any) -> bytes:
    return body(timestamp=timestamp).encode()


_FIXED_WIDTH_ASCII = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z", re.ASCII)

# Mostly ASCII digits (so that whole timestamps get through), sometimes any
# Unicode decimal digit (Arabic-Indic, fullwidth, Devanagari...).
_digit = st.one_of(st.sampled_from("0123456789"), st.characters(categories=["Nd"]))


def _field(width: int, highest: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(0, highest).map(lambda value: f"{value:0{width}d}"),
        st.lists(_digit, min_size=width, max_size=width).map("".join),
        st.integers(0, 10 ** (width + 1)).map(str),
    )


def _ascii(width: int, lowest: int, highest: int) -> st.SearchStrategy[str]:
    return st.integers(lowest, highest).map(lambda value: f"{value:0{width}d}")


_offset_valid = st.one_of(
    st.sampled_from(["Z", "z", "+00:00", "-00:00", "+14:00", "-12:00", "+23:59", "-23:59"]),
    st.tuples(st.sampled_from("+-"), _ascii(2, 0, 23), st.just(":"), _ascii(2, 0, 59)).map("".join),
)
_offset_hostile = st.one_of(
    st.sampled_from(["", "UTC", " Z", "+24:00", "-24:00", "+1400", "+01", "+01:00:30", "+01:00:00.5"]),
    st.tuples(st.sampled_from("+-"), _field(2, 30), st.sampled_from([":", ""]), _field(2, 70)).map("".join),
)
_fraction_valid = st.one_of(
    st.just(""),
    st.integers(1, 9).flatmap(lambda width: _ascii(width, 0, 10**width - 1)).map(lambda d: "." + d),
)
_fraction_hostile = st.one_of(
    st.lists(_digit, min_size=0, max_size=12).map(lambda digits: "." + "".join(digits)),
    st.sampled_from([",5", ".5.5", ".-1", "."]),
)
#: Each part of an RFC 3339 timestamp: (valid forms, hostile forms).
_PARTS: list[tuple[st.SearchStrategy[str], st.SearchStrategy[str]]] = [
    (
        st.one_of(_ascii(4, 1, 9999), st.sampled_from(["0001", "9999"])),
        st.one_of(_field(4, 10_000), st.sampled_from(["0000", "+2020", "-0001", "20201"])),
    ),
    (st.just("-"), st.sampled_from(["", "/", "-W"])),
    (_ascii(2, 1, 12), _field(2, 13)),
    (st.just("-"), st.sampled_from(["", "--"])),
    (_ascii(2, 1, 31), _field(2, 32)),
    (st.sampled_from(["T", "t"]), st.sampled_from([" ", "_", "", "TT"])),
    (_ascii(2, 0, 23), _field(2, 25)),
    (st.just(":"), st.sampled_from(["", "."])),
    (_ascii(2, 0, 59), _field(2, 61)),
    (st.just(":"), st.sampled_from(["", ".", ",", "::"])),
    (_ascii(2, 0, 59), _field(2, 61)),
    (_fraction_valid, _fraction_hostile),
    (_offset_valid, _offset_hostile),
]


@st.composite
def _near_valid_timestamp(draw: st.DrawFn) -> str:
    """An RFC 3339 timestamp of which at most two parts are drawn hostile."""
    hostile = set(draw(st.lists(st.integers(0, len(_PARTS) - 1), max_size=2)))
    return "".join(draw(forms[1] if index in hostile else forms[0]) for index, forms in enumerate(_PARTS))


#: A timestamp that is almost right: every part drawn from around and beyond
#: its range, in any digits, with every separator ISO 8601 or a careless
#: producer might use, and year 1 and 9999 in far offsets.
hostile_timestamps = st.one_of(
    _near_valid_timestamp(),
    st.sampled_from(
        ["2020-W18-5T20:00:00Z", "2020-122T20:00:00Z", "2020-05-01T20.5Z", "2020-05-01T20:30.5Z"]
    ),
    st.text(max_size=40),
)


@given(timestamp=hostile_timestamps)
def test_a_hostile_timestamp_is_normalised_or_rejected_never_raised(timestamp: str) -> None:
    outcome = parsed_or_reason(envelope(timestamp))
    if isinstance(outcome, InvalidEvent):
        assert outcome.field == "timestamp"
        return
    stored = outcome.timestamp
    assert timestamp.isascii()
    assert _FIXED_WIDTH_ASCII.fullmatch(stored)
    assert normalise_timestamp(stored) == stored
    assert outcome.moment == parse_timestamp(timestamp) == parse_timestamp(stored)
    # What is accepted is a subset of what Python itself reads as ISO 8601,
    # and means the same moment.
    assert datetime.fromisoformat(timestamp.upper()) == outcome.moment
    assert parse_event(encode_event(outcome)) == outcome


_hostile_text = st.text(
    alphabet=st.characters(categories=["Nd", "Cc", "Cs", "Zs", "Lo", "Sm", "Po", "Ps", "Pe"])
    | st.sampled_from('{}[]":,0123456789.eE+-\\u'),
)


@given(
    raw=st.one_of(
        st.text(),
        st.binary(),
        _hostile_text,
        _hostile_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
    )
)
def test_any_text_or_bytes_is_an_event_or_a_reason(raw: str | bytes) -> None:
    parsed_or_reason(raw)


_hostile_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**64, -(2**63) - 1])
    | st.floats()
    | st.text(alphabet=st.characters(categories=["L", "N", "P", "S", "Zs", "Cc", "Cs"])),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
_fields = st.sampled_from(["id", "requestId", "timestamp", "type", "source", "data", "extra", ""])


@given(
    document=st.one_of(
        _hostile_json,
        st.dictionaries(_fields, _hostile_json | hostile_timestamps, max_size=7),
        st.fixed_dictionaries(
            {name: st.text(min_size=1, max_size=300) for name in ("id", "requestId", "type", "source")},
            optional={"data": st.dictionaries(st.text(max_size=8), _hostile_json, max_size=4)},
        ).map(lambda fields: {**fields, "timestamp": "2020-05-01T20:00:00Z"}),
    ),
    ensure_ascii=st.booleans(),
)
def test_any_json_document_is_an_event_or_a_reason(document: Any, ensure_ascii: bool) -> None:
    # json (not msgspec) writes NaN, Infinity, lone surrogates and huge ints.
    text = json.dumps(document, ensure_ascii=ensure_ascii, allow_nan=True)
    for raw in (text, text.encode("utf-8", "surrogatepass")):
        outcome = parsed_or_reason(raw)
        if isinstance(outcome, Event):
            assert parse_event(encode_event(outcome)) == outcome


def _deep(depth: int) -> str:
    return '{"data":' + '{"a":' * depth + "1" + "}" * (depth + 1)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("[" * 10_000 + "]" * 10_000, "not a JSON object"),
        (_deep(10_000), "nested too deeply"),
        (body(data=json.loads(_deep(40))["data"]), "nested deeper than 31 levels"),
        (body(data={"a": 1}).replace("1}", "[" * 10_000 + "]" * 10_000 + "}"), "nested too deeply"),
    ],
)
def test_ten_thousand_deep_json_is_rejected_quickly(raw: str, words: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidEvent, match=words):
        parse_event(raw)
    with pytest.raises(InvalidEvent, match=words):
        parse_event(raw.encode())
    # A bound on a hang, not a measure of speed: it takes milliseconds.
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (envelope("0001-01-01T00:00:00+01:00"), "outside the years 0001 to 9999"),
        (envelope("9999-12-31T23:59:59-01:00"), "outside the years 0001 to 9999"),
        (
            envelope("2020".translate(str.maketrans("02", "\u0660\u0662")) + "-05-01T20:00:00.000000Z"),
            "not an ISO",
        ),
        (ARTICLE_MESSAGE.replace(b"Gateway", b"Gate\xffway"), "not valid UTF-8"),
        (ARTICLE_MESSAGE.replace(b"Gateway", b"Gate\xed\xa0\x80way"), "not valid UTF-8"),
        (ARTICLE_MESSAGE.decode().replace("Gateway", "Gate\ud800way"), "not valid UTF-8"),
        (ARTICLE_MESSAGE.decode().replace("Gateway", "Gate\\ud800way"), "not valid JSON"),
        (ARTICLE_MESSAGE.decode().replace("Gateway", "Gate\x00way"), "not valid JSON"),
        (b"\x00", "not valid JSON"),
        (b"", "not valid JSON"),
        (body(data={"n": 1e308}).replace("1e+308", "1e400"), "number out of range"),
        (body(data={"n": 1}).replace('"n": 1', '"n": 1' + "0" * 5000), "integer value out of range"),
    ],
)
def test_poison_bodies_are_invalid_events_with_a_reason(raw: str | bytes, words: str) -> None:
    with pytest.raises(InvalidEvent, match=words):
        parse_event(raw)
