"""The Lambda function that stores events, and the SQS event source that feeds it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from eventtrail_infra import runtime

__all__ = ["EventConsumer"]

RUNTIME: lambda_.Runtime = getattr(
    lambda_.Runtime, "PYTHON_" + runtime.RUNTIME_PYTHON_VERSION.replace(".", "_")
)
#: The architecture runtime.PLATFORM's wheels are built for.
ARCHITECTURE = lambda_.Architecture.X86_64


class EventConsumer(Construct):
    """The function (its own role, no managed policies; its own log group) and
    the event source that calls it with batches from ``queue``, reporting
    failed records one by one so that only those are retried."""

    function: lambda_.Function
    role: iam.Role
    log_group: logs.LogGroup
    event_source: event_sources.SqsEventSource

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        asset_dir: Path,
        queue: sqs.IQueue,
        environment: Mapping[str, str],
        timeout: Duration,
        memory_mb: int,
        batch_size: int,
        max_batching_window: Duration,
        maximum_concurrency: int,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="eventtrail's consumer: stores queued events",
        )
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention, removal_policy=removal_policy)
        # Written to directly, instead of AWSLambdaBasicExecutionRole's logs:* on every group.
        self.log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=runtime.HANDLER,
            code=lambda_.Code.from_asset(str(asset_dir)),
            role=self.role,
            timeout=timeout,
            memory_size=memory_mb,
            environment=dict(environment),
            log_group=self.log_group,
            description="Stores the events queued by the gateway",
        )
        self.event_source = event_sources.SqsEventSource(
            queue,
            batch_size=batch_size,
            max_batching_window=max_batching_window,
            report_batch_item_failures=True,
            max_concurrency=maximum_concurrency,
        )
        self.function.add_event_source(self.event_source)
