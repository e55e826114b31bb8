"""Child processes that the terminal's Ctrl-C does not reach, and that do
not outlive their parent.

Ctrl-C signals the whole foreground process group, children included. A
child that its parent stops in order (the gateway's queue process, the
read-model follower) must not die of it halfway, not even while it is still
importing, before it can ignore SIGINT itself: it is started with SIGINT
blocked, a mask that survives exec, and ignores it once running. A child
that its parent stops with a signal (``up``'s worker, told to drain by
SIGTERM) is started with that signal blocked as well, and takes it once its
handler is set (:func:`take_deferred`): sent while the child still imports,
it waits for the handler instead of killing the child before it drained. A
child that its parent stops by a message ignores SIGTERM too: sent to the
whole process group, it is the parent's to act on.

A parent killed by SIGKILL stops nothing in order; a child that asked for it
(:func:`terminate_with_parent`) then gets SIGTERM from the kernel instead of
living on as an orphan holding a port.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
from collections.abc import Callable, Collection
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess

__all__ = [
    "STOPPED_BY_PARENT",
    "ignore_interrupts",
    "leave_stopping_to_parent",
    "start_shielded",
    "take_deferred",
    "terminate_with_parent",
]

#: What a child that its parent stops by a message defers while it starts
#: (:func:`start_shielded`), then ignores (:func:`leave_stopping_to_parent`).
STOPPED_BY_PARENT = (signal.SIGTERM,)

_PR_SET_PDEATHSIG = 1


def _find_prctl() -> Callable[[int, int], int] | None:
    with contextlib.suppress(OSError, AttributeError):
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    return None


# Resolved at import, before any fork: a child between fork and exec only
# calls it. Linux's alone; elsewhere there is nothing to ask for.
_prctl = _find_prctl()


def terminate_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies
    (Linux ``PR_SET_PDEATHSIG``), even by SIGKILL. Safe between fork and
    exec (a ``preexec_fn``)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_shielded(process: BaseProcess, *, deferring: Collection[signal.Signals] = ()) -> None:
    """Start ``process`` with SIGINT blocked until it ignores it itself
    (:func:`ignore_interrupts`, first thing in its target), and the signals
    of ``deferring`` blocked until it handles them (:func:`take_deferred`)."""
    # Starting a process may first start multiprocessing's resource tracker,
    # which unblocks SIGINT and SIGTERM in this thread once it runs: started
    # before the mask is set, it leaves the mask alone.
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *deferring})
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def take_deferred(*signals: signal.Signals) -> None:
    """In the child, once its handlers of ``signals`` are set: take those
    signals, one sent meanwhile first."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signals))


def ignore_interrupts() -> None:
    """In the child: the parent says when to stop, not the terminal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def leave_stopping_to_parent() -> None:
    """In a child that its parent stops by a message (the gateway's queue
    process, the read-model follower): ignore SIGTERM as well as SIGINT. A
    service manager stopping the whole process group sends SIGTERM to every
    process in it; the parent, stopping in order, still needs this child
    (the gateway flushes its events through the queue process)."""
    ignore_interrupts()
    for number in STOPPED_BY_PARENT:
        signal.signal(number, signal.SIG_IGN)
