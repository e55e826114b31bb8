"""``gateway`` and ``up``: the recording reverse proxy, alone or with a worker."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from eventtrail.cli.common import (
    Backend,
    ConfigFile,
    DataDir,
    UsageError,
    bind_port,
    err_console,
    settings_from,
)
from eventtrail.cli.render import plural, shown
from eventtrail.config import Settings, open_queue, open_store, start_follower
from eventtrail.processes import ignore_interrupts, start_shielded, take_deferred
from eventtrail.queue import QueueError
from eventtrail.retry import Backoff
from eventtrail.store import StoreError
from eventtrail.worker import Worker

if TYPE_CHECKING:
    from eventtrail.gateway.config import GatewayConfig
    from eventtrail.gateway.proxy import GatewayApp
    from eventtrail.gateway.publisher import PublisherCounts

__all__ = ["gateway", "up"]

log = logging.getLogger(__name__)

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
    # Imported here: the other commands need neither uvicorn nor httptools.
    try:
        from eventtrail.gateway.config import load_gateway_config
    except ImportError as error:
        raise UsageError(
            f"the gateway needs its extra: pip install 'eventtrail[gateway]' ({error})"
        ) from None
    return load_gateway_config(path)


def _serve(
    config: GatewayConfig,
    settings: Settings | None,
    host: str,
    port: int,
    *,
    workers: int = 1,
    prepare_app: Callable[[GatewayApp], None] | None = None,
    listening: socket.socket | None = None,
) -> list[PublisherCounts]:
    """Serve until Ctrl-C or SIGTERM (in-flight requests end, the events are
    flushed); return each publisher's final counts. ``settings`` ``None``:
    recording off; ``listening``: a socket bound already."""
    from eventtrail.gateway.serve import serve_gateway
    from eventtrail.web import PortUnavailable

    recording = "recording events" if settings is not None and config.recording.enabled else "recording off"
    processes = f", {plural(workers, 'process', 'processes')}" if workers > 1 else ""

    def announce(bound: int) -> None:
        shown_host = f"[{host}]" if ":" in host else host
        err_console.print(
            shown(
                f"gateway on http://{shown_host}:{bound}"
                f" ({plural(len(config.routes), 'route')}, {recording}{processes})"
            )
        )

    try:
        return serve_gateway(
            config,
            settings,
            host,
            port,
            workers=workers,
            prepare_app=prepare_app,
            announce=announce,
            listening=listening,
        )
    except PortUnavailable as error:
        raise UsageError(f"{error} (--port 0 picks a free one)") from None


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
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            help="Processes serving the port (SO_REUSEPORT), each with its own publisher and spill file;"
            " one that dies is restarted.",
        ),
    ] = 1,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Run the reverse proxy: route by path prefix, record every upstream call.

    Events go to the configured queue (embedded or SQS); while it is down they
    wait in a spill file in the data folder. Ctrl-C or SIGTERM stops it after
    in-flight requests and flushes the events.
    """
    routes = _load(config)
    settings = settings_from(backend, data_dir, config_file)
    for counts in _serve(routes, settings if record else None, host, port, workers=workers):
        _report(counts)


def _work(settings: Settings) -> None:
    """The worker process of ``up``: consume until SIGTERM, then drain."""
    # Ctrl-C reaches the whole process group; the parent decides when to stop.
    # It says so with SIGTERM, not a process-shared event: such an event
    # hangs whoever sets it once a process waiting on it was killed.
    ignore_interrupts()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    # A SIGTERM sent while this process started (an `up` stopped at once)
    # waited, blocked, for the handler: it drains what is queued too.
    take_deferred(signal.SIGTERM)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    follower = start_follower(settings)
    try:
        with open_queue(settings) as queue, open_store(settings, project=False) as store:
            worker = Worker.configured(queue, store, settings)
            worker.run(stop=stop)
            total = worker.run(drain=True)
    finally:
        if follower is not None:
            follower.stop()
    err_console.print(f"worker: drained, {total.stored} stored on the way out")


class _WorkerSupervisor:
    """Keeps the worker child of ``up`` running.

    A worker child that exits while ``up`` runs (a crash, a kill, an OOM) is
    started again after a capped, doubling delay; the delay starts over once
    a child has run for ``stable_after`` seconds. Each restart is logged and
    counted. :meth:`stop` asks the child to drain and waits for it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backoff: Backoff = Backoff(attempts=None, base=0.5, cap=30.0, jitter=False),
        stable_after: float = 60.0,
    ) -> None:
        self.settings = settings
        self.backoff = backoff
        self.stable_after = stable_after
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._started_at = 0.0
        self._watcher = threading.Thread(target=self._watch, name="eventtrail-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watcher.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            process = self._context.Process(target=_work, args=(self.settings,), name="eventtrail-worker")
            start_shielded(process, deferring=(signal.SIGTERM,))
            self._process, self._started_at = process, time.monotonic()
        err_console.print(f"worker: started (pid {process.pid})")

    def _watch(self) -> None:
        failures = 0
        while True:
            process = self._process
            assert process is not None
            process.join()
            if self._stopping.is_set():
                return
            failures = 1 if time.monotonic() - self._started_at >= self.stable_after else failures + 1
            self.restarts += 1
            delay = self.backoff.delay(failures)
            code = process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            log.error(
                "the worker (pid %s) stopped (%s); restarting it in %.1fs (restart %d)",
                process.pid,
                how,
                delay,
                self.restarts,
            )
            err_console.print(
                f"worker: stopped ({how}); restarting in {delay:.1f}s (restart {self.restarts})"
            )
            if self._stopping.wait(delay):
                return
            self._spawn()

    def stop(self) -> None:
        """Let the worker store what is queued, then wait for it."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            process.terminate()
            process.join()
        if self.restarts:
            err_console.print(f"worker: restarted {self.restarts} times")


def up(
    config: GatewayConfigFile,
    host: Host = "127.0.0.1",
    port: Port = 8080,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Run the gateway and a worker together on the embedded backend.

    The worker is a child process (its parsing and storing never compete with
    the proxy for the GIL; the SQLite queue is made for several processes),
    restarted if it dies. Ctrl-C stops the gateway, flushes its events, lets
    the worker store everything queued, and exits.
    """
    routes = _load(config)
    settings = settings_from("local", data_dir, config_file)
    # Before the worker starts: a taken port is one line, with nothing started.
    listening = bind_port(host, port)
    # The worker opens the files too: create them once, here, before it
    # starts. A file that cannot be opened now (locked by another process)
    # is not fatal: the gateway spills and the worker is restarted until
    # both can open it.
    for opener in (open_queue, open_store):
        try:
            opener(settings).close()
        except (QueueError, StoreError) as error:
            log.warning("%s; starting anyway", error)
    worker = _WorkerSupervisor(settings)
    worker.start()

    def count_restarts(app: GatewayApp) -> None:
        app.metrics.worker_restarts = lambda: worker.restarts

    err_console.print(
        shown(f"events stored in {settings.store_path}; see them with `eventtrail flow REQUEST_ID`")
    )
    try:
        for counts in _serve(routes, settings, host, port, prepare_app=count_restarts, listening=listening):
            _report(counts)
    finally:
        worker.stop()
