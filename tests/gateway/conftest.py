"""A gateway in front of the echo upstream, recording into a real SQLite
queue in the test's folder."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.event import Event, parse_event
from eventtrail.gateway import GatewayServer, build_app, parse_gateway_config
from eventtrail.gateway.publisher import Publisher
from eventtrail.gateway.spill import SpillFile
from eventtrail.queue import Queue
from tests.gateway.upstreams import echo_server


@pytest.fixture(scope="session")
def upstream_url() -> Iterator[str]:
    with echo_server() as server:
        yield server.url


def queued_events(path: Path) -> list[Event]:
    """Every event waiting in the queue file, in send order (left waiting)."""
    with SQLiteQueue(path) as queue:
        messages = queue.receive(100_000, visibility_timeout=600)
        queue.release(messages, delay=0, error="")
    return [parse_event(message.body) for message in messages]


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """What the server sent until it closed (or was silent for ``timeout`` seconds)."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    with suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """``data`` sent on a new connection to ``port``; what came back (:func:`read_answer`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock, timeout)


GatewayFactory = Callable[..., GatewayServer]


@pytest.fixture
def make_gateway(tmp_path: Path, upstream_url: str) -> Iterator[GatewayFactory]:
    """Start gateways (stopped at the end of the test) over ``routes``, with
    the echo upstream at ``/echo`` unless told otherwise."""
    started: list[GatewayServer] = []

    def make(
        routes: Sequence[dict[str, Any]] | None = None,
        *,
        recording: dict[str, Any] | None = None,
        queue: Queue | None = None,
        publisher_options: dict[str, Any] | None = None,
    ) -> GatewayServer:
        config = parse_gateway_config(
            {
                "routes": list(routes or [{"prefix": "/echo", "service": "Echo", "upstream": upstream_url}]),
                "recording": recording or {},
            }
        )
        publisher = Publisher(
            queue if queue is not None else SQLiteQueue(tmp_path / "queue.db"),
            SpillFile(tmp_path / "spill.db"),
            **(publisher_options or {}),
        ).start()
        server = GatewayServer(build_app(config, publisher), publisher=publisher).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
