"""Read models on DynamoDB: what a health read and the projections cost, in
requests and capacity units counted on moto's server (not time: moto's
speed says nothing about AWS's).

For each size (``--events``), a fresh table pair receives that many call
events (requests of ``--calls-per-request`` calls spread over ``--services``
services, every call a request event and an outcome, 5% failing), all inside
one 15-minute window, through the store's ``append`` (as the consumer stores
them: conditional puts, then the projections of the events reported
``STORED``), in batches of ``--batch`` events. Sizes above ``--store-up-to``
skip the puts and apply the projections directly (what the store does after
them), because moto stores about 50 events a second: the read models, and so
the health read, are the same. Then the window's rollups are
read as ``health`` reads them (the window and the one before it), and a 2 h
and a 24 h window too.

Every DynamoDB request asks for ``ReturnConsumedCapacity=TOTAL`` (added by a
botocore ``before-parameter-build`` hook) and the units the answers report are
summed per table; requests are counted per table and operation by the same
hook. A refused conditional write reports no units but is billed one write
unit per KB, so it is counted so. Events arrive in time order, as a gateway
sends them.

Target: the read units (and items) of a health read do not grow with the
events in its window: they are bounded by buckets x services.

    .venv/bin/python benchmarks/read_models_aws.py [--events 1000,100000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.provision import TableSpec, ensure_table
from eventtrail.aws.schema import READ_MODELS_SUFFIX, read_models_table_name
from eventtrail.calls import call_error, call_request, call_response
from eventtrail.event import Event
from eventtrail.ids import uuid7_str
from eventtrail.readmodels import read_models_of
from eventtrail.times import format_moment

# Run as a script: the repository's root makes the tests' local AWS server importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.servers import LOCAL_AWS_ENV, moto_server

START = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)
UNIT_OPERATIONS = {"GetItem", "PutItem", "UpdateItem", "Query", "BatchWriteItem", "Scan"}
WRITE_OPERATIONS = {"PutItem", "UpdateItem", "BatchWriteItem"}


class Meter:
    """Requests per operation and capacity units per (table, read|write)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.units: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.items_read = 0
        self.billed_read_units = 0.0
        self.writes_per_key: Counter[str] = Counter()

    def reset(self) -> None:
        self.requests.clear()
        self.units.clear()
        self.items_read = 0
        self.billed_read_units = 0.0

    def install(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-parameter-build.dynamodb", self._ask_for_units)
        events.register("after-call.dynamodb", self._count_units)
        events.register("after-call-error.dynamodb", self._count_refusal)

    def _ask_for_units(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        table = params.get("TableName") or ",".join(params.get("RequestItems", {})) or "-"
        self.requests[(table, model.name)] += 1
        if model.name in ("PutItem", "UpdateItem") and table.endswith(READ_MODELS_SUFFIX):
            key = params.get("Key") or {name: params["Item"][name] for name in ("Key", "Sort")}
            self.writes_per_key[json.dumps(key, sort_keys=True)] += 1
        if model.name in UNIT_OPERATIONS:
            params["ReturnConsumedCapacity"] = "TOTAL"

    def _count_units(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        kind = "write" if model.name in WRITE_OPERATIONS else "read"
        consumed = parsed.get("ConsumedCapacity")
        for entry in consumed if isinstance(consumed, list) else [consumed] if consumed else []:
            self.units[(entry.get("TableName", "?"), kind)] += float(entry.get("CapacityUnits", 0))
        if model.name == "Query":
            self.items_read += int(parsed.get("Count", 0))
            # What AWS bills an eventually consistent Query: half a unit per
            # 4 KB of the items read, rounded up (moto reports a flat figure).
            size = sum(item_size(item) for item in parsed.get("Items", []))
            self.billed_read_units += max(1, math.ceil(size / 4096)) * 0.5

    def _count_refusal(self, context: Any, exception: Any, **_: Any) -> None:
        # A refused conditional write is billed (one unit per KB): count one.
        if "ConditionalCheckFailed" in type(exception).__name__ or "ConditionalCheckFailed" in str(exception):
            self.units[("refused", "write")] += 1


def call_events(total: int, services: list[str], calls_per_request: int, seed: int) -> list[Event]:
    """``total`` events (half request events, half outcomes) in the window."""
    rng = random.Random(seed)
    events: list[Event] = []
    while len(events) < total:
        request_id = uuid7_str()
        begin = START + timedelta(seconds=rng.uniform(0, WINDOW.total_seconds() - 5))
        for call in range(calls_per_request):
            if len(events) >= total:
                break
            service, call_id = rng.choice(services), uuid7_str()
            at = begin + timedelta(milliseconds=call * 20)
            latency = rng.lognormvariate(3, 0.6)
            events.append(call_request(request_id, call_id, service, "GET", f"/items/{rng.randrange(10**6)}",
                                       timestamp=format_moment(at)))  # fmt: skip
            ended = format_moment(at + timedelta(milliseconds=latency))
            if rng.random() < 0.02:
                events.append(call_error(request_id, call_id, service, error="timeout", elapsed_ms=latency,
                                         timestamp=ended))  # fmt: skip
            else:
                status = 503 if rng.random() < 0.03 else 200
                events.append(call_response(request_id, call_id, service, status=status, latency_ms=latency,
                                            bytes_in=0, bytes_out=0, timestamp=ended))  # fmt: skip
    # Sent as they happen.
    return sorted(events, key=lambda event: event.timestamp)


def value_size(value: dict[str, Any]) -> int:
    """DynamoDB's size of an attribute value (rounded up, as
    :func:`eventtrail.aws.items.item_size`, plus binary and sets)."""
    ((kind, content),) = value.items()
    if kind == "S":
        return len(content.encode("utf-8", "surrogatepass"))
    if kind == "N":
        return min(21, len(content) // 2 + 2)
    if kind == "B":
        return len(content)
    if kind in ("SS", "NS", "BS"):
        return sum(value_size({kind[0]: element}) for element in content)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(1 + len(key.encode()) + value_size(item) for key, item in content.items())
    return 3 + sum(1 + value_size(item) for item in content)


def item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def aws_write_units(client: Any, table: str, writes_per_key: Counter[str]) -> float:
    """An upper bound of what AWS bills the projection writes: a write costs
    one unit per KB of the item (the larger of before and after), and items
    only grow, so each write is priced at its item's final size."""
    sizes: dict[str, int] = {}
    request: dict[str, Any] = {"TableName": table}
    while True:
        response = client.scan(**request)
        for item in response["Items"]:
            key = json.dumps({name: item[name] for name in ("Key", "Sort")}, sort_keys=True)
            sizes[key] = item_size(item)
        if "LastEvaluatedKey" not in response:
            break
        request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
    return float(sum(count * math.ceil(sizes.get(key, 1024) / 1024) for key, count in writes_per_key.items()))


def run(url: str, total: int, arguments: argparse.Namespace) -> dict[str, Any]:
    session = boto3.session.Session(
        aws_access_key_id=LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=LOCAL_AWS_ENV["AWS_REGION"],
    )
    client = session.client(
        "dynamodb", endpoint_url=url, config=Config(retries={"mode": "standard"}, max_pool_connections=32)
    )
    name = f"bench-{uuid7_str()}"
    ensure_table(client, TableSpec(table_name=name, index_shards=arguments.index_shards))
    meter = Meter()
    meter.install(client)
    services = [f"Microservice {chr(65 + index)}" for index in range(arguments.services)]
    events = call_events(total, services, arguments.calls_per_request, seed=total)
    store = DynamoDBStore(client, name, index_shards=arguments.index_shards)
    models = read_models_of(store)
    direct = total > arguments.store_up_to
    began = time.monotonic()
    for start in range(0, len(events), arguments.batch):
        batch = events[start : start + arguments.batch]
        if direct:
            # What the store does after its puts, without the puts: the
            # window's read models are the same, the events table stays empty.
            models.apply(batch)
        else:
            results = store.append(batch)
            assert all(result.ok for result in results), {result.status for result in results}
    loading = time.monotonic() - began
    read_models = read_models_table_name(name)
    write_units = {table: units for (table, kind), units in meter.units.items() if kind == "write"}
    projection_units = write_units.get(read_models, 0.0)
    store_units = write_units.get(name, 0.0) + write_units.get("refused", 0.0)
    projection_requests = {op: count for (table, op), count in meter.requests.items() if table == read_models}
    writes = {
        "store units": store_units,
        "projection units": projection_units,
        "projection units (AWS rule)": aws_write_units(client, read_models, meter.writes_per_key),
    }
    reads: dict[str, tuple[float, float, int, int]] = {}
    for label, length in (("15 min", WINDOW), ("2 h", timedelta(hours=2)), ("24 h", timedelta(hours=24))):
        meter.reset()
        until = START + WINDOW
        # What health reads: the window, and the one before it (the latency baseline).
        found = models.rollups(until - length, until)
        models.rollups(until - 2 * length, until - length)
        calls = sum(rollup.calls for (_, _, op), rollup in found.items() if op == "*")
        assert calls == total // 2, (calls, total)
        reads[label] = (
            sum(units for (_, kind), units in meter.units.items() if kind == "read"),
            meter.billed_read_units,
            sum(meter.requests.values()),
            meter.items_read,
        )
    store.close()
    for table in (name, read_models):
        client.delete_table(TableName=table)
    return {
        "events": total,
        "direct": direct,
        "load seconds": loading,
        "writes": writes,
        "projection requests": projection_requests,
        "reads": reads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", default="1000,100000", help="sizes, comma separated")
    parser.add_argument("--services", type=int, default=4)
    parser.add_argument("--calls-per-request", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100, help="events per append (a Lambda batch)")
    parser.add_argument("--index-shards", type=int, default=4)
    parser.add_argument(
        "--store-up-to",
        type=int,
        default=20_000,
        help="larger sizes skip the event puts and apply the projections directly"
        " (moto takes about 20 ms per stored event)",
    )
    arguments = parser.parse_args(argv)
    sizes = [int(size) for size in arguments.events.split(",")]
    with moto_server() as endpoint:
        rows = [run(endpoint.url, size, arguments) for size in sizes]
    print(
        f"{'events':>8} | {'window':>6} | {'RCU (moto)':>10} | {'RCU (AWS rule)':>14} | {'requests':>8}"
        f" | {'items read':>10}"
    )
    for row in rows:
        for label, (units, billed, requests, items) in row["reads"].items():
            print(
                f"{row['events']:>8,} | {label:>6} | {units:>10.1f} | {billed:>14.1f} | {requests:>8}"
                f" | {items:>10}"
            )
    print()
    print(
        f"{'events':>8} | {'store WU/event':>14} | {'projection WU/event (moto)':>26}"
        f" | {'(AWS rule, at most)':>19} | requests per event"
    )
    for row in rows:
        events = row["events"]
        per_event = {op: round(count / events, 3) for op, count in sorted(row["projection requests"].items())}
        print(
            f"{events:>8,} | {row['writes']['store units'] / events:>14.2f} |"
            f" {row['writes']['projection units'] / events:>26.2f} |"
            f" {row['writes']['projection units (AWS rule)'] / events:>19.2f} | {per_event}"
            f"  (loaded in {row['load seconds']:.0f} s on moto)"
            + ("  [projections applied directly, no event puts]" if row["direct"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
