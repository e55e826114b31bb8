"""Retrying what may pass: one policy type, one loop, for every layer.

Each layer that retries (the DynamoDB store, the SQS queue, the consumer
core, the worker's queue calls) holds a :class:`Backoff` and calls
:meth:`Backoff.run` or iterates :meth:`Backoff.delays`; none writes its own
loop. Layers multiply: a call retried by botocore (``total_max_attempts``) inside a store
retry inside a consumer retry costs the product of the three, so each layer's
budget is written beside it and summed up in ``docs/retries.md``.

Delays are exponential with full jitter (AWS Architecture Blog, "Exponential
Backoff And Jitter"): ``uniform(0, min(cap, base * 2**n))``. Full jitter
spreads the retries of many clients that failed together, which is what
throttling produces.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["Backoff", "RetriesExhausted"]

T = TypeVar("T")


class RetriesExhausted(Exception):
    """Every attempt failed; ``last`` is the final failure."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(f"failed after {attempts} attempts: {last}")


@dataclass(frozen=True, slots=True)
class Backoff:
    """At most ``attempts`` tries, sleeping a jittered, doubling, capped delay
    between two of them.

    ``attempts=None`` retries for ever (a worker waiting for its queue to come
    back); ``sleep`` is what waits (a test passes a recorder, a worker passes
    ``stop_event.wait`` so that a stop request cuts the wait short: when it
    returns true, the loop stops).
    """

    attempts: int | None = 4
    base: float = 0.05
    cap: float = 2.0
    jitter: bool = True
    sleep: Callable[[float], object] = field(default=time.sleep, compare=False)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        ceiling = min(self.cap, self.base * 2 ** min(retry - 1, 62))
        return random.uniform(0, ceiling) if self.jitter else ceiling

    def delays(self) -> Iterator[int]:
        """Yield the attempt numbers (1, 2, ...), sleeping before each one but
        the first. Stops after ``attempts``, or when ``sleep`` returns true."""
        attempt = 1
        while True:
            yield attempt
            if self.attempts is not None and attempt >= self.attempts:
                return
            if self.sleep(self.delay(attempt)) is True:
                return
            attempt += 1

    def run(self, call: Callable[[], T], *, retry_on: tuple[type[BaseException], ...]) -> T:
        """Return ``call()``'s result, retrying on ``retry_on``; raise
        :class:`RetriesExhausted` (chained to the last failure) when every
        attempt failed. Any other exception passes through at once."""
        last: BaseException | None = None
        tried = 0
        for tried in self.delays():  # noqa: B007 - `tried` is read after the loop
            try:
                return call()
            except retry_on as error:
                last = error
        assert last is not None
        raise RetriesExhausted(tried, last) from last
