"""``infra synth|build-asset``: the AWS stack (CDK), offline.

The stack's code lives in the source checkout's ``infra/`` folder, not in the
runtime package, and needs the ``cdk`` extra: both are loaded only when one of
these commands runs, so the rest of the CLI stays fast without them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer

import eventtrail
from eventtrail.cli.common import UsageError, console, fail

__all__ = ["app", "infra_dir"]

app = typer.Typer(
    help="The AWS stack (CDK v2): synthesize its template and build its Lambda asset offline.",
    no_args_is_help=True,
)


def infra_dir() -> Path:
    """The checkout's ``infra/`` folder (next to ``src/``)."""
    return Path(eventtrail.__file__).resolve().parents[2] / "infra"


def _load_infra() -> None:
    """Put ``infra/`` on the import path, or stop with one line saying what is missing."""
    if importlib.util.find_spec("aws_cdk") is None:
        raise UsageError("the infra commands need the cdk extra: pip install 'eventtrail[cdk]'")
    folder = infra_dir()
    if not (folder / "eventtrail_infra").is_dir():
        raise UsageError(
            f"{folder / 'eventtrail_infra'} not found: the stack ships with the source checkout,"
            " not the installed package"
        )
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    # Quiets jsii's Node.js banner before anything imports the CDK.
    import eventtrail_infra  # noqa: F401


def _context(pairs: list[str]) -> dict[str, str]:
    context = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise UsageError(f"--context {pair!r}: expected KEY=VALUE")
        context[key] = value
    return context


@app.command()
def synth(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the cloud assembly (template, assets).")
    ],
    context: Annotated[
        list[str] | None,
        typer.Option(
            "--context",
            "-c",
            help="A stack setting, KEY=VALUE (e.g. stage=prod, batch_size=50); repeatable.",
        ),
    ] = None,
    asset_dir: Annotated[
        Path | None,
        typer.Option("--asset-dir", help="Where to build the Lambda asset. [default: infra/.asset/lambda]"),
    ] = None,
) -> None:
    """Synthesize the stack's CloudFormation template without the CDK CLI."""
    values = _context(context or [])
    _load_infra()
    from eventtrail_infra.asset import AssetBuildError
    from eventtrail_infra.settings import InvalidStackSettings, settings_from_context

    try:
        settings_from_context(values)  # before the CDK starts: a typo fails in milliseconds
    except InvalidStackSettings as error:
        raise UsageError(str(error)) from None
    from eventtrail_infra.synth import synthesize

    try:
        assembly, stack = synthesize(output, values, asset_dir=asset_dir)
    except AssetBuildError as error:
        fail(str(error))
    template = Path(assembly.directory) / stack.template_file
    console.print(f"{template}")


@app.command("build-asset")
def build_asset(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Asset folder. [default: infra/.asset/lambda]"),
    ] = None,
) -> None:
    """Prepare the Lambda asset: the eventtrail package and its runtime libraries."""
    _load_infra()
    from eventtrail_infra import asset

    try:
        built = asset.build_asset(output or asset.DEFAULT_ASSET_DIR)
    except asset.AssetBuildError as error:
        fail(str(error))
    console.print(f"{built}")
