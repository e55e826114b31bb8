"""Demo traffic through the gateway: users placing and looking up orders.

Each demo request is one user action with its own request id: look up an
order on Microservice A, check its stock on Microservice B, and now and then
place an order on A. All of its calls carry the same ``X-Request-Id``, so the
gateway's events for them form one flow.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from eventtrail.ids import uuid7_str

__all__ = ["TrafficCounts", "send_traffic"]


@dataclass(slots=True)
class TrafficCounts:
    """What the traffic did so far (one writer: the traffic's event loop)."""

    requests: int = 0
    """Demo requests finished (each is two or three calls)."""
    calls: int = 0
    failed: int = 0
    """Calls answered 5xx, or not answered at all."""


def _calls(rng: random.Random) -> list[tuple[str, str]]:
    order = rng.randint(1, 999)
    calls = [("GET", f"/a/orders/{order}"), ("GET", f"/b/stock/{order}")]
    if rng.random() < 0.3:
        calls.append(("POST", "/a/orders"))
    elif rng.random() < 0.2:
        calls.append(("GET", "/b/prices"))
    return calls


async def _one_request(
    session: aiohttp.ClientSession, base_url: str, rng: random.Random, counts: TrafficCounts
) -> None:
    headers = {"X-Request-Id": uuid7_str()}
    for method, path in _calls(rng):
        body = b'{"items": [1, 2]}' if method == "POST" else None
        counts.calls += 1
        try:
            async with session.request(method, base_url + path, data=body, headers=headers) as response:
                await response.read()
                failed = response.status >= 500
        except (aiohttp.ClientError, TimeoutError):
            failed = True
        counts.failed += failed
    counts.requests += 1


async def send_traffic(
    base_url: str,
    *,
    rate: float,
    seconds: float | None,
    counts: TrafficCounts | None = None,
    on_tick: Callable[[TrafficCounts], None] | None = None,
    concurrency: int = 64,
    seed: int | None = None,
) -> TrafficCounts:
    """Start ``rate`` demo requests a second on ``base_url`` (the gateway),
    for ``seconds`` (``None``: until cancelled), then wait for those in flight.

    ``on_tick`` gets the counts about ten times a second. At most
    ``concurrency`` requests are in flight; past that the rate drops rather
    than the requests piling up.
    """
    counts = counts if counts is not None else TrafficCounts()
    rng = random.Random(seed)
    slots = asyncio.Semaphore(concurrency)
    in_flight: set[asyncio.Task[None]] = set()
    interval = 1 / rate
    timeout = aiohttp.ClientTimeout(total=30)

    async def run_one(session: aiohttp.ClientSession) -> None:
        try:
            await _one_request(session, base_url, rng, counts)
        finally:
            slots.release()

    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.monotonic()
        due = start
        last_tick = 0.0
        try:
            while seconds is None or time.monotonic() - start < seconds:
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                due += interval
                await slots.acquire()
                task = asyncio.create_task(run_one(session))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                if on_tick is not None and time.monotonic() - last_tick >= 0.1:
                    last_tick = time.monotonic()
                    on_tick(counts)
            if in_flight:
                await asyncio.wait(in_flight)
        finally:
            for task in in_flight:
                task.cancel()
    if on_tick is not None:
        on_tick(counts)
    return counts
