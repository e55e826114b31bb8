"""The local worker: polls a queue and hands each batch to the consumer core.

It does for any queue what Lambda's SQS event source mapping does for the
Lambda handler: receive a batch, process it, delete what succeeded, dead-letter
what never can, and let the rest come back after a delay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from eventtrail.consumer import Consumer, Record, Verdict
from eventtrail.queue import Message, Queue

if TYPE_CHECKING:
    from eventtrail.config import Settings
    from eventtrail.store import Store

__all__ = ["BatchReport", "Worker"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchReport:
    """What happened to the messages of one batch (or, summed, of a run)."""

    received: int = 0
    stored: int = 0
    retried: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: BatchReport) -> None:
        self.received += other.received
        self.stored += other.stored
        self.retried += other.retried
        self.dead_lettered += other.dead_lettered
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count


def retry_delay(receive_count: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds before a failed message is tried again: doubling, capped."""
    return float(min(cap, base * 2 ** (receive_count - 1)))


class Worker:
    def __init__(
        self,
        queue: Queue,
        consumer: Consumer,
        *,
        batch_size: int = 1000,
        visibility_timeout: float = 30.0,
        wait_seconds: float = 1.0,
        retry_base: float = 1.0,
    ) -> None:
        self.queue = queue
        self.consumer = consumer
        self.batch_size = batch_size
        self.visibility_timeout = visibility_timeout
        self.wait_seconds = wait_seconds
        self.retry_base = retry_base

    @classmethod
    def configured(cls, queue: Queue, store: Store, settings: Settings, *, wait_seconds: float = 1.0) -> Self:
        """A worker storing into ``store`` with the batch size, visibility
        timeout and message size limit of ``settings``."""
        return cls(
            queue,
            Consumer(store, max_body_bytes=settings.max_body_bytes),
            batch_size=settings.batch_size,
            visibility_timeout=settings.visibility_timeout,
            wait_seconds=wait_seconds,
        )

    def process(self, messages: list[Message]) -> BatchReport:
        """Process one received batch and settle every message with the queue."""
        report = BatchReport(received=len(messages))
        outcomes = self.consumer.process([Record(m.id, m.body) for m in messages])
        done: list[Message] = []
        retry: dict[tuple[float, str], list[Message]] = {}
        for message, outcome in zip(messages, outcomes, strict=True):
            reason = outcome.reason or ""
            if outcome.verdict is Verdict.SUCCESS:
                done.append(message)
                report.stored += 1
                continue
            report.reasons[reason] = report.reasons.get(reason, 0) + 1
            if outcome.verdict is Verdict.DEAD_LETTER:
                log.warning("message %s dead-lettered: %s", message.id, reason)
                self.queue.dead_letter(message, reason)
                report.dead_lettered += 1
            else:
                delay = retry_delay(message.receive_count, base=self.retry_base)
                retry.setdefault((delay, reason), []).append(message)
                report.retried += 1
        if done:
            self.queue.ack(done)
        for (delay, reason), failed in retry.items():
            log.warning("%d messages to retry in %.0fs: %s", len(failed), delay, reason)
            self.queue.release(failed, delay=delay, error=reason)
        return report

    def _receive(self, drain: bool) -> list[Message]:
        return self.queue.receive(
            self.batch_size,
            visibility_timeout=self.visibility_timeout,
            wait_seconds=0.0 if drain else self.wait_seconds,
        )

    def run(
        self,
        *,
        drain: bool = False,
        stop: threading.Event | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> BatchReport:
        """Poll until ``stop`` is set or, with ``drain``, until the queue has
        nothing left to process (dead letters aside).

        The next batch is received while the current one is stored (the queue
        and the store release the GIL while they wait on I/O). When ``stop``
        is set, the batch in progress is finished and the one received ahead
        is released at once, so no message waits out a visibility timeout.
        """
        stop = stop or threading.Event()
        total = BatchReport()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventtrail-receive") as prefetch:
            upcoming = prefetch.submit(self._receive, drain)
            while True:
                messages = upcoming.result()
                if stop.is_set():
                    if messages:
                        self.queue.release(messages, delay=0, error="worker stopped before processing it")
                    break
                if not messages:
                    if drain and self.queue.stats().pending == 0:
                        break
                    # Nothing visible: wait for delayed or in-flight messages.
                    stop.wait(0.2 if drain else 0.0)
                    upcoming = prefetch.submit(self._receive, drain)
                    continue
                upcoming = prefetch.submit(self._receive, drain)
                report = self.process(messages)
                log.info(
                    "batch of %d: %d stored, %d to retry, %d dead-lettered",
                    report.received,
                    report.stored,
                    report.retried,
                    report.dead_lettered,
                )
                total.add(report)
                if on_batch:
                    on_batch(report)
        return total
