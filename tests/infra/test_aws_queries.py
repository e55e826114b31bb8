"""``eventtrail aws queries``: the AWS CLI commands that read the sharded
indexes, checked by running their parameters against moto's server."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mypy_boto3_dynamodb import DynamoDBClient

from eventtrail.aws.backend import CLIENT_CONFIG
from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.schema import TABLE
from eventtrail.cli.aws import aws_cli_command, shard_queries
from eventtrail.event import Event
from eventtrail.ids import uuid7_str
from eventtrail.times import format_moment
from tests.cli import run
from tests.servers import LOCAL_AWS_ENV, moto_server

SHARDS = 4
START = datetime(2020, 5, 1, 20, 0, tzinfo=UTC)

#: Each option of ``aws dynamodb query`` the command prints, and its Query parameter.
CLI_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--table-name": ("TableName", str),
    "--index-name": ("IndexName", str),
    "--key-condition-expression": ("KeyConditionExpression", str),
    "--expression-attribute-names": ("ExpressionAttributeNames", json.loads),
    "--expression-attribute-values": ("ExpressionAttributeValues", json.loads),
}


def query_parameters(command: str) -> dict[str, Any]:
    """The Query parameters a printed command line gives the AWS CLI."""
    words = shlex.split(command)
    assert words[:3] == ["aws", "dynamodb", "query"], command
    parameters: dict[str, Any] = {}
    rest = iter(words[3:])
    for option in rest:
        if option == "--no-scan-index-forward":
            parameters["ScanIndexForward"] = False
            continue
        name, read = CLI_OPTIONS[option]
        parameters[name] = read(next(rest))
    return parameters


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint.url


def _client(url: str) -> DynamoDBClient:
    session = boto3.session.Session(
        aws_access_key_id=LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=LOCAL_AWS_ENV["AWS_SESSION_TOKEN"],
        region_name=LOCAL_AWS_ENV["AWS_REGION"],
    )
    return session.client("dynamodb", endpoint_url=url, config=CLIENT_CONFIG)


def _events() -> list[Event]:
    """Three types over an hour, a minute apart, several on one timestamp."""
    types = ["MICROSERVICE_REQUEST", "MICROSERVICE_RESPONSE", "MICROSERVICE_ERROR"]
    return [
        Event(
            id=uuid7_str(),
            request_id=uuid7_str(),
            timestamp=format_moment(START + timedelta(minutes=n // 2)),
            type=types[n % 3],
            source="Gateway" if n % 5 else 'Billing\'s "edge" $(gateway)',
            data={"n": n},
        )
        for n in range(120)
    ]


def _run_queries(client: DynamoDBClient, output: str) -> list[str]:
    """Run each printed command's Query (every page), merge like the store
    does (by sort key, in the printed order), and return the event ids."""
    lines = output.splitlines()
    assert lines[0].startswith("# "), output
    commands = lines[1:]
    items: list[dict[str, Any]] = []
    newest_first = False
    for command in commands:
        parameters = query_parameters(command)
        newest_first = parameters.get("ScanIndexForward") is False
        for page in client.get_paginator("query").paginate(**parameters):
            items.extend(page["Items"])
    items.sort(key=lambda item: item[TABLE.sort_key]["S"], reverse=newest_first)
    return [item[TABLE.id]["S"] for item in items]


@pytest.mark.slow
def test_printed_queries_return_the_events(moto_url: str, tmp_path: Path) -> None:
    table = f"queries-{uuid7_str()}"
    env = {
        **LOCAL_AWS_ENV,
        "AWS_ENDPOINT_URL": moto_url,
        "EVENTTRAIL_TABLE_NAME": table,
        "EVENTTRAIL_QUEUE_NAME": f"{table}-queue",
        "EVENTTRAIL_DLQ_NAME": f"{table}-dlq",
        "EVENTTRAIL_INDEX_SHARDS": str(SHARDS),
    }
    created = run(tmp_path, "aws", "init", env=env)
    assert created.returncode == 0, created.stderr
    client = _client(moto_url)
    events = _events()
    store = DynamoDBStore(client, table, index_shards=SHARDS)
    try:
        assert {result.status.name for result in store.append(events)} == {"STORED"}
    finally:
        store.close()

    def expected(kind: str, value: str, since: datetime | None, until: datetime | None) -> list[str]:
        chosen = [
            event
            for event in events
            if getattr(event, kind) == value
            and (since is None or event.timestamp >= format_moment(since))
            and (until is None or event.timestamp < format_moment(until))
        ]
        return [event.id for event in sorted(chosen, key=lambda event: (event.timestamp, event.id))]

    since, until = START + timedelta(minutes=10), START + timedelta(minutes=40)
    cases: list[tuple[list[str], str, str, datetime | None, datetime | None]] = [
        (["--type", "MICROSERVICE_ERROR"], "type", "MICROSERVICE_ERROR", None, None),
        (
            ["--type", "MICROSERVICE_ERROR", "--since", "2020-05-01T20:10:00Z"],
            "type",
            "MICROSERVICE_ERROR",
            since,
            None,
        ),
        (
            ["--type", "MICROSERVICE_REQUEST", "--until", "2020-05-01T20:40Z"],
            "type",
            "MICROSERVICE_REQUEST",
            None,
            until,
        ),
        (
            [
                "--source",
                'Billing\'s "edge" $(gateway)',
                "--since",
                "2020-05-01T20:10Z",
                "--until",
                "2020-05-01T20:40Z",
            ],
            "source",
            'Billing\'s "edge" $(gateway)',
            since,
            until,
        ),
    ]
    for arguments, kind, value, low, high in cases:
        printed = run(tmp_path, "aws", "queries", *arguments, env=env)
        assert printed.returncode == 0, printed.stderr
        assert len(printed.stdout.splitlines()) == 1 + SHARDS
        wanted = expected(kind, value, low, high)
        assert wanted, arguments
        assert _run_queries(client, printed.stdout) == wanted, arguments

    newest = run(tmp_path, "aws", "queries", "--type", "MICROSERVICE_RESPONSE", "--newest-first", env=env)
    assert newest.returncode == 0, newest.stderr
    assert all(line.endswith(" --no-scan-index-forward") for line in newest.stdout.splitlines()[1:])
    assert _run_queries(client, newest.stdout) == expected("type", "MICROSERVICE_RESPONSE", None, None)[::-1]


def test_the_table_and_shards_come_from_the_settings(tmp_path: Path) -> None:
    printed = run(
        tmp_path,
        "aws",
        "queries",
        "--source",
        "Gateway",
        env={"EVENTTRAIL_TABLE_NAME": "audit-events", "EVENTTRAIL_INDEX_SHARDS": "3"},
    )
    assert printed.returncode == 0, printed.stderr
    header, *commands = printed.stdout.splitlines()
    assert header == (
        "# 3 queries, one per shard of Source-Index on table audit-events; merge their Items by TimestampId"
    )
    assert [query_parameters(command) for command in commands] == [
        {
            "TableName": "audit-events",
            "IndexName": "Source-Index",
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": "SourceShard"},
            "ExpressionAttributeValues": {":pk": {"S": f"Gateway#{shard}"}},
        }
        for shard in range(3)
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "error: give exactly one of --type and --source"),
        (["--type", "A", "--source", "B"], "error: give exactly one of --type and --source"),
        (
            ["--type", "A", "--since", "2020-05-02", "--until", "2020-05-01"],
            "error: --since (2020-05-02T00:00:00.000000Z) is after --until (2020-05-01T00:00:00.000000Z)",
        ),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = run(tmp_path, "aws", "queries", *arguments)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == message + "\n"


@given(
    value=st.text(alphabet=st.characters(blacklist_characters="\x00"), min_size=1, max_size=256),
    shards=st.integers(min_value=1, max_value=100),
    newest_first=st.booleans(),
)
def test_any_value_survives_the_shell(value: str, shards: int, newest_first: bool) -> None:
    since = START
    queries = shard_queries(
        "event", kind="type", value=value, shards=shards, since=since, newest_first=newest_first
    )
    assert len(queries) == shards
    for shard, query in enumerate(queries):
        command = aws_cli_command(query)
        # One line whatever the value holds: JSON escapes control characters.
        assert "\n" not in command and "\r" not in command
        assert query_parameters(command) == query
        assert query["ExpressionAttributeValues"][":pk"] == {"S": f"{value}#{shard}"}


def test_the_readme_loop_queries_every_shard(tmp_path: Path) -> None:
    """The README's AWS CLI examples, run by bash with `aws` recording its
    arguments: they are the queries the store makes."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## AWS backend\n", 1)[1].split("\n## ", 1)[0]
    (block,) = (
        found for found in re.findall(r"```sh\n(.*?)```", section, re.DOTALL) if "aws dynamodb" in found
    )
    calls = tmp_path / "calls"
    record = shlex.quote(str(calls))
    script = (
        f"aws() {{ printf '%s\\0' aws \"$@\" >> {record}; printf '\\n' >> {record}; }}\n"
        "eventtrail() { :; }\n"
        "sh() { cat > /dev/null; }\n"
        "set -euo pipefail\n" + block
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    commands = [shlex.join(line.split("\0")[:-1]) for line in calls.read_text().splitlines()]
    flow, *shards = (query_parameters(command) for command in commands)
    assert flow == {
        "TableName": "event",
        "KeyConditionExpression": "#pk = :pk",
        "ExpressionAttributeNames": {"#pk": TABLE.partition_key},
        "ExpressionAttributeValues": {":pk": {"S": "677afffc-373e-42f0-8363-f24bc675bcf6"}},
    }
    assert shards == shard_queries("event", kind="type", value="MICROSERVICE_ERROR", shards=16)
