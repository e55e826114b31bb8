"""Time-ordered identifiers (UUID version 7, RFC 9562).

eventtrail makes its own ids time-ordered so that index inserts land at the
right edge of the B-tree instead of scattering over it (about three times the
ingest rate at a million rows; see docs/benchmarks.md).

The bits after the time count from a random start (seeded from the OS at
start-up and again in a forked child), not from ``os.urandom``: an id must
be unique, not unguessable, and a system call per id cost the gateway 5 to
8 µs of CPU per proxied call under load.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import time
import uuid
from collections.abc import Iterator

__all__ = ["derived_uuid7_str", "uuid7", "uuid7_str", "uuid_str"]

# A UUIDv7 has 74 bits that are neither time, version nor variant: this
# process's ids number them, from a random start (RFC 9562 6.2, method 2: a
# monotonic random), so that the ids of two processes never meet and those
# of one sort in the order they were made.
_NUMBER_BITS = 74
_NUMBER_MASK = (1 << _NUMBER_BITS) - 1
_RAND_B_MASK = (1 << 62) - 1
_numbers: Iterator[int]


def _restart_numbers() -> None:
    global _numbers
    # next() on a count is atomic: no lock between threads. A forked child starts anew.
    _numbers = itertools.count(random.getrandbits(_NUMBER_BITS))


_restart_numbers()
os.register_at_fork(after_in_child=_restart_numbers)


def _uuid7_int() -> int:
    number = next(_numbers) & _NUMBER_MASK
    unix_ms = time.time_ns() // 1_000_000
    return (unix_ms << 80) | (0x7 << 76) | ((number >> 62) << 64) | (0b10 << 62) | (number & _RAND_B_MASK)


def uuid7() -> uuid.UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, then 74 bits that number
    this process's ids from a random start. Ids made in the same millisecond
    by one process sort in the order they were made."""
    return uuid.UUID(int=_uuid7_int())


def uuid7_str() -> str:
    """:func:`uuid7` in its canonical string form (formatted directly: a
    third of the cost of building a ``uuid.UUID`` and printing it)."""
    return uuid_str(_uuid7_int())


def uuid_str(value: int) -> str:
    """A 128-bit UUID as the canonical ``8-4-4-4-12`` hex string."""
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def derived_uuid7_str(unix_ms: int, key: bytes, sequence: int = 0) -> str:
    """A UUIDv7 for ``unix_ms`` whose other bits are ``sequence`` (12 bits)
    and a hash of ``key`` (62 bits).

    The same key always gives the same id, so an event made again from the
    same source (a log line read twice, a span exported twice) lands on its
    stored copy. Like :func:`uuid7` it sorts by time, which keeps index
    inserts at the right edge of the B-tree; within one millisecond, the
    ids of one key sort by ``sequence`` (a call's request before its
    response, as the store orders ties by id).
    """
    if not 0 <= sequence <= 0xFFF:
        raise ValueError("sequence must be between 0 and 4095")
    rand_b = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 2
    ms = max(0, min(unix_ms, (1 << 48) - 1))
    return uuid_str((ms << 80) | (0x7 << 76) | (sequence << 64) | (0b10 << 62) | rand_b)
