"""The stack's settings: names, stage and the consumer's tuning, from CDK context.

Every setting is a context key of the same name (``cdk synth -c stage=prod -c
batch_size=50``, or ``eventtrail infra synth -c stage=prod``). The names and
the receive count default to the runtime's own defaults
(:class:`eventtrail.config.Settings`), so a deployed stack and the CLI agree
without configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from eventtrail.config import Settings

__all__ = ["InvalidStackSettings", "StackSettings", "settings_from_context"]

_RUNTIME_DEFAULTS = Settings()

# AWS's own bounds: SQS redrive 1-1000 receives, SQS event source batch 1-10,000
# and window 0-300 s, maximum concurrency 2-1,000, Lambda timeout <= 900 s and
# memory 128-10,240 MB.
_Receives = Annotated[int, msgspec.Meta(ge=1, le=1000)]
_BatchSize = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
_Window = Annotated[int, msgspec.Meta(ge=0, le=300)]
_Concurrency = Annotated[int, msgspec.Meta(ge=2, le=1000)]
_Timeout = Annotated[int, msgspec.Meta(ge=1, le=900)]
_Memory = Annotated[int, msgspec.Meta(ge=128, le=10_240)]
_Shards = Annotated[int, msgspec.Meta(ge=1, le=100)]
_Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,80}$")]


class InvalidStackSettings(ValueError):
    """A context value that the stack cannot be built with."""


class StackSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """What a deployment may choose; everything else is fixed by the design."""

    stack_name: _Name = "eventtrail"
    stage: Literal["dev", "prod"] = "dev"
    """``prod`` retains the table (and enables deletion protection) and the
    queues when the stack is deleted; ``dev`` deletes them."""
    queue_name: _Name = _RUNTIME_DEFAULTS.queue_name
    dlq_name: _Name = _RUNTIME_DEFAULTS.dlq_name
    table_name: _Name = _RUNTIME_DEFAULTS.table_name
    max_receive_count: _Receives = _RUNTIME_DEFAULTS.max_receives
    """Receives before SQS moves a message that keeps failing to the DLQ."""
    batch_size: _BatchSize = 100
    """Records per Lambda invocation."""
    max_batching_window_seconds: _Window = 5
    """How long the event source gathers a batch (required above 10 records)."""
    maximum_concurrency: _Concurrency = 10
    """Concurrent invocations the event source may start: bounds the write
    rate on the table and the load on the account's concurrency."""
    function_timeout_seconds: _Timeout = 30
    function_memory_mb: _Memory = 512
    index_shards: _Shards = _RUNTIME_DEFAULTS.index_shards
    """Write shards of the Type and Source indexes (recorded as a table tag)."""
    retention_days: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Events expire this many days after they happened (DynamoDB TTL); none: kept."""
    log_retention_days: Annotated[int, msgspec.Meta(ge=1)] = 30
    gateway_policy: bool = True
    """Create a managed policy that allows sending to the queue, for the gateway's role."""
    alarm_topic_arn: (
        Annotated[str, msgspec.Meta(pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]+$")] | None
    ) = None
    """An SNS topic the alarms notify (none: the alarms only show in CloudWatch)."""

    def __post_init__(self) -> None:
        if self.batch_size > 10 and self.max_batching_window_seconds < 1:
            # SQS event sources reject larger batches without a batching window.
            raise ValueError("batch_size above 10 needs max_batching_window_seconds of at least 1")

    @property
    def visibility_timeout_seconds(self) -> int:
        """Six times the function timeout plus the batching window, as AWS
        recommends: a batch being retried after a throttle stays invisible."""
        return 6 * self.function_timeout_seconds + self.max_batching_window_seconds

    @property
    def is_production(self) -> bool:
        return self.stage == "prod"


def _is_cdk_own(key: str) -> bool:
    """Feature flags (``@aws-cdk/...``) and the toolkit's own keys (``aws:cdk:...``,
    ``cdk-...``) are CDK's, not this stack's."""
    return ":" in key or "/" in key or key.startswith(("cdk", "acknowledged-issue-numbers"))


def settings_from_context(context: Mapping[str, Any]) -> StackSettings:
    """Settings from CDK context values (strings from ``-c`` or JSON values from
    ``cdk.json``); unknown keys are an error so that a typo never goes unseen."""
    values = {key: value for key, value in context.items() if not _is_cdk_own(key)}
    for optional in ("retention_days", "alarm_topic_arn"):
        if values.get(optional) in ("", "none", "None"):
            values[optional] = None
    try:
        return msgspec.convert(values, StackSettings, strict=False)
    except msgspec.ValidationError as error:
        reason, _, where = str(error).partition(" - at `$.")
        setting = where.rstrip("`")
        if setting == "stage":
            reason += " (expected dev or prod)"
        prefix = f"invalid stack setting {setting}" if setting else "invalid stack setting"
        raise InvalidStackSettings(f"{prefix}: {reason}") from None
