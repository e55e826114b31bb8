"""The demo's two microservices, as real HTTP services.

Microservice A answers quickly and correctly. Microservice B is slow and
fails part of the time (5xx answers, and now and then no answer before the
gateway's timeout), so that service health has a faulty service to find.
"""

from __future__ import annotations

import asyncio
import random

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["service_a", "service_b"]


def service_a(*, seed: int | None = None) -> Starlette:
    """Orders: about 10 ms, always 200 (201 for a POST)."""
    rng = random.Random(seed)

    async def orders(request: Request) -> Response:
        await asyncio.sleep(rng.uniform(0.004, 0.02))
        body = await request.body()
        status = 201 if request.method == "POST" else 200
        return JSONResponse(
            {
                "service": "A",
                "path": request.url.path,
                "received": len(body),
                "items": list(range(rng.randint(1, 20))),
            },
            status_code=status,
        )

    return Starlette(routes=[Route("/{path:path}", orders, methods=["GET", "POST", "PUT", "DELETE"])])


def service_b(
    *, seed: int | None = None, failure_rate: float = 0.25, hang_rate: float = 0.05, hang_seconds: float = 3.0
) -> Starlette:
    """Stock: about 200 ms with a long tail; ``failure_rate`` of the answers
    are 5xx and ``hang_rate`` of the requests hang for ``hang_seconds``."""
    rng = random.Random(seed)

    async def stock(request: Request) -> Response:
        draw = rng.random()
        if draw < hang_rate:
            await asyncio.sleep(hang_seconds)
        await asyncio.sleep(min(rng.lognormvariate(-1.7, 0.5), 1.5))
        if draw < hang_rate + failure_rate:
            return JSONResponse(
                {"error": "stock database unavailable"}, status_code=rng.choice([500, 502, 503])
            )
        return JSONResponse({"service": "B", "path": request.url.path, "inStock": rng.randint(0, 100)})

    return Starlette(routes=[Route("/{path:path}", stock, methods=["GET", "POST", "PUT", "DELETE"])])
