"""One synthesis for the whole session: a dev stack (the app's own path, from
context) and a production stack, checked by cdk-nag while they synthesize."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
if str(INFRA) not in sys.path:
    sys.path.insert(0, str(INFRA))

# Before the CDK's first import, which starts jsii: its Node.js banner stays quiet.
import eventtrail_infra  # noqa: E402, F401

pytest.importorskip("aws_cdk", reason="the cdk extra is not installed")

from aws_cdk import App, Validations  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402
from cdk_nag import AwsSolutionsChecks  # noqa: E402

from eventtrail_infra.asset import build_asset  # noqa: E402
from eventtrail_infra.settings import StackSettings  # noqa: E402
from eventtrail_infra.stack import EventTrailStack  # noqa: E402
from eventtrail_infra.synth import add_stack, cdk_json_context  # noqa: E402

#: The dev stack's settings, as `cdk synth -c` would give them (strings): every
#: name differs from the runtime's defaults, so a test passing proves the names
#: travel from the settings, through the stack's outputs, to the commands.
DEV_CONTEXT = {
    "stack_name": "trail-dev",
    "queue_name": "trail-dev-events",
    "dlq_name": "trail-dev-events-dead",
    "table_name": "trail-dev-table",
    "max_receive_count": "3",
    "batch_size": "50",
    "max_batching_window_seconds": "2",
    "maximum_concurrency": "4",
    "function_timeout_seconds": "20",
    "function_memory_mb": "256",
    "index_shards": "4",
}
PROD_SETTINGS = StackSettings(
    stack_name="trail-prod",
    stage="prod",
    queue_name="trail-prod-events",
    dlq_name="trail-prod-events-dead",
    table_name="trail-prod-table",
    retention_days=90,
    gateway_policy=False,
    alarm_topic_arn="arn:aws:sns:us-east-1:123456789012:on-call",
)


@dataclass(frozen=True)
class Synthesized:
    directory: Path
    dev: EventTrailStack
    prod: EventTrailStack
    asset_dir: Path
    validation_error: str | None
    """What cdk-nag's validation raised, if anything."""

    def template_path(self, stack: EventTrailStack) -> Path:
        return self.directory / stack.template_file

    def template_json(self, stack: EventTrailStack) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.template_path(stack).read_text())
        return loaded

    def template(self, stack: EventTrailStack) -> Template:
        return Template.from_json(self.template_json(stack))

    def validation_report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads((self.directory / "validation-report.json").read_text())
        return report


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthesized]:
    asset_dir = build_asset(tmp_path_factory.mktemp("asset") / "lambda")
    directory = tmp_path_factory.mktemp("cdk.out")
    # cdk.json's context (feature flags) under the dev settings, as `cdk synth -c` gives them.
    app = App(outdir=str(directory), context={**cdk_json_context(), **DEV_CONTEXT})
    dev = add_stack(app, asset_dir=asset_dir, build=False)
    prod = EventTrailStack(app, PROD_SETTINGS.stack_name, settings=PROD_SETTINGS, asset_dir=asset_dir)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    error = None
    try:
        app.synth()
    except RuntimeError as raised:  # the templates are written before validation runs
        error = str(raised)
    yield Synthesized(directory, dev, prod, asset_dir, error)


@pytest.fixture(scope="session")
def dev_template(synthesized: Synthesized) -> Template:
    return synthesized.template(synthesized.dev)


@pytest.fixture(scope="session")
def prod_template(synthesized: Synthesized) -> Template:
    return synthesized.template(synthesized.prod)
