"""The read-model table, shaped by :data:`eventtrail.aws.schema.READ_MODELS`.

The consumer function keeps it up to date as it stores events (no stream, no
schedule: see ``docs/read-models.md``), so the stack adds only the table and
the grants: :data:`CONSUMER_READ_MODEL_ACTIONS` for the function,
:data:`READER_READ_MODEL_ACTIONS` for the readers' managed policy.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from eventtrail.aws.schema import READ_MODELS

__all__ = [
    "CONSUMER_READ_MODEL_ACTIONS",
    "READER_READ_MODEL_ACTIONS",
    "ReadModelTable",
    "read_model_index_arn",
]

#: What the consumer calls on the read-model table: read a request's item and
#: the version record (consistent GetItem), write the request's item
#: (conditional PutItem), add to rollup rows and the days of requests
#: (UpdateItem). Nothing on the index: writes to the table maintain it.
CONSUMER_READ_MODEL_ACTIONS = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
#: What a reader needs: the version record and the days of requests
#: (GetItem), rollup rows (Query on the table), request search (Query on the index).
READER_READ_MODEL_ACTIONS = ["dynamodb:GetItem", "dynamodb:Query"]

_STRING = dynamodb.AttributeType.STRING


def read_model_index_arn(table: dynamodb.ITable) -> str:
    """The request index's ARN, named: no ``index/*`` wildcard."""
    return f"{table.table_arn}/index/{READ_MODELS.requests_index.name}"


class ReadModelTable(Construct):
    """On demand, point-in-time recovery (a rebuild replays the events, but
    recovery is faster), TTL on ``READ_MODELS.ttl`` and the request index;
    production retains and protects it like the events table."""

    table: dynamodb.Table

    def __init__(self, scope: Construct, construct_id: str, *, table_name: str, production: bool) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            table_name=table_name,
            partition_key=dynamodb.Attribute(name=READ_MODELS.partition_key, type=_STRING),
            sort_key=dynamodb.Attribute(name=READ_MODELS.sort_key, type=_STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=READ_MODELS.ttl,
            deletion_protection=production,
            removal_policy=RemovalPolicy.RETAIN if production else RemovalPolicy.DESTROY,
        )
        index = READ_MODELS.requests_index
        self.table.add_global_secondary_index(
            index_name=index.name,
            partition_key=dynamodb.Attribute(name=index.partition_key, type=_STRING),
            sort_key=dynamodb.Attribute(name=index.attribute, type=_STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
