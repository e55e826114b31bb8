"""The queue port on Amazon SQS, with the queue's dead-letter queue (DLQ).

- Sending uses SendMessageBatch: at most 10 entries and at most
  :data:`MAX_BATCH_BYTES` of bodies per call.
- A send that fails part way raises :class:`~eventtrail.queue.PartialSend`
  with the message id of every body accepted so far; entries SQS fails on its
  side are sent again (with :data:`ENTRY_BACKOFF`), entries it refuses as the
  sender's fault are not. Bodies over the queue's ``MaximumMessageSize`` are
  not sent: once every other body is, :class:`~eventtrail.queue.BodyTooLarge`
  names them (so do entries SQS refuses for their size).
- Receiving long-polls; SQS counts visibility and waits in whole seconds, so
  both are rounded up. A receive of more than 10 messages makes several calls
  while they come back full.
- Acknowledging is DeleteMessageBatch; releasing is
  ChangeMessageVisibilityBatch (SQS cannot keep the error: a message that the
  redrive policy moves to the DLQ says how many receives it took instead).
  Entries these fail on SQS's side are retried like a send's; entries failed
  as the sender's fault have stale receipts, which the newer delivery settles.
- Every failure is a :class:`~eventtrail.queue.QueueError`; one that may pass
  (the network, a timeout, throttling, a 5xx) is a
  :class:`~eventtrail.queue.TransientQueueError`, which the worker waits out.
  botocore has already retried the call (``CLIENT_CONFIG`` in
  :mod:`eventtrail.aws.backend`); this adapter retries only what a call that
  succeeded left undone, its failed entries.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.exceptions
from botocore.exceptions import BotoCoreError, ClientError

from eventtrail.queue import (
    BodyTooLarge,
    DeadLetter,
    Message,
    PartialSend,
    Queue,
    QueueError,
    QueueStats,
    TransientQueueError,
    UnknownDeadLetter,
)
from eventtrail.retry import Backoff

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

__all__ = [
    "ENTRY_BACKOFF",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ENTRIES",
    "DeadLetterEntry",
    "SQSQueue",
    "dead_letter_attributes",
    "queue_error",
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

#: Retries of the entries of a batch call that SQS failed on its side while
#: the call itself succeeded (botocore retries failed calls, not failed
#: entries): 3 calls at most per batch, each tried up to 3 times by botocore.
ENTRY_BACKOFF = Backoff(attempts=3, base=0.1, cap=1.0)

#: Error codes of a batch entry refused for its size.
_TOO_LONG_CODES = frozenset({"BatchEntryTooLong", "MessageTooLong"})

#: Error codes of failures that may pass, besides any answer with HTTP status
#: 429 or 5xx. SQS's JSON protocol also reports some with an
#: ``AWS.SimpleQueueService.`` prefix.
_MAY_PASS_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "KmsThrottled",
        "OverLimit",
        "RequestThrottled",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
    }
)


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


def _code_may_pass(code: str) -> bool:
    return code.removeprefix("AWS.SimpleQueueService.") in _MAY_PASS_CODES


def _may_pass(error: BotoCoreError | ClientError) -> bool:
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return (
            status == 429 or status >= 500 or _code_may_pass(error.response.get("Error", {}).get("Code", ""))
        )
    # Refused, reset, closed or timed out connections; not missing
    # credentials, a missing region or a bad parameter, which stay.
    return isinstance(
        error,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.IncompleteReadError,
    )


def queue_error(doing: str, error: BotoCoreError | ClientError) -> QueueError:
    """The one-line :class:`QueueError` for a botocore failure while
    ``doing`` something: a :class:`TransientQueueError` if it may pass."""
    if isinstance(error, ClientError):
        text = f"SQS could not {doing}: {_describe(error)}"
    else:
        text = f"cannot reach SQS to {doing}: {_describe(error)}"
    return TransientQueueError(text) if _may_pass(error) else QueueError(text)


@contextmanager
def _sqs_errors(doing: str) -> Iterator[None]:
    """Turn botocore's errors into one-line :class:`QueueError`s."""
    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise queue_error(doing, error) from None


def _settle_entries(
    call: Callable[[list[dict[str, Any]]], Mapping[str, Any]],
    entries: Sequence[dict[str, Any]],
    *,
    doing: str,
    backoff: Backoff,
    refused: Callable[[Mapping[str, Any]], QueueError | None] | None = None,
    on_success: Callable[[Mapping[str, Any]], None] | None = None,
) -> None:
    """Make one batch call for ``entries`` (each with a unique ``Id``) and
    make it again for the entries SQS failed on its side, with ``backoff``.

    An entry failed as the sender's fault is never retried: with ``refused``
    it raises the error ``refused`` makes of it, if any (a send SQS refuses);
    without, it is a stale receipt (a delete or visibility change of a
    message that was redelivered meanwhile), which the newer delivery
    settles. Raises :class:`TransientQueueError` when entries are still
    failing at the end.
    """
    pending = {entry["Id"]: entry for entry in entries}
    failed: list[Mapping[str, Any]] = []
    for _attempt in backoff.delays():
        with _sqs_errors(doing):
            response = call(list(pending.values()))
        for entry in response.get("Successful", []):
            if on_success is not None:
                on_success(entry)
            pending.pop(entry["Id"], None)
        failed = list(response.get("Failed", []))
        for entry in failed:
            if entry.get("SenderFault") and not _code_may_pass(entry.get("Code", "")):
                if refused is not None and (error := refused(entry)) is not None:
                    raise error
                pending.pop(entry["Id"], None)
        if not pending:
            return
    still = [entry for entry in failed if entry["Id"] in pending]
    first = still[0] if still else {}
    raise TransientQueueError(
        f"SQS could not {doing} ({len(pending)} failed {backoff.attempts} times):"
        f" {first.get('Code', 'no answer')}: {first.get('Message', '')}".rstrip(": ")
    )


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _seconds(value: float, upper: int) -> int:
    return max(0, min(upper, math.ceil(value)))


class SQSQueue(Queue):
    """A standard SQS queue and its DLQ (``max_receives`` is the redrive
    policy's ``maxReceiveCount`` and ``max_message_bytes`` its
    ``MaximumMessageSize``, both read from the queue; ``entry_backoff``
    retries the entries a batch call failed)."""

    def __init__(
        self,
        client: SQSClient,
        queue_url: str,
        dlq_url: str,
        *,
        max_receives: int,
        max_message_bytes: int = MAX_BATCH_BYTES,
        entry_backoff: Backoff = ENTRY_BACKOFF,
    ) -> None:
        self.client = client
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self.max_receives = max_receives
        self.max_message_bytes = max_message_bytes
        self.entry_backoff = entry_backoff

    # -- sending --------------------------------------------------------------

    def _batches(self, bodies: Sequence[str], too_large: list[int]) -> Iterator[list[tuple[int, str]]]:
        """``bodies`` in batches that SQS takes, with their indexes; the
        indexes of bodies over the queue's size limit go to ``too_large``."""
        batch: list[tuple[int, str]] = []
        size = 0
        for index, body in enumerate(bodies):
            body_size = len(body.encode("utf-8", "surrogatepass"))
            if body_size > self.max_message_bytes:
                too_large.append(index)
                continue
            if batch and (len(batch) == MAX_BATCH_ENTRIES or size + body_size > MAX_BATCH_BYTES):
                yield batch
                batch, size = [], 0
            batch.append((index, body))
            size += body_size
        if batch:
            yield batch

    def send(self, bodies: Sequence[str]) -> list[str]:
        ids: list[str | None] = [None] * len(bodies)
        too_large: list[int] = []
        for batch in self._batches(bodies, too_large):
            try:
                self._send_batch(batch, ids, too_large)
            except QueueError as error:
                if any(found is not None for found in ids):
                    raise PartialSend(ids, error) from None
                raise
        if too_large:
            raise BodyTooLarge(
                sorted(too_large),
                f"SQS refused {len(too_large)} of {len(bodies)} messages for their size"
                f" (the queue's MaximumMessageSize is {self.max_message_bytes:,} bytes)",
            )
        return [found for found in ids if found is not None]

    def _send_batch(self, batch: list[tuple[int, str]], ids: list[str | None], too_large: list[int]) -> None:
        def record(entry: Mapping[str, Any]) -> None:
            ids[int(entry["Id"])] = entry["MessageId"]

        def refused(entry: Mapping[str, Any]) -> QueueError | None:
            if entry.get("Code") in _TOO_LONG_CODES:
                too_large.append(int(entry["Id"]))
                return None
            return QueueError(
                f"SQS refused message {int(entry['Id']) + 1}: {entry.get('Code')}: {entry.get('Message', '')}"
            )

        _settle_entries(
            lambda entries: self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries),  # type: ignore[arg-type]
            [{"Id": str(index), "MessageBody": body} for index, body in batch],
            doing="send messages",
            backoff=self.entry_backoff,
            refused=refused,
            on_success=record,
        )

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
            try:
                received = self._receive_once(self.queue_url, count, visibility, 0 if messages else wait)
            except QueueError:
                if not messages:
                    raise
                # The messages in hand are hidden already: process them now
                # rather than let them wait out their visibility timeout.
                break
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
            _settle_entries(
                lambda entries: self.client.delete_message_batch(QueueUrl=url, Entries=entries),  # type: ignore[arg-type]
                [{"Id": str(n), "ReceiptHandle": receipt} for n, receipt in enumerate(chunk)],
                doing="delete messages",
                backoff=self.entry_backoff,
            )

    def _change_visibility(self, url: str, receipts: Sequence[str], seconds: int) -> None:
        for chunk in _chunks(receipts, MAX_BATCH_ENTRIES):
            _settle_entries(
                lambda entries: self.client.change_message_visibility_batch(QueueUrl=url, Entries=entries),  # type: ignore[arg-type]
                [
                    {"Id": str(n), "ReceiptHandle": receipt, "VisibilityTimeout": seconds}
                    for n, receipt in enumerate(chunk)
                ],
                doing="change message visibility",
                backoff=self.entry_backoff,
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
            try:
                self.send([letter.body for letter, _ in chosen])
            except PartialSend as partial:
                # What reached the queue leaves the DLQ; the rest stays there.
                self._delete(
                    self.dlq_url,
                    [receipt for (_, receipt), found in zip(chosen, partial.ids, strict=True) if found],
                )
                raise
            except BodyTooLarge as refused:
                kept = set(refused.indexes)
                self._delete(
                    self.dlq_url, [receipt for n, (_, receipt) in enumerate(chosen) if n not in kept]
                )
                raise
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
