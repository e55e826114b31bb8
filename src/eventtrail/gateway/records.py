"""Call records: what the request path hands over, made into events later.

Building a call's two events (ids, timestamps, structs, ``data`` dicts) and
encoding them cost the gateway about 13 µs of CPU per call on its event loop,
the one thread every proxied request waits for. A record is a plain tuple of
what the call's events will say, stamped with the clock, and a call is an
int (:func:`new_call`) from which its UUID is made later: making them costs a
fraction of that, and :func:`bodies_of` turns a batch of records into
message bodies wherever that is cheapest: in the queue's own process when
the queue runs in one (:mod:`eventtrail.gateway.offload`), else on the
publisher's thread. The events are the same as those the ``eventtrail.calls``
helpers make at the moment of the call.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from eventtrail.calls import (
    ERROR,
    REQUEST,
    RESPONSE,
    error_data,
    moment_of_ns,
    request_data,
    response_data,
)
from eventtrail.event import Event, encode_event
from eventtrail.ids import uuid_str
from eventtrail.queue import Queue, QueueError

__all__ = [
    "Call",
    "EncodingSink",
    "Record",
    "RecordSink",
    "UnsentRecords",
    "bodies_of",
    "call_id_of",
    "encoded",
    "error_record",
    "new_call",
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

#: One upstream call: the millisecond it started and a number no other call
#: of this process has, in one int. :func:`call_id_of` makes its UUID.
Call = int

# A UUIDv7 has 74 bits that are neither time, version nor variant: the call's
# number takes 72, and the last 2 tell the call's events apart (_event_id).
_NUMBER_BITS = 72
_NUMBER_MASK = (1 << _NUMBER_BITS) - 1
_RAND_B_MASK = (1 << 62) - 1
_numbers: Iterator[int]


def _restart_numbers() -> None:
    global _numbers
    # A random start, so that the calls of two processes (or runs) never
    # share a number; a forked child starts anew.
    _numbers = itertools.count(random.getrandbits(_NUMBER_BITS))


_restart_numbers()
os.register_at_fork(after_in_child=_restart_numbers)


def new_call(unix_ns: int) -> Call:
    """A call starting at ``unix_ns``."""
    return ((unix_ns // 1_000_000) << _NUMBER_BITS) | (next(_numbers) & _NUMBER_MASK)


def call_id_of(call: Call) -> str:
    """The call's id: a UUIDv7 of its start millisecond and its number."""
    low = (call & _NUMBER_MASK) << 2
    return uuid_str(
        ((call >> _NUMBER_BITS) << 80)
        | (0x7 << 76)
        | ((low >> 62) << 64)
        | (0b10 << 62)
        | (low & _RAND_B_MASK)
    )


def request_record(
    unix_ns: int,
    request_id: str,
    call: Call,
    service: str,
    source: str,
    method: str,
    path: str,
    extra: dict[str, Any] | None,
) -> Record:
    """A ``MICROSERVICE_REQUEST`` event, at ``unix_ns``."""
    return (_REQUEST, unix_ns, request_id, call, service, source, method, path, extra)


def response_record(
    unix_ns: int,
    request_id: str,
    call: Call,
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
        call,
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
    call: Call,
    service: str,
    source: str,
    kind: str,
    elapsed_ms: float,
    detail: str,
) -> Record:
    """A ``MICROSERVICE_ERROR`` event, at ``unix_ns``."""
    return (_ERROR, unix_ns, request_id, call, service, source, kind, elapsed_ms, detail)


def encoded(event: Event) -> Record:
    """Any other event, encoded now."""
    return (_ENCODED, encode_event(event).decode())


_TYPES = (REQUEST, RESPONSE, ERROR)

# A call id's last hex digit (its two lowest bits are 0), with those two bits
# set by an event kind (1 to 3).
_WITH_KIND = [
    {digit: f"{int(digit, 16) | (kind + 1):x}" for digit in "0123456789abcdef"} for kind in range(3)
]


def _event_id(call_id: str, kind: int) -> str:
    """The call id with its two last bits set by the event's kind: the
    same record always gets the same id (so a batch made into bodies again,
    after a queue process died mid-send, is stored once, as a retry must be),
    and the ids stay UUIDv7, ordered by when their call started."""
    return call_id[:-1] + _WITH_KIND[kind][call_id[-1]]


def _event(record: Record) -> Event:
    kind, unix_ns, request_id, call, service, source, *rest = record
    call_id = call_id_of(call)
    if kind == _REQUEST:
        method, path, extra = rest
        data = request_data(service, call_id, method, path, extra)
    elif kind == _RESPONSE:
        status, latency_ms, bytes_in, bytes_out, extra = rest
        data = response_data(service, call_id, status, latency_ms, bytes_in, bytes_out, extra)
    elif kind == _ERROR:
        error, elapsed_ms, detail = rest
        data = error_data(service, call_id, error, elapsed_ms, detail, None)
    else:
        raise ValueError(f"not a call record: {record[:1]!r}")
    return Event(
        id=_event_id(call_id, kind),
        request_id=request_id,
        timestamp=moment_of_ns(unix_ns),
        type=_TYPES[kind],
        source=source,
        data=data,
    )


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


class EncodingSink:
    """Any queue as a :class:`RecordSink`: makes the bodies here, then sends them."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def send_records(self, records: Sequence[Record]) -> None:
        bodies = bodies_of(records)
        try:
            self.queue.send(bodies)
        except Exception as error:  # any adapter failure: the caller keeps the bodies
            raise UnsentRecords(f"{type(error).__name__}: {error}", bodies) from error
