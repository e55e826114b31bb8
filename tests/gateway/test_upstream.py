"""The gateway's upstream client against scripted HTTP servers on loopback:
framing, keep-alive reuse, a stale pooled connection, timeouts, bad answers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventtrail.gateway.upstream import UpstreamClosed, UpstreamPool, UpstreamProtocolError
from tests.gateway.upstreams import Scripted, read_request, scripted

T = TypeVar("T")


def answering(*responses: bytes, then_close: bool = False) -> Callable[[socket.socket, Scripted], None]:
    """A handler answering requests with ``responses`` in turn, across
    connections (the last one again and again), each sent as is."""

    def handle(sock: socket.socket, state: Scripted) -> None:
        while request := read_request(sock):
            state.requests.append(request)
            sock.sendall(responses[min(len(state.requests) - 1, len(responses) - 1)])
            if then_close:
                return

    return handle


def head(path: str = "/x", method: str = "GET", extra: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nhost: upstream\r\n".encode() + extra + b"\r\n"


async def exchange(
    pool: UpstreamPool,
    port: int,
    request_head: bytes,
    body: bytes | AsyncIterator[bytes] | None = None,
    *,
    method: str = "GET",
    chunked: bool = False,
    read_timeout: float = 5.0,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    response = await pool.request(
        pool.origin("http", "127.0.0.1", port),
        request_head,
        body,
        head_only=method == "HEAD",
        chunked=chunked,
        connect_timeout=5.0,
        read_timeout=read_timeout,
    )
    try:
        received = b""
        while chunk := await response.read(read_timeout):
            received += chunk
        return response.status, list(response.raw_headers), received
    finally:
        response.release()


def run(exchanges: Callable[[UpstreamPool], Awaitable[T]]) -> T:
    """``exchanges`` run on a new pool, in a new event loop."""

    async def main() -> T:
        pool = UpstreamPool()
        try:
            return await exchanges(pool)
        finally:
            pool.close()

    return asyncio.run(main())


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello"


def test_sequential_requests_reuse_one_connection() -> None:
    with scripted(answering(OK)) as server:

        async def three(pool: UpstreamPool) -> list[tuple[int, bytes]]:
            return [
                (status, body)
                for status, _, body in [await exchange(pool, server.port, head(f"/{n}")) for n in range(3)]
            ]

        assert run(three) == [(200, b"hello")] * 3
    assert len(server.connections) == 1
    assert [request.split(b" ")[1] for request in server.requests] == [b"/0", b"/1", b"/2"]


def test_headers_come_raw_and_in_order() -> None:
    response = b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 0\r\n\r\n"
    with scripted(answering(response)) as server:
        status, headers, body = run(lambda pool: exchange(pool, server.port, head()))
    assert (status, body) == (201, b"")
    assert headers == [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"Content-Length", b"0")]


@pytest.mark.parametrize(
    ("method", "response", "expected_body", "reusable"),
    [
        (
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"abcde",
            True,
        ),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", b"", True),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"", True),
        ("GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", True),
        ("GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
        ("GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
    ],
)
def test_each_framing_ends_the_body_where_it_says(
    method: str, response: bytes, expected_body: bytes, reusable: bool
) -> None:
    with scripted(answering(response, OK)) as server:

        async def two(pool: UpstreamPool) -> tuple[bytes, bytes]:
            _, _, first = await exchange(pool, server.port, head(method=method), method=method)
            _, _, second = await exchange(pool, server.port, head())
            return first, second

        assert run(two) == (expected_body, b"hello")
    assert len(server.connections) == (1 if reusable else 2)


def test_a_body_delimited_by_the_end_of_the_connection() -> None:
    def close_after_body(sock: socket.socket, state: Scripted) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\n\r\nuntil ")
        sock.sendall(b"the end")
        sock.shutdown(socket.SHUT_WR)

    with scripted(close_after_body) as server:
        status, _, body = run(lambda pool: exchange(pool, server.port, head()))
    assert (status, body) == (200, b"until the end")


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=3000),
    chunk_sizes=st.lists(st.integers(1, 700), min_size=1, max_size=8),
    cuts=st.lists(st.integers(1, 400), max_size=6),
    chunked=st.booleans(),
)
def test_any_framing_and_any_tcp_split_give_back_the_exact_body(
    body: bytes, chunk_sizes: list[int], cuts: list[int], chunked: bool
) -> None:
    """Invariant: whatever chunk sizes the upstream picks and wherever TCP
    splits its bytes, the body read is the body sent, and the connection is
    reused for the next request."""
    if chunked:
        framed, position, turn = b"", 0, 0
        while position < len(body):
            size = chunk_sizes[turn % len(chunk_sizes)]
            piece = body[position : position + size]
            framed += b"%x\r\n%b\r\n" % (len(piece), piece)
            position, turn = position + size, turn + 1
        response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"
    else:
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    def split_sender(sock: socket.socket, state: Scripted) -> None:
        while read_request(sock):
            position = 0
            for cut in cuts:
                sock.sendall(response[position : position + cut])
                position += cut
            sock.sendall(response[position:])

    with scripted(split_sender) as server:

        async def twice(pool: UpstreamPool) -> list[bytes]:
            return [(await exchange(pool, server.port, head()))[2] for _ in range(2)]

        assert run(twice) == [body, body]
    assert len(server.connections) == 1


def test_a_pooled_connection_the_upstream_closed_is_replaced_once() -> None:
    # The upstream closes each connection after one answer without saying so:
    # the next request finds its pooled connection dead before any answer.
    with scripted(answering(OK, then_close=True)) as server:

        async def two(pool: UpstreamPool) -> list[bytes]:
            first = (await exchange(pool, server.port, head()))[2]
            await asyncio.sleep(0.05)
            second = (await exchange(pool, server.port, head(), b"payload"))[2]
            return [first, second]

        assert run(two) == [b"hello", b"hello"]
    assert len(server.connections) == 2


def test_a_streamed_body_is_never_sent_twice() -> None:
    received: list[bytes] = []

    def one_then_silent_close(sock: socket.socket, state: Scripted) -> None:
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += sock.recv(65536)
        received.append(data)
        sock.sendall(OK)
        # The second request on this connection: read, and closed unanswered.
        received.append(sock.recv(65536))

    with scripted(one_then_silent_close) as server:

        async def stream() -> AsyncIterator[bytes]:
            yield b"part"

        async def go(pool: UpstreamPool) -> str:
            await exchange(
                pool,
                server.port,
                head(method="POST", extra=b"transfer-encoding: chunked\r\n"),
                stream(),
                method="POST",
                chunked=True,
            )
            # The pooled connection is alive as far as the pool knows, but the
            # upstream drops this request: not replayed, since a stream is spent.
            with pytest.raises(UpstreamClosed):
                await exchange(
                    pool,
                    server.port,
                    head(method="POST", extra=b"transfer-encoding: chunked\r\n"),
                    stream(),
                    method="POST",
                    chunked=True,
                )
            return "raised"

        assert run(go) == "raised"
    assert received[0].endswith(b"\r\n\r\n4\r\npart\r\n0\r\n\r\n")
    assert received[1].startswith(b"POST /x HTTP/1.1\r\n")
    # Tried on the pooled connection only: no new connection took it again.
    assert len(server.connections) == 1


def test_silence_past_the_read_timeout_is_a_timeout() -> None:
    def silent(sock: socket.socket, state: Scripted) -> None:
        read_request(sock)
        sock.recv(1)  # until the client gives up

    with scripted(silent) as server:

        async def go(pool: UpstreamPool) -> None:
            await exchange(pool, server.port, head(), read_timeout=0.2)

        with pytest.raises(TimeoutError):
            run(go)


def test_the_read_timeout_counts_from_the_last_piece_not_from_the_request() -> None:
    """A body that keeps coming, each piece well within the timeout, is read
    to its end however long it takes in all; then a silence past the timeout,
    on the same connection, is a timeout, and one that came soon enough not."""
    pieces = 8

    def trickling(sock: socket.socket, state: Scripted) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(pieces):
            time.sleep(0.1)
            sock.sendall(b"1\r\nx\r\n")
        sock.sendall(b"0\r\n\r\n")
        read_request(sock)
        time.sleep(0.1)
        sock.sendall(OK)
        read_request(sock)
        sock.recv(1)  # silent until the client gives up

    with scripted(trickling) as server:

        async def go(pool: UpstreamPool) -> tuple[bytes, bytes, float]:
            _, _, trickled = await exchange(pool, server.port, head(), read_timeout=0.3)
            _, _, prompt = await exchange(pool, server.port, head(), read_timeout=0.3)
            began = time.monotonic()
            with pytest.raises(TimeoutError):
                await exchange(pool, server.port, head(), read_timeout=0.3)
            return trickled, prompt, time.monotonic() - began

        trickled, prompt, waited = run(go)
    assert trickled == b"x" * pieces  # 0.8 s in all, with a 0.3 s timeout
    assert prompt == b"hello"
    assert 0.25 <= waited < 1.5
    assert len(server.connections) == 1


def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    with scripted(answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as server, pytest.raises(UpstreamProtocolError):
        run(lambda pool: exchange(pool, server.port, head()))


def test_a_refused_connection_raises_connection_refused() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = int(unused.getsockname()[1])
    with pytest.raises(ConnectionRefusedError):
        run(lambda pool: exchange(pool, port, head()))


def test_a_response_head_without_end_is_cut_at_the_bound() -> None:
    def endless_headers(sock: socket.socket, state: Scripted) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\n")
        for number in range(10_000):  # 10,000 x 30 bytes: far past the 64 KiB bound
            sock.sendall(b"X-Filler-%05d: %s\r\n" % (number, b"v" * 12))

    with scripted(endless_headers) as server, pytest.raises(UpstreamProtocolError, match="too large"):
        run(lambda pool: exchange(pool, server.port, head()))


def test_a_large_body_sent_with_its_head_is_not_counted_as_head() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, far past the head bound
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with scripted(answering(response)) as server:
        status, _, received = run(lambda pool: exchange(pool, server.port, head()))
    assert (status, received) == (200, body)
