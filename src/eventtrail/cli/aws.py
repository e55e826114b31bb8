"""``aws init`` and ``aws queries``: the AWS backend's table and queues.

``init`` creates the queue, its DLQ and the table on an AWS endpoint, for
local development and tests (moto's server, dynalite, or an account you own);
production uses the CDK stack (``eventtrail infra``). The endpoint, region
and credentials come from boto3's chain (``AWS_ENDPOINT_URL``,
``AWS_REGION``, ``AWS_PROFILE``...).

``queries`` prints the ``aws dynamodb query`` commands that read one type or
source from the write-sharded indexes, for those who look at the table with
the AWS CLI.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from typing import Annotated, Any

import typer

from eventtrail.aws.schema import TABLE
from eventtrail.cli.common import ConfigFile, MaxReceives, UsageError, console, settings_from
from eventtrail.times import format_moment, parse_moment

__all__ = ["app", "aws_cli_command", "shard_queries"]

app = typer.Typer(
    help="The AWS backend: set up SQS and DynamoDB for eventtrail, query the table with the AWS CLI.",
    no_args_is_help=True,
)


@app.command()
def init(
    max_receives: MaxReceives = None,
    index_shards: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=100,
            help="Write shards of the Type and Source indexes, recorded on the table. [default: 16]",
            show_default=False,
        ),
    ] = None,
    config_file: ConfigFile = None,
) -> None:
    """Create the SQS queue, its dead-letter queue (redrive policy) and the
    DynamoDB table (on demand, sharded indexes, TTL). Safe to run again."""
    settings = settings_from("aws", None, config_file, max_receives=max_receives, index_shards=index_shards)
    from eventtrail.aws.backend import dynamodb_client, sqs_client
    from eventtrail.aws.provision import QueueSpec, TableSpec, ensure_queues, ensure_table

    done = ensure_queues(
        sqs_client(),
        QueueSpec(
            queue_name=settings.queue_name,
            dlq_name=settings.dlq_name,
            max_receives=settings.max_receives,
            visibility_timeout=settings.visibility_timeout,
            max_body_bytes=settings.max_body_bytes,
        ),
    )
    done += ensure_table(
        dynamodb_client(), TableSpec(table_name=settings.table_name, index_shards=settings.index_shards)
    )
    for line in done:
        console.print(line)


IndexShards = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=100,
        help="Write shards of the Type and Source indexes (the table's eventtrail:index-shards tag)."
        " [default: the index_shards setting, 16]",
        show_default=False,
    ),
]


def shard_queries(
    table_name: str,
    *,
    kind: str,
    value: str,
    shards: int,
    since: datetime | None = None,
    until: datetime | None = None,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    """The parameters of one DynamoDB Query per index shard that together
    return the events whose ``kind`` (``type`` or ``source``) is ``value``,
    from ``since`` (inclusive) to ``until`` (exclusive).

    Sort keys are ``<timestamp>#<id>`` with fixed-width timestamps, so
    ``>= since`` and ``BETWEEN since AND until`` select by time exactly: a key
    at ``until`` is ``until#...``, above the bound.
    """
    index = TABLE.by_type if kind == "type" else TABLE.by_source
    names = {"#pk": index.partition_key}
    condition = "#pk = :pk"
    bounds: dict[str, Any] = {}
    if since is not None or until is not None:
        names["#sk"] = TABLE.sort_key
        if since is not None:
            bounds[":lo"] = {"S": format_moment(since)}
        if until is not None:
            bounds[":hi"] = {"S": format_moment(until)}
        if since is not None and until is not None:
            condition += " AND #sk BETWEEN :lo AND :hi"
        elif since is not None:
            condition += " AND #sk >= :lo"
        else:
            condition += " AND #sk < :hi"
    queries = []
    for shard in range(shards):
        query: dict[str, Any] = {
            "TableName": table_name,
            "IndexName": index.name,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {":pk": {"S": f"{value}#{shard}"}, **bounds},
        }
        if newest_first:
            query["ScanIndexForward"] = False
        queries.append(query)
    return queries


def aws_cli_command(query: dict[str, Any]) -> str:
    """``query`` as an ``aws dynamodb query`` command line, quoted for a POSIX shell."""
    words = [
        "aws",
        "dynamodb",
        "query",
        "--table-name",
        query["TableName"],
        "--index-name",
        query["IndexName"],
        "--key-condition-expression",
        query["KeyConditionExpression"],
        "--expression-attribute-names",
        json.dumps(query["ExpressionAttributeNames"], separators=(",", ":")),
        "--expression-attribute-values",
        json.dumps(query["ExpressionAttributeValues"], separators=(",", ":")),
    ]
    if query.get("ScanIndexForward") is False:
        words.append("--no-scan-index-forward")
    return shlex.join(words)


def _moment(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_moment(text)
    except ValueError as error:
        raise UsageError(f"{option}: {error}") from None


@app.command()
def queries(
    type_: Annotated[str | None, typer.Option("--type", "-t", help="Events of this type.")] = None,
    source: Annotated[str | None, typer.Option("--source", "-s", help="Events from this source.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="From this time on (inclusive): ISO 8601, or a time ago such as 15m or 2h."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Before this time (exclusive); same forms as --since.")
    ] = None,
    newest_first: Annotated[bool, typer.Option("--newest-first", help="Newest events first.")] = False,
    index_shards: IndexShards = None,
    config_file: ConfigFile = None,
) -> None:
    """Print the `aws dynamodb query` commands that list one type or source.

    The Type and Source indexes are write-sharded: their keys are
    `<value>#<shard>` for every shard, so one type takes one query per shard;
    merge the results by TimestampId (`eventtrail events` does all of this).
    Nothing is sent to AWS. The AWS CLI v1 reads its region from
    AWS_DEFAULT_REGION (not AWS_REGION).
    """
    if (type_ is None) == (source is None):
        raise UsageError("give exactly one of --type and --source")
    settings = settings_from("aws", None, config_file, index_shards=index_shards)
    start, end = _moment("--since", since), _moment("--until", until)
    if start is not None and end is not None and start > end:
        raise UsageError(f"--since ({format_moment(start)}) is after --until ({format_moment(end)})")
    kind, value = ("type", type_) if type_ is not None else ("source", source)
    assert value is not None
    found = shard_queries(
        settings.table_name,
        kind=kind,
        value=value,
        shards=settings.index_shards,
        since=start,
        until=end,
        newest_first=newest_first,
    )
    index = found[0]["IndexName"]
    shards = len(found)
    # Plain lines, never wrapped or styled: they are pasted into a shell.
    typer.echo(
        f"# {shards} {'query' if shards == 1 else 'queries'}, one per shard of {index} on table"
        f" {settings.table_name}; merge their Items by {TABLE.sort_key}"
    )
    for query in found:
        typer.echo(aws_cli_command(query))
