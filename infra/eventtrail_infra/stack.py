"""The eventtrail stack: queue, consumer, table, alarms and access, wired together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import Acknowledgment, CfnOutput, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from eventtrail.aws.schema import read_models_table_name
from eventtrail_infra.access import CONSUMER_TABLE_ACTIONS, GatewayPolicy, ReaderPolicy
from eventtrail_infra.consumer import EventConsumer
from eventtrail_infra.monitoring import Alarms
from eventtrail_infra.queue import EventQueue
from eventtrail_infra.readmodels import CONSUMER_READ_MODEL_ACTIONS, ReadModelTable
from eventtrail_infra.settings import StackSettings
from eventtrail_infra.table import EventTable

__all__ = ["ACKNOWLEDGED_FINDINGS", "EventTrailStack", "consumer_environment"]

#: cdk-nag (AwsSolutions) findings this stack accepts, and why.
ACKNOWLEDGED_FINDINGS = {
    "AwsSolutions::AwsSolutions-L1": (
        "The function runs Python 3.13, one release behind the newest runtime, because the"
        " deploy test imports the built asset with a local 3.13 interpreter to prove its native"
        " wheels load; 3.13 is a supported Lambda runtime."
    ),
}


def consumer_environment(settings: StackSettings, dead_letter_queue_url: str) -> dict[str, str]:
    """What :mod:`eventtrail.aws.lambda_handler` reads: its settings
    (``EVENTTRAIL_<NAME>``, see :mod:`eventtrail.config`) and the DLQ's URL,
    which spares it a lookup on its first dead letter."""
    environment = {
        "EVENTTRAIL_TABLE_NAME": settings.table_name,
        # Used only if the table's shard tag cannot be read; the same number.
        "EVENTTRAIL_INDEX_SHARDS": str(settings.index_shards),
        "EVENTTRAIL_DLQ_URL": dead_letter_queue_url,
    }
    if settings.retention_days is not None:
        environment["EVENTTRAIL_RETENTION_DAYS"] = str(settings.retention_days)
    return environment


class EventTrailStack(Stack):
    """Gateway -> SQS (+ DLQ) -> Lambda -> DynamoDB, as :class:`StackSettings` say."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StackSettings,
        asset_dir: Path,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings
        removal = RemovalPolicy.RETAIN if settings.is_production else RemovalPolicy.DESTROY

        self.events_queue = EventQueue(
            self,
            "Queue",
            queue_name=settings.queue_name,
            dlq_name=settings.dlq_name,
            max_receive_count=settings.max_receive_count,
            visibility_timeout=Duration.seconds(settings.visibility_timeout_seconds),
            removal_policy=removal,
        )
        self.events_table = EventTable(
            self,
            "Table",
            table_name=settings.table_name,
            index_shards=settings.index_shards,
            production=settings.is_production,
        )
        self.consumer = EventConsumer(
            self,
            "Consumer",
            asset_dir=asset_dir,
            queue=self.events_queue.queue,
            environment=consumer_environment(settings, self.events_queue.dead_letter_queue.queue_url),
            timeout=Duration.seconds(settings.function_timeout_seconds),
            memory_mb=settings.function_memory_mb,
            batch_size=settings.batch_size,
            max_batching_window=Duration.seconds(settings.max_batching_window_seconds),
            maximum_concurrency=settings.maximum_concurrency,
            log_retention=_retention_days(settings.log_retention_days),
            removal_policy=removal,
        )
        self.consumer.role.add_to_principal_policy(
            iam.PolicyStatement(actions=CONSUMER_TABLE_ACTIONS, resources=[self.events_table.table.table_arn])
        )
        # The consumer keeps the read models as it stores events (docs/read-models.md).
        self.read_model_table = ReadModelTable(
            self,
            "ReadModels",
            table_name=read_models_table_name(settings.table_name),
            production=settings.is_production,
        )
        self.consumer.role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=CONSUMER_READ_MODEL_ACTIONS, resources=[self.read_model_table.table.table_arn]
            )
        )
        # Records that can never be stored go to the DLQ at once, with their reason.
        self.events_queue.dead_letter_queue.grant_send_messages(self.consumer.role)
        self.alarms = Alarms(
            self,
            "Alarms",
            dead_letter_queue=self.events_queue.dead_letter_queue,
            function=self.consumer.function,
            topic_arn=settings.alarm_topic_arn,
        )
        self.reader_policy = ReaderPolicy(
            self, "Readers", table=self.events_table.table, read_models=self.read_model_table.table
        )
        self.gateway_policy = (
            GatewayPolicy(
                self,
                "Gateway",
                queue=self.events_queue.queue,
                dead_letter_queue=self.events_queue.dead_letter_queue,
            )
            if settings.gateway_policy
            else None
        )
        self._outputs()
        for finding, reason in ACKNOWLEDGED_FINDINGS.items():
            Validations.of(self).acknowledge(Acknowledgment(id=finding, reason=reason))

    def _outputs(self) -> None:
        queue, dlq = self.events_queue.queue, self.events_queue.dead_letter_queue
        outputs = {
            "QueueUrl": queue.queue_url,
            "QueueName": queue.queue_name,
            "DeadLetterQueueUrl": dlq.queue_url,
            "DeadLetterQueueName": dlq.queue_name,
            "TableName": self.events_table.table.table_name,
            "ReadModelTableName": self.read_model_table.table.table_name,
            "FunctionName": self.consumer.function.function_name,
            "ReaderPolicyArn": self.reader_policy.policy.managed_policy_arn,
        }
        if self.gateway_policy is not None:
            outputs["GatewayPolicyArn"] = self.gateway_policy.policy.managed_policy_arn
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)


_LOG_RETENTIONS = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    731: logs.RetentionDays.TWO_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


def _retention_days(days: int) -> logs.RetentionDays:
    """The shortest log retention CloudWatch offers that keeps logs ``days`` long."""
    return next(
        (retention for limit, retention in _LOG_RETENTIONS.items() if limit >= days),
        logs.RetentionDays.INFINITE,
    )
