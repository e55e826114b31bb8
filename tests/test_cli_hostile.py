"""Recorded text is hostile input to the operator's terminal: markup, escape
sequences, bidi overrides and huge values, through every command that
prints what was recorded, as tables and as JSON."""

from __future__ import annotations

import json
import tempfile
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from eventtrail.calls import ERROR, REQUEST, RESPONSE, call_error, call_request, call_response
from eventtrail.cli import app
from eventtrail.cli.common import console
from eventtrail.event import InvalidEvent, parse_event
from eventtrail.store import format_moment
from tests.cli import run, seed
from tests.contract.store_contract import T0, make_event

HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}

#: Each one a way recorded text has reached a terminal as something else.
PAYLOADS = {
    "markup close": "[/x]",
    "markup style": "[bold]bold[/bold]",
    "markup link": "[link=http://evil.example]click[/link]",
    "title": "\x1b]0;pwned\x07",
    "clear screen": "\x1b[2J\x1b[H",
    "csi colour": "\x1b[31mred",
    "osc 8 link": "\x1b]8;;http://evil.example\x1b\\text\x1b]8;;\x1b\\",
    "bell": "\x07",
    "bidi override": "\u202egnp.exe",
    "nul": "a\x00b",
    "c1 csi": "\x9b2J",
    "c1 next line": "\x85",
    "line separator": "\u2028",
}
HOSTILE = " ".join(PAYLOADS.values())
REQUEST_ID = "req-" + "[/x]\x1b[2J"
SERVICE = "Svc " + HOSTILE
HUGE_SERVICE = "S" * 10_000
#: A type to give on the command line, which cannot carry NUL.
TYPE = "T [/x] [link=http://evil.example] \x1b]0;pwned\x07 \u202egnp.exe \x9b2J"


def hidden_characters(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in HIDDEN and c not in "\n"]


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("hostile")

    def at(ms: int) -> str:
        return format_moment(T0 + timedelta(milliseconds=ms))

    events = [
        call_request(REQUEST_ID, "c1", SERVICE, "GET", "/a/" + HOSTILE, timestamp=at(0)),
        call_response(
            REQUEST_ID, "c1", SERVICE, status=200, latency_ms=3, bytes_in=0, bytes_out=2, timestamp=at(3)
        ),
        call_request(REQUEST_ID, "c2", HUGE_SERVICE, "GET", "/" + "p" * 100_000, timestamp=at(4)),
        call_error(REQUEST_ID, "c2", HUGE_SERVICE, error=HOSTILE, elapsed_ms=9, timestamp=at(13)),
        make_event(
            request_id=REQUEST_ID,
            at=T0 + timedelta(milliseconds=20),
            type=TYPE,
            source="Gateway",
            data={"none": None, "text": "x", "hostile": HOSTILE},
        ),
    ]
    seed(data_dir, events, [(HOSTILE + " body", "reason " + HOSTILE), ("x" * 200_000, HOSTILE)])
    yield data_dir


def assert_safe(out: str, err: str) -> None:
    for stream in (out, err):
        assert "\x1b" not in stream and "\x07" not in stream
        assert hidden_characters(stream) == []
    assert "Traceback" not in err


def strings_in(document: object) -> Iterator[str]:
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for value in document.values():
            yield from strings_in(value)
    elif isinstance(document, list):
        for value in document:
            yield from strings_in(value)


COMMANDS = {
    "flow": ["flow", REQUEST_ID],
    "events by source": ["events", "--source", "Gateway"],
    "events by type": ["events", "--type", TYPE],
    "dlq list": ["dlq", "list"],
    "dlq show": ["dlq", "show", "1"],
    "health": ["health", "--until", "2020-05-01T20:01:00Z", "--window", "1h"],
}


@pytest.mark.parametrize("width", ["80", "200"])
@pytest.mark.parametrize("command", COMMANDS)
def test_tables_print_hostile_text_literally(hostile_dir: Path, command: str, width: str) -> None:
    result = run(hostile_dir, *COMMANDS[command], env={"COLUMNS": width})
    assert result.returncode == 0, result.stderr
    assert_safe(result.stdout, result.stderr)
    assert "[/x]" in result.stdout and "[link=http://evil.example]" in result.stdout
    if command != "events by source":
        assert "\\x1b]0;pwned\\x07" in result.stdout and "\\u202egnp.exe" in result.stdout
    if command == "flow":
        assert HUGE_SERVICE in result.stdout  # 10,000 characters, whole, on one line
        assert "Svc [/x]" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_json_output_escapes_what_a_terminal_would_obey(hostile_dir: Path, command: str) -> None:
    args = COMMANDS[command]
    if command == "dlq show":
        args = ["dlq", "list"]  # show has no JSON form; list --json carries the same fields
    result = run(hostile_dir, *args, "--json")
    assert result.returncode == 0, result.stderr
    assert_safe(result.stdout, result.stderr)
    # The same text, only escaped.
    assert any(HOSTILE in text for text in strings_in(json.loads(result.stdout)))


def test_the_request_id_in_errors_is_text(hostile_dir: Path) -> None:
    result = run(hostile_dir, "flow", "nope[/x]\x1b]0;t\x07")
    assert result.returncode == 1
    assert_safe(result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "nope[/x]\\x1b]0;t\\x07" in result.stderr


# The property: whatever text every recorded field holds, no command crashes
# and no control character reaches stdout. In process (CliRunner), on real
# SQLite files, so that hundreds of cases stay fast.

key_text = st.text(min_size=1, max_size=40)
any_text = st.text(max_size=200)
runner = CliRunner()


def invoke(data_dir: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--data-dir", data_dir], env={"NO_COLOR": "1"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("width", [80, 200])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from([REQUEST, RESPONSE, ERROR]) | key_text,
    event_id=key_text,
    request_id=key_text,
    source=key_text,
    service=any_text,
    path=any_text,
    error=any_text,
    extra=st.dictionaries(any_text, st.none() | st.integers() | st.floats(allow_nan=False) | any_text),
    body=any_text,
    reason=any_text,
)
def test_no_recorded_text_crashes_a_command_or_reaches_the_terminal_raw(
    width: int,
    kind: str,
    event_id: str,
    request_id: str,
    source: str,
    service: str,
    path: str,
    error: str,
    extra: dict[str, object],
    body: str,
    reason: str,
) -> None:
    unique = uuid.uuid4().hex
    wire = {
        "id": f"{event_id}{unique}",
        "requestId": f"{request_id}{unique}",
        "timestamp": "2020-05-01T20:00:00.123456Z",
        "type": kind,
        "source": source,
        "data": {**extra, "Name": service, "path": path, "error": error, "status": 503, "callId": "c"},
    }
    try:
        event = parse_event(json.dumps(wire))
    except InvalidEvent:
        assume(False)
        return
    with tempfile.TemporaryDirectory() as data_dir:
        seed(Path(data_dir), [event], [(body or " ", reason or " ")])
        previous = console.width
        console.width = width
        try:
            outputs = [
                invoke(data_dir, "flow", event.request_id),
                invoke(data_dir, "flow", event.request_id, "--json"),
                invoke(data_dir, "events", "--type", event.type),
                invoke(data_dir, "events", "--source", event.source, "--json"),
                invoke(data_dir, "dlq", "list"),
                invoke(data_dir, "dlq", "list", "--json"),
                invoke(data_dir, "dlq", "show", "1"),
                invoke(data_dir, "health", "--until", "2020-05-01T20:01:00Z", "--window", "1h"),
            ]
        finally:
            console.width = previous
    for code, stdout in outputs:
        assert code == 0
        assert hidden_characters(stdout) == []
