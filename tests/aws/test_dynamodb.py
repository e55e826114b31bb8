"""What the DynamoDB store does beyond the contract: the table's shard tag,
items DynamoDB cannot hold, exact number types, TTL, what a write costs in
requests, and the retries of throttled puts (through a misbehaving HTTP
proxy)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.config import Config

from eventtrail.aws.dynamodb import DEFAULT_RETRY, DynamoDBStore
from eventtrail.aws.schema import TABLE, shard_of
from eventtrail.retry import Backoff
from eventtrail.store import AppendStatus, canonical
from tests.aws.conftest import Aws
from tests.aws.proxy import Fault, proxy
from tests.aws.test_contracts import dynamodb_table
from tests.contract.store_contract import make_event, same_key, unique


@pytest.fixture(scope="module")
def moto_store(moto: Aws) -> Iterator[DynamoDBStore]:
    with dynamodb_table(moto, index_shards=4) as store:
        yield store


@pytest.fixture(scope="module")
def dynalite_store(dynalite: Aws) -> Iterator[DynamoDBStore]:
    with dynamodb_table(dynalite, index_shards=4) as store:
        yield store


@pytest.fixture(params=["moto", "dynalite"])
def store(request: pytest.FixtureRequest) -> DynamoDBStore:
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]


def raw_item(store: DynamoDBStore, request_id: str) -> dict[str, Any]:
    (item,) = store.client.query(
        TableName=store.table_name,
        KeyConditionExpression="#pk = :pk",
        ExpressionAttributeNames={"#pk": TABLE.partition_key},
        ExpressionAttributeValues={":pk": {"S": request_id}},
    )["Items"]
    return item


def test_the_shard_count_comes_from_the_table_tag(store: DynamoDBStore) -> None:
    # The store was opened with index_shards=1; `aws init` tagged the table with 4.
    assert store.default_shards == 1
    assert store.index_shards == 4
    event = make_event()
    store.append([event])
    item = raw_item(store, event.request_id)
    assert item["TypeShard"] == {"S": f"{event.type}#{shard_of(event.id, 4)}"}
    assert item["SourceShard"] == {"S": f"{event.source}#{shard_of(event.id, 4)}"}


def test_a_busy_type_spreads_over_every_shard_and_reads_back_merged(store: DynamoDBStore) -> None:
    kind = unique("busy")
    events = [make_event(type=kind) for _ in range(40)]
    assert all(r.ok for r in store.append(events))
    assert {shard_of(e.id, 4) for e in events} == {0, 1, 2, 3}
    assert store.events(type=kind, limit=1000).events == sorted(events, key=lambda e: (e.timestamp, e.id))


def test_an_item_over_400_kb_is_rejected_and_the_rest_of_the_batch_stored(store: DynamoDBStore) -> None:
    big = make_event(data={"blob": "x" * 410_000})
    small = make_event()
    results = store.append([big, small])
    assert results[0].status is AppendStatus.REJECTED
    assert results[0].reason and "over the item limit of 409,600 bytes" in results[0].reason
    assert results[1].status is AppendStatus.STORED
    assert store.flow(big.request_id) == []
    assert store.flow(small.request_id) == [small]


def test_an_item_just_under_the_limit_is_stored(store: DynamoDBStore) -> None:
    event = make_event(data={"blob": "x" * 400_000})
    assert store.append([event])[0].status is AppendStatus.STORED
    assert store.flow(event.request_id) == [event]


def test_a_number_outside_dynamodb_range_is_rejected_with_its_path(store: DynamoDBStore) -> None:
    event = make_event(data={"values": [1, {"huge": 1e300}]})
    (result,) = store.append([event])
    assert result.status is AppendStatus.REJECTED
    assert result.reason and "data.values[1].huge" in result.reason


def test_integral_floats_stay_floats_and_digits_are_exact(store: DynamoDBStore) -> None:
    data = {"f": 3.0, "list": [1, 2.0, {"deep": [0.0, 5]}], "pi": 3.141592653589793, "big": 10**37}
    event = make_event(data=data)
    store.append([event])
    (back,) = store.flow(event.request_id)
    assert back.data == data
    assert canonical(back) == canonical(event)
    assert type(back.data["f"]) is float
    assert [type(v) for v in back.data["list"][:2]] == [int, float]
    assert [type(v) for v in back.data["list"][2]["deep"]] == [float, int]
    assert back.data["pi"] == 3.141592653589793
    assert type(back.data["big"]) is int and back.data["big"] == 10**37
    item = raw_item(store, event.request_id)
    assert set(item["Data"]["M"]["f"]) == {"N"}  # a number in the table, not a string
    assert TABLE.float_paths in item


def test_retention_sets_the_ttl_attribute(moto_store: DynamoDBStore) -> None:
    store = DynamoDBStore(moto_store.client, moto_store.table_name, retention_days=2)
    event = make_event()
    store.append([event])
    expires = int(raw_item(store, event.request_id)["ExpiresAt"]["N"])
    assert expires == int(event.moment.timestamp()) + 2 * 86400
    no_ttl = make_event()
    moto_store.append([no_ttl])
    assert "ExpiresAt" not in raw_item(moto_store, no_ttl.request_id)


def test_a_missing_table_fails_the_events_for_a_retry(moto: Aws) -> None:
    store = DynamoDBStore(moto.dynamodb(), unique("missing"))
    (result,) = store.append([make_event()])
    assert result.status is AppendStatus.FAILED
    assert result.reason and "does not exist" in result.reason


THROTTLED = {
    "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
    "message": "The level of configured provisioned throughput for the table was exceeded.",
}
#: botocore's own retries off: what is counted is the store's.
NO_BOTOCORE_RETRIES = Config(retries={"total_max_attempts": 1})


def throttle_puts(count: int) -> Fault:
    """Answer the first ``count`` PutItem calls with throttling."""
    throttled = [0]

    def fault(operation: str, _: dict[str, Any]) -> Any:
        if operation != "PutItem" or throttled[0] >= count:
            return None
        throttled[0] += 1
        return (400, THROTTLED)

    return fault


def test_each_event_is_one_conditional_put_and_a_redelivery_one_more(
    moto: Aws, moto_store: DynamoDBStore
) -> None:
    with proxy(moto.url or "") as front:
        store = DynamoDBStore(Aws("proxy", front.url).dynamodb(), moto_store.table_name)
        events = [make_event() for _ in range(30)]
        assert store.index_shards == 4
        front.table_calls.clear()
        assert [r.status for r in store.append(events)] == [AppendStatus.STORED] * 30
        assert front.calls_on(store.table_name) == {"PutItem": 30}
        front.table_calls.clear()
        # moto, like DynamoDB, returns the stored item with the refusal: no read.
        assert [r.status for r in store.append(events[:5])] == [AppendStatus.DUPLICATE] * 5
        assert front.calls_on(store.table_name) == {"PutItem": 5}
        store.close()


def test_an_endpoint_that_returns_no_item_with_the_refusal_is_read_consistently(
    dynalite: Aws, dynalite_store: DynamoDBStore
) -> None:
    reads: list[dict[str, Any]] = []

    def record_reads(operation: str, request: dict[str, Any]) -> Any:
        if operation == "GetItem" and request.get("TableName") == dynalite_store.table_name:
            reads.append(request)
        return None

    with proxy(dynalite.url or "") as front:
        front.fault = record_reads
        store = DynamoDBStore(Aws("proxy", front.url).dynamodb(), dynalite_store.table_name)
        event = make_event(data={"n": 1})
        store.append([event])
        statuses = [
            r.status
            for r in store.append(
                [event, make_event(event_id=event.id, request_id=event.request_id, data={"n": 1.0})]
            )
        ]
        store.close()
    assert statuses == [AppendStatus.DUPLICATE, AppendStatus.CONFLICT]
    assert len(reads) == 1 and reads[0]["ConsistentRead"] is True


def test_concurrent_writers_of_one_key_leave_exactly_one_winner(store: DynamoDBStore) -> None:
    # What BatchWriteItem got wrong: the last writer won. Now the first does,
    # and every other writer learns which event holds the key.
    original = make_event()
    rivals = [same_key(original, {"writer": n}) for n in range(12)]
    with ThreadPoolExecutor(max_workers=len(rivals)) as pool:
        results = [r for (r,) in pool.map(lambda event: store.append([event]), rivals)]
    statuses = [r.status for r in results]
    assert statuses.count(AppendStatus.STORED) == 1
    assert statuses.count(AppendStatus.CONFLICT) == len(rivals) - 1
    winner = rivals[statuses.index(AppendStatus.STORED)]
    assert [canonical(e) for e in store.flow(original.request_id)] == [canonical(winner)]
    assert all(original.id in (r.reason or "") for r in results if r.status is AppendStatus.CONFLICT)


def test_a_negative_zero_reads_back_as_the_same_event(store: DynamoDBStore) -> None:
    # DynamoDB keeps no sign on zero; the canonical form writes -0.0 as 0.0.
    event = make_event(data={"z": -0.0, "list": [-0.0, 0]})
    assert store.append([event])[0].status is AppendStatus.STORED
    (back,) = store.flow(event.request_id)
    assert canonical(back) == canonical(event)
    assert type(back.data["list"][0]) is float and type(back.data["list"][1]) is int
    assert store.append([event])[0].status is AppendStatus.DUPLICATE


def test_throttled_puts_get_one_more_round_after_a_backoff(moto: Aws, moto_store: DynamoDBStore) -> None:
    with proxy(moto.url or "") as front:
        front.fault = throttle_puts(3)
        client = Aws("proxy", front.url).dynamodb(NO_BOTOCORE_RETRIES)
        sleeps: list[float] = []
        store = DynamoDBStore(
            client, moto_store.table_name, retry=Backoff(attempts=2, base=0.1, sleep=sleeps.append)
        )
        request_id = unique("request")
        events = [make_event(request_id=request_id) for _ in range(10)]
        results = store.append(events)
        store.close()
    assert [r.status for r in results] == [AppendStatus.STORED] * 10
    assert front.calls["PutItem"] == 13
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.1
    assert moto_store.flow(request_id) == sorted(events, key=lambda e: (e.timestamp, e.id))


def test_throttling_that_does_not_pass_fails_the_events_not_the_call(
    moto: Aws, moto_store: DynamoDBStore
) -> None:
    with proxy(moto.url or "") as front:
        front.fault = throttle_puts(10**6)
        client = Aws("proxy", front.url).dynamodb(NO_BOTOCORE_RETRIES)
        store = DynamoDBStore(client, moto_store.table_name, retry=Backoff(attempts=3, sleep=lambda _: None))
        event = make_event()
        started = time.monotonic()
        # The copies of a key are decided with their batch's first event.
        results = store.append([event, make_event(), event, same_key(event, {"other": True})])
        store.close()
    assert [r.status for r in results] == [AppendStatus.FAILED] * 4
    assert results[0].reason and "ProvisionedThroughputExceededException" in results[0].reason
    assert results[3].reason and "retry" in results[3].reason
    assert front.calls["PutItem"] == 2 * 3
    assert time.monotonic() - started < 5
    assert moto_store.flow(event.request_id) == []


@pytest.mark.slow
def test_the_write_budget_of_one_event_is_botocore_times_the_store(
    moto: Aws, moto_store: DynamoDBStore
) -> None:
    # docs/retries.md: botocore's 3 attempts (CLIENT_CONFIG) times the store's
    # 2 rounds (DEFAULT_RETRY) is at most 6 PutItem per event per delivery.
    with proxy(moto.url or "") as front:
        front.fault = throttle_puts(10**6)
        store = DynamoDBStore(Aws("proxy", front.url).dynamodb(), moto_store.table_name)
        assert store.retry == DEFAULT_RETRY
        (result,) = store.append([make_event()])
        store.close()
    assert result.status is AppendStatus.FAILED
    assert front.calls["PutItem"] == 3 * 2


def test_an_item_refused_by_its_size_decides_its_copies(store: DynamoDBStore) -> None:
    big = make_event(data={"blob": "x" * 410_000})
    results = store.append([big, big, same_key(big, {"small": 1})])
    assert [r.status for r in results] == [AppendStatus.REJECTED, AppendStatus.REJECTED, AppendStatus.FAILED]
    # The small one, delivered again on its own, is stored.
    assert store.append([same_key(big, {"small": 1})])[0].status is AppendStatus.STORED


def test_a_page_costs_one_query_per_shard(moto: Aws, moto_store: DynamoDBStore) -> None:
    kind = unique("paged")
    events = sorted((make_event(type=kind) for _ in range(120)), key=lambda e: (e.timestamp, e.id))
    moto_store.append(events)
    with proxy(moto.url or "") as front:
        store = DynamoDBStore(Aws("proxy", front.url).dynamodb(), moto_store.table_name)
        assert store.index_shards == 4
        front.calls.clear()
        page = store.events(type=kind, limit=40)
        assert page.events == events[:40]
        # One Query per shard, and at most one more per shard when a shard's
        # first answer ends at its limit before the merged page is full.
        assert 4 <= front.calls["Query"] <= 8
        seen = list(page.events)
        while page.cursor:
            page = store.events(type=kind, limit=40, cursor=page.cursor)
            seen += page.events
        store.close()
    assert seen == events
