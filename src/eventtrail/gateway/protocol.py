"""The gateway's server side: HTTP/1.1 parsed by httptools, each request
answered by a :class:`Handler` through its :class:`Exchange` (the gateway's
proxy) or by an ASGI call, under uvicorn's server (which keeps the sockets,
the signals, the lifespan and the graceful shutdown).

A handler is called once per request, with no task of its own, and answers
from callbacks: the proxy relays the upstream's answer as its parser reads
it. A task, its wake-ups and the ASGI messages cost more than the rest of a
proxied call's own work (docs/benchmarks.md, gateway section). Any other
application is served over ASGI, one task per request.

uvicorn's own protocol gives every request a response cycle object, an
``asyncio.Event``, a keep-alive timer set and cancelled, and two regular
expressions per response header; it bounds neither the size of a request
head nor the time a client takes to send it. On the proxy's path that was a
large share of its CPU per request (docs/benchmarks.md, gateway section).
This protocol does what the gateway's clients need and bounds what one
client may hold:

- a request head larger than ``max_header_bytes`` is answered 431, one not
  complete within ``header_timeout`` 408 (a connection that never sent a
  byte is closed silently), and the connection then reads and throws away
  what the client still sends for a short while before closing, so that
  the client reads the answer instead of a reset (nginx's lingering close);
- past ``limit_concurrency`` connections or requests in flight, a request
  is answered 503 at once and its connection closed;
- an idle keep-alive connection is closed after ``timeout_keep_alive``;
- a response's head leaves with its first body piece in one ``send()``
  (or at the end of the event loop's iteration if no body follows at once);
- pipelined requests are answered in order, one at a time, reading paused
  while too many wait or a request body waits to be read;
- a response head the application made is checked as a whole (RFC 9110
  field names and values) before it is written;
- a body of unknown length is chunked for an HTTP/1.1 client and, for an
  HTTP/1.0 one (which knows no chunked coding), sent as it is and ended by
  closing the connection.

One timer per connection watches both timeouts: a request only notes when
the wait for its head began, and the timer compares that note with the
clock when it fires.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import re
import typing
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar
from urllib.parse import unquote

import httptools
import uvicorn
from uvicorn.server import ServerState

from eventtrail.gateway.config import ServerLimits

__all__ = ["Exchange", "Handler", "HttpProtocol", "http_protocol"]

log = logging.getLogger(__name__)

# ASGI's types, as the gateway's app and hooks take them.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %b\r\n" % (status, phrase)


STATUS_LINE = {status: _status_line(status) for status in range(100, 600)}

# A response head as RFC 9110 allows it: a status line, then fields whose
# names are tokens and whose values hold no control character but HTAB, then
# an empty line. Checked once over the whole head, so that no value an
# application passes on (a proxy passes its upstream's) can split a response.
_VALID_HEAD = re.compile(
    rb"HTTP/1\.1 [1-5][0-9][0-9] [\t\x20-\x7e\x80-\xff]*\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)
_ASGI = {"version": "3.0", "spec_version": "2.3"}
# The response fields the protocol reads: they frame the body, or end the connection.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
# Request body buffered for the application past this pauses reading.
_HIGH_WATER = 64 * 1024
# Requests parsed ahead of their turn (pipelining) past this pause reading.
_MAX_PIPELINED = 16
# Bytes parsed at a time when a read brings more: parsing stops between two
# slices once reading has to pause.
_FEED_SLICE = 1024
# After a refusal, what the client still sends is read and thrown away for
# at most this long before the connection closes, so that the client's kernel
# does not reset the connection before the client read the answer (nginx's
# lingering close).
_LINGER_SECONDS = 2.0


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head that is too large."""


class Exchange:
    """One request and its response.

    A :class:`Handler` reads the request from its fields and :meth:`take_body`
    (after :meth:`want_body`), and answers with :meth:`answer` (or
    :meth:`start`), :meth:`write` and :meth:`respond`; it sets ``listener``
    to be told (at most once per turn of the event loop, never from inside
    the parser) when more of the body came, the client went away
    (``disconnected``), or writing may go on after a pause
    (``writing_paused``). For an ASGI application the same exchange is the
    ``receive`` and ``send`` of its call.
    """

    __slots__ = (
        "_notify_due",
        "body",
        "chunked",
        "close_delimited",
        "complete",
        "delivered",
        "disconnected",
        "expect_continue",
        "head_only",
        "headers",
        "held",
        "http_version",
        "keep_alive",
        "listener",
        "method",
        "more_body",
        "path",
        "protocol",
        "query",
        "raw_path",
        "remaining",
        "started",
        "task",
        "waiter",
    )

    def __init__(
        self,
        protocol: HttpProtocol,
        method: str,
        http_version: str,
        raw_path: bytes,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        self.protocol = protocol
        self.method = method
        self.http_version = http_version
        #: The path as sent (percent-encoded), and decoded.
        self.raw_path = raw_path
        self.path = path
        self.query = query
        #: Names lowercase, in the order sent.
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.head_only = method == "HEAD"
        self.listener: ExchangeListener | None = None
        self._notify_due = False
        self.body = bytearray()
        self.more_body = True
        # The last piece of the request body went to the application.
        self.delivered = False
        self.disconnected = False
        self.started = False
        self.complete = False
        self.chunked = False
        # An HTTP/1.0 client knows no chunked coding: a body of unknown
        # length ends when the connection does (RFC 9112, 6.1 and 6.3).
        self.close_delimited = False
        self.remaining = 0
        self.held: bytes | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def client(self) -> tuple[str, int] | None:
        return self.protocol.client

    @property
    def scheme(self) -> str:
        return self.protocol.scheme

    @property
    def writing_paused(self) -> bool:
        """The client reads slower than the response comes: wait for the
        listener to be told before writing more."""
        return self.protocol.writing_paused and not self.disconnected

    def asgi_scope(self) -> dict[str, Any]:
        protocol = self.protocol
        root_path = protocol.root_path
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": self.http_version,
            "server": protocol.server,
            "client": protocol.client,
            "scheme": protocol.scheme,
            "method": self.method,
            "root_path": root_path,
            "path": root_path + self.path if root_path else self.path,
            "raw_path": root_path.encode("ascii") + self.raw_path if root_path else self.raw_path,
            "query_string": self.query,
            "headers": self.headers,
            "state": protocol.app_state.copy(),
        }

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.listener is not None and not self._notify_due:
            # Not from inside the parser's callbacks: the listener may answer,
            # and answering may parse the next request.
            self._notify_due = True
            self.protocol.loop.call_soon(self._notify)

    def _notify(self) -> None:
        self._notify_due = False
        listener = self.listener
        if listener is not None:
            listener.exchange_changed()

    async def _wait(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            waiter = self.waiter = self.protocol.loop.create_future()
        await waiter

    async def run(self, app: App) -> None:
        try:
            await app(self.asgi_scope(), self.receive, self.send)
        except BaseException as error:
            log.error("exception in the ASGI application", exc_info=error)
            if not self.started:
                await self._send_500()
            else:
                self.protocol.transport.close()
            if not isinstance(error, Exception):
                raise
        else:
            if not self.started and not self.disconnected:
                log.error("the ASGI application returned without starting a response")
                await self._send_500()
            elif not self.complete and not self.disconnected:
                log.error("the ASGI application returned without completing its response")
                self.protocol.transport.close()
        finally:
            # Here rather than in a done callback: one callback less per request.
            self.protocol.state.tasks.discard(self.task)

    async def _send_500(self) -> None:
        self.keep_alive = False
        await self.send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
            }
        )
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    def _waiting(self) -> bool:
        """Nothing to hand the application yet (or all of it went), and the
        request is neither over nor gone."""
        return not (self.disconnected or self.complete) and (
            self.delivered or not (self.body or not self.more_body)
        )

    def want_body(self) -> None:
        """The handler waits for the body: a client that asked to be told
        so (``Expect: 100-continue``) is told now."""
        protocol = self.protocol
        if self.expect_continue and not protocol.transport.is_closing():
            self.expect_continue = False
            protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Resuming may parse bytes read before a pause, and with them the body.
        protocol.resume_reading()

    def take_body(self) -> bytes:
        """The request body received since the last call (all of it went
        once ``more_body`` is false)."""
        body = bytes(self.body)
        self.body.clear()
        self.delivered = not self.more_body
        # After the body is taken: resuming may parse more of it.
        self.protocol.resume_reading()
        return body

    async def receive(self) -> Message:
        self.want_body()
        while self._waiting():
            self.protocol.resume_reading()
            if self._waiting():
                await self._wait()
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        more = self.more_body
        return {"type": "http.request", "body": self.take_body(), "more_body": more}

    async def send(self, message: Message) -> None:
        protocol = self.protocol
        if protocol.writing_paused and not self.disconnected:
            await protocol.drain()
        if self.disconnected:
            return
        if not self.started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', not {message['type']!r}")
            self.start(message["status"], message.get("headers", ()))
            return
        if message["type"] != "http.response.body":
            raise RuntimeError(f"expected 'http.response.body', not {message['type']!r}")
        self.write(message.get("body", b""), message.get("more_body", False))

    def write(self, body: bytes, more: bool) -> None:
        """A piece of the response body (the last one if not ``more``),
        written at once. Nothing is written once the client went away."""
        if self.disconnected:
            return
        if self.complete:
            raise RuntimeError("response body sent after the response was complete")
        protocol = self.protocol
        if self.head_only:
            data = b""
        elif self.chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        elif self.close_delimited:
            data = body
        else:
            self.remaining -= len(body)
            if self.remaining < 0:
                raise RuntimeError("response body longer than its content-length")
            data = body
        held = self.held
        if held is not None:
            self.held = None
            data = held + data
        if data:
            protocol.transport.write(data)
        if not more:
            if self.remaining and not self.head_only:
                raise RuntimeError("response body shorter than its content-length")
            self.complete = True
            # A request body the application did not read is of no use now;
            # an ASGI application waiting for it is told (a handler knows).
            self.body.clear()
            self.listener = None
            self.wake()
            if not self.keep_alive:
                protocol.transport.close()
            protocol.response_complete()

    def start(self, status: int, headers: Any) -> None:
        """The response's status and headers (lowercase names or not).
        Raises :class:`RuntimeError` for a head that cannot be sent (a field
        RFC 9110 does not allow, a negative length), before anything went out.
        The head leaves with the first body piece, or at the end of this
        turn of the event loop."""
        self._hold_head(status, headers)
        self.protocol.hold_head()

    def answer(self, status: int, headers: Any, body: bytes, more: bool) -> None:
        """:meth:`start` and :meth:`write` at once: the head leaves now,
        with ``body``."""
        self._hold_head(status, headers)
        self.write(body, more)

    def _hold_head(self, status: int, headers: Any) -> None:
        line = STATUS_LINE.get(status)
        if line is None:
            raise RuntimeError(f"invalid response status {status!r}")
        parts = [line]
        length: int | None = None
        closing = False
        default_headers = self.protocol.state.default_headers
        legacy = self.http_version == "1.0"
        for name, value in [*default_headers, *headers] if default_headers else headers:
            name = name.lower()
            if name in _FRAMING:
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    if legacy:
                        continue  # not a coding an HTTP/1.0 client can read: the body goes as it is
                    self.chunked = value.lower() == b"chunked"
                elif b"close" in (token.strip().lower() for token in value.split(b",")):
                    self.keep_alive = False
                    closing = True
            parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not closing:
            parts.append(b"connection: close\r\n")
        if self.chunked:
            length = None
        elif length is None and not self.head_only and status not in (204, 304) and status >= 200:
            if legacy:
                # The end of the connection ends the body (HTTP/1.0 is never kept alive).
                self.close_delimited = True
                self.keep_alive = False
            else:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        if _VALID_HEAD.fullmatch(head) is None:
            raise RuntimeError("invalid response header name or value")
        if length is not None and length < 0:
            raise RuntimeError(f"invalid response content-length {length}")
        self.remaining = length or 0
        self.started = True
        self.expect_continue = False
        self.held = head

    def flush_head(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.protocol.transport.write(held)

    def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """A whole response at once, ``content-length`` added."""
        self.answer(status, [*headers, (b"content-length", b"%d" % len(body))], body, False)

    def abort(self) -> None:
        """Cut the connection: the client sees a truncated response."""
        if not self.complete:
            self.protocol.transport.close()

    def fail(self, error: BaseException) -> None:
        """The handler could not answer: 500 if nothing went out yet, else
        the connection is cut (a truncated answer, never a complete one)."""
        log.error("exception while answering a request", exc_info=error)
        if self.started or self.disconnected:
            if not self.complete:
                self.protocol.transport.close()
            return
        self.keep_alive = False
        self.respond(500, b"Internal Server Error", [(b"content-type", b"text/plain; charset=utf-8")])


class ExchangeListener(typing.Protocol):
    def exchange_changed(self) -> None:
        """Body came, the client went away, or writing may go on."""


class Handler:
    """Answers requests through their :class:`Exchange`; an application
    that is one is served without ASGI (its ``__call__`` still gets the
    lifespan)."""

    def handle(self, exchange: Exchange) -> None:
        raise NotImplementedError


async def _service_unavailable(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"19"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"Service Unavailable"})


class HttpProtocol(asyncio.Protocol):
    """One client connection: its requests parsed, each answered by the ASGI
    application in a task of its own, in order. ``limits`` is set by
    :func:`http_protocol`; uvicorn makes one per connection."""

    limits: ClassVar[ServerLimits] = ServerLimits()

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app: App = config.loaded_app
        # uvicorn may wrap the app in ASGI middleware (proxy headers, message
        # logging): a handler is called as it is.
        self.handler: Handler | None = next(
            (app for app in (config.app, self.app) if isinstance(app, Handler)), None
        )
        self.loop = _loop or asyncio.get_event_loop()
        self.state = server_state
        self.app_state = app_state
        self.root_path: str = config.root_path
        self.limit_concurrency: int | None = config.limit_concurrency
        self.keep_alive_timeout = float(config.timeout_keep_alive)
        self.parser = httptools.HttpRequestParser(self)
        # Bytes after a "Connection: close" request are ignored, not an error.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        # The request being answered (or the last one answered), the one
        # being parsed, and those parsed while another was being answered.
        self.current: Exchange | None = None
        self.parsing: Exchange | None = None
        self.pipeline: collections.deque[tuple[Exchange, App]] = collections.deque()
        self.writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._flush_due = False
        # Bytes read and not all parsed yet, and how far they were (see _feed_unparsed).
        self._unparsed = b""
        self._parsed_to = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_continue = False
        # The wait for a request head: since when, how many bytes so far,
        # and whether it follows a response (then idle means keep-alive).
        self._awaiting_head = False
        self._head_began = 0.0
        self._head_bytes = 0
        self._after_response = False
        # A head that began inside a chunk (pipelining): its bytes were not
        # all counted, so its size is measured when it completes.
        self._measure_head = False
        self._message_open = False
        self._refused = False
        self._upgraded = False
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections.add(self)  # type: ignore[arg-type]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            self.server = (str(local[0]), int(local[1]))
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._await_head(after_response=False)
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for exchange in (self.current, self.parsing, *(queued for queued, _ in self.pipeline)):
            if exchange is not None and not exchange.complete:
                exchange.disconnected = True
                exchange.wake()
        self.pipeline.clear()
        self._unparsed, self._parsed_to = b"", 0
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._upgraded:
            return
        if len(data) <= _FEED_SLICE and not self._unparsed:
            self._feed(data)
            return
        if self._unparsed:
            data = self._unparsed[self._parsed_to :] + data
        self._unparsed, self._parsed_to = data, 0
        self._feed_unparsed()

    def _feed_unparsed(self) -> None:
        """Parse what was read a slice at a time, until all of it is parsed or
        reading had to pause (requests parsed too far ahead of their turn, or
        a body the application has not read yet); the rest waits, unparsed,
        for :meth:`resume_reading`. One read can hold thousands of pipelined
        requests, and each request parsed holds memory until it is answered."""
        data = self._unparsed
        position = self._parsed_to
        view = memoryview(data)
        while position < len(data) and not (self._reading_paused or self._refused or self._upgraded):
            self._feed(view[position : position + _FEED_SLICE])
            position += _FEED_SLICE
        if position >= len(data) or self._refused or self._upgraded or self.transport.is_closing():
            self._unparsed, self._parsed_to = b"", 0
        else:
            # Kept whole, with where parsing stopped: no copy per pause.
            self._parsed_to = position
            self.pause_reading()

    def _feed(self, data: bytes | memoryview) -> None:
        if self._awaiting_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The client asked to switch protocols, which the gateway does
            # not do: its request is answered as a plain one and the
            # connection then closes; what follows its head is not HTTP.
            self._upgraded = True
            exchange = self.parsing
            if exchange is not None:
                exchange.keep_alive = False
                exchange.more_body = False
                exchange.wake()
            return
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                self._refuse(431, b"Request Header Fields Too Large")
            else:
                self._refuse(400, b"Invalid HTTP request")
            return
        if self._awaiting_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, b"Request Header Fields Too Large")

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        current = self.current
        if current is not None and current.listener is not None and not current.complete:
            current.wake()

    async def drain(self) -> None:
        if self.writing_paused and not self.transport.is_closing():
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    # -- httptools callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        self._message_open = True
        self.parsing = None
        self._url = b""
        self._headers = []
        self._expect_continue = False
        if not self._awaiting_head:
            self._await_head(after_response=False)
            self._measure_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        limit = self.limits.max_header_bytes
        if (self._head_bytes > limit or self._measure_head) and self._head_size() > limit:
            raise _HeadTooLarge
        self._measure_head = False
        parser = self.parser
        version = parser.get_http_version()
        url = httptools.parse_url(self._url)
        raw_path: bytes = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        keep_alive = version != "1.0" and parser.should_keep_alive()
        app = self.app
        limit_concurrency = self.limit_concurrency
        if limit_concurrency is not None and (
            len(self.state.connections) >= limit_concurrency or len(self.state.tasks) >= limit_concurrency
        ):
            app = _service_unavailable
            keep_alive = False
        exchange = self.parsing = Exchange(
            self,
            parser.get_method().decode("ascii"),
            version,
            raw_path,
            path,
            url.query or b"",
            self._headers,
            keep_alive,
            self._expect_continue,
        )
        current = self.current
        if (current is None or current.complete) and not self.pipeline:
            self._start(exchange, app)
        else:
            self.pipeline.append((exchange, app))
            if len(self.pipeline) >= _MAX_PIPELINED:
                self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.complete:
            return
        exchange.body += body
        if len(exchange.body) > _HIGH_WATER:
            self.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        self._message_open = False
        exchange = self.parsing
        if exchange is not None:
            exchange.more_body = False
            exchange.wake()
        if not self._busy() and not self.transport.is_closing():
            self._await_head(after_response=True)

    # -- requests and responses ---------------------------------------------

    def _start(self, exchange: Exchange, app: App) -> None:
        self.current = exchange
        if self.handler is not None and app is self.app:
            # After the parser returned: answering may parse the next request.
            self.loop.call_soon(self._handle, exchange)
            return
        task = exchange.task = self.loop.create_task(exchange.run(app))
        self.state.tasks.add(task)

    def _handle(self, exchange: Exchange) -> None:
        # Even for a client gone meanwhile: what its request asked is done,
        # and the handler counts it.
        assert self.handler is not None
        try:
            self.handler.handle(exchange)
        except Exception as error:  # noqa: BLE001 - logged, answered 500: the server goes on
            exchange.fail(error)

    def _busy(self) -> bool:
        return self.current is not None and not self.current.complete

    def hold_head(self) -> None:
        """The current response's head waits for its first body piece, at
        most until the end of this iteration of the event loop."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_head)

    def _flush_head(self) -> None:
        self._flush_due = False
        current = self.current
        if current is not None and not self.transport.is_closing():
            current.flush_head()

    def response_complete(self) -> None:
        self.state.total_requests += 1
        if self.transport.is_closing():
            return
        # Resuming may parse requests read before a pause: the next one in
        # line starts first, and the wait for a head is noted before.
        if self.pipeline:
            exchange, app = self.pipeline.popleft()
            self._start(exchange, app)
        elif not self._message_open:
            self._await_head(after_response=True)
        self.resume_reading()

    def pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and len(self.pipeline) < _MAX_PIPELINED and not self.transport.is_closing():
            exchange = self.parsing
            if exchange is None or len(exchange.body) <= _HIGH_WATER:
                self._reading_paused = False
                if self._unparsed:
                    # What was read before the pause comes first (it may pause again).
                    self._feed_unparsed()
                if not self._reading_paused:
                    self.transport.resume_reading()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now if idle, else after the
        response being made."""
        if self._busy():
            assert self.current is not None
            self.current.keep_alive = False
        else:
            self.transport.close()

    # -- the head's deadline and size ---------------------------------------

    def _await_head(self, *, after_response: bool) -> None:
        self._awaiting_head = True
        self._after_response = after_response
        self._head_bytes = 0
        self._head_began = self.loop.time()
        if after_response:
            # Idle now means keep-alive, whose deadline may come before the timer.
            timer = self._timer
            deadline = self._head_began + min(self.keep_alive_timeout, self.limits.header_timeout)
            if timer is not None and timer.when() > deadline + 0.05:
                timer.cancel()
                self._arm(deadline - self._head_began)

    def _arm(self, delay: float) -> None:
        self._timer = self.loop.call_later(delay, self._check_head)

    def _check_head(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        header_timeout = self.limits.header_timeout
        if not self._awaiting_head:
            self._arm(header_timeout)
            return
        idle = not self._head_bytes
        limit = (
            min(self.keep_alive_timeout, header_timeout) if idle and self._after_response else header_timeout
        )
        waited = self.loop.time() - self._head_began
        if waited < limit:
            self._arm(limit - waited)
            return
        if self._busy():
            # A pipelined head arriving while the previous answer is made:
            # its time starts again once that answer is out.
            self._head_began = self.loop.time()
            self._arm(header_timeout)
            return
        if idle:
            self.transport.close()
        else:
            self._refuse(408, b"Request Timeout")

    def _head_size(self) -> int:
        # The request line's method and version, and ": " and CRLF per header.
        return len(self._url) + 16 + sum(len(name) + len(value) + 4 for name, value in self._headers)

    def _refuse(self, status: int, message: bytes) -> None:
        """Answer ``status`` instead of the request being parsed, and close."""
        self._refused = True
        self._awaiting_head = False
        # A request whose head was read but whose body is malformed is not
        # answered by the application.
        bad = self.parsing if self._message_open else None
        self._message_open = False
        if bad is not None:
            self.pipeline = collections.deque(queued for queued in self.pipeline if queued[0] is not bad)
            if bad is self.current and not bad.complete:
                bad.disconnected = True
                bad.wake()
                if bad.started:
                    self.transport.close()
                    return
                # Its answer is the refusal.
                bad.complete = True
        if self._busy():
            # A head that came while earlier answers are made: they finish,
            # then the connection closes instead of this one being answered.
            last = self.pipeline[-1][0] if self.pipeline else self.current
            assert last is not None
            last.keep_alive = False
            return
        self.transport.write(
            b"%b%b%b%b%b"
            % (
                STATUS_LINE[status],
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(message),
                b"connection: close\r\n\r\n",
                message,
            )
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


def http_protocol(limits: ServerLimits) -> type[HttpProtocol]:
    """The protocol class uvicorn makes per connection, with ``limits``."""
    return type("HttpProtocol", (HttpProtocol,), {"limits": limits})
