"""``dlq list|show|redrive``: the messages that could not be stored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
import typer
from rich.text import Text

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
from eventtrail.cli.render import dead_letters_view, moment_text, plural, shown
from eventtrail.config import open_queue
from eventtrail.queue import DeadLetter, Queue, UnknownDeadLetter

__all__ = ["PREFIX_SEARCH_LIMIT", "app", "resolve_dead_letters"]

#: How many dead letters (the oldest) a prefix is looked for in: the queue
#: port lists dead letters without paging. A whole id is found beyond them.
PREFIX_SEARCH_LIMIT = 10_000
#: Matches of an ambiguous prefix listed in the error.
_SHOWN_MATCHES = 10

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
    with open_queue(settings, read_only=True) as queue:
        letters = queue.dead_letters(limit)
    if as_json:
        write_json(msgspec.json.encode([letter.to_document() for letter in letters]))
    elif letters:
        console.print(dead_letters_view(letters, console.width), crop=False)
    else:
        err_console.print("no dead letters")


def resolve_dead_letters(queue: Queue, prefixes: Sequence[str]) -> list[DeadLetter]:
    """The dead letter each of ``prefixes`` names, like git names a commit: a
    whole id, or the start of exactly one id (case aside). Raises
    :class:`UsageError` for an empty, unknown or ambiguous one, listing the
    matches of an ambiguous one."""
    if any(not prefix for prefix in prefixes):
        raise UsageError("a dead letter id cannot be empty; `eventtrail dlq list` shows them")
    letters = queue.dead_letters(PREFIX_SEARCH_LIMIT)
    found: dict[str, DeadLetter] = {}
    for prefix in prefixes:
        letter = _one_named(queue, letters, prefix)
        found.setdefault(letter.id, letter)
    return list(found.values())


def _first_words(reason: str, length: int = 60) -> str:
    return reason if len(reason) <= length else reason[: length - 1] + "…"


def _one_named(queue: Queue, letters: list[DeadLetter], prefix: str) -> DeadLetter:
    wanted = prefix.lower()
    exact = [letter for letter in letters if letter.id.lower() == wanted]
    matches = exact or [letter for letter in letters if letter.id.lower().startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        details = [
            f"{letter.id}  failed at {moment_text(letter.failed_at)}: {_first_words(letter.reason)}"
            for letter in matches[:_SHOWN_MATCHES]
        ]
        if len(matches) > _SHOWN_MATCHES:
            details.append(f"and {len(matches) - _SHOWN_MATCHES:,} more")
        raise UsageError(
            f"the id prefix {prefix!r} is ambiguous: {plural(len(matches), 'dead letter')} match;"
            " give more of the id",
            details,
        )
    if len(letters) < PREFIX_SEARCH_LIMIT:
        raise UsageError(f"no dead letter has the id {prefix!r} or an id starting with it")
    try:
        return queue.get_dead_letter(prefix)
    except UnknownDeadLetter:
        raise UsageError(
            f"no dead letter has the id {prefix!r}, and none of the oldest"
            f" {PREFIX_SEARCH_LIMIT:,} has an id starting with it"
        ) from None


@app.command()
def show(
    message_id: Annotated[
        str, typer.Argument(metavar="ID", help="A dead letter's id (from dlq list), or its first characters.")
    ],
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Show one dead letter: why it failed, and its whole body."""
    settings = settings_from(backend, data_dir, config_file)
    with open_queue(settings, read_only=True) as queue:
        (letter,) = resolve_dead_letters(queue, [message_id])
    document = letter.to_document()
    body = document.pop("body")
    for key, value in document.items():
        console.print(Text.assemble((f"{key}:", "bold"), " ", shown(value)), soft_wrap=True)
    console.print(Text("body:", style="bold"))
    console.print(shown(body, keep_lines=True), soft_wrap=True)


@app.command()
def redrive(
    message_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="ID...", help="Dead letters to send back: ids, or their first characters."),
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
        chosen = None if all_ else [letter.id for letter in resolve_dead_letters(queue, message_ids or [])]
        try:
            moved = queue.redrive(chosen)
        except UnknownDeadLetter as error:
            # Redriven by someone else between the listing and now.
            raise UsageError(str(error)) from None
    err_console.print(f"redrove {plural(moved, 'message')}")
