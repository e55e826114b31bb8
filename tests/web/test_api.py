"""The HTTP API over real HTTP: every endpoint, pagination, bad parameters
and the token check."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from eventtrail.demo import SERVICE_A, SERVICE_B
from eventtrail.web import BackgroundServer, TokenRequired, build_app, check_binding, is_loopback
from tests.cli import run, spawn
from tests.servers import free_port, wait_for_port
from tests.web.conftest import TOKEN, Backend


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def get(client: httpx.Client, path: str, **params: Any) -> Any:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def test_requests_are_one_row_per_request_newest_first(client: httpx.Client, backend: Backend) -> None:
    body = get(client, "/api/requests", limit=30)
    rows = body["requests"]
    assert len(rows) == 30
    assert len({row["requestId"] for row in rows}) == 30
    assert [row["startedAt"] for row in rows] == sorted((row["startedAt"] for row in rows), reverse=True)
    newest = max(backend.events, key=lambda event: event.timestamp).request_id
    assert rows[0]["requestId"] == newest
    first = rows[0]
    flow = backend.store.flow(first["requestId"])
    assert first["startedAt"] == flow[0].timestamp and first["endedAt"] == flow[-1].timestamp
    assert first["services"][:2] == [SERVICE_A, SERVICE_B]
    assert first["calls"] == len(flow) // 2


def test_requests_filter_by_status_service_and_time(client: httpx.Client, backend: Backend) -> None:
    failed = get(client, "/api/requests", status="error", limit=20)["requests"]
    assert len(failed) == 20
    assert all(row["status"] == "error" and row["errors"] >= 1 for row in failed)
    ok = get(client, "/api/requests", status="ok", service=SERVICE_B, limit=10)["requests"]
    assert ok and all(row["status"] == "ok" and SERVICE_B in row["services"] for row in ok)
    # The search reads the request summaries: every match, and a cursor while more remain.
    nobody = get(client, "/api/requests", service="Microservice Z")
    assert nobody == {"requests": [], "cursor": None}
    oldest = min(event.timestamp for event in backend.events)
    early = datetime.fromisoformat(oldest) + timedelta(seconds=10)
    window = get(client, "/api/requests", until=early.isoformat(), limit=500)
    assert window["cursor"] is None
    assert window["requests"] and all(row["startedAt"] < early.isoformat() for row in window["requests"])
    started = {e.request_id for e in backend.events if e.timestamp < early.isoformat()}
    assert {row["requestId"] for row in window["requests"]} == started


def test_a_flow_has_its_events_and_calls(client: httpx.Client, backend: Backend) -> None:
    request_id = backend.events[-1].request_id
    body = get(client, f"/api/flows/{request_id}")
    stored = backend.store.flow(request_id)
    assert [event["id"] for event in body["events"]] == [event.id for event in stored]
    assert body["events"][0]["requestId"] == request_id
    assert body["summary"]["requestId"] == request_id
    assert len(body["calls"]) == len(stored) // 2
    first_call = body["calls"][0]
    assert first_call["offsetMs"] == 0 and first_call["service"] == SERVICE_A
    assert first_call["eventIds"] == [stored[0].id, stored[1].id]
    missing = client.get("/api/flows/no-such-request")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no events for request no-such-request"}


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_events_pages_lose_and_repeat_nothing(client: httpx.Client, backend: Backend, order: str) -> None:
    type_ = "MICROSERVICE_ERROR"
    moments = sorted(event.timestamp for event in backend.events)
    since, until = moments[len(moments) // 4], moments[3 * len(moments) // 4]
    expected = sorted(
        (e.timestamp, e.id) for e in backend.events if e.type == type_ and since <= e.timestamp < until
    )
    seen: list[tuple[str, str]] = []
    cursor = None
    pages = 0
    while True:
        params = {"type": type_, "since": since, "until": until, "limit": 7, "order": order}
        body = get(client, "/api/events", **params, **({"cursor": cursor} if cursor else {}))
        seen += [(event["timestamp"], event["id"]) for event in body["events"]]
        pages += 1
        cursor = body["cursor"]
        if cursor is None:
            break
    assert len(expected) > 30
    assert seen == (expected if order == "asc" else expected[::-1])
    assert pages == -(-len(expected) // 7)  # the last page is full and says it is the last


def test_events_by_source(client: httpx.Client, backend: Backend) -> None:
    body = get(client, "/api/events", source="Gateway", limit=5, order="desc")
    newest = sorted(backend.events, key=lambda e: (e.timestamp, e.id), reverse=True)[:5]
    assert [event["id"] for event in body["events"]] == [event.id for event in newest]
    assert body["cursor"]


def test_health_names_service_b(client: httpx.Client) -> None:
    report = get(client, "/api/health", window="15m")
    assert report["faulty"] == [SERVICE_B]
    assert report["windowSeconds"] == 900
    statuses = {service["service"]: service["status"] for service in report["services"]}
    assert statuses == {SERVICE_A: "ok", SERVICE_B: "faulty"}
    assert {(edge["source"], edge["service"]) for edge in report["edges"]} == {
        ("Gateway", SERVICE_A),
        ("Gateway", SERVICE_B),
    }
    long_ago = get(client, "/api/health", window="5m", until="2001-01-01T00:00:00Z")
    assert long_ago["services"] == [] and long_ago["verdict"] == "no calls in this window"


def test_dead_letters(client: httpx.Client, backend: Backend) -> None:
    (letter,) = get(client, "/api/dlq")["deadLetters"]
    assert letter["id"] == backend.dead_letter_id
    assert letter["reason"] == "field `id`: required field is missing"
    assert letter["body"] == '{"not": "an event"}'


def test_openapi_describes_every_endpoint(client: httpx.Client) -> None:
    document = get(client, "/openapi.json")
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/api/requests",
        "/api/flows/{requestId}",
        "/api/events",
        "/api/health",
        "/api/series",
        "/api/dlq",
    }
    schemas = document["components"]["schemas"]
    assert {"Event", "HealthReport", "FlowView", "RequestPage", "SeriesReport", "Error"} <= set(schemas)
    requests_parameters = {p["name"] for p in document["paths"]["/api/requests"]["get"]["parameters"]}
    assert {"minDurationMs", "cursor"} <= requests_parameters
    events_parameters = {p["name"] for p in document["paths"]["/api/events"]["get"]["parameters"]}
    assert events_parameters == {"type", "source", "since", "until", "limit", "cursor", "order"}


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/api/requests", {"limit": "0"}, 400, "limit: must be between 1 and 500, not 0"),
        ("/api/requests", {"limit": "ten"}, 400, "limit: 'ten' is not a whole number"),
        ("/api/requests", {"status": "broken"}, 400, "status: 'broken' is not one of ok, error, pending"),
        ("/api/requests", {"since": "yesterday"}, 400, "since: 'yesterday' is neither a timestamp"),
        ("/api/requests", {"since": "5m", "until": "10m"}, 400, "since: must be before until"),
        ("/api/requests", {"colour": "red"}, 400, "unknown parameter colour"),
        ("/api/events", {}, 400, "type, source: give exactly one of them"),
        ("/api/events", {"type": "A", "source": "B"}, 400, "type, source: give exactly one of them"),
        ("/api/events", {"type": "A", "limit": "1001"}, 400, "limit: must be between 1 and 1000"),
        ("/api/events", {"type": "A", "cursor": "garbage"}, 400, "cursor: 'garbage' is not a cursor"),
        ("/api/events", {"type": "A", "order": "up"}, 400, "order: 'up' is not one of asc, desc"),
        ("/api/events", {"type": "x" * 300}, 400, "type: must be 1 to 256 characters"),
        ("/api/health", {"window": "forever"}, 400, "window: 'forever' is not a duration"),
        ("/api/health", {"window": "2d"}, 400, "window: at most 24 hours"),
        ("/api/health", {"until": "soon"}, 400, "until: 'soon' is neither"),
        ("/api/dlq", {"limit": "-1"}, 400, "limit: must be between 1 and 1000"),
        ("/api/flows/abc", {"x": "1"}, 400, "unknown parameter x (known: none)"),
        ("/api/nothing-here", {}, 404, "Not Found"),
    ],
)
def test_bad_parameters_get_a_4xx_naming_them(
    client: httpx.Client, path: str, params: dict[str, str], status: int, message: str
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


def test_other_methods_are_refused_in_json(client: httpx.Client) -> None:
    response = client.post("/api/health", json={})
    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed"}


def test_a_cursor_of_another_query_is_refused(client: httpx.Client) -> None:
    cursor = get(client, "/api/events", type="MICROSERVICE_REQUEST", limit=2)["cursor"]
    response = client.get("/api/events", params={"type": "MICROSERVICE_RESPONSE", "cursor": cursor})
    assert response.status_code == 400
    assert "another query" in response.json()["error"]
    repeated = client.get("/api/events?type=A&type=B")
    assert repeated.status_code == 400 and "type: given more than once" in repeated.json()["error"]


def test_the_token_is_checked_on_every_api_request(token_server: BackgroundServer) -> None:
    with httpx.Client(base_url=token_server.url, timeout=10) as client:
        for path in ("/api/requests", "/api/health", "/api/dlq", "/api/events?type=A", "/api/flows/x"):
            missing = client.get(path)
            assert missing.status_code == 401, path
            assert missing.json()["error"].startswith("missing API token")
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error"].startswith("wrong API token")
        authorised = client.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
        assert authorised.status_code == 200 and authorised.json()["faulty"] == [SERVICE_B]
        # The UI's files hold no data: they load without a token, then ask for it.
        assert client.get("/").status_code == 200
        assert client.get("/static/app.js").status_code == 200


def test_binding_beyond_loopback_needs_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", TOKEN)
    with pytest.raises(TokenRequired, match="give a token"):
        check_binding("0.0.0.0", None)


def test_serve_refuses_a_public_address_without_a_token(backend: Backend) -> None:
    result = run(backend.data_dir, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "binding to 0.0.0.0 exposes the API beyond this machine: give a token" in result.stderr


def test_serve_runs_the_api_with_the_token_from_the_environment(backend: Backend) -> None:
    port = free_port()
    process = spawn(backend.data_dir, "serve", "--port", str(port), env={"EVENTTRAIL_API_TOKEN": TOKEN})
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/api/dlq").status_code == 401
        authorised = httpx.get(f"{url}/api/dlq", headers={"Authorization": f"Bearer {TOKEN}"})
        assert authorised.status_code == 200
        assert authorised.json()["deadLetters"][0]["id"] == backend.dead_letter_id
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode in (0, -15)


def test_the_background_server_stops_cleanly(backend: Backend) -> None:
    server = BackgroundServer(build_app(backend.store))
    url = server.start()
    assert httpx.get(f"{url}/api/dlq").json() == {"error": "no queue is configured for this server"}
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/api/dlq", timeout=2)


def test_series_per_service_and_per_operation(client: httpx.Client, backend: Backend) -> None:
    body = get(client, "/api/series", window="2h", step="5m")
    assert body["step"] == "5m"
    by_service = {entry["service"]: entry for entry in body["series"]}
    assert set(by_service) == {SERVICE_A, SERVICE_B}
    points = by_service[SERVICE_B]["points"]
    assert len(points) == 24
    assert [p["t"] for p in points] == sorted(p["t"] for p in points)
    ended = [
        e
        for e in backend.events
        if e.data.get("Name") == SERVICE_B and e.type in ("MICROSERVICE_RESPONSE", "MICROSERVICE_ERROR")
    ]
    assert sum(p["calls"] for p in points) == len(ended)
    failed = [e for e in ended if e.type == "MICROSERVICE_ERROR" or e.data.get("status", 0) >= 500]
    assert sum(p["errors"] for p in points) == len(failed)
    busy = [p for p in points if p["calls"]]
    assert busy and all(p["p50Ms"] <= p["p95Ms"] <= p["p99Ms"] for p in busy)
    per_operation = get(client, "/api/series", window="15m", service=SERVICE_B, perOperation="true")
    assert per_operation["step"] == "1m"
    operations = [entry["operation"] for entry in per_operation["series"]]
    assert operations and all(entry["service"] == SERVICE_B for entry in per_operation["series"])
    assert all(op.split(" ", 1)[1].startswith("/") for op in operations)


def test_requests_by_minimum_duration_are_every_match_page_by_page(
    client: httpx.Client, backend: Backend
) -> None:
    slow = get(client, "/api/requests", minDurationMs=1500, limit=500)["requests"]
    assert all(row["durationMs"] >= 1500 for row in slow)
    seen: list[str] = []
    cursor = None
    for _ in range(200):
        params: dict[str, Any] = {"minDurationMs": 1500, "limit": 3}
        body = get(client, "/api/requests", **params, **({"cursor": cursor} if cursor else {}))
        seen += [row["requestId"] for row in body["requests"]]
        cursor = body["cursor"]
        if cursor is None:
            break
    assert seen == [row["requestId"] for row in slow]


def test_metrics_in_prometheus_text(client: httpx.Client, backend: Backend) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    ended = [
        e
        for e in backend.events
        if e.data.get("Name") == SERVICE_B and e.type in ("MICROSERVICE_RESPONSE", "MICROSERVICE_ERROR")
    ]
    calls = int(lines[f'eventtrail_service_calls_total{{caller="Gateway",service="{SERVICE_B}"}}'])
    assert calls >= len(ended)  # other tests of the session may add traffic
    histogram = (
        f'eventtrail_service_call_duration_seconds_bucket{{caller="Gateway",service="{SERVICE_B}",le="+Inf"}}'
    )
    assert int(lines[histogram]) == calls
    assert "# TYPE eventtrail_service_call_failures_total counter" in text
    buckets = [
        int(value)
        for key, value in lines.items()
        if key.startswith(
            f'eventtrail_service_call_duration_seconds_bucket{{caller="Gateway",service="{SERVICE_A}"'
        )
    ]
    assert buckets == sorted(buckets)  # cumulative


def test_metrics_need_the_token_when_the_server_has_one(token_server: BackgroundServer) -> None:
    with httpx.Client(base_url=token_server.url, timeout=10) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        answered = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answered.status_code == 200 and "eventtrail_service_calls_total" in answered.text
