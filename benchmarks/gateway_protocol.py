"""What the gateway's server protocol costs per request, alone: requests fed
to ``data_received`` in one process, without sockets, answered at once by a
trivial ASGI app, against a bare httptools protocol (the floor: one parse,
one ASGI call, one write, nothing checked or bounded) measured in the same
run, in alternating rounds.

    .venv/bin/python benchmarks/gateway_protocol.py [--requests 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import httptools
import uvicorn
import uvloop
from uvicorn.server import ServerState

from eventtrail.gateway.config import ServerLimits
from eventtrail.gateway.protocol import http_protocol

sys.path.insert(0, str(Path(__file__).parent))
from gateway_path import ClientTransport as Transport

REQUEST = b"GET /a/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"11"),
    (b"x-request-id", b"0190a0b0-1234-7abc-8def-0123456789ab"),
]


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


class BareProtocol(asyncio.Protocol):
    """The floor: parse, call the app, write the head with the body."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.scope: dict[str, Any] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        url = httptools.parse_url(self.url)
        self.scope = {
            "type": "http",
            "method": self.parser.get_method().decode(),
            "path": url.path.decode(),
            "raw_path": url.path,
            "query_string": url.query or b"",
            "headers": self.headers,
        }

    def on_message_complete(self) -> None:
        self.loop.create_task(self.run(self.scope))

    async def run(self, scope: dict[str, Any]) -> None:
        held: list[bytes] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                parts = [b"HTTP/1.1 %d OK\r\n" % message["status"]]
                for name, value in message["headers"]:
                    parts += (name, b": ", value, b"\r\n")
                held.append(b"".join(parts) + b"\r\n")
            else:
                self.transport.write(held.pop() + message["body"])

        await app(scope, receive, send)


async def per_request(make: Callable[[], asyncio.Protocol], requests: int) -> float:
    """µs per request, the loop turned twice per request (its task and the
    head's flush)."""
    transport = Transport()
    protocol = make()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for _ in range(1000):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    began = time.perf_counter()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - began
    if transport.writes < requests:
        raise AssertionError(f"{transport.writes} answers to {requests} requests")
    return elapsed / requests * 1e6


async def measure(requests: int, rounds: int) -> None:
    config = uvicorn.Config(
        app,
        http=http_protocol(ServerLimits()),
        proxy_headers=False,
        log_level="warning",
        limit_concurrency=1024,
    )
    config.load()
    state = ServerState()

    def gateway() -> asyncio.Protocol:
        return config.http_protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]

    setups: dict[str, Callable[[], asyncio.Protocol]] = {
        "gateway.protocol": gateway,
        "bare httptools": BareProtocol,
    }
    figures: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, make in setups.items():
            figures[name].append(await per_request(make, requests))
    for name, values in figures.items():
        rounded = ", ".join(f"{value:.1f}" for value in values)
        print(f"{name:18} {statistics.median(values):5.1f} µs/request (rounds: {rounded})")
    ratio = statistics.median(figures["gateway.protocol"]) / statistics.median(figures["bare httptools"])
    print(f"gateway.protocol / bare: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    uvloop.install()
    asyncio.run(measure(options.requests, options.rounds))


if __name__ == "__main__":
    main()
