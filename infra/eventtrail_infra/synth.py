"""Synthesizing the app from Python, without the CDK CLI.

The CDK CLI gives the app the context of ``infra/cdk.json`` (the feature
flags among it); :func:`synthesize` reads the same file, so that both ways
make the same template.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_cdk import App, Stack, cx_api

from eventtrail_infra.asset import DEFAULT_ASSET_DIR, build_asset
from eventtrail_infra.settings import settings_from_context
from eventtrail_infra.stack import EventTrailStack

__all__ = ["CDK_JSON", "add_stack", "cdk_json_context", "synthesize"]

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"


def add_stack(app: App, *, asset_dir: Path | None = None, build: bool = True) -> EventTrailStack:
    """The stack as the app's context says (see :class:`StackSettings`), its
    asset built first unless ``build`` is false."""
    settings = settings_from_context(app.node.get_all_context())
    asset = asset_dir or DEFAULT_ASSET_DIR
    if build:
        build_asset(asset)
    return EventTrailStack(
        app,
        settings.stack_name,
        settings=settings,
        asset_dir=asset,
        description="eventtrail: gateway calls -> SQS -> Lambda -> DynamoDB",
    )


def cdk_json_context() -> dict[str, Any]:
    """The ``context`` of ``infra/cdk.json``: the stage and the feature flags."""
    context: dict[str, Any] = json.loads(CDK_JSON.read_text())["context"]
    return context


def synthesize(
    output: Path,
    context: Mapping[str, Any] | None = None,
    *,
    asset_dir: Path | None = None,
    build: bool = True,
) -> tuple[cx_api.CloudAssembly, Stack]:
    """Write the cloud assembly (templates, asset manifest, assets) to ``output``;
    ``context`` goes over that of ``cdk.json``, as ``cdk synth -c`` does."""
    app = App(outdir=str(output), context={**cdk_json_context(), **(context or {})})
    stack = add_stack(app, asset_dir=asset_dir, build=build)
    return app.synth(), stack
