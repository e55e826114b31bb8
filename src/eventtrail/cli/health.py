"""``health``: per service calls, errors and latency, and which one is faulty."""

from __future__ import annotations

from typing import Annotated

import msgspec
import typer
from rich.table import Table
from rich.text import Text

from eventtrail.cli.common import (
    Backend,
    ConfigFile,
    DataDir,
    UsageError,
    console,
    settings_from,
    write_json,
)
from eventtrail.config import open_store
from eventtrail.health import HealthReport, HealthThresholds, ServiceHealth, service_health
from eventtrail.times import parse_duration, parse_moment

__all__ = ["health", "health_table", "print_report"]

_DEFAULTS = HealthThresholds()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _status(service: ServiceHealth) -> Text:
    style = {"ok": "green", "faulty": "bold red"}.get(service.status, "yellow")
    return Text(service.status, style=style)


def health_table(report: HealthReport) -> Table:
    """The report as a table, one row per service, faulty ones in red."""
    table = Table(
        title=f"service health, {report.since[:19]} to {report.until[:19]} UTC", title_justify="left"
    )
    for column in ("service", "status", "calls", "errors", "error rate", "p50", "p95", "p99", "baseline p95"):
        table.add_column(column, justify="left" if column in ("service", "status") else "right")
    for service in report.services:
        table.add_row(
            Text(service.service, style="bold red" if service.status == "faulty" else ""),
            _status(service),
            f"{service.calls:,}",
            f"{service.errors:,}",
            f"{service.error_rate:.1%}",
            _ms(service.p50_ms),
            _ms(service.p95_ms),
            _ms(service.p99_ms),
            _ms(service.baseline_p95_ms) if service.baseline_calls else "-",
        )
    return table


def health(
    window: Annotated[str, typer.Option(help="How far back to look: 90s, 15m, 1h...")] = "15m",
    until: Annotated[
        str | None, typer.Option(help="End of the window: a timestamp or a time ago. [default: now]")
    ] = None,
    max_error_rate: Annotated[
        float, typer.Option(min=0, max=0.999, help="Faulty above this share of failed calls.")
    ] = _DEFAULTS.max_error_rate,
    latency_factor: Annotated[
        float, typer.Option(min=1.01, help="Faulty when p95 latency is this many times its baseline...")
    ] = _DEFAULTS.latency_factor,
    min_latency_increase_ms: Annotated[
        float, typer.Option(min=0, help="...and at least this many ms above it.")
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
    try:
        length = parse_duration(window)
        end = parse_moment(until) if until else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    thresholds = HealthThresholds(
        max_error_rate=max_error_rate,
        latency_factor=latency_factor,
        min_latency_increase_ms=min_latency_increase_ms,
        min_calls=min_calls,
    )
    settings = settings_from(backend, data_dir, config_file)
    with open_store(settings) as store:
        report = service_health(store, length, until=end, thresholds=thresholds)
    if as_json:
        write_json(msgspec.json.encode(report))
        return
    print_report(report)


def print_report(report: HealthReport) -> None:
    """The table (if any service was called) and the verdict, on stdout."""
    if report.services:
        console.print(health_table(report))
    style = "bold red" if report.faulty else "green"
    console.print(Text.assemble(("verdict: ", "bold"), (report.verdict, style)), soft_wrap=True)
