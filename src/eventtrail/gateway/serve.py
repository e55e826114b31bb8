"""Running the gateway: opening its publisher from the settings, and serving
an ASGI app on uvicorn, in the foreground or in a background thread."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from pathlib import Path
from typing import Any, Self

import uvicorn

from eventtrail.config import Settings, open_queue
from eventtrail.gateway.config import GatewayConfig, PublisherSettings
from eventtrail.gateway.offload import ProcessQueue
from eventtrail.gateway.publisher import Publisher, PublisherCounts
from eventtrail.gateway.spill import SpillFile
from eventtrail.queue import Queue

__all__ = ["GatewayServer", "open_publisher", "server_config", "spill_path", "tune_gc"]

log = logging.getLogger(__name__)

SPILL_FILE = "gateway-spill.db"


def spill_path(publishing: PublisherSettings, settings: Settings) -> Path:
    """Where the spill file lives: configured, else in the data folder."""
    return Path(publishing.spill_path) if publishing.spill_path else Path(settings.data_dir) / SPILL_FILE


def open_publisher(config: GatewayConfig, settings: Settings, *, queue: Queue | None = None) -> Publisher:
    """A started publisher on the configured queue (or ``queue``), with its
    spill file. Events spilled by an earlier run are sent once the queue answers."""
    publishing = config.publisher
    if queue is None:
        queue = ProcessQueue(settings) if publishing.queue_process else open_queue(settings)
    spill = SpillFile(spill_path(publishing, settings))
    return Publisher(
        queue,
        spill,
        buffer_size=publishing.buffer_size,
        batch_size=publishing.batch_size,
        flush_interval=publishing.flush_interval,
        retry_interval=publishing.retry_interval,
        max_retry_interval=publishing.max_retry_interval,
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


def server_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn settings for a proxy: no access log (the events are the log),
    no Server/Date headers of its own (the upstream's pass through)."""
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
    }
    values.update(options)
    return uvicorn.Config(app, **values)


class GatewayServer:
    """An ASGI app served by uvicorn in a background thread.

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
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Self:
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
        if self.port == 0:
            sockets = [sock for server in self._server.servers for sock in server.sockets]
            self.port = int(sockets[0].getsockname()[1])
        return self

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def stop(self, timeout: float = 15.0) -> PublisherCounts | None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self.publisher is not None:
            return self.publisher.close()
        return None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
