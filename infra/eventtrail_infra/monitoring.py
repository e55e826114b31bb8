"""Alarms: something could not be stored, or the function itself failed."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

__all__ = ["Alarms"]


class Alarms(Construct):
    """:attr:`dead_letters`: any message waits in the DLQ (each one is an
    event that was not stored); :attr:`function_errors`: an invocation failed
    as a whole (per-record failures are reported, not raised, so this means a
    crash, a timeout or a store outage). Both notify ``topic_arn`` if given."""

    dead_letters: cloudwatch.Alarm
    function_errors: cloudwatch.Alarm

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        dead_letter_queue: sqs.IQueue,
        function: lambda_.IFunction,
        topic_arn: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.dead_letters = self._alarm_on_any(
            "DeadLetters",
            dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(1), statistic=cloudwatch.Stats.MAXIMUM
            ),
            "Events wait in the dead-letter queue: inspect them with `eventtrail dlq list`",
        )
        self.function_errors = self._alarm_on_any(
            "FunctionErrors",
            function.metric_errors(period=Duration.minutes(5), statistic=cloudwatch.Stats.SUM),
            "The consumer function failed whole invocations",
        )
        if topic_arn is not None:
            action = cloudwatch_actions.SnsAction(sns.Topic.from_topic_arn(self, "Topic", topic_arn))
            for alarm in (self.dead_letters, self.function_errors):
                alarm.add_alarm_action(action)

    def _alarm_on_any(
        self, construct_id: str, metric: cloudwatch.Metric, description: str
    ) -> cloudwatch.Alarm:
        """An alarm as soon as one period of ``metric`` reaches 1; no data
        means nothing happened."""
        return metric.create_alarm(
            self,
            construct_id,
            alarm_description=description,
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
