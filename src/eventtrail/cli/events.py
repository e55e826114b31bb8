"""``send``, ``flow`` and ``events``: putting events in and reading them back."""

from __future__ import annotations

import shlex
import stat
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
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
    fail,
    settings_from,
    time_range,
    write_json,
)
from eventtrail.cli.render import events_view, flow_view, plural, shown
from eventtrail.config import ConfigError, Settings, open_queue, open_store
from eventtrail.event import MAX_DATA_DEPTH, InvalidEvent, encode_event, encode_events, parse_event
from eventtrail.queue import BodyTooLarge, PartialSend, Queue, QueueError, TransientQueueError
from eventtrail.retry import Backoff

__all__ = ["SEND_ROUNDS", "Body", "events", "flow", "read_bodies", "send"]


#: Rounds of sending what is still unsent after a failure that may pass
#: (a short network cut, a locked queue file), on top of botocore's 3 tries
#: of each call and the SQS adapter's 3 calls for failed entries: at most 27
#: calls for one batch of 10, sleeping up to 3 s between the rounds.
SEND_ROUNDS = Backoff(attempts=3, base=1.0, cap=4.0)


#: What JSON counts as whitespace (str.strip() would take more).
_JSON_SPACE = " \t\r\n"


@dataclass(frozen=True, slots=True)
class Body:
    """One message body and where it came from in the input."""

    text: str
    #: Where, as errors name it: ``file``, ``file:LINE`` or ``file: event N``.
    place: str
    #: Where, in words: ``file``, ``file line N`` or ``file event N``.
    spot: str


_DEFAULT_LIMIT = 50
#: Far above any cursor a store hands out (two 256-character keys and a
#: timestamp, in base64), far below a pasted file.
_MAX_CURSOR_CHARS = 4096


def _read(name: str) -> str:
    label = _label(name)
    try:
        if name == "-":
            if sys.stdin is None:
                raise UsageError(f"{label}: there is no standard input")
            raw = sys.stdin.buffer.read()
        else:
            # A device never ends (/dev/zero) or is not data; a FIFO is read
            # to its end, like standard input (process substitution).
            kind = Path(name).stat().st_mode
            if stat.S_ISCHR(kind) or stat.S_ISBLK(kind) or stat.S_ISSOCK(kind):
                raise UsageError(f"{label}: cannot read: not a file, a pipe or standard input")
            raw = Path(name).read_bytes()
    except OSError as error:
        raise UsageError(f"{label}: cannot read: {error.strerror or error}") from None
    try:
        # A leading byte order mark (Windows editors write one) is not data.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UsageError(f"{label}: not UTF-8 text (byte {error.start})") from None


def _label(name: str) -> str:
    return "<stdin>" if name == "-" else name


def read_bodies(name: str, text: str, *, max_bytes: int) -> list[Body]:
    """The message bodies in one input: a JSON event, a JSON array of events
    (what ``flow --json`` prints) or NDJSON lines, each validated. Raises
    :class:`UsageError` at the first bad one, naming the file and line."""
    label = _label(name)
    stripped = text.strip(_JSON_SPACE)
    if not stripped:
        raise UsageError(f"{label}: no events in it")
    try:
        document = msgspec.json.decode(stripped)
    except msgspec.DecodeError:
        document = None  # several documents: NDJSON
    except RecursionError:
        # The first JSON value nests deeper than any event can, whether the
        # file is one document or NDJSON: name the line it starts on.
        start = text[: text.index(stripped[0])].count("\n") + 1
        place = f"{label}:{start}" if "\n" in stripped else label
        raise UsageError(
            f"{place}: the JSON is nested too deeply to be an event"
            f" (an event's data nests {MAX_DATA_DEPTH} levels at most)"
        ) from None
    bodies: list[Body] = []
    if isinstance(document, list):
        for number, item in enumerate(document, start=1):
            place = f"{label}: event {number}"
            try:
                encoded = msgspec.json.encode(item).decode()
            except RecursionError:
                raise UsageError(f"{place}: the JSON is nested too deeply to be an event") from None
            bodies.append(Body(encoded, place, f"{label} event {number}"))
    elif document is not None:
        bodies.append(Body(stripped, label, label))
    else:
        # Lines end at \n only: JSON strings may hold U+2028 and the other
        # characters str.splitlines() also breaks at.
        for number, line in enumerate(text.split("\n"), start=1):
            if content := line.strip(_JSON_SPACE):
                bodies.append(Body(content, f"{label}:{number}", f"{label} line {number}"))
    if not bodies:
        raise UsageError(f"{label}: no events in it")
    for body in bodies:
        try:
            parse_event(body.text, max_bytes=max_bytes)
        except InvalidEvent as error:
            raise UsageError(f"{body.place}: {error}") from None
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
    skip: Annotated[
        int,
        typer.Option(
            min=0,
            help="Leave out the first N messages of the input (a send that stopped part way says which N).",
        ),
    ] = 0,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Validate events and put them on the queue.

    Every file is validated before anything is sent: one bad event sends
    nothing and exits with code 2, naming the file, line and field. A send
    that fails part way says how many were sent and where to resume, and
    exits with code 1.
    """
    settings = settings_from(backend, data_dir, config_file)
    bodies: list[Body] = []
    for name in files:
        text = _read(name)
        if raw:
            bodies.append(Body(text, _label(name), _label(name)))
        else:
            bodies.extend(read_bodies(name, text, max_bytes=settings.max_body_bytes))
    if skip > len(bodies):
        raise UsageError(f"--skip {skip}: the input holds only {len(bodies)} messages")
    bodies = bodies[skip:]
    with open_queue(settings) as queue:
        outcome = _send_all(queue, [body.text for body in bodies])
    if outcome.done:
        err_console.print(f"sent {plural(len(bodies), 'message')}")
        return
    if not any(outcome.sent) and outcome.failure is not None:
        fail(f"nothing was sent: {outcome.failure}")
    noun = "messages" if raw else "events"
    said = [f"sent {sum(outcome.sent):,} of {len(bodies):,} {noun}"]
    if outcome.too_large:
        spots = [bodies[index].spot for index in outcome.too_large]
        listed = ", ".join(spots[:3]) + (", ..." if len(spots) > 3 else "")
        said.append(f"{len(spots):,} too large for the queue ({listed}): {outcome.too_large_error}")
    if outcome.failure is not None:
        first = outcome.first_unsent
        command = shlex.join(
            ["eventtrail", "send", *(["--raw"] if raw else []), "--skip", str(skip + first), *files]
        )
        after = sum(outcome.sent[first:])
        again = (
            f" ({after:,} after it were sent too; sending them again stores nothing twice)" if after else ""
        )
        said.append(
            f"the rest were not sent: resume from {bodies[first].spot} with `{command}` and the same settings"
            f"{again}: {outcome.failure}"
        )
    fail("; ".join(said))


@dataclass(slots=True)
class _Outcome:
    """What became of each body of a send."""

    sent: list[bool]
    too_large: list[int]
    too_large_error: BodyTooLarge | None = None
    #: The failure that stopped the rest, if any.
    failure: QueueError | None = None

    @property
    def done(self) -> bool:
        return all(self.sent)

    @property
    def first_unsent(self) -> int:
        refused = set(self.too_large)
        return next(index for index, sent in enumerate(self.sent) if not sent and index not in refused)


def _send_all(queue: Queue, bodies: list[str]) -> _Outcome:
    """Send ``bodies``, again what is still unsent after a failure that may
    pass (in ``SEND_ROUNDS``), never a body the queue refused for its size."""
    outcome = _Outcome(sent=[False] * len(bodies), too_large=[])
    for _round in SEND_ROUNDS.delays():
        refused = set(outcome.too_large)
        unsent = [index for index, sent in enumerate(outcome.sent) if not sent and index not in refused]
        accepted = [True] * len(unsent)
        outcome.failure = None
        try:
            queue.send([bodies[index] for index in unsent])
        except PartialSend as partial:
            accepted = [found is not None for found in partial.ids]
            outcome.failure = partial.cause
        except BodyTooLarge as error:
            for position in error.indexes:
                accepted[position] = False
                outcome.too_large.append(unsent[position])
            outcome.too_large_error = error
        except QueueError as error:
            accepted = [False] * len(unsent)
            outcome.failure = error
        for index, taken in zip(unsent, accepted, strict=True):
            outcome.sent[index] = taken
        if not isinstance(outcome.failure, TransientQueueError):
            break
    outcome.too_large.sort()
    return outcome


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
    with open_store(settings, read_only=True) as store:
        found = store.flow(request_id)
    if as_json:
        write_json(encode_events(found))
        return
    if not found:
        fail(_why_no_events(settings, request_id), 1)
    console.print(flow_view(request_id, found, console.width), crop=False)


def _why_no_events(settings: Settings, request_id: str) -> str:
    """Why a request has no events: not stored yet, or never recorded."""
    try:
        with open_queue(settings, read_only=True) as queue:
            pending = queue.stats().pending
    except (QueueError, ConfigError):
        pending = 0  # the store answered; a queue that cannot is no clue either way
    quoted = repr(request_id)
    if pending:
        verb = "is" if pending == 1 else "are"
        return (
            f"no events for request {quoted} yet; {plural(pending, 'message')} {verb} still queued:"
            " run `eventtrail worker --drain` to store them"
        )
    return f"no events for request {quoted}: no such request has been stored"


def _next_page_command(
    kind: str,
    value: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    newest_first: bool,
    cursor: str,
) -> Text:
    """The whole command for the next page, on one line, ready to paste."""
    words = ["eventtrail", "events", f"--{kind}", value]
    if start is not None:
        words += ["--since", start.isoformat()]
    if end is not None:
        words += ["--until", end.isoformat()]
    if limit != _DEFAULT_LIMIT:
        words += ["--limit", str(limit)]
    if newest_first:
        words.append("--newest-first")
    words += ["--cursor", cursor]
    return Text.assemble("next page: ", shown(shlex.join(words)))


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
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Events per page.")] = _DEFAULT_LIMIT,
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
    if cursor is not None and len(cursor) > _MAX_CURSOR_CHARS:
        raise UsageError(
            f"--cursor: not a cursor from a previous page (those are under {_MAX_CURSOR_CHARS:,} characters)"
        )
    start, end = time_range(since, until)
    settings = settings_from(backend, data_dir, config_file)
    with open_store(settings, read_only=True) as store:
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
    console.print(events_view(page.events, console.width), crop=False)
    if page.cursor:
        kind, value = ("type", type) if type is not None else ("source", source or "")
        command = _next_page_command(kind, value, start, end, limit, newest_first, page.cursor)
        err_console.print(command, soft_wrap=True)
