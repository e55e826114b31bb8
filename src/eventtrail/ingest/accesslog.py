"""What an access log line says about the calls a gateway made, and the
events that says.

A log format (:mod:`eventtrail.ingest.nginx`, :mod:`eventtrail.ingest.haproxy`)
reads one line into a :class:`ProxiedRequest`: the request's id, method and
path, and one :class:`Attempt` per upstream the gateway tried. Turning that
into events is the same for every format (:func:`call_events`), and so are the
ids: each is derived from the line itself, so that reading a file twice, or
again after a restart, stores nothing twice.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from eventtrail.calls import call_error, call_request, call_response
from eventtrail.event import Event
from eventtrail.ids import derived_uuid7_str
from eventtrail.times import format_unix_ns

__all__ = [
    "MAX_PATH_CHARS",
    "Attempt",
    "BadLine",
    "LogFormat",
    "ProxiedRequest",
    "call_events",
    "field_number",
    "field_status",
    "field_text",
    "line_key",
]

#: Recorded paths are bounded like the gateway's: an event stays far below
#: the queue's size limit whatever a client sent.
MAX_PATH_CHARS = 2048

# ASCII digits only: float() also reads Arabic-Indic digits, "1_000", "nan" and "inf".
_NUMBER = re.compile(r"-?[0-9]{1,18}(?:\.[0-9]{1,9})?", re.ASCII)

# Unix milliseconds of 9999-12-31T23:59:59.999Z: a later time cannot be stored.
_LAST_MS = 253_402_300_799_999


class BadLine(ValueError):
    """A line that is not what the format expects; the reason says why."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one upstream: a response (``status``) or an error (``error``:
    timeout, refused, reset or error; disconnected when the client left first)."""

    service: str
    started_ms: float
    duration_ms: float
    status: int | None = None
    error: str | None = None
    detail: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """A request the gateway passed on, and its attempts in order."""

    request_id: str
    method: str
    path: str
    attempts: list[Attempt]


class LogFormat(Protocol):
    """How one gateway's log lines read."""

    #: The name used in the CLI (``eventtrail ingest NAME``) and in event ids.
    name: str
    #: The events' ``source`` unless the user names another.
    default_source: str

    def parse(self, line: str) -> ProxiedRequest | None:
        """The request a line records; ``None`` for a line that proxied
        nothing (a static file, a redirect); raises :class:`BadLine`."""


def line_key(format_name: str, line: str) -> bytes:
    """What a line's event ids are derived from: the format and the line
    exactly as written (a line read twice gives the same ids)."""
    return format_name.encode() + b"\n" + hashlib.blake2b(line.encode("utf-8", "surrogatepass")).digest()


def _moment(unix_ms: float) -> str:
    if not 0 <= unix_ms <= _LAST_MS:
        raise BadLine(f"time {unix_ms / 1000:.3f} (Unix seconds) is out of range")
    # Log times are decimal text: round float noise off at the microsecond.
    return format_unix_ns(round(unix_ms * 1000) * 1000)


def _bounded_path(path: str) -> str:
    if len(path) <= MAX_PATH_CHARS:
        return path
    return f"{path[:MAX_PATH_CHARS]}…[{len(path) - MAX_PATH_CHARS} more characters]"


def call_events(request: ProxiedRequest, *, source: str, key: bytes) -> list[Event]:
    """A request event, then a response or an error event, per attempt."""
    events: list[Event] = []
    path = _bounded_path(request.path)
    for number, attempt in enumerate(request.attempts):
        started = attempt.started_ms
        ended = started + max(attempt.duration_ms, 0.0)
        # Ties on the timestamp are ordered by id: the sequence keeps a call's
        # request before its outcome, and the attempts in their order.
        sequence = min(number, 2047) * 2
        call_id = derived_uuid7_str(int(started), key + b"\ncall", sequence)
        extra = dict(attempt.extra)
        events.append(
            call_request(
                request.request_id,
                call_id,
                attempt.service,
                request.method,
                path,
                source=source,
                timestamp=_moment(started),
                event_id=derived_uuid7_str(int(started), key, sequence),
                **extra,
            )
        )
        outcome_id = derived_uuid7_str(int(ended), key, sequence + 1)
        if attempt.error is not None:
            events.append(
                call_error(
                    request.request_id,
                    call_id,
                    attempt.service,
                    error=attempt.error,
                    elapsed_ms=attempt.duration_ms,
                    detail=attempt.detail,
                    source=source,
                    timestamp=_moment(ended),
                    event_id=outcome_id,
                )
            )
        else:
            assert attempt.status is not None
            events.append(
                call_response(
                    request.request_id,
                    call_id,
                    attempt.service,
                    status=attempt.status,
                    latency_ms=attempt.duration_ms,
                    bytes_in=attempt.bytes_in,
                    bytes_out=attempt.bytes_out,
                    source=source,
                    timestamp=_moment(ended),
                    event_id=outcome_id,
                )
            )
    return events


def field_text(record: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    """A field as text: ``None`` when absent, empty or ``-`` (what both
    nginx and HAProxy write for "no value"), unless it is required."""
    value = record.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if value is None or value in ("", "-"):
        if required:
            raise BadLine(f"`{name}` is missing")
        return None
    if not isinstance(value, str):
        raise BadLine(f"`{name}` is not a string or a number")
    return value


def field_number(text: str, name: str, *, low: float = 0.0, high: float = math.inf) -> float:
    """A finite number in ``[low, high]`` read from a log field."""
    if not _NUMBER.fullmatch(text):
        raise BadLine(f"`{name}` is not a number: {text[:40]!r}")
    number = float(text)
    if not (math.isfinite(number) and low <= number <= high):
        raise BadLine(f"`{name}` is out of range: {text[:40]!r}")
    return number


def field_status(text: str, name: str) -> int:
    """An HTTP status code (100 to 599) read from a log field."""
    if len(text) != 3 or not text.isascii() or not text.isdigit() or not "100" <= text <= "599":
        raise BadLine(f"`{name}` is not an HTTP status: {text[:40]!r}")
    return int(text)
