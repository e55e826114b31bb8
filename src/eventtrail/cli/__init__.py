"""The ``eventtrail`` command."""

from __future__ import annotations

import sys
from typing import Any, Protocol, cast

import typer

from eventtrail.cli import aws, dlq, infra, ingest
from eventtrail.cli.common import UsageError, fail
from eventtrail.cli.demo import demo, demo_services
from eventtrail.cli.events import events, flow, send
from eventtrail.cli.gateway import gateway, up
from eventtrail.cli.health import health
from eventtrail.cli.otlp import otlp
from eventtrail.cli.rebuild import rebuild
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
app.command()(demo_services)
app.command()(health)
app.command()(rebuild)
app.command()(serve)
app.command()(otlp)
app.command()(gateway)
app.command()(up)
app.add_typer(dlq.app, name="dlq")
app.add_typer(aws.app, name="aws")
app.add_typer(infra.app, name="infra")
app.add_typer(ingest.app, name="ingest")


class _ClickError(Protocol):
    exit_code: int
    ctx: Any

    def format_message(self) -> str: ...

    def show(self) -> None: ...


def _click_exception(name: str) -> type[Exception]:
    """One of click's exception classes, found from typer's public
    BadParameter: typer 0.2x ships click under a private package, earlier
    versions use click itself."""
    return next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == name)


_ClickUsageError = _click_exception("UsageError")
_ClickException = _click_exception("ClickException")


def main() -> None:
    """Run the CLI; known failures are one line on stderr, never a traceback."""
    try:
        # Not standalone: click's own usage errors (a bad --limit, an unknown
        # option) come here too, to be one line like every other error.
        outcome = app(prog_name="eventtrail", standalone_mode=False)
    except _ClickException as raised:
        error = cast(_ClickError, raised)
        if type(raised).__name__ == "NoArgsIsHelpError":
            error.show()  # the help of a group given no command
            sys.exit(error.exit_code)
        if isinstance(raised, _ClickUsageError):
            command = error.ctx.command_path if error.ctx else "eventtrail"
            _exit_with(f"{error.format_message()} (see {command} --help)", code=2)
        _exit_with(error.format_message(), code=error.exit_code)
    except UsageError as error:
        _exit_with(str(error), code=2, details=error.details)
    except (ConfigError, InvalidCursor) as error:
        _exit_with(str(error), code=2)
    except (QueueError, StoreError) as error:
        _exit_with(str(error), code=1)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (eventtrail events | head): nothing left to say.
        sys.stderr.close()
        sys.exit(1)
    if isinstance(outcome, int) and outcome:
        sys.exit(outcome)


def _exit_with(message: str, *, code: int, details: tuple[str, ...] = ()) -> None:
    try:
        fail(message, code, details)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
