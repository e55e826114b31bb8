"""``aws init``: create the queue, its DLQ and the table on an AWS endpoint.

For local development and tests (moto's server, dynalite, or an account you
own); production uses the CDK stack (``eventtrail infra``). The endpoint,
region and credentials come from boto3's chain (``AWS_ENDPOINT_URL``,
``AWS_REGION``, ``AWS_PROFILE``...).
"""

from __future__ import annotations

from typing import Annotated

import typer

from eventtrail.cli.common import ConfigFile, MaxReceives, console, settings_from

__all__ = ["app"]

app = typer.Typer(help="The AWS backend: set up SQS and DynamoDB for eventtrail.", no_args_is_help=True)


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
