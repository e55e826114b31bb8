"""Hostile request targets: sent byte for byte over a plain socket to a real
gateway whose routes lead to a recording server, with a second server on
another port that no route names. Whatever the target, the unrouted server
receives nothing and the routed one never a path outside the route's base.
"""

from __future__ import annotations

import posixpath
import socket
import string
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from eventtrail.gateway import GatewayServer, build_app, parse_gateway_config
from eventtrail.gateway.proxy import GatewayApp, TargetRefused, normalise_path
from tests.gateway.conftest import read_answer
from tests.gateway.upstreams import RecordingServer, recording_server

# Route prefix -> the upstream's base path on the routed server.
BASES = {"/api/v1": "/api/v1", "/other": "/other-base", "/": "/root"}


@dataclass
class Stage:
    gateway: GatewayServer
    app: GatewayApp
    routed: RecordingServer
    unrouted: RecordingServer


@pytest.fixture(scope="module")
def stage() -> Iterator[Stage]:
    with recording_server() as routed, recording_server() as unrouted:
        config = parse_gateway_config(
            {
                "routes": [
                    {"prefix": prefix, "service": prefix, "upstream": routed.url + base}
                    for prefix, base in BASES.items()
                ]
            }
        )
        app = build_app(config)
        with GatewayServer(app) as gateway:
            yield Stage(gateway, app, routed, unrouted)


def send_raw(port: int, request_line_target: bytes, method: bytes = b"GET") -> bytes:
    """Send one request with this exact target; the whole answer (or b"")."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            method + b" " + request_line_target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        chunks: list[bytes] = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def within_its_base(target: str) -> bool:
    """Whether a path the routed server received stays below one route's
    base, however a server behind it would decode and normalise it."""
    path = target.partition("?")[0]
    lowered = path.lower()
    if (
        not path.startswith("/")
        or "\\" in path
        or any(escape in lowered for escape in ("%2f", "%5c", "%c0", "%c1", "%252e", "%252f", "%255c"))
    ):
        return False
    decoded = unquote(unquote(path))
    if any(segment in (".", "..") for segment in decoded.split("/")):
        return False
    normal = posixpath.normpath(decoded)
    return any(normal == base or normal.startswith(base + "/") for base in BASES.values())


def assert_contained(stage: Stage) -> None:
    assert stage.unrouted.targets == []
    escaped = [target for target in stage.routed.targets if not within_its_base(target)]
    assert escaped == []


def attacks(port: int) -> list[bytes]:
    elsewhere = f"127.0.0.1:{port}".encode()
    return [
        # Encoded prefix with an encoded slash and userinfo: the original SSRF.
        b"/%61pi/v1%2F@" + elsewhere + b"/x",
        b"%2Fapi%2Fv1%2F@" + elsewhere + b"/",
        b"/api/v1%2F@" + elsewhere + b"/x",
        b"/api/v1/%2F@" + elsewhere + b"/x",
        b"/api/v1/%2f%2f" + elsewhere + b"/x",
        b"/api/v1@" + elsewhere + b"/x",
        b"/api/v1%40" + elsewhere + b"/x",
        b"/api/v1/@" + elsewhere,
        b"/@" + elsewhere + b"/x",
        b"/%40" + elsewhere + b"/x",
        # Absolute-form and scheme-relative targets naming the other server.
        b"http://" + elsewhere + b"/x",
        b"http://" + elsewhere + b"/api/v1/x",
        b"http://user:pw@" + elsewhere + b"/api/v1/x",
        b"https://" + elsewhere + b"/api/v1/x",
        b"//" + elsewhere + b"/x",
        b"//" + elsewhere + b"/api/v1/x",
        b"///" + elsewhere + b"/api/v1/x",
        b"/\\" + elsewhere + b"/x",
        b"\\\\" + elsewhere + b"/x",
        b"/api/v1/\\\\" + elsewhere + b"/x",
        b"/api/v1/%5c%5c" + elsewhere + b"/x",
        b"/api/v1/x?@" + elsewhere,
        b"/api/v1/x#@" + elsewhere,
        b"/api/v1/x?next=http://" + elsewhere + b"/",
        elsewhere,
        b"*",
        # Dot segments in every spelling.
        b"/api/v1/../admin",
        b"/api/v1/../../admin",
        b"/api/v1/x/../../../admin",
        b"/api/v1/./../admin",
        b"/api/v1/%2e%2e/admin",
        b"/api/v1/%2E%2E/admin",
        b"/api/v1/%2E./admin",
        b"/api/v1/.%2e/admin",
        b"/api/v1/%2e/../admin",
        b"/api/v1/%252e%252e/admin",
        b"/api/v1/..;/admin",
        b"/api/v1/..;x=1/admin",
        b"/api/v1/.;/../admin",
        b"/api/v1/..%3b/admin",
        b"/api/v1/..%2fadmin",
        b"/api/v1/%2e%2e%2fadmin",
        b"/api/v1/..%5cadmin",
        b"/api/v1/..\\admin",
        b"/api/v1\\..\\admin",
        b"/api/v1/%c0%ae%c0%ae/admin",
        b"/api/v1/..%00/admin",
        b"/other/../api/v1/../admin",
        b"/api//v1/../../admin",
        b"/api/v1//..//..//admin",
        # Control characters in the target.
        b"/api/v1/x\r\nHost: " + elsewhere,
        b"/api/v1/x%0d%0aHost:%20" + elsewhere,
        b"/api/v1/x\x00y",
        b"/api/v1/x%00y",
        b"/api/v1/x\ty",
        b"/api/v1/x%09y",
    ]


def test_no_target_reaches_an_unrouted_host_or_leaves_its_base(stage: Stage) -> None:
    statuses = {}
    for target in attacks(stage.unrouted.port):
        statuses[target] = status_of(send_raw(stage.gateway.port, target))
    for method in (b"CONNECT", b"OPTIONS"):
        target = f"127.0.0.1:{stage.unrouted.port}".encode()
        statuses[method + b" " + target] = status_of(send_raw(stage.gateway.port, target, method))
    assert_contained(stage)
    # Each was answered (refused or routed within a base), none left hanging.
    assert all(status in (200, 400, 404) for status in statuses.values()), statuses
    # Encoded dots and slashes are refused, not normalised into something else.
    for refused in (
        b"/api/v1/%2e%2e/admin",
        b"/api/v1/%c0%ae%c0%ae/admin",
        b"/api/v1/%252e%252e/admin",
        b"/api/v1/..;/admin",
        b"/api/v1/..%2fadmin",
        b"/api/v1/%2F@127.0.0.1:1/x",
    ):
        assert status_of(send_raw(stage.gateway.port, refused)) == 400


def test_plain_dot_segments_are_normalised_before_routing(stage: Stage) -> None:
    before = len(stage.routed.targets)
    assert status_of(send_raw(stage.gateway.port, b"/api/v1/a/./b/../c")) == 200
    assert status_of(send_raw(stage.gateway.port, b"/api/v1/../../other//z/")) == 200
    assert status_of(send_raw(stage.gateway.port, b"http://elsewhere.example/api/v1/abs")) == 200
    assert status_of(send_raw(stage.gateway.port, b"/api/v1/%C3%A9t%C3%A9%20x")) == 200
    assert stage.routed.targets[before:] == [
        "/api/v1/a/c",
        "/other-base/z/",
        "/api/v1/abs",
        "/api/v1/%C3%A9t%C3%A9%20x",
    ]


# -- the URL-building function, for any target ------------------------------

_PIECES = st.sampled_from(
    [
        "/",
        "//",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "%25",
        "%00",
        "%0d%0a",
        ";",
        "@",
        ":",
        "?",
        "#",
        "\\",
        "api",
        "v1",
        "api/v1",
        "other",
        "127.0.0.1:1",
        "http://",
        "%40",
        "%3b",
        "..;",
        "%C3%A9",
        "%",
        "%zz",
        "é",
        " ",
        "\t",
    ]
)
_ESCAPED_BYTES = st.binary(min_size=1, max_size=3).map(lambda data: "".join(f"%{b:02X}" for b in data))
_TARGETS = st.one_of(
    st.lists(_PIECES, max_size=16).map(lambda pieces: "/" + "".join(pieces)),
    st.lists(st.one_of(_PIECES, _ESCAPED_BYTES), max_size=12).map(lambda pieces: "/" + "".join(pieces)),
    st.lists(st.one_of(_PIECES, st.text(max_size=5)), max_size=12).map("".join),
    st.text(max_size=40),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=_TARGETS, query=st.text(string.ascii_letters + "=&;@:/%", max_size=12))
def test_the_upstream_url_is_always_the_routes_host_port_and_base(
    stage: Stage, target: str, query: str
) -> None:
    try:
        resolved = stage.app.resolve(target, query)
    except TargetRefused:
        return
    if isinstance(resolved, str):
        return
    route, target, _recorded = resolved
    upstream = URL(route.route.upstream)
    # What the upstream reads: the route's connection and host line, and the request line's target.
    url = URL(f"{route.scheme}://{route.authority}{target}", encoded=True)
    assert target.startswith("/")
    for seen in (url, URL(str(url), encoded=True)):
        assert (seen.scheme, seen.raw_host, seen.port) == (upstream.scheme, upstream.raw_host, upstream.port)
        assert seen.raw_path.startswith(upstream.raw_path.rstrip("/") + "/")
        assert not {".", ".."} & set(unquote(seen.raw_path).split("/"))
    assert within_its_base(url.raw_path)


@settings(max_examples=500, deadline=None)
@given(target=_TARGETS)
def test_normalised_paths_have_no_dot_segment_and_are_stable(target: str) -> None:
    try:
        normal = normalise_path(target)
    except TargetRefused:
        return
    assert normal.startswith("/")
    assert "//" not in normal
    assert not {".", ".."} & set(unquote(normal).split("/"))
    assert normalise_path(normal) == normal


_WIRE_PIECES = st.sampled_from(
    [
        "/",
        "//",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%5c",
        "%25",
        ";",
        "@",
        ":",
        "api",
        "v1",
        "other",
        "%40",
        "%3b",
        "..;",
        "%C3%A9",
        "x",
        "?",
        "#",
        "%00",
        "\\",
    ]
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.one_of(_WIRE_PIECES, st.just("ELSEWHERE")), max_size=12))
def test_generated_targets_over_the_wire_stay_contained(stage: Stage, pieces: list[str]) -> None:
    elsewhere = f"127.0.0.1:{stage.unrouted.port}"
    target = "/" + "".join(elsewhere if piece == "ELSEWHERE" else piece for piece in pieces)
    status = status_of(send_raw(stage.gateway.port, target.encode()))
    assert status in (200, 400, 404)
    assert_contained(stage)


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ("http://[::1]:9001/base", "http://[::1]:9001/base/q/%C3%A9?x=1"),
        ("https://Svc.Example", "https://svc.example/q/%C3%A9?x=1"),
        ("http://bücher.example:81/x%20y/", "http://xn--bcher-kva.example:81/x%20y/q/%C3%A9?x=1"),
    ],
)
def test_upstream_urls_keep_ipv6_idna_hosts_and_encoded_bases(upstream: str, expected: str) -> None:
    route = {"prefix": "/a", "service": "A", "upstream": upstream}
    app = build_app(parse_gateway_config({"routes": [route]}))
    resolved = app.resolve("/a/q/%C3%A9", "x=1")
    assert not isinstance(resolved, str)
    compiled, target, _ = resolved
    assert f"{compiled.scheme}://{compiled.authority}{target}" == expected


# -- any bytes, through the gateway's own request path ----------------------

_PROXIED = (
    b"POST /api/v1/x?a=1 HTTP/1.1\r\nHost: gw\r\nX-Request-Id: r1\r\n"
    b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=300),
        st.tuples(st.integers(0, len(_PROXIED) - 1), st.binary(min_size=1, max_size=8)).map(
            lambda cut: _PROXIED[: cut[0]] + cut[1] + _PROXIED[cut[0] + len(cut[1]) :]
        ),
    )
)
def test_any_bytes_sent_to_the_gateway_get_an_answer_never_a_500_and_it_goes_on(
    stage: Stage, data: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", stage.gateway.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = read_answer(sock, 3)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
    assert b"HTTP/1.1 500 " not in answer
    assert status_of(send_raw(stage.gateway.port, b"/api/v1/after")) == 200
    assert_contained(stage)
