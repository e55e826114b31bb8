"""An event as a row of the embedded store's ``events`` table, both ways: the
store writes and reads these rows, and its read models read them back when
they follow the log."""

from __future__ import annotations

from typing import Any

import msgspec

from eventtrail.event import Event

__all__ = ["COLUMNS", "Row", "event_of", "row_of"]

#: The columns of a row, in :data:`Row`'s order.
COLUMNS = "id, request_id, ts, type, source, data"

Row = tuple[str, str, str, str, str, str]
"""``(id, request_id, ts, type, source, data as JSON)``."""

_encode = msgspec.json.Encoder().encode
_decode_data = msgspec.json.Decoder(dict[str, Any]).decode


def row_of(event: Event) -> Row:
    return (
        event.id,
        event.request_id,
        event.timestamp,
        event.type,
        event.source,
        _encode(event.data).decode(),
    )


def event_of(row: Row) -> Event:
    event_id, request_id, ts, type_, source, data = row
    return Event(
        id=event_id,
        request_id=request_id,
        timestamp=ts,
        type=type_,
        source=source,
        data=_decode_data(data),
    )
