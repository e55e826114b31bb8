"""Events as DynamoDB items (the low-level attribute-value form) and back.

``Data`` is a typed map, so numbers stay numbers in the table. DynamoDB numbers
carry no int/float distinction, so the item also records (in ``DataFloats``,
only when there are any) where ``data`` held a float with an integral value
such as ``3.0``: every other number comes back as an int when it is integral
and as a float when it is not, which keeps the JSON types exact. Floats are
written from their shortest round-trip text (``repr``), never through binary
``Decimal(x)``, so no precision is lost. An event read back therefore has the
canonical form (:func:`eventtrail.store.canonical`) of the event written,
which is what tells a redelivery from a conflict; the one thing DynamoDB
drops, the sign of a zero, the canonical form ignores.

:func:`item_size` follows DynamoDB's own item-size rules, rounding up where
they are approximate, so an item it accepts is never refused for its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from eventtrail.aws.schema import TABLE, shard_of
from eventtrail.event import Event

__all__ = [
    "MAX_ITEM_BYTES",
    "MAX_SORT_KEY_BYTES",
    "ItemError",
    "event_from_item",
    "item_key",
    "item_of",
    "item_size",
]

#: DynamoDB's item size limit (400 KB).
MAX_ITEM_BYTES = 400 * 1024
#: DynamoDB's limits on key attribute values.
MAX_SORT_KEY_BYTES = 1024
MAX_PARTITION_KEY_BYTES = 2048

# DynamoDB numbers: up to 38 significant digits, magnitude 1E-130 to 9.99..E+125.
_MAX_DIGITS = 38
_MIN_EXPONENT = -130
_MAX_EXPONENT = 125

AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]
_Path = tuple[str | int, ...]


class ItemError(ValueError):
    """An event that DynamoDB can never hold as an item (the reason says why)."""


def _number(text: str, path: _Path) -> str:
    """Check that a number fits DynamoDB's range; return its wire text."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ItemError(f"data{_where(path)}: {text} is not a number") from None
    if not value.is_finite():
        raise ItemError(f"data{_where(path)}: {text} is not a finite number")
    if value:
        digits = len(value.normalize().as_tuple().digits)
        if digits > _MAX_DIGITS or not _MIN_EXPONENT <= value.adjusted() <= _MAX_EXPONENT:
            raise ItemError(
                f"data{_where(path)}: {text} is outside DynamoDB's number range"
                f" (38 significant digits, magnitude 1e-130 to 1e126)"
            )
    return str(value)


def _where(path: _Path) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)


def _value(value: Any, path: _Path, floats: list[_Path]) -> AttributeValue:
    # bool first: it is a subclass of int.
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, int):
        return {"N": _number(str(value), path)}
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ItemError(f"data{_where(path)}: {value} is not a finite number")
        if value.is_integer():
            floats.append(path)
        return {"N": _number(repr(value), path)}
    if isinstance(value, dict):
        return {"M": {str(key): _value(item, (*path, str(key)), floats) for key, item in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [_value(item, (*path, index), floats) for index, item in enumerate(value)]}
    raise ItemError(f"data{_where(path)}: a {type(value).__name__} is not a JSON value")


def item_key(request_id: str, timestamp: str, event_id: str) -> tuple[str, str]:
    """The table key (partition, sort) of an event."""
    return request_id, TABLE.sort_key_of(timestamp, event_id)


def item_of(event: Event, *, shards: int, expires_at: int | None = None) -> Item:
    """The item of ``event``; raises :class:`ItemError` if DynamoDB cannot hold it."""
    partition, sort = item_key(event.request_id, event.timestamp, event.id)
    if len(sort.encode()) > MAX_SORT_KEY_BYTES:
        raise ItemError(f"the sort key (timestamp#id) is over DynamoDB's {MAX_SORT_KEY_BYTES} bytes")
    shard = shard_of(event.id, shards)
    floats: list[_Path] = []
    item: Item = {
        TABLE.partition_key: {"S": partition},
        TABLE.sort_key: {"S": sort},
        TABLE.timestamp: {"S": event.timestamp},
        TABLE.id: {"S": event.id},
        TABLE.type: {"S": event.type},
        TABLE.source: {"S": event.source},
        TABLE.data: _value(event.data, (), floats),
        TABLE.by_type.partition_key: {"S": f"{event.type}#{shard}"},
        TABLE.by_source.partition_key: {"S": f"{event.source}#{shard}"},
    }
    if floats:
        item[TABLE.float_paths] = {"S": msgspec.json.encode(floats).decode()}
    if expires_at is not None:
        item[TABLE.ttl] = {"N": str(expires_at)}
    size = item_size(item)
    if size > MAX_ITEM_BYTES:
        raise ItemError(
            f"the event is {size:,} bytes as a DynamoDB item, over the item limit of {MAX_ITEM_BYTES:,} bytes"
        )
    return item


def _size(value: AttributeValue) -> int:
    ((kind, content),) = value.items()
    if kind == "S":
        return len(content.encode("utf-8", "surrogatepass"))
    if kind == "N":
        # About one byte per two significant digits plus one; rounded up.
        return min(21, len(content) // 2 + 2)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(1 + len(key.encode()) + _size(item) for key, item in content.items())
    if kind == "L":
        return 3 + sum(1 + _size(item) for item in content)
    raise ValueError(f"unexpected attribute type {kind}")


def item_size(item: Item) -> int:
    """The size DynamoDB counts for ``item`` (names plus values), rounded up."""
    return sum(len(name.encode()) + _size(value) for name, value in item.items())


def _number_from(text: str, path: _Path, floats: frozenset[_Path]) -> int | float:
    value = Decimal(text)
    if value == value.to_integral_value() and path not in floats:
        return int(value)
    return float(text)


def _python(value: AttributeValue, path: _Path, floats: frozenset[_Path]) -> Any:
    ((kind, content),) = value.items()
    if kind == "S":
        return content
    if kind == "N":
        return _number_from(content, path, floats)
    if kind == "BOOL":
        return bool(content)
    if kind == "NULL":
        return None
    if kind == "M":
        return {key: _python(item, (*path, key), floats) for key, item in content.items()}
    if kind == "L":
        return [_python(item, (*path, index), floats) for index, item in enumerate(content)]
    raise ValueError(f"unexpected attribute type {kind} in Data")


def _paths(text: str | None) -> frozenset[_Path]:
    if not text:
        return frozenset()
    paths: Iterable[list[str | int]] = msgspec.json.decode(text, type=list[list[str | int]])
    return frozenset(tuple(path) for path in paths)


def event_from_item(item: Item) -> Event:
    """The event an item holds."""
    floats = _paths(item.get(TABLE.float_paths, {}).get("S"))
    data = _python(item[TABLE.data], (), floats) if TABLE.data in item else {}
    return Event(
        id=item[TABLE.id]["S"],
        request_id=item[TABLE.partition_key]["S"],
        timestamp=item[TABLE.timestamp]["S"],
        type=item[TABLE.type]["S"],
        source=item[TABLE.source]["S"],
        data=data,
    )
