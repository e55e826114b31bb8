"""Publishing events off the request path.

The request path only appends a call record (:mod:`eventtrail.gateway.records`)
to a bounded in-memory buffer (a deque append: no lock, no I/O, no
encoding). One background thread takes batches from it and sends them to the
queue, which makes the records into event bodies itself when it runs in a
process of its own, else the thread does. When a send fails,
the batch goes to the durable spill file instead and the queue is tried again
later (backing off); once it answers, the spill file is emptied into it
before anything newer. What neither the buffer nor the spill file can take is
counted as dropped and logged, never lost silently.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from eventtrail.event import Event
from eventtrail.gateway.records import (
    EncodingSink,
    Record,
    RecordSink,
    UnsentRecords,
    bodies_of,
    encoded,
)
from eventtrail.gateway.spill import SpillError, SpillFile
from eventtrail.queue import Queue

__all__ = ["Publisher", "PublisherCounts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublisherCounts:
    """A snapshot of what the publisher did since it started."""

    published: int
    buffered: int
    sent: int
    spilled: int
    spill_pending: int
    dropped: int
    queue_errors: int
    spill_errors: int


class Publisher:
    """Buffers events and sends them in batches from a background thread.

    Call :meth:`start` once, :meth:`publish` from anywhere (it never blocks),
    and :meth:`close` to flush: it sends what is buffered, or spills it if the
    queue is down, within ``close_timeout`` seconds, then closes the queue
    and the spill file (the publisher owns them).
    """

    def __init__(
        self,
        queue: Queue,
        spill: SpillFile | None = None,
        *,
        buffer_size: int = 100_000,
        batch_size: int = 200,
        flush_interval: float = 0.05,
        retry_interval: float = 1.0,
        max_retry_interval: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.spill = spill
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self._clock = clock
        self._buffer: collections.deque[Record] = collections.deque()
        # Where records become bodies: in the queue's own process if it has one.
        self._sink: RecordSink = queue if isinstance(queue, RecordSink) else EncodingSink(queue)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Each counter has one writer: `published`/`dropped_full` the
        # publishing thread, the others the sender thread.
        self._published = 0
        self._dropped_full = 0
        self._dropped_unkept = 0
        self._sent = 0
        self._spilled = 0
        self._queue_errors = 0
        self._spill_errors = 0
        self._queue_down_until: float | None = None
        self._backoff = retry_interval
        self._last_drop_log = 0.0

    # -- the request path ---------------------------------------------------

    def publish(self, event: Event) -> None:
        """Hand ``event`` over; never blocks, never raises."""
        self.publish_record(encoded(event))

    def publish_record(self, record: Record) -> None:
        """Hand a call record over (see :class:`~eventtrail.gateway.recorder.CallRecorder`)."""
        if len(self._buffer) >= self.buffer_size:
            self._dropped_full += 1
            return
        self._buffer.append(record)
        self._published += 1
        if len(self._buffer) == self.batch_size:
            self._wake.set()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Publisher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="eventtrail-publisher", daemon=True)
            self._thread.start()
        return self

    def close(self, close_timeout: float = 10.0) -> PublisherCounts:
        """Stop after flushing the buffer; return the final counts."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(close_timeout)
            if self._thread.is_alive():
                log.error("the publisher did not finish flushing within %.0fs", close_timeout)
        else:
            self._flush_all()
        counts = self.counts()
        self.queue.close()
        if self.spill is not None:
            self.spill.close()
        if counts.buffered or counts.dropped:
            log.error(
                "publisher closed with %d events unsent and %d dropped", counts.buffered, counts.dropped
            )
        return counts

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def counts(self) -> PublisherCounts:
        return PublisherCounts(
            published=self._published,
            buffered=len(self._buffer),
            sent=self._sent,
            spilled=self._spilled,
            spill_pending=self.spill.pending if self.spill is not None else 0,
            dropped=self._dropped_full + self._dropped_unkept,
            queue_errors=self._queue_errors,
            spill_errors=self._spill_errors,
        )

    # -- the sender thread --------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._send_round(final=False)
        self._flush_all()

    def _flush_all(self) -> None:
        # Final flush: one more chance for the queue, however recent its failure.
        self._queue_down_until = None
        while self._buffer:
            before = len(self._buffer)
            self._send_round(final=True)
            if len(self._buffer) >= before:
                break
        if self._spill_pending() and self._queue_is_up():
            self._drain_spill(final=True)

    def _take(self) -> list[Record]:
        batch: list[Record] = []
        buffer = self._buffer
        while buffer and len(batch) < self.batch_size:
            batch.append(buffer.popleft())
        return batch

    def _send_round(self, *, final: bool) -> None:
        if self._spill_pending() and self._queue_is_up():
            self._drain_spill(final=final)
        while self._buffer:
            records = self._take()
            if self._spill_pending() or not self._queue_is_up():
                self._keep(bodies_of(records))
            else:
                self._send_or_keep(records)
            if not final and len(self._buffer) < self.batch_size:
                break

    def _queue_is_up(self) -> bool:
        return self._queue_down_until is None or self._clock() >= self._queue_down_until

    def _spill_pending(self) -> bool:
        return self.spill is not None and self.spill.pending > 0

    def _send(self, bodies: list[str]) -> bool:
        try:
            self.queue.send(bodies)
        except Exception as error:  # noqa: BLE001 - any adapter failure means "queue down"
            self._queue_failed(error)
            return False
        self._queue_answered()
        return True

    def _queue_failed(self, error: Exception) -> None:
        self._queue_errors += 1
        self._queue_down_until = self._clock() + self._backoff
        log.warning("queue send failed (%s); retrying in %.1fs", error, self._backoff)
        self._backoff = min(self._backoff * 2, self.max_retry_interval)

    def _queue_answered(self) -> None:
        self._queue_down_until = None
        self._backoff = self.retry_interval

    def _send_or_keep(self, records: list[Record]) -> None:
        try:
            self._sink.send_records(records)
        except Exception as error:  # noqa: BLE001 - any adapter failure means "queue down"
            self._queue_failed(error)
            # The bodies were made where the records went, unless that failed too.
            self._keep(error.bodies if isinstance(error, UnsentRecords) else bodies_of(records))
        else:
            self._queue_answered()
            self._sent += len(records)

    def _keep(self, bodies: list[str]) -> None:
        """Spill ``bodies``; count them as dropped if even that fails."""
        if self.spill is not None:
            try:
                self.spill.append(bodies)
            except SpillError as error:
                self._spill_errors += 1
                self._drop(len(bodies), str(error))
            else:
                self._spilled += len(bodies)
            return
        self._drop(len(bodies), "the queue is down and there is no spill file")

    def _drop(self, count: int, reason: str) -> None:
        self._dropped_unkept += count
        now = self._clock()
        if now - self._last_drop_log >= 5.0:
            self._last_drop_log = now
            log.error("%d events dropped: %s (%d dropped so far)", count, reason, self._dropped_unkept)

    def _drain_spill(self, *, final: bool) -> None:
        assert self.spill is not None
        while self.spill.pending:
            try:
                mark, bodies = self.spill.oldest(self.batch_size)
            except SpillError as error:
                self._spill_errors += 1
                log.error("%s", error)
                return
            if not bodies:
                return
            if not self._send(bodies):
                return
            self._sent += len(bodies)
            try:
                self.spill.remove(mark)
            except SpillError as error:
                # They reached the queue: sending them again later is harmless
                # (the store keeps one copy), and better than losing them.
                self._spill_errors += 1
                log.error("%s", error)
                return
            if not final and self._buffer and len(self._buffer) >= self.batch_size:
                return
