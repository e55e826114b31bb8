"""Request smuggling against the gateway's own HTTP server: requests whose
framing two parsers could read differently (Content-Length against
Transfer-Encoding, duplicated or disguised framing headers, bare line feeds,
a body that looks like a request). The gateway must refuse them or read them
one way only; and since it frames what it forwards itself, a request hidden
in another never reaches the upstream unless the client got its answer as a
request of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventtrail.gateway import GatewayServer, build_app, parse_gateway_config
from tests.gateway.conftest import raw_exchange
from tests.gateway.upstreams import echo_app

# What a desync would make the gateway forward as a request of its own.
SMUGGLED = b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
N = len(SMUGGLED)

# The paths the upstream was asked for, in order.
received: list[str] = []


async def counted_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The echo upstream, noting each request's path as it arrives."""
    if scope["type"] == "http":
        received.append(scope["path"])
    await echo_app(scope, receive, send)


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayServer]:
    with GatewayServer(counted_echo) as upstream:
        route = {"prefix": "/echo", "service": "Echo", "upstream": upstream.url}
        config = parse_gateway_config({"routes": [route]})
        with GatewayServer(build_app(config)) as running:
            yield running


def answers(raw: bytes) -> list[tuple[int, bytes]]:
    """The (status, body) of each response in ``raw`` (Content-Length framed)."""
    found = []
    while raw.startswith(b"HTTP/1.1 "):
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        found.append((status, rest[:length]))
        raw = rest[length:]
    assert raw == b"", f"bytes after the last response: {raw[:80]!r}"
    return found


def exchange(gateway: GatewayServer, payload: bytes) -> list[tuple[int, bytes]]:
    """The client's answers to ``payload``, checked against what reached the
    upstream meanwhile: the smuggled request never, unless as a request of
    its own whose answer the client got. (A request whose body turns out
    malformed may reach the upstream cut short, its head sent before the
    error came: that is the request the client sent, answered 400.)"""
    received.clear()
    got = answers(raw_exchange(gateway.port, payload, timeout=2))
    time.sleep(0.2)  # an upstream request cut short ends once the gateway closes it
    answered = [msgspec.json.decode(body)["path"] for status, body in got if status in (200, 201)]
    assert received.count("/smuggled") == answered.count("/smuggled")
    assert set(received) <= {"/a", "/smuggled"}
    assert set(answered) <= set(received)
    return got


# Each outer request asks to close (the tests also send them without).
POST = b"POST /echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
PAYLOADS = {
    "CL.TE": POST
    + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n%b" % (N + 5, SMUGGLED),
    "TE.CL": POST
    + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (N, SMUGGLED),
    "two lengths": POST + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n%b" % (N, SMUGGLED),
    "length with a sign": POST + b"Content-Length: +%d\r\n\r\n%b" % (N, SMUGGLED),
    "space before the colon": POST
    + b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "chunked not last": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "folded coding": POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "bad chunk size": POST + b"Transfer-Encoding: chunked\r\n\r\n0x%x\r\n%b\r\n0\r\n\r\n" % (N, SMUGGLED),
    "bare line feeds": b"POST /echo/a HTTP/1.1\nHost: x\nConnection: close\nContent-Length: %d\n\n%b"
    % (N, SMUGGLED),
    "a request as the body": POST + b"Content-Length: %d\r\n\r\n%b" % (N, SMUGGLED),
    "a GET with a body": POST.replace(b"POST", b"GET") + b"Content-Length: %d\r\n\r\n%b" % (N, SMUGGLED),
}


@pytest.mark.parametrize("close", [True, False], ids=["close", "keep-alive"])
@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_ambiguous_framing_is_refused_and_plain_framing_read_as_written(
    gateway: GatewayServer, name: str, close: bool
) -> None:
    # Kept alive, the connection is what a proxy in front would reuse for
    # its next client: a framing read otherwise than it would must be refused.
    payload = PAYLOADS[name]
    if not close:
        payload = payload.replace(b"Connection: close\r\n", b"").replace(b"Connection: close\n", b"")
    got = exchange(gateway, payload)
    statuses = [status for status, _ in got]
    if name.startswith("a "):
        # Framed plainly by its length: one request whose body is the
        # other, forwarded whole, as a body.
        assert statuses == [201 if name == "a request as the body" else 200]
        assert msgspec.json.decode(got[0][1])["bodyBytes"] == N
    else:
        assert statuses == [400]


_FRAMING = st.lists(
    st.sampled_from(
        [
            b"Content-Length: %d" % N,
            b"Content-Length: 0",
            b"Content-Length:%d" % N,
            b"Content-Length: 0%d" % N,
            b"Content-Length: %d, %d" % (N, N),
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: Chunked",
            b"Transfer-Encoding: identity",
            b"Transfer-Encoding: gzip, chunked",
            b"Transfer-Encoding:\tchunked",
            b"Transfer-Encoding: chunked ",
            b"X: y\r\nTransfer-Encoding: chunked",
        ]
    ),
    max_size=3,
)
_BODIES = st.sampled_from([SMUGGLED, b"29\r\n" + SMUGGLED + b"\r\n0\r\n\r\n", b"0\r\n\r\n" + SMUGGLED, b""])


@given(framing=_FRAMING, body=_BODIES)
@settings(max_examples=40, deadline=None)
def test_any_mix_of_framing_headers_reaches_the_upstream_only_as_answered(
    gateway: GatewayServer, framing: list[bytes], body: bytes
) -> None:
    head = b"POST /echo/a HTTP/1.1\r\nHost: x\r\n" + b"".join(line + b"\r\n" for line in framing)
    got = exchange(gateway, head + b"Connection: close\r\n\r\n" + body)
    assert all(status in (200, 201, 400) for status, _ in got)
