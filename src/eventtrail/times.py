"""Every timestamp eventtrail reads or writes goes through this module.

Two grammars, one parser (:func:`_read`):

- a wire timestamp (:func:`parse_timestamp`, :func:`normalise_timestamp`):
  RFC 3339's ``date-time``, the strict profile of ISO 8601 that JSON APIs use:
  ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)``, ASCII digits only;
- what a person types (:func:`parse_moment`): the same, where the seconds,
  the time and the offset may be left out (a time without an offset is UTC,
  as with ``date -u``), or ``now``, or a duration meaning that long ago.

Every moment that comes out is an aware UTC datetime between the first and
the last microsecond of years 1 to 9999 in UTC, so that it can always be
formatted in the store's fixed-width form (:func:`format_moment`); anything
else is a :class:`ValueError` whose message says what to type instead.
"""

from __future__ import annotations

import functools
import math
import re
import time
from datetime import UTC, datetime, timedelta

__all__ = [
    "EARLIEST",
    "LATEST",
    "LONGEST_DURATION",
    "format_duration",
    "format_moment",
    "format_unix_ns",
    "moment_before",
    "moment_of",
    "normalise_timestamp",
    "parse_duration",
    "parse_moment",
    "parse_timestamp",
]

#: The first and last moments eventtrail can hold (datetime's range, in UTC).
EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)

#: No duration is longer than the whole storable range.
LONGEST_DURATION = LATEST - EARLIEST

_EXAMPLE = "2020-05-01T20:00:00Z"

# re.ASCII and explicit [0-9]: \d would also match Arabic-Indic, fullwidth
# and every other Unicode digit, which int() and fromisoformat() then accept.
_DATE = r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
_FRACTION = r"(?:\.(?P<fraction>[0-9]{1,9}))?"
_OFFSET = r"(?P<offset>[Zz]|(?P<sign>[+-])(?P<offset_hour>[0-9]{2}):(?P<offset_minute>[0-9]{2}))"

_WIRE = re.compile(
    _DATE + r"[Tt](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})" + _FRACTION + _OFFSET + "?",
    re.ASCII,
)
_TYPED = re.compile(
    _DATE
    + r"(?:[Tt ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})"
    + _FRACTION
    + r")?"
    + _OFFSET
    + r"?)?",
    re.ASCII,
)

# The store's own form; most timestamps on the wire already have it (the
# gateway writes it), so it is recognised before the general grammar.
_FIXED_WIDTH = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z", re.ASCII)

_LOOKS_LIKE_A_DATE = re.compile(r"[0-9]{4}-", re.ASCII)

_DURATION = re.compile(r"(?P<amount>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|m|h|d|w)", re.ASCII)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _quoted(text: str) -> str:
    """``text`` as a Python literal, cut short: messages echo hostile input."""
    return repr(text) if len(text) <= 64 else repr(text[:60]) + "..."


def _read(text: str, grammar: re.Pattern[str], *, offset_required: bool) -> datetime:
    """The one parser of timestamps: ``text`` in ``grammar`` as aware UTC."""
    found = grammar.fullmatch(text)
    if found is None:
        raise ValueError(f"{_quoted(text)} is not an ISO 8601 timestamp like {_EXAMPLE}")
    # Both grammars have the same groups in the same order.
    year, month, day, hours, minutes, seconds, fraction, zone, sign, offset_hours, offset_minutes = (
        found.groups()
    )
    if zone is None and offset_required:
        raise ValueError(f"{_quoted(text)} has no UTC offset; add Z or +HH:MM")
    hour, minute, second = int(hours or 0), int(minutes or 0), int(seconds or 0)
    if second == 60:
        raise ValueError(f"{_quoted(text)} is a leap second, which eventtrail cannot hold; use :59.999999")
    if hour == 24:
        raise ValueError(f"{_quoted(text)} uses 24:00; write 00:00 of the next day")
    try:
        local = datetime(
            int(year),
            int(month),
            int(day),
            hour,
            minute,
            second,
            int((fraction or "").ljust(6, "0")[:6]),
            tzinfo=UTC,
        )
    except ValueError as error:
        raise ValueError(f"{_quoted(text)} is not a real date and time ({error})") from None
    if sign is None:
        return local
    offset = _offset(sign, offset_hours, offset_minutes)
    if offset is None:
        raise ValueError(f"{_quoted(text)} has an offset beyond ±23:59")
    try:
        return local - offset
    except OverflowError:
        raise ValueError(f"{_quoted(text)} falls outside the years 0001 to 9999 in UTC") from None


@functools.lru_cache(maxsize=256)
def _offset(sign: str, hours: str, minutes: str) -> timedelta | None:
    """``±HH:MM`` as a timedelta (``None`` past ±23:59), cached: producers
    use a handful of offsets."""
    if int(hours) > 23 or int(minutes) > 59:
        return None
    offset = timedelta(hours=int(hours), minutes=int(minutes))
    return -offset if sign == "-" else offset


@functools.lru_cache(maxsize=4096)
def _real_second(text: str) -> bool:
    """Whether ASCII ``YYYY-MM-DDTHH:MM:SS`` is a real moment (cached: the
    events of one second share it)."""
    try:
        datetime(
            int(text[:4]),
            int(text[5:7]),
            int(text[8:10]),
            int(text[11:13]),
            int(text[14:16]),
            int(text[17:19]),
        )
    except ValueError:
        return False
    return True


def parse_timestamp(text: str) -> datetime:
    """A wire timestamp (RFC 3339, offset required) as an aware UTC datetime.

    Raises :class:`ValueError` saying what is wrong.
    """
    return _read(text, _WIRE, offset_required=True)


def format_moment(moment: datetime) -> str:
    """``moment`` in the store's fixed-width UTC form,
    ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, whose string order is time order."""
    if moment.tzinfo is None:
        raise ValueError("datetimes given to the store must be timezone-aware")
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} falls outside the years 0001 to 9999 in UTC") from None
    return _fixed_width(utc)


def _fixed_width(utc: datetime) -> str:
    # isoformat pads the year to four digits and ends a UTC datetime in +00:00.
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"


_second: list[tuple[int, str]] = [(-1, "")]


def format_unix_ns(unix_ns: int) -> str:
    """Nanoseconds since the epoch in the fixed-width form of
    :func:`format_moment`, built directly: the gateway stamps every event, and
    the events of one second share the formatted second (cached)."""
    second, fraction = divmod(unix_ns // 1000, 1_000_000)
    cached_second, text = _second[0]
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second[0] = (second, text)
    return f"{text}.{fraction:06d}Z"


def normalise_timestamp(text: str) -> str:
    """A wire timestamp in the store's fixed-width form (:func:`format_moment`).

    Every result is a fixed point: normalising it again returns it unchanged,
    and :func:`moment_of` reads back the same moment.
    """
    if _FIXED_WIDTH.fullmatch(text) and _real_second(text[:19]):
        return text
    return _fixed_width(parse_timestamp(text))


def moment_of(timestamp: str) -> datetime:
    """The moment of a stored (normalised) timestamp, as an aware UTC datetime."""
    if _FIXED_WIDTH.fullmatch(timestamp):
        # Read on every stored event (TTL, waterfalls): the fixed positions
        # of the stored form need no general parse.
        try:
            return datetime(
                int(timestamp[:4]),
                int(timestamp[5:7]),
                int(timestamp[8:10]),
                int(timestamp[11:13]),
                int(timestamp[14:16]),
                int(timestamp[17:19]),
                int(timestamp[20:26]),
                tzinfo=UTC,
            )
        except ValueError:
            pass  # not a real moment: the general parser says why
    return parse_timestamp(timestamp)


def moment_before(moment: datetime, duration: timedelta) -> datetime:
    """``moment - duration``, or a :class:`ValueError` if that is before year 1."""
    try:
        earlier = moment - duration
    except OverflowError:
        earlier = None
    if earlier is None or earlier < EARLIEST:
        raise ValueError(
            f"{_describe(duration)} before {moment.isoformat()} is before the year 0001;"
            " choose a shorter time"
        )
    return earlier


def _describe(duration: timedelta) -> str:
    if duration.days:
        return f"{duration.days:,} days"
    return format_duration(duration.total_seconds())


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"1h30m"``, ``"7d"``... as a positive timedelta,
    no longer than :data:`LONGEST_DURATION`."""
    compact = text.strip().lower()
    position = 0
    seconds = 0.0
    for match in _DURATION.finditer(compact):
        if match.start() != position:
            break
        seconds += float(match["amount"]) * _UNITS[match["unit"]]
        position = match.end()
    if not compact or position != len(compact):
        raise ValueError(f"{_quoted(text)} is not a duration; use e.g. 90s, 15m, 2h, 7d or 1h30m")
    # float() turns a thousand-digit amount into inf rather than failing, and
    # timedelta() overflows far past the range: both are checked before it.
    if not math.isfinite(seconds) or seconds > 2 * LONGEST_DURATION.total_seconds():
        duration = None
    else:
        duration = timedelta(seconds=seconds)
    if duration is None or duration > LONGEST_DURATION:
        raise ValueError(
            f"{_quoted(text)} is longer than the {LONGEST_DURATION.days:,} days eventtrail can hold"
        )
    if duration <= timedelta(0):
        raise ValueError(f"{_quoted(text)} is not a positive duration")
    return duration


def parse_moment(text: str, *, now: datetime | None = None) -> datetime:
    """What a person typed, as an aware UTC datetime: ``now``, an ISO 8601
    timestamp (``2020-05-01``, ``2020-05-01T20:00``, ``...:00.5+02:00``; UTC
    if it has no offset), or a duration meaning that long ago (``15m``).

    Raises :class:`ValueError` with a message to show as it is.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    stripped = text.strip()
    if stripped.lower() == "now":
        return now
    if _TYPED.fullmatch(stripped) or _LOOKS_LIKE_A_DATE.match(stripped):
        return _read(stripped, _TYPED, offset_required=False)
    try:
        duration = parse_duration(stripped)
    except ValueError:
        if _DURATION.match(stripped.lower()):
            raise
        raise ValueError(
            f"{_quoted(text)} is neither a timestamp ({_EXAMPLE}) nor a time ago (15m, 2h)"
        ) from None
    return moment_before(now, duration)


def format_duration(seconds: float) -> str:
    """A short human form: ``850 ms``, ``3.2 s``, ``4 min``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
