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

Records travel packed (:func:`pack`): the same bytes are written to the
publisher's journal and sent to the queue's process, so they are serialised
once. A body larger than the queue takes is never sent: it is refused here,
reported to the caller (:data:`Refused`), and the rest of its batch goes on.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from eventtrail.calls import (
    ERROR,
    REQUEST,
    RESPONSE,
    error_data,
    request_data,
    response_data,
)
from eventtrail.event import DEFAULT_MAX_BODY_BYTES, Event, encode_event, encode_new_event
from eventtrail.ids import counter, uuid_str
from eventtrail.queue import BodyTooLarge, PartialSend, Queue, QueueError
from eventtrail.times import format_unix_ns

__all__ = [
    "Call",
    "EncodingSink",
    "Record",
    "RecordSink",
    "Refused",
    "UnsentRecords",
    "bodies_of",
    "body_size",
    "call_id_of",
    "encoded",
    "error_record",
    "new_call",
    "pack",
    "request_record",
    "response_record",
    "send_bodies",
    "unpack",
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
_next_number = counter(_NUMBER_BITS)


def new_call(unix_ns: int) -> Call:
    """A call starting at ``unix_ns``."""
    return ((unix_ns // 1_000_000) << _NUMBER_BITS) | _next_number()


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


def _body(record: Record) -> str:
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
    return encode_new_event(
        _event_id(call_id, kind), request_id, format_unix_ns(unix_ns), _TYPES[kind], source, data
    ).decode()


def bodies_of(records: Iterable[Record]) -> list[str]:
    """The message body of each record's event, in order."""
    return [record[1] if record[0] == _ENCODED else _body(record) for record in records]


def pack(records: Sequence[Record]) -> bytes:
    """``records`` as bytes (a pickle of plain values: tuples, numbers, strings, dicts)."""
    return pickle.dumps(list(records), protocol=pickle.HIGHEST_PROTOCOL)


class _PlainUnpickler(pickle.Unpickler):
    # Packed records hold only built-in values; a journal file altered to
    # name a class or function is refused instead of running its code.
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"not a packed record: it names {module}.{name}")


def unpack(packed: bytes) -> list[Record]:
    """The records of :func:`pack`; raises ``ValueError`` for anything else."""
    try:
        records = _PlainUnpickler(io.BytesIO(packed)).load()
    except Exception as error:  # noqa: BLE001 - any way bytes are not a pack is one error
        raise ValueError(f"not packed records: {type(error).__name__}: {error}") from None
    if not isinstance(records, list) or not all(isinstance(record, tuple) for record in records):
        raise ValueError("not packed records: not a list of tuples")
    return records


#: A body the queue cannot take for its size: its event id and its size in bytes.
Refused = tuple[str, int]


def body_size(body: str) -> int:
    """The body's size in bytes, as the queue counts it (UTF-8)."""
    return len(body.encode("utf-8", "surrogatepass"))


def _event_id_in(body: str) -> str:
    try:
        found = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return "(not JSON)"
    event_id = found.get("id") if isinstance(found, dict) else None
    return event_id if isinstance(event_id, str) else "(no id)"


def send_bodies(queue: Queue, bodies: Sequence[str], max_body_bytes: int) -> list[Refused]:
    """Send ``bodies`` but those larger than ``max_body_bytes`` or refused by
    the queue for their size; return those. Raises :class:`UnsentRecords`
    with exactly the bodies the queue did not take when it failed."""
    refused: list[Refused] = []
    fitting: list[str] = []
    for body in bodies:
        # A character is at most 4 bytes: most bodies need no encoding to be measured.
        if len(body) * 4 <= max_body_bytes or (size := body_size(body)) <= max_body_bytes:
            fitting.append(body)
        else:
            refused.append((_event_id_in(body), size))
    if not fitting:
        return refused
    try:
        queue.send(fitting)
    except BodyTooLarge as error:
        refused += [(_event_id_in(fitting[index]), body_size(fitting[index])) for index in error.indexes]
    except PartialSend as error:
        unsent = [body for body, found in zip(fitting, error.ids, strict=False) if found is None]
        raise UnsentRecords(f"{type(error).__name__}: {error}", unsent, refused) from error
    except Exception as error:  # any adapter failure: the caller keeps the bodies
        raise UnsentRecords(f"{type(error).__name__}: {error}", fitting, refused) from error
    return refused


class UnsentRecords(QueueError):
    """The records' bodies were made, but the queue did not take ``bodies``
    (the others went, but those in ``refused``, too large to send)."""

    def __init__(self, message: str, bodies: list[str], refused: Sequence[Refused] = ()) -> None:
        super().__init__(message)
        self.bodies = bodies
        self.refused = list(refused)


@runtime_checkable
class RecordSink(Protocol):
    """A queue that takes packed records and makes their bodies itself."""

    def send_packed(self, packs: Sequence[bytes]) -> list[Refused]:
        """Send the events of the records in ``packs`` (see :func:`pack`);
        return the bodies refused for their size (the rest went). Raise
        :class:`UnsentRecords` (with the bodies not sent) when the queue
        failed, any other error when even the bodies could not be made."""

    def send_batches(self, batches: Sequence[Sequence[bytes]]) -> list[Refused]:
        """:meth:`send_packed` for each batch of packs in turn (one queue send
        each), in one call. Every body is made before the first send, so an
        error other than :class:`UnsentRecords` means nothing was sent; an
        :class:`UnsentRecords` holds the bodies of the batch that failed that
        the queue did not take and those of every later batch."""


class EncodingSink:
    """Any queue as a :class:`RecordSink`: makes the bodies here, then sends them."""

    def __init__(self, queue: Queue, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.queue = queue
        self.max_body_bytes = max_body_bytes

    def send_packed(self, packs: Sequence[bytes]) -> list[Refused]:
        return self.send_batches([packs])

    def send_batches(self, batches: Sequence[Sequence[bytes]]) -> list[Refused]:
        made = [bodies_of([record for packed in packs for record in unpack(packed)]) for packs in batches]
        refused: list[Refused] = []
        for index, bodies in enumerate(made):
            try:
                refused += send_bodies(self.queue, bodies, self.max_body_bytes)
            except UnsentRecords as error:
                later = [body for batch in made[index + 1 :] for body in batch]
                raise UnsentRecords(str(error), error.bodies + later, refused + error.refused) from error
        return refused

    def send_records(self, records: Sequence[Record]) -> list[Refused]:
        return send_bodies(self.queue, bodies_of(records), self.max_body_bytes)
