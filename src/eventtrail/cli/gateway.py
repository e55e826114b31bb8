"""``gateway`` and ``up``: the recording reverse proxy, alone or with a worker."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from eventtrail.cli.common import Backend, ConfigFile, DataDir, UsageError, err_console, settings_from
from eventtrail.config import Settings, open_queue, open_store
from eventtrail.worker import Worker

if TYPE_CHECKING:
    from eventtrail.gateway.config import GatewayConfig
    from eventtrail.gateway.publisher import Publisher, PublisherCounts

__all__ = ["gateway", "up"]

GatewayConfigFile = Annotated[
    Path,
    typer.Option(
        "--config",
        help="The gateway's routes file (TOML; see examples/gateway.toml).",
    ),
]
Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")]


def _load(path: Path) -> GatewayConfig:
    # Imported here: the other commands need neither aiohttp nor uvicorn.
    try:
        from eventtrail.gateway.config import load_gateway_config
    except ImportError as error:
        raise UsageError(
            f"the gateway needs its extra: pip install 'eventtrail[gateway]' ({error})"
        ) from None
    return load_gateway_config(path)


def _serve(config: GatewayConfig, publisher: Publisher | None, host: str, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM (uvicorn lets in-flight requests end)."""
    import uvicorn

    from eventtrail.gateway.proxy import build_app
    from eventtrail.gateway.serve import server_config, tune_gc

    server = uvicorn.Server(server_config(build_app(config, publisher), host, port))
    recording = "recording off" if publisher is None else "recording events"
    err_console.print(f"gateway on http://{host}:{port} ({len(config.routes)} routes, {recording})")
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again
    # with the previous handlers: make both an exception, so that the caller's
    # cleanup (flushing the events) runs and the exit is a clean 0.
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    tune_gc()
    try:
        server.run()
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stopped(Exception):
    """SIGTERM, after uvicorn's graceful shutdown."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def _report(counts: PublisherCounts) -> None:
    err_console.print(
        f"events: {counts.sent} sent, {counts.spill_pending} waiting in the spill file,"
        f" {counts.dropped} dropped"
    )


def gateway(
    config: GatewayConfigFile,
    host: Host = "127.0.0.1",
    port: Port = 8080,
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Publish events (off: a plain reverse proxy).")
    ] = True,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Run the reverse proxy: route by path prefix, record every upstream call.

    Events go to the configured queue (embedded or SQS); while it is down they
    wait in a spill file in the data folder. Ctrl-C or SIGTERM stops it after
    in-flight requests and flushes the events.
    """
    from eventtrail.gateway.serve import open_publisher

    routes = _load(config)
    settings = settings_from(backend, data_dir, config_file)
    publisher = open_publisher(routes, settings) if record and routes.recording.enabled else None
    try:
        _serve(routes, publisher, host, port)
    finally:
        if publisher is not None:
            _report(publisher.close())


def _work(settings: Settings, stop: ProcessEvent) -> None:
    """The worker process of ``up``: consume until told to stop, then drain."""
    # Ctrl-C reaches the whole process group; the parent decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with open_queue(settings) as queue, open_store(settings) as store:
        worker = Worker.configured(queue, store, settings)
        watcher = _ThreadEvent.watching(stop)
        worker.run(stop=watcher)
        total = worker.run(drain=True)
    err_console.print(f"worker: drained, {total.stored} stored on the way out")


class _ThreadEvent:
    """A ``threading.Event`` set when a process-shared event is set."""

    @staticmethod
    def watching(shared: ProcessEvent) -> threading.Event:
        local = threading.Event()

        def watch() -> None:
            shared.wait()
            local.set()

        threading.Thread(target=watch, name="eventtrail-stop-watch", daemon=True).start()
        return local


def up(
    config: GatewayConfigFile,
    host: Host = "127.0.0.1",
    port: Port = 8080,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Run the gateway and a worker together on the embedded backend.

    The worker is a child process (its parsing and storing never compete with
    the proxy for the GIL; the SQLite queue is made for several processes).
    Ctrl-C stops the gateway, flushes its events, lets the worker store
    everything queued, and exits.
    """
    from eventtrail.gateway.serve import open_publisher

    routes = _load(config)
    settings = settings_from("local", data_dir, config_file)
    # The worker opens the files too: create them once, here, before it starts.
    open_queue(settings).close()
    open_store(settings).close()
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    worker = context.Process(target=_work, args=(settings, stop), name="eventtrail-worker")
    worker.start()
    publisher = open_publisher(routes, settings) if routes.recording.enabled else None
    err_console.print(f"events stored in {settings.store_path}; see them with `eventtrail flow REQUEST_ID`")
    try:
        _serve(routes, publisher, host, port)
    finally:
        if publisher is not None:
            _report(publisher.close())
        stop.set()
        worker.join()
