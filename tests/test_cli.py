"""The CLI end to end, through real processes and real SQLite files."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from eventtrail.event import encode_event
from tests.cli import run
from tests.contract.store_contract import T0, make_event
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
    assert result.returncode == 0 and "purged 1 events" in result.stderr
    assert json.loads(run(tmp_path, "flow", old.request_id, "--json").stdout) == []


def test_help_explains_every_command(tmp_path: Path) -> None:
    result = run(tmp_path, "--help")
    assert result.returncode == 0
    for command in ("send", "flow", "events", "worker", "dlq", "demo", "status", "purge"):
        assert command in result.stdout
