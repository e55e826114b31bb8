"""The least a reverse proxy in Python on the gateway's libraries does: a
peer for the gateway in ``gateway.py`` (over sockets) and
``gateway_path.py`` (in one process).

Every request of every client goes to the upstream on a pooled keep-alive
connection, its answer back with a request id added; the work is done in
httptools' callbacks, with no task, check, limit, timeout or recording.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

REQUEST_ID = b"x-request-id: 0190a0b0-1234-7abc-8def-0123456789ab\r\n"
_DROPPED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"host", b"x-request-id"})


class Upstream(asyncio.Protocol):
    """One pooled connection to the upstream."""

    def __init__(self, proxy: MinimalProxy) -> None:
        self.proxy = proxy
        self.client: Client | None = None
        self.parts: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.client.transport.close()

    def exchange(self, client: Client, head: bytes) -> None:
        self.client = client
        self.parts = []
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(head)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in _DROPPED:
            self.parts += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.parts[:0] = [b"HTTP/1.1 %d \r\n" % self.parser.get_status_code()]
        self.parts += (REQUEST_ID, b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        self.proxy.idle.append(self)
        if client is not None and not client.transport.is_closing():
            client.transport.write(b"".join(self.parts))


class Client(asyncio.Protocol):
    """One client connection; ``/a`` is the route's prefix."""

    def __init__(self, proxy: MinimalProxy) -> None:
        self.proxy = proxy
        self.parser = httptools.HttpRequestParser(self)
        self.parts: list[bytes] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        path = httptools.parse_url(url).path
        below = path[2:] if path.startswith(b"/a/") else path
        self.parts = [self.parser.get_method(), b" ", below, b" HTTP/1.1\r\n"]

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in _DROPPED:
            self.parts += (name, b": ", value, b"\r\n")

    def on_message_complete(self) -> None:
        head = b"".join([*self.parts, b"host: upstream\r\n", REQUEST_ID, b"\r\n"])
        idle = self.proxy.idle
        while idle:
            upstream = idle.pop()
            if not upstream.transport.is_closing():
                upstream.exchange(self, head)
                return
        asyncio.get_running_loop().create_task(self._exchange_on_new(head))

    async def _exchange_on_new(self, head: bytes) -> None:
        upstream = await self.proxy.open_upstream(self.proxy)
        upstream.exchange(self, head)


class MinimalProxy:
    """The idle upstream connections, and how a new one is opened."""

    def __init__(self, open_upstream: Callable[[MinimalProxy], Awaitable[Upstream]]) -> None:
        self.open_upstream = open_upstream
        self.idle: list[Upstream] = []

    def client(self) -> Client:
        return Client(self)


async def serve(port: int, upstream_port: int) -> None:
    """The minimal proxy on ``port``, in front of the upstream on ``upstream_port``."""
    loop = asyncio.get_running_loop()

    async def connect(proxy: MinimalProxy) -> Upstream:
        _, upstream = await loop.create_connection(lambda: Upstream(proxy), "127.0.0.1", upstream_port)
        return upstream

    server = await loop.create_server(MinimalProxy(connect).client, "127.0.0.1", port)
    await server.serve_forever()
