"""``send``, ``flow`` and ``events``: putting events in and reading them back."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
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
from eventtrail.cli.render import events_table, flow_table
from eventtrail.config import open_queue, open_store
from eventtrail.event import InvalidEvent, encode_event, encode_events, parse_event
from eventtrail.times import parse_moment

__all__ = ["events", "flow", "read_bodies", "send"]


def _read(name: str) -> str:
    try:
        raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as error:
        raise UsageError(f"{name}: cannot read: {error.strerror or error}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{name}: not UTF-8 text (byte {error.start})") from None


def read_bodies(name: str, text: str, *, max_bytes: int) -> list[str]:
    """The message bodies in one input: a JSON event, a JSON array of events
    (what ``flow --json`` prints) or NDJSON lines, each validated. Raises
    :class:`UsageError` at the first bad one, naming the file and line."""
    label = "<stdin>" if name == "-" else name
    stripped = text.strip()
    if not stripped:
        raise UsageError(f"{label}: no events in it")
    try:
        document = msgspec.json.decode(stripped)
    except msgspec.DecodeError:
        document = None  # several documents: NDJSON
    if isinstance(document, list):
        bodies = [msgspec.json.encode(item).decode() for item in document]
        where = [f"{label}: event {n}" for n in range(1, len(bodies) + 1)]
    elif document is not None:
        bodies, where = [stripped], [label]
    else:
        bodies, where = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                bodies.append(line.strip())
                where.append(f"{label}:{number}")
    for body, place in zip(bodies, where, strict=True):
        try:
            parse_event(body, max_bytes=max_bytes)
        except InvalidEvent as error:
            raise UsageError(f"{place}: {error}") from None
    return bodies


def send(
    files: Annotated[
        list[str],
        typer.Argument(help="Files holding one JSON event, a JSON array, or NDJSON lines; - for stdin."),
    ],
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="Send each file's bytes as one message, unvalidated (like aws sqs send-message)."
        ),
    ] = False,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Validate events and put them on the queue.

    Every file is validated before anything is sent: one bad event sends
    nothing and exits with code 2, naming the file, line and field.
    """
    settings = settings_from(backend, data_dir, config_file)
    bodies: list[str] = []
    for name in files:
        text = _read(name)
        if raw:
            bodies.append(text)
        else:
            bodies.extend(read_bodies(name, text, max_bytes=settings.max_body_bytes))
    with open_queue(settings) as queue:
        ids = queue.send(bodies)
    err_console.print(f"sent {len(ids)} message{'s' if len(ids) != 1 else ''}")


def flow(
    request_id: Annotated[str, typer.Argument(help="The request id (the events' requestId).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array of events in the wire format.")
    ] = False,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Show one request's events in time order, as a waterfall."""
    settings = settings_from(backend, data_dir, config_file)
    with open_store(settings) as store:
        found = store.flow(request_id)
    if as_json:
        write_json(encode_events(found))
        return
    if not found:
        err_console.print(f"no events for request {request_id}")
        raise typer.Exit(1)
    console.print(flow_table(request_id, found))


def _moment(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_moment(text)
    except ValueError as error:
        raise UsageError(f"{option}: {error}") from None


def events(
    type: Annotated[str | None, typer.Option("--type", "-t", help="Events of this type.")] = None,
    source: Annotated[str | None, typer.Option("--source", "-s", help="Events from this source.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="From this time on (inclusive): ISO 8601, or a time ago such as 15m or 2h."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Before this time (exclusive); same forms as --since.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Events per page.")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="Continue after a previous page (its printed cursor).")
    ] = None,
    newest_first: Annotated[bool, typer.Option("--newest-first", help="Newest events first.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"events": [...], "cursor": ...} as JSON.')
    ] = False,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """List events of one type or one source in a time range, a page at a time."""
    if (type is None) == (source is None):
        raise UsageError("give exactly one of --type and --source")
    settings = settings_from(backend, data_dir, config_file)
    start, end = _moment("--since", since), _moment("--until", until)
    with open_store(settings) as store:
        page = store.events(
            type=type,
            source=source,
            since=start,
            until=end,
            limit=limit,
            cursor=cursor,
            newest_first=newest_first,
        )
    if as_json:
        body = b",".join(encode_event(event) for event in page.events)
        write_json(b'{"events":[' + body + b'],"cursor":' + msgspec.json.encode(page.cursor) + b"}")
        return
    if not page.events:
        err_console.print("no events")
        return
    console.print(events_table(page.events))
    if page.cursor:
        err_console.print(f"more: --cursor {page.cursor}")
