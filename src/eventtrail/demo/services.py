"""The demo's two microservices, as small Starlette apps.

Microservice A (orders) answers in about 12 ms and never fails. Microservice
B (stock and prices) takes about 120 ms, answers 500 or 503 to a quarter of
its calls, and hangs on one in twenty for longer than the gateway waits, so
the gateway records a timeout. Both echo the request id they were given, the
way a service that joins the gateway's flow would.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from eventtrail.demo.flows import SERVICE_A, SERVICE_B

__all__ = ["FAULTY", "HEALTHY", "Behaviour", "orders_service", "stock_service"]


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a demo service answers."""

    median_ms: float
    """Median latency; latencies are log-normal around it."""
    spread: float
    """Sigma of the log-normal: 0.3 is steady, 0.6 has a long tail."""
    error_rate: float = 0.0
    """Share of calls answered 500 or 503."""
    hang_rate: float = 0.0
    """Share of calls that hang for ``hang_seconds`` before answering."""
    hang_seconds: float = 3.0

    def __post_init__(self) -> None:
        if not 0 <= self.error_rate + self.hang_rate <= 1:
            raise ValueError("error_rate + hang_rate must be between 0 and 1")


HEALTHY = Behaviour(median_ms=12, spread=0.3)
FAULTY = Behaviour(median_ms=120, spread=0.5, error_rate=0.25, hang_rate=0.05)


class _Answering:
    """Draws each call's fate, then waits and answers accordingly."""

    def __init__(self, service: str, behaviour: Behaviour, rng: random.Random) -> None:
        self.service = service
        self.behaviour = behaviour
        self.rng = rng
        self._mu = math.log(behaviour.median_ms / 1000)

    async def answer(self, request: Request, body: dict[str, object], status: int = 200) -> JSONResponse:
        behaviour = self.behaviour
        roll = self.rng.random()
        delay = self.rng.lognormvariate(self._mu, behaviour.spread)
        if roll < behaviour.hang_rate:
            delay += behaviour.hang_seconds
        await asyncio.sleep(delay)
        request_id = request.headers.get("x-request-id")
        if roll < behaviour.hang_rate + behaviour.error_rate:
            status = self.rng.choice([500, 503])
            body = {"error": "internal error" if status == 500 else "unavailable, try again later"}
        return JSONResponse({"service": self.service, "requestId": request_id, **body}, status_code=status)


def _path_int(request: Request, name: str) -> int:
    value: int = request.path_params[name]
    return value


def orders_service(behaviour: Behaviour = HEALTHY, *, seed: int | None = None) -> Starlette:
    """Microservice A: ``GET /orders``, ``GET /orders/{id}``, ``POST /orders``."""
    answering = _Answering(SERVICE_A, behaviour, random.Random(seed))

    async def list_orders(request: Request) -> JSONResponse:
        return await answering.answer(request, {"orders": [1, 2, 3]})

    async def get_order(request: Request) -> JSONResponse:
        order = _path_int(request, "order")
        return await answering.answer(request, {"order": order, "items": order % 5 + 1})

    async def create_order(request: Request) -> JSONResponse:
        received = len(await request.body())
        order = answering.rng.randint(1000, 9999)
        return await answering.answer(request, {"order": order, "bytes": received}, status=201)

    return Starlette(
        routes=[
            Route("/orders", list_orders, methods=["GET"]),
            Route("/orders", create_order, methods=["POST"]),
            Route("/orders/{order:int}", get_order, methods=["GET"]),
        ]
    )


def stock_service(behaviour: Behaviour = FAULTY, *, seed: int | None = None) -> Starlette:
    """Microservice B: ``GET /stock/{id}``, ``PUT /stock/{id}``, ``GET /prices``."""
    answering = _Answering(SERVICE_B, behaviour, random.Random(seed))

    async def get_stock(request: Request) -> JSONResponse:
        item = _path_int(request, "item")
        return await answering.answer(request, {"item": item, "inStock": item % 7})

    async def put_stock(request: Request) -> JSONResponse:
        await request.body()
        return await answering.answer(request, {"item": _path_int(request, "item"), "updated": True})

    async def prices(request: Request) -> JSONResponse:
        return await answering.answer(request, {"currency": "EUR", "prices": {"1": 9.5, "2": 12.0}})

    return Starlette(
        routes=[
            Route("/stock/{item:int}", get_stock, methods=["GET"]),
            Route("/stock/{item:int}", put_stock, methods=["PUT"]),
            Route("/prices", prices, methods=["GET"]),
        ]
    )
