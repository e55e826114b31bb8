"""The local worker: polls a queue and hands each batch to the consumer core.

It does for any queue what Lambda's SQS event source mapping does for the
Lambda handler: receive a batch, process it, delete what succeeded, dead-letter
what never can, and let the rest come back after a delay.

A fault never stops it for good. A queue call that fails in a way that may
pass (:class:`TransientQueueError`: locked, disk full, throttled, unreachable)
is retried with capped backoff until it succeeds or the worker is asked to
stop; so is a batch whose store stays unavailable past the consumer's own
retries (:class:`TransientStoreError`), without spending the messages'
receive counts. Each change of :class:`WorkerState` is logged once. A store
that can never work (a corrupt file) stops the worker with that error, and its
messages go back to the queue untouched, never to the dead letters.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar

from eventtrail.consumer import Consumer, Outcome, Record, Verdict
from eventtrail.event import Event
from eventtrail.queue import Message, Queue, QueueError, TransientQueueError
from eventtrail.retry import Backoff
from eventtrail.store import AppendResult, Position, Store, StoreError, TransientStoreError

if TYPE_CHECKING:
    from eventtrail.config import Settings

__all__ = ["BatchReport", "Worker", "WorkerState", "open_patiently"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How the worker waits for a queue or store to come back: for ever, the
#: delay doubling from 0.2 s up to 10 s (jittered), so that it notices the
#: end of an outage within seconds without hammering a throttled service.
WAIT_BACKOFF = Backoff(attempts=None, base=0.2, cap=10.0)


class WorkerState(enum.StrEnum):
    RUNNING = "running"
    QUEUE_UNAVAILABLE = "queue unavailable"
    STORE_UNAVAILABLE = "store unavailable"


class _Stopped(Exception):
    """A stop was requested while waiting for the queue or the store."""


def open_patiently(
    open_: Callable[[], T], stop: threading.Event, *, backoff: Backoff = WAIT_BACKOFF
) -> T | None:
    """``open_()``, retried while it fails in a way that may pass (a locked
    file, a full disk, an unreachable service), so that a worker started
    during an outage starts when it ends; ``None`` if ``stop`` is set first."""
    failures: list[BaseException] = []

    def wait(delay: float) -> bool:
        if len(failures) == 1:
            log.warning("cannot start yet (%s); retrying in %.1fs, then with backoff", failures[0], delay)
        return stop.wait(delay)

    for _ in dataclasses.replace(backoff, attempts=None, sleep=wait).delays():
        try:
            opened = open_()
        except (TransientQueueError, TransientStoreError) as error:
            failures.append(error)
            del failures[1:-1]
            continue
        if failures:
            log.warning("started after waiting: %s", failures[-1])
        return opened
    return None


@dataclass(slots=True)
class BatchReport:
    """What happened to the messages of one batch (or, summed, of a run).

    ``dead_lettered`` includes the messages that a receive moved to the dead
    letters because they had been received ``max_receives`` times.
    """

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


class _WatchedStore(Store):
    """The consumer's store, passed through, remembering how the last append
    failed: the consumer turns a store exception into per-message verdicts,
    and the worker must tell an outage (wait) from a broken store (stop)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failure: StoreError | None = None

    def append(self, events: Sequence[Event]) -> list[AppendResult]:
        try:
            results = self.inner.append(events)
        except StoreError as error:
            self.failure = error
            raise
        self.failure = None
        return results

    def flow(self, request_id: str) -> list[Event]:
        return self.inner.flow(request_id)

    def _events(
        self,
        kind: str,
        value: str,
        *,
        since: str | None,
        until: str | None,
        after: Position | None,
        limit: int,
        newest_first: bool,
    ) -> list[Event]:
        return self.inner._events(
            kind, value, since=since, until=until, after=after, limit=limit, newest_first=newest_first
        )

    def event_fields(
        self, type: str, keys: Sequence[str], *, since: datetime, until: datetime
    ) -> list[tuple[Any, ...]]:
        return self.inner.event_fields(type, keys, since=since, until=until)

    def purge(self, older_than: datetime) -> int:
        return self.inner.purge(older_than)

    def close(self) -> None:
        self.inner.close()


class Worker:
    """Polls ``queue`` and stores each batch through ``consumer``.

    ``state`` says whether it is running or waiting for its queue or store;
    ``on_state`` is called on each change (from the worker's threads).
    ``backoff`` paces those waits (its ``attempts`` and ``sleep`` are
    ignored: a worker waits until the fault passes or it is stopped).
    """

    def __init__(
        self,
        queue: Queue,
        consumer: Consumer,
        *,
        batch_size: int = 1000,
        visibility_timeout: float = 30.0,
        wait_seconds: float = 1.0,
        retry_base: float = 1.0,
        backoff: Backoff = WAIT_BACKOFF,
        on_state: Callable[[WorkerState], None] | None = None,
    ) -> None:
        self.queue = queue
        self.consumer = consumer
        self.batch_size = batch_size
        self.visibility_timeout = visibility_timeout
        self.wait_seconds = wait_seconds
        self.retry_base = retry_base
        self.backoff = backoff
        self.on_state = on_state
        self.state = WorkerState.RUNNING
        self._state_lock = threading.Lock()
        self._unavailable_since = 0.0
        # Watch the store through the consumer's own reference, so that any
        # consumer given to the worker reports its store's failures.
        self._store = _WatchedStore(consumer.store)
        consumer.store = self._store

    @classmethod
    def configured(
        cls,
        queue: Queue,
        store: Store,
        settings: Settings,
        *,
        wait_seconds: float = 1.0,
        on_state: Callable[[WorkerState], None] | None = None,
    ) -> Self:
        """A worker storing into ``store`` with the batch size, visibility
        timeout and message size limit of ``settings``."""
        return cls(
            queue,
            Consumer(store, max_body_bytes=settings.max_body_bytes),
            batch_size=settings.batch_size,
            visibility_timeout=settings.visibility_timeout,
            wait_seconds=wait_seconds,
            on_state=on_state,
        )

    # -- state ---------------------------------------------------------------

    def _enter(self, state: WorkerState, error: BaseException | None, delay: float) -> None:
        with self._state_lock:
            if self.state is state:
                return
            self.state = state
            self._unavailable_since = time.monotonic()
        log.warning("%s (%s); retrying in %.1fs, then with backoff", state.value, error, delay)
        if self.on_state:
            self.on_state(state)

    def _recovered(self, state: WorkerState) -> None:
        with self._state_lock:
            if self.state is not state:
                return
            self.state = WorkerState.RUNNING
            waited = time.monotonic() - self._unavailable_since
        log.warning(
            "%s back after %.1f s", "queue" if state is WorkerState.QUEUE_UNAVAILABLE else "store", waited
        )
        if self.on_state:
            self.on_state(WorkerState.RUNNING)

    def _waiting(self, state: WorkerState, stop: threading.Event) -> tuple[Backoff, list[BaseException]]:
        """A backoff that waits on ``stop`` and enters ``state`` before its
        first wait, and the one-slot list the caller puts the last failure in."""
        last: list[BaseException] = []

        def wait(delay: float) -> bool:
            self._enter(state, last[0] if last else None, delay)
            return stop.wait(delay)

        return dataclasses.replace(self.backoff, attempts=None, sleep=wait), last

    def _patiently(self, call: Callable[[], T], stop: threading.Event) -> T:
        """``call()``, retried while the queue fails in a way that may pass;
        raises :class:`_Stopped` if ``stop`` is set meanwhile."""
        backoff, last = self._waiting(WorkerState.QUEUE_UNAVAILABLE, stop)
        for _ in backoff.delays():
            try:
                result = call()
            except TransientQueueError as error:
                last[:] = [error]
                continue
            self._recovered(WorkerState.QUEUE_UNAVAILABLE)
            return result
        raise _Stopped

    # -- one batch -------------------------------------------------------------

    def _consume(self, records: list[Record], stop: threading.Event) -> list[Outcome]:
        """The consumer's outcomes once the store could be reached: a batch
        that failed on a store outage is processed again after a wait, not
        handed back to the queue (which would spend its receive counts).
        Raises the store's error when it can never work."""
        backoff, last = self._waiting(WorkerState.STORE_UNAVAILABLE, stop)
        for _ in backoff.delays():
            self._store.failure = None
            try:
                outcomes = self.consumer.process(records)
                failure = self._store.failure
            except StoreError as error:
                failure = error
            if failure is None:
                self._recovered(WorkerState.STORE_UNAVAILABLE)
                return outcomes
            if not isinstance(failure, TransientStoreError):
                raise failure
            last[:] = [failure]
        raise _Stopped

    def process(self, messages: list[Message], *, stop: threading.Event | None = None) -> BatchReport:
        """Process one received batch and settle every message with the queue.

        Raises :class:`StoreError` when the store can never work (the batch
        is then not settled: the caller hands it back to the queue).
        """
        stop = stop or threading.Event()
        report = BatchReport(received=len(messages))
        outcomes = self._consume([Record(m.id, m.body) for m in messages], stop)
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
                self._patiently(functools.partial(self.queue.dead_letter, message, reason), stop)
                report.dead_lettered += 1
            else:
                delay = retry_delay(message.receive_count, base=self.retry_base)
                retry.setdefault((delay, reason), []).append(message)
                report.retried += 1
        if done:
            self._patiently(lambda: self.queue.ack(done), stop)
        for (delay, reason), failed in retry.items():
            log.warning("%d messages to retry in %.0fs: %s", len(failed), delay, reason)
            self._patiently(functools.partial(self.queue.release, failed, delay=delay, error=reason), stop)
        return report

    def _release_unprocessed(self, messages: list[Message], why: str) -> None:
        """Hand messages back at once; if the queue cannot take them now,
        their visibility timeout brings them back (nothing is lost)."""
        if not messages:
            return
        try:
            self.queue.release(messages, delay=0, error=why)
        except QueueError as error:
            log.warning("%d messages come back after their visibility timeout: %s", len(messages), error)

    def _receive(self, drain: bool, stop: threading.Event) -> list[Message]:
        try:
            return self._patiently(
                lambda: self.queue.receive(
                    self.batch_size,
                    visibility_timeout=self.visibility_timeout,
                    wait_seconds=0.0 if drain else self.wait_seconds,
                ),
                stop,
            )
        except _Stopped:
            return []

    # -- the loop ----------------------------------------------------------------

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
        Raises :class:`StoreError` when the store can never work, after
        handing every message it holds back to the queue.
        """
        stop = stop or threading.Event()
        total = BatchReport()
        exhausted_seen = self.queue.exhausted
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventtrail-receive") as prefetch:
            upcoming = prefetch.submit(self._receive, drain, stop)
            try:
                while True:
                    messages = upcoming.result()
                    if self.queue.exhausted != exhausted_seen:
                        moved = self.queue.exhausted - exhausted_seen
                        exhausted_seen = self.queue.exhausted
                        log.warning(
                            "%d messages dead-lettered: received %d times", moved, self.queue.max_receives
                        )
                        total.dead_lettered += moved
                        reason = f"not processed after {self.queue.max_receives} receives"
                        total.reasons[reason] = total.reasons.get(reason, 0) + moved
                    if stop.is_set():
                        self._release_unprocessed(messages, "worker stopped before processing it")
                        break
                    if not messages:
                        try:
                            if drain and self._patiently(self.queue.stats, stop).pending == 0:
                                break
                        except _Stopped:
                            break
                        # Nothing visible: wait for delayed or in-flight messages.
                        stop.wait(0.2 if drain else 0.0)
                        upcoming = prefetch.submit(self._receive, drain, stop)
                        continue
                    upcoming = prefetch.submit(self._receive, drain, stop)
                    try:
                        report = self.process(messages, stop=stop)
                    except _Stopped:
                        self._release_unprocessed(messages, "worker stopped before processing it")
                        continue
                    except StoreError as error:
                        log.error(
                            "stopping: the store cannot work (%s); the messages stay in the queue", error
                        )
                        stop.set()
                        self._release_unprocessed(messages, f"worker stopped: {error}")
                        self._release_unprocessed(upcoming.result(), f"worker stopped: {error}")
                        raise
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
            except BaseException:
                # Whatever ends the run, the receive thread must not wait on.
                stop.set()
                raise
        return total
