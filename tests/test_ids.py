"""Time-ordered ids: unique and ordered within a process, never shared with
a forked child or another process."""

from __future__ import annotations

import os
import uuid

from eventtrail.ids import counter, uuid7, uuid7_str


def test_ids_made_one_after_another_are_uuid7_distinct_and_in_order() -> None:
    made = [uuid7_str() for _ in range(50_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    parsed = uuid.UUID(made[-1])
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert str(parsed) == made[-1]
    assert uuid7().version == 7


def test_a_counter_counts_on_from_a_random_start_within_its_bits() -> None:
    take = counter(8)
    first = take()
    assert [take() for _ in range(3)] == [(first + step) % 256 for step in (1, 2, 3)]
    assert counter(74)() != counter(74)()


def test_a_forked_child_numbers_and_ids_never_continue_its_parents() -> None:
    take = counter(74)
    take()
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(reading)
        os.write(writing, f"{take()} {uuid7_str()}".encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        number, made = pipe.read().split()
    os.waitpid(child, 0)
    # Without starting anew, the child's next number would be the parent's.
    assert int(number) != take()
    assert made != uuid7_str()
