"""The event and its wire format (v1).

A message body is a JSON object with the fields of :class:`Event`, exactly the
reference article's ``test/message.json``. Parsing validates it and normalises
the timestamp to fixed-width UTC, so that the string order of timestamps is
their time order on every backend.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec

from eventtrail import times

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_DATA_DEPTH",
    "Event",
    "InvalidEvent",
    "encode_event",
    "encode_events",
    "encode_new_event",
    "normalise_timestamp",
    "parse_event",
]

#: The largest message SQS accepts; the embedded queue keeps the same limit.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

#: How deep ``data`` may nest (the ``data`` object itself is level 1).
#: DynamoDB allows 32 levels for a whole item; the item wraps ``data`` once.
MAX_DATA_DEPTH = 31

# Key fields end up in DynamoDB keys (at most 1,024 bytes for a sort key that
# also holds the timestamp), so they are bounded well below that.
_KeyField = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class InvalidEvent(ValueError):
    """A message body that can never become an event.

    ``field`` names the offending field (``None`` when the body as a whole is
    wrong) and ``reason`` says why, in words a person can act on.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"field `{field}`: {reason}" if field else reason)


def normalise_timestamp(value: str) -> str:
    """Return ``value`` as fixed-width UTC: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    The grammar is :func:`eventtrail.times.parse_timestamp`'s (RFC 3339 with
    an offset or ``Z``); a timestamp without an offset is ambiguous and rejected.
    """
    try:
        return times.normalise_timestamp(value)
    except ValueError as error:
        raise InvalidEvent(str(error), "timestamp") from None


def _data_depth(data: dict[str, Any]) -> int:
    deepest = 1
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        container, depth = pending.pop()
        deepest = max(deepest, depth)
        children = container.values() if isinstance(container, dict) else container
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


class Event(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """One immutable event: something that happened to one request.

    ``timestamp`` is always the normalised form (see
    :func:`normalise_timestamp`); ``data`` keeps its JSON types.
    """

    id: _KeyField
    request_id: _KeyField
    timestamp: str
    type: _KeyField
    source: _KeyField
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.timestamp = normalise_timestamp(self.timestamp)

    def check_depth(self) -> None:
        """Raise :class:`InvalidEvent` if ``data`` nests deeper than allowed."""
        if _data_depth(self.data) > MAX_DATA_DEPTH:
            raise InvalidEvent(f"nested deeper than {MAX_DATA_DEPTH} levels", "data")

    @property
    def moment(self) -> datetime:
        """The timestamp as an aware UTC datetime."""
        return times.moment_of(self.timestamp)


_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()

_AT_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")


def _explain(error: msgspec.ValidationError) -> InvalidEvent:
    """Turn msgspec's message into the field and reason a user reads."""
    text = str(error)
    match = _AT_PATH.match(text)
    message = match["msg"] if match else text
    path = (match["path"] or "") if match else ""
    field = path.lstrip(".").split(".", 1)[0].split("[", 1)[0] or None
    if found := _MISSING.fullmatch(message):
        return InvalidEvent("required field is missing", found["field"])
    if found := _UNKNOWN.fullmatch(message):
        return InvalidEvent("unknown field (wire format v1 has no such field)", found["field"])
    if message.startswith("field `"):
        # Raised by Event.__post_init__, already in the user's words.
        name, _, reason = message[len("field `") :].partition("`: ")
        return InvalidEvent(reason, name)
    if field is None and message.startswith("Expected `object`"):
        return InvalidEvent(f"the body is not a JSON object ({message})")
    detail = message[0].lower() + message[1:]
    if path and "." in path.lstrip("."):
        detail = f"{detail} at `{path.lstrip('.')}`"
    return InvalidEvent(detail, field)


def parse_event(body: str | bytes, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Event:
    """Parse and validate one message body.

    Raises :class:`InvalidEvent` saying which field is wrong and why, and
    nothing else: whatever a body holds, it is either an event or a reason.
    """
    try:
        return _parse(body, max_bytes)
    except InvalidEvent:
        raise
    except RecursionError:
        raise InvalidEvent("the body is nested too deeply to be an event") from None
    except UnicodeError:
        raise InvalidEvent("the body is not valid UTF-8 (or holds a lone surrogate)") from None
    except Exception as error:  # noqa: BLE001 - an unforeseen body is still the body's fault
        # It must never become an exception that fails the rest of a batch.
        raise InvalidEvent(f"the body cannot be read as an event ({type(error).__name__}: {error})") from None


def _parse(body: str | bytes, max_bytes: int) -> Event:
    # A str's UTF-8 size is between len() and 4 * len(); encode only when unsure.
    size = len(body)
    if isinstance(body, str) and size <= max_bytes < 4 * size:
        size = len(body.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidEvent(f"the body is {size:,} bytes, over the limit of {max_bytes:,} bytes")
    try:
        event = _decoder.decode(body)
    except msgspec.ValidationError as error:
        raise _explain(error) from None
    except msgspec.DecodeError as error:
        raise InvalidEvent(f"the body is not valid JSON: {error}") from None
    # Walking data costs more than decoding it; only a body with more brackets
    # than the limit can nest deeper than it.
    if isinstance(body, str):
        brackets = body.count("{") + body.count("[")
    else:
        brackets = body.count(b"{") + body.count(b"[")
    if brackets > MAX_DATA_DEPTH:
        event.check_depth()
    return event


def encode_event(event: Event) -> bytes:
    """Encode ``event`` in the wire format (compact JSON, UTF-8)."""
    return _encoder.encode(event)


def encode_events(events: list[Event]) -> bytes:
    """Encode a list of events as one JSON array."""
    return _encoder.encode(events)


class _NewEvent(msgspec.Struct, rename="camel"):
    # Event's fields in Event's order: the same wire bytes, no normalising.
    id: str
    request_id: str
    timestamp: str
    type: str
    source: str
    data: dict[str, Any]


def encode_new_event(
    id: str, request_id: str, timestamp: str, type: str, source: str, data: dict[str, Any]
) -> bytes:
    """The body :func:`encode_event` gives for an event made from these
    fields, for an event eventtrail makes itself with a timestamp already in
    the normalised form (:func:`eventtrail.times.format_unix_ns`): the
    gateway's queue process makes one per recorded call event, and checking
    again what it just formatted was a sixth of its work per event."""
    return _encoder.encode(_NewEvent(id, request_id, timestamp, type, source, data))
