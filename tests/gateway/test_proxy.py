"""The gateway over real HTTP: routing, headers, request ids, errors, and the
events each call leaves in the queue."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, cast

import httpx
import msgspec
import pytest

from eventtrail.calls import ERROR, REQUEST, RESPONSE
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.gateway import GatewayApp, GatewayServer, build_app, parse_gateway_config
from eventtrail.gateway.protocol import Exchange
from eventtrail.gateway.publisher import Publisher
from eventtrail.gateway.spill import SpillFile
from tests.gateway.conftest import GatewayFactory, queued_events, read_answer
from tests.gateway.upstreams import Scripted, read_request, resetting_server, scripted
from tests.servers import free_port


def _upstream_headers(answer: httpx.Response) -> list[tuple[str, str]]:
    return [(name, value) for name, value in answer.json()["headers"]]


def test_a_prefix_routes_to_its_upstream_with_path_query_and_body(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    answer = httpx.post(f"{gateway.url}/echo/orders/42?x=1&y=a%20b", content=b"hello")
    assert answer.status_code == 201
    seen = answer.json()
    assert (seen["method"], seen["path"], seen["query"], seen["bodyBytes"]) == (
        "POST",
        "/orders/42",
        "x=1&y=a%20b",
        5,
    )


def test_the_path_goes_upstream_exactly_as_encoded(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    answer = httpx.get(f"{gateway.url}/echo/files/a%20b%C3%A9;v=1/x%3Fy")
    assert answer.json()["rawPath"] == "/files/a%20b%C3%A9;v=1/x%3Fy"
    assert httpx.get(f"{gateway.url}/echo").json()["path"] == "/"


def test_an_encoded_slash_is_refused_not_forwarded(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    answer = httpx.get(f"{gateway.url}/echo/files/a%2Fb", headers={"X-Request-Id": "r-slash"})
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "an encoded slash, backslash, dot or control character in the path",
        "requestId": "r-slash",
    }
    assert "eventtrail_gateway_rejected_requests_total 1" in httpx.get(f"{gateway.url}/metrics").text


def test_the_longest_prefix_wins_and_an_unknown_one_is_404(
    make_gateway: GatewayFactory, upstream_url: str
) -> None:
    gateway = make_gateway(
        [
            {"prefix": "/api", "service": "Short", "upstream": upstream_url},
            {"prefix": "/api/v2", "service": "Long", "upstream": upstream_url + "/v2"},
        ]
    )
    assert httpx.get(f"{gateway.url}/api/v2/x").json()["path"] == "/v2/x"
    assert httpx.get(f"{gateway.url}/api/v1/x").json()["path"] == "/v1/x"
    missing = httpx.get(f"{gateway.url}/apix/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"] == "no route for /apix/nothing"
    assert missing.headers["x-request-id"] == missing.json()["requestId"]


def test_headers_forwarded_hop_by_hop_dropped_repeats_kept(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    answer = httpx.get(
        f"{gateway.url}/echo/h",
        headers=[
            ("X-Multi-In", "a"),
            ("X-Multi-In", "b"),
            ("Connection", "keep-alive, X-Drop-Me"),
            ("X-Drop-Me", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Authorization", "Bearer upstream-needs-this"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Host", "public.example"),
        ],
    )
    sent = _upstream_headers(answer)
    names = [name for name, _ in sent]
    assert [value for name, value in sent if name == "x-multi-in"] == ["a", "b"]
    assert not {"x-drop-me", "keep-alive", "te"} & set(names)
    assert ("authorization", "Bearer upstream-needs-this") in sent
    assert ("x-forwarded-for", "10.0.0.1, 127.0.0.1") in sent
    assert ("x-forwarded-proto", "http") in sent
    assert ("x-forwarded-host", "public.example") in sent
    # The upstream's own host, not the public one.
    assert dict(sent)["host"].startswith("127.0.0.1:")
    # Response: repeated headers kept, the upstream's hop-by-hop ones dropped.
    assert answer.headers.get_list("x-multi") == ["one", "two"]
    assert answer.headers.get_list("set-cookie") == ["session=s3cr3t-cookie", "theme=dark"]
    assert "x-upstream-hop" not in answer.headers


def test_the_request_id_is_taken_passed_upstream_and_returned(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gateway = make_gateway()
    given = httpx.get(f"{gateway.url}/echo/1", headers={"X-Request-Id": "req-123"})
    traced = httpx.get(
        f"{gateway.url}/echo/2",
        headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    made = httpx.get(f"{gateway.url}/echo/3")
    assert given.headers["x-request-id"] == "req-123"
    assert ("x-request-id", "req-123") in _upstream_headers(given)
    assert traced.headers["x-request-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736") in _upstream_headers(traced)
    new_id = made.headers["x-request-id"]
    assert uuid.UUID(new_id).version == 7
    assert ("x-request-id", new_id) in _upstream_headers(made)
    gateway.stop()
    events = queued_events(tmp_path / "queue.db")
    assert [(e.request_id, e.type) for e in events] == [
        ("req-123", REQUEST),
        ("req-123", RESPONSE),
        ("4bf92f3577b34da6a3ce929d0e0e4736", REQUEST),
        ("4bf92f3577b34da6a3ce929d0e0e4736", RESPONSE),
        (new_id, REQUEST),
        (new_id, RESPONSE),
    ]


def test_a_call_is_recorded_as_request_then_response(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gateway = make_gateway()
    answer = httpx.post(f"{gateway.url}/echo/orders?x=1", content=b"12345")
    gateway.stop()
    request, response = queued_events(tmp_path / "queue.db")
    assert (request.type, request.source, response.type, response.source) == (
        REQUEST,
        "Gateway",
        RESPONSE,
        "Gateway",
    )
    assert request.data["callId"] == response.data["callId"]
    assert request.data | {"callId": None} == {
        "Name": "Echo",
        "callId": None,
        "method": "POST",
        "path": "/orders",
        "query": "x=1",
    }
    assert response.data["status"] == 201
    assert response.data["bytesIn"] == 5
    assert response.data["bytesOut"] == len(answer.content)
    assert 0 < response.data["latencyMs"] < 5000
    assert request.timestamp <= response.timestamp


def test_secrets_are_never_recorded(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gateway = make_gateway(
        recording={
            "request_headers": ["authorization", "cookie", "x-api-key", "x-visible", "x-internal"],
            "response_headers": ["set-cookie", "content-type"],
            "redact_headers": ["x-internal"],
            "redact_query": ["session"],
        }
    )
    answer = httpx.get(
        f"{gateway.url}/echo/r?token=tok-s3cr3t&session=sess-s3cr3t&page=2",
        headers={
            "Authorization": "Bearer auth-s3cr3t",
            "Cookie": "id=cookie-s3cr3t",
            "X-Api-Key": "key-s3cr3t",
            "X-Internal": "internal-s3cr3t",
            "X-Visible": "shown",
        },
    )
    # The upstream still gets them: redaction is for the record only.
    assert ("authorization", "Bearer auth-s3cr3t") in _upstream_headers(answer)
    gateway.stop()
    request, response = queued_events(tmp_path / "queue.db")
    assert request.data["requestHeaders"] == {
        "authorization": "[redacted]",
        "cookie": "[redacted]",
        "x-api-key": "[redacted]",
        "x-internal": "[redacted]",
        "x-visible": "shown",
    }
    assert request.data["query"] == "token=[redacted]&session=[redacted]&page=2"
    assert response.data["responseHeaders"] == {
        "set-cookie": "[redacted], [redacted]",
        "content-type": "application/json",
    }
    with (tmp_path / "queue.db").open("rb") as file:
        assert b"s3cr3t" not in file.read()


def test_refused_is_502_with_its_error_event(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gateway = make_gateway(
        [{"prefix": "/gone", "service": "Gone", "upstream": f"http://127.0.0.1:{free_port()}"}]
    )
    answer = httpx.get(f"{gateway.url}/gone/x", headers={"X-Request-Id": "r-refused"})
    assert answer.status_code == 502
    assert answer.json() == {
        "error": "the upstream service refused the connection",
        "service": "Gone",
        "requestId": "r-refused",
    }
    gateway.stop()
    request, error = queued_events(tmp_path / "queue.db")
    assert (request.type, error.type, error.request_id) == (REQUEST, ERROR, "r-refused")
    assert error.data["error"] == "refused"
    assert error.data["callId"] == request.data["callId"]
    assert error.data["elapsedMs"] >= 0


def test_a_reset_connection_is_502_reset(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    with resetting_server() as port:
        gateway = make_gateway(
            [{"prefix": "/r", "service": "Resets", "upstream": f"http://127.0.0.1:{port}"}]
        )
        answer = httpx.get(f"{gateway.url}/r/x")
        gateway.stop()
    assert answer.status_code == 502
    assert answer.json()["error"] == "the upstream service closed the connection"
    _, error = queued_events(tmp_path / "queue.db")
    assert (error.type, error.data["error"]) == (ERROR, "reset")


def test_a_body_cut_short_truncates_the_answer_and_is_recorded_as_reset(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
    with resetting_server(start) as port:
        gateway = make_gateway([{"prefix": "/r", "service": "Cut", "upstream": f"http://127.0.0.1:{port}"}])
        # The status went out before the cut: the client must see a broken
        # response, never a complete-looking one.
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{gateway.url}/r/x")
        gateway.stop()
    _, error = queued_events(tmp_path / "queue.db")
    assert (error.type, error.data["Name"], error.data["error"]) == (ERROR, "Cut", "reset")


def test_a_silent_upstream_is_504_timeout(
    make_gateway: GatewayFactory, upstream_url: str, tmp_path: Path
) -> None:
    gateway = make_gateway([{"prefix": "/s", "service": "Slow", "upstream": upstream_url, "timeout": 0.3}])
    answer = httpx.get(f"{gateway.url}/s/slow")
    assert answer.status_code == 504
    assert answer.json()["error"] == "the upstream service did not answer in time"
    gateway.stop()
    _, error = queued_events(tmp_path / "queue.db")
    assert (error.type, error.data["Name"], error.data["error"]) == (ERROR, "Slow", "timeout")
    assert 250 <= error.data["elapsedMs"] < 1900


def test_a_response_head_the_server_refuses_is_a_recorded_502(upstream_url: str, tmp_path: Path) -> None:
    """Should the server refuse the head the upstream sent (no upstream can
    make it do so today: its parser refuses first), the call still ends
    with an answer and an event."""
    config = parse_gateway_config(
        {"routes": [{"prefix": "/echo", "service": "Echo", "upstream": upstream_url}]}
    )
    publisher = Publisher(SQLiteQueue(tmp_path / "queue.db"), SpillFile(tmp_path / "spill.db")).start()
    app = GatewayApp(config, publisher)
    sent: list[MutableMapping[str, Any]] = []

    class RefusingExchange:
        """What the gateway uses of an exchange, refusing the first head."""

        method = "GET"
        raw_path = b"/echo/x"
        path = "/echo/x"
        query = b""
        client = ("127.0.0.1", 5000)
        scheme = "http"
        head_only = disconnected = more_body = writing_paused = False
        listener = None

        def __init__(self) -> None:
            self.headers = [(b"host", b"gw")]
            self.answered = asyncio.Event()

        def answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, more: bool) -> None:
            if not sent:
                sent.append({"refused": status})
                raise RuntimeError("invalid response header name or value")
            sent.extend(({"status": status}, {"body": body}))
            if not more:
                self.answered.set()

        def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
            self.answer(status, headers, body, False)

    async def call() -> None:
        await app.startup()
        exchange = RefusingExchange()
        app.handle(cast(Exchange, exchange))
        await asyncio.wait_for(exchange.answered.wait(), 10)
        await app.shutdown()

    asyncio.run(call())
    publisher.close()
    assert sent[0] == {"refused": 200}
    assert sent[1]["status"] == 502
    assert msgspec.json.decode(sent[2]["body"])["error"] == "the upstream service could not be reached"
    request, error = queued_events(tmp_path / "queue.db")
    assert (request.type, error.type, error.data["error"]) == (REQUEST, ERROR, "error")
    assert "response head cannot be passed on" in error.data["detail"]


def test_metrics_count_requests_and_events(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    for _ in range(3):
        httpx.get(f"{gateway.url}/echo/x")
    httpx.get(f"{gateway.url}/nowhere")
    text = httpx.get(f"{gateway.url}/metrics").text
    assert 'eventtrail_gateway_requests_total{service="Echo",outcome="2xx"} 3' in text
    assert "eventtrail_gateway_unrouted_requests_total 1" in text
    assert "eventtrail_gateway_events_published_total 6" in text
    for name in ("events_buffered", "events_sent_total", "events_spilled_total", "events_dropped_total"):
        assert f"eventtrail_gateway_{name} " in text
    assert "eventtrail_gateway_queue_errors_total 0" in text


def test_recording_off_proxies_and_publishes_nothing(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gateway = make_gateway(recording={"enabled": False})
    answer = httpx.get(f"{gateway.url}/echo/x", headers={"X-Request-Id": "quiet"})
    assert (answer.status_code, answer.headers["x-request-id"]) == (200, "quiet")
    gateway.stop()
    assert queued_events(tmp_path / "queue.db") == []


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 64 * 1024 + 1, 3 * 1024 * 1024 + 7])
def test_request_bodies_of_any_size_arrive_whole(make_gateway: GatewayFactory, size: int) -> None:
    gateway = make_gateway()
    sized = httpx.post(f"{gateway.url}/echo/upload", content=b"b" * size)
    streamed = httpx.post(
        f"{gateway.url}/echo/upload", content=iter([b"c" * (size // 2), b"d" * (size - size // 2)])
    )
    assert (sized.status_code, sized.json()["bodyBytes"]) == (201, size)
    assert (streamed.status_code, streamed.json()["bodyBytes"]) == (201, size)
    # A body sent chunked goes upstream chunked; one with a length keeps it.
    assert ("content-length", str(size)) in _upstream_headers(sized)
    assert ("transfer-encoding", "chunked") in _upstream_headers(streamed) or size == 0


def test_a_large_download_streams_through_and_the_connection_is_reused(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gateway = make_gateway()
    with httpx.Client() as client:
        for _ in range(3):
            answer = client.get(f"{gateway.url}/echo/download/{5 * 1024 * 1024 + 3}")
            assert (answer.status_code, len(answer.content)) == (200, 5 * 1024 * 1024 + 3)
    gateway.stop()
    responses = [event for event in queued_events(tmp_path / "queue.db") if event.type == RESPONSE]
    assert [event.data["bytesOut"] for event in responses] == [5 * 1024 * 1024 + 3] * 3


def test_head_answers_carry_no_body_and_keep_the_connection(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    with httpx.Client() as client:
        head = client.head(f"{gateway.url}/echo/x")
        after = client.get(f"{gateway.url}/echo/y")
    assert (head.status_code, head.content) == (200, b"")
    assert int(head.headers["content-length"]) > 0
    assert after.json()["path"] == "/y"


def test_the_head_of_a_slow_answer_is_not_held_back(make_gateway: GatewayFactory) -> None:
    """The response head goes out as soon as the upstream sent it, not with
    the first piece of a body that comes later."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def slow_body() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
            time.sleep(1.0)
            connection.sendall(b"late")

    thread = threading.Thread(target=slow_body, daemon=True)
    thread.start()
    try:
        gateway = make_gateway([{"prefix": "/s", "service": "Slow", "upstream": f"http://127.0.0.1:{port}"}])
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
            started = time.monotonic()
            client.sendall(b"GET /s/x HTTP/1.1\r\nHost: gw\r\n\r\n")
            first = client.recv(65536)
            head_after = time.monotonic() - started
            rest = b""
            while not (first + rest).endswith(b"late"):
                rest += client.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert head_after < 0.8
    finally:
        thread.join(5)
        listener.close()


def test_a_pooled_connection_the_upstream_dropped_is_replaced_and_each_call_recorded_once(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """The upstream answers the first request of each connection, and closes
    it unanswered when a second one comes on it: the gateway sends that
    request again on a new connection (it never reached the service), so
    every client gets its answer and every call has one request and one
    response event."""
    dropped: list[bytes] = []

    def one_answer_per_connection(connection: socket.socket, state: Scripted) -> None:
        read_request(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if second := read_request(connection):
            dropped.append(second)

    with scripted(one_answer_per_connection) as upstream:
        gateway = make_gateway(
            [{"prefix": "/d", "service": "Dropping", "upstream": f"http://127.0.0.1:{upstream.port}"}]
        )
        with httpx.Client() as client:
            answers = [client.get(f"{gateway.url}/d/{number}") for number in range(4)]
        gateway.stop()
    assert [(answer.status_code, answer.text) for answer in answers] == [(200, "ok")] * 4
    # The requests after the first each found the pooled connection dropped.
    assert len(dropped) == 3
    events = queued_events(tmp_path / "queue.db")
    assert sorted(event.type for event in events) == sorted([REQUEST, RESPONSE] * 4)
    assert len({event.data["callId"] for event in events}) == 4


def test_a_client_that_reads_slowly_gets_the_whole_answer_and_the_upstream_waits(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A client reading a large answer far slower than the upstream sends it:
    the gateway stops reading from the upstream while the client's side is
    full, and goes on when it drains; nothing is lost or sent twice."""
    size = 24 * 1024 * 1024 + 5
    gateway = make_gateway()
    with httpx.Client() as client:
        with client.stream("GET", f"{gateway.url}/echo/download/{size}") as answer:
            received = 0
            for piece in answer.iter_bytes(256 * 1024):
                received += len(piece)
                time.sleep(0.005)
        after = client.get(f"{gateway.url}/echo/next")
    assert (answer.status_code, received) == (200, size)
    assert after.json()["path"] == "/next"
    gateway.stop()
    responses = [event for event in queued_events(tmp_path / "queue.db") if event.type == RESPONSE]
    assert [event.data["bytesOut"] for event in responses] == [size, len(after.content)]


def test_a_client_gone_before_its_body_came_is_recorded_as_disconnected(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gateway = make_gateway()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        client.sendall(b"POST /echo/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    metrics = ""
    while 'outcome="disconnected"} 1' not in metrics and time.monotonic() < deadline:
        metrics = httpx.get(f"{gateway.url}/metrics").text
        time.sleep(0.05)
    assert 'eventtrail_gateway_requests_total{service="Echo",outcome="disconnected"} 1' in metrics
    gateway.stop()
    request, error = queued_events(tmp_path / "queue.db")
    assert (request.type, error.type, error.data["error"], error.data["detail"]) == (
        REQUEST,
        ERROR,
        "disconnected",
        "client disconnected",
    )


def test_a_gateway_stopped_with_a_call_in_flight_answers_it_and_records_it(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gateway = make_gateway()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        client.sendall(b"GET /echo/slow HTTP/1.1\r\nHost: gw\r\n\r\n")
        time.sleep(0.3)
        gateway.stop()  # the upstream answers /slow after 2 s
        answer = read_answer(client, 5)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close" in answer
    assert answer.endswith(b"}")
    request, response = queued_events(tmp_path / "queue.db")
    assert (request.type, response.type, response.data["status"]) == (REQUEST, RESPONSE, 200)
    assert response.data["latencyMs"] >= 1500


@pytest.mark.parametrize("options", [{"proxy_headers": True}, {"log_level": "trace"}])
def test_the_gateway_answers_when_uvicorn_wraps_its_app_in_middleware(
    upstream_url: str, options: dict[str, Any]
) -> None:
    """uvicorn wraps an app in ASGI middleware for some of its settings: the
    gateway is still called directly, and still proxies."""
    config = parse_gateway_config(
        {"routes": [{"prefix": "/echo", "service": "Echo", "upstream": upstream_url}]}
    )
    with GatewayServer(build_app(config), **options) as gateway:
        answer = httpx.get(f"{gateway.url}/echo/wrapped")
    assert (answer.status_code, answer.json()["path"]) == (200, "/wrapped")
