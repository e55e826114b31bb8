"""The ASGI middleware and the httpx hooks, on a real Starlette service
calling a real upstream: the same events as the gateway, in one flow."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from eventtrail.calls import ERROR, REQUEST, RESPONSE
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.gateway import GatewayServer
from eventtrail.gateway.config import Recording
from eventtrail.gateway.instrument import EventTrailMiddleware, HttpxHooks
from eventtrail.gateway.publisher import Publisher
from tests.gateway.conftest import queued_events
from tests.servers import free_port


def test_a_service_records_its_requests_and_its_outgoing_calls(tmp_path: Path, upstream_url: str) -> None:
    publisher = Publisher(SQLiteQueue(tmp_path / "queue.db")).start()
    hooks = HttpxHooks(publisher, service="Echo", source="Orders")

    async def order(request: Request) -> JSONResponse:
        async with httpx.AsyncClient(event_hooks=hooks.async_event_hooks) as client:
            stock = await client.get(f"{upstream_url}/stock?token=t0k3n")
        return JSONResponse({"upstreamSaw": stock.json()["headers"]})

    service = EventTrailMiddleware(
        Starlette(routes=[Route("/orders/{id}", order)]),
        publisher,
        service="Orders",
        source="Orders",
        recording=Recording(request_headers=["authorization"]),
    )
    with GatewayServer(service, publisher=publisher) as server:
        answer = httpx.get(
            f"{server.url}/orders/7?x=1",
            headers={"X-Request-Id": "flow-1", "Authorization": "Basic c2VjcmV0"},
        )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "flow-1"
    assert ["x-request-id", "flow-1"] in answer.json()["upstreamSaw"]
    events = queued_events(tmp_path / "queue.db")
    assert [(e.request_id, e.type, e.data["Name"], e.source) for e in events] == [
        ("flow-1", REQUEST, "Orders", "Orders"),
        ("flow-1", REQUEST, "Echo", "Orders"),
        ("flow-1", RESPONSE, "Echo", "Orders"),
        ("flow-1", RESPONSE, "Orders", "Orders"),
    ]
    incoming, outgoing, outgoing_done, incoming_done = events
    assert incoming.data["path"] == "/orders/7"
    assert incoming.data["query"] == "x=1"
    assert incoming.data["requestHeaders"] == {"authorization": "[redacted]"}
    assert outgoing.data["path"] == "/stock"
    assert outgoing.data["query"] == "token=[redacted]"
    assert outgoing_done.data["status"] == 200
    assert outgoing_done.data["callId"] == outgoing.data["callId"]
    assert incoming_done.data["status"] == 200
    assert incoming_done.data["bytesOut"] == len(answer.content)


def test_the_httpx_hooks_record_a_refused_call_reported_to_failed(tmp_path: Path) -> None:
    publisher = Publisher(SQLiteQueue(tmp_path / "queue.db")).start()
    hooks = HttpxHooks(publisher)
    request_sent: list[httpx.Request] = []
    with httpx.Client(event_hooks=hooks.event_hooks) as client:
        request = client.build_request("GET", f"http://127.0.0.1:{free_port()}/x")
        try:
            client.send(request)
        except httpx.ConnectError as error:
            hooks.failed(request, error)
            request_sent.append(request)
    publisher.close()
    assert request_sent
    request_event, failure = queued_events(tmp_path / "queue.db")
    assert (request_event.type, request_event.data["Name"]) == (REQUEST, "127.0.0.1")
    assert (failure.type, failure.data["error"], failure.request_id) == (
        ERROR,
        "refused",
        request_event.request_id,
    )
