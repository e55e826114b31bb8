"""How the CLI renders what was recorded: text only, control characters
visible, and listings that fit a terminal without cutting ids, service names
or timestamps."""

from __future__ import annotations

import io
import json
import unicodedata
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console, RenderableType
from rich.text import Text

from eventtrail.calls import call_error, call_request, call_response
from eventtrail.cli.health import health_view
from eventtrail.cli.render import (
    Column,
    dead_letters_view,
    escape_controls,
    escape_controls_in_json,
    events_view,
    fit,
    flow_view,
    plural,
    shown,
)
from eventtrail.event import Event
from eventtrail.health import HealthReport, HealthThresholds, ServiceHealth, ServiceStatus
from eventtrail.queue import DeadLetter
from eventtrail.store import format_moment
from tests.contract.store_contract import T0, make_event

HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}
HOSTILE = (
    "[/x] [bold]b[/bold] [link=http://evil]l[/link]"
    " \x1b]0;title\x07 \x1b[2J \x9b31m \u202eevil \x00 \x85 \x7f"
)


def hidden_characters(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in HIDDEN and c != "\n"]


def render(renderable: RenderableType, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, highlight=False).print(renderable, crop=False)
    return out.getvalue()


def test_control_characters_become_visible_escapes() -> None:
    assert escape_controls("a\x1bb\x07c\x00d\x85e\u202ef\u2028g\x7fh\ud800") == (
        "a\\x1bb\\x07c\\x00d\\x85e\\u202ef\\u2028g\\x7fh\\ud800"
    )
    assert escape_controls("tab\there\nnext", keep_lines=True) == "tab\there\nnext"
    assert escape_controls("tab\there\nnext") == "tab\\x09here\\x0anext"
    # Printable text of any script stays as it is.
    assert escape_controls("café 日本 ✓ 🙂 [x]") == "café 日本 ✓ 🙂 [x]"


def test_markup_in_recorded_text_is_printed_literally() -> None:
    printed = render(shown(HOSTILE), 200)
    assert "[/x] [bold]b[/bold] [link=http://evil]l[/link]" in printed
    assert "\\x1b]0;title\\x07" in printed and "\\u202eevil" in printed and "\\x9b31m" in printed
    assert hidden_characters(printed) == []


def test_values_are_shown_as_json() -> None:
    assert shown(None).plain == "null"
    assert shown({"a": "x", "b": [1, True]}).plain == '{"a":"x","b":[1,true]}'
    assert shown("x").plain == "x"
    assert shown("y" * 50, max_chars=10).plain == "y" * 9 + "…"


@given(st.text())
def test_shown_text_never_holds_a_control_character(text: str) -> None:
    result = shown(text).plain
    assert hidden_characters(result) == []
    assert "\n" not in result
    if not hidden_characters(text) and "\n" not in text:
        assert result == text


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c)))
def test_escaped_json_is_the_same_document_without_control_characters(value: object) -> None:
    encoded = json.dumps({"v": value}, ensure_ascii=False).encode("utf-8", errors="surrogatepass")
    escaped = escape_controls_in_json(encoded)
    assert json.loads(escaped) == {"v": value}
    assert hidden_characters(escaped.decode()) == []


def test_non_bmp_formatting_characters_are_escaped_as_surrogate_pairs() -> None:
    escaped = escape_controls_in_json('["\U000e0001\U0001d173"]'.encode())
    assert escaped == b'["\\udb40\\udc01\\ud834\\udd73"]'
    assert json.loads(escaped) == ["\U000e0001\U0001d173"]


@pytest.mark.parametrize(
    ("count", "noun", "expected"),
    [
        (0, "event", "0 events"),
        (1, "event", "1 event"),
        (2, "route", "2 routes"),
        (1234, "message", "1,234 messages"),
        (3, "entry", "3 entries"),
        (2, "day", "2 days"),
        (2, "match", "2 matches"),
        (2, "dead letter", "2 dead letters"),
        (2, "person", "2 people"),
    ],
)
def test_plural(count: int, noun: str, expected: str) -> None:
    assert plural(count, noun, "people" if noun == "person" else None) == expected


REQUEST_ID = "677afffc-373e-42f0-8363-f24bc675bcf6"


def article_flow() -> list[Event]:
    def at(ms: float) -> str:
        return format_moment(T0 + timedelta(milliseconds=ms))

    return [
        call_request(REQUEST_ID, "c1", "Microservice A", "GET", "/a/orders/42", timestamp=at(0)),
        call_request(REQUEST_ID, "c2", "Microservice B", "GET", "/b/stock/42", timestamp=at(1)),
        call_response(
            REQUEST_ID,
            "c2",
            "Microservice B",
            status=503,
            latency_ms=118.4,
            bytes_in=0,
            bytes_out=21,
            timestamp=at(120),
        ),
        call_error(REQUEST_ID, "c3", "Microservice C", error="timeout", elapsed_ms=1000, timestamp=at(1001)),
        call_response(
            REQUEST_ID,
            "c1",
            "Microservice A",
            status=200,
            latency_ms=1002,
            bytes_in=2,
            bytes_out=340,
            timestamp=at(1002),
        ),
    ]


def no_line_wider_than(printed: str, width: int) -> bool:
    return all(Text(line.rstrip()).cell_len <= width for line in printed.splitlines())


@pytest.mark.parametrize("width", [80, 200])
def test_the_waterfall_keeps_services_apart_at_any_width(width: int) -> None:
    printed = render(flow_view(REQUEST_ID, article_flow(), width), width)
    lines = printed.splitlines()
    assert REQUEST_ID in lines[0] and "5 events" in lines[0]
    for service in ("Microservice A", "Microservice B", "Microservice C"):
        assert any(service in line for line in lines)
    assert "→ request" in printed and "← 503" in printed and "✗ timeout" in printed
    assert "GET /b/stock/42" in printed and "118.4 ms, 21 B" in printed
    assert "…" not in printed
    assert no_line_wider_than(printed, width)


def test_a_call_its_client_gave_up_on_is_not_shown_as_a_failure() -> None:
    gave_up = call_error(
        REQUEST_ID, "c9", "Microservice D", error="disconnected", elapsed_ms=400, timestamp=format_moment(T0)
    )
    console = Console(file=io.StringIO(), width=160, force_terminal=True, color_system="standard")
    console.print(flow_view(REQUEST_ID, [*article_flow(), gave_up], 160))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    [left] = [line for line in lines if "disconnected" in line]
    [failed] = [line for line in lines if "timeout" in line]
    red, yellow = "\x1b[1;31m", "\x1b[33m"
    assert red in failed and yellow in left and red not in left
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system="standard")
    console.print(events_view([article_flow()[3], gave_up], 200))
    failed, left = console.file.getvalue().splitlines()[-2:]  # type: ignore[attr-defined]
    assert "timeout" in failed and "disconnected" in left
    assert red in failed and yellow in left and red not in left


def test_the_timeline_is_the_first_thing_dropped() -> None:
    long_names = [
        call_request(
            REQUEST_ID, "c1", "Microservice Inventory Reservations", "GET", "/x", timestamp=e.timestamp
        )
        for e in article_flow()[:1]
    ]
    wide = render(flow_view(REQUEST_ID, long_names, 200), 200)
    narrow = render(flow_view(REQUEST_ID, long_names, 60), 60)
    assert "TIMELINE" in wide and "█" in wide
    assert "TIMELINE" not in narrow and "█" not in narrow
    assert "Microservice Inventory Reservations" in narrow and "GET /x" in narrow


@pytest.mark.parametrize("width", [80, 120, 200])
def test_event_listings_never_cut_a_timestamp_or_an_id(width: int) -> None:
    events = article_flow()
    printed = render(events_view(events, width), width)
    for event in events:
        line_with_time = next(line for line in printed.splitlines() if event.timestamp in line)
        assert event.type in line_with_time and str(event.data["Name"]) in line_with_time
        assert event.request_id in printed
    assert '"method":"GET"' in printed and '"status":503' in printed  # data as JSON
    assert "'" not in printed and "None" not in printed  # never a Python repr
    assert "…" not in printed


def test_wide_terminal_events_are_one_line_each() -> None:
    events = article_flow()
    lines = render(events_view(events, 200), 200).splitlines()
    assert lines[0].split() == ["TIMESTAMP", "TYPE", "SOURCE", "SERVICE", "REQUEST", "DATA"]
    for event, line in zip(events, lines[1:], strict=True):
        assert line.startswith(event.timestamp) and event.request_id in line


def letter(letter_id: str, reason: str = "field `timestamp`: 'soon' is not ISO 8601") -> DeadLetter:
    return DeadLetter(letter_id, '{"id": "x", "requestId": "r"}', reason, 5, 1.7e9, 1.7e9 + 1)


@pytest.mark.parametrize("width", [80, 200])
def test_dead_letter_ids_are_never_cut(width: int) -> None:
    letters = [letter("0f8fad5b-d9cb-469f-a165-70867728950e"), letter("7c9e6679-7425-40de-944b-e07fc1f90ae7")]
    printed = render(dead_letters_view(letters, width), width)
    for each in letters:
        assert each.id in printed
    assert "field `timestamp`" in printed
    assert no_line_wider_than(printed, width)


def service(name: str, status: ServiceStatus = "ok", abandoned: int = 37) -> ServiceHealth:
    return ServiceHealth(
        service=name,
        calls=1234,
        errors=12,
        error_rate=12 / 1234,
        failures={"5xx": 12},
        abandoned=abandoned,
        p50_ms=12.1,
        p95_ms=118.9,
        p99_ms=1002.2,
        baseline_calls=1000,
        baseline_p95_ms=20.5,
        status=status,
        reasons=[],
    )


def test_health_drops_the_baseline_then_the_extremes_but_never_a_service_name() -> None:
    report = HealthReport(
        since="2020-05-01T20:00:00.000000Z",
        until="2020-05-01T20:15:00.000000Z",
        window_seconds=900,
        thresholds=HealthThresholds(),
        services=[service("Microservice A"), service("Microservice B", "faulty")],
        edges=[],
        faulty=["Microservice B"],
        verdict="Microservice B is faulty",
    )
    wide = render(health_view(report, 200), 200)
    narrow = render(health_view(report, 80), 80)
    assert "BASELINE P95" in wide and "P99" in wide and "ABANDONED" in wide and "37" in wide
    assert "BASELINE P95" not in narrow and "P95" in narrow
    for printed in (wide, narrow):
        assert "Microservice A" in printed and "Microservice B" in printed and "1,234" in printed
        assert no_line_wider_than(printed, 80 if printed is narrow else 200)


def test_health_shows_abandoned_calls_only_when_some_were() -> None:
    def report(*services: ServiceHealth) -> HealthReport:
        return HealthReport(
            since="2020-05-01T20:00:00.000000Z",
            until="2020-05-01T20:15:00.000000Z",
            window_seconds=900,
            thresholds=HealthThresholds(),
            services=list(services),
            edges=[],
            faulty=[],
            verdict="no faulty service",
        )

    none = render(health_view(report(service("A", abandoned=0), service("B", abandoned=0)), 200), 200)
    some = render(health_view(report(service("A", abandoned=0), service("B", abandoned=5)), 200), 200)
    assert "ABANDONED" not in none and "P50" in none
    assert "ABANDONED" in some
    [a_row] = [line.split() for line in some.splitlines() if line.startswith("A ")]
    [b_row] = [line.split() for line in some.splitlines() if line.startswith("B ")]
    assert (a_row[5], b_row[5]) == ("-", "5")


def test_key_cells_too_wide_for_one_line_become_records() -> None:
    columns = [Column("id"), Column("name"), Column("note", role="flex")]
    rows = [[Text("i" * 30), Text("n" * 60), Text("a note")]]
    printed = render(fit(columns, rows, 80), 80)
    assert printed.splitlines() == ["i" * 30, "  name: " + "n" * 60, "  note: a note"]


def test_a_ten_thousand_character_service_name_is_printed_whole() -> None:
    huge = "S" * 10_000
    events = [
        call_request(REQUEST_ID, "c1", huge, "GET", "/x", timestamp=format_moment(T0)),
        make_event(request_id=REQUEST_ID, source=huge[:256], at=T0 + timedelta(seconds=1)),
    ]
    for renderable in (flow_view(REQUEST_ID, events, 80), events_view(events, 80)):
        printed = render(renderable, 80)
        assert huge[:256] in printed
    assert huge in render(flow_view(REQUEST_ID, events, 80), 80)


def test_a_long_service_name_at_80_columns_makes_labelled_records() -> None:
    report = HealthReport(
        since="2020-05-01T20:00:00.000000Z",
        until="2020-05-01T20:15:00.000000Z",
        window_seconds=900,
        thresholds=HealthThresholds(),
        services=[service("inventory-reservations-service-eu-west-1")],
        edges=[],
        faulty=[],
        verdict="no service is faulty",
    )
    lines = render(health_view(report, 80), 80).splitlines()
    assert lines[1:] == [
        "inventory-reservations-service-eu-west-1  ok",
        "  calls: 1,234  errors: 12  error rate: 1.0%  p95: 118.9 ms",
    ]
