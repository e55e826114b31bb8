from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventtrail import consumer as consumer_module
from eventtrail.consumer import Consumer, Outcome, Record, Verdict
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import Event, encode_event, parse_event
from eventtrail.store import AppendResult, AppendStatus, Store, TransientStoreError
from tests.contract.store_contract import make_event
from tests.test_event import ARTICLE_MESSAGE


class FlakyStore(SQLiteStore):
    """A real SQLite store that fails the first ``failures`` appends."""

    def __init__(self, path: Path, *, failures: int, error: Exception | None = None) -> None:
        super().__init__(path)
        self.failures = failures
        self.error = error or TransientStoreError("database is locked")
        self.calls = 0

    def append(self, events: Sequence[Event]) -> list[AppendResult]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return super().append(events)


def record(event: Event, message_id: str | None = None) -> Record:
    return Record(message_id or event.id, encode_event(event).decode())


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "events.db")


def no_sleep(_: float) -> None:
    pass


def test_good_messages_are_stored_and_poison_ones_dead_lettered(store: Store) -> None:
    good = [make_event(), make_event()]
    records = [record(good[0]), Record("p1", "{not json"), Record("p2", '{"id": "x"}'), record(good[1])]
    outcomes = Consumer(store).process(records)
    assert [(o.message_id, o.verdict) for o in outcomes] == [
        (good[0].id, Verdict.SUCCESS),
        ("p1", Verdict.DEAD_LETTER),
        ("p2", Verdict.DEAD_LETTER),
        (good[1].id, Verdict.SUCCESS),
    ]
    assert outcomes[1].reason and "not valid JSON" in outcomes[1].reason
    assert outcomes[2].reason and "`requestId`" in outcomes[2].reason
    assert store.flow(good[0].request_id) == [good[0]]


def test_a_redelivered_message_succeeds_without_a_second_copy(store: Store) -> None:
    event = make_event()
    consumer = Consumer(store)
    assert consumer.process([record(event)])[0].verdict is Verdict.SUCCESS
    assert consumer.process([record(event)])[0].verdict is Verdict.SUCCESS
    assert store.flow(event.request_id) == [event]


def test_an_id_reused_by_another_event_is_dead_lettered(store: Store) -> None:
    original = make_event()
    impostor = make_event(event_id=original.id, data={"Name": "other"})
    consumer = Consumer(store)
    consumer.process([record(original)])
    (outcome,) = consumer.process([record(impostor, "m2")])
    assert outcome == Outcome("m2", Verdict.DEAD_LETTER, outcome.reason)
    assert outcome.reason and "already belongs to another event" in outcome.reason


def test_a_passing_store_failure_is_retried_in_place(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "events.db", failures=2)
    event = make_event()
    delays: list[float] = []
    (outcome,) = Consumer(store, sleep=delays.append, backoff=0.1).process([record(event)])
    assert outcome.verdict is Verdict.SUCCESS
    assert store.calls == 3
    assert len(delays) == 2 and 0 <= delays[0] <= 0.1 and 0 <= delays[1] <= 0.2


def test_a_lasting_store_failure_hands_valid_messages_back_for_retry(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "events.db", failures=99)
    outcomes = Consumer(store, attempts=3, sleep=no_sleep).process(
        [record(make_event()), Record("bad", "[]")]
    )
    assert [o.verdict for o in outcomes] == [Verdict.RETRY, Verdict.DEAD_LETTER]
    assert outcomes[0].reason and "after 3 attempts" in outcomes[0].reason
    assert store.calls == 3


def test_an_unexpected_store_error_is_retried_by_the_queue_not_raised(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "events.db", failures=1, error=RuntimeError("bug"))
    (outcome,) = Consumer(store, sleep=no_sleep).process([record(make_event())])
    assert outcome.verdict is Verdict.RETRY
    assert outcome.reason == "store error: RuntimeError: bug"
    assert store.calls == 1


class PerEventStore(SQLiteStore):
    """Reports chosen events as failed or rejected, the way DynamoDB can."""

    def __init__(self, path: Path, statuses: dict[str, AppendStatus]) -> None:
        super().__init__(path)
        self.statuses = statuses

    def append(self, events: Sequence[Event]) -> list[AppendResult]:
        return [
            AppendResult(self.statuses[e.id], "throttled") if e.id in self.statuses else result
            for e, result in zip(events, super().append(events), strict=True)
        ]


def test_per_event_store_results_map_to_verdicts(tmp_path: Path) -> None:
    events = [make_event() for _ in range(3)]
    store = PerEventStore(
        tmp_path / "events.db", {events[1].id: AppendStatus.FAILED, events[2].id: AppendStatus.REJECTED}
    )
    outcomes = Consumer(store).process([record(e) for e in events])
    assert [o.verdict for o in outcomes] == [Verdict.SUCCESS, Verdict.RETRY, Verdict.DEAD_LETTER]
    assert outcomes[1].reason == "throttled"


def test_the_size_limit_is_the_consumers_setting(store: Store) -> None:
    event = make_event(data={"blob": "x" * 500})
    (outcome,) = Consumer(store, max_body_bytes=300).process([record(event)])
    assert outcome.verdict is Verdict.DEAD_LETTER
    assert outcome.reason and "over the limit of 300 bytes" in outcome.reason


def test_an_empty_batch_has_no_outcomes(store: Store) -> None:
    assert Consumer(store).process([]) == []


# Every kind of poison, for the consumer core and for each queue in front of
# it (the worker on the SQLite queue, the Lambda handler on SQS).

#: The body size limit the poison tests run with (``too large`` is over it,
#: the 10,000-deep bodies are under it).
POISON_MAX_BODY_BYTES = 100_000


def _article(**changes: object) -> str:
    document = json.loads(ARTICLE_MESSAGE)
    for key, value in changes.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document)


def _digits_of(table_start: int, text: str) -> str:
    return text.translate(str.maketrans("0123456789", "".join(chr(table_start + n) for n in range(10))))


@dataclass(frozen=True)
class Poison:
    name: str
    body: str
    reason: str
    """Words the dead letter's reason holds."""
    sqs: bool = True
    """SQS can carry it (its bodies are XML characters: no NUL, no surrogate)."""
    sqlite: bool = True
    """The embedded queue can hold it (SQLite text is UTF-8: no surrogate)."""


POISON = [
    Poison("not-json", "{not json", "not valid JSON"),
    Poison("empty", "", "not valid JSON"),
    Poison("not-an-object", "[1, 2]", "not a JSON object"),
    Poison("null", "null", "not a JSON object"),
    Poison("missing-field", _article(requestId=...), "field `requestId`: required field is missing"),
    Poison("unknown-field", _article(extra=1), "field `extra`: unknown field"),
    Poison("wrong-type", _article(id=42), "field `id`: expected `str`, got `int`"),
    Poison("wrong-data-type", _article(data=[1]), "field `data`: expected `object`"),
    Poison("id-too-long", _article(id="x" * 257), "field `id`: expected `str` of length <= 256"),
    Poison(
        "timestamp-before-year-1",
        _article(timestamp="0001-01-01T00:00:00+01:00"),
        "field `timestamp`: '0001-01-01T00:00:00+01:00' falls outside the years 0001 to 9999",
    ),
    Poison(
        "timestamp-after-year-9999",
        _article(timestamp="9999-12-31T23:59:59-01:00"),
        "field `timestamp`: '9999-12-31T23:59:59-01:00' falls outside the years 0001 to 9999",
    ),
    Poison(
        "arabic-indic-digits",
        _article(timestamp=_digits_of(0x0660, "2020-05-01T20:00:00Z")),
        "not an ISO 8601 timestamp",
    ),
    Poison(
        "arabic-indic-year-in-the-stored-form",
        _article(timestamp=_digits_of(0x0660, "2020") + "-05-01T20:00:00.000000Z"),
        "not an ISO 8601 timestamp",
    ),
    Poison(
        "fullwidth-digits",
        _article(timestamp=_digits_of(0xFF10, "2020") + "-05-01T20:00:00Z"),
        "not an ISO 8601 timestamp",
    ),
    Poison("no-offset", _article(timestamp="2020-05-01T20:00:00"), "has no UTC offset"),
    Poison("leap-second", _article(timestamp="2016-12-31T23:59:60Z"), "leap second"),
    Poison(
        "too-large", _article(data={"blob": "x" * POISON_MAX_BODY_BYTES}), "over the limit of 100,000 bytes"
    ),
    Poison(
        "too-deep-data",
        _article(data={"a": 1}).replace("1}", '{"a":' * 10_000 + "1" + "}" * 10_001),
        "nested too deeply",
    ),
    Poison(
        "deep-data",
        _article(data={"a": 1}).replace("1}", '{"a":' * 40 + "1" + "}" * 41),
        "nested deeper than 31",
    ),
    Poison("too-deep-array", "[" * 10_000 + "]" * 10_000, "not a JSON object"),
    Poison("huge-float", _article(data={"n": 1}).replace('"n": 1', '"n": 1e400'), "number out of range"),
    Poison(
        "huge-integer",
        _article(data={"n": 1}).replace('"n": 1', '"n": 1' + "0" * 5000),
        "integer value out of range",
    ),
    Poison("escaped-lone-surrogate", _article().replace("Gateway", "Gate\\ud800way"), "not valid JSON"),
    Poison("nul", _article().replace("Gateway", "Gate\x00way"), "not valid JSON", sqs=False),
    Poison(
        "lone-surrogate",
        _article().replace("Gateway", "Gate\ud800way"),
        "not valid UTF-8",
        sqs=False,
        sqlite=False,
    ),
    Poison(
        "invalid-utf-8",
        ARTICLE_MESSAGE.replace(b"Gateway", b"Gate\xffway").decode("utf-8", "surrogateescape"),
        "not valid UTF-8",
        sqs=False,
        sqlite=False,
    ),
]


def test_every_poison_is_a_dead_letter_with_its_reason_and_the_valid_ones_are_stored(store: Store) -> None:
    good = [make_event() for _ in range(len(POISON) + 1)]
    records: list[Record] = []
    for index, poison in enumerate(POISON):
        records += [record(good[index]), Record(poison.name, poison.body)]
    records.append(record(good[-1]))

    outcomes = Consumer(store, max_body_bytes=POISON_MAX_BODY_BYTES).process(records)

    assert [outcome.message_id for outcome in outcomes] == [r.message_id for r in records]
    verdicts = {outcome.message_id: outcome for outcome in outcomes}
    for poison in POISON:
        outcome = verdicts[poison.name]
        assert outcome.verdict is Verdict.DEAD_LETTER, poison.name
        assert outcome.reason and poison.reason in outcome.reason, (poison.name, outcome.reason)
    for event in good:
        assert verdicts[event.id].verdict is Verdict.SUCCESS
        assert store.flow(event.request_id) == [event]


def test_a_parser_failure_of_any_kind_dead_letters_only_its_message(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # parse_event turns every failure into InvalidEvent; this is the core's
    # own guard for a parser that one day does not.

    def parse(body: str | bytes, *, max_bytes: int) -> Event:
        if body == "overflow":
            raise OverflowError("date value out of range")
        return parse_event(body, max_bytes=max_bytes)

    monkeypatch.setattr(consumer_module, "parse_event", parse)
    good = make_event()
    with caplog.at_level(logging.ERROR, logger="eventtrail.consumer"):
        outcomes = Consumer(store).process([Record("bad", "overflow"), record(good)])
    assert outcomes == [
        Outcome(
            "bad", Verdict.DEAD_LETTER, "the body cannot be parsed (OverflowError: date value out of range)"
        ),
        Outcome(good.id, Verdict.SUCCESS),
    ]
    assert store.flow(good.request_id) == [good]
    assert "the parser failed on message bad" in caplog.text
