"""The queue port on Amazon SQS, with the queue's dead-letter queue (DLQ).

- Sending uses SendMessageBatch: at most 10 entries and at most
  :data:`MAX_BATCH_BYTES` of bodies per call.
- Receiving long-polls; SQS counts visibility and waits in whole seconds, so
  both are rounded up. A receive of more than 10 messages makes several calls
  while they come back full.
- Acknowledging is DeleteMessageBatch; releasing is
  ChangeMessageVisibilityBatch (SQS cannot keep the error: a message that the
  redrive policy moves to the DLQ says how many receives it took instead).
- Dead letters are the messages of the DLQ. :meth:`SQSQueue.dead_letter`
  sends the body there with the reason and the original message id as message
  attributes, then deletes it from the queue. Listing receives the DLQ's
  messages with a short visibility timeout and makes them visible again at
  once, so looking never loses or hides a dead letter for long. Redriving
  sends a dead letter back to the queue as a new message (with a fresh receive
  count and a new SQS message id) and then deletes it from the DLQ.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from eventtrail.queue import DeadLetter, Message, Queue, QueueError, QueueStats, UnknownDeadLetter

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ENTRIES",
    "DeadLetterEntry",
    "SQSQueue",
    "dead_letter_attributes",
    "send_dead_letters",
]

#: SendMessageBatch, DeleteMessageBatch, ChangeMessageVisibilityBatch and
#: ReceiveMessage handle at most 10 messages per call.
MAX_BATCH_ENTRIES = 10
#: The most body bytes one SendMessageBatch may carry (SQS: 1 MiB in total).
MAX_BATCH_BYTES = 1024 * 1024
#: SQS's longest long poll and visibility timeout.
MAX_WAIT_SECONDS = 20
MAX_VISIBILITY_SECONDS = 43_200

#: Message attributes of a dead letter sent by eventtrail.
REASON_ATTRIBUTE = "eventtrail-reason"
ORIGINAL_ID_ATTRIBUTE = "eventtrail-original-id"
RECEIVE_COUNT_ATTRIBUTE = "eventtrail-receive-count"
SENT_AT_ATTRIBUTE = "eventtrail-sent-at"
#: A reason longer than this is cut (message attributes count toward the size limit).
MAX_REASON_CHARS = 1000
#: Characters SQS refuses in message bodies and attribute values.
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: How long listing the DLQ hides its messages before making them visible again.
_PEEK_SECONDS = 30


def dead_letter_attributes(
    *, reason: str, original_id: str, receive_count: int, sent_at: float
) -> dict[str, Any]:
    """The message attributes that carry a dead letter's story into the DLQ."""
    reason = _NOT_SQS_TEXT.sub("\N{REPLACEMENT CHARACTER}", reason)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return {
        REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason or "unknown"},
        ORIGINAL_ID_ATTRIBUTE: {"DataType": "String", "StringValue": original_id},
        RECEIVE_COUNT_ATTRIBUTE: {"DataType": "Number", "StringValue": str(receive_count)},
        SENT_AT_ATTRIBUTE: {"DataType": "Number", "StringValue": repr(float(sent_at))},
    }


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """A message on its way to the DLQ, and why."""

    message_id: str
    body: str
    reason: str
    receive_count: int
    sent_at: float


def send_dead_letters(client: SQSClient, dlq_url: str, entries: Sequence[DeadLetterEntry]) -> list[str]:
    """Send ``entries`` to the DLQ in batches; return the message ids that
    could not be sent (the caller must not let those go)."""
    failed: list[str] = []
    batch: list[DeadLetterEntry] = []
    size = 0

    def flush() -> None:
        try:
            response = client.send_message_batch(
                QueueUrl=dlq_url,
                Entries=[
                    {
                        "Id": str(n),
                        "MessageBody": entry.body,
                        "MessageAttributes": dead_letter_attributes(
                            reason=entry.reason,
                            original_id=entry.message_id,
                            receive_count=entry.receive_count,
                            sent_at=entry.sent_at,
                        ),
                    }
                    for n, entry in enumerate(batch)
                ],
            )
        except (BotoCoreError, ClientError):
            failed.extend(entry.message_id for entry in batch)
            return
        failed.extend(batch[int(entry["Id"])].message_id for entry in response.get("Failed", []))

    for entry in entries:
        entry_size = len(entry.body.encode("utf-8", "surrogatepass")) + MAX_REASON_CHARS * 4 + 200
        if batch and (len(batch) == MAX_BATCH_ENTRIES or size + entry_size > MAX_BATCH_BYTES):
            flush()
            batch, size = [], 0
        batch.append(entry)
        size += entry_size
    if batch:
        flush()
    return failed


def _describe(error: BaseException) -> str:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', 'ClientError')}: {details.get('Message', '')}".rstrip(": ")
    return f"{type(error).__name__}: {error}"


@contextmanager
def _sqs_errors(doing: str) -> Iterator[None]:
    """Turn botocore's errors into one-line :class:`QueueError`s."""
    try:
        yield
    except ClientError as error:
        raise QueueError(f"SQS could not {doing}: {_describe(error)}") from None
    except BotoCoreError as error:
        raise QueueError(f"cannot reach SQS to {doing}: {_describe(error)}") from None


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _seconds(value: float, upper: int) -> int:
    return max(0, min(upper, math.ceil(value)))


class SQSQueue(Queue):
    """A standard SQS queue and its DLQ (``max_receives`` is the redrive
    policy's ``maxReceiveCount``, read from the queue)."""

    def __init__(self, client: SQSClient, queue_url: str, dlq_url: str, *, max_receives: int) -> None:
        self.client = client
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self.max_receives = max_receives

    # -- sending --------------------------------------------------------------

    def _batches(self, bodies: Sequence[str]) -> Iterator[list[tuple[int, str]]]:
        batch: list[tuple[int, str]] = []
        size = 0
        for index, body in enumerate(bodies):
            body_size = len(body.encode("utf-8", "surrogatepass"))
            if batch and (len(batch) == MAX_BATCH_ENTRIES or size + body_size > MAX_BATCH_BYTES):
                yield batch
                batch, size = [], 0
            batch.append((index, body))
            size += body_size
        if batch:
            yield batch

    def send(self, bodies: Sequence[str]) -> list[str]:
        ids: list[str] = [""] * len(bodies)
        for batch in self._batches(bodies):
            pending = {str(index): body for index, body in batch}
            for attempt in range(5):
                if attempt:
                    time.sleep(0.05 * 2**attempt)
                with _sqs_errors("send messages"):
                    response = self.client.send_message_batch(
                        QueueUrl=self.queue_url,
                        Entries=[{"Id": key, "MessageBody": body} for key, body in pending.items()],
                    )
                for entry in response.get("Successful", []):
                    ids[int(entry["Id"])] = entry["MessageId"]
                    del pending[entry["Id"]]
                failed = response.get("Failed", [])
                refused = [entry for entry in failed if entry.get("SenderFault")]
                if refused:
                    first = refused[0]
                    raise QueueError(
                        f"SQS refused message {int(first['Id']) + 1}:"
                        f" {first.get('Code')}: {first.get('Message', '')}"
                    )
                if not pending:
                    break
            else:
                raise QueueError(f"SQS did not take {len(pending)} messages after 5 attempts")
        return ids

    # -- receiving and settling -----------------------------------------------

    def _receive_once(self, url: str, count: int, visibility: int, wait: int) -> list[dict[str, Any]]:
        with _sqs_errors("receive messages"):
            response = self.client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=count,
                VisibilityTimeout=visibility,
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
        return list(response.get("Messages", []))  # type: ignore[arg-type]

    def receive(
        self, max_messages: int, *, visibility_timeout: float, wait_seconds: float = 0.0
    ) -> list[Message]:
        visibility = _seconds(visibility_timeout, MAX_VISIBILITY_SECONDS)
        wait = _seconds(wait_seconds, MAX_WAIT_SECONDS)
        messages: list[Message] = []
        while len(messages) < max_messages:
            count = min(MAX_BATCH_ENTRIES, max_messages - len(messages))
            received = self._receive_once(self.queue_url, count, visibility, 0 if messages else wait)
            messages += [self._message(raw) for raw in received]
            if len(received) < count:
                break
        return messages

    @staticmethod
    def _message(raw: dict[str, Any]) -> Message:
        attributes = raw.get("Attributes", {})
        return Message(
            id=raw["MessageId"],
            body=raw.get("Body", ""),
            receipt=raw["ReceiptHandle"],
            receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
            sent_at=int(attributes.get("SentTimestamp", 0)) / 1000,
        )

    def _delete(self, url: str, receipts: Sequence[str]) -> None:
        for chunk in _chunks(receipts, MAX_BATCH_ENTRIES):
            with _sqs_errors("delete messages"):
                self.client.delete_message_batch(
                    QueueUrl=url,
                    Entries=[{"Id": str(n), "ReceiptHandle": receipt} for n, receipt in enumerate(chunk)],
                )
            # Failed entries are stale receipts (redelivered meanwhile): the
            # newer delivery settles them.

    def _change_visibility(self, url: str, receipts: Sequence[str], seconds: int) -> None:
        for chunk in _chunks(receipts, MAX_BATCH_ENTRIES):
            with _sqs_errors("change message visibility"):
                self.client.change_message_visibility_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(n), "ReceiptHandle": receipt, "VisibilityTimeout": seconds}
                        for n, receipt in enumerate(chunk)
                    ],
                )

    def ack(self, messages: Sequence[Message]) -> None:
        self._delete(self.queue_url, [message.receipt for message in messages])

    def release(self, messages: Sequence[Message], *, delay: float, error: str) -> None:
        self._change_visibility(
            self.queue_url, [message.receipt for message in messages], _seconds(delay, MAX_VISIBILITY_SECONDS)
        )

    def dead_letter(self, message: Message, reason: str) -> None:
        with _sqs_errors("send a message to the dead-letter queue"):
            self.client.send_message(
                QueueUrl=self.dlq_url,
                MessageBody=message.body,
                MessageAttributes=dead_letter_attributes(
                    reason=reason,
                    original_id=message.id,
                    receive_count=message.receive_count,
                    sent_at=message.sent_at,
                ),
            )
        self._delete(self.queue_url, [message.receipt])

    # -- dead letters ---------------------------------------------------------

    def _dead_letter_of(self, raw: dict[str, Any]) -> DeadLetter:
        attributes = raw.get("Attributes", {})
        custom = {
            name: value.get("StringValue", "") for name, value in raw.get("MessageAttributes", {}).items()
        }
        dlq_sent_at = int(attributes.get("SentTimestamp", 0)) / 1000
        if ORIGINAL_ID_ATTRIBUTE in custom:
            return DeadLetter(
                id=custom[ORIGINAL_ID_ATTRIBUTE],
                body=raw.get("Body", ""),
                reason=custom.get(REASON_ATTRIBUTE) or "unknown",
                receive_count=int(custom.get(RECEIVE_COUNT_ATTRIBUTE) or 0),
                sent_at=float(custom.get(SENT_AT_ATTRIBUTE) or dlq_sent_at),
                failed_at=dlq_sent_at,
            )
        # Moved by the redrive policy: same message id, same sent time.
        return DeadLetter(
            id=raw["MessageId"],
            body=raw.get("Body", ""),
            reason=(
                f"not processed after {self.max_receives} receive{'s' if self.max_receives != 1 else ''}"
                " (the queue's maxReceiveCount)"
            ),
            receive_count=self.max_receives,
            sent_at=dlq_sent_at,
            failed_at=dlq_sent_at,
        )

    @contextmanager
    def _held_dead_letters(self, limit: int | None) -> Iterator[list[tuple[DeadLetter, str]]]:
        """Receive up to ``limit`` DLQ messages (all when ``None``), holding
        them hidden while the caller looks, then make the ones still there
        visible again."""
        held: list[tuple[DeadLetter, str]] = []
        receipts: list[str] = []
        seen: set[str] = set()
        try:
            while limit is None or len(held) < limit:
                count = MAX_BATCH_ENTRIES if limit is None else min(MAX_BATCH_ENTRIES, limit - len(held))
                received = self._receive_once(self.dlq_url, count, _PEEK_SECONDS, 0)
                if not received:
                    break
                for raw in received:
                    receipts.append(raw["ReceiptHandle"])
                    # A long listing can outlast the peek: a message seen
                    # again is the same dead letter, not another one.
                    if raw["MessageId"] not in seen:
                        seen.add(raw["MessageId"])
                        held.append((self._dead_letter_of(raw), raw["ReceiptHandle"]))
            yield held
        finally:
            if receipts:
                # If this fails they come back by themselves after _PEEK_SECONDS.
                with contextlib.suppress(QueueError):
                    self._change_visibility(self.dlq_url, receipts, 0)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._held_dead_letters(None) as held:
            letters = sorted((letter for letter, _ in held), key=lambda letter: (letter.failed_at, letter.id))
        return letters[:limit]

    def get_dead_letter(self, message_id: str) -> DeadLetter:
        with self._held_dead_letters(None) as held:
            for letter, _ in held:
                if letter.id == message_id:
                    return letter
        raise UnknownDeadLetter(f"no dead letter has id {message_id!r}")

    def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        with self._held_dead_letters(None) as held:
            if message_ids is None:
                chosen = held
            else:
                wanted = set(message_ids)
                unknown = sorted(wanted - {letter.id for letter, _ in held})
                if unknown:
                    raise UnknownDeadLetter(f"no dead letter has id {', '.join(map(repr, unknown))}")
                chosen = [(letter, receipt) for letter, receipt in held if letter.id in wanted]
            # Sent first, deleted after: a failure in between duplicates a
            # message (the store keeps one copy), it never loses one.
            self.send([letter.body for letter, _ in chosen])
            self._delete(self.dlq_url, [receipt for _, receipt in chosen])
        return len({letter.id for letter, _ in chosen})

    def stats(self) -> QueueStats:
        names: Any = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        with _sqs_errors("read queue attributes"):
            queue = self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)[
                "Attributes"
            ]
            dlq = self.client.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=names)["Attributes"]
        return QueueStats(
            visible=int(queue.get("ApproximateNumberOfMessages", 0))
            + int(queue.get("ApproximateNumberOfMessagesDelayed", 0)),
            in_flight=int(queue.get("ApproximateNumberOfMessagesNotVisible", 0)),
            dead=sum(int(dlq.get(name, 0)) for name in names),
        )

    def close(self) -> None:
        self.client.close()
