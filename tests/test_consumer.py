from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from eventtrail.consumer import Consumer, Outcome, Record, Verdict
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import Event, encode_event
from eventtrail.store import AppendResult, AppendStatus, Store, TransientStoreError
from tests.contract.store_contract import make_event


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
