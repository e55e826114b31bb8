"""Keeping read models up to date beside a consumer: a follower of the
store's log.

A consumer that stores events with ``project=False`` leaves the folding to a
:class:`Follower`, which catches up with the log whenever there is something
new, in its own thread (or process), so that storing a batch never waits for
the projections. Exactly once holds whoever folds (see
:meth:`~eventtrail.readmodels.port.ReadModels.catch_up`); the follower only
decides when.

Read models of an older shape (an upgrade that changed a projection, or a
store from before read models) are rebuilt by the follower before it folds
anything: the events are all there, and a new version of a projection is
made again from them rather than mixed with the old one. The replay is
logged as it goes and stops, leaving the read models as they were, when the
follower is asked to stop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Self

from eventtrail.readmodels.port import ReadModels
from eventtrail.retry import Backoff
from eventtrail.store import StoreError, TransientStoreError

__all__ = ["Follower"]

log = logging.getLogger(__name__)

#: How long an idle follower waits before it looks at the log again.
IDLE_SECONDS = 0.05

#: A locked or full read-model file is waited for; a broken one stops the follower.
WAIT_BACKOFF = Backoff(attempts=None, base=0.2, cap=10.0)

#: How often a rebuild's progress is logged.
PROGRESS_SECONDS = 10.0


class _Stopped(Exception):
    """Raised from a rebuild's progress when the follower is asked to stop."""


class Follower:
    """Folds what the store holds into ``models`` until stopped.

    ``run`` loops in the calling thread; ``start`` runs it in a daemon
    thread, ``stop`` asks it to finish the batch it is folding and waits for
    it. The events it folded are counted.
    """

    def __init__(
        self,
        models: ReadModels,
        *,
        idle_seconds: float = IDLE_SECONDS,
        backoff: Backoff = WAIT_BACKOFF,
    ) -> None:
        self.models = models
        self.idle_seconds = idle_seconds
        self.backoff = backoff
        self.folded = 0
        #: Events replayed by a rebuild this follower made (read models of another shape).
        self.rebuilt = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self, stop: threading.Event | None = None) -> None:
        """Catch up, wait while idle, again, until ``stop`` (or :meth:`stop`)
        is set; then catch up once more, so that what was stored before the
        stop is folded. Read models an older eventtrail built are rebuilt
        first. Returns early, logging why, on a read-model file that no wait
        can help (corrupt, or built by a newer eventtrail)."""
        stop = stop or self._stop
        if not self._current(stop):
            return
        retries = 0
        while True:
            stopping = stop.is_set() or self._stop.is_set()
            try:
                passed = self.models.catch_up(batches=None if stopping else 1)
            except TransientStoreError as error:
                retries += 1
                if retries == 1:
                    log.warning("cannot update the read models yet (%s); retrying with backoff", error)
                if stopping or self._wait(stop, self.backoff.delay(retries)):
                    log.warning("stopped with read models behind the store: the next follower catches up")
                    return
                continue
            except StoreError as error:
                log.error("the read models are not kept up to date: %s", error)
                return
            if retries:
                log.warning("updating the read models again")
                retries = 0
            self.folded += passed
            if stopping:
                return
            if passed == 0 and self._wait(stop, self.idle_seconds):
                # Stopped while idle: one last look, then out.
                stop.set()

    def _current(self, stop: threading.Event) -> bool:
        """Make the read models current, rebuilding them if they are not;
        false when stopped first or when they cannot be rebuilt."""
        retries = 0
        while True:
            try:
                if self.models.is_current():
                    return True
                if not self.models.is_older():
                    log.error(
                        "the read models were built by a newer eventtrail: this one leaves them alone"
                        " (upgrade it to keep them up to date)"
                    )
                    return False
                self.rebuilt = self._rebuild(stop)
                return True
            except _Stopped:
                log.warning("stopped while rebuilding the read models: they are as they were")
                return False
            except TransientStoreError as error:
                retries += 1
                if retries == 1:
                    log.warning("cannot rebuild the read models yet (%s); retrying with backoff", error)
                if self._wait(stop, self.backoff.delay(retries)):
                    return False
            except StoreError as error:
                log.error("the read models cannot be rebuilt: %s", error)
                return False

    def _rebuild(self, stop: threading.Event) -> int:
        log.warning(
            "the read models were not built by this version of eventtrail: rebuilding them from the"
            " stored events (readers answer once it is done)"
        )
        began = time.monotonic()
        logged = began

        def progress(done: int, total: int | None) -> None:
            nonlocal logged
            if stop.is_set() or self._stop.is_set():
                raise _Stopped
            now = time.monotonic()
            if now - logged >= PROGRESS_SECONDS:
                logged = now
                of = f" of {total:,}" if total is not None else ""
                log.warning("rebuilding the read models: %s%s events replayed", f"{done:,}", of)

        replayed = self.models.rebuild(progress=progress)
        log.warning(
            "rebuilt the read models: %s events replayed in %.1f s", f"{replayed:,}", time.monotonic() - began
        )
        return replayed

    def _wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(seconds) or self._stop.is_set()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.run, name="read-model-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to stop after a last catch-up, and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
