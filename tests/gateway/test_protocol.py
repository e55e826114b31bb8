"""The gateway's HTTP/1.1 server side (``gateway.protocol``), spoken to over
real sockets: framing both ways, pipelining, keep-alive, applications that
fail, response heads that would split, and bytes that are not HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventtrail.gateway.serve import GatewayServer
from tests.gateway.conftest import raw_exchange

Scope = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """Answers the method, path, body size and a digest of the body; but
    ``/stream``: three pieces without a length; ``/fail-before`` and
    ``/fail-after``: raise before and after the response started;
    ``/header``: adds the response header ``x-value`` of
    ``header_values[-1]``; ``/wait-disconnect``: returns once the client
    went away (what it received is kept in ``seen``)."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/wait-disconnect":
        first = await receive()
        seen.append(first["type"])
        while (message := await receive())["type"] != "http.disconnect":
            seen.append(message["type"])
        seen.append("http.disconnect")
        return
    digest = hashlib.sha256()
    size = 0
    more = True
    while more:
        message = await receive()
        body = message.get("body", b"")
        digest.update(body)
        size += len(body)
        more = message.get("more_body", False)
    if path == "/fail-before":
        raise RuntimeError("failed before answering")
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/fail-after":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("failed while answering")
    headers = [(b"content-type", b"text/plain")]
    if path == "/header":
        headers.append((b"x-value", header_values[-1]))
    if path == "/negative-length":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"-1")]})
        return
    answer = f"{scope['method']} {path} {size} {digest.hexdigest()[:16]}".encode()
    headers.append((b"content-length", str(len(answer)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


# The header value /header answers with (the last one), set by the test.
header_values: list[bytes] = []
# What /wait-disconnect received.
seen: list[str] = []


@pytest.fixture(scope="module")
def server() -> Iterator[GatewayServer]:
    with GatewayServer(app, timeout_keep_alive=1) as running:
        yield running


def exchange(server: GatewayServer, data: bytes) -> bytes:
    return raw_exchange(server.port, data)


def test_pipelined_requests_are_answered_in_order(server: GatewayServer) -> None:
    requests = b"".join(
        b"GET /echo/%d HTTP/1.1\r\nHost: t\r\n%b\r\n" % (n, b"Connection: close\r\n" if n == 4 else b"")
        for n in range(5)
    )
    answer = exchange(server, requests)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 5
    positions = [answer.index(b"GET /echo/%d " % n) for n in range(5)]
    assert positions == sorted(positions)
    last = answer[answer.rindex(b"HTTP/1.1 200 OK\r\n") :]
    assert b"connection: close\r\n" in last and last.endswith(b"GET /echo/4 0 e3b0c44298fc1c14")


def test_a_burst_of_pipelined_requests_with_bodies_is_answered_whole_and_in_order(
    server: GatewayServer,
) -> None:
    # Far more than is parsed ahead at a time: the rest waits, read but not
    # parsed, and is parsed as answers make room.
    count = 600
    requests = b"".join(
        b"POST /echo/%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%b\r\n%b"
        % (n, n, b"Connection: close\r\n" if n == count - 1 else b"", b"x" * n)
        for n in range(count)
    )
    answer = exchange(server, requests)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == count
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in answer.split(b"HTTP/1.1 200 OK\r\n")[1:]]
    assert [body.split(b" ")[1:3] for body in bodies] == [[b"/echo/%d" % n, b"%d" % n] for n in range(count)]


def test_a_chunked_request_body_arrives_whole(server: GatewayServer) -> None:
    pieces = [b"a" * 10, b"b" * 70_000, b"c"]
    body = b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    answer = exchange(
        server,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body,
    )
    whole = b"".join(pieces)
    assert answer.endswith(
        b"POST /echo %d %b" % (len(whole), hashlib.sha256(whole).hexdigest()[:16].encode())
    )


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_a_body_of_unknown_length_is_framed_as_the_clients_version_reads_it(
    server: GatewayServer, version: bytes
) -> None:
    answer = exchange(server, b"GET /stream HTTP/%b\r\nHost: t\r\nConnection: close\r\n\r\n" % version)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in head + b"\r\n" and b"content-length" not in head
    if version == b"1.0":
        # No chunked coding for an HTTP/1.0 client: the body ends with the connection.
        assert b"transfer-encoding" not in head
        assert body == b"one,two,three"
    else:
        assert b"transfer-encoding: chunked" in head
        assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"


def test_http_1_0_gets_one_answer_and_the_connection_closes(server: GatewayServer) -> None:
    began = time.monotonic()
    answer = exchange(server, b"GET /echo HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in answer
    assert time.monotonic() - began < 1.0


def test_expect_100_continue_is_answered_before_the_body(server: GatewayServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        assert b"POST /echo 5 " in sock.recv(1000)


def test_a_response_without_length_is_chunked_and_head_has_no_body(server: GatewayServer) -> None:
    answer = exchange(server, b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"
    answer = exchange(server, b"HEAD /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\n")
    assert b"content-length: " in answer


def test_a_negative_content_length_is_never_sent(server: GatewayServer) -> None:
    answer = exchange(server, b"GET /negative-length HTTP/1.1\r\nHost: t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"-1" not in answer


def test_an_application_that_fails_gets_500_or_a_cut_connection(server: GatewayServer) -> None:
    answer = exchange(server, b"GET /fail-before HTTP/1.1\r\nHost: t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert answer.endswith(b"Internal Server Error")
    answer = exchange(server, b"GET /fail-after HTTP/1.1\r\nHost: t\r\n\r\n")
    # The status went out: the client sees a response shorter than its length.
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\npartial")
    assert httpx.get(f"{server.url}/echo/after").status_code == 200


@given(value=st.binary(max_size=40))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_response_header_is_sent_as_one_field_or_refused(server: GatewayServer, value: bytes) -> None:
    header_values.append(value)
    answer = exchange(server, b"GET /header HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head = answer.partition(b"\r\n\r\n")[0]
    if answer.startswith(b"HTTP/1.1 500 "):
        assert b"x-value" not in answer
        assert any((byte < 0x20 and byte != 0x09) or byte == 0x7F for byte in value)
    else:
        lines = head.split(b"\r\n")
        assert b"x-value: " + value in lines
        assert len(lines) == 5  # status, content-type, x-value, content-length, connection


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(server: GatewayServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(1000).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        assert sock.recv(1000) == b""
        assert 0.8 <= time.monotonic() - answered < 3.0


def test_a_client_that_goes_away_mid_body_is_told_so(server: GatewayServer) -> None:
    seen.clear()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /wait-disconnect HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while "http.disconnect" not in seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen[0] == "http.request"
    assert seen[-1] == "http.disconnect"


REQUEST = b"GET /echo/x?a=1 HTTP/1.1\r\nHost: t\r\nX-A: b\r\nContent-Length: 3\r\n\r\nabc"


@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=300),
        st.tuples(st.integers(0, len(REQUEST) - 1), st.binary(min_size=1, max_size=8)).map(
            lambda cut: REQUEST[: cut[0]] + cut[1] + REQUEST[cut[0] + len(cut[1]) :]
        ),
    )
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_bytes_get_http_answers_or_a_close_and_the_server_stays_up(
    server: GatewayServer, data: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(3)
        answer = b""
        with suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
    assert not answer.startswith(b"HTTP/1.1 500 ")


def test_the_server_still_answers_after_the_fuzzing(server: GatewayServer) -> None:
    with httpx.Client() as client:
        for n in range(20):
            assert client.get(f"{server.url}/echo/{n}").text.startswith(f"GET /echo/{n} 0 ")


def test_an_upgrade_is_answered_as_a_plain_request_and_the_connection_closes(
    server: GatewayServer,
) -> None:
    answer = exchange(
        server,
        b"GET /echo/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        b"\x81\x85not http",
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in answer
    assert answer.endswith(b"GET /echo/ws 0 e3b0c44298fc1c14")


def test_garbage_is_answered_400_and_closed(server: GatewayServer) -> None:
    answer = exchange(server, b"\x00\x01 not http at all\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in answer


def test_a_server_stops_with_a_request_in_flight_and_answers_it() -> None:
    async def slow(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server = GatewayServer(slow).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)
        server.stop()
        answer = b""
        with suppress(OSError):
            while chunk := sock.recv(1000):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close" in answer and answer.endswith(b"ok")
