"""The consumer core: one batch of queue messages in, one verdict per message out.

The local worker and the Lambda handler both call :meth:`Consumer.process`;
neither the parsing nor the storing knows which queue the messages came from.
A message that can never succeed is dead-lettered at once with its reason and
never holds back the good messages of its batch; store failures that may pass
are retried here with backoff, then handed back to the queue as ``RETRY``.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence

import msgspec

from eventtrail.event import DEFAULT_MAX_BODY_BYTES, Event, InvalidEvent, parse_event
from eventtrail.retry import Backoff, RetriesExhausted
from eventtrail.store import AppendResult, AppendStatus, Store, StoreError, TransientStoreError

__all__ = ["Consumer", "Outcome", "Record", "Verdict"]

log = logging.getLogger(__name__)


class Verdict(enum.StrEnum):
    SUCCESS = "success"
    """Stored (now or before): delete the message."""
    RETRY = "retry"
    """Not stored this time: let the queue deliver it again."""
    DEAD_LETTER = "dead_letter"
    """Can never be stored: move it to the dead letters with the reason."""


class Record(msgspec.Struct, frozen=True):
    """What the core needs of a queue message, whatever the queue."""

    message_id: str
    body: str


class Outcome(msgspec.Struct, frozen=True):
    message_id: str
    verdict: Verdict
    reason: str | None = None


_VERDICT_OF_STATUS = {
    AppendStatus.STORED: Verdict.SUCCESS,
    AppendStatus.DUPLICATE: Verdict.SUCCESS,
    AppendStatus.CONFLICT: Verdict.DEAD_LETTER,
    AppendStatus.REJECTED: Verdict.DEAD_LETTER,
    AppendStatus.FAILED: Verdict.RETRY,
}

_REASON_OF_STATUS = {
    AppendStatus.CONFLICT: "another event with the same id is already stored",
    AppendStatus.REJECTED: "the store cannot hold this event",
    AppendStatus.FAILED: "the store did not take this event this time",
}


class Consumer:
    """Parses, validates and stores batches of messages.

    ``attempts`` and ``backoff`` (the first delay's ceiling) bound the
    in-process retries of a store that failed a whole batch in a way that may
    pass (:class:`~eventtrail.store.TransientStoreError`, a locked SQLite
    file), with :class:`~eventtrail.retry.Backoff`; past them the messages are
    handed back to the queue, which retries them later and dead-letters them
    after its own receive limit. Per-event failures (``FAILED``) go straight
    back to the queue: the store has retried them already. The budget of each
    layer is in ``docs/retries.md``.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        attempts: int = 4,
        backoff: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.retry = Backoff(attempts=attempts, base=backoff, sleep=sleep)

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Return one outcome per record, in the order of ``records``."""
        outcomes: list[Outcome | None] = [None] * len(records)
        events: list[Event] = []
        positions: list[int] = []
        for index, record in enumerate(records):
            try:
                events.append(parse_event(record.body, max_bytes=self.max_body_bytes))
            except InvalidEvent as error:
                outcomes[index] = Outcome(record.message_id, Verdict.DEAD_LETTER, str(error))
            except Exception as error:
                # Parsing is pure: whatever it raises is about this body alone,
                # never a reason to fail the rest of the batch.
                log.exception("the parser failed on message %s", record.message_id)
                why = f"the body cannot be parsed ({type(error).__name__}: {error})"
                outcomes[index] = Outcome(record.message_id, Verdict.DEAD_LETTER, why)
            else:
                positions.append(index)
        if events:
            for index, result in zip(positions, self._append(events), strict=True):
                verdict = _VERDICT_OF_STATUS[result.status]
                reason = None
                if verdict is not Verdict.SUCCESS:
                    reason = result.reason or _REASON_OF_STATUS[result.status]
                outcomes[index] = Outcome(records[index].message_id, verdict, reason)
        return [outcome for outcome in outcomes if outcome is not None]

    def _append(self, events: list[Event]) -> list[AppendResult]:
        def append() -> list[AppendResult]:
            try:
                return self.store.append(events)
            except TransientStoreError as error:
                log.info("store busy (%s); retrying after a backoff", error)
                raise

        try:
            return self.retry.run(append, retry_on=(TransientStoreError,))
        except RetriesExhausted as exhausted:
            reason = f"store unavailable after {exhausted.attempts} attempts: {exhausted.last}"
        except StoreError as error:
            # The store already said what is wrong, in words: no traceback.
            log.error("store failed on a batch of %d events: %s", len(events), error)
            reason = f"store error: {error}"
        except Exception as error:
            log.exception("store failed on a batch of %d events", len(events))
            reason = f"store error: {type(error).__name__}: {error}"
        return [AppendResult(AppendStatus.FAILED, reason)] * len(events)
