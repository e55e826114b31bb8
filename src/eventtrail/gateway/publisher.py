"""Publishing events off the request path.

The request path appends a call record (:mod:`eventtrail.gateway.records`)
to a bounded in-memory buffer (a deque append: no lock, no encoding). Once
every ``journal_interval``, the call that finds that interval passed also
journals the buffer: it packs the records into one frame, appends the frame
to the journal (one ``write()`` to the page cache, no fsync: the kernel keeps
it if the gateway's process is killed) and hands it to the sender. Doing it
on the request path costs that one call a few dozen microseconds; a thread
woken every few milliseconds instead cost every call far more, in switches of
the GIL. A keeper thread journals what a lull left in the buffer, every
``flush_interval``.

The sender thread sends frames to the queue in batches (the queue makes the
records into event bodies itself when it runs in a process of its own), and,
alongside, what waits in the spill file. It wakes every ``flush_interval``,
or as soon as :data:`BATCHES_PER_SEND` batches wait, and hands over all the
batches waiting in one call (one queue send per batch still): each wake-up
and each call hands the GIL to and fro with the event loop, and every
request waits meanwhile. A send that fails puts its bodies in
the spill file and the queue is tried again later (backing off); new events
still go to the queue first once it answers.

A frame leaves the journal once the queue or the spill file took all of it,
so a killed gateway under load loses at most the records of its last
``journal_interval`` (``flush_interval`` after a lull); the next start
spills what the journal still holds. A slow or locked queue blocks only the
sender, never the journal. What cannot be kept (the memory bound reached, a
body larger than the queue takes, no spill file) is counted as dropped, by
reason, and logged: never lost silently.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from eventtrail.event import DEFAULT_MAX_BODY_BYTES, Event
from eventtrail.gateway.records import (
    EncodingSink,
    Record,
    RecordSink,
    Refused,
    UnsentRecords,
    bodies_of,
    encoded,
    pack,
    send_bodies,
    unpack,
)
from eventtrail.gateway.spill import Journal, JournalError, SpillError, SpillFile
from eventtrail.queue import Queue

__all__ = ["DROP_REASONS", "DropReason", "Publisher", "PublisherCounts", "journal_beside"]

log = logging.getLogger(__name__)

#: Why events were dropped: the memory buffer was full; the queue refused the
#: body for its size; the queue was down with no spill file; a journal frame
#: left by a predecessor could not be read; records could not be made into
#: events.
DropReason = Literal["buffer_full", "too_large", "no_spill_file", "unreadable", "unencodable"]
DROP_REASONS: tuple[DropReason, ...] = typing.get_args(DropReason)

#: Batches (of ``batch_size`` events, one queue send each) handed to the
#: queue in one call; past this many waiting, the sender is woken at once.
BATCHES_PER_SEND = 10


@dataclass(frozen=True, slots=True)
class PublisherCounts:
    """A snapshot of what the publisher did since it started.

    Once the publisher is idle, ``published + inherited == sent + buffered +
    spill_pending + dropped``: each event is counted once.
    """

    published: int
    """Events handed over by this process."""
    buffered: int
    """Events in memory, neither sent nor spilled yet."""
    sent: int
    spilled: int
    spill_pending: int
    dropped: int
    queue_errors: int
    spill_errors: int
    inherited: int = 0
    """Events found at start: in the spill file, or in a killed predecessor's journal."""
    journal_errors: int = 0
    dropped_by_reason: Mapping[str, int] = field(default_factory=dict)


class _Frame(NamedTuple):
    number: int  # in the journal; 0 when not journaled
    packed: bytes
    records: int


def journal_beside(spill: SpillFile) -> Journal:
    """The journal that goes with a spill file: ``<spill file>-journal.<n>``."""
    return Journal(spill.path.with_name(spill.path.name + "-journal"))


class Publisher:
    """Buffers events and sends them in batches from background threads.

    Call :meth:`start` once, :meth:`publish` from anywhere (it never blocks),
    and :meth:`close` to flush: it sends what is buffered, or spills it if the
    queue is down, within ``close_timeout`` seconds, then closes the queue,
    the spill file and the journal (the publisher owns them). ``journal``:
    ``"auto"`` keeps one beside the spill file (:func:`journal_beside`),
    ``None`` none.
    """

    def __init__(
        self,
        queue: Queue,
        spill: SpillFile | None = None,
        *,
        journal: Journal | Literal["auto"] | None = "auto",
        buffer_size: int = 100_000,
        batch_size: int = 200,
        flush_interval: float = 0.05,
        journal_interval: float = 0.005,
        retry_interval: float = 1.0,
        max_retry_interval: float = 15.0,
        max_body_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.spill = spill
        self.journal_errors = 0
        if journal == "auto":
            journal = self._open_journal_beside(spill)
        self.journal = journal
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.journal_interval = journal_interval
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.max_body_bytes = max_body_bytes or int(getattr(queue, "max_body_bytes", DEFAULT_MAX_BODY_BYTES))
        self._clock = clock
        self._buffer: collections.deque[Record] = collections.deque()
        self._outbox: collections.deque[_Frame] = collections.deque()
        # Where records become bodies: in the queue's own process if it has one.
        self._sink: RecordSink = (
            queue if isinstance(queue, RecordSink) else EncodingSink(queue, self.max_body_bytes)
        )
        self._sender_wake = threading.Event()
        self._keep_lock = threading.Lock()
        self._next_keep = 0.0
        self._stopping = threading.Event()
        self._keeper: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        # Each counter has one writer: `published`/`dropped_full` the
        # publishing thread, `moved` whoever holds the keep lock, the others
        # the sender.
        self._published = 0
        self._dropped_full = 0
        self._moved = 0
        self._released = 0
        self._sent = 0
        self._spilled = 0
        self._inherited = spill.pending if spill is not None else 0
        self._drops: collections.Counter[str] = collections.Counter()
        self._queue_errors = 0
        self._spill_errors = 0
        self._queue_down_until: float | None = None
        self._spill_down_until: float | None = None
        self._backoff = retry_interval
        self._spill_backoff = retry_interval
        self._last_log: dict[str, float] = {}
        # Bodies that neither the queue nor the spill file took yet, and the
        # first journal frame they came from (the journal keeps it till then).
        self._held: list[str] = []
        self._held_since = 0
        self._delivered_through = 0
        self._unencodable = 0

    def _open_journal_beside(self, spill: SpillFile | None) -> Journal | None:
        if spill is None:
            return None
        try:
            return journal_beside(spill)
        except JournalError as error:
            self.journal_errors += 1
            log.error("no journal: %s (a killed gateway loses the events it holds)", error)
            return None

    # -- the request path ---------------------------------------------------

    def publish(self, event: Event) -> None:
        """Hand ``event`` over; never blocks, never raises."""
        self.publish_record(encoded(event))

    def publish_record(self, record: Record) -> None:
        """Hand a call record over (see :class:`~eventtrail.gateway.recorder.CallRecorder`).

        Never waits for the queue, the spill file or another thread; once
        per ``journal_interval`` it writes the journal (see the module)."""
        if len(self._buffer) + self._moved - self._released >= self.buffer_size:
            self._dropped_full += 1
            return
        self._buffer.append(record)
        self._published += 1
        if self._clock() >= self._next_keep:
            self._keep_now()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Publisher:
        if self._sender is None:
            self._keeper = threading.Thread(target=self._keep_loop, name="eventtrail-journal", daemon=True)
            self._sender = threading.Thread(target=self._send_loop, name="eventtrail-publisher", daemon=True)
            self._keeper.start()
            self._sender.start()
        return self

    def close(self, close_timeout: float = 10.0) -> PublisherCounts:
        """Stop after flushing the buffer; return the final counts."""
        self._stopping.set()
        self._sender_wake.set()
        if self._sender is not None:
            self._sender.join(close_timeout)
            if self._sender.is_alive():
                log.error("the publisher did not finish flushing within %.0fs", close_timeout)
        else:
            self._keep_round()
            self._flush_all()
        counts = self.counts()
        self.queue.close()
        if self.spill is not None:
            self.spill.close()
        if self.journal is not None and not (self._sender is not None and self._sender.is_alive()):
            self.journal.close()
        if counts.buffered or counts.dropped:
            log.error(
                "publisher closed with %d events unsent%s and %d dropped",
                counts.buffered,
                " (kept in the journal for the next start)" if self.journal is not None else "",
                counts.dropped,
            )
        return counts

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def counts(self) -> PublisherCounts:
        drops = collections.Counter(self._drops)
        if self._dropped_full:
            drops["buffer_full"] = self._dropped_full
        return PublisherCounts(
            published=self._published,
            buffered=len(self._buffer) + self._moved - self._released,
            sent=self._sent,
            spilled=self._spilled,
            spill_pending=self.spill.pending if self.spill is not None else 0,
            dropped=sum(drops.values()),
            queue_errors=self._queue_errors,
            spill_errors=self._spill_errors,
            inherited=self._inherited,
            journal_errors=self.journal_errors,
            dropped_by_reason=dict(drops),
        )

    # -- the keeper thread ----------------------------------------------------

    def _keep_loop(self) -> None:
        # Under load the publishing thread journals (see _keep_now); this
        # thread catches what the last calls before a lull left behind.
        while not self._stopping.wait(self.flush_interval):
            self._keep_now()
        with self._keep_lock:
            self._keep_round()

    def _keep_now(self) -> None:
        """Journal the buffer now, unless another thread is doing it."""
        if self._keep_lock.acquire(blocking=False):
            try:
                self._next_keep = self._clock() + self.journal_interval
                self._keep_round()
            finally:
                self._keep_lock.release()

    def _keep_round(self) -> None:
        """Move what the buffer holds to the journal and the sender, as one frame."""
        buffer = self._buffer
        count = len(buffer)
        if not count:
            return
        records = [buffer.popleft() for _ in range(count)]
        packed = pack(records)
        number = 0
        # While neither the queue nor the spill file takes what the sender
        # holds (a full disk, likely shared with the journal), the space
        # left is the spill file's.
        if self.journal is not None and not self._held:
            try:
                number = self.journal.write(packed)
            except JournalError as error:
                self.journal_errors += 1
                self._log_now("journal", logging.ERROR, "%s (events are sent, not journaled)", error)
        self._outbox.append(_Frame(number, packed, count))
        self._moved += count
        # Under load the sender wakes every flush_interval and sends what
        # came meanwhile, several batches in one call to the queue; woken at
        # every batch it handed the GIL back and forth with the event loop
        # many times per batch, and each hand-over stalled every request.
        if self._moved - self._released >= self.batch_size * BATCHES_PER_SEND:
            self._sender_wake.set()

    # -- the sender thread --------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            self._sender_wake.wait(self.flush_interval)
            self._sender_wake.clear()
            self._send_round()
        if self._keeper is not None:
            self._keeper.join()
        self._flush_all()

    def _flush_all(self) -> None:
        # Final flush: one more chance for the queue and the spill file,
        # however recent their failure.
        self._queue_down_until = self._spill_down_until = None
        while self._outbox or self._held:
            before = (len(self._outbox), len(self._held), self._released)
            self._send_round()
            if (len(self._outbox), len(self._held), self._released) == before:
                break
        while self._spill_pending() and self._queue_is_up():
            before_pending = self._spill_pending()
            self._drain_spill()
            if self._spill_pending() >= before_pending:
                break

    def _send_round(self) -> None:
        if self.journal is not None and self.journal.leftovers():
            self._recover()
        if self._held and not self._deliver_held():
            return
        # What is in the outbox now, in batches (up to BATCHES_PER_SEND in
        # one call to the queue), one spill batch alongside each call.
        remaining = len(self._outbox)
        while remaining:
            batches: list[list[_Frame]] = []
            while remaining and len(batches) < BATCHES_PER_SEND:
                frames: list[_Frame] = []
                records = 0
                while remaining and (not frames or records + self._outbox[0].records <= self.batch_size):
                    frames.append(self._outbox.popleft())
                    records += frames[-1].records
                    remaining -= 1
                batches.append(frames)
            self._deliver(batches)
            if self._spill_pending() and self._queue_is_up():
                self._drain_spill()
            if self._held:
                return
        if self._spill_pending() and self._queue_is_up():
            self._drain_spill()

    def _deliver(self, batches: list[list[_Frame]]) -> None:
        """Send the frames of ``batches`` to the queue (one send per batch),
        or spill them; hold what neither took."""
        frames = [frame for batch in batches for frame in batch]
        count = sum(frame.records for frame in frames)
        unsent: list[str] = []
        refused: list[Refused] = []
        if self._queue_is_up():
            try:
                refused = self._sink.send_batches([[frame.packed for frame in batch] for batch in batches])
            except UnsentRecords as error:
                self._queue_failed(error)
                unsent, refused = error.bodies, error.refused
            except Exception as error:  # noqa: BLE001 - any adapter failure means "queue down"
                self._queue_failed(error)
                unsent = self._bodies_of(frames)
            else:
                self._queue_answered()
        else:
            unsent = self._bodies_of(frames)
        self._drop_too_large(refused)
        self._sent += count - len(unsent) - len(refused) - self._unencodable
        self._unencodable = 0
        if unsent and not self._keep(unsent):
            self._held = unsent
            self._held_since = min((frame.number for frame in frames if frame.number), default=0)
        self._released += count - len(self._held)
        self._delivered_through = max(self._delivered_through, frames[-1].number)
        self._confirm()

    def _bodies_of(self, frames: list[_Frame]) -> list[str]:
        """The bodies of ``frames``, made here; a frame that cannot be made
        into bodies is dropped and counted (in ``_unencodable`` too)."""
        bodies: list[str] = []
        for frame in frames:
            try:
                bodies += bodies_of(unpack(frame.packed))
            except Exception as error:  # noqa: BLE001 - a bad record must not stop the sender
                self._unencodable += frame.records
                self._drop(frame.records, "unencodable", f"records that cannot be made into events: {error}")
        return bodies

    def _deliver_held(self) -> bool:
        """Try the held bodies again; say whether none is left."""
        held, self._held = self._held, []
        unsent: list[str] = []
        refused: list[Refused] = []
        if self._queue_is_up():
            try:
                refused = send_bodies(self.queue, held, self.max_body_bytes)
            except UnsentRecords as error:
                self._queue_failed(error)
                unsent, refused = error.bodies, error.refused
            else:
                self._queue_answered()
        else:
            unsent = held
        self._drop_too_large(refused)
        self._sent += len(held) - len(unsent) - len(refused)
        if unsent and not self._keep(unsent):
            self._held = unsent
        self._released += len(held) - len(self._held)
        self._confirm()
        return not self._held

    def _confirm(self) -> None:
        if self.journal is None:
            return
        through = self._delivered_through
        if self._held and self._held_since:
            through = min(through, self._held_since - 1)
        if through > 0:
            self.journal.confirm(through)

    def _recover(self) -> None:
        """Spill (else send) what a killed predecessor left in the journal."""
        assert self.journal is not None
        for path in self.journal.leftovers():
            bodies: list[str] = []
            try:
                frames = list(Journal.frames(path))
            except OSError as error:
                self.journal_errors += 1
                self._log_now("recover", logging.ERROR, "cannot read the journal %s: %s", path, error)
                return
            for packed in frames:
                try:
                    bodies += bodies_of(unpack(packed))
                except Exception as error:  # noqa: BLE001 - one bad frame must not block the others
                    self._drop(1, "unreadable", f"a frame of {path} cannot be read: {error}")
                    self._inherited += 1
            if not self._keep_recovered(bodies):
                return
            self._inherited += len(bodies)
            self.journal.discard(path)
            log.warning("recovered %d events from %s, left by an earlier run", len(bodies), path)

    def _keep_recovered(self, bodies: list[str]) -> bool:
        if not bodies:
            return True
        if self.spill is not None and self._spill_is_up():
            try:
                self.spill.append(bodies)
            except SpillError as error:
                self._spill_failed(error)
            else:
                self._spilled += len(bodies)
                return True
        if not self._queue_is_up():
            return False
        try:
            refused = send_bodies(self.queue, bodies, self.max_body_bytes)
        except UnsentRecords as error:
            self._queue_failed(error)
            return False
        self._queue_answered()
        self._drop_too_large(refused)
        self._sent += len(bodies) - len(refused)
        return True

    def _queue_is_up(self) -> bool:
        return self._queue_down_until is None or self._clock() >= self._queue_down_until

    def _spill_is_up(self) -> bool:
        return self._spill_down_until is None or self._clock() >= self._spill_down_until

    def _spill_pending(self) -> int:
        return self.spill.pending if self.spill is not None else 0

    def _queue_failed(self, error: Exception) -> None:
        self._queue_errors += 1
        self._queue_down_until = self._clock() + self._backoff
        log.warning("queue send failed (%s); retrying in %.1fs", error, self._backoff)
        self._backoff = min(self._backoff * 2, self.max_retry_interval)

    def _queue_answered(self) -> None:
        self._queue_down_until = None
        self._backoff = self.retry_interval

    def _spill_failed(self, error: Exception) -> None:
        self._spill_errors += 1
        self._spill_down_until = self._clock() + self._spill_backoff
        self._log_now("spill", logging.ERROR, "%s; retrying in %.1fs", error, self._spill_backoff)
        self._spill_backoff = min(self._spill_backoff * 2, self.max_retry_interval)

    def _keep(self, bodies: list[str]) -> bool:
        """Spill ``bodies``; say whether they are kept (or counted as dropped)."""
        if self.spill is None:
            self._drop(len(bodies), "no_spill_file", "the queue is down and there is no spill file")
            return True
        if not self._spill_is_up():
            return False
        try:
            self.spill.append(bodies)
        except SpillError as error:
            self._spill_failed(error)
            return False
        self._spill_down_until = None
        self._spill_backoff = self.retry_interval
        self._spilled += len(bodies)
        return True

    def _drop(self, count: int, reason: DropReason, detail: str) -> None:
        self._drops[reason] += count
        self._log_now(
            reason,
            logging.ERROR,
            "%d events dropped: %s (%d dropped so far)",
            count,
            detail,
            self._drops[reason],
        )

    def _drop_too_large(self, refused: list[Refused]) -> None:
        for event_id, size in refused:
            self._drops["too_large"] += 1
            log.error(
                "event %s dropped: its body (%d bytes) is larger than the queue takes (%d bytes)",
                event_id,
                size,
                self.max_body_bytes,
            )

    def _log_now(self, topic: str, level: int, message: str, *args: object) -> None:
        """Log, at most every 5 seconds per topic (a fault repeats every round)."""
        now = self._clock()
        if now - self._last_log.get(topic, -10.0) >= 5.0:
            self._last_log[topic] = now
            log.log(level, message, *args)

    def _drain_spill(self) -> None:
        """Send one batch of the spill file's oldest bodies."""
        assert self.spill is not None
        try:
            mark, bodies = self.spill.oldest(self.batch_size)
        except SpillError as error:
            self._spill_errors += 1
            self._log_now("drain", logging.ERROR, "%s", error)
            return
        if not bodies:
            return
        unsent: list[str] = []
        try:
            refused = send_bodies(self.queue, bodies, self.max_body_bytes)
        except UnsentRecords as error:
            self._queue_failed(error)
            unsent, refused = error.bodies, error.refused
        else:
            self._queue_answered()
        accepted = len(bodies) - len(unsent) - len(refused)
        if not accepted and not refused:
            return  # all still in place, for the next attempt
        if unsent:
            # Part of the batch went: the rest goes to the end of the file,
            # so that nothing is sent twice.
            try:
                self.spill.append(unsent)
            except SpillError as error:
                # The whole batch stays: sending part of it twice beats losing the rest.
                self._spill_failed(error)
                return
        self._drop_too_large(refused)
        self._sent += accepted
        try:
            self.spill.sent(mark, len(bodies))
        except SpillError as error:
            # They reached the queue and will not be sent again by this
            # process; deleting them is tried again with the next batch.
            self._spill_errors += 1
            self._log_now("remove", logging.ERROR, "%s", error)
