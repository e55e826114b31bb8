"""``health``: per service calls, errors and latency, and which one is faulty."""

from __future__ import annotations

from typing import Annotated

import msgspec
import typer
from rich.console import RenderableType
from rich.text import Text

from eventtrail.cli.common import (
    Backend,
    ConfigFile,
    DataDir,
    UsageError,
    console,
    duration_option,
    finite,
    parsed_option,
    settings_from,
    write_json,
)
from eventtrail.cli.render import Column, fit, shown
from eventtrail.config import open_store
from eventtrail.health import HealthReport, HealthThresholds, ServiceHealth, service_health
from eventtrail.times import parse_moment

__all__ = ["health", "health_view", "print_report"]

_DEFAULTS = HealthThresholds()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _status(service: ServiceHealth) -> Text:
    style = {"ok": "green", "faulty": "bold red"}.get(service.status, "yellow")
    return shown(service.status, style)


_COUNTS = (
    Column("service"),
    Column("status"),
    Column("calls", justify="right", labelled=True),
    Column("errors", justify="right", labelled=True),
    Column("error rate", justify="right", labelled=True),
)
#: Shown when some service's clients left before their calls were answered.
_ABANDONED = Column("abandoned", role="optional", justify="right", drop_order=3, labelled=True)
_LATENCIES = (
    # On a narrow terminal the baseline goes first, then the extremes.
    Column("p50", role="optional", justify="right", drop_order=2, labelled=True),
    Column("p95", justify="right", labelled=True),
    Column("p99", role="optional", justify="right", drop_order=1, labelled=True),
    Column("baseline p95", role="optional", justify="right", drop_order=0, labelled=True),
)


def health_view(report: HealthReport, width: int) -> RenderableType:
    """The report as a table no wider than ``width``, one row per service,
    faulty ones in red."""
    abandoned = any(service.abandoned for service in report.services)
    rows = [
        [
            shown(service.service, "bold red" if service.status == "faulty" else ""),
            _status(service),
            Text(f"{service.calls:,}"),
            Text(f"{service.errors:,}"),
            Text(f"{service.error_rate:.1%}"),
            *([Text(f"{service.abandoned:,}" if service.abandoned else "-")] if abandoned else []),
            Text(_ms(service.p50_ms)),
            Text(_ms(service.p95_ms)),
            Text(_ms(service.p99_ms)),
            Text(_ms(service.baseline_p95_ms) if service.baseline_calls else "-"),
        ]
        for service in report.services
    ]
    title = Text(f"service health, {report.since[:19]} to {report.until[:19]} UTC")
    columns = (*_COUNTS, *([_ABANDONED] if abandoned else []), *_LATENCIES)
    return fit(columns, rows, width, title)


def health(
    window: Annotated[str, typer.Option(help="How far back to look: 90s, 15m, 1h...")] = "15m",
    until: Annotated[
        str | None, typer.Option(help="End of the window: a timestamp or a time ago. [default: now]")
    ] = None,
    max_error_rate: Annotated[
        float,
        typer.Option(min=0, max=0.999, callback=finite, help="Faulty above this share of failed calls."),
    ] = _DEFAULTS.max_error_rate,
    latency_factor: Annotated[
        float,
        typer.Option(
            min=1.01, callback=finite, help="Faulty when p95 latency is this many times its baseline..."
        ),
    ] = _DEFAULTS.latency_factor,
    min_latency_increase_ms: Annotated[
        float, typer.Option(min=0, callback=finite, help="...and at least this many ms above it.")
    ] = _DEFAULTS.min_latency_increase_ms,
    min_calls: Annotated[
        int, typer.Option(min=1, help="No verdict on a service with fewer calls.")
    ] = _DEFAULTS.min_calls,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Calls, errors and latency per service over a window, and which service
    is faulty and why (error rate, or latency far above the window before)."""
    length = duration_option("--window", window)
    end = parsed_option("--until", parse_moment, until) if until else None
    thresholds = HealthThresholds(
        max_error_rate=max_error_rate,
        latency_factor=latency_factor,
        min_latency_increase_ms=min_latency_increase_ms,
        min_calls=min_calls,
    )
    settings = settings_from(backend, data_dir, config_file)
    with open_store(settings, read_only=True) as store:
        try:
            report = service_health(store, length, until=end, thresholds=thresholds)
        except ValueError as error:
            # The window and the baseline window before it reach past year 1.
            raise UsageError(f"--window: {error}") from None
    if as_json:
        write_json(msgspec.json.encode(report))
        return
    print_report(report)


def print_report(report: HealthReport) -> None:
    """The table (if any service was called) and the verdict, on stdout."""
    if report.services:
        console.print(health_view(report, console.width), crop=False)
    style = "bold red" if report.faulty else "green"
    console.print(Text.assemble(("verdict: ", "bold"), shown(report.verdict, style)), soft_wrap=True)
