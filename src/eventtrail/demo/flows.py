"""Simulated demo traffic: the events of a gateway calling two microservices,
made up without running any server.

Microservice A is healthy; Microservice B is slower and fails part of the
time, so that the faulty one stands out in the flows and in service health.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from eventtrail.calls import call_error, call_request, call_response
from eventtrail.event import Event
from eventtrail.ids import uuid7_str
from eventtrail.store import format_moment

__all__ = ["SERVICE_A", "SERVICE_B", "demo_flows"]

SERVICE_A = "Microservice A"
SERVICE_B = "Microservice B"

_ROUTES = {
    SERVICE_A: [("GET", "/orders/{n}"), ("GET", "/orders"), ("POST", "/orders")],
    SERVICE_B: [("GET", "/stock/{n}"), ("PUT", "/stock/{n}"), ("GET", "/prices")],
}


def _call(rng: random.Random, request_id: str, service: str, start: datetime) -> tuple[list[Event], datetime]:
    """One call's events, and when it ended."""
    call_id = uuid7_str()
    method, path = rng.choice(_ROUTES[service])
    path = path.format(n=rng.randint(1, 999))
    request = call_request(request_id, call_id, service, method, path, timestamp=format_moment(start))
    if service == SERVICE_A:
        latency = rng.lognormvariate(3.0, 0.3)  # about 20 ms
        failure = rng.random() < 0.01
    else:
        latency = rng.lognormvariate(5.3, 0.5)  # about 200 ms, long tail
        failure = rng.random() < 0.2
    end = start + timedelta(milliseconds=latency)
    stamp = format_moment(end)
    if failure and rng.random() < 0.4:
        kind = rng.choice(["timeout", "refused"])
        if kind == "timeout":
            end = start + timedelta(seconds=2)
            stamp, latency = format_moment(end), 2000.0
        return [
            request,
            call_error(request_id, call_id, service, error=kind, elapsed_ms=latency, timestamp=stamp),
        ], end
    status = rng.choice([500, 502, 503]) if failure else (201 if method == "POST" else 200)
    body_out = rng.randint(40, 4000) if status < 500 else rng.randint(20, 80)
    response = call_response(
        request_id,
        call_id,
        service,
        status=status,
        latency_ms=latency,
        bytes_in=rng.randint(0, 400) if method != "GET" else 0,
        bytes_out=body_out,
        timestamp=stamp,
    )
    return [request, response], end


def demo_flows(
    count: int, *, start: datetime | None = None, seed: int | None = None, spacing_ms: float = 50.0
) -> Iterator[list[Event]]:
    """``count`` requests, each a list of events: the gateway calls A, then B
    (and sometimes A again), one call after the other."""
    rng = random.Random(seed)
    moment = start or datetime.now(UTC) - timedelta(milliseconds=spacing_ms * count)
    for _ in range(count):
        request_id = uuid7_str()
        events: list[Event] = []
        at = moment
        services = [SERVICE_A, SERVICE_B] + ([SERVICE_A] if rng.random() < 0.3 else [])
        for service in services:
            call_events, at = _call(
                rng, request_id, service, at + timedelta(milliseconds=rng.uniform(0.2, 2))
            )
            events.extend(call_events)
        yield events
        moment += timedelta(milliseconds=rng.expovariate(1 / spacing_ms))
