"""The reverse proxy: forwards each request to the service its path prefix
names, streams both bodies, and records the call.

Every microsecond of its own is added to every call it makes, so a call is
moved on by the callbacks of its two sides rather than by a task: the
gateway's server protocol hands it the request (:class:`_Call`, one per
request), and the upstream connection tells it when the response's head,
body or end came, which it relays at once. A task is made only to open a
connection or to stream a request body. A task per request, its wake-ups and
ASGI's messages cost more than the rest of a call's own work; a Python proxy
with none of the gateway's checks serves as many requests as nginx here
(docs/benchmarks.md, gateway section). The upstream client is
:mod:`eventtrail.gateway.upstream`: keep-alive connections parsed by
httptools, with the request head written as bytes in one piece.
"""

from __future__ import annotations

import asyncio
import errno
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import unquote

import msgspec

from eventtrail.calls import DISCONNECTED
from eventtrail.gateway.config import GatewayConfig, Route
from eventtrail.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from eventtrail.gateway.protocol import Exchange, Handler, Receive, Scope, Send
from eventtrail.gateway.publisher import Publisher
from eventtrail.gateway.recorder import CallRecorder
from eventtrail.gateway.requestid import request_id_from, request_id_from_headers
from eventtrail.gateway.upstream import (
    Connection,
    Origin,
    UpstreamClosed,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
)

__all__ = ["ClientDisconnected", "GatewayApp", "TargetRefused", "build_app", "error_kind", "normalise_path"]


# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
# (Proxy-Authorization is for this proxy; it is not passed on either.)
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Replaced by the gateway's own values.
_SET_BY_GATEWAY = frozenset(
    {b"host", b"x-request-id", b"x-forwarded-proto", b"x-forwarded-host", b"content-length"}
)
# Request fields the gateway reads, drops or replaces (a traceparent is read and passed on).
_READ_BY_GATEWAY = _HOP_BY_HOP | _SET_BY_GATEWAY | {b"x-forwarded-for", b"traceparent"}
# Response fields not passed to the client: the upstream's own request id
# is replaced by the gateway's.
_NOT_PASSED_DOWN = _HOP_BY_HOP | {b"x-request-id"}
# Methods whose request carries a length even when its body is empty.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Request bodies up to this size are read whole and sent with their length;
# larger or chunked ones are streamed.
_SMALL_BODY = 64 * 1024

_json = msgspec.json.Encoder()


class ClientDisconnected(Exception):
    """The client went away while its request body was being forwarded."""


def error_kind(error: BaseException) -> str:
    """The ``MICROSERVICE_ERROR`` kind of an upstream client failure."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, UpstreamClosed):
        return "reset"
    if isinstance(error, OSError) and error.errno in _RESET_ERRNOS:
        return "reset"
    return "error"


_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE})
_ERROR_STATUS = {"timeout": 504}
_ERROR_MESSAGE = {
    "timeout": "the upstream service did not answer in time",
    "refused": "the upstream service refused the connection",
    "reset": "the upstream service closed the connection",
    "error": "the upstream service could not be reached",
}


class TargetRefused(ValueError):
    """A request target the gateway does not forward (400): one that a
    server behind it could read as another path than the gateway did."""


# Encoded slash or backslash (they would split a segment differently upstream
# than here), the same encoded twice or a dot encoded twice (for a server that
# decodes again), overlong UTF-8 (which lax decoders read as "." or "/"), and
# encoded control characters.
_ENCODED_REFUSED = re.compile(
    r"%(?:2[fF]|5[cC]|[01][0-9a-fA-F]|7[fF]|25(?:2[eEfF]|5[cC])|[cC][01]|[eE]0%[89][0-9a-fA-F])"
)
# RFC 3986 pchar, "/" and "%": anything else in a path ("?", "#", a
# backslash, a space, a control or non-ASCII character) could be read
# otherwise by the server behind.
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DOT_SEGMENTS = frozenset({".", ".."})


def normalise_path(raw_path: str) -> str:
    """The request's path, percent-encoded as the client sent it, with dot
    segments removed (RFC 3986 5.2.4) and runs of slashes merged into one.

    Raises :class:`TargetRefused` for what a server could read as another
    path: a character that must be percent-encoded (a backslash, ``?``,
    ``#``, a space, a control character...), a malformed escape, an encoded
    slash or backslash (``%2F``, ``%5C``, or encoded twice), a dot encoded
    twice (``%252e``), overlong UTF-8 (``%C0%AE``), an encoded control
    character, and a dot segment spelt any other way than ``.`` or ``..``
    (``%2e%2e``, ``.%2E``, ``..;x``), as nginx and Envoy's ``normalize_path``
    do. Other escapes are kept as sent.
    """
    if not raw_path.startswith("/"):
        raise TargetRefused("the request target must be a path starting with /")
    if _PATH_CHARS.fullmatch(raw_path) is None:
        raise TargetRefused("a character in the path that must be percent-encoded")
    # Most paths have nothing to decode, remove or merge: they go as they came.
    if "%" not in raw_path and "/." not in raw_path and "//" not in raw_path:
        return raw_path
    if "%" in raw_path:
        if _ENCODED_REFUSED.search(raw_path):
            raise TargetRefused("an encoded slash, backslash, dot or control character in the path")
        if _BAD_ESCAPE.search(raw_path):
            raise TargetRefused("a malformed percent-escape in the path")
    segments = raw_path.split("/")
    kept: list[str] = []
    for segment in segments[1:]:
        if segment in _DOT_SEGMENTS:
            if segment == ".." and kept:
                kept.pop()
            continue
        if not segment:
            continue
        if "%" in segment or ";" in segment:
            plain = unquote(segment) if "%" in segment else segment
            if plain.partition(";")[0] in _DOT_SEGMENTS:
                raise TargetRefused("an encoded or parameterised dot segment in the path")
        kept.append(segment)
    if not kept:
        return "/"
    # A path ending in a slash or a dot segment names a folder (RFC 3986 5.2.4).
    folder = segments[-1] in ("", ".", "..")
    return "/" + "/".join(kept) + ("/" if folder else "")


def _after_segments(path: str, count: int) -> str:
    """``path`` without its first ``count`` segments (``""`` if no more)."""
    position = 0
    for _ in range(count):
        position = path.find("/", position + 1)
        if position < 0:
            return ""
    return path[position:]


class _CompiledRoute:
    __slots__ = (
        "authority",
        "base_path",
        "connect_timeout",
        "depth",
        "host",
        "host_line",
        "path_start",
        "port",
        "prefix",
        "read_timeout",
        "route",
        "scheme",
        "service",
    )

    def __init__(self, route: Route) -> None:
        self.route = route
        self.service = route.service
        self.prefix = route.bare_prefix
        # Segments of the prefix: where the forwarded part of a path begins.
        self.depth = self.prefix.count("/")
        upstream = route.upstream_url
        self.scheme = upstream.scheme
        assert upstream.raw_host is not None  # Route checked it
        self.host = upstream.raw_host
        assert upstream.port is not None  # http and https have default ports
        self.port: int = upstream.port
        self.authority = upstream.raw_authority
        self.base_path = route.base_path
        self.path_start = self.base_path + "/"
        self.host_line = b"host: " + self.authority.encode("ascii") + b"\r\n"
        self.connect_timeout = route.connect_timeout
        self.read_timeout = route.timeout

    def origin(self, pool: UpstreamPool) -> Origin:
        """Where this route's connections come from in ``pool``."""
        return pool.origin(self.scheme, self.host, self.port)

    def target(self, rest: str, query: str) -> str:
        """The request-target sent upstream for a path below the prefix
        (encoded, normalised, starting with ``/``): the route's base path,
        then ``rest``, then the query. The host and port are the route's
        own (its connection and its ``host`` line): nothing in a request
        names them."""
        target = self.base_path + rest
        # Nothing above leaves the base path; this says so at the one place
        # a request's path leaves.
        if not target.startswith(self.path_start):
            raise TargetRefused(f"the request target does not stay within {self.route.upstream}")
        return target + "?" + query if query else target


class GatewayApp(Handler):
    """The gateway: a :class:`~eventtrail.gateway.protocol.Handler` its own
    server calls for each request, and an ASGI 3 application for the
    lifespan.

    ``publisher`` ``None`` (or ``recording.enabled = false`` in the config)
    proxies without recording. The app opens its upstream connection pool on
    ASGI lifespan startup (or on first use) and closes it on shutdown; the
    publisher belongs to the caller, who closes it after the server stopped.
    It is served by :class:`~eventtrail.gateway.GatewayServer` (or
    ``eventtrail gateway``), whose protocol calls :meth:`handle`; other ASGI
    servers cannot serve it.
    """

    def __init__(self, config: GatewayConfig, publisher: Publisher | None = None) -> None:
        self.config = config
        self.publisher = publisher
        self.metrics = GatewayMetrics()
        #: Requests refused for their target (400).
        self.rejected = 0
        self.recorder = (
            CallRecorder(publisher, config.recording)
            if publisher is not None and config.recording.enabled
            else None
        )
        # Longest prefix first, so /api/v2 wins over /api.
        self._routes = sorted(
            (_CompiledRoute(route) for route in config.routes), key=lambda r: len(r.prefix), reverse=True
        )
        self._metrics_path = config.metrics_path
        self._pool: UpstreamPool | None = None
        #: Calls' tasks in flight (opening a connection, streaming a body).
        self.tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------

    async def startup(self) -> None:
        if self._pool is None:
            self._pool = UpstreamPool()

    async def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- requests -----------------------------------------------------------

    def _match(self, path: str) -> tuple[_CompiledRoute, str] | None:
        for route in self._routes:
            prefix = route.prefix
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                if not rest:
                    return route, "/"
                if rest[0] == "/":
                    return route, rest
        return None

    def resolve(self, raw_path: str, query: str = "") -> tuple[_CompiledRoute, str, str] | str:
        """Where a request for ``raw_path`` (as sent, percent-encoded) goes:
        its route, the request-target sent upstream and the path recorded
        (decoded, below the prefix); or, when no route takes it, its decoded,
        normalised path.

        Raises :class:`TargetRefused` for a target that is not forwarded.
        """
        raw = normalise_path(raw_path)
        encoded = "%" in raw
        path = unquote(raw) if encoded else raw
        match = self._match(path)
        if match is None:
            return path
        route, rest = match
        # No encoded slash is left, so the decoded path has the segments of
        # the encoded one: the part forwarded is cut after as many segments.
        raw_rest = (_after_segments(raw, route.depth) or "/") if encoded else rest
        return route, route.target(raw_rest, query), rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI lifespan. Requests come through :meth:`handle`, from the
        gateway's own server (:class:`~eventtrail.gateway.GatewayServer`)."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        raise RuntimeError("the gateway answers requests through its own server (GatewayServer), not ASGI")

    def handle(self, exchange: Exchange) -> None:
        if self._metrics_path and exchange.path == self._metrics_path:
            exchange.respond(200, self._render_metrics(), [(b"content-type", CONTENT_TYPE.encode())])
            return
        query = exchange.query.decode("latin-1")
        try:
            resolved = self.resolve(exchange.raw_path.decode("latin-1"), query)
        except TargetRefused as refused:
            self.rejected += 1
            request_id = request_id_from_headers(exchange.headers)
            _answer(exchange, 400, {"error": str(refused), "requestId": request_id}, request_id)
            return
        if isinstance(resolved, str):
            self.metrics.unrouted += 1
            request_id = request_id_from_headers(exchange.headers)
            _answer(exchange, 404, {"error": f"no route for {resolved}", "requestId": request_id}, request_id)
            return
        if self._pool is None:
            self._pool = UpstreamPool()
        _Call(self, self._pool, exchange, *resolved, query).start()

    def _render_metrics(self) -> bytes:
        return (
            self.metrics.render(self.publisher)
            + (
                "# HELP eventtrail_gateway_rejected_requests_total Requests refused for their target (400).\n"
                "# TYPE eventtrail_gateway_rejected_requests_total counter\n"
                f"eventtrail_gateway_rejected_requests_total {self.rejected}\n"
            ).encode()
        )


class _Call:
    """One proxied call, moved on by the callbacks of its two sides: the
    client's exchange (the request body came, writing may go on) and the
    upstream connection (the response's head, body, end, or failure). A
    task is made only to open a connection or to stream a request body."""

    __slots__ = (
        "app",
        "body",
        "bytes_in",
        "bytes_out",
        "call",
        "chunked",
        "connection",
        "done",
        "exchange",
        "head",
        "pool",
        "query",
        "request_id",
        "responding",
        "response",
        "rest",
        "reused",
        "route",
        "started",
        "streamed",
        "waiting_body",
    )

    def __init__(
        self,
        app: GatewayApp,
        pool: UpstreamPool,
        exchange: Exchange,
        route: _CompiledRoute,
        target: str,
        rest: str,
        query: str,
    ) -> None:
        self.app = app
        self.pool = pool
        self.exchange = exchange
        self.route = route
        self.rest = rest
        self.query = query
        self.head, self.request_id, content_length, self.chunked = _request_head(exchange, target, route)
        if self.chunked:
            # The parser refuses a request with both; if one ever came, chunked wins (RFC 9112 6.3).
            content_length = None
        self.streamed = self.chunked or (content_length is not None and content_length > _SMALL_BODY)
        if self.streamed:
            self.head += (
                b"transfer-encoding: chunked\r\n\r\n"
                if content_length is None
                else b"content-length: %d\r\n\r\n" % content_length
            )
        self.waiting_body = bool(content_length) and not self.streamed
        if not self.streamed and not self.waiting_body:
            self.head += (
                b"content-length: 0\r\n\r\n"
                if content_length is not None or exchange.method in _BODY_METHODS
                else b"\r\n"
            )
        self.body = b""
        self.bytes_in = 0
        self.bytes_out = 0
        self.call = 0
        self.started = 0.0
        self.response: UpstreamResponse | None = None
        self.connection: Connection | None = None
        self.responding = False
        self.reused = False
        self.done = False

    # -- the request ----------------------------------------------------------

    def start(self) -> None:
        exchange = self.exchange
        recorder = self.app.recorder
        if recorder is not None:
            self.call = recorder.request(
                self.request_id, self.route.service, exchange.method, self.rest, self.query, exchange.headers
            )
        if self.streamed:
            # The body goes as it comes, read by the task that sends it.
            self.started = time.perf_counter()
            self._open(self._streamed_body())
            return
        exchange.listener = self
        if self.waiting_body:
            exchange.want_body()
            self._body_came()
        else:
            self._send()

    def _body_came(self) -> None:
        exchange = self.exchange
        if exchange.disconnected:
            self._client_gone()
            return
        self.body += exchange.take_body()
        if exchange.more_body:
            return  # told again when more comes
        self.waiting_body = False
        self.bytes_in = len(self.body)
        self.head += b"content-length: %d\r\n\r\n" % self.bytes_in
        self._send()

    def _send(self) -> None:
        self.started = time.perf_counter()
        route = self.route
        origin = route.origin(self.pool)
        head_only = self.exchange.head_only
        try:
            response = self.pool.send(origin, self.head + self.body, head_only=head_only)
        except (OSError, UpstreamProtocolError) as error:
            self._failed(error)
            return
        if response is None:
            self._open(self.body or None)
            return
        self.reused = True
        self._attach(response)
        response.connection.expect(route.read_timeout)

    def _open(self, body: bytes | AsyncIterator[bytes] | None) -> None:
        """Send the request the slow way: on a new connection, or with a
        body streamed as it comes, or again after a pooled connection
        turned out closed."""
        task = asyncio.get_running_loop().create_task(self._request(body))
        # The loop holds tasks weakly: the app holds those in flight.
        tasks = self.app.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _request(self, body: bytes | AsyncIterator[bytes] | None) -> None:
        route = self.route
        try:
            response = await self.pool.request(
                route.origin(self.pool),
                self.head,
                body,
                head_only=self.exchange.head_only,
                chunked=self.chunked,
                connect_timeout=route.connect_timeout,
                read_timeout=route.read_timeout,
            )
        except ClientDisconnected:
            self._client_gone()
            return
        except (TimeoutError, OSError, UpstreamProtocolError) as error:
            self._failed(error)
            return
        except Exception as error:  # noqa: BLE001 - logged, answered 500: the gateway goes on
            self._crash(error)
            return
        if self.done:
            response.release()
            return
        self.reused = False
        self._attach(response)
        self.upstream_changed()

    async def _streamed_body(self) -> AsyncIterator[bytes]:
        more = True
        while more:
            message = await self.exchange.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if chunk:
                self.bytes_in += len(chunk)
                yield chunk

    # -- the response ---------------------------------------------------------

    def _attach(self, response: UpstreamResponse) -> None:
        self.response = response
        self.connection = response.connection
        self.connection.listener = self
        self.exchange.listener = self

    def exchange_changed(self) -> None:
        try:
            if self.done:
                return
            if self.waiting_body:
                self._body_came()
            elif self.responding:
                self._relay()  # writing may go on
        except Exception as error:  # noqa: BLE001 - logged, answered 500: the gateway goes on
            self._crash(error)

    def upstream_changed(self) -> None:
        try:
            if not self.done:
                self._relay()
        except Exception as error:  # noqa: BLE001 - logged, answered 500: the gateway goes on
            self._crash(error)

    def _relay(self) -> None:
        response = self.response
        connection = self.connection
        if response is None or connection is None:
            return
        read_timeout = self.route.read_timeout
        exchange = self.exchange
        if not self.responding:
            if not response.head_done:
                error = connection.error
                if error is None:
                    connection.expect(read_timeout)
                elif self.reused and isinstance(error, UpstreamClosed) and not error.response_began:
                    # A pooled connection the upstream had closed: the request
                    # never reached it, and goes again (its body is bytes).
                    response.release()
                    self.response = None
                    self._open(self.body or None)
                else:
                    self._failed(error)
                return
            headers = _downstream_headers(response.raw_headers)
            headers.append((b"x-request-id", self.request_id.encode("latin-1")))
            chunk = response.take()
            try:
                # The head leaves with what came of the body (perhaps all of it).
                exchange.answer(response.status, headers, chunk, not response.complete)
            except RuntimeError as refused:
                # The server would not send this head (a field it refuses):
                # the call failed, and is recorded and answered as such.
                self._failed(
                    UpstreamProtocolError(f"the upstream's response head cannot be passed on: {refused}")
                )
                return
            self.responding = True
            self.bytes_out += len(chunk)
            if response.complete:
                self._finish()
                return
        while not exchange.writing_paused:
            chunk = response.take()
            if chunk:
                self.bytes_out += len(chunk)
                exchange.write(chunk, not response.complete)
                if response.complete:
                    self._finish()
                    return
            elif response.complete:
                exchange.write(b"", False)
                self._finish()
                return
            else:
                break
        if connection.error is not None:
            self._failed(connection.error)
        elif not exchange.writing_paused:
            connection.expect(read_timeout)

    # -- the end --------------------------------------------------------------

    def _finish(self) -> None:
        self.done = True
        self.exchange.listener = None
        response = self.response
        assert response is not None
        response.release()
        service = self.route.service
        self.app.metrics.count(service, _STATUS_CLASS.get(response.status // 100, "other"))
        recorder = self.app.recorder
        if recorder is not None:
            recorder.response(
                self.request_id,
                self.call,
                service,
                status=response.status,
                latency_ms=(time.perf_counter() - self.started) * 1000,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                headers=response.raw_headers,
            )

    def _let_go(self) -> None:
        self.done = True
        self.exchange.listener = None
        if self.response is not None:
            # Not read whole: the connection is closed, not kept.
            self.response.release()
            self.response = None

    def _end(self, outcome: str, kind: str, detail: str) -> None:
        """The call ended without a whole answer: counted as ``outcome``,
        recorded as an error of ``kind``."""
        self._let_go()
        service = self.route.service
        self.app.metrics.count(service, outcome)
        recorder = self.app.recorder
        if recorder is not None:
            elapsed = (time.perf_counter() - self.started) * 1000 if self.started else 0.0
            recorder.error(self.request_id, self.call, service, kind=kind, elapsed_ms=elapsed, detail=detail)

    def _client_gone(self) -> None:
        if not self.done:
            self._end("disconnected", DISCONNECTED, "client disconnected")

    def _failed(self, error: BaseException) -> None:
        if self.done:
            return
        kind = error_kind(error)
        self._end(kind, kind, _detail(error))
        service = self.route.service
        exchange = self.exchange
        if self.responding:
            # Too late for a 502: the status went out. Cut the connection so
            # the client sees a truncated response, not a complete one.
            exchange.abort()
            return
        answer = {"error": _ERROR_MESSAGE[kind], "service": service, "requestId": self.request_id}
        _answer(exchange, _ERROR_STATUS.get(kind, 502), answer, self.request_id)

    def _crash(self, error: BaseException) -> None:
        self._let_go()
        self.exchange.fail(error)


_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def _detail(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:500]


def _request_head(
    exchange: Exchange, target: str, route: _CompiledRoute
) -> tuple[bytes, str, int | None, bool]:
    """The request line and headers to send upstream, but for the body's
    framing header and the blank line; the request id, the declared body
    length and whether the body is chunked."""
    given_id = traceparent = host = None
    forwarded_for: list[bytes] = []
    content_length: int | None = None
    chunked = False
    connection_tokens: set[bytes] | None = None
    parts = [
        exchange.method.encode("ascii"),
        b" ",
        target.encode("latin-1"),
        b" HTTP/1.1\r\n",
        route.host_line,
    ]
    first = len(parts)
    for name, value in exchange.headers:
        if name not in _READ_BY_GATEWAY:
            parts += (name, b": ", value, b"\r\n")
        elif name == b"traceparent":
            traceparent = value.decode("latin-1")
            parts += (name, b": ", value, b"\r\n")
        elif name == b"x-request-id":
            given_id = value.decode("latin-1")
        elif name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            forwarded_for.append(value)
        elif name == b"connection":
            connection_tokens = (connection_tokens or set()) | {
                token.strip().lower() for token in value.split(b",")
            }
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                content_length = None
    if connection_tokens:
        # Fields the client's Connection header names are for this hop only.
        kept = parts[first:]
        del parts[first:]
        for index in range(0, len(kept), 4):
            if kept[index] not in connection_tokens:
                parts += kept[index : index + 4]
    request_id = request_id_from(given_id, traceparent)
    parts += (b"x-request-id: ", request_id.encode("latin-1"), b"\r\n")
    client = exchange.client
    if client:
        forwarded_for.append(client[0].encode("latin-1"))
    if forwarded_for:
        parts += (b"x-forwarded-for: ", b", ".join(forwarded_for), b"\r\n")
    parts += (b"x-forwarded-proto: ", exchange.scheme.encode("latin-1"), b"\r\n")
    if host is not None:
        parts += (b"x-forwarded-host: ", host, b"\r\n")
    return b"".join(parts), request_id, content_length, chunked


def _downstream_headers(raw_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop ones (and those its
    Connection header names) and its own request id."""
    kept: list[tuple[bytes, bytes]] = []
    connection_tokens: set[bytes] | None = None
    for name, value in raw_headers:
        name = name.lower()
        if name not in _NOT_PASSED_DOWN:
            kept.append((name, value))
        elif name == b"connection":
            connection_tokens = (connection_tokens or set()) | {
                token.strip().lower() for token in value.split(b",")
            }
    if connection_tokens:
        kept = [(name, value) for name, value in kept if name not in connection_tokens]
    return kept


def _answer(exchange: Exchange, status: int, answer: dict[str, str], request_id: str) -> None:
    exchange.respond(
        status,
        _json.encode(answer),
        [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode("latin-1"))],
    )


def build_app(config: GatewayConfig, publisher: Publisher | None = None) -> GatewayApp:
    """The gateway's ASGI app for ``config``, recording through ``publisher``."""
    return GatewayApp(config, publisher)
