"""Recording calls from existing Python code, through the same publisher and
with the same events as the gateway.

- :class:`EventTrailMiddleware` wraps any ASGI app (a Python gateway, or a
  service recording the requests it serves);
- :class:`HttpxHooks` gives httpx clients event hooks that record each
  outgoing call, carrying the current request id to the callee.

Both honour ``X-Request-Id``/``traceparent`` like the gateway, and share the
request id through :data:`current_request_id`, so a service's outgoing calls
join the flow of the request it is serving.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from eventtrail.calls import GATEWAY
from eventtrail.gateway.config import Recording
from eventtrail.gateway.protocol import Receive, Scope, Send
from eventtrail.gateway.publisher import Publisher
from eventtrail.gateway.recorder import CallRecorder
from eventtrail.gateway.records import Call
from eventtrail.gateway.requestid import request_id_from_headers
from eventtrail.ids import uuid7_str

if TYPE_CHECKING:
    import httpx

__all__ = ["EventTrailMiddleware", "HttpxHooks", "current_request_id"]

#: The request id of the request being served (set by the middleware).
current_request_id: ContextVar[str | None] = ContextVar("eventtrail_request_id", default=None)

ASGIApp = Callable[[Scope, Receive, Send], Any]


class EventTrailMiddleware:
    """Records every HTTP request ``app`` serves as one call to ``service``.

    ``source`` is who records (the gateway by default; a service recording
    itself would give its own name). The response carries ``X-Request-Id``.
    """

    def __init__(
        self,
        app: ASGIApp,
        publisher: Publisher,
        *,
        service: str,
        source: str = GATEWAY,
        recording: Recording | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.recorder = CallRecorder(publisher, recording, source=source)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = request_id_from_headers(raw_headers)
        token = current_request_id.set(request_id)
        recorder = self.recorder
        call = recorder.request(
            request_id,
            self.service,
            scope["method"],
            scope["path"],
            scope["query_string"].decode("latin-1"),
            raw_headers,
        )
        status = 0
        bytes_in = bytes_out = 0
        response_headers: list[tuple[bytes, bytes]] = []
        started = time.perf_counter()

        async def counting_receive() -> Any:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def tagging_send(message: Any) -> None:
            nonlocal status, bytes_out, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in response_headers):
                    message = {
                        **message,
                        "headers": [*response_headers, (b"x-request-id", request_id.encode("latin-1"))],
                    }
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        except Exception as error:
            recorder.error(
                request_id,
                call,
                self.service,
                kind="error",
                elapsed_ms=(time.perf_counter() - started) * 1000,
                detail=f"{type(error).__name__}: {error}"[:500],
            )
            raise
        else:
            recorder.response(
                request_id,
                call,
                self.service,
                status=status,
                latency_ms=(time.perf_counter() - started) * 1000,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                headers=response_headers,
            )
        finally:
            current_request_id.reset(token)


class HttpxHooks:
    """httpx event hooks recording each outgoing call.

    ``service`` names the callee: a fixed name, or a function of the request
    (default: the URL's host). Use ``event_hooks`` with ``httpx.Client`` and
    ``async_event_hooks`` with ``httpx.AsyncClient``. httpx calls no hook
    when a call fails without a response (refused, timeout): call
    :meth:`failed` from your ``except`` to record those.
    ``bytesOut`` is the response's ``Content-Length`` (0 when not declared):
    the hooks run before the body is read.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        service: str | Callable[[httpx.Request], str] | None = None,
        source: str = GATEWAY,
        recording: Recording | None = None,
    ) -> None:
        self.recorder = CallRecorder(publisher, recording, source=source)
        self._service = service
        self._calls: weakref.WeakKeyDictionary[httpx.Request, tuple[str, Call, str, float]] = (
            weakref.WeakKeyDictionary()
        )

    def _service_of(self, request: httpx.Request) -> str:
        if callable(self._service):
            return self._service(request)
        return self._service or request.url.host

    def on_request(self, request: httpx.Request) -> None:
        request_id = request.headers.get("x-request-id") or current_request_id.get() or uuid7_str()
        request.headers["X-Request-Id"] = request_id
        service = self._service_of(request)
        target = urlsplit(str(request.url))
        call = self.recorder.request(
            request_id, service, request.method, target.path or "/", target.query, request.headers.raw
        )
        self._calls[request] = (request_id, call, service, time.perf_counter())

    def on_response(self, response: httpx.Response) -> None:
        pending = self._calls.pop(response.request, None)
        if pending is None:
            return
        request_id, call, service, started = pending
        declared = response.headers.get("content-length", "0")
        self.recorder.response(
            request_id,
            call,
            service,
            status=response.status_code,
            latency_ms=(time.perf_counter() - started) * 1000,
            bytes_in=len(response.request.content) if _has_content(response.request) else 0,
            bytes_out=int(declared) if declared.isdigit() else 0,
            headers=response.headers.raw,
        )

    def failed(self, request: httpx.Request, error: BaseException) -> None:
        """Record a call that ended with ``error`` and no response."""
        pending = self._calls.pop(request, None)
        if pending is None:
            return
        request_id, call, service, started = pending
        import httpx as _httpx

        if isinstance(error, _httpx.TimeoutException):
            kind = "timeout"
        elif isinstance(error, _httpx.ConnectError) and "refused" in str(error).lower():
            kind = "refused"
        elif isinstance(error, _httpx.RemoteProtocolError | _httpx.ReadError):
            kind = "reset"
        else:
            kind = "error"
        self.recorder.error(
            request_id,
            call,
            service,
            kind=kind,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            detail=str(error)[:500],
        )

    async def _async_on_request(self, request: httpx.Request) -> None:
        self.on_request(request)

    async def _async_on_response(self, response: httpx.Response) -> None:
        self.on_response(response)

    @property
    def event_hooks(self) -> dict[str, list[Callable[..., Any]]]:
        """For ``httpx.Client(event_hooks=...)``."""
        return {"request": [self.on_request], "response": [self.on_response]}

    @property
    def async_event_hooks(self) -> dict[str, list[Callable[..., Any]]]:
        """For ``httpx.AsyncClient(event_hooks=...)``."""
        return {"request": [self._async_on_request], "response": [self._async_on_response]}


def _has_content(request: httpx.Request) -> bool:
    try:
        request.content  # noqa: B018 - raises for a body that is still a stream
    except Exception:  # noqa: BLE001 - httpx.RequestNotRead; a stream's size is unknown
        return False
    return True
