"""How events look in a terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from eventtrail.calls import ERROR, REQUEST, RESPONSE, service_of
from eventtrail.event import Event
from eventtrail.queue import DeadLetter

__all__ = ["dead_letters_table", "events_table", "flow_table"]

_STYLE = {REQUEST: "cyan", RESPONSE: "green", ERROR: "bold red"}


def _data_summary(data: dict[str, Any], width: int = 80, skip: tuple[str, ...] = ()) -> str:
    text = " ".join(f"{key}={value}" for key, value in data.items() if key not in skip)
    return text if len(text) <= width else text[: width - 1] + "…"


def _type_text(event: Event) -> Text:
    style = _STYLE.get(event.type, "")
    status = event.data.get("status")
    if event.type == RESPONSE and isinstance(status, int) and status >= 500:
        style = "bold red"
    return Text(event.type, style=style)


def _what(event: Event) -> tuple[str, Text, str]:
    """(who, what happened, details) of one event, in a call's words when it is one."""
    data = event.data
    service = service_of(event)
    if service is None or event.type not in _STYLE:
        return event.source, _type_text(event), _data_summary(data, 60)
    if event.type == REQUEST:
        return service, Text("→ request", style="cyan"), f"{data.get('method', '')} {data.get('path', '')}"
    if event.type == RESPONSE:
        status = data.get("status")
        failed = isinstance(status, int) and status >= 500
        latency = data.get("latencyMs")
        took = f"{latency:,.1f} ms" if isinstance(latency, int | float) else "? ms"
        details = f"{took}, {data.get('bytesOut', '?')} B"
        return service, Text(f"← {status}", style="bold red" if failed else "green"), details
    return (
        service,
        Text(f"✗ {data.get('error', 'error')}", style="bold red"),
        f"after {data.get('elapsedMs', '?')} ms",
    )


def flow_table(request_id: str, events: list[Event]) -> Table:
    """A request's events as a waterfall: offset from the first event, what
    happened, and a bar for each call from its request to its end."""
    start = datetime.fromisoformat(events[0].timestamp)
    end = datetime.fromisoformat(events[-1].timestamp)
    total_ms = max((end - start).total_seconds() * 1000, 1.0)
    started: dict[str, float] = {}
    table = Table(
        title=f"request {request_id}: {len(events)} events over {total_ms:,.1f} ms",
        title_justify="left",
    )
    table.add_column("+ms", justify="right", no_wrap=True, min_width=7)
    table.add_column("service", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("timeline", no_wrap=True)
    table.add_column("details", no_wrap=True, overflow="ellipsis")
    width = 24
    for event in events:
        offset = (datetime.fromisoformat(event.timestamp) - start).total_seconds() * 1000
        call_id = event.data.get("callId")
        begin = offset
        if isinstance(call_id, str):
            begin = started.setdefault(call_id, offset)
        left = int(begin / total_ms * (width - 1))
        right = max(left + 1, int(offset / total_ms * (width - 1)) + 1)
        who, what, details = _what(event)
        bar = Text(" " * left + "█" * (right - left), style=what.style)
        table.add_row(f"{offset:,.1f}", who, what, bar, details)
    return table


def events_table(events: list[Event]) -> Table:
    table = Table()
    table.add_column("timestamp")
    table.add_column("type")
    table.add_column("source")
    table.add_column("request")
    table.add_column("data")
    for event in events:
        table.add_row(
            event.timestamp, _type_text(event), event.source, event.request_id, _data_summary(event.data, 60)
        )
    return table


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def dead_letters_table(letters: list[DeadLetter]) -> Table:
    table = Table()
    table.add_column("id")
    table.add_column("failed at")
    table.add_column("receives", justify="right")
    table.add_column("reason")
    table.add_column("body")
    for letter in letters:
        body = letter.body if len(letter.body) <= 50 else letter.body[:49] + "…"
        table.add_row(letter.id, _when(letter.failed_at), str(letter.receive_count), letter.reason, body)
    return table
