from __future__ import annotations

import random
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.queue import QueueError, QueueStats, TransientQueueError
from tests.contract.queue_contract import QueueContract, QueueFactory, receive_all


class TestSQLiteQueue(QueueContract):
    @pytest.fixture
    def make_queue(self, tmp_path: Path) -> QueueFactory:
        made: list[SQLiteQueue] = []

        def make(max_receives: int = 5) -> SQLiteQueue:
            queue = SQLiteQueue(tmp_path / f"queue-{len(made)}.db", max_receives=max_receives)
            made.append(queue)
            return queue

        return make


def test_dead_letter_reason_is_the_last_error(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db", max_receives=2)
    queue.send(["x"])
    for attempt in (1, 2):
        (message,) = queue.receive(1, visibility_timeout=30)
        queue.release([message], delay=0, error=f"database is locked ({attempt})")
    assert queue.receive(1, visibility_timeout=30) == []
    (letter,) = queue.dead_letters()
    assert letter.reason == "database is locked (2)"
    assert letter.receive_count == 2


def test_a_stale_receipt_neither_acknowledges_nor_dead_letters(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    queue.send(["x"])
    (stale,) = queue.receive(1, visibility_timeout=0.05)
    time.sleep(0.1)
    (current,) = queue.receive(1, visibility_timeout=30)
    queue.ack([stale])
    queue.dead_letter(stale, "late verdict")
    assert queue.stats().in_flight == 1
    assert queue.dead_letters() == []
    queue.ack([current])
    assert queue.stats().pending == 0


def test_messages_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with SQLiteQueue(path) as queue:
        ids = queue.send(["kept"])
    with SQLiteQueue(path) as queue:
        (message,) = receive_all(queue, 1)
    assert (message.id, message.body) == (ids[0], "kept")


def test_redriven_message_keeps_its_id(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    (message_id,) = queue.send(["x"])
    (message,) = queue.receive(1, visibility_timeout=30)
    queue.dead_letter(message, "bad")
    queue.redrive([message_id])
    assert queue.send(["y"]) != [message_id]
    (back, _) = sorted(queue.receive(10, visibility_timeout=30), key=lambda m: int(m.id))
    assert back.id == message_id


def test_max_receives_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SQLiteQueue(tmp_path / "queue.db", max_receives=0)


@contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the file's write lock, as a second process would."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_every_call_under_a_held_lock_is_a_transient_queue_error(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    queue = SQLiteQueue(path, busy_timeout_ms=50)
    queue.send(["a", "b", "c"])
    first, second, third = queue.receive(3, visibility_timeout=0.01)
    time.sleep(0.02)
    calls: dict[str, Callable[[], object]] = {
        "send": lambda: queue.send(["d"]),
        "receive": lambda: queue.receive(1, visibility_timeout=30),
        "ack": lambda: queue.ack([first]),
        "release": lambda: queue.release([second], delay=0, error="x"),
        "dead_letter": lambda: queue.dead_letter(third, "x"),
        "redrive": lambda: queue.redrive(),
    }
    with write_lock(path):
        for name, call in calls.items():
            with pytest.raises(TransientQueueError, match="locked by another process") as caught:
                call()
            assert str(path) in str(caught.value), name
        # Readers are not blocked by a writer in WAL mode.
        assert queue.stats().pending == 3
    for call in calls.values():
        call()


def test_a_read_only_queue_answers_while_the_write_lock_is_held(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with SQLiteQueue(path) as writer:
        writer.send(["a", "b"])
        (message,) = writer.receive(1, visibility_timeout=30)
        writer.dead_letter(message, "poison")
    with write_lock(path), SQLiteQueue(path, read_only=True, busy_timeout_ms=50) as reader:
        assert reader.stats() == QueueStats(visible=1, in_flight=0, dead=1)
        assert [letter.reason for letter in reader.dead_letters()] == ["poison"]
    with SQLiteQueue(path, read_only=True) as reader, pytest.raises(QueueError, match="readonly"):
        reader.send(["c"])


def test_a_read_only_queue_never_creates_a_file(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with SQLiteQueue(path, read_only=True) as queue:
        assert queue.stats() == QueueStats(visible=0, in_flight=0, dead=0)
        assert queue.dead_letters() == []
    assert list(tmp_path.iterdir()) == []


def test_a_zero_byte_file_is_a_new_queue_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "queue.db"
    path.touch()
    with SQLiteQueue(path, read_only=True) as reader:
        assert reader.stats().pending == 0
    assert "empty file (0 bytes)" in caplog.text
    caplog.clear()
    with SQLiteQueue(path) as queue:
        queue.send(["a"])
    assert "empty file (0 bytes): using it as a new, empty database" in caplog.text
    with SQLiteQueue(path) as queue:
        assert queue.stats().visible == 1


def test_a_corrupt_file_is_a_queue_error_that_will_not_pass(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    path.write_bytes(random.Random(7).randbytes(64 * 1024))
    for read_only in (False, True):
        with pytest.raises(QueueError, match="not a usable SQLite database") as caught:
            SQLiteQueue(path, read_only=read_only)
        assert not isinstance(caught.value, TransientQueueError)


@pytest.mark.slow
def test_an_emptied_queue_gives_its_pages_back(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with SQLiteQueue(path) as queue:
        for _ in range(20):
            queue.send(["x" * 300] * 1000)
        full = path.stat().st_size + Path(f"{path}-wal").stat().st_size
        while batch := queue.receive(1000, visibility_timeout=30):
            queue.ack(batch)
        assert queue.stats().pending == 0
    # Closing checkpoints the WAL into the file and removes it. Up to 256
    # free pages (1 MiB) may stay: fewer are not worth a vacuum.
    assert full > 6_000_000
    assert path.stat().st_size < 1_300_000


def test_a_file_made_without_auto_vacuum_switches_once_empty(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    old = sqlite3.connect(path)
    old.executescript(
        "PRAGMA auto_vacuum = NONE; CREATE TABLE filler (x); INSERT INTO filler VALUES (zeroblob(4000000));"
    )
    old.execute("DROP TABLE filler")
    old.commit()
    old.close()
    assert path.stat().st_size > 4_000_000
    with SQLiteQueue(path) as queue:
        queue.send(["a"])
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL
    finally:
        check.close()
    assert path.stat().st_size < 100_000


def test_files_are_private_to_their_owner(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    with SQLiteQueue(folder / "queue.db") as queue:
        queue.send(["secret"])
        queue.receive(1, visibility_timeout=30)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert modes == {"queue.db": 0o600, "queue.db-wal": 0o600, "queue.db-shm": 0o600}


def test_receive_counts_what_it_moves_to_the_dead_letters(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db", max_receives=1)
    queue.send(["a", "b", "c"])
    assert len(queue.receive(3, visibility_timeout=0.01)) == 3
    time.sleep(0.02)
    assert queue.receive(3, visibility_timeout=30) == []
    assert queue.exhausted == 3
    assert queue.stats().dead == 3


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(st.text(st.characters(exclude_categories=())), min_size=1, max_size=20))
def test_any_text_round_trips_and_readers_see_what_writers_wrote(tmp_path: Path, bodies: list[str]) -> None:
    path = tmp_path / f"queue-{uuid.uuid4().hex}.db"
    with SQLiteQueue(path) as queue:
        try:
            ids = queue.send(bodies)
        except QueueError as error:
            # Lone surrogates are not Unicode scalar values: not storable text.
            assert "not valid Unicode text" in str(error)
            assert any("\ud800" <= c <= "\udfff" for body in bodies for c in body)
            assert queue.stats().pending == 0
            return
        with SQLiteQueue(path, read_only=True) as reader:
            assert reader.stats() == queue.stats() == QueueStats(visible=len(bodies), in_flight=0, dead=0)
        received = queue.receive(len(bodies), visibility_timeout=30)
        assert [m.body for m in received] == bodies and [m.id for m in received] == ids
        queue.ack(received)
        assert queue.stats().pending == 0


def test_opening_an_existing_queue_takes_no_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    SQLiteQueue(path).close()
    # As a file made before auto_vacuum was used, which the next open would switch.
    switch = sqlite3.connect(path)
    switch.executescript("PRAGMA auto_vacuum = NONE; VACUUM;")
    switch.close()
    with write_lock(path):
        started = time.monotonic()
        with SQLiteQueue(path) as queue:
            assert queue.stats().pending == 0
        # The busy timeout is 10 s: nothing waited for the lock.
        assert time.monotonic() - started < 2
    with SQLiteQueue(path) as queue:
        assert queue._db.execute("PRAGMA auto_vacuum").fetchone() == (2,)
