"""``demo``: eventtrail end to end on this machine, in one command;
``demo-services``: only the demo's two services, for a gateway of your own."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from eventtrail.cli.common import ConfigFile, DataDir, UsageError, console, err_console, settings_from
from eventtrail.cli.health import print_report

if TYPE_CHECKING:
    from eventtrail.demo.stack import DemoStack, DemoTotals
    from eventtrail.demo.traffic import TrafficCounts

__all__ = ["Producer", "demo", "demo_services"]


class Producer(StrEnum):
    """What records the demo's calls."""

    gateway = "gateway"
    nginx = "nginx"


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
    producer: Annotated[
        Producer,
        typer.Option(
            help="What records the calls. gateway: eventtrail's recording gateway publishes each call as"
            " it happens. nginx: Debian's nginx (apt install nginx-light) proxies the calls and writes"
            " the JSON access log of examples/nginx-eventtrail.conf, which is followed into the queue as"
            " `eventtrail ingest nginx --follow` does (its files: the data folder's nginx/).",
        ),
    ] = Producer.gateway,
    nginx: Annotated[
        Path | None,
        typer.Option(
            help="The nginx executable, with --producer nginx."
            " [default: nginx on PATH, else /usr/sbin/nginx]",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Run the whole pipeline on this machine and watch it find the faulty service.

    Starts two microservices (A healthy; B slow, failing a quarter of its
    calls and sometimes timing out), the recording gateway in front of them,
    a worker storing the events in the embedded store, and the web UI, whose
    address comes first. Sends traffic for a while (GET orders and POST new
    ones on A, GET stock and prices on B), prints the service health
    verdict, then keeps the traffic flowing and everything serving until
    Ctrl-C (or --duration). The events stay in the data folder afterwards.
    """
    try:
        from eventtrail.demo.stack import DemoStack
        from eventtrail.demo.traffic import TrafficCounts
    except ImportError as error:
        raise UsageError(
            f"the demo needs the gateway and web extras: pip install 'eventtrail[gateway,web]' ({error})"
        ) from None
    nginx_executable = _nginx_executable(producer, nginx)
    begun = time.monotonic()
    settings = settings_from("local", data_dir, config_file)
    stack = DemoStack(settings, ui_port=port, gateway_port=gateway_port, seed=seed, nginx=nginx_executable)
    try:
        stack.start()
    except (OSError, RuntimeError) as error:
        raise UsageError(_start_failure(error, port, gateway_port)) from None
    counts = TrafficCounts()
    try:
        # The address first: the UI is worth watching while the first traffic flows.
        console.print(f"web UI: {stack.ui_url} (requests, waterfalls, service health and map)")
        gateway, followed = (
            ("the gateway", "")
            if stack.nginx is None
            else ("nginx", f" its log {stack.nginx.access_log} is followed,")
        )
        err_console.print(
            f"Microservice A and B behind {gateway} on {stack.gateway_url} (/a and /b);{followed}"
            f" events stored in {settings.store_path}"
        )
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
        if stack.nginx is not None:
            err_console.print("stopping nginx, reading the rest of its log, storing its last events...")
        else:
            err_console.print("stopping the gateway, storing its last events...")
        _totals(stack.stop(), counts)


def _nginx_executable(producer: Producer, given: Path | None) -> Path | None:
    """nginx's executable with ``--producer nginx``; ``None`` for the recording gateway."""
    from eventtrail.demo.nginx import NginxFailed, find_nginx

    if producer is not Producer.nginx:
        if given is not None:
            raise UsageError("--nginx goes with --producer nginx")
        return None
    try:
        return find_nginx(given)
    except NginxFailed as error:
        raise UsageError(f"--producer nginx needs nginx (apt install nginx-light): {error}") from None


def _start_failure(error: BaseException, ui_port: int, gateway_port: int) -> str:
    """One line saying why the demo could not start, and which option helps."""
    from eventtrail.demo.nginx import NginxFailed
    from eventtrail.web import PortUnavailable

    if isinstance(error, NginxFailed):  # nginx's own message
        taken = gateway_port and f":{gateway_port} " in str(error)
        return f"{error}; --gateway-port 0 picks a free one" if taken else str(error)
    if isinstance(error, PortUnavailable):  # its message names the port
        option = "--gateway-port" if gateway_port and f"port {gateway_port} " in str(error) else "--port"
        return f"{error}; {option} 0 picks a free one"
    if gateway_port:
        # The gateway's server reports no reason; a taken port is the likely one.
        return (
            f"the demo could not start: {error} (is port {gateway_port} taken?"
            " --gateway-port 0 picks a free one)"
        )
    return f"the demo could not start: {error}"


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
        _TrafficColumn(),
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


class _TrafficColumn(ProgressColumn):
    """The requests sent and calls failed so far, in words that agree with the counts."""

    def render(self, task: Task) -> Text:
        requests: int = task.fields["requests"]
        failed: int = task.fields["failed"]
        return Text(f"{_count(requests, 'request')}, {_count(failed, 'failed call')}")


def _verdict(stack: DemoStack) -> None:
    print_report(stack.health())
    console.print(f"web UI: {stack.ui_url}")
    console.print(f"try it: curl -i {stack.gateway_url}/b/stock/42")


def _totals(totals: DemoTotals, counts: TrafficCounts) -> None:
    events, read = totals.events, totals.ingested
    if read is not None:
        recorded = f"{_count(read.lines, 'line')} of nginx's log read, {_count(read.events, 'event')} queued"
    elif events is not None:
        recorded = f"{_count(events.sent, 'event')} recorded"
    else:
        recorded = "no events recorded"
    err_console.print(
        f"{_count(counts.requests, 'demo request')} ({_count(counts.calls, 'call')},"
        f" {counts.failed:,} failed); {recorded}, {totals.stored:,} stored"
    )
    if read is not None and read.bad:
        err_console.print(f"[yellow]{_count(read.bad, 'bad line')} in nginx's log (see the warnings)[/]")
    if events is not None and (events.dropped or events.spill_pending):
        waiting = "waits" if events.spill_pending == 1 else "wait"
        err_console.print(
            f"[yellow]{_count(events.spill_pending, 'event')} {waiting} in the spill file,"
            f" {events.dropped:,} dropped[/]"
        )
    err_console.print("look again any time: eventtrail serve, eventtrail health --window 1h")


def _count(number: int, noun: str) -> str:
    """``1 event``, ``2 events``: every noun here takes a plain s."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def demo_services(
    port_a: Annotated[
        int, typer.Option("--port-a", min=0, max=65535, help="Port of Microservice A (0: any free port).")
    ] = 9001,
    port_b: Annotated[
        int, typer.Option("--port-b", min=0, max=65535, help="Port of Microservice B (0: any free port).")
    ] = 9002,
    seed: Annotated[int | None, typer.Option(help="Random seed, for the same behaviour every time.")] = None,
) -> None:
    """Serve the demo's two microservices for a gateway of your own, until Ctrl-C.

    Microservice A (orders: GET /orders, GET /orders/ID, POST /orders; about
    12 ms, never fails) and Microservice B (stock: GET and PUT /stock/ID, GET
    /prices; about 120 ms, fails a quarter of its calls, sometimes hangs)
    on 127.0.0.1, where examples/gateway.toml routes /a and /b:
    run this, then `eventtrail up --config examples/gateway.toml`.
    """
    try:
        from eventtrail.demo.services import FAULTY, HEALTHY, orders_service, stock_service
        from eventtrail.web import BackgroundServer, PortUnavailable
    except ImportError as error:
        raise UsageError(
            f"the demo services need the gateway and web extras: pip install 'eventtrail[gateway,web]'"
            f" ({error})"
        ) from None
    host = "127.0.0.1"
    servers = [
        ("Microservice A", "--port-a", BackgroundServer(orders_service(HEALTHY, seed=seed), host, port_a)),
        (
            "Microservice B",
            "--port-b",
            BackgroundServer(stock_service(FAULTY, seed=None if seed is None else seed + 1), host, port_b),
        ),
    ]
    stop = threading.Event()

    def stop_serving(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {number: signal.signal(number, stop_serving) for number in (signal.SIGINT, signal.SIGTERM)}
    started: list[BackgroundServer] = []
    try:
        for name, option, server in servers:
            try:
                server.start()
            except PortUnavailable as error:
                raise UsageError(f"{name}: {error}; {option} chooses another (0: any free port)") from None
            started.append(server)
            err_console.print(f"{name} on {server.url}")
        err_console.print("serving until Ctrl-C")
        stop.wait()
    finally:
        for server in started:
            server.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
