"""What every command shares: the backend options, settings, reading the
times people type, output helpers and the one-line errors."""

from __future__ import annotations

import math
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from eventtrail.cli.render import escape_controls_in_json, shown
from eventtrail.config import ConfigError, Settings, load_settings
from eventtrail.times import parse_duration, parse_moment

__all__ = [
    "Backend",
    "ConfigFile",
    "DataDir",
    "MaxReceives",
    "UsageError",
    "bind_port",
    "console",
    "duration_option",
    "err_console",
    "fail",
    "finite",
    "parsed_option",
    "settings_from",
    "time_range",
    "write_json",
]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


#: An error line longer than this loses its middle (a pasted megabyte helps no one).
_MAX_ERROR_CHARS = 1000

_Parsed = TypeVar("_Parsed")


class UsageError(Exception):
    """Bad input from the user: printed as one line (then ``details``, one
    indented line each), exit code 2."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.details = tuple(details)


Backend = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="local (SQLite files) or aws (SQS + DynamoDB). [env: EVENTTRAIL_BACKEND]",
        show_default=False,
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder of the local backend's files. [env: EVENTTRAIL_DATA_DIR; default: ./.eventtrail]",
        show_default=False,
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config-file",
        help="Settings file (TOML). [env: EVENTTRAIL_CONFIG; default: ./eventtrail.toml if present]",
        show_default=False,
    ),
]
MaxReceives = Annotated[
    int | None,
    typer.Option(
        min=1, help="Receives before a failing message is dead-lettered. [default: 5]", show_default=False
    ),
]


def settings_from(
    backend: str | None = None,
    data_dir: Path | None = None,
    config_file: Path | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from flags over environment over config file over defaults."""
    try:
        return load_settings(
            {"backend": backend, "data_dir": str(data_dir) if data_dir else None, **overrides},
            config_file=config_file,
        )
    except ConfigError as error:
        raise UsageError(str(error)) from None


def parsed_option(option: str, parse: Callable[[str], _Parsed], text: str) -> _Parsed:
    """``parse(text)``, a ValueError becoming the usage error of ``option``."""
    try:
        return parse(text)
    except ValueError as error:
        raise UsageError(f"{option}: {error}") from None


def time_range(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """``--since`` and ``--until`` as moments (a time ago counts back from
    one same now), refusing a range that ends before it starts."""
    now = datetime.now(UTC)
    start = parsed_option("--since", lambda text: parse_moment(text, now=now), since) if since else None
    end = parsed_option("--until", lambda text: parse_moment(text, now=now), until) if until else None
    if start is not None and end is not None and start > end:
        raise UsageError(f"--since {start.isoformat()} is after --until {end.isoformat()}")
    return start, end


def duration_option(option: str, text: str) -> timedelta:
    """A duration option such as ``--window 15m``."""
    return parsed_option(option, parse_duration, text)


def finite(value: float | None) -> float | None:
    """Option callback refusing NaN and infinities, which slip through ranges."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _middle_elided(message: str) -> str:
    if len(message) <= _MAX_ERROR_CHARS:
        return message
    half = _MAX_ERROR_CHARS // 2
    return f"{message[:half]}…{message[-half:]}"


def fail(message: str, code: int = 1, details: Sequence[str] = ()) -> NoReturn:
    """Print ``error: message`` on stderr (one line: whatever it quotes is
    shown as text with its control characters visible), then each of
    ``details`` indented, and exit with ``code``."""
    err_console.print(Text.assemble(("error: ", "bold red"), shown(_middle_elided(message))), soft_wrap=True)
    for line in details:
        err_console.print(Text.assemble("  ", shown(_middle_elided(line))), soft_wrap=True)
    raise typer.Exit(code)


def write_json(data: bytes) -> None:
    """Print JSON on stdout with every control and invisible formatting
    character escaped, so that piping it to a terminal is as safe as a table."""
    sys.stdout.buffer.write(escape_controls_in_json(data) + b"\n")
    sys.stdout.flush()


def bind_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` before a server starts, so that a taken
    port is one error line with nothing started and nothing announced."""
    from eventtrail.web.server import PortUnavailable, bind

    try:
        return bind(host, port)
    except PortUnavailable as error:
        raise UsageError(f"{error} (--port 0 picks a free one)") from None
