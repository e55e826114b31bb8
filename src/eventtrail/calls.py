"""The gateway's events: one upstream call as a request event, then a response
or an error event.

This is the vocabulary shared by everything that produces calls (the gateway,
the ASGI middleware, the httpx hook, the demo) and everything that reads them
(flows, the waterfall, service health). Every event of one call carries the
same ``callId``, so a request that calls one service twice stays readable.
"""

from __future__ import annotations

import time
from typing import Any

from eventtrail.event import Event
from eventtrail.ids import uuid7_str
from eventtrail.times import format_unix_ns

__all__ = [
    "DISCONNECTED",
    "ERROR",
    "GATEWAY",
    "REQUEST",
    "RESPONSE",
    "call_error",
    "call_request",
    "call_response",
    "error_data",
    "request_data",
    "response_data",
    "service_of",
]

REQUEST = "MICROSERVICE_REQUEST"
RESPONSE = "MICROSERVICE_RESPONSE"
ERROR = "MICROSERVICE_ERROR"
GATEWAY = "Gateway"

#: The kinds of ``MICROSERVICE_ERROR`` that are the service's failures.
ERROR_KINDS = ("timeout", "refused", "reset", "error")
#: The kind of ``MICROSERVICE_ERROR`` of a call whose client left before it
#: was answered (nginx logs 499): recorded and timed, but not a failure of the
#: service (a 4xx of the client's, as nginx's exporters count it).
DISCONNECTED = "disconnected"


def _now() -> str:
    return format_unix_ns(time.time_ns())


def _event(
    type_: str,
    request_id: str,
    data: dict[str, Any],
    source: str,
    timestamp: str | None,
    event_id: str | None,
) -> Event:
    return Event(
        id=event_id or uuid7_str(),
        request_id=request_id,
        timestamp=timestamp or _now(),
        type=type_,
        source=source,
        data=data,
    )


def call_request(
    request_id: str,
    call_id: str,
    service: str,
    method: str,
    path: str,
    *,
    source: str = GATEWAY,
    timestamp: str | None = None,
    event_id: str | None = None,
    **extra: Any,
) -> Event:
    """Before the call. ``Name`` keeps the reference article's field.

    ``event_id``: for producers that derive ids from what they read (a log
    line, a span), so that reading it twice stores one event; default a new
    UUIDv7."""
    data = request_data(service, call_id, method, path, extra)
    return _event(REQUEST, request_id, data, source, timestamp, event_id)


def call_response(
    request_id: str,
    call_id: str,
    service: str,
    *,
    status: int,
    latency_ms: float,
    bytes_in: int,
    bytes_out: int,
    source: str = GATEWAY,
    timestamp: str | None = None,
    event_id: str | None = None,
    **extra: Any,
) -> Event:
    """After the call returned a response (of any status)."""
    data = response_data(service, call_id, status, latency_ms, bytes_in, bytes_out, extra)
    return _event(RESPONSE, request_id, data, source, timestamp, event_id)


def call_error(
    request_id: str,
    call_id: str,
    service: str,
    *,
    error: str,
    elapsed_ms: float,
    detail: str = "",
    source: str = GATEWAY,
    timestamp: str | None = None,
    event_id: str | None = None,
    **extra: Any,
) -> Event:
    """The call ended without a response: ``error`` is one of ERROR_KINDS,
    or DISCONNECTED when its client left first."""
    data = error_data(service, call_id, error, elapsed_ms, detail, extra)
    return _event(ERROR, request_id, data, source, timestamp, event_id)


# The ``data`` of each kind of event, for those who build events without the
# helpers above (the gateway's call records).


def request_data(
    service: str, call_id: str, method: str, path: str, extra: dict[str, Any] | None
) -> dict[str, Any]:
    data = {"Name": service, "callId": call_id, "method": method, "path": path}
    return data | extra if extra else data


def response_data(
    service: str,
    call_id: str,
    status: int,
    latency_ms: float,
    bytes_in: int,
    bytes_out: int,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    data = {
        "Name": service,
        "callId": call_id,
        "status": status,
        "latencyMs": round(latency_ms, 3),
        "bytesIn": bytes_in,
        "bytesOut": bytes_out,
    }
    return data | extra if extra else data


def error_data(
    service: str, call_id: str, error: str, elapsed_ms: float, detail: str, extra: dict[str, Any] | None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "Name": service,
        "callId": call_id,
        "error": error,
        "elapsedMs": round(elapsed_ms, 3),
    }
    if extra:
        data |= extra
    if detail:
        data["detail"] = detail
    return data


def service_of(event: Event) -> str | None:
    """The service a call event is about (``Name``, as in the article)."""
    name = event.data.get("Name")
    return name if isinstance(name, str) else None
