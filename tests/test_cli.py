"""The CLI end to end, through real processes and real SQLite files."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from eventtrail.calls import call_request, call_response
from eventtrail.cli.common import UsageError
from eventtrail.cli.dlq import resolve_dead_letters
from eventtrail.event import Event, encode_event
from eventtrail.queue import DeadLetter
from eventtrail.store import format_moment
from tests.aws.conftest import Aws
from tests.aws.test_contracts import make_sqs_queue
from tests.cli import run, seed
from tests.contract.queue_contract import receive_all
from tests.contract.store_contract import T0, make_event
from tests.faults.conftest import LockHolder
from tests.servers import moto_server
from tests.test_event import ARTICLE_MESSAGE


def ndjson(*events: object) -> str:
    return "".join(encode_event(e).decode() + "\n" for e in events)  # type: ignore[arg-type]


def test_send_worker_flow_with_a_poison_message_in_the_batch(tmp_path: Path) -> None:
    (tmp_path / "message.json").write_bytes(ARTICLE_MESSAGE)
    request_id = "677afffc-373e-42f0-8363-f24bc675bcf6"
    later = make_event(
        request_id=request_id,
        at=T0 + timedelta(milliseconds=12),
        type="MICROSERVICE_RESPONSE",
        data={"Name": "Microservice A", "status": 200},
    )
    (tmp_path / "more.ndjson").write_text(ndjson(later))
    (tmp_path / "poison.json").write_text('{"id": "p", "requestId": "r"}')

    sent = run(tmp_path, "send", "message.json", "more.ndjson")
    assert sent.returncode == 0, sent.stderr
    assert "sent 2 messages" in sent.stderr
    poison = run(tmp_path, "send", "--raw", "poison.json")
    assert poison.returncode == 0, poison.stderr

    worker = run(tmp_path, "worker", "--drain", "--batch-size", "10")
    assert worker.returncode == 0, worker.stderr
    assert "3 received: 2 stored, 0 to retry, 1 dead-lettered" in worker.stderr

    flow = run(tmp_path, "flow", request_id, "--json")
    assert flow.returncode == 0, flow.stderr
    events = json.loads(flow.stdout)
    assert [e["type"] for e in events] == ["MICROSERVICE_REQUEST", "MICROSERVICE_RESPONSE"]
    assert events[0] == {**json.loads(ARTICLE_MESSAGE), "timestamp": "2020-05-01T20:00:00.000000Z"}
    assert events[1]["data"] == {"Name": "Microservice A", "status": 200}

    letters = json.loads(run(tmp_path, "dlq", "list", "--json").stdout)
    assert [letter["body"] for letter in letters] == ['{"id": "p", "requestId": "r"}']
    assert "required field is missing" in letters[0]["reason"]

    shown = run(tmp_path, "dlq", "show", letters[0]["id"])
    assert shown.returncode == 0
    assert "required field is missing" in shown.stdout and '{"id": "p"' in shown.stdout

    table = run(tmp_path, "flow", request_id)
    assert table.returncode == 0
    assert "Microservice A" in table.stdout and "→ request" in table.stdout and "2 events" in table.stdout


def test_a_bad_event_sends_nothing_and_names_file_line_and_field(tmp_path: Path) -> None:
    good = ndjson(make_event(), make_event())
    (tmp_path / "ok.ndjson").write_text(good)
    (tmp_path / "bad.ndjson").write_text(
        good + '{"id": "x", "requestId": "r", "timestamp": "soon", "type": "t", "source": "s"}\n'
    )
    result = run(tmp_path, "send", "ok.ndjson", "bad.ndjson")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: bad.ndjson:3: field `timestamp`:")
    assert "Traceback" not in result.stderr
    status = run(tmp_path, "status")
    assert "visible:     0" in status.stdout


def test_send_reads_stdin_and_json_arrays(tmp_path: Path) -> None:
    events = [make_event(), make_event()]
    array = "[" + ",".join(encode_event(e).decode() for e in events) + "]"
    assert run(tmp_path, "send", "-", input=array).returncode == 0
    pretty = json.dumps(json.loads(encode_event(make_event())), indent=2)
    assert run(tmp_path, "send", "-", input=pretty).returncode == 0
    assert "visible:     3" in run(tmp_path, "status").stdout


def test_events_pages_with_a_cursor(tmp_path: Path) -> None:
    events = [make_event(type="PAGED", at=T0 + timedelta(seconds=n)) for n in range(5)]
    run(tmp_path, "send", "-", input=ndjson(*events))
    run(tmp_path, "worker", "--drain", "-q")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        args = ["events", "--type", "PAGED", "--limit", "2", "--json", "--since", "2020-05-01T20:00:00Z"]
        page = json.loads(run(tmp_path, *args, *(["--cursor", cursor] if cursor else [])).stdout)
        seen += [e["id"] for e in page["events"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert seen == [e.id for e in events]
    window = json.loads(
        run(
            tmp_path,
            "events",
            "--type",
            "PAGED",
            "--json",
            "--since",
            "2020-05-01T20:00:01Z",
            "--until",
            "2020-05-01T20:00:03Z",
        ).stdout
    )
    assert [e["id"] for e in window["events"]] == [e.id for e in events[1:3]]


def test_redrive_brings_a_dead_letter_back(tmp_path: Path) -> None:
    (tmp_path / "late.json").write_text("not an event yet")
    run(tmp_path, "send", "--raw", "late.json")
    run(tmp_path, "worker", "--drain", "-q")
    (letter,) = json.loads(run(tmp_path, "dlq", "list", "--json").stdout)
    redriven = run(tmp_path, "dlq", "redrive", letter["id"])
    assert redriven.returncode == 0 and "redrove 1 message" in redriven.stderr
    assert "visible:     1" in run(tmp_path, "status").stdout
    assert run(tmp_path, "dlq", "redrive", "--all").stderr.strip() == "redrove 0 messages"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["events"], {}, "give exactly one of --type and --source"),
        (["events", "--type", "t", "--limit", "0"], {}, "Invalid value for '--limit'"),
        (["events", "--type", "t", "--since", "last tuesday"], {}, "--since: 'last tuesday' is neither"),
        (["events", "--type", "t", "--cursor", "garbage"], {}, "is not a cursor"),
        (
            ["status"],
            {"EVENTTRAIL_BACKEND": "azure"},
            "EVENTTRAIL_BACKEND: invalid enum value 'azure'; expected one of local, aws",
        ),
        (
            ["worker", "--drain"],
            {"EVENTTRAIL_MAX_RECEIVES": "many"},
            "EVENTTRAIL_MAX_RECEIVES: expected `int`",
        ),
        (["send", "missing.json"], {}, "missing.json: cannot read"),
        (["dlq", "show", "12345"], {}, "no dead letter has the id '12345'"),
        (["dlq", "redrive"], {}, "give dead letter ids or --all"),
        (["purge"], {}, "give --older-than"),
        (["purge", "--older-than", "soon"], {}, "is not a duration"),
        (["no-such-command"], {}, "No such command"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = run(tmp_path, *args, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_config_file_sets_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "eventtrail.toml").write_text("max_receives = 0\n")
    result = run(tmp_path, "status")
    assert result.returncode == 2
    assert "eventtrail.toml: max_receives: expected `int` >= 1" in result.stderr
    (tmp_path / "eventtrail.toml").write_text('data_dir = "elsewhere"\nmax_receive = 3\n')
    result = run(tmp_path, "status")
    assert result.returncode == 2 and "unknown setting max_receive" in result.stderr


def test_purge_deletes_old_events(tmp_path: Path) -> None:
    old = make_event()
    run(tmp_path, "send", "-", input=ndjson(old))
    run(tmp_path, "worker", "--drain", "-q")
    result = run(tmp_path, "purge", "--older-than", "365d")
    assert result.returncode == 0 and "purged 1 event older than" in result.stderr
    assert json.loads(run(tmp_path, "flow", old.request_id, "--json").stdout) == []


def test_help_explains_every_command(tmp_path: Path) -> None:
    result = run(tmp_path, "--help")
    assert result.returncode == 0
    for command in ("send", "flow", "events", "worker", "dlq", "demo", "status", "purge"):
        assert command in result.stdout


# What the CLI prints: widths, errors that say what to do, ids by prefix.


def article_events(request_id: str = "677afffc-373e-42f0-8363-f24bc675bcf6") -> list[Event]:
    def at(ms: int) -> str:
        return format_moment(T0 + timedelta(milliseconds=ms))

    return [
        call_request(request_id, "c1", "Microservice A", "GET", "/a/orders/42", timestamp=at(0)),
        call_request(request_id, "c2", "Microservice B", "GET", "/b/stock/42", timestamp=at(2)),
        call_response(
            request_id,
            "c2",
            "Microservice B",
            status=503,
            latency_ms=118,
            bytes_in=0,
            bytes_out=9,
            timestamp=at(120),
        ),
        call_response(
            request_id,
            "c1",
            "Microservice A",
            status=200,
            latency_ms=130,
            bytes_in=2,
            bytes_out=99,
            timestamp=at(130),
        ),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("width", ["80", "200"])
def test_output_fits_the_terminal_without_cutting_ids_services_or_timestamps(
    tmp_path: Path, width: str
) -> None:
    events = article_events()
    seed(tmp_path, events, [("not an event", "field `timestamp`: 'soon' is not ISO 8601")] * 2)
    env = {"COLUMNS": width}
    flow = run(tmp_path, "flow", events[0].request_id, env=env)
    assert flow.returncode == 0, flow.stderr
    listing = run(tmp_path, "events", "--source", "Gateway", env=env)
    letters = run(tmp_path, "dlq", "list", env=env)
    health = run(tmp_path, "health", "--until", "2020-05-01T20:05:00Z", "--window", "10m", env=env)
    for result in (flow, listing, letters, health):
        assert result.returncode == 0, result.stderr
        assert all(len(line.rstrip()) <= int(width) for line in result.stdout.splitlines())
        assert "…" not in result.stdout
    for service in ("Microservice A", "Microservice B"):
        assert service in flow.stdout and service in health.stdout and service in listing.stdout
    assert events[0].request_id in flow.stdout
    for event in events:
        assert event.timestamp in listing.stdout and event.request_id in listing.stdout
    assert '"method":"GET"' in listing.stdout and "None" not in listing.stdout
    for letter_id in ("1", "2"):
        assert any(line.split()[0] == letter_id for line in letters.stdout.splitlines() if line.strip())


def test_the_next_page_is_one_line_holding_the_whole_command(tmp_path: Path) -> None:
    events = [make_event(type="PAGED", at=T0 + timedelta(seconds=n)) for n in range(3)]
    seed(tmp_path, events)
    first = run(
        tmp_path, "events", "--type", "PAGED", "--since", "2020-05-01", "--limit", "2", env={"COLUMNS": "40"}
    )
    assert first.returncode == 0, first.stderr
    (hint,) = [line for line in first.stderr.splitlines() if line.startswith("next page: ")]
    words = shlex.split(hint.removeprefix("next page: "))
    assert words[:2] == ["eventtrail", "events"] and "--cursor" in words
    assert words[words.index("--since") + 1] == "2020-05-01T00:00:00+00:00"
    second = run(tmp_path, *words[1:], "--json")
    assert second.returncode == 0, second.stderr
    assert [e["id"] for e in json.loads(second.stdout)["events"]] == [events[2].id]


def test_flow_of_an_unknown_request_says_whether_the_worker_has_work(tmp_path: Path) -> None:
    assert run(tmp_path, "send", "-", input=ndjson(make_event(request_id="later"))).returncode == 0
    waiting = run(tmp_path, "flow", "later")
    assert waiting.returncode == 1
    assert waiting.stderr == (
        "error: no events for request 'later' yet; 1 message is still queued:"
        " run `eventtrail worker --drain` to store them\n"
    )
    assert run(tmp_path, "worker", "--drain", "-q").returncode == 0
    assert run(tmp_path, "flow", "later").returncode == 0
    unknown = run(tmp_path, "flow", "never")
    assert unknown.returncode == 1
    assert unknown.stderr == "error: no events for request 'never': no such request has been stored\n"


@pytest.mark.slow
def test_dead_letters_are_named_by_a_unique_prefix(tmp_path: Path) -> None:
    ids = seed(tmp_path, dead_letters=[(f"body {n}", f"reason {n}") for n in range(1, 13)])
    assert ids == [str(n) for n in range(1, 13)]
    # A whole id wins over the longer ids it starts.
    assert "body 1\n" in run(tmp_path, "dlq", "show", "1").stdout
    assert run(tmp_path, "dlq", "redrive", "1").returncode == 0
    ambiguous = run(tmp_path, "dlq", "show", "1")
    assert ambiguous.returncode == 2
    lines = ambiguous.stderr.splitlines()
    assert lines[0] == "error: the id prefix '1' is ambiguous: 3 dead letters match; give more of the id"
    assert [line.split()[0] for line in lines[1:]] == ["10", "11", "12"]
    assert all("reason 1" in line for line in lines[1:])
    assert "body 11\n" in run(tmp_path, "dlq", "show", "11").stdout
    unknown = run(tmp_path, "dlq", "show", "99")
    assert unknown.returncode == 2
    assert unknown.stderr == "error: no dead letter has the id '99' or an id starting with it\n"
    empty = run(tmp_path, "dlq", "show", "")
    assert empty.returncode == 2 and "cannot be empty" in empty.stderr
    redriven = run(tmp_path, "dlq", "redrive", "10", "11")
    assert redriven.returncode == 0 and redriven.stderr == "redrove 2 messages\n"
    nothing_moved = run(tmp_path, "dlq", "redrive", "12", "3x")
    assert nothing_moved.returncode == 2 and "'3x'" in nothing_moved.stderr
    assert "dead letters: 9" in run(tmp_path, "status").stdout


@pytest.fixture(scope="module")
def moto() -> Iterator[Aws]:
    with moto_server() as endpoint:
        yield Aws("moto", endpoint.url)


@pytest.mark.slow
def test_sqs_dead_letters_are_named_by_a_unique_prefix_of_their_uuid(moto: Aws) -> None:
    queue = make_sqs_queue(moto)
    queue.send([f"body {n}" for n in range(17)])
    received = receive_all(queue, 17, patience=10)
    for message in received:
        queue.dead_letter(message, f"reason {message.body}")
    letters = queue.dead_letters(100)
    assert len(letters) == 17
    by_first: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_first.setdefault(letter.id[0], []).append(letter)
    shared = next(group for group in by_first.values() if len(group) > 1)  # 17 ids, 16 hex digits
    with pytest.raises(UsageError) as ambiguous:
        resolve_dead_letters(queue, [shared[0].id[0]])
    assert sorted(line.split()[0] for line in ambiguous.value.details) == sorted(
        letter.id for letter in shared
    )
    target = letters[0]
    unique_prefix = next(
        target.id[:n]
        for n in range(1, 37)
        if sum(other.id.startswith(target.id[:n]) for other in letters) == 1
    )
    assert resolve_dead_letters(queue, [unique_prefix.upper()]) == [target]
    with pytest.raises(UsageError, match="no dead letter has the id 'zz'"):
        resolve_dead_letters(queue, ["zz"])
    assert queue.redrive([letter.id for letter in resolve_dead_letters(queue, [unique_prefix])]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["events", "--type", "t", "--since", "0001-01-01T00:00:00+01:00"],
            "--since: '0001-01-01T00:00:00+01:00'",
        ),
        (["events", "--type", "t", "--since", "99999999999d"], "--since: '99999999999d'"),
        (
            ["events", "--type", "t", "--until", "9999-12-31T23:59:59-01:00"],
            "--until: '9999-12-31T23:59:59-01:00'",
        ),
        (
            ["events", "--type", "t", "--since", "2020-01-02", "--until", "2020-01-01"],
            "--since 2020-01-02T00:00:00+00:00 is after --until 2020-01-01T00:00:00+00:00",
        ),
        (["events", "--type", "t", "--since", "now", "--until", "1h"], "is after --until"),
        (["health", "--window", "99999999999d"], "--window: '99999999999d'"),
        (["health", "--window", "3000000d"], "--window:"),
        (["health", "--until", "0001-01-01T00:00:00+01:00"], "--until: '0001-01-01T00:00:00+01:00'"),
        (["events", "--type", "t", "--limit", "99999999999999999999999"], "Invalid value for '--limit'"),
        (["events", "--type", "t", "--limit", "-1"], "Invalid value for '--limit'"),
        (["events", "--type", "t", "--limit", "nan"], "Invalid value for '--limit'"),
        (["dlq", "list", "--limit", "1e9"], "Invalid value for '--limit'"),
        (["events", "--type", "t", "--cursor", "A" * 100_000], "--cursor: not a cursor from a previous page"),
        (["events", "--type", "t", "--cursor", "\x1b[2J"], "'\\x1b[2J' is not a cursor"),
        (["health", "--max-error-rate", "nan"], "Invalid value for '--max-error-rate'"),
        (["health", "--latency-factor", "inf"], "inf is not a finite number"),
        (["health", "--min-latency-increase-ms", "-inf"], "Invalid value for '--min-latency-increase-ms'"),
        (["events", "--no-such-flag"], "No such option: --no-such-flag"),
    ],
)
def test_bad_times_and_flags_are_one_error_line_and_exit_code_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    seed(tmp_path)
    result = run(tmp_path, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert len(result.stderr) < 1200
    assert "\x1b" not in result.stderr


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00Z", "0001-01-01T05:59:00Z", "9999-12-31T23:59:59Z"])
def test_a_rebuild_from_either_end_of_time_is_done_not_a_traceback(tmp_path: Path, since: str) -> None:
    seed(tmp_path)
    result = run(tmp_path, "rebuild", "--since", since)
    assert result.returncode == 0, result.stderr
    assert "rebuilt the read models (from " in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_send_to_a_locked_queue_sends_nothing_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "one.ndjson").write_text(ndjson(make_event()))
    assert run(tmp_path, "send", "one.ndjson").returncode == 0
    with LockHolder(tmp_path / "queue.db"):
        locked = run(tmp_path, "send", "one.ndjson", env={"EVENTTRAIL_BUSY_TIMEOUT": "0.2"})
    assert locked.returncode == 1
    assert locked.stderr.startswith("error: nothing was sent: ") and len(locked.stderr.splitlines()) == 1
    assert "locked" in locked.stderr and "Traceback" not in locked.stderr
    assert "visible:     1" in run(tmp_path, "status").stdout
    assert run(tmp_path, "send", "one.ndjson").returncode == 0
    assert "visible:     2" in run(tmp_path, "status").stdout
