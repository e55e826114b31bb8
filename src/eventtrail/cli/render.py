"""How recorded things look in a terminal.

Everything an event, a dead letter or a report carries was written by someone
else (a client's path, a service's name, a queue's reason), so it is shown as
text, never as rich markup, and with every control character made visible:
:func:`shown` is the one way a recorded string reaches the terminal.

Tables fit the terminal the way ``kubectl get`` and ``gh`` do: ids, service
names and timestamps are never cut; when the width runs out, the least useful
columns go first, and if the essential ones still do not fit, each row becomes
a short record with its long values on lines of their own.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from eventtrail.calls import DISCONNECTED, ERROR, REQUEST, RESPONSE, service_of
from eventtrail.event import Event
from eventtrail.queue import DeadLetter

__all__ = [
    "Column",
    "dead_letters_view",
    "escape_controls",
    "escape_controls_in_json",
    "events_view",
    "fit",
    "flow_view",
    "json_text",
    "moment_text",
    "plural",
    "shown",
]

# Unicode categories that move the cursor, change the terminal's state or the
# direction of the text, or cannot be encoded: C0/C1 controls and DEL (Cc),
# bidi overrides and other invisible formatting (Cf), lone surrogates (Cs),
# line and paragraph separators (Zl, Zp).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
_NOT_PRINTABLE_ASCII_KEEPING_LINES = re.compile(r"[^\x20-\x7e\n\t]")

_STYLE = {REQUEST: "cyan", RESPONSE: "green", ERROR: "bold red"}
_GAP = 2
_TIMELINE_WIDTH = 24
#: Characters of a value shown in a listing; the --json forms have them all.
_SUMMARY_CHARS = 160
#: Characters of a word in a call's summary (a method, a status, an error kind).
_WORD_CHARS = 40


def _escape(character: str) -> str:
    if unicodedata.category(character) not in _HIDDEN_CATEGORIES:
        return character
    code = ord(character)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape_controls(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with each control or invisible formatting character written
    as its Python escape (``\\x1b``, ``\\u202e``); newlines and tabs stay
    when ``keep_lines``."""
    if text.isascii() and text.isprintable():
        return text
    pattern = _NOT_PRINTABLE_ASCII_KEEPING_LINES if keep_lines else _NOT_PRINTABLE_ASCII
    return pattern.sub(lambda match: _escape(match.group()), text)


def _json_escape(match: re.Match[str]) -> str:
    character = match.group()
    if unicodedata.category(character) not in _HIDDEN_CATEGORIES:
        return character
    code = ord(character)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


def escape_controls_in_json(document: bytes) -> bytes:
    """Encoded JSON with its C1 controls, DEL, bidi overrides and other
    invisible characters written as ``\\uXXXX`` escapes: the same document,
    safe to print. (JSON encoders escape only C0 controls; outside strings
    JSON is ASCII, so every such character is inside a string.)"""
    if document.isascii() and b"\x7f" not in document:
        return document
    text = document.decode("utf-8", errors="surrogatepass")
    return _NOT_PRINTABLE_ASCII_KEEPING_LINES.sub(_json_escape, text).encode()


def _elide(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    return text[: max_chars - 1] + "…"


def shown(value: object, style: str = "", *, keep_lines: bool = False, max_chars: int | None = None) -> Text:
    """A recorded value as terminal text: a string as it is, anything else
    as JSON; never markup, no control character left, at most ``max_chars``."""
    text = value if isinstance(value, str) else json_text(value)
    return Text(escape_controls(_elide(text, max_chars), keep_lines=keep_lines), style=style)


def json_text(value: object) -> str:
    """``value`` as compact JSON (``null``, ``"x"``), the way the wire shows it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


_SIBILANT_END = ("s", "x", "z", "ch", "sh")


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 event``, ``1,234 events``, ``2 dead letters``."""
    if count == 1:
        return f"1 {noun}"
    if plural_form is None:
        if noun.endswith(_SIBILANT_END):
            plural_form = noun + "es"
        elif noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
            plural_form = noun[:-1] + "ies"
        else:
            plural_form = noun + "s"
    return f"{count:,} {plural_form}"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a listing.

    ``key`` columns (ids, names, timestamps, counts) are never cut;
    ``optional`` ones are dropped when the width runs out, lowest
    ``drop_order`` first; ``flex`` ones take what is left, folded over several
    lines, and move to lines of their own when too little is left.
    """

    header: str
    role: Literal["key", "optional", "flex"] = "key"
    justify: Literal["left", "right"] = "left"
    drop_order: int = 0
    min_width: int = 20
    #: Meaningless without its header (a number): labelled in records.
    labelled: bool = False


def _width_of(cell: Text) -> int:
    return max((Text(line).cell_len for line in cell.plain.split("\n")), default=0)


def _share(space: int, wanted: list[int]) -> list[int]:
    """Split ``space`` among columns that want ``wanted`` cells each, the
    narrow ones getting all they want first (water filling)."""
    widths = [0] * len(wanted)
    pending = sorted(range(len(wanted)), key=lambda index: wanted[index])
    while pending:
        fair = space // len(pending)
        index = pending.pop(0)
        widths[index] = max(1, min(wanted[index], fair))
        space -= widths[index]
    return widths


def fit(
    columns: Sequence[Column], rows: Sequence[Sequence[Text]], width: int, title: Text | None = None
) -> RenderableType:
    """``rows`` as a table no wider than ``width`` that cuts no key cell, or
    as records when the key cells alone are too wide for one line. Print it
    with ``crop=False``."""
    natural = [
        max([len(column.header), *(_width_of(row[index]) for row in rows)])
        for index, column in enumerate(columns)
    ]
    kept = list(range(len(columns)))

    def needed(indexes: list[int]) -> int:
        total = sum(
            min(natural[i], columns[i].min_width) if columns[i].role == "flex" else natural[i]
            for i in indexes
        )
        return total + _GAP * (len(indexes) - 1)

    droppable = sorted(
        (i for i, column in enumerate(columns) if column.role == "optional"),
        key=lambda i: columns[i].drop_order,
    )
    while needed(kept) > width and droppable:
        kept.remove(droppable.pop(0))
    if needed(kept) > width:
        return _records(columns, rows, width, title)
    fixed = [i for i in kept if columns[i].role != "flex"]
    flexible = [i for i in kept if columns[i].role == "flex"]
    space = width - sum(natural[i] for i in fixed) - _GAP * (len(kept) - 1)
    widths = dict(zip(flexible, _share(space, [natural[i] for i in flexible]), strict=True))
    table = Table(
        box=None,
        padding=(0, 1),
        pad_edge=False,
        title=title,
        title_justify="left",
        header_style="bold",
        show_edge=False,
    )
    for index in kept:
        column = columns[index]
        flex = column.role == "flex"
        table.add_column(
            Text(column.header.upper()),
            justify=column.justify,
            width=widths[index] if flex else natural[index],
            no_wrap=not flex,
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(row[index] for index in kept))
    return table


def _records(
    columns: Sequence[Column], rows: Sequence[Sequence[Text]], width: int, title: Text | None
) -> RenderableType:
    """Each row as a first line of the key cells that fit side by side (the
    first one always), then indented ``header: value`` pairs: the other key
    cells (and those that need their header, such as numbers) side by side
    while they fit, then each flexible cell on lines of its own.

    Flexible values wrap, indented. Key values are never wrapped (print with
    ``crop=False``): one longer than the terminal is wrapped by the terminal,
    whole, and copies whole."""
    lines: list[RenderableType] = [title] if title is not None else []
    for row in rows:
        first = Text(no_wrap=True, overflow="ignore")
        pairs: list[Text] = []
        flexible: list[RenderableType] = []
        for column, cell in zip(columns, row, strict=True):
            if column.role == "optional" or not cell.plain:
                continue
            if column.role == "flex":
                labelled = Text.assemble(f"{column.header}: ", cell, overflow="fold")
                flexible.append(Padding(labelled, (0, 0, 0, _GAP), expand=False))
                continue
            fits = not first or first.cell_len + _GAP + _width_of(cell) <= width
            if fits and not column.labelled and not pairs:
                first.append(" " * _GAP if first else "")
                first.append_text(cell)
            else:
                pairs.append(Text.assemble(f"{column.header}: ", cell))
        if first:
            lines.append(first)
        lines.extend(_side_by_side(pairs, width))
        lines.extend(flexible)
    return Group(*lines)


def _side_by_side(pieces: list[Text], width: int) -> list[Text]:
    """``pieces`` on indented lines, as many on each as fit in ``width``."""
    packed: list[Text] = []
    for piece in pieces:
        if packed and packed[-1].cell_len + _GAP + piece.cell_len <= width:
            packed[-1].append(" " * _GAP)
        else:
            packed.append(Text(" " * _GAP, no_wrap=True, overflow="ignore"))
        packed[-1].append_text(piece)
    return packed


# The listings.


def _data_summary(data: dict[str, Any], skip: tuple[str, ...] = ()) -> Text:
    shown_data = {key: value for key, value in data.items() if key not in skip} if skip else data
    return shown(shown_data, max_chars=_SUMMARY_CHARS) if shown_data else Text("")


def _type_text(event: Event) -> Text:
    style = _STYLE.get(event.type, "")
    status = event.data.get("status")
    if event.type == RESPONSE and isinstance(status, int) and status >= 500:
        style = "bold red"
    elif event.type == ERROR and event.data.get("error") == DISCONNECTED:
        style = "yellow"
    return shown(event.type, style)


def _what(event: Event) -> tuple[Text, Text, Text]:
    """(who, what happened, details) of one event, in a call's words when it is one."""
    data = event.data
    service = service_of(event)
    if service is None or event.type not in _STYLE:
        return shown(event.source), _type_text(event), _data_summary(data)
    if event.type == REQUEST:
        details = Text(" ").join(
            [
                shown(data.get("method", ""), max_chars=_WORD_CHARS),
                shown(data.get("path", ""), max_chars=_SUMMARY_CHARS),
            ]
        )
        return shown(service), Text("→ request", style="cyan"), details
    if event.type == RESPONSE:
        status = data.get("status")
        failed = isinstance(status, int) and status >= 500
        latency = data.get("latencyMs")
        took = f"{latency:,.1f} ms" if isinstance(latency, int | float) else "? ms"
        details = Text.assemble(f"{took}, ", shown(data.get("bytesOut", "?"), max_chars=_WORD_CHARS), " B")
        what = shown(f"← {json_text(status)}", "bold red" if failed else "green", max_chars=_WORD_CHARS)
        return shown(service), what, details
    error = data.get("error", "error")
    # A call its client gave up on is no failure of the service's: not in red.
    style = "yellow" if error == DISCONNECTED else "bold red"
    return (
        shown(service),
        Text.assemble(("✗ ", style), shown(error, style, max_chars=_WORD_CHARS)),
        Text.assemble("after ", shown(data.get("elapsedMs", "?"), max_chars=_WORD_CHARS), " ms"),
    )


def flow_view(request_id: str, events: list[Event], width: int) -> RenderableType:
    """A request's events as a waterfall: offset from the first event, who,
    what happened, a bar for each call from its request to its end (dropped
    first on a narrow terminal), and details."""
    start = events[0].moment
    total_ms = max((events[-1].moment - start).total_seconds() * 1000, 1.0)
    started: dict[str, float] = {}
    rows: list[list[Text]] = []
    for event in events:
        offset = (event.moment - start).total_seconds() * 1000
        call_id = event.data.get("callId")
        begin = started.setdefault(call_id, offset) if isinstance(call_id, str) else offset
        left = int(begin / total_ms * (_TIMELINE_WIDTH - 1))
        right = max(left + 1, int(offset / total_ms * (_TIMELINE_WIDTH - 1)) + 1)
        who, what, details = _what(event)
        bar = Text(" " * left + "█" * (right - left), style=what.style)
        rows.append([Text(f"{offset:,.1f}"), who, what, bar, details])
    columns = [
        Column("+ms", justify="right"),
        Column("service"),
        Column("event"),
        Column("timeline", role="optional"),
        Column("details", role="flex", min_width=16),
    ]
    title = Text.assemble(
        "request ", shown(request_id), f": {plural(len(events), 'event')} over {total_ms:,.1f} ms"
    )
    return fit(columns, rows, width, title)


def events_view(events: list[Event], width: int) -> RenderableType:
    """Events one per row; the service a call event is about gets a column
    of its own, so that its name is never folded with the rest of ``data``."""
    rows: list[list[Text]] = []
    for event in events:
        service = service_of(event)
        rows.append(
            [
                shown(event.timestamp),
                _type_text(event),
                shown(event.source),
                shown(service or ""),
                shown(event.request_id),
                _data_summary(event.data, skip=("Name",) if service is not None else ()),
            ]
        )
    columns = [
        Column("timestamp"),
        Column("type"),
        Column("source"),
        Column("service"),
        Column("request"),
        Column("data", role="flex", min_width=24),
    ]
    return fit(columns, rows, width)


def moment_text(epoch: float) -> str:
    """A queue's epoch time in the local zone, to the second."""
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def dead_letters_view(letters: list[DeadLetter], width: int) -> RenderableType:
    rows = [
        [
            shown(letter.id),
            Text(moment_text(letter.failed_at)),
            Text(f"{letter.receive_count:,}"),
            shown(letter.reason, max_chars=_SUMMARY_CHARS),
            shown(letter.body, max_chars=_SUMMARY_CHARS // 2),
        ]
        for letter in letters
    ]
    columns = [
        Column("id"),
        Column("failed at"),
        Column("receives", justify="right", labelled=True),
        Column("reason", role="flex"),
        Column("body", role="flex"),
    ]
    return fit(columns, rows, width)
