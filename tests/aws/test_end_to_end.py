"""The whole pipeline on moto's server through real ``eventtrail`` processes:
send to SQS, ``worker --backend aws --drain``, ``flow --json`` from DynamoDB,
``purge`` leaving retention to the table's TTL, and a message that keeps
failing reaching the DLQ through the redrive policy, then coming back with
``dlq redrive`` once the cause is fixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eventtrail.aws.schema import read_models_table_name
from eventtrail.event import encode_event
from tests.aws.conftest import Aws, unique_name
from tests.contract.store_contract import make_event

pytestmark = pytest.mark.slow


class Cli:
    def __init__(self, aws: Aws, cwd: Path, **settings: str) -> None:
        self.cwd = cwd
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("EVENTTRAIL_", "AWS_"))},
            **aws.env,
            **{f"EVENTTRAIL_{name.upper()}": value for name, value in settings.items()},
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "eventtrail", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"eventtrail {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args).stdout)

    def with_settings(self, **settings: str) -> Cli:
        other = Cli.__new__(Cli)
        other.cwd = self.cwd
        other.env = {**self.env, **{f"EVENTTRAIL_{n.upper()}": v for n, v in settings.items()}}
        return other


def test_send_worker_flow_and_dead_letters(moto: Aws, tmp_path: Path) -> None:
    name = unique_name("e2e")
    cli = Cli(moto, tmp_path, backend="aws", queue_name=name, dlq_name=f"{name}-dlq", table_name=name)
    init = cli("aws", "init", "--max-receives", "2", "--index-shards", "4").stdout
    assert f"created queue {name}" in init and f"created table {name}" in init
    assert "created" not in cli("aws", "init", "--max-receives", "2").stdout  # idempotent

    request = make_event()
    events = [
        request,
        make_event(request_id=request.request_id, data={"status": 0, "ok": False, "note": ""}),
        make_event(request_id=request.request_id, data={}),
    ]
    (tmp_path / "events.ndjson").write_bytes(b"\n".join(encode_event(e) for e in events))
    (tmp_path / "poison.txt").write_text("{not json")
    cli("send", "events.ndjson")
    cli("send", "--raw", "poison.txt")

    drained = cli("worker", "--drain", "--quiet")
    assert "4 received: 3 stored, 0 to retry, 1 dead-lettered" in drained.stderr

    flow = cli.json("flow", request.request_id, "--json")
    assert flow == json.loads(
        b"[" + b",".join(encode_event(e) for e in sorted(events, key=lambda e: (e.timestamp, e.id))) + b"]"
    )
    # Old events leave through the table's TTL: purge deletes nothing and says so.
    purged = cli.with_settings(retention_days="30")("purge", "--older-than", "1d")
    said = " ".join(purged.stderr.split())
    assert "through the table's TTL" in said and "retention_days = 30" in said
    assert "purged 0" not in said
    assert cli.json("flow", request.request_id, "--json") == flow
    (letter,) = cli.json("dlq", "list", "--json")
    assert letter["body"] == "{not json" and "not valid JSON" in letter["reason"]

    # The table is missing: every attempt fails, the queue retries, and its
    # redrive policy moves the message to the DLQ after 2 receives.
    missing = unique_name("missing")
    broken = cli.with_settings(table_name=missing)
    stranded = make_event()
    (tmp_path / "stranded.json").write_bytes(encode_event(stranded))
    cli("send", "stranded.json")
    report = broken("worker", "--drain", "--quiet")
    assert "0 stored" in report.stderr and "dead-lettered" in report.stderr
    letters = {item["body"]: item for item in cli.json("dlq", "list", "--json")}
    moved = letters[encode_event(stranded).decode()]
    assert "2 receives" in moved["reason"]
    status = cli("status").stdout
    assert "dead letters: 2" in status
    assert "read models: up to date" in status

    # Fixed: the table exists now; redrive that message only, and it is stored.
    broken("aws", "init")
    cli("dlq", "redrive", moved["id"])
    broken("worker", "--drain", "--quiet")
    assert broken.json("flow", stranded.request_id, "--json") == [json.loads(encode_event(stranded))]
    assert [item["body"] for item in cli.json("dlq", "list", "--json")] == ["{not json"]

    # Read models an older eventtrail built: status says what makes them current.
    moto.dynamodb().put_item(
        TableName=read_models_table_name(name),
        Item={
            "Key": {"S": "meta"},
            "Sort": {"S": "version"},
            "Version": {"N": "1"},
            "State": {"S": "current"},
        },
    )
    assert "read models: not built for this version: run `eventtrail rebuild`" in cli("status").stdout
    cli("rebuild")
    assert "read models: up to date" in cli("status").stdout


def test_a_missing_queue_is_one_line_not_a_traceback(moto: Aws, tmp_path: Path) -> None:
    cli = Cli(moto, tmp_path, backend="aws", queue_name=unique_name("nothing"))
    result = cli("status", check=False)
    assert result.returncode == 1
    assert "does not exist (run `eventtrail aws init`)" in result.stderr
    assert "Traceback" not in result.stderr
