"""Running the gateway: opening its publisher from the settings, and serving
an ASGI app on uvicorn's server with the gateway's own HTTP protocol
(:mod:`eventtrail.gateway.protocol`, which bounds what one client may hold),
in the foreground (:func:`serve_gateway`, in one process or in several
sharing the port) or in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, Self

import uvicorn

from eventtrail.config import Settings, open_queue
from eventtrail.gateway.config import GatewayConfig, PublisherSettings, ServerLimits
from eventtrail.gateway.offload import ProcessQueue
from eventtrail.gateway.protocol import http_protocol
from eventtrail.gateway.proxy import GatewayApp, build_app
from eventtrail.gateway.publisher import Publisher, PublisherCounts
from eventtrail.gateway.spill import SpillFile
from eventtrail.processes import ignore_interrupts, start_shielded, terminate_with_parent
from eventtrail.queue import Queue
from eventtrail.retry import Backoff
from eventtrail.web.server import bind, port_unavailable

__all__ = [
    "GatewayServer",
    "listening_socket",
    "open_publisher",
    "serve_gateway",
    "server_config",
    "spill_path",
    "tune_gc",
]

log = logging.getLogger(__name__)

SPILL_FILE = "gateway-spill.db"


def spill_path(publishing: PublisherSettings, settings: Settings, worker: int = 0) -> Path:
    """Where the spill file lives: configured, else in the data folder.

    Each worker process has its own (and so its own journal beside it):
    worker 0 the path itself, worker ``n`` the path with ``-n`` before its
    suffix. A spill file's pending count and a journal's file numbers belong
    to one process; a worker restarted under the same number takes over
    what its predecessor left.
    """
    path = Path(publishing.spill_path) if publishing.spill_path else Path(settings.data_dir) / SPILL_FILE
    return path if worker == 0 else path.with_name(f"{path.stem}-{worker}{path.suffix}")


def open_publisher(
    config: GatewayConfig, settings: Settings, *, queue: Queue | None = None, worker: int = 0
) -> Publisher:
    """A started publisher on the configured queue (or ``queue``), with the
    spill file of worker number ``worker``. Events spilled by an earlier run
    are sent once the queue answers."""
    publishing = config.publisher
    if queue is None:
        queue = (
            ProcessQueue(settings, call_timeout=publishing.send_timeout)
            if publishing.queue_process
            else open_queue(settings)
        )
    spill = SpillFile(spill_path(publishing, settings, worker))
    return Publisher(
        queue,
        spill,
        buffer_size=publishing.buffer_size,
        batch_size=publishing.batch_size,
        flush_interval=publishing.flush_interval,
        retry_interval=publishing.retry_interval,
        max_retry_interval=publishing.max_retry_interval,
        journal_interval=publishing.journal_interval,
    ).start()


def tune_gc() -> None:
    """Garbage-collect less often, for a process that is mostly the gateway.

    Each recorded call leaves objects alive for a few milliseconds (its
    events wait in the buffer), so the default thresholds run a collection
    every few hundred calls. Freezing what exists at start-up and raising the
    young-generation threshold took the recording gateway from about 80% to
    about 86% of the plain proxy's throughput and halved its p99 latency
    (docs/benchmarks.md). Call it once everything is imported.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


def server_config(
    app: Any, host: str, port: int, *, limits: ServerLimits | None = None, **options: Any
) -> uvicorn.Config:
    """uvicorn settings for a proxy: no access log (the events are the log),
    no Server/Date headers of its own (the upstream's pass through), and the
    limits of ``limits``, else of the gateway app's ``[server]`` table, else
    the defaults."""
    if limits is None:
        config = getattr(app, "config", None)
        limits = config.server if isinstance(config, GatewayConfig) else ServerLimits()
    values: dict[str, Any] = {
        "host": host,
        "port": port,
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        "date_header": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": 10,
        # The gateway appends the peer to X-Forwarded-For itself; uvicorn
        # would otherwise take a loopback client's X-Forwarded-For as the peer.
        "proxy_headers": False,
        "http": http_protocol(limits),
        "timeout_keep_alive": limits.keep_alive_timeout,
        # A request is answered 503 while this many connections are open or
        # requests in flight.
        "limit_concurrency": limits.max_connections,
        # The same head bound if a caller chooses uvicorn's h11 protocol
        # (without the head timeout, which only the protocol above has).
        "h11_max_incomplete_event_size": limits.max_header_bytes,
    }
    values.update(options)
    return uvicorn.Config(app, **values)


class GatewayServer:
    """The gateway app (or any ASGI app) served by uvicorn, with the
    gateway's protocol, in a background thread.

    ``start()`` returns once the port accepts connections; ``stop()`` lets
    in-flight requests finish, stops the server, then closes ``publisher``
    (which flushes its buffer) and returns the publisher's final counts.
    Port 0 picks a free port (see :attr:`port`).
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        publisher: Publisher | None = None,
        **options: Any,
    ) -> None:
        self.publisher = publisher
        self._server = uvicorn.Server(server_config(app, host, port, **options))
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Self:
        """Serve; return once the port accepts connections. A port that
        cannot be bound raises :class:`~eventtrail.web.server.PortUnavailable`."""
        self._socket = bind(self.host, self.port)
        self.port = int(self._socket.getsockname()[1])
        self._thread = threading.Thread(target=self._run, name="eventtrail-gateway", daemon=True)
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start")
            if waited >= timeout:
                raise TimeoutError(f"the server on {self.host}:{self.port} did not start in {timeout}s")
            self._thread.join(0.01)
            waited += 0.01
        return self

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket] if self._socket is not None else None))

    def stop(self, timeout: float = 15.0) -> PublisherCounts | None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        if self.publisher is not None:
            return self.publisher.close()
        return None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Server(uvicorn.Server):
    """uvicorn's server, stopped gracefully by SIGINT or SIGTERM (a second
    SIGINT: at once) without raising the signal again once stopped, so that
    the caller's cleanup (flushing the events) runs. A worker process
    (``ignore_interrupt``) leaves SIGINT, which Ctrl-C sends to the whole
    process group, to its parent, which stops it with SIGTERM."""

    def __init__(self, config: uvicorn.Config, *, ignore_interrupt: bool = False) -> None:
        super().__init__(config)
        self.ignore_interrupt = ignore_interrupt

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT and self.ignore_interrupt:
            return
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def listening_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``: each worker
    binds its own and the kernel spreads new connections among them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
        sock.set_inheritable(True)
    except OSError as error:
        sock.close()
        raise port_unavailable(error, host, port) from None
    return sock


def _serve_here(
    config: GatewayConfig,
    settings: Settings | None,
    host: str,
    port: int,
    *,
    worker: int = 0,
    sock: socket.socket | None = None,
    ignore_interrupt: bool = False,
    prepare_app: Callable[[GatewayApp], None] | None = None,
) -> PublisherCounts | None:
    recording = settings is not None and config.recording.enabled
    publisher = open_publisher(config, settings, worker=worker) if recording and settings else None
    try:
        app = build_app(config, publisher)
        if prepare_app is not None:
            prepare_app(app)
        server = _Server(server_config(app, host, port), ignore_interrupt=ignore_interrupt)
        tune_gc()
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        counts = publisher.close() if publisher is not None else None
    return counts


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux
    ``PR_SET_PDEATHSIG``), so that a supervisor killed by SIGKILL leaves no
    worker holding the port; exit now if the parent is already gone."""
    terminate_with_parent()
    if os.getppid() != parent:
        raise SystemExit(0)


def _worker_main(
    config: GatewayConfig,
    settings: Settings | None,
    host: str,
    port: int,
    worker: int,
    report: Connection,
    parent: int,
    prepare_app: Callable[[GatewayApp], None] | None,
) -> None:
    """A worker process: its own socket on the shared port, its own publisher."""
    ignore_interrupts()
    _stop_with_parent(parent)
    sock = listening_socket(host, port)
    counts = _serve_here(
        config,
        settings,
        host,
        port,
        worker=worker,
        sock=sock,
        ignore_interrupt=True,
        prepare_app=prepare_app,
    )
    with contextlib.suppress(OSError):  # a parent that died no longer reads it
        report.send(counts)
    report.close()


_RESTART_BACKOFF = Backoff(attempts=None, base=0.5, cap=30.0, jitter=False)


class _Workers:
    """``count`` worker processes serving one port, each restarted (under its
    number, so that it takes over its predecessor's spill file and journal)
    after a capped, doubling delay if it exits while the gateway runs."""

    def __init__(
        self,
        config: GatewayConfig,
        settings: Settings | None,
        host: str,
        port: int,
        count: int,
        *,
        prepare_app: Callable[[GatewayApp], None] | None = None,
        backoff: Backoff = _RESTART_BACKOFF,
        stable_after: float = 60.0,
    ) -> None:
        self.config, self.settings, self.host, self.port = config, settings, host, port
        self.prepare_app = prepare_app
        self.backoff = backoff
        self.stable_after = stable_after
        self.restarts = 0
        self.counts: list[PublisherCounts] = []
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[Any] = [None] * count
        self._reports: list[Connection | None] = [None] * count
        self._started = [0.0] * count
        self._failures = [0] * count
        self._due = [0.0] * count

    def _spawn(self, worker: int) -> None:
        receiving, sending = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(
                self.config,
                self.settings,
                self.host,
                self.port,
                worker,
                sending,
                os.getpid(),
                self.prepare_app,
            ),
            name=f"eventtrail-gateway-{worker}",
        )
        start_shielded(process)
        sending.close()
        self._processes[worker], self._reports[worker] = process, receiving
        self._started[worker] = time.monotonic()

    def _collect(self, worker: int) -> None:
        report = self._reports[worker]
        if report is not None:
            try:
                if report.poll():
                    counts = report.recv()
                    if counts is not None:
                        self.counts.append(counts)
            except (EOFError, OSError):
                pass
            report.close()
            self._reports[worker] = None

    def run(self, stop: threading.Event) -> None:
        """Start the workers, keep them running until ``stop`` is set, then
        stop them gracefully (SIGTERM) and collect their publishers' counts."""
        for worker in range(len(self._processes)):
            self._spawn(worker)
        try:
            while not stop.wait(0.2):
                self._tend()
        finally:
            self._stop_all()

    def _tend(self) -> None:
        now = time.monotonic()
        for worker, process in enumerate(self._processes):
            if process is not None and process.is_alive():
                continue
            if process is not None:
                self._collect(worker)
                ran = now - self._started[worker]
                self._failures[worker] = 1 if ran >= self.stable_after else self._failures[worker] + 1
                delay = self.backoff.delay(self._failures[worker])
                self.restarts += 1
                code = process.exitcode
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                log.error(
                    "gateway worker %d (pid %s) stopped (%s); restarting it in %.1fs",
                    worker,
                    process.pid,
                    how,
                    delay,
                )
                self._processes[worker] = None
                self._due[worker] = now + delay
            elif now >= self._due[worker]:
                self._spawn(worker)

    def _stop_all(self, timeout: float = 30.0) -> None:
        running = [process for process in self._processes if process is not None and process.is_alive()]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + timeout
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("gateway worker pid %s did not stop in %.0fs; killing it", process.pid, timeout)
                process.kill()
                process.join()
        for worker in range(len(self._processes)):
            self._collect(worker)


def serve_gateway(
    config: GatewayConfig,
    settings: Settings | None,
    host: str,
    port: int,
    *,
    workers: int = 1,
    prepare_app: Callable[[GatewayApp], None] | None = None,
    announce: Callable[[int], None] | None = None,
    listening: socket.socket | None = None,
) -> list[PublisherCounts]:
    """Serve the gateway in the foreground until SIGINT or SIGTERM, then let
    in-flight requests end, flush the events and return each publisher's
    final counts. ``settings`` ``None`` (or recording disabled in
    ``config``): a plain reverse proxy.

    ``workers`` > 1: that many processes, each with its own socket on the
    port (``SO_REUSEPORT``: the kernel spreads connections among them), its
    own publisher and spill file (:func:`spill_path`); this process
    supervises them and restarts one that dies.

    ``prepare_app`` is called with each process's app before it serves (with
    several workers, in each worker: it must then be picklable, a module-level
    function). ``announce`` hears the port once it is bound, before anything
    is served: a port that cannot be bound raises
    :class:`~eventtrail.web.server.PortUnavailable` first. ``listening``: a
    socket bound already (one process only), which the gateway then owns.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if workers == 1:
        with listening or bind(host, port) as sock:
            if announce is not None:
                announce(int(sock.getsockname()[1]))
            counts = _serve_here(config, settings, host, port, sock=sock, prepare_app=prepare_app)
        return [counts] if counts is not None else []
    # Held (bound, not listening) while the workers run: it resolves port 0
    # and keeps the port from any process but this gateway's workers.
    with listening_socket(host, port, listen=False) as reserved:
        port = int(reserved.getsockname()[1])
        if announce is not None:
            announce(port)
        stop = threading.Event()

        def stop_on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, stop_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        supervisor = _Workers(config, settings, host, port, workers, prepare_app=prepare_app)
        try:
            supervisor.run(stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return supervisor.counts
