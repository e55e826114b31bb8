"""``dlq list|show|redrive``: the messages that could not be stored."""

from __future__ import annotations

from datetime import datetime
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
from eventtrail.queue import DeadLetter, UnknownDeadLetter

__all__ = ["app"]

app = typer.Typer(
    help="Inspect and redrive dead letters: messages that could not be stored.", no_args_is_help=True
)


def _document(letter: DeadLetter) -> dict[str, object]:
    return {
        "id": letter.id,
        "reason": letter.reason,
        "receiveCount": letter.receive_count,
        "sentAt": datetime.fromtimestamp(letter.sent_at).astimezone().isoformat(),
        "failedAt": datetime.fromtimestamp(letter.failed_at).astimezone().isoformat(),
        "body": letter.body,
    }


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
        write_json(msgspec.json.encode([_document(letter) for letter in letters]))
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
    document = _document(letter)
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
