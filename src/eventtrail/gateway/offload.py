"""The queue, in a child process of its own.

The embedded queue's ``send`` inserts row by row, and SQLite's Python binding
releases and retakes the GIL around every row: in the gateway's process each
retake forces the event loop to stop and wait, which cost about 60 µs of CPU
per proxied call on two cores (docs/benchmarks.md). Behind a pipe, a batch
costs the gateway one write and one read, and the queue's work runs on the
other core. Any adapter works this way: the child opens it from the settings.

The child also makes the gateway's call records into event bodies
(:meth:`ProcessQueue.send_packed`), so that the gateway's process never
builds or encodes an event. Several batches go in one call
(:meth:`ProcessQueue.send_batches`): each round trip costs the publisher's
thread a few hand-overs of the GIL, each of which stalls the event loop.

The child opens the queue in the background and keeps trying (a locked
queue file, an unreachable SQS) until it can: until then every call fails
at once with :class:`QueueNotOpen`, which the publisher takes for "queue
down". A call that gets no answer within ``call_timeout`` fails too, and
its child is replaced: a queue blocked on a lock never holds the
publisher longer than that.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from eventtrail.config import Settings, open_queue
from eventtrail.gateway.records import EncodingSink, Refused, UnsentRecords
from eventtrail.processes import STOPPED_BY_PARENT, leave_stopping_to_parent, start_shielded
from eventtrail.queue import DeadLetter, Message, Queue, QueueError, QueueStats
from eventtrail.retry import Backoff

__all__ = ["ProcessQueue", "QueueNotOpen"]

log = logging.getLogger(__name__)


class QueueNotOpen(QueueError):
    """The queue's process has not opened the queue yet (it keeps trying)."""


def _open(connection: Connection, settings: Settings) -> Queue | None:
    """The queue, once it opens; ``None`` if the parent went away first."""
    for _ in Backoff(attempts=None, base=0.1, cap=2.0).delays():
        try:
            return open_queue(settings)
        except Exception as error:  # noqa: BLE001 - reported to the parent, tried again
            try:
                connection.send(("waiting", f"{type(error).__name__}: {error}"))
            except OSError:  # the gateway closed the pipe, or died
                return None
    return None


def _serve(connection: Connection, settings: Settings) -> None:
    leave_stopping_to_parent()  # the parent closes the pipe
    queue = _open(connection, settings)
    if queue is None:
        return
    try:
        connection.send(("ready", None))
    except OSError:  # the gateway went away while the queue was opening
        queue.close()
        return
    sink = EncodingSink(queue, settings.max_body_bytes)
    with queue:
        while True:
            try:
                name, args, kwargs = connection.recv()
            except (EOFError, OSError):  # the gateway closed the pipe, or died
                return
            if name == "send_batches":
                connection.send(_send_batches(sink, args[0]))
                continue
            try:
                result = getattr(queue, name)(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - every failure goes back to the caller
                connection.send(("error", f"{type(error).__name__}: {error}"))
            else:
                connection.send(("ok", result))


def _send_batches(sink: EncodingSink, batches: list[list[bytes]]) -> tuple[str, Any]:
    try:
        refused = sink.send_batches(batches)
    except UnsentRecords as unsent:  # the caller spills the bodies
        return ("unsent", (str(unsent), unsent.bodies, unsent.refused))
    except Exception as error:  # noqa: BLE001 - reported to the caller, which has the records
        return ("error", f"{type(error).__name__}: {error}")
    return ("ok", refused)


class ProcessQueue(Queue):
    """The queue of ``settings``, operated by a child process.

    A call that fails in the child, a child that died or did not answer
    within ``call_timeout`` seconds, or a queue not open yet raises
    :class:`QueueError` (the publisher then spills); the next call after a
    failure of the child starts a new one. A call waits up to
    ``open_wait`` seconds for a starting child to open the queue.
    """

    def __init__(self, settings: Settings, *, call_timeout: float = 2.0, open_wait: float = 2.0) -> None:
        self.settings = settings
        self.max_receives = settings.max_receives
        self.max_body_bytes = settings.max_body_bytes
        self.call_timeout = call_timeout
        self.open_wait = open_wait
        self._lock = threading.Lock()
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._connection: Connection | None = None
        self._open = False
        self._waiting_reason = "the queue process is starting"
        self._logged_waiting = 0.0
        self._start()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(child, self.settings), name="eventtrail-queue", daemon=True
        )
        # The parent stops it by closing the pipe, never Ctrl-C.
        start_shielded(process, deferring=STOPPED_BY_PARENT)
        child.close()
        self._process, self._connection = process, parent
        self._open = False
        self._waiting_reason = "the queue process is starting"

    def _await_open(self, connection: Connection, wait: float) -> None:
        """Read the child's progress until it opened the queue or ``wait`` passed."""
        deadline = time.monotonic() + wait
        while not self._open:
            if not connection.poll(max(0.0, deadline - time.monotonic())):
                now = time.monotonic()
                if now - self._logged_waiting >= 30.0:
                    self._logged_waiting = now
                    log.warning("the queue is not open yet: %s", self._waiting_reason)
                raise QueueNotOpen(f"the queue is not open yet: {self._waiting_reason}")
            status, detail = connection.recv()
            if status == "ready":
                self._open = True
            else:
                self._waiting_reason = str(detail)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            try:
                if self._connection is None:
                    self._start()
                connection = self._connection
                assert connection is not None
                self._await_open(connection, self.open_wait)
                connection.send((name, args, kwargs))
                if not connection.poll(self.call_timeout):
                    # Blocked (a lock held past the call timeout): this child
                    # is dropped, its transaction was not committed.
                    self._discard()
                    raise QueueError(f"the queue did not answer within {self.call_timeout:g}s")
                status, result = connection.recv()
            except (OSError, EOFError) as error:
                self._discard()
                raise QueueError(f"the queue process is gone ({type(error).__name__})") from error
        if status == "error":
            raise QueueError(str(result))
        if status == "unsent":
            message, bodies, refused = result
            raise UnsentRecords(message, bodies, refused)
        return result

    def _discard(self) -> None:
        if self._connection is not None:
            self._connection.close()
        if self._process is not None:
            self._process.kill()
            self._process.join()
        self._connection = self._process = None
        self._open = False

    def send(self, bodies: Sequence[str]) -> list[str]:
        return list(self._call("send", list(bodies)))

    def send_packed(self, packs: Sequence[bytes]) -> list[Refused]:
        """Send the events of packed records, made into bodies by the child."""
        return self.send_batches([packs])

    def send_batches(self, batches: Sequence[Sequence[bytes]]) -> list[Refused]:
        """Several batches of packed records in one call: one queue send
        each, in the child (see :meth:`RecordSink.send_batches
        <eventtrail.gateway.records.RecordSink.send_batches>`)."""
        return list(self._call("send_batches", [list(packs) for packs in batches]))

    def receive(
        self, max_messages: int, *, visibility_timeout: float, wait_seconds: float = 0.0
    ) -> list[Message]:
        return list(
            self._call(
                "receive", max_messages, visibility_timeout=visibility_timeout, wait_seconds=wait_seconds
            )
        )

    def ack(self, messages: Sequence[Message]) -> None:
        self._call("ack", list(messages))

    def release(self, messages: Sequence[Message], *, delay: float, error: str) -> None:
        self._call("release", list(messages), delay=delay, error=error)

    def dead_letter(self, message: Message, reason: str) -> None:
        self._call("dead_letter", message, reason)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return list(self._call("dead_letters", limit))

    def get_dead_letter(self, message_id: str) -> DeadLetter:
        result: DeadLetter = self._call("get_dead_letter", message_id)
        return result

    def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        return int(self._call("redrive", None if message_ids is None else list(message_ids)))

    def stats(self) -> QueueStats:
        result: QueueStats = self._call("stats")
        return result

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()  # the child sees EOF, closes its queue, exits
                self._connection = None
            if self._process is not None:
                self._process.join(10)
                if self._process.is_alive():
                    self._process.kill()
                    self._process.join()
                self._process = None
