"""``demo``: eventtrail end to end on this machine, in one command."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from eventtrail.cli.common import ConfigFile, DataDir, UsageError, console, err_console, settings_from
from eventtrail.cli.health import print_report

if TYPE_CHECKING:
    from eventtrail.demo.stack import DemoStack, DemoTotals
    from eventtrail.demo.traffic import TrafficCounts

__all__ = ["demo"]


def demo(
    duration: Annotated[
        float | None,
        typer.Option(min=1, help="Stop by itself after this many seconds. [default: run until Ctrl-C]"),
    ] = None,
    traffic: Annotated[
        float, typer.Option(min=1, help="Seconds of traffic before the health verdict.")
    ] = 10.0,
    rate: Annotated[float, typer.Option(min=1, max=500, help="Demo requests per second.")] = 20.0,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the web UI (0: any free port).")
    ] = 8765,
    gateway_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the gateway (0: any free port).")
    ] = 0,
    seed: Annotated[int | None, typer.Option(help="Random seed, for the same behaviour every time.")] = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Run the whole pipeline on this machine and watch it find the faulty service.

    Starts two microservices (A healthy; B slow, failing a quarter of its
    calls and sometimes timing out), the recording gateway in front of them,
    a worker storing the events in the embedded store, and the web UI. Sends
    traffic for a while, prints the service health verdict and the UI's
    address, then keeps the traffic flowing and everything serving until
    Ctrl-C (or --duration). The events stay in the data folder afterwards.
    """
    try:
        from eventtrail.demo.stack import DemoStack
        from eventtrail.demo.traffic import TrafficCounts
    except ImportError as error:
        raise UsageError(
            f"the demo needs the gateway and web extras: pip install 'eventtrail[gateway,web]' ({error})"
        ) from None
    begun = time.monotonic()
    settings = settings_from("local", data_dir, config_file)
    stack = DemoStack(settings, ui_port=port, gateway_port=gateway_port, seed=seed)
    try:
        stack.start()
    except OSError as error:
        raise UsageError(f"{error} (is port {port} taken? --port 0 picks a free one)") from None
    err_console.print(
        f"Microservice A and B behind the gateway on {stack.gateway_url} (/a and /b);"
        f" events stored in {settings.store_path}"
    )
    counts = TrafficCounts()
    try:
        _first_traffic(stack, counts, seconds=min(traffic, duration or traffic), rate=rate, seed=seed)
        _verdict(stack)
        remaining = None if duration is None else duration - (time.monotonic() - begun)
        if remaining is None or remaining > 0:
            until = "on Ctrl-C" if remaining is None else f"in {remaining:.0f} s, or on Ctrl-C"
            err_console.print(f"traffic keeps flowing at {rate:g} requests/s; stopping {until}")
            asyncio.run(_traffic(stack, counts, seconds=remaining, rate=rate, seed=seed))
    except KeyboardInterrupt:
        err_console.print("stopping...")
    finally:
        err_console.print("stopping the gateway, storing its last events...")
        _totals(stack.stop(), counts)


async def _traffic(
    stack: DemoStack,
    counts: TrafficCounts,
    *,
    seconds: float | None,
    rate: float,
    seed: int | None,
    on_tick: Callable[[TrafficCounts], None] | None = None,
) -> None:
    from eventtrail.demo.traffic import send_traffic

    await send_traffic(
        stack.gateway_url, rate=rate, seconds=seconds, counts=counts, on_tick=on_tick, seed=seed
    )


def _first_traffic(
    stack: DemoStack, counts: TrafficCounts, *, seconds: float, rate: float, seed: int | None
) -> None:
    """Traffic for ``seconds`` with a progress bar, then wait for its events."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[requests]:,} requests, {task.fields[failed]:,} failed calls"),
        TimeRemainingColumn(),
        console=err_console,
    )
    started = time.monotonic()
    with progress:
        task = progress.add_task("sending demo traffic", total=seconds, requests=0, failed=0)

        def tick(now: TrafficCounts) -> None:
            elapsed = min(seconds, time.monotonic() - started)
            progress.update(task, completed=elapsed, requests=now.requests, failed=now.failed)

        asyncio.run(_traffic(stack, counts, seconds=seconds, rate=rate, seed=seed, on_tick=tick))
        progress.update(task, completed=seconds)
    if not stack.wait_until_stored():
        err_console.print("[yellow]some events are not stored yet; the verdict may miss them[/]")


def _verdict(stack: DemoStack) -> None:
    print_report(stack.health())
    console.print(f"web UI: {stack.ui_url} (requests, waterfalls, service health and map)")
    console.print(f"try it: curl -i {stack.gateway_url}/b/stock/42")


def _totals(totals: DemoTotals, counts: TrafficCounts) -> None:
    events = totals.events
    recorded = f"{events.sent:,} events recorded" if events is not None else "no events recorded"
    err_console.print(
        f"{counts.requests:,} demo requests ({counts.calls:,} calls, {counts.failed:,} failed);"
        f" {recorded}, {totals.stored:,} stored"
    )
    if events is not None and (events.dropped or events.spill_pending):
        err_console.print(
            f"[yellow]{events.spill_pending:,} events wait in the spill file, {events.dropped:,} dropped[/]"
        )
    err_console.print("look again any time: eventtrail serve, eventtrail health --window 1h")
