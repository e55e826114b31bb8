from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventtrail.times import (
    EARLIEST,
    LATEST,
    LONGEST_DURATION,
    format_moment,
    moment_before,
    moment_of,
    normalise_timestamp,
    parse_duration,
    parse_moment,
    parse_timestamp,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

# Digits that str.isdigit(), int() and a regular expression's \d all accept.
ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x0660 + n) for n in range(10)))
FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + n) for n in range(10)))


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("2020-05-01T20:00:00Z", "2020-05-01T20:00:00.000000Z"),
        ("2020-05-01t20:00:00z", "2020-05-01T20:00:00.000000Z"),  # RFC 3339 allows lowercase
        ("2020-05-01T22:00:00+02:00", "2020-05-01T20:00:00.000000Z"),
        ("2020-05-01T20:00:00-00:00", "2020-05-01T20:00:00.000000Z"),
        ("2020-05-01T20:00:00+23:59", "2020-04-30T20:01:00.000000Z"),
        ("2020-05-01T20:00:00.5Z", "2020-05-01T20:00:00.500000Z"),
        # Nanoseconds (Go's RFC3339Nano) are cut to microseconds, never rounded
        # up: rounding could carry into the next second, day or year.
        ("2020-05-01T20:00:00.123456789Z", "2020-05-01T20:00:00.123456Z"),
        ("9999-12-31T23:59:59.999999999Z", "9999-12-31T23:59:59.999999Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
        ("0001-01-01T00:59:00+00:59", "0001-01-01T00:00:00.000000Z"),
        ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00.000000Z"),
    ],
)
def test_accepted_wire_timestamps_and_their_stored_form(text: str, stored: str) -> None:
    assert normalise_timestamp(text) == stored
    assert normalise_timestamp(stored) == stored
    assert moment_of(stored) == parse_timestamp(text)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("0001-01-01T00:00:00+01:00", "outside the years 0001 to 9999"),
        ("9999-12-31T23:59:59-01:00", "outside the years 0001 to 9999"),
        ("0000-01-01T00:00:00Z", "not a real date"),
        ("2020-05-01T23:59:60Z", "leap second"),
        ("2020-05-01T24:00:00Z", "24:00"),
        ("2023-02-29T12:00:00Z", "not a real date"),
        ("2020-05-01T20:00:00", "no UTC offset"),
        ("2020-05-01 20:00:00Z", "not an ISO 8601 timestamp"),
        ("2020-W18-5T20:00:00Z", "not an ISO 8601 timestamp"),
        ("2020-122T20:00:00Z", "not an ISO 8601 timestamp"),
        ("20200501T200000Z", "not an ISO 8601 timestamp"),
        ("2020-05-01T20.5Z", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00Z", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00:00,5Z", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00:00.Z", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00:00.1234567890Z", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00:00+24:00", "offset beyond"),
        ("2020-05-01T20:00:00+01:60", "offset beyond"),
        ("2020-05-01T20:00:00+1400", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00:00+01", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00:00+01:00:30", "not an ISO 8601 timestamp"),
        (" 2020-05-01T20:00:00Z", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00:00Z\n", "not an ISO 8601 timestamp"),
        ("+12020-05-01T20:00:00Z", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00:00Z".translate(ARABIC_INDIC), "not an ISO 8601 timestamp"),
        ("2020".translate(ARABIC_INDIC) + "-05-01T20:00:00.000000Z", "not an ISO 8601 timestamp"),
        ("2020".translate(FULLWIDTH) + "-05-01T20:00:00Z", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00:00.00000" + "5".translate(ARABIC_INDIC) + "Z", "not an ISO 8601 timestamp"),
        ("2020-05-01T20:00:00+0" + "5".translate(FULLWIDTH) + ":00", "not an ISO 8601 timestamp"),
        ("", "not an ISO 8601 timestamp"),
    ],
)
def test_rejected_wire_timestamps_say_why(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_timestamp(text)
    with pytest.raises(ValueError, match=words):
        normalise_timestamp(text)


def test_a_long_hostile_value_is_not_echoed_whole() -> None:
    with pytest.raises(ValueError) as caught:
        parse_timestamp("9" * 100_000)
    assert len(str(caught.value)) < 200


# Every moment eventtrail can hold, in every offset RFC 3339 can write.
_offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_moments = st.datetimes(min_value=datetime.min, max_value=datetime.max, timezones=st.just(UTC))


def _rfc3339(moment: datetime, offset: timezone) -> str:
    local = moment.astimezone(offset)
    text = f"{local.year:04d}-{local:%m-%dT%H:%M:%S}.{local.microsecond:06d}"
    minutes = int(offset.utcoffset(None).total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return text + f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _rfc3339_or_empty(moment: datetime, offset: timezone) -> str:
    try:
        return _rfc3339(moment, offset)
    except OverflowError:
        return ""


@given(moment=_moments, offset=_offsets)
def test_any_holdable_moment_in_any_offset_round_trips(moment: datetime, offset: timezone) -> None:
    try:
        text = _rfc3339(moment, offset)
    except OverflowError:
        # The local time itself is outside datetime's range: the same moment
        # cannot be written in that offset; the parser must still say no.
        return
    stored = normalise_timestamp(text)
    assert stored == format_moment(moment)
    assert len(stored) == 27 and stored.isascii()
    assert normalise_timestamp(stored) == stored
    assert moment_of(stored) == moment == parse_timestamp(text)


@given(first=_moments, second=_moments)
def test_stored_string_order_is_time_order_over_the_whole_range(first: datetime, second: datetime) -> None:
    a, b = format_moment(first), format_moment(second)
    assert (a < b) == (first < second)
    assert (a == b) == (first == second)


@given(moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), offset=_offsets)
def test_an_aware_moment_in_any_offset_is_formatted_and_read_back(moment: datetime, offset: timezone) -> None:
    aware = moment.replace(tzinfo=offset)
    assert moment_of(format_moment(aware)) == aware


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2))),
    ],
)
def test_formatting_a_moment_outside_the_range_is_a_value_error(moment: datetime) -> None:
    with pytest.raises(ValueError, match="outside the years"):
        format_moment(moment)


def test_formatting_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_moment(datetime(2020, 5, 1))


# What people type.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        (" NOW ", NOW),
        ("15m", NOW - timedelta(minutes=15)),
        ("1h30m", NOW - timedelta(hours=1, minutes=30)),
        ("2020-05-01", datetime(2020, 5, 1, tzinfo=UTC)),
        ("2020-05-01T20:00", datetime(2020, 5, 1, 20, tzinfo=UTC)),
        ("2020-05-01 20:00:00", datetime(2020, 5, 1, 20, tzinfo=UTC)),  # no offset: UTC, as date -u
        ("2020-05-01T20:00:00.5+02:00", datetime(2020, 5, 1, 18, 0, 0, 500000, tzinfo=UTC)),
        ("2020-05-01T20:00:00Z", datetime(2020, 5, 1, 20, tzinfo=UTC)),
        ("0001-01-01", EARLIEST),
        ("9999-12-31T23:59:59.999999Z", LATEST),
    ],
)
def test_what_people_type(text: str, expected: datetime) -> None:
    moment = parse_moment(text, now=NOW)
    assert moment == expected
    assert moment.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("0001-01-01T00:00:00+01:00", "outside the years 0001 to 9999"),
        ("9999-12-31T23:59:59-01:00", "outside the years 0001 to 9999"),
        ("99999999999d", "longer than the 3,652,058 days"),
        ("9" * 400 + "s", "longer than the"),
        ("3000000d", "before the year 0001"),
        ("2020-13-01", "not a real date"),
        ("2020-05-01T25:00", "not a real date"),
        ("2020-05-01T20:00:00.1234567891Z", "not an ISO 8601 timestamp"),
        ("2020-05-01".translate(ARABIC_INDIC), "neither a timestamp"),
        ("15".translate(FULLWIDTH) + "m", "neither a timestamp"),
        ("yesterday", "neither a timestamp"),
        ("", "neither a timestamp"),
        ("0s", "not a positive duration"),
        ("0.0000001s", "not a positive duration"),
    ],
)
def test_what_people_type_wrong_is_a_value_error_they_can_act_on(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_moment(text, now=NOW)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("1.5h", timedelta(minutes=90)),
        ("2w1d", timedelta(days=15)),
        ("250ms", timedelta(milliseconds=250)),
        (
            f"{LONGEST_DURATION.days}d",
            timedelta(days=LONGEST_DURATION.days),
        ),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["99999999999d", "1" + "0" * 5000 + "w", f"{LONGEST_DURATION.days + 1}d"])
def test_a_duration_longer_than_the_range_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="longer than"):
        parse_duration(text)


def test_moment_before_refuses_to_leave_the_range() -> None:
    assert moment_before(NOW, timedelta(days=1)) == NOW - timedelta(days=1)
    assert moment_before(LATEST, LONGEST_DURATION) == EARLIEST
    with pytest.raises(ValueError, match="before the year 0001"):
        moment_before(NOW, LONGEST_DURATION)
    with pytest.raises(ValueError, match="before the year 0001"):
        moment_before(EARLIEST, timedelta(microseconds=1))


_typed = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(categories=["Nd"]) | st.sampled_from("0123456789-:.TZ+ smhdw")),
    st.from_regex(r"\A[0-9]{1,14}(\.[0-9]{1,8})?(ms|s|m|h|d|w)\Z"),
    st.builds(lambda moment, offset: _rfc3339_or_empty(moment, offset), _moments, _offsets),
)


@given(text=_typed)
def test_anything_typed_is_a_holdable_moment_or_a_value_error(text: str) -> None:
    try:
        moment = parse_moment(text, now=NOW)
    except ValueError as error:
        assert str(error)
        return
    assert EARLIEST <= moment <= LATEST
    assert moment_of(format_moment(moment)) == moment


@given(text=st.one_of(st.text(), st.from_regex(r"\A[0-9]{1,30}(\.[0-9]{1,30})?(ms|s|m|h|d|w)\Z")))
def test_any_duration_text_is_a_holdable_duration_or_a_value_error(text: str) -> None:
    try:
        duration = parse_duration(text)
    except ValueError:
        return
    assert timedelta(0) < duration <= LONGEST_DURATION
