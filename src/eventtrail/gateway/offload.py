"""The queue, in a child process of its own.

The embedded queue's ``send`` inserts row by row, and SQLite's Python binding
releases and retakes the GIL around every row: in the gateway's process each
retake forces the event loop to stop and wait, which cost about 60 µs of CPU
per proxied call on two cores (docs/benchmarks.md). Behind a pipe, a batch
costs the gateway one write and one read, and the queue's work runs on the
other core. Any adapter works this way: the child opens it from the settings.

The child also makes the gateway's call records into event bodies
(:meth:`ProcessQueue.send_records`), so that the gateway's process never
builds or encodes an event.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from eventtrail.config import Settings, open_queue
from eventtrail.gateway.records import EncodingSink, Record, UnsentRecords
from eventtrail.queue import DeadLetter, Message, Queue, QueueError, QueueStats

__all__ = ["ProcessQueue"]


def _serve(connection: Connection, settings: Settings) -> None:
    # Ctrl-C reaches the whole process group; the parent closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        queue = open_queue(settings)
    except Exception as error:  # noqa: BLE001 - reported to the parent, which decides
        connection.send(("error", f"{type(error).__name__}: {error}"))
        return
    connection.send(("ready", None))
    sink = EncodingSink(queue)
    with queue:
        while True:
            try:
                name, args, kwargs = connection.recv()
            except (EOFError, OSError):  # the gateway closed the pipe, or died
                return
            if name == "send_records":
                connection.send(_send_records(sink, args[0]))
                continue
            try:
                result = getattr(queue, name)(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - every failure goes back to the caller
                connection.send(("error", f"{type(error).__name__}: {error}"))
            else:
                connection.send(("ok", result))


def _send_records(sink: EncodingSink, records: list[Record]) -> tuple[str, Any]:
    try:
        sink.send_records(records)
    except UnsentRecords as unsent:  # the caller spills the bodies
        return ("unsent", (str(unsent), unsent.bodies))
    except Exception as error:  # noqa: BLE001 - reported to the caller, which has the records
        return ("error", f"{type(error).__name__}: {error}")
    return ("ok", None)


class ProcessQueue(Queue):
    """The queue of ``settings``, operated by a child process.

    A call that fails in the child, or a child that died, raises
    :class:`QueueError` (the publisher then spills); the next call starts a
    new child.
    """

    def __init__(self, settings: Settings, *, start_timeout: float = 30.0) -> None:
        self.settings = settings
        self.max_receives = settings.max_receives
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._connection: Connection | None = None
        self._start()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(child, self.settings), name="eventtrail-queue", daemon=True
        )
        process.start()
        child.close()
        if not parent.poll(self.start_timeout):
            process.kill()
            raise QueueError(f"the queue process did not start within {self.start_timeout:.0f}s")
        status, detail = parent.recv()
        if status != "ready":
            process.join()
            raise QueueError(f"cannot open the queue: {detail}")
        self._process, self._connection = process, parent

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            try:
                if self._connection is None:
                    self._start()
                assert self._connection is not None
                self._connection.send((name, args, kwargs))
                status, result = self._connection.recv()
            except (OSError, EOFError) as error:
                self._discard()
                raise QueueError(f"the queue process is gone ({type(error).__name__})") from error
        if status == "error":
            raise QueueError(str(result))
        if status == "unsent":
            message, bodies = result
            raise UnsentRecords(message, bodies)
        return result

    def _discard(self) -> None:
        if self._connection is not None:
            self._connection.close()
        if self._process is not None:
            self._process.kill()
            self._process.join()
        self._connection = self._process = None

    def send(self, bodies: Sequence[str]) -> list[str]:
        return list(self._call("send", list(bodies)))

    def send_records(self, records: Sequence[Record]) -> None:
        """Send the events of ``records``, made into bodies by the child."""
        self._call("send_records", list(records))

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
