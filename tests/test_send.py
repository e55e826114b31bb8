"""``eventtrail send`` given hostile input: deep JSON, junk bytes, a byte
order mark, a huge line, an empty file, a directory, a FIFO, a device, a
missing file, empty standard input. Each is one ``error:`` line naming the
file (and the line of NDJSON) and exit code 2, never a traceback, and nothing
is sent: every input is validated before the first message leaves.

The command runs in this process through its real entry point (argument
parsing and the one-line error handling of :func:`eventtrail.cli.main`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventtrail.cli import main
from eventtrail.config import load_settings, open_queue
from eventtrail.event import MAX_DATA_DEPTH, encode_event
from tests.contract.store_contract import make_event


@dataclass(frozen=True)
class Result:
    code: int
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def send(data_dir: Path, *args: str, stdin: bytes = b"", cwd: Path | None = None) -> Result:
    """``eventtrail send ARGS`` in this process, with ``stdin`` as its input."""
    stderr = io.StringIO()
    code = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(sys, "argv", ["eventtrail", "send", *args]))
        stack.enter_context(mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin))))
        stack.enter_context(mock.patch.dict(os.environ, {"EVENTTRAIL_DATA_DIR": str(data_dir)}))
        stack.enter_context(contextlib.redirect_stderr(stderr))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.chdir(cwd or data_dir))
        try:
            main()
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return Result(code, stderr.getvalue())


def queued(data_dir: Path) -> int:
    settings = load_settings({"data_dir": str(data_dir)}, environ={})
    if not settings.queue_path.exists():
        return 0
    with open_queue(settings) as queue:
        return queue.stats().visible


def event_line() -> bytes:
    return encode_event(make_event())


def refused(result: Result, starts: str) -> None:
    """One ``error:`` line starting with ``starts``, exit code 2."""
    assert result.code == 2, result.stderr
    assert len(result.lines) == 1, result.stderr
    assert result.lines[0].startswith(f"error: {starts}"), result.stderr
    assert "Traceback" not in result.stderr


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A fresh folder per example (hypothesis runs many in one test)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


DEEP_ARRAY = st.integers(min_value=MAX_DATA_DEPTH + 1, max_value=20_000).map(lambda n: "[" * n + "]" * n)
DEEP_OBJECT = st.integers(min_value=MAX_DATA_DEPTH + 1, max_value=20_000).map(
    lambda n: '{"a":' * n + "1" + "}" * n
)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deep=st.one_of(DEEP_ARRAY, DEEP_OBJECT), good_lines=st.integers(0, 3), layout=st.sampled_from("nap"))
def test_deep_json_is_one_error_line_naming_file_and_line(deep: str, good_lines: int, layout: str) -> None:
    goods = [event_line().decode() for _ in range(good_lines)]
    if layout == "n":  # NDJSON: the deep value on the line after the good ones
        text = "\n".join([*goods, deep]) + "\n"
        starts = f"deep.json:{good_lines + 1}: " if goods else "deep.json"
    elif layout == "a":  # inside a JSON array of events
        text, starts = "[" + ",".join([*goods, deep]) + "]", "deep.json"
    else:  # in an event's data
        document = json.loads(event_line())
        document["data"] = {"deep": "DEEP"}
        text, starts = json.dumps(document).replace('"DEEP"', deep), "deep.json"
    with workspace() as folder:
        (folder / "deep.json").write_text(text)
        result = send(folder, "deep.json")
        refused(result, starts)
        assert queued(folder) == 0


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    junk=st.binary(max_size=2000).filter(lambda junk: junk.strip(b" \t\r\n")), good_lines=st.integers(0, 2)
)
def test_junk_bytes_are_one_error_line_and_send_nothing(junk: bytes, good_lines: int) -> None:
    content = b"".join(event_line() + b"\n" for _ in range(good_lines)) + junk
    with workspace() as folder:
        (folder / "junk.ndjson").write_bytes(content)
        file = send(folder, "junk.ndjson")
        piped = send(folder, "-", stdin=content)
        refused(file, "junk.ndjson")
        refused(piped, "<stdin>")
        assert queued(folder) == 0


@settings(max_examples=30, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_after_good_events_is_refused_with_its_line(text: str) -> None:
    body = event_line().decode()
    content = f"{body}\n{body}\n{text}\n"
    with workspace() as folder:
        (folder / "text.ndjson").write_text(content, encoding="utf-8", errors="surrogatepass")
        result = send(folder, "text.ndjson")
        if result.code == 0:
            # The text was blank (or itself events): everything was sent.
            assert queued(folder) == sum(1 for line in content.split("\n") if line.strip(" \t\r"))
        else:
            assert result.code == 2 and len(result.lines) == 1, result.stderr
            assert result.lines[0].startswith("error: text.ndjson"), result.stderr
            assert queued(folder) == 0


def test_a_byte_order_mark_is_not_data(tmp_path: Path) -> None:
    (tmp_path / "bom.ndjson").write_bytes(b"\xef\xbb\xbf" + event_line() + b"\n" + event_line() + b"\n")
    result = send(tmp_path, "bom.ndjson")
    assert result.code == 0 and result.lines == ["sent 2 messages"], result.stderr
    assert queued(tmp_path) == 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: (folder / "empty.json").write_bytes(b""), "empty.json: no events in it"),
        (lambda folder: (folder / "blank.json").write_bytes(b" \n\t\n"), "blank.json: no events in it"),
        (lambda folder: (folder / "bom.json").write_bytes(b"\xef\xbb\xbf"), "bom.json: no events in it"),
        (lambda folder: (folder / "empty.json").write_bytes(b"[]"), "empty.json: no events in it"),
        (lambda folder: (folder / "dir.json").mkdir(), "dir.json: cannot read: Is a directory"),
        (lambda folder: None, "missing.json: cannot read: No such file or directory"),
        (
            lambda folder: (folder / "latin1.json").write_bytes(b'{"id": "caf\xe9"}'),
            "latin1.json: not UTF-8 text (byte 11)",
        ),
        (
            lambda folder: (folder / "huge.json").write_bytes(b"x" * 3_000_000),
            "huge.json:1: the body is 3,000,000 bytes, over the limit of 1,048,576 bytes",
        ),
        (
            lambda folder: (folder / "huge.json").write_bytes(event_line() + b"\n" + b"[" * 3_000_000),
            "huge.json:2: the body is 3,000,000 bytes",
        ),
    ],
    ids=[
        "empty",
        "blank",
        "only a bom",
        "empty array",
        "directory",
        "missing",
        "latin-1",
        "huge",
        "huge line 2",
    ],
)
def test_a_hostile_file_is_one_clear_line(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    name = message.split(":", 1)[0]
    make(tmp_path)
    (tmp_path / "good.ndjson").write_bytes(event_line())
    result = send(tmp_path, "good.ndjson", name)
    refused(result, message)
    assert queued(tmp_path) == 0


def test_a_device_is_refused_not_read_for_ever(tmp_path: Path) -> None:
    refused(send(tmp_path, "/dev/zero"), "/dev/zero: cannot read: not a file, a pipe or standard input")


def test_empty_standard_input_says_so(tmp_path: Path) -> None:
    refused(send(tmp_path, "-"), "<stdin>: no events in it")


def test_a_fifo_is_read_to_its_end_like_standard_input(tmp_path: Path) -> None:
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    lines = event_line() + b"\n" + event_line() + b"\n"
    writer = threading.Thread(target=fifo.write_bytes, args=(lines,), daemon=True)
    writer.start()
    result = send(tmp_path, str(fifo))
    writer.join(timeout=10)
    assert result.code == 0 and result.lines == ["sent 2 messages"], result.stderr


def test_skip_leaves_out_the_first_events_and_no_more_than_there_are(tmp_path: Path) -> None:
    (tmp_path / "five.ndjson").write_bytes(b"\n".join(event_line() for _ in range(5)))
    assert send(tmp_path, "--skip", "3", "five.ndjson").lines == ["sent 2 messages"]
    assert queued(tmp_path) == 2
    refused(send(tmp_path, "--skip", "6", "five.ndjson"), "--skip 6: the input holds only 5 messages")
    refused(send(tmp_path, "--skip", "-1", "five.ndjson"), "")
    assert queued(tmp_path) == 2
