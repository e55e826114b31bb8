"""The events table, shaped by :data:`eventtrail.aws.schema.TABLE`."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Tags
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from eventtrail.aws.schema import INDEX_SHARDS_TAG, TABLE

__all__ = ["EventTable"]

_STRING = dynamodb.AttributeType.STRING


class EventTable(Construct):
    """On-demand, point-in-time recovery, TTL on ``TABLE.ttl``, and the
    write-sharded Type and Source indexes; the shard count is recorded as the
    ``eventtrail:index-shards`` tag, where readers find it."""

    table: dynamodb.Table

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        table_name: str,
        index_shards: int,
        production: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            table_name=table_name,
            partition_key=dynamodb.Attribute(name=TABLE.partition_key, type=_STRING),
            sort_key=dynamodb.Attribute(name=TABLE.sort_key, type=_STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=TABLE.ttl,
            deletion_protection=production,
            removal_policy=RemovalPolicy.RETAIN if production else RemovalPolicy.DESTROY,
        )
        for index in TABLE.indexes:
            self.table.add_global_secondary_index(
                index_name=index.name,
                partition_key=dynamodb.Attribute(name=index.partition_key, type=_STRING),
                sort_key=dynamodb.Attribute(name=TABLE.sort_key, type=_STRING),
                projection_type=dynamodb.ProjectionType.ALL,
            )
        Tags.of(self.table).add(INDEX_SHARDS_TAG, str(index_shards))
