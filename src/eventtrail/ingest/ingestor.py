"""Access log lines in, events on the queue out.

:class:`Ingestor` reads files once (:meth:`Ingestor.read`) or follows them
(:meth:`Ingestor.follow`); either way each batch of lines becomes events that
are validated as the consumer will validate them, sent, and only then
counted as done (and, when following, their position saved). A line that is
not what the format expects is counted and reported with its file and line
number; it never stops the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eventtrail.event import DEFAULT_MAX_BODY_BYTES, InvalidEvent, encode_event, parse_event
from eventtrail.ingest.accesslog import BadLine, LogFormat, call_events, line_key
from eventtrail.ingest.tail import Line, Position, Tail
from eventtrail.queue import PartialSend, Queue, QueueError, TransientQueueError
from eventtrail.retry import Backoff

__all__ = ["IngestCounts", "Ingestor"]

log = logging.getLogger(__name__)

#: Lines read before their events are sent (and, when following, the position saved).
BATCH_LINES = 1000


@dataclass(slots=True)
class IngestCounts:
    """What the lines read so far became."""

    lines: int = 0
    requests: int = 0
    events: int = 0
    not_proxied: int = 0
    bad: int = 0
    first_bad: list[str] = field(default_factory=list)


class Ingestor:
    """Reads ``log_format`` lines and sends their events to ``queue``.

    ``on_bad(line, reason)`` hears of every bad line; ``backoff`` paces
    the retries of a queue that fails in a way that may pass (a bounded one
    for a one-off read, an endless one when following).
    """

    def __init__(
        self,
        log_format: LogFormat,
        queue: Queue,
        *,
        source: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        on_bad: Callable[[Line, str], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.format = log_format
        self.queue = queue
        self.source = source or log_format.default_source
        self.max_body_bytes = max_body_bytes
        self.on_bad = on_bad
        self.backoff = backoff or Backoff(attempts=8, base=0.2, cap=5.0)
        self.counts = IngestCounts()

    # -- lines to bodies ---------------------------------------------------------

    def _bad(self, line: Line, reason: str) -> None:
        self.counts.bad += 1
        if self.on_bad is not None:
            self.on_bad(line, reason)

    def bodies(self, lines: Sequence[Line]) -> list[str]:
        """The message bodies of ``lines``, bad lines counted and reported."""
        bodies: list[str] = []
        for line in lines:
            self.counts.lines += 1
            if line.text is None:
                self._bad(line, line.problem)
                continue
            try:
                request = self.format.parse(line.text)
                if request is None:
                    self.counts.not_proxied += 1
                    continue
                events = call_events(request, source=self.source, key=line_key(self.format.name, line.text))
                encoded = [encode_event(event) for event in events]
                # What the consumer would dead-letter is a bad line here.
                for body in encoded:
                    parse_event(body, max_bytes=self.max_body_bytes)
            except (BadLine, InvalidEvent) as error:
                self._bad(line, str(error))
                continue
            self.counts.requests += 1
            self.counts.events += len(encoded)
            bodies.extend(body.decode() for body in encoded)
        return bodies

    def send(self, bodies: list[str]) -> None:
        """Send ``bodies``, retrying what may pass; raise :class:`QueueError`
        when the queue refuses or the retries run out."""
        pending = bodies
        last: QueueError | None = None
        for _ in self.backoff.delays():
            if not pending:
                return
            try:
                self.queue.send(pending)
            except PartialSend as error:
                if not error.transient:
                    raise
                pending, last = pending[error.first_unsent :], error
            except TransientQueueError as error:
                last = error
            else:
                return
            log.warning("the queue did not take %d events (%s); retrying", len(pending), last)
        assert last is not None
        raise last

    # -- files -----------------------------------------------------------------------

    def read(self, path: Path, *, on_progress: Callable[[int], None] | None = None) -> None:
        """Read ``path`` from its start to its end, once."""
        tail = Tail(path)
        try:
            while True:
                lines = tail.poll(budget=4 * 1024 * 1024)
                if tail.at_end:
                    lines += tail.finish()
                self.send(self.bodies(lines))
                if on_progress is not None and tail.position.current is not None:
                    on_progress(tail.position.current["offset"])
                if tail.at_end:
                    return
        finally:
            tail.close()

    def follow(
        self,
        paths: Sequence[Path],
        state_dir: Path,
        stop: threading.Event,
        *,
        from_end: bool = False,
        poll_seconds: float = 0.2,
        finish: threading.Event | None = None,
        on_idle: Callable[[], object] | None = None,
    ) -> None:
        """Follow ``paths`` until ``stop`` is set, resuming where the last
        run stopped; what was read when ``stop`` is set is sent first.

        ``finish``: once set, return as soon as the files have nothing new
        (every line written before it was set is sent): the end of a log
        whose writer has stopped. ``on_idle`` is called after each pass over
        the files that found nothing new."""
        states = {path: _state_file(state_dir, self.format.name, path) for path in paths}
        tails = {path: Tail(path, _load(states[path]), from_end=from_end) for path in paths}
        try:
            while not stop.is_set():
                # Set before this pass began: the pass sees every line written before.
                finishing = finish is not None and finish.is_set()
                busy = False
                for path, tail in tails.items():
                    lines = tail.poll(budget=BATCH_LINES * 2048)
                    if not lines:
                        continue
                    busy = True
                    self.send(self.bodies(lines))
                    _save(states[path], path, tail.position)
                if not busy:
                    if on_idle is not None:
                        on_idle()
                    if finishing:
                        return
                    stop.wait(poll_seconds)
        finally:
            for tail in tails.values():
                tail.close()


def _state_file(state_dir: Path, format_name: str, path: Path) -> Path:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return state_dir / f"{format_name}-{path.name}-{digest}.json"


def _load(state: Path) -> Position | None:
    try:
        document = json.loads(state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("ignoring the unreadable position file %s (%s): reading from the start", state, error)
        return None
    position = Position.from_document(document)
    if position is None:
        log.warning("ignoring the malformed position file %s: reading from the start", state)
    return position


def _save(state: Path, path: Path, position: Position) -> None:
    state.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = state.with_suffix(".tmp")
    document = {"path": str(path.resolve()), **position.to_document()}
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(document, file)
    temporary.replace(state)
