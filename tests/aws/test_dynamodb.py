"""What the DynamoDB store does beyond the contract: the table's shard tag,
items DynamoDB cannot hold, exact number types, TTL, and retries of
throttled or unprocessed writes (through a misbehaving HTTP proxy)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config

from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.schema import TABLE, shard_of
from eventtrail.store import AppendStatus
from tests.aws.conftest import Aws
from tests.aws.proxy import proxy
from tests.aws.test_contracts import dynamodb_table
from tests.contract.store_contract import make_event, unique


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


def test_one_id_twice_in_a_batch_with_different_data_is_a_conflict(moto_store: DynamoDBStore) -> None:
    event = make_event()
    other = make_event(event_id=event.id, request_id=event.request_id, data={"Name": "other"})
    statuses = [r.status for r in moto_store.append([event, other])]
    assert statuses == [AppendStatus.STORED, AppendStatus.CONFLICT]
    assert moto_store.flow(event.request_id) == [event]


def test_a_missing_table_fails_the_events_for_a_retry(moto: Aws) -> None:
    store = DynamoDBStore(moto.dynamodb(), unique("missing"))
    (result,) = store.append([make_event()])
    assert result.status is AppendStatus.FAILED
    assert result.reason and "does not exist" in result.reason


def test_unprocessed_items_are_retried_until_written(moto: Aws, moto_store: DynamoDBStore) -> None:
    held_back: list[Any] = []

    def take_half(operation: str, request: dict[str, Any]) -> Any:
        if operation != "BatchWriteItem" or held_back:
            return None
        ((table, writes),) = request["RequestItems"].items()
        half = len(writes) // 2
        held_back.extend(writes[half:])
        return {
            "request": {**request, "RequestItems": {table: writes[:half]}},
            "extra": {"UnprocessedItems": {table: writes[half:]}},
        }

    with proxy(moto.url or "") as front:
        front.fault = take_half
        client = Aws("proxy", front.url).dynamodb()
        sleeps: list[float] = []
        store = DynamoDBStore(client, moto_store.table_name, sleep=sleeps.append)
        request_id = unique("request")
        events = [make_event(request_id=request_id) for _ in range(30)]
        results = store.append(events)
        assert [r.status for r in results] == [AppendStatus.STORED] * 30
        assert len(held_back) == 13  # of the first call's 25 items
        assert front.calls["BatchWriteItem"] == 3  # 25 (12 taken), the other 5, then the 13 again
        assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.1
    assert len(moto_store.flow(request_id)) == 30


def test_throttling_that_does_not_pass_fails_the_events_not_the_call(
    moto: Aws, moto_store: DynamoDBStore
) -> None:
    throttled = {
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "The level of configured provisioned throughput for the table was exceeded.",
    }

    with proxy(moto.url or "") as front:
        front.fault = lambda operation, _: (400, throttled) if operation == "BatchWriteItem" else None
        # botocore's own retries off: what is counted is the store's.
        client = Aws("proxy", front.url).dynamodb(Config(retries={"total_max_attempts": 1}))
        store = DynamoDBStore(client, moto_store.table_name, attempts=3, sleep=lambda _: None)
        started = time.monotonic()
        results = store.append([make_event(), make_event()])
    assert [r.status for r in results] == [AppendStatus.FAILED] * 2
    assert results[0].reason and "ProvisionedThroughputExceededException" in results[0].reason
    assert front.calls["BatchWriteItem"] == 3
    assert time.monotonic() - started < 5


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
