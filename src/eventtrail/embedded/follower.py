"""The read-model follower of an embedded store, in a process of its own.

Folding events into the read models is Python work: in the consumer's
process it would take turns on the GIL with storing, and each would slow the
other. In a child process it runs on another core, and the read models,
being a file of their own, are written without the store's write lock.

The parent keeps the child running: a child that dies (killed, out of
memory) is started again after a backoff, and its successor folds from the
position the last committed transaction left, so nothing is lost or counted
twice. A child whose parent dies (SIGKILL) sees its pipe close, catches up
one last time and exits.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Self

from eventtrail.embedded.store import SQLiteStore
from eventtrail.processes import STOPPED_BY_PARENT, leave_stopping_to_parent, start_shielded
from eventtrail.readmodels.follower import WAIT_BACKOFF, Follower

__all__ = ["FollowerProcess"]

log = logging.getLogger(__name__)


def _follow(connection: Connection, store_path: Path, busy_timeout_ms: int, log_level: int) -> None:
    leave_stopping_to_parent()  # the parent says when to stop
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def watch() -> None:
        # A message, or the end of the pipe when the parent is gone.
        with contextlib.suppress(EOFError, OSError):
            connection.recv()
        stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    with SQLiteStore(store_path, project=False, busy_timeout_ms=busy_timeout_ms) as store:
        Follower(store.read_models).run(stop)


class FollowerProcess:
    """A :class:`~eventtrail.readmodels.follower.Follower` of the store at
    ``store_path``, in a child process kept alive until :meth:`stop`."""

    def __init__(self, store_path: Path, *, busy_timeout_ms: int) -> None:
        self.store_path = store_path
        self.busy_timeout_ms = busy_timeout_ms
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self._spawning = threading.Lock()
        self._process: Any = None
        self._connection: Connection | None = None
        self._supervisor: threading.Thread | None = None

    def start(self) -> Self:
        self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, name="follower-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def _spawn(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_follow,
            args=(child, self.store_path, self.busy_timeout_ms, logging.getLogger().getEffectiveLevel()),
            name="eventtrail-follower",
            daemon=True,
        )
        start_shielded(process, deferring=STOPPED_BY_PARENT)
        child.close()
        self._process, self._connection = process, parent

    def _supervise(self) -> None:
        failures = 0
        while True:
            self._process.join()
            if self._stopping.is_set():
                return
            failures += 1
            delay = WAIT_BACKOFF.delay(failures)
            log.warning(
                "the read-model follower exited (code %s); starting another in %.1fs",
                self._process.exitcode,
                delay,
            )
            if self._stopping.wait(delay):
                return
            with self._spawning:
                if self._stopping.is_set():
                    return
                if self._connection is not None:
                    self._connection.close()
                self._spawn()
                self.restarts += 1

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)

    def stop(self, timeout: float = 60.0) -> bool:
        """Ask the child to fold what is stored and exit; return whether it
        did within ``timeout`` (else it is killed: its successor, the next
        time, folds what it left)."""
        with self._spawning:  # no new child after this
            self._stopping.set()
            process, connection, supervisor = self._process, self._connection, self._supervisor
        if process is None or supervisor is None:
            return True
        if connection is not None:
            with contextlib.suppress(OSError):  # already gone
                connection.send("stop")
        # The supervisor is the one thread that waits for the child (two
        # waiting threads would race for its exit status).
        supervisor.join(timeout)
        finished = not supervisor.is_alive()
        if not finished:
            log.warning("the read-model follower did not stop within %.0fs: killing it", timeout)
            process.kill()
            supervisor.join()
        if connection is not None:
            connection.close()
        return finished
