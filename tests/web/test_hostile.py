"""The API and ``serve`` against hostile input: foreign Host headers (DNS
rebinding), out-of-range times, malformed parameters, unfit tokens, taken
ports. Real servers over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventtrail.web import BackgroundServer, PortUnavailable, bind, build_app, check_token
from eventtrail.web.server import trusted_hosts
from tests.cli import run, spawn
from tests.servers import free_port, wait_for_port
from tests.web.conftest import TOKEN, Backend


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


# -- Host header ---------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["attacker.example", "attacker.example:8765", "localhost.attacker.example", "127.0.0.1.nip.io", "[::2]"],
)
def test_a_loopback_server_refuses_foreign_host_names(client: httpx.Client, host: str) -> None:
    for path in ("/api/requests", "/api/dlq", "/", "/static/app.js"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 400, (host, path)
        assert "Invalid host header" in response.text


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8765", "127.0.0.1", "[::1]:8765"])
def test_a_loopback_server_answers_loopback_names(client: httpx.Client, host: str) -> None:
    assert client.get("/api/dlq", headers={"Host": host}).status_code == 200


def test_trusted_hosts_by_binding() -> None:
    loopback = trusted_hosts("127.0.0.1")
    assert "localhost" in loopback and "127.0.0.1" in loopback and "[::1]" in loopback
    assert "*" not in loopback
    assert "192.168.1.5" in trusted_hosts("192.168.1.5")
    assert "[fe80::1]" in trusted_hosts("fe80::1")
    # Every address: any name (the token is required there), unless names are given.
    assert trusted_hosts("0.0.0.0") == ["*"]
    named = trusted_hosts("0.0.0.0", ["Events.Example.com", "*.corp.example", " "])
    assert "*" not in named and "events.example.com" in named and "*.corp.example" in named


def test_serve_answers_an_allowed_host_only(backend: Backend) -> None:
    port = free_port()
    process = spawn(backend.data_dir, "serve", "--port", str(port), "--allowed-host", "trail.internal")
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/api/dlq"
        assert httpx.get(url, headers={"Host": "trail.internal"}).status_code == 200
        assert httpx.get(url).status_code == 200
        assert httpx.get(url, headers={"Host": "rebound.attacker.example"}).status_code == 400
    finally:
        process.terminate()
        process.wait(10)


# -- parameters ------------------------------------------------------------------

_HOSTILE_TIMES = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "99999999999d",
    "1e309s",
    "\uff12\uff10\uff12\uff10-\uff10\uff15-\uff10\uff11T20:00:00Z",
    "\u0662\u0660\u0662\u0660-05-01T20:00:00Z",
    "2020-05-01T20:00:00\x00Z",
    "-1h",
    "nan",
    "",
    "x" * 10_000,
]


@pytest.mark.parametrize("value", _HOSTILE_TIMES)
def test_hostile_times_are_a_400_or_an_answer_never_a_500(client: httpx.Client, value: str) -> None:
    for path, extra in (
        ("/api/requests", {}),
        ("/api/events", {"type": "MICROSERVICE_REQUEST"}),
        ("/api/health", {}),
    ):
        for name in ("since", "until") if path != "/api/health" else ("until",):
            response = client.get(path, params={name: value, **extra})
            assert response.status_code in (200, 400), (path, name, value, response.text)
            if response.status_code == 400:
                assert response.json()["error"].startswith(f"{name}:")
    for window in (value, "99999999999d", "1e308d", "0s"):
        response = client.get("/api/health", params={"window": window})
        assert response.status_code in (200, 400), (window, response.text)


def test_a_reversed_range_is_a_400(client: httpx.Client) -> None:
    response = client.get(
        "/api/events",
        params={
            "type": "MICROSERVICE_REQUEST",
            "since": "2020-05-02T00:00:00Z",
            "until": "2020-05-01T00:00:00Z",
        },
    )
    assert response.status_code == 400 and "since: must be before until" in response.json()["error"]


_PATHS = [
    "/api/requests",
    "/api/events",
    "/api/health",
    "/api/series",
    "/api/dlq",
    "/api/flows/x",
    "/api/ui-settings",
]
_NAMES = [
    "since",
    "until",
    "limit",
    "cursor",
    "type",
    "source",
    "status",
    "service",
    "window",
    "order",
    "step",
    "perOperation",
    "minDurationMs",
]


_SERIES_VALUES = [
    "1m",
    "0m",
    "30s",
    "90s",
    "1m30s",
    "7d",
    "8d",
    "99999999999d",
    "1e308d",
    "nan",
    "-1m",
    "",
    "x",
]


@pytest.mark.parametrize("step", _SERIES_VALUES)
@pytest.mark.parametrize("window", _SERIES_VALUES)
def test_hostile_series_windows_and_steps_are_a_400_or_an_answer(
    client: httpx.Client, window: str, step: str
) -> None:
    response = client.get("/api/series", params={"window": window, "step": step})
    assert response.status_code in (200, 400), (window, step, response.text)
    if response.status_code == 400:
        assert response.json()["error"].split(":")[0] in ("window", "step", "until")
    else:
        assert all(len(entry["points"]) <= 1440 for entry in response.json()["series"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"minDurationMs": "-1"}, "minDurationMs: must be between 0 and"),
        ({"minDurationMs": "nan"}, "minDurationMs: must be between 0 and"),
        ({"minDurationMs": "inf"}, "minDurationMs: must be between 0 and"),
        ({"minDurationMs": "ten"}, "minDurationMs: 'ten' is not a number"),
        ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor:"),
        ({"perOperation": "maybe"}, "unknown parameter perOperation"),
    ],
)
def test_hostile_request_search_parameters_are_a_400(
    client: httpx.Client, params: dict[str, str], message: str
) -> None:
    response = client.get("/api/requests", params=params)
    assert response.status_code == 400 and response.json()["error"].startswith(message), response.text
    series = client.get("/api/series", params={"perOperation": "maybe"})
    assert series.status_code == 400 and series.json()["error"].startswith("perOperation:")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(_PATHS),
    params=st.dictionaries(st.sampled_from(_NAMES), st.text(max_size=40), max_size=4),
)
def test_no_parameter_makes_the_api_fail(client: httpx.Client, path: str, params: dict[str, Any]) -> None:
    response = client.get(path, params=params)
    assert response.status_code in (200, 400, 404), (path, params, response.text)
    assert response.headers["content-type"] == "application/json"
    if response.status_code != 200:
        assert response.json()["error"]


@pytest.mark.parametrize(
    "request_id",
    ["%E0%A4%A", "%00", "a%2Fb", "..%2F..%2Fetc%2Fpasswd", "<script>alert(1)</script>", "x" * 300],
)
def test_hostile_request_ids_in_the_flow_path(client: httpx.Client, request_id: str) -> None:
    response = client.get(f"/api/flows/{request_id}")
    assert response.status_code in (400, 404), response.text
    assert response.headers["content-type"] == "application/json"


# -- tokens and ports -----------------------------------------------------------------


@pytest.mark.parametrize(
    "token", ["", " ", "\t\n", "short", "has a space in it ok", "tab\there-and-long-enough", "é" * 20]
)
def test_unfit_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="API token"):
        check_token(token)


def test_serve_refuses_a_blank_token_for_a_public_address(backend: Backend) -> None:
    result = run(backend.data_dir, "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--token", " ")
    assert result.returncode == 2
    assert result.stderr.startswith("error: the API token is empty or blank")
    assert "Traceback" not in result.stderr


def test_serve_never_prints_its_token(backend: Backend) -> None:
    port = free_port()
    process = spawn(backend.data_dir, "serve", "--port", str(port), "--token", TOKEN)
    try:
        assert process.stderr is not None
        announced = process.stderr.readline()
    finally:
        process.terminate()
        _, rest = process.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}/" in announced and "asks for the API token" in announced
    assert TOKEN not in announced + rest


def test_serve_on_a_taken_port_is_one_line_before_any_listening_line(backend: Backend) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run(backend.data_dir, "serve", "--port", str(port))
    assert result.returncode == 2
    assert (
        result.stderr == f"error: port {port} on 127.0.0.1 is taken (another program listens there)"
        " (--port 0 picks a free one)\n"
    )
    assert result.stdout == ""


def test_bind_names_the_problem() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(PortUnavailable, match=f"port {port} on 127.0.0.1 is taken"):
            bind("127.0.0.1", port)
    with pytest.raises(PortUnavailable, match="not an address of this machine"):
        bind("192.0.2.1", 0)
    with bind("127.0.0.1", 0) as listening:
        assert listening.getsockname()[1] > 0


def test_background_server_on_a_taken_port_raises(backend: Backend) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        server = BackgroundServer(build_app(backend.store), port=taken.getsockname()[1])
        with pytest.raises(PortUnavailable, match="is taken"):
            server.start()
