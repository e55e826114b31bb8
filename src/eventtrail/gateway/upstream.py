"""The gateway's upstream client: HTTP/1.1 over pooled keep-alive connections,
parsed by httptools (llhttp), the parser uvicorn uses on the other side.

A proxy needs little of a general HTTP client: no redirects, cookies,
decompression or header normalisation, one request at a time per
connection, the response head as raw bytes and the body as it comes. This
client does only that, on asyncio protocols, so that a proxied call costs a
fraction of the CPU an aiohttp ``ClientSession`` request does
(docs/benchmarks.md, gateway section). Where a request goes is decided
before it gets here (:mod:`eventtrail.gateway.proxy` builds the URL from a
route's own parts); this module only speaks HTTP to that origin.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import typing
from collections.abc import AsyncIterator, Sequence
from typing import cast

import httptools

__all__ = [
    "Connection",
    "Origin",
    "UpstreamClosed",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
]

Headers = Sequence[tuple[bytes, bytes]]

# Response bodies buffered past this pause reading from the upstream until
# the client side took them (the proxy relays as fast as its client reads).
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


# The response fields that frame its body (else the end of the connection
# does), and their lengths, so that most names are not lowercased to be told apart.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_FRAMING_LENGTHS = frozenset(len(name) for name in _FRAMING)


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before its response was complete."""

    def __init__(self, message: str, *, response_began: bool) -> None:
        super().__init__(message)
        self.response_began = response_began


class UpstreamProtocolError(Exception):
    """The upstream answered something that is not HTTP/1.x."""


class UpstreamListener(typing.Protocol):
    def upstream_changed(self) -> None:
        """The response has news (its head, body, its end) or failed."""


class Connection(asyncio.Protocol):
    """One connection to an upstream, carrying one exchange at a time.

    Its exchange is followed either by awaiting :meth:`wait` (and
    :meth:`UpstreamResponse.read`) or, with no task, by a ``listener`` told
    after each read of what it brought, and of a failure or a timeout; the
    listener calls :meth:`expect` while it waits for more.
    """

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._head_bytes = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout: float | None = None
        self._deadline = 0.0
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._reading_paused = False
        self._response: UpstreamResponse | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head_only = False
        self._expecting = False
        self.listener: UpstreamListener | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods, not its class.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.origin.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        response = self._response
        if response is not None and not response.complete:
            if response.head_done and not response.framed:
                # A body delimited by the end of the connection (no length,
                # not chunked): its end is this.
                self._finish()
            else:
                self._fail(
                    UpstreamClosed(
                        "the upstream closed the connection"
                        + (" in the middle of its response" if response.head_done else ""),
                        response_began=response.head_done or response.began,
                    )
                )
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(
                UpstreamClosed("the upstream closed the connection", response_began=False)
            )
        self._tell_listener()

    def data_received(self, data: bytes) -> None:
        self._read(data)
        self._tell_listener()

    def _tell_listener(self) -> None:
        listener = self.listener
        if listener is not None and self._response is not None:
            self._expecting = False
            listener.upstream_changed()

    def _read(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._response is None:
            # Bytes nobody asked for (after a complete response): this
            # connection can no longer be trusted to frame the next one.
            self._close()
            return
        response = self._response
        response.began = True
        in_head = not response.head_done
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(UpstreamProtocolError(f"the upstream's response is not valid HTTP: {error}"))
            self._close()
            return
        if in_head and not response.head_done:
            # llhttp keeps no bound on a response head: an upstream sending
            # headers without end would grow the header list without end.
            self._head_bytes += len(data)
            if self._head_bytes > self.origin.pool.max_head_bytes:
                self._fail(UpstreamProtocolError("the upstream's response head is too large"))
                self._close()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- httptools callbacks ------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self._response
        assert response is not None
        response.raw_headers.append((name, value))
        if len(name) in _FRAMING_LENGTHS and name.lower() in _FRAMING:
            response.framed = True

    def on_headers_complete(self) -> None:
        response = self._response
        parser = self._parser
        assert response is not None and parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the final
            # one follows on the same message stream.
            response.raw_headers = []
            response.framed = False
            return
        response.status = status
        response.head_done = True
        no_body = self._head_only or status in (204, 304)
        if no_body:
            response.framed = True
        if self._waiter is not None:
            self._wake()
        if no_body:
            self._finish()

    def on_body(self, body: bytes) -> None:
        response = self._response
        assert response is not None
        response.chunks.append(body)
        response.buffered += len(body)
        if response.buffered > _HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        if self._waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        response = self._response
        if response is not None and response.head_done and not response.complete:
            self._finish()

    # -- the exchange -------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._expecting = False
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._expecting = False
            waiter.set_exception(error)

    def _finish(self) -> None:
        response = self._response
        assert response is not None and self._parser is not None
        response.complete = True
        # A body the end of the connection delimits leaves nothing to reuse.
        response.keep_alive = not self.closed and response.framed and self._parser.should_keep_alive()
        self._parser = None
        if self._waiter is not None:
            self._wake()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    async def wait(self, timeout: float | None) -> None:
        """Until the parser has news (a head, a chunk, the end) or fails,
        or ``timeout`` seconds passed without any (:class:`TimeoutError`)."""
        if self._error is not None:
            raise self._error
        waiter = self.loop.create_future()
        self._waiter = waiter
        self.expect(timeout)
        try:
            await waiter
        finally:
            self._waiter = None

    def expect(self, timeout: float | None) -> None:
        """More of the response is awaited: if none comes within ``timeout``
        seconds, the exchange fails with :class:`TimeoutError`."""
        self._expecting = True
        self._timeout = timeout
        if timeout is not None:
            deadline = self._deadline = self.loop.time() + timeout
            # One timer per connection, not one per wait: a wait only notes
            # its deadline, and the timer is moved only to an earlier one.
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        timeout = self._timeout
        if not self._expecting or timeout is None or self._response is None:
            return  # nothing waits (the next wait sets the timer again)
        if self.loop.time() >= self._deadline:
            self._expecting = False
            self._fail(TimeoutError(f"the upstream sent nothing for {timeout:g}s"))
            self._tell_listener()
        else:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    async def drain(self) -> None:
        if self._writing_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self.closed:
            raise self._error or UpstreamClosed("the upstream closed the connection", response_began=False)

    def begin(self, head_only: bool) -> UpstreamResponse:
        self._error = None
        self._head_bytes = 0
        self._head_only = head_only
        self._response = UpstreamResponse(self)
        self._parser = httptools.HttpResponseParser(self)
        return self._response

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise self._error or UpstreamClosed("the upstream closed the connection", response_began=False)
        self.transport.write(data)

    @property
    def error(self) -> BaseException | None:
        """Why the exchange failed, if it did."""
        return self._error

    def release(self, response: UpstreamResponse) -> None:
        """The exchange is over: keep the connection for the next one if
        its response was read whole and both sides allow it."""
        self._response = None
        self._waiter = None
        self.listener = None
        self._expecting = False
        if response.complete and response.keep_alive and not self.closed and not self._reading_paused:
            self.origin.keep(self)
        else:
            self._close()


class UpstreamResponse:
    """An upstream's answer: its status and raw header list once the head
    came, then its body chunk by chunk (:meth:`read`)."""

    __slots__ = (
        "_connection",
        "began",
        "buffered",
        "chunks",
        "complete",
        "framed",
        "head_done",
        "keep_alive",
        "raw_headers",
        "status",
    )

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.began = False
        self.head_done = False
        # A framing field came (see Connection.on_header); else the end of
        # the connection ends the body.
        self.framed = False
        self.complete = False
        self.keep_alive = False

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def at_eof(self) -> bool:
        """The whole body was received and read."""
        return self.complete and not self.chunks

    async def read(self, timeout: float | None) -> bytes:
        """The body received since the last call (waiting up to ``timeout``
        seconds for more), or ``b""`` once it is all read."""
        while not self.chunks:
            if self.complete:
                return b""
            await self._connection.wait(timeout)
        return self.take()

    def take(self) -> bytes:
        """The body received since the last call, without waiting (``b""``
        if none came); reading from the upstream goes on if it had paused."""
        chunks = self.chunks
        if not chunks:
            return b""
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        self._connection.resume_reading()
        return chunk

    def release(self) -> None:
        """Give the connection back (kept alive only if the body was read whole)."""
        self._connection.release(self)


class Origin:
    """The idle connections to one scheme, host and port, newest first."""

    def __init__(self, pool: UpstreamPool, scheme: str, host: str, port: int, server_hostname: str) -> None:
        self.pool = pool
        self.scheme = scheme
        self.host = host
        self.port = port
        self.server_hostname = server_hostname
        self.idle: list[Connection] = []

    def forget(self, connection: Connection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)

    def keep(self, connection: Connection) -> None:
        if self.pool.closed or len(self.idle) >= self.pool.max_idle_per_origin:
            connection._close()
            return
        connection.idle_since = time.monotonic()
        self.idle.append(connection)

    def take(self) -> Connection | None:
        """The most recently used idle connection still worth trying."""
        idle = self.idle
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if time.monotonic() - connection.idle_since > self.pool.idle_timeout:
                connection._close()
                continue
            return connection
        return None

    async def connect(self, timeout: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        ssl_context = self.pool.ssl_context if self.scheme == "https" else None
        opening = loop.create_connection(
            lambda: Connection(self),
            self.host,
            self.port,
            ssl=ssl_context,
            server_hostname=self.server_hostname if ssl_context is not None else None,
        )
        _transport, connection = await asyncio.wait_for(opening, timeout)
        return connection


class UpstreamPool:
    """Keep-alive connections to the gateway's upstreams.

    An idle connection is kept at most ``idle_timeout`` seconds (shorter than
    the usual upstream keep-alive, so that a connection the upstream is about
    to close is seldom picked), and at most ``max_idle_per_origin`` per
    origin. A request that fails on a reused connection before any byte of
    its response came (the upstream closed it while idle) is sent again once
    on a new connection, as long as its body was not a stream. A response
    head larger than ``max_head_bytes`` is an :class:`UpstreamProtocolError`
    (nginx: "upstream sent too big header").
    """

    def __init__(
        self,
        *,
        idle_timeout: float = 4.0,
        max_idle_per_origin: int = 512,
        max_head_bytes: int = 64 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.max_head_bytes = max_head_bytes
        self._ssl_context = ssl_context
        self._origins: dict[tuple[str, str, int], Origin] = {}
        self.closed = False

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def origin(self, scheme: str, host: str, port: int, server_hostname: str | None = None) -> Origin:
        key = (scheme, host, port)
        found = self._origins.get(key)
        if found is None:
            found = self._origins[key] = Origin(self, scheme, host, port, server_hostname or host)
        return found

    def send(self, origin: Origin, request: bytes, *, head_only: bool) -> UpstreamResponse | None:
        """``request`` (its head and whole body) sent on an idle connection
        to ``origin``, without waiting for anything; ``None`` if none is
        kept. The response comes to the connection's listener (or to
        :meth:`Connection.wait`); should the upstream have closed that
        connection meanwhile, it fails with :class:`UpstreamClosed` before
        any byte of it (``response_began`` false), and may be sent again."""
        if self.closed:
            raise RuntimeError("the upstream pool is closed")
        connection = origin.take()
        if connection is None:
            return None
        response = connection.begin(head_only)
        connection.write(request)
        return response

    async def request(
        self,
        origin: Origin,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        head_only: bool,
        chunked: bool,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> UpstreamResponse:
        """Send ``head`` (the request line and headers, ending in a blank
        line) and ``body``, and return the response once its head came.
        The caller reads the body and then calls :meth:`UpstreamResponse.release`."""
        if self.closed:
            raise RuntimeError("the upstream pool is closed")
        replayable = not isinstance(body, AsyncIterator)
        while True:
            connection = origin.take()
            fresh = connection is None
            if connection is None:
                connection = await origin.connect(connect_timeout)
            response = connection.begin(head_only)
            try:
                if body is None or isinstance(body, bytes):
                    connection.write(head + body if body else head)
                else:
                    connection.write(head)
                    await _send_stream(connection, body, chunked)
                while not response.head_done:
                    await connection.wait(read_timeout)
            except UpstreamClosed as closed:
                connection.release(response)
                if not fresh and replayable and not closed.response_began:
                    continue
                raise
            except BaseException:
                connection.release(response)
                raise
            return response

    def close(self) -> None:
        self.closed = True
        for origin in self._origins.values():
            for connection in origin.idle:
                connection._close()
            origin.idle.clear()


async def _send_stream(connection: Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    async for chunk in body:
        if not chunk:
            continue
        connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        await connection.drain()
    if chunked:
        connection.write(b"0\r\n\r\n")
