"""Upstream services for the gateway tests: real servers on loopback ports."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

from eventtrail.gateway.serve import GatewayServer

CHUNK = 1024 * 1024


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers what it received; a few paths behave differently:
    ``/slow`` waits 2 s, ``/download/N`` streams N bytes, ``/upload`` counts
    the body without keeping it."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path: str = scope["path"]
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if path == "/slow":
        await asyncio.sleep(2)
    if path.startswith("/download/"):
        total = int(path.rsplit("/", 1)[1])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        block = b"x" * CHUNK
        sent = 0
        while sent < total:
            piece = block[: min(CHUNK, total - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < total})
        return
    body = msgspec.json.encode(
        {
            "method": scope["method"],
            "path": path,
            "rawPath": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "headers": [[name.decode(), value.decode()] for name, value in scope["headers"]],
            "bodyBytes": size,
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 201 if scope["method"] == "POST" else 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-multi", b"one"),
                (b"x-multi", b"two"),
                (b"set-cookie", b"session=s3cr3t-cookie"),
                (b"set-cookie", b"theme=dark"),
                (b"connection", b"x-upstream-hop"),
                (b"x-upstream-hop", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextmanager
def echo_server() -> Iterator[GatewayServer]:
    with GatewayServer(echo_app) as server:
        yield server


@contextmanager
def resetting_server(answer_first: bytes = b"") -> Iterator[int]:
    """A port whose server accepts each connection, reads, sends
    ``answer_first`` (e.g. the start of a response), and resets it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                with suppress(OSError):
                    connection.recv(65536)
                    if answer_first:
                        connection.sendall(answer_first)
                        time.sleep(0.1)
                # Linger 0: close sends RST, not FIN.
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        listener.close()


@dataclass
class RecordingServer:
    """A server that answers 200 to anything and keeps every request target
    it received, exactly as it arrived on the wire."""

    port: int
    targets: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def recording_server() -> Iterator[RecordingServer]:
    """A :class:`RecordingServer` on a free loopback port (the standard
    library's HTTP server: its request line is kept as sent, not parsed by
    the same code as the gateway's)."""
    received: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            received.append(self.path)
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            body = self.path.encode("latin-1", "replace")
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield RecordingServer(int(server.server_address[1]), received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Scripted:
    port: int
    connections: list[int] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)


def read_request(sock: socket.socket) -> bytes:
    """One request head (and a Content-Length body) from ``sock``; b"" at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            while len(body) < int(value):
                body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@contextmanager
def scripted(handler: Callable[[socket.socket, Scripted], None]) -> Iterator[Scripted]:
    """A server that runs ``handler`` on each accepted connection, in a thread."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    state = Scripted(int(listener.getsockname()[1]))
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(connection: socket.socket) -> None:
        with connection, suppress(OSError):
            connection.settimeout(5)
            handler(connection, state)

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            state.connections.append(connection.fileno())
            thread = threading.Thread(target=serve, args=(connection,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield state
    finally:
        stop.set()
        acceptor.join(5)
        for thread in threads:
            thread.join(5)
        listener.close()
