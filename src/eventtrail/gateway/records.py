"""Call records: what the request path hands over, made into events later.

Building a call's two events (ids, timestamps, structs, ``data`` dicts) and
encoding them cost the gateway about 13 µs of CPU per call on its event loop,
the one thread every proxied request waits for. A record is a plain tuple of
what the call's events will say, stamped with the clock: making it costs a
fraction of that, and :func:`bodies_of` turns a batch of records into
message bodies wherever that is cheapest: in the queue's own process when
the queue runs in one (:mod:`eventtrail.gateway.offload`), else on the
publisher's thread. The events are the same as those the ``eventtrail.calls``
helpers make at the moment of the call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from eventtrail.calls import call_error, call_request, call_response, moment_of_ns
from eventtrail.event import Event, encode_event
from eventtrail.ids import uuid_str
from eventtrail.queue import QueueError

__all__ = [
    "Record",
    "RecordSink",
    "UnsentRecords",
    "bodies_of",
    "encoded",
    "error_record",
    "request_record",
    "response_record",
]

# The first field of a record says what it is.
_REQUEST = 0
_RESPONSE = 1
_ERROR = 2
_ENCODED = 3

#: A tuple of plain values (so that it pickles small and the garbage
#: collector soon stops tracking it); build one with the functions below.
Record = tuple[Any, ...]


def request_record(
    unix_ns: int,
    request_id: str,
    call_id: str,
    service: str,
    source: str,
    method: str,
    path: str,
    extra: dict[str, Any] | None,
) -> Record:
    """A ``MICROSERVICE_REQUEST`` event, at ``unix_ns``."""
    return (_REQUEST, unix_ns, request_id, call_id, service, source, method, path, extra)


def response_record(
    unix_ns: int,
    request_id: str,
    call_id: str,
    service: str,
    source: str,
    status: int,
    latency_ms: float,
    bytes_in: int,
    bytes_out: int,
    extra: dict[str, Any] | None,
) -> Record:
    """A ``MICROSERVICE_RESPONSE`` event, at ``unix_ns``."""
    return (
        _RESPONSE,
        unix_ns,
        request_id,
        call_id,
        service,
        source,
        status,
        latency_ms,
        bytes_in,
        bytes_out,
        extra,
    )


def error_record(
    unix_ns: int,
    request_id: str,
    call_id: str,
    service: str,
    source: str,
    kind: str,
    elapsed_ms: float,
    detail: str,
) -> Record:
    """A ``MICROSERVICE_ERROR`` event, at ``unix_ns``."""
    return (_ERROR, unix_ns, request_id, call_id, service, source, kind, elapsed_ms, detail)


def encoded(event: Event) -> Record:
    """Any other event, encoded now."""
    return (_ENCODED, encode_event(event).decode())


_AFTER_MILLISECONDS = (1 << 80) - 1


def _event_id(call_id: str, kind: int, unix_ns: int) -> str:
    """A UUIDv7 of the event's millisecond whose other bits are the call
    id's, the last two flipped by the event's kind: the same record always
    gets the same id, so a batch made into bodies again (after a queue
    process died mid-send) is stored once, as a retry must be."""
    after_milliseconds = int(call_id.replace("-", ""), 16) & _AFTER_MILLISECONDS
    return uuid_str(((unix_ns // 1_000_000) << 80) | (after_milliseconds ^ (kind + 1)))


def _event(record: Record) -> Event:
    kind, unix_ns, request_id, call_id, service, source, *rest = record
    timestamp = moment_of_ns(unix_ns)
    event_id = _event_id(call_id, kind, unix_ns)
    if kind == _REQUEST:
        method, path, extra = rest
        return call_request(
            request_id,
            call_id,
            service,
            method,
            path,
            source=source,
            timestamp=timestamp,
            event_id=event_id,
            **(extra or {}),
        )
    if kind == _RESPONSE:
        status, latency_ms, bytes_in, bytes_out, extra = rest
        return call_response(
            request_id,
            call_id,
            service,
            status=status,
            latency_ms=latency_ms,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            source=source,
            timestamp=timestamp,
            event_id=event_id,
            **(extra or {}),
        )
    if kind == _ERROR:
        error, elapsed_ms, detail = rest
        return call_error(
            request_id,
            call_id,
            service,
            error=error,
            elapsed_ms=elapsed_ms,
            detail=detail,
            source=source,
            timestamp=timestamp,
            event_id=event_id,
        )
    raise ValueError(f"not a call record: {record[:1]!r}")


def bodies_of(records: Iterable[Record]) -> list[str]:
    """The message body of each record's event, in order."""
    return [
        record[1] if record[0] == _ENCODED else encode_event(_event(record)).decode() for record in records
    ]


class UnsentRecords(QueueError):
    """The records' bodies were made, but the queue did not take them."""

    def __init__(self, message: str, bodies: list[str]) -> None:
        super().__init__(message)
        self.bodies = bodies


@runtime_checkable
class RecordSink(Protocol):
    """A queue that takes records and makes their bodies itself."""

    def send_records(self, records: Sequence[Record]) -> None:
        """Send the records' events; raise :class:`UnsentRecords` (with the
        bodies) when the queue failed, any other error when even the bodies
        could not be made."""
