"""Everything ``eventtrail demo`` runs, on the embedded backend, in one process.

Microservices A and B, the recording gateway in front of them, a worker
storing the gateway's events, and the web UI, each on its own thread (the
gateway's queue sends go through a child process as usual). Traffic is the
caller's business: :meth:`DemoStack.gateway_url` is where to send it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from eventtrail.config import Settings, open_queue, open_store
from eventtrail.demo.flows import SERVICE_A, SERVICE_B
from eventtrail.demo.nginx import NginxGateway
from eventtrail.demo.services import FAULTY, HEALTHY, orders_service, stock_service
from eventtrail.gateway.config import GatewayConfig, parse_gateway_config
from eventtrail.gateway.proxy import build_app as build_gateway
from eventtrail.gateway.publisher import PublisherCounts
from eventtrail.gateway.serve import GatewayServer, open_publisher
from eventtrail.health import HealthReport, service_health_since
from eventtrail.ingest import IngestCounts
from eventtrail.queue import Queue
from eventtrail.store import Store
from eventtrail.web import BackgroundServer
from eventtrail.web import build_app as build_ui
from eventtrail.worker import Worker

__all__ = ["DemoStack", "DemoTotals", "gateway_config"]

#: How long the gateway waits for each service: B's hangs outlast it.
TIMEOUT_A = 2.0
TIMEOUT_B = 1.0


def gateway_config(url_a: str, url_b: str) -> GatewayConfig:
    """The demo gateway's routes: ``/a`` to A and ``/b`` to B."""
    return parse_gateway_config(
        {
            "routes": [
                {"prefix": "/a", "service": SERVICE_A, "upstream": url_a, "timeout": TIMEOUT_A},
                {"prefix": "/b", "service": SERVICE_B, "upstream": url_b, "timeout": TIMEOUT_B},
            ]
        },
        origin="demo gateway",
    )


@dataclass(frozen=True, slots=True)
class DemoTotals:
    """What the demo's gateway (or nginx's log) and worker did, once stopped."""

    events: PublisherCounts | None
    stored: int
    ingested: IngestCounts | None = None
    """What nginx's log lines became, when nginx was the gateway."""


class DemoStack:
    """Start with :meth:`start` (or ``with``); :meth:`stop` flushes the
    gateway's events and lets the worker store them before returning.

    ``ui_port`` and ``gateway_port`` 0 pick free ports. ``seed`` makes the
    services' behaviour repeatable. With ``nginx`` (its executable), nginx
    is the gateway and its access log is followed into the queue
    (:mod:`eventtrail.demo.nginx`) instead of the recording gateway.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        host: str = "127.0.0.1",
        ui_port: int = 8765,
        gateway_port: int = 0,
        seed: int | None = None,
        nginx: Path | None = None,
    ) -> None:
        self.settings = settings
        self.started_at = datetime.now(UTC)
        self._host = host
        self._seed = seed
        # The store and queue the UI reads and :meth:`health` uses; the
        # worker opens its own on its thread.
        self._store: Store = open_store(settings)
        self._queue: Queue = open_queue(settings)
        self._ui = BackgroundServer(build_ui(self._store, self._queue), host, ui_port)
        self._services = [
            GatewayServer(orders_service(HEALTHY, seed=seed), host),
            GatewayServer(stock_service(FAULTY, seed=None if seed is None else seed + 1), host),
        ]
        self._gateway: GatewayServer | None = None
        self._nginx_executable = nginx
        self._nginx: NginxGateway | None = None
        self._gateway_port = gateway_port
        self._stop_worker = threading.Event()
        self._worker = threading.Thread(target=self._work, name="eventtrail-demo-worker", daemon=True)
        self._stored = 0

    @property
    def ui_url(self) -> str:
        return self._ui.url + "/"

    @property
    def gateway_url(self) -> str:
        if self._nginx is not None:
            return self._nginx.url
        if self._gateway is None:
            raise RuntimeError("the demo is not started")
        return self._gateway.url

    @property
    def nginx(self) -> NginxGateway | None:
        """nginx, when it is the gateway."""
        return self._nginx

    def start(self) -> Self:
        try:
            # The UI first: its port is the one a user chose, the likeliest to be taken.
            self._ui.start()
            for service in self._services:
                service.start()
            config = gateway_config(self._services[0].url, self._services[1].url)
            if self._nginx_executable is not None:
                self._nginx = NginxGateway(
                    config,
                    self.settings,
                    executable=self._nginx_executable,
                    host=self._host,
                    port=self._gateway_port,
                )
                self._nginx.start()
            else:
                publisher = open_publisher(config, self.settings)
                # Kept before it starts: if it cannot, stop() still closes its publisher.
                self._gateway = GatewayServer(
                    build_gateway(config, publisher), self._host, self._gateway_port, publisher=publisher
                )
                self._gateway.start()
            self._worker.start()
        except BaseException:
            self.stop()
            raise
        self.started_at = datetime.now(UTC)
        return self

    def _work(self) -> None:
        settings = self.settings
        with open_queue(settings) as queue, open_store(settings) as store:
            worker = Worker.configured(queue, store, settings, wait_seconds=0.2)
            self._stored += worker.run(stop=self._stop_worker).stored
            self._stored += worker.run(drain=True).stored

    def wait_until_stored(self, timeout: float = 10.0) -> bool:
        """Wait until every event the gateway recorded so far is stored (or
        dead-lettered); ``False`` if that took longer than ``timeout``."""
        queued = self._all_queued()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if queued() and self._queue.stats().pending == 0:
                return True
            time.sleep(0.05)
        return False

    def _all_queued(self) -> Callable[[], bool]:
        """Whether the events recorded before this call are on the queue, asked later."""
        if self._nginx is not None:
            return self._nginx.caught_up()
        if self._gateway is None or self._gateway.publisher is None:
            return lambda: True
        publisher = self._gateway.publisher
        target = publisher.counts().published
        return lambda: publisher.counts().sent >= target

    def health(self) -> HealthReport:
        """Service health over the time since the demo started."""
        return service_health_since(self._store, self.started_at)

    def stop(self) -> DemoTotals:
        """Stop the gateway (flushing its events, or reading nginx's log to
        its end), the services, the worker (after it stored everything
        queued), and the UI."""
        events = self._gateway.stop() if self._gateway is not None else None
        ingested = self._nginx.stop() if self._nginx is not None else None
        for service in self._services:
            service.stop()
        self._stop_worker.set()
        if self._worker.is_alive():
            self._worker.join()
        self._ui.stop()
        self._store.close()
        self._queue.close()
        return DemoTotals(events=events, stored=self._stored, ingested=ingested)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
