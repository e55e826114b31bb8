"""Managed policies for the callers outside the stack: the gateway that sends
events, and the people and tools that read them (``eventtrail flow|events``)."""

from __future__ import annotations

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from eventtrail.aws.schema import TABLE
from eventtrail_infra.readmodels import READER_READ_MODEL_ACTIONS, read_model_index_arn

__all__ = [
    "CONSUMER_TABLE_ACTIONS",
    "GATEWAY_ACTIONS",
    "GATEWAY_DLQ_ACTIONS",
    "READER_ACTIONS",
    "GatewayPolicy",
    "ReaderPolicy",
    "index_arns",
]

#: What the consumer function calls on the table (never on the indexes: writes
#: to the table maintain them): one conditional put per event, a consistent
#: read of the stored item when a put is refused and the endpoint did not
#: return it (to tell a redelivery from a conflict), and the shard-count tag,
#: read once (DescribeTable gives the ARN to read it on).
CONSUMER_TABLE_ACTIONS = [
    "dynamodb:PutItem",
    "dynamodb:GetItem",
    "dynamodb:DescribeTable",
    "dynamodb:ListTagsOfResource",
]
#: What a producer needs on the queue: find it by name, read its redrive
#: policy (the receive count), send (batches included)...
GATEWAY_ACTIONS = ["sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SendMessage"]
#: ... and on the DLQ: only find it by name (the queue adapter opens both).
GATEWAY_DLQ_ACTIONS = ["sqs:GetQueueUrl"]
#: What a reader needs: a flow is a Query on the table, a type or source a
#: Query on an index; the shard count is a table tag.
READER_ACTIONS = ["dynamodb:DescribeTable", "dynamodb:ListTagsOfResource", "dynamodb:Query"]


def index_arns(table: dynamodb.ITable) -> list[str]:
    """Each index's ARN, named: no ``index/*`` wildcard."""
    return [f"{table.table_arn}/index/{index.name}" for index in TABLE.indexes]


class GatewayPolicy(Construct):
    """Attach :attr:`policy` to the gateway's role to let it send events."""

    policy: iam.ManagedPolicy

    def __init__(
        self, scope: Construct, construct_id: str, *, queue: sqs.IQueue, dead_letter_queue: sqs.IQueue
    ) -> None:
        super().__init__(scope, construct_id)
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description="Send events to the eventtrail queue",
            statements=[
                iam.PolicyStatement(actions=GATEWAY_ACTIONS, resources=[queue.queue_arn]),
                iam.PolicyStatement(actions=GATEWAY_DLQ_ACTIONS, resources=[dead_letter_queue.queue_arn]),
            ],
        )


class ReaderPolicy(Construct):
    """Attach :attr:`policy` to whoever reads events (the CLI, the HTTP API)."""

    policy: iam.ManagedPolicy

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        table: dynamodb.ITable,
        read_models: dynamodb.ITable | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description="Read eventtrail's events: flows, and events by type or source",
            statements=[
                iam.PolicyStatement(actions=READER_ACTIONS, resources=[table.table_arn, *index_arns(table)])
            ],
        )
        if read_models is not None:
            # Health, series and request search read the read models only.
            self.policy.add_statements(
                iam.PolicyStatement(
                    actions=READER_READ_MODEL_ACTIONS,
                    resources=[read_models.table_arn, read_model_index_arn(read_models)],
                )
            )
