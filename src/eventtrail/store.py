"""The store port: where events are kept and how they are read back.

Adapters: :mod:`eventtrail.embedded.store` (a SQLite file) and
:mod:`eventtrail.aws.dynamodb` (an Amazon DynamoDB table). Every adapter keeps
the invariants of the design:

1. two distinct events never overwrite each other, whatever their timestamps;
2. storing the same event twice leaves one copy, reported as ``DUPLICATE``;
   a different event on a stored event's key (request id, timestamp, id) is a
   ``CONFLICT`` and changes nothing stored. Events are compared by
   :func:`canonical`, the same function on every backend. (SQLite also
   reports an id reused under another request or time, which it sees for
   free; DynamoDB stores such an event under its own key.)
3. a request's flow comes back in time order; queries by type or source take a
   time range and a page size and return a cursor for the next page.
"""

from __future__ import annotations

import abc
import base64
import binascii
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

import msgspec

from eventtrail.event import Event
from eventtrail.times import format_moment

__all__ = [
    "DUPLICATE",
    "STORED",
    "AppendResult",
    "AppendStatus",
    "InvalidCursor",
    "Page",
    "Position",
    "Store",
    "StoreError",
    "TransientStoreError",
    "canonical",
    "format_moment",
    "same_event",
]


class StoreError(Exception):
    """The store could not do what was asked."""


class TransientStoreError(StoreError):
    """A failure that may pass (a locked database, throttling): retry later."""


class InvalidCursor(ValueError):
    """A cursor that this store did not hand out, or for another query."""


class AppendStatus(enum.StrEnum):
    STORED = "stored"
    """Newly stored."""
    DUPLICATE = "duplicate"
    """Already stored, identical: a redelivery, nothing written."""
    CONFLICT = "conflict"
    """Another, different event already holds this id; nothing written."""
    REJECTED = "rejected"
    """The backend can never store it (too large for an item, for example)."""
    FAILED = "failed"
    """Not stored this time (throttled, unavailable); worth retrying."""


class AppendResult(msgspec.Struct, frozen=True):
    status: AppendStatus
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """The event is in the store (stored now or before)."""
        return self.status in (AppendStatus.STORED, AppendStatus.DUPLICATE)


STORED = AppendResult(AppendStatus.STORED)
DUPLICATE = AppendResult(AppendStatus.DUPLICATE)


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an event stands in time order: ties on the timestamp are broken
    by the id, so every event has exactly one position."""

    timestamp: str
    id: str

    @classmethod
    def of(cls, event: Event) -> Position:
        return cls(event.timestamp, event.id)

    def to_cursor(self, query_key: str) -> str:
        raw = msgspec.json.encode([query_key, self.timestamp, self.id])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def from_cursor(cls, cursor: str, query_key: str) -> Position:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            key, timestamp, event_id = msgspec.json.decode(raw, type=tuple[str, str, str])
        except (binascii.Error, ValueError, msgspec.DecodeError):
            raise InvalidCursor(f"{cursor!r} is not a cursor from a previous page") from None
        if key != query_key:
            raise InvalidCursor("this cursor belongs to another query (type, source or order)")
        return cls(timestamp, event_id)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of events, and the cursor of the next page (``None`` at the end)."""

    events: list[Event]
    cursor: str | None


_canonical_encode = msgspec.json.Encoder(order="sorted").encode


def _without_negative_zero(value: Any) -> Any:
    if isinstance(value, float):
        return 0.0 if value == 0.0 else value
    if isinstance(value, dict):
        return {key: _without_negative_zero(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_negative_zero(item) for item in value]
    return value


def canonical(event: Event) -> bytes:
    """The one form in which events are compared, on every backend.

    JSON with object keys sorted (their order carries no meaning) and every
    value written in its own type: ``1``, ``1.0``, ``true`` and ``"1"`` all
    differ. The one normalisation is ``-0.0``, written ``0.0``: DynamoDB keeps
    no sign on zero, and an event must compare equal to itself read back.
    """
    encoded = _canonical_encode(event)
    if b"-0.0" not in encoded:
        return encoded
    return _canonical_encode(msgspec.structs.replace(event, data=_without_negative_zero(event.data)))


def same_event(a: Event, b: Event) -> bool:
    """Whether ``b`` is ``a`` delivered again (see :func:`canonical`), rather
    than a different event that claims its key."""
    return a is b or canonical(a) == canonical(b)


def query_key(kind: str, value: str, newest_first: bool) -> str:
    """What a cursor is bound to, so that it is not reused for another query."""
    return f"{kind}:{'desc' if newest_first else 'asc'}:{value}"


class Store(abc.ABC):
    """Events, appended once and read by request, by type and by source."""

    @abc.abstractmethod
    def append(self, events: Sequence[Event]) -> list[AppendResult]:
        """Store ``events``; return one result per event, in order.

        Raises :class:`TransientStoreError` when nothing could be written this
        time (the whole batch may be retried).
        """

    @abc.abstractmethod
    def flow(self, request_id: str) -> list[Event]:
        """All events of one request, in time order."""

    def events(
        self,
        *,
        type: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
        newest_first: bool = False,
    ) -> Page:
        """One page of events of a type or of a source, ``since <= t < until``,
        in time order (or newest first)."""
        if (type is None) == (source is None):
            raise ValueError("give exactly one of type and source")
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        kind, value = ("type", type) if type is not None else ("source", source)
        assert value is not None
        key = query_key(kind, value, newest_first)
        after = Position.from_cursor(cursor, key) if cursor else None
        events = self._events(
            kind,
            value,
            since=format_moment(since) if since else None,
            until=format_moment(until) if until else None,
            after=after,
            limit=limit + 1,
            newest_first=newest_first,
        )
        if len(events) <= limit:
            return Page(events, None)
        del events[limit:]
        return Page(events, Position.of(events[-1]).to_cursor(key))

    @abc.abstractmethod
    def _events(
        self,
        kind: str,
        value: str,
        *,
        since: str | None,
        until: str | None,
        after: Position | None,
        limit: int,
        newest_first: bool,
    ) -> list[Event]:
        """Up to ``limit`` events whose ``kind`` ("type" or "source") equals
        ``value``, with ``since <= timestamp < until``, strictly past ``after``
        in the requested order."""

    def event_fields(
        self, type: str, keys: Sequence[str], *, since: datetime, until: datetime
    ) -> list[tuple[Any, ...]]:
        """For each event of ``type`` with ``since <= timestamp < until``, in
        time order: ``(timestamp, source, *(data[key] for key in keys))``, with
        ``None`` for a missing key.

        What analyses over many events read (service health): adapters may
        override it to read only these fields instead of whole events.
        """
        rows: list[tuple[Any, ...]] = []
        cursor: str | None = None
        while True:
            page = self.events(type=type, since=since, until=until, limit=1000, cursor=cursor)
            for event in page.events:
                data = event.data
                rows.append((event.timestamp, event.source, *(data.get(key) for key in keys)))
            if page.cursor is None:
                return rows
            cursor = page.cursor

    @abc.abstractmethod
    def purge(self, older_than: datetime) -> int:
        """Delete events with a timestamp before ``older_than``; return how
        many went (backends with their own expiry may return 0)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
