"""Stack settings from CDK context: defaults agree with the runtime, bad values are refused."""

from __future__ import annotations

import pytest

from eventtrail.config import Settings
from eventtrail_infra.settings import InvalidStackSettings, StackSettings, settings_from_context


def test_defaults_name_what_the_runtime_uses_by_default() -> None:
    runtime, stack = Settings(), StackSettings()
    assert (stack.queue_name, stack.dlq_name, stack.table_name) == (
        runtime.queue_name,
        runtime.dlq_name,
        runtime.table_name,
    )
    assert stack.max_receive_count == runtime.max_receives
    assert stack.index_shards == runtime.index_shards
    assert stack.stage == "dev"


def test_context_strings_are_converted_and_cdk_keys_ignored() -> None:
    settings = settings_from_context(
        {
            "stage": "prod",
            "batch_size": "20",
            "retention_days": "30",
            "gateway_policy": "false",
            "@aws-cdk/core:newStyleStackSynthesis": True,
            "aws:cdk:enable-path-metadata": True,
        }
    )
    assert settings.is_production
    assert settings.batch_size == 20
    assert settings.retention_days == 30
    assert settings.gateway_policy is False


def test_visibility_timeout_covers_six_function_timeouts_and_the_window() -> None:
    settings = StackSettings(function_timeout_seconds=45, max_batching_window_seconds=10)
    assert settings.visibility_timeout_seconds == 6 * 45 + 10


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"stag": "prod"}, "unknown field `stag`"),
        ({"stage": "staging"}, "stage: Invalid enum value 'staging' (expected dev or prod)"),
        ({"maximum_concurrency": "1"}, "maximum_concurrency: Expected `int` >= 2"),
        ({"batch_size": "20", "max_batching_window_seconds": "0"}, "batching_window"),
        ({"queue_name": "no spaces"}, "matching regex"),
        ({"alarm_topic_arn": "on-call"}, "alarm_topic_arn: Expected `str` matching regex"),
    ],
)
def test_bad_values_are_refused_with_the_reason(context: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidStackSettings, match="invalid stack setting") as raised:
        settings_from_context(context)
    assert message in str(raised.value)
