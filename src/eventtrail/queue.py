"""The queue port: what the producers, the worker and the CLI need of a queue.

Adapters: :mod:`eventtrail.embedded.queue` (a SQLite file) and
:mod:`eventtrail.aws.sqs` (Amazon SQS with its dead-letter queue). Delivery is
at least once: a received message that is not acknowledged becomes visible
again after its visibility timeout, and after ``max_receives`` receives it
moves to the dead letters.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Self

import msgspec

__all__ = [
    "BodyTooLarge",
    "DeadLetter",
    "Message",
    "PartialSend",
    "Queue",
    "QueueError",
    "QueueStats",
    "TransientQueueError",
    "UnknownDeadLetter",
]


class QueueError(Exception):
    """The queue could not do what was asked (unreachable, misconfigured...)."""


class TransientQueueError(QueueError):
    """A failure that may pass (locked, throttled, unreachable): retry later."""


class PartialSend(QueueError):
    """A send stopped part way: some bodies were accepted, the rest were not.

    ``ids`` has one entry per body sent, in order: the message id of a body
    the queue accepted, ``None`` for one it did not. ``first_unsent`` is the
    index of the first body not accepted: sending the bodies from there on
    again completes the send (a body after it that was accepted is sent
    twice, which at-least-once delivery allows and idempotent storage
    absorbs). ``cause`` is the failure that stopped the send.
    """

    def __init__(self, ids: Sequence[str | None], cause: QueueError) -> None:
        self.ids = list(ids)
        self.cause = cause
        self.first_unsent = next(
            (index for index, found in enumerate(self.ids) if found is None), len(self.ids)
        )
        self.sent = sum(found is not None for found in self.ids)
        super().__init__(f"{self.sent} of {len(self.ids)} messages were sent: {cause}")

    @property
    def transient(self) -> bool:
        """Whether the failure may pass, so that sending the rest later may succeed."""
        return isinstance(self.cause, TransientQueueError)


class UnknownDeadLetter(QueueError, LookupError):
    """No dead letter has that id."""


class BodyTooLarge(QueueError):
    """The queue refused the bodies at ``indexes`` (positions in the batch
    given to ``send``) for their size, and took every other body of it."""

    def __init__(self, indexes: Sequence[int], message: str = "") -> None:
        self.indexes = list(indexes)
        super().__init__(message or f"{len(self.indexes)} bodies too large for the queue")


class Message(msgspec.Struct, frozen=True):
    """A received message.

    ``receipt`` identifies this one delivery: acknowledging or releasing with a
    stale receipt (the message was redelivered meanwhile) has no effect.
    """

    id: str
    body: str
    receipt: str
    receive_count: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that will not be delivered again until it is redriven."""

    id: str
    body: str
    reason: str
    receive_count: int
    sent_at: float
    failed_at: float

    def to_document(self) -> dict[str, object]:
        """The JSON form that ``dlq list --json`` and the HTTP API both show."""
        return {
            "id": self.id,
            "reason": self.reason,
            "receiveCount": self.receive_count,
            "sentAt": datetime.fromtimestamp(self.sent_at).astimezone().isoformat(),
            "failedAt": datetime.fromtimestamp(self.failed_at).astimezone().isoformat(),
            "body": self.body,
        }


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Approximate counts, for progress and for ``--drain``."""

    visible: int
    in_flight: int
    dead: int

    @property
    def pending(self) -> int:
        """Messages still to be processed (visible, delayed or being processed)."""
        return self.visible + self.in_flight


class Queue(abc.ABC):
    """A durable queue of message bodies with dead letters."""

    #: How many receives before a message moves to the dead letters.
    max_receives: int
    #: Messages that :meth:`receive` moved to the dead letters (received
    #: ``max_receives`` times) since this queue was opened; 0 where the broker
    #: moves them itself (SQS's redrive policy).
    exhausted: int = 0

    @abc.abstractmethod
    def send(self, bodies: Sequence[str]) -> list[str]:
        """Enqueue ``bodies``; return their message ids in the same order.

        Raises :class:`PartialSend` when some bodies were accepted before a
        failure, :class:`BodyTooLarge` when every body was but those it names;
        any other :class:`QueueError` means none was."""

    @abc.abstractmethod
    def receive(
        self, max_messages: int, *, visibility_timeout: float, wait_seconds: float = 0.0
    ) -> list[Message]:
        """Take up to ``max_messages`` visible messages, hiding them for
        ``visibility_timeout`` seconds. Waits up to ``wait_seconds`` for the
        first one (long polling)."""

    @abc.abstractmethod
    def ack(self, messages: Sequence[Message]) -> None:
        """Delete messages that were processed."""

    @abc.abstractmethod
    def release(self, messages: Sequence[Message], *, delay: float, error: str) -> None:
        """Make messages visible again after ``delay`` seconds, remembering
        ``error`` as the reason if they end in the dead letters."""

    @abc.abstractmethod
    def dead_letter(self, message: Message, reason: str) -> None:
        """Move a message to the dead letters now (it can never succeed)."""

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    @abc.abstractmethod
    def get_dead_letter(self, message_id: str) -> DeadLetter:
        """One dead letter; raises :class:`UnknownDeadLetter`."""

    @abc.abstractmethod
    def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        """Move dead letters back to the queue (all when ``message_ids`` is
        ``None``) with a fresh receive count; return how many moved. Raises
        :class:`UnknownDeadLetter` naming ids that are not dead letters."""

    @abc.abstractmethod
    def stats(self) -> QueueStats:
        """Approximate message counts."""

    def close(self) -> None:  # noqa: B027 - optional hook, most adapters hold nothing
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
