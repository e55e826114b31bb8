"""Bad files in the data folder, met by the real ``eventtrail`` command:
one ``error:`` line and a documented exit code, never a traceback, and never
a good message turned into a dead letter.

Exit codes: a data folder that is missing (for a command that only reads),
is a file, or is under a file is a usage error (2); a database file that is
not a database is an error of the files (1). A zero-byte database file is
used as a new, empty database, with a warning line.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
from pathlib import Path

import pytest

from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import encode_event
from tests.cli import run
from tests.contract.store_contract import make_event

pytestmark = pytest.mark.slow

READERS = [
    ["status"],
    ["dlq", "list"],
    ["flow", "some-request"],
    ["events", "--type", "request"],
    ["health"],
]
WRITERS = [["worker", "--drain"], ["purge", "--older-than", "30d"]]


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def random_bytes(path: Path, size: int = 64 * 1024) -> None:
    path.write_bytes(random.Random(str(path)).randbytes(size))


def send_events(data: Path, count: int) -> set[str]:
    events = [make_event() for _ in range(count)]
    with SQLiteQueue(data / "queue.db") as queue:
        queue.send([encode_event(event).decode() for event in events])
    return {event.id for event in events}


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_a_reader_never_creates_a_missing_data_folder(tmp_path: Path, command: list[str]) -> None:
    data = tmp_path / "nothing-here"
    line = one_error_line(run(data, *command, cwd=tmp_path), 2)
    assert f"the data folder {data} does not exist" in line
    assert not data.exists()


@pytest.mark.parametrize("command", READERS + WRITERS + [["send", "-"]], ids=" ".join)
def test_a_data_folder_that_is_a_file_is_one_error_line(tmp_path: Path, command: list[str]) -> None:
    data = tmp_path / "data"
    data.write_text("not a folder")
    event = encode_event(make_event()).decode()
    line = one_error_line(run(data, *command, input=event, cwd=tmp_path), 2)
    assert f"the data folder {data} is a file" in line
    under = one_error_line(run(data / "deeper", *command, input=event, cwd=tmp_path), 2)
    assert f"is under {data}, which is a file" in under
    assert data.read_text() == "not a folder"


def test_a_writer_creates_a_private_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    sent = run(data, "send", "-", input=encode_event(make_event()).decode(), cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert run(data, "worker", "--drain", cwd=tmp_path).returncode == 0
    assert data.stat().st_mode & 0o777 == 0o700
    modes = {path.name: path.stat().st_mode & 0o777 for path in data.iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes
    assert {"queue.db", "events.db"} <= set(modes)


@pytest.mark.parametrize(
    "command", [["status"], ["dlq", "list"], ["worker", "--drain"], ["send", "-"]], ids=" ".join
)
def test_a_corrupt_queue_is_one_error_line(tmp_path: Path, command: list[str]) -> None:
    random_bytes(tmp_path / "queue.db")
    before = (tmp_path / "queue.db").read_bytes()
    line = one_error_line(run(tmp_path, *command, input=encode_event(make_event()).decode()), 1)
    assert f"{tmp_path / 'queue.db'} is not a usable SQLite database" in line
    assert (tmp_path / "queue.db").read_bytes() == before


@pytest.mark.parametrize(
    "command", [["flow", "r"], ["events", "--type", "request"], ["health"]], ids=" ".join
)
def test_a_corrupt_store_is_one_error_line_for_readers(tmp_path: Path, command: list[str]) -> None:
    random_bytes(tmp_path / "events.db")
    line = one_error_line(run(tmp_path, *command), 1)
    assert f"{tmp_path / 'events.db'} is not a usable SQLite database" in line


def test_the_worker_stops_on_a_corrupt_store_and_keeps_every_message(tmp_path: Path) -> None:
    sent = send_events(tmp_path, 500)
    random_bytes(tmp_path / "events.db")
    result = run(tmp_path, "worker", "--drain")
    line = one_error_line(result, 1)
    assert "is not a usable SQLite database" in line
    with SQLiteQueue(tmp_path / "queue.db", read_only=True) as queue:
        assert queue.dead_letters() == []
        assert queue.stats().visible == len(sent)
    # Once the file is moved away, everything is stored, once.
    (tmp_path / "events.db").rename(tmp_path / "events.db.corrupt")
    assert run(tmp_path, "worker", "--drain").returncode == 0
    with SQLiteStore(tmp_path / "events.db", read_only=True) as store:
        assert store.count() == len(sent)
    db = sqlite3.connect(tmp_path / "events.db")
    try:
        assert {row[0] for row in db.execute("SELECT id FROM events")} == sent
    finally:
        db.close()


def test_zero_byte_databases_are_new_ones_and_say_so(tmp_path: Path) -> None:
    (tmp_path / "queue.db").touch()
    (tmp_path / "events.db").touch()
    status = run(tmp_path, "status")
    assert status.returncode == 0, status.stderr
    assert "visible:     0" in status.stdout
    assert "queue.db is an empty file (0 bytes)" in status.stderr
    assert (tmp_path / "queue.db").stat().st_size == 0
    event = make_event()
    assert run(tmp_path, "send", "-", input=encode_event(event).decode()).returncode == 0
    worker = run(tmp_path, "worker", "--drain")
    assert worker.returncode == 0, worker.stderr
    assert "events.db is an empty file (0 bytes): using it as a new, empty database" in worker.stderr
    flow = run(tmp_path, "flow", event.request_id, "--json")
    assert flow.returncode == 0, flow.stderr
    assert event.id in flow.stdout
