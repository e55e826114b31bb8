"""``dlq list|show|redrive``: the messages that could not be stored."""

from __future__ import annotations

from typing import Annotated

import msgspec
import typer

from eventtrail.cli.common import (
    Backend,
    ConfigFile,
    DataDir,
    UsageError,
    console,
    err_console,
    settings_from,
    write_json,
)
from eventtrail.cli.render import dead_letters_table
from eventtrail.config import open_queue
from eventtrail.queue import UnknownDeadLetter

__all__ = ["app"]

app = typer.Typer(
    help="Inspect and redrive dead letters: messages that could not be stored.", no_args_is_help=True
)


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """List dead letters, oldest first, with why each failed."""
    settings = settings_from(backend, data_dir, config_file)
    with open_queue(settings) as queue:
        letters = queue.dead_letters(limit)
    if as_json:
        write_json(msgspec.json.encode([letter.to_document() for letter in letters]))
    elif letters:
        console.print(dead_letters_table(letters))
    else:
        err_console.print("no dead letters")


@app.command()
def show(
    message_id: Annotated[str, typer.Argument(metavar="ID", help="A dead letter's id (from dlq list).")],
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Show one dead letter: why it failed, and its whole body."""
    settings = settings_from(backend, data_dir, config_file)
    with open_queue(settings) as queue:
        try:
            letter = queue.get_dead_letter(message_id)
        except UnknownDeadLetter as error:
            raise UsageError(str(error)) from None
    document = letter.to_document()
    body = document.pop("body")
    for key, value in document.items():
        console.print(f"[bold]{key}:[/] {value}", markup=True, soft_wrap=True)
    console.print("[bold]body:[/]", markup=True)
    console.print(body, markup=False, soft_wrap=True)


@app.command()
def redrive(
    message_ids: Annotated[
        list[str] | None, typer.Argument(metavar="ID...", help="Dead letters to send back.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Send every dead letter back.")] = False,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Send dead letters back to the queue (after fixing what made them fail)."""
    if bool(message_ids) == all_:
        raise UsageError("give dead letter ids or --all (not both)")
    settings = settings_from(backend, data_dir, config_file)
    with open_queue(settings) as queue:
        try:
            moved = queue.redrive(None if all_ else message_ids)
        except UnknownDeadLetter as error:
            raise UsageError(str(error)) from None
    err_console.print(f"redrove {moved} message{'s' if moved != 1 else ''}")
