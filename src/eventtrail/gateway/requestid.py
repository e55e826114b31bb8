"""The request id that ties a request's events into one flow.

Taken from the incoming ``X-Request-Id``, else from the trace id of a W3C
``traceparent`` (so a flow lines up with the caller's trace), else made here
(a UUIDv7, time-ordered like every id eventtrail makes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from eventtrail.ids import uuid7_str

__all__ = ["REQUEST_ID_HEADER", "request_id_from", "request_id_from_headers", "trace_id_of"]

REQUEST_ID_HEADER = "x-request-id"

# A request id becomes a store key and an HTTP header value again: visible
# ASCII only, and bounded (the store's key fields hold 256 characters).
_ACCEPTABLE_ID = re.compile(r"[\x21-\x7e]{1,200}\Z")
# W3C Trace Context: version-traceid-parentid-flags, lowercase hex.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def trace_id_of(traceparent: str) -> str | None:
    """The trace id of a valid ``traceparent`` value, else ``None``."""
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None:
        return None
    version, trace_id, parent_id, _flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    # Version 00 is exactly 55 characters; later versions may append fields.
    if version == "00" and len(traceparent.strip()) != 55:
        return None
    return trace_id


def request_id_from(request_id: str | None, traceparent: str | None) -> str:
    """The request id for a request carrying these header values."""
    if request_id is not None and _ACCEPTABLE_ID.match(request_id):
        return request_id
    if traceparent is not None and (trace_id := trace_id_of(traceparent)) is not None:
        return trace_id
    return uuid7_str()


def request_id_from_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> str:
    """:func:`request_id_from` for an ASGI header list (lowercase names)."""
    given = trace = None
    for name, value in raw_headers:
        if name == b"x-request-id":
            given = value.decode("latin-1")
        elif name == b"traceparent":
            trace = value.decode("latin-1")
    return request_id_from(given, trace)
