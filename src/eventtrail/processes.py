"""Child processes that the terminal's Ctrl-C does not reach.

Ctrl-C signals the whole foreground process group, children included. A
child that its parent stops in order (the gateway's queue process, the
read-model follower) must not die of it halfway, not even while it is still
importing, before it can ignore SIGINT itself: it is started with SIGINT
blocked, a mask that survives exec, and ignores it once running.
"""

from __future__ import annotations

import signal
from multiprocessing.process import BaseProcess

__all__ = ["ignore_interrupts", "start_shielded"]


def start_shielded(process: BaseProcess) -> None:
    """Start ``process`` with SIGINT blocked until it ignores it itself
    (:func:`ignore_interrupts`, first thing in its target)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_interrupts() -> None:
    """In the child: the parent says when to stop, not the terminal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
