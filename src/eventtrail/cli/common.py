"""What every command shares: the backend options, settings, output helpers
and the one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from eventtrail.config import ConfigError, Settings, load_settings

__all__ = [
    "Backend",
    "ConfigFile",
    "DataDir",
    "MaxReceives",
    "UsageError",
    "console",
    "err_console",
    "fail",
    "settings_from",
    "write_json",
]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


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


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise typer.Exit(code)


def write_json(data: bytes) -> None:
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()
