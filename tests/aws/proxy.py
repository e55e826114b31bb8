"""An HTTP proxy in front of a local AWS endpoint that counts requests by
operation and can misbehave the way DynamoDB does under load: throttle a
call, or take only part of a BatchWriteItem and return the rest as
``UnprocessedItems``. Real HTTP both ways; boto3 is not touched."""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Fault", "Proxy", "proxy"]

#: Decides what to do with one request: ``None`` forwards it unchanged; a
#: (status, body) pair answers it without forwarding; a dict replaces the
#: JSON request body and ``extra`` is merged into the response.
Fault = Callable[[str, dict[str, Any]], Any]


class Proxy:
    def __init__(self, target: str, url: str) -> None:
        self.target = target
        self.url = url
        self.calls: Counter[str] = Counter()
        self.fault: Fault | None = None


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
            extra: dict[str, Any] = {}
            decision = state.fault(operation, json.loads(body or b"{}")) if state.fault else None
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
