"""Proxies in front of a local AWS endpoint, real sockets both ways; boto3 is
not touched.

- :func:`proxy`: an HTTP proxy that counts requests by operation and can
  misbehave the way DynamoDB and SQS do under load: throttle a call, take only
  part of a batch and report the rest as failed (``UnprocessedItems``,
  ``Failed`` entries), or reset the connection without answering.
- :class:`TcpProxy`: a TCP forwarder that a test cuts (every connection,
  open or new, is reset), slows (each chunk waits before it is forwarded) and
  restores: the network between a process and its endpoint.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["CUT", "Fault", "Proxy", "TcpProxy", "proxy"]

#: Decides what to do with one request: ``None`` forwards it unchanged; a
#: (status, body) pair answers it without forwarding; a dict replaces the
#: JSON request body and ``extra`` is merged into the response; :data:`CUT`
#: resets the connection without an answer.
Fault = Callable[[str, dict[str, Any]], Any]

#: A fault's decision: reset the connection, answer nothing.
CUT = "cut"


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (RST), as a dropped connection does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Proxy:
    def __init__(self, target: str, url: str) -> None:
        self.target = target
        self.url = url
        self.calls: Counter[str] = Counter()
        #: Calls by table and operation (the event table and the read models' apart).
        self.table_calls: Counter[tuple[str, str]] = Counter()
        self.fault: Fault | None = None

    def calls_on(self, table: str) -> dict[str, int]:
        """The operations counted on ``table``."""
        return {operation: count for (name, operation), count in self.table_calls.items() if name == table}


@contextmanager
def proxy(target: str) -> Iterator[Proxy]:
    parts = urlsplit(target)
    state = Proxy(target, "")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
            state.calls[operation] += 1
            request = json.loads(body or b"{}")
            if isinstance(request, dict) and isinstance(request.get("TableName"), str):
                state.table_calls[(request["TableName"], operation)] += 1
            extra: dict[str, Any] = {}
            decision = state.fault(operation, request) if state.fault else None
            if decision == CUT:
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if isinstance(decision, tuple):
                status, answer = decision
                self._reply(status, json.dumps(answer).encode(), "application/x-amz-json-1.0")
                return
            if isinstance(decision, dict):
                forwarded, extra = decision["request"], decision.get("extra", {})
                body = json.dumps(forwarded).encode()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
            connection.request("POST", self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            if extra:
                merged = json.loads(payload)
                merged.update(extra)
                payload = json.dumps(merged).encode()
            self._reply(response.status, payload, response.getheader("Content-Type") or "")
            connection.close()

        def _reply(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


class TcpProxy:
    """Forwards TCP connections from a free loopback port to ``target_port``.

    :meth:`cut` resets every open connection and each new one at once until
    :meth:`restore`; :meth:`slow` makes every chunk wait ``delay`` seconds
    before it is forwarded. Use it as a context manager: leaving stops it.
    """

    #: How often the forwarding threads look at the proxy's state.
    _TICK = 0.1

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.resets = 0
        self._cut = False
        self._closed = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(self._TICK)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="tcp-proxy-accept")]
        self._threads[0].start()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            dropped = list(self._open)
            self._open.clear()
            self.resets += len(dropped)
        for sock in dropped:
            _reset(sock)

    def slow(self, delay: float) -> None:
        self.delay = delay

    def restore(self) -> None:
        with self._lock:
            self._cut = False
        self.delay = 0.0

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                refused = self._cut
                if refused:
                    self.resets += 1
            if refused:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy ``source`` to ``sink`` until either closes or the proxy cuts them."""
        try:
            while True:
                readable, _, _ = select.select([source], [], [], self._TICK)
                if source.fileno() < 0 or sink.fileno() < 0:
                    return
                if not readable:
                    continue
                chunk = source.recv(65536)
                if not chunk:
                    break
                if self.delay:
                    time.sleep(self.delay)
                with self._lock:
                    if source not in self._open:
                        return
                sink.sendall(chunk)
        except (OSError, ValueError):
            return
        # One side closed: close both, so the other side sees the end too.
        with self._lock:
            known = source in self._open
            self._open.discard(source)
            self._open.discard(sink)
        if known:
            source.close()
            sink.close()
