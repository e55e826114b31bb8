"""What the gateway's request path costs per request in one process, with
no sockets and no kernel: 32 client connections fed requests, the upstream
answering every request written to it at the next turn of the event loop,
against the minimal Python proxy (``minimal_proxy.py``) driven the same way.
Rounds alternate; the figures are medians, in µs per request.

Without the kernel's share and the other processes of ``gateway.py``'s
runs, the figures move little between runs (the machine's speed aside),
which makes this the measure to compare changes to the request path with.
Under load, the gateway's user CPU per request is about 1.7 times this.

    .venv/bin/python benchmarks/gateway_path.py [--requests 200000] [--rounds 3]

Setups: (g) the gateway app, recording off; (r) recording with the
gateway's publisher on its queue process, in a temporary data folder (its
background threads and the gateway-side cost of recording are in the
figure, the queue process's work is not); (p) the minimal proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
from uvicorn.server import ServerState

from eventtrail.config import load_settings
from eventtrail.gateway import GatewayApp, parse_gateway_config
from eventtrail.gateway.config import ServerLimits
from eventtrail.gateway.serve import open_publisher, server_config
from eventtrail.gateway.upstream import Connection, UpstreamPool

sys.path.insert(0, str(Path(__file__).parent))
import minimal_proxy

CONNECTIONS = 32
REQUEST = b"GET /a/orders/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
ANSWER = (
    b"HTTP/1.1 200 OK\r\ndate: Sat, 28 Nov 2026 07:00:00 GMT\r\nserver: uvicorn\r\n"
    b'content-length: 11\r\ncontent-type: application/json\r\n\r\n{"ok":true}'
)


class ClientTransport:
    """What a server protocol calls of its client's transport; counts the 200 answers."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        if data.startswith(b"HTTP/1.1 200 "):
            self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


class UpstreamTransport(ClientTransport):
    """An upstream connection's transport: each request written is answered
    at the next turn of the event loop."""

    def __init__(self, protocol: Any) -> None:
        super().__init__()
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        self.loop.call_soon(self.protocol.data_received, ANSWER)


async def per_request(clients: list[tuple[Any, ClientTransport]], requests: int) -> float:
    """µs per request: each round feeds one request to every client, then
    turns the loop enough times for every answer to go out."""
    rounds = requests // len(clients)
    before = sum(transport.writes for _, transport in clients)
    began = time.perf_counter()
    for _ in range(rounds):
        for protocol, _transport in clients:
            protocol.data_received(REQUEST)
        for _ in range(4):
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - began
    answered = sum(transport.writes for _, transport in clients) - before
    if answered < rounds * len(clients):
        raise AssertionError(f"{answered} answers to {rounds * len(clients)} requests")
    return elapsed / (rounds * len(clients)) * 1e6


def connected(make: Callable[[], Any]) -> list[tuple[Any, ClientTransport]]:
    clients = []
    for _ in range(CONNECTIONS):
        protocol, transport = make(), ClientTransport()
        protocol.connection_made(transport)
        clients.append((protocol, transport))
    return clients


async def gateway_clients(app: GatewayApp) -> list[tuple[Any, ClientTransport]]:
    # Idle while the other setups run: neither kept-alive side may time out meanwhile.
    pool = app._pool = UpstreamPool(idle_timeout=3600)
    route = app._routes[0]
    origin = route.origin(pool)
    # Upstream connections kept idle in the pool, one per client: the pool never connects.
    for _ in range(CONNECTIONS):
        connection = Connection(origin)
        connection.connection_made(UpstreamTransport(connection))  # type: ignore[arg-type]
        origin.keep(connection)
    limits = ServerLimits(keep_alive_timeout=3600, header_timeout=3600)
    config = server_config(app, "127.0.0.1", 0, limits=limits, lifespan="off")
    config.load()
    state = ServerState()
    return connected(lambda: config.http_protocol_class(config=config, server_state=state, app_state={}))  # type: ignore[call-arg]


async def minimal_clients() -> list[tuple[Any, ClientTransport]]:
    async def never(proxy: minimal_proxy.MinimalProxy) -> minimal_proxy.Upstream:
        raise AssertionError("every connection is kept idle from the start")

    proxy = minimal_proxy.MinimalProxy(never)
    for _ in range(CONNECTIONS):
        upstream = minimal_proxy.Upstream(proxy)
        upstream.connection_made(UpstreamTransport(upstream))
        proxy.idle.append(upstream)
    return connected(proxy.client)


async def measure(requests: int, rounds: int) -> None:
    config = parse_gateway_config(
        {"routes": [{"prefix": "/a", "service": "A", "upstream": "http://127.0.0.1:9"}]}
    )
    folder = tempfile.mkdtemp(prefix="eventtrail-path-")
    settings = load_settings({"backend": "local", "data_dir": folder}, environ={})
    publisher = open_publisher(config, settings)
    setups = {
        "(g) gateway, recording off": await gateway_clients(GatewayApp(config)),
        "(r) gateway, recording": await gateway_clients(GatewayApp(config, publisher)),
        "(p) minimal Python proxy": await minimal_clients(),
    }
    for clients in setups.values():  # warm up
        await per_request(clients, 20_000)
    figures: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, clients in setups.items():
            figures[name].append(await per_request(clients, requests))
    publisher.close()
    python = sys.version.split()[0]
    print(f"{CONNECTIONS} connections, {requests:,} requests per round, {rounds} rounds, Python {python}")
    for name, values in figures.items():
        shown = ", ".join(f"{value:.1f}" for value in values)
        print(f"{name:28} {statistics.median(values):5.1f} µs/request (rounds: {shown})")
    plain, recording, minimal = (statistics.median(values) for values in figures.values())
    print(f"(g)/(p): {plain / minimal:.2f}x   (r) - (g): {recording - plain:+.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    uvloop.run(measure(options.requests, options.rounds))


if __name__ == "__main__":
    main()
