"""The ``eventtrail`` command."""

from __future__ import annotations

import sys

import typer

from eventtrail.cli import aws, dlq, infra
from eventtrail.cli.common import UsageError, fail
from eventtrail.cli.demo import demo
from eventtrail.cli.events import events, flow, send
from eventtrail.cli.gateway import gateway, up
from eventtrail.cli.health import health
from eventtrail.cli.serve import serve
from eventtrail.cli.worker import purge, status, worker
from eventtrail.config import ConfigError
from eventtrail.queue import QueueError
from eventtrail.store import InvalidCursor, StoreError

__all__ = ["app", "main"]

app = typer.Typer(
    name="eventtrail",
    help="Record every call an API gateway makes as an immutable event, and see each request's whole flow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help texts carry "[env: ...]" and "[default: ...]" notes, which rich
    # markup would swallow as style tags.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(send)
app.command()(flow)
app.command()(events)
app.command()(worker)
app.command()(status)
app.command()(purge)
app.command()(demo)
app.command()(health)
app.command()(serve)
app.command()(gateway)
app.command()(up)
app.add_typer(dlq.app, name="dlq")
app.add_typer(aws.app, name="aws")
app.add_typer(infra.app, name="infra")


def main() -> None:
    """Run the CLI; known failures are one line on stderr, never a traceback."""
    try:
        app(prog_name="eventtrail")
    except (UsageError, ConfigError, InvalidCursor) as error:
        _exit_with(str(error), code=2)
    except (QueueError, StoreError) as error:
        _exit_with(str(error), code=1)
    except KeyboardInterrupt:
        sys.exit(130)


def _exit_with(message: str, *, code: int) -> None:
    try:
        fail(message, code)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
