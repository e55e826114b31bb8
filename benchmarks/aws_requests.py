"""AWS API requests and DynamoDB capacity units per event: eventtrail's
pipeline next to the reference article's design, counted on moto's server
(requests and units, not time: moto's speed says nothing about AWS's).

Every HTTP request a boto3 client sends is counted by a botocore event hook
(``before-send``, so botocore's own retries count too), per service and
operation. Every DynamoDB write and GetItem asks for
``ReturnConsumedCapacity=TOTAL`` (added by a ``before-parameter-build`` hook)
and the units the answers report are summed; a conditional write that is
refused reports none but is billed one write unit per KB, so it is counted so.
The load is steady: rounds of ``--per-round`` gateway events are sent the way
the gateway's publisher sends them (batches of up to 500 bodies), then
consumed, so the queue never holds more than one round.

- eventtrail, worker: ``eventtrail worker`` (receives up to 1,000 messages
  per batch, deletes in batches, one conditional PutItem per event).
- eventtrail, Lambda: the handler on SQS batches of ``--lambda-batch``
  records (the event source mapping's batch size); the mapping's own receive
  and delete requests are made by AWS and are not counted here.
- article: one SendMessage per event, and its Lambda's one PutItem per record
  (the article's table and Lambda as ``tests/aws/article.py`` reproduces them).

Then the write paths that could keep invariant 2 (a different event never
replaces a stored one) are compared on the same events, each followed by a
redelivery of every event and one event that claims a stored key with other
data: BatchWriteItem (what eventtrail did: no condition, so it cannot),
conditional PutItem (what the store does) and TransactWriteItems with the
same condition (moto reports no units for it; AWS bills 2 write units per
item, and dynalite lacks the operation).

Targets (steady load): at most 0.1 SQS send requests per event, and at most
1 DynamoDB write unit per event of up to 1 KB.

    .venv/bin/python benchmarks/aws_requests.py [--rounds 10] [--per-round 100]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import msgspec
from botocore.config import Config
from botocore.exceptions import ClientError

from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.items import event_from_item, item_key, item_of
from eventtrail.aws.lambda_handler import Runtime, logger
from eventtrail.aws.provision import QueueSpec, TableSpec, ensure_queues, ensure_table
from eventtrail.aws.sqs import SQSQueue
from eventtrail.config import Settings
from eventtrail.consumer import Consumer
from eventtrail.demo import demo_flows
from eventtrail.event import Event, encode_event
from eventtrail.gateway.config import PublisherSettings
from eventtrail.ids import uuid7_str
from eventtrail.store import AppendStatus, canonical
from eventtrail.worker import Worker

# Run as a script: the repository's root makes the tests' local AWS server and
# their reproduction of the article's design importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.aws.article import article_handler, article_table
from tests.servers import dynalite_server, moto_server

SEND_TARGET = 0.1
WRITE_UNITS_TARGET = 1.0
PUBLISHER_BATCH = PublisherSettings().batch_size  # as the gateway's publisher sends
SEND_OPERATIONS = {"SendMessage", "SendMessageBatch"}
WRITE_OPERATIONS = {"PutItem", "BatchWriteItem", "TransactWriteItems"}
UNIT_OPERATIONS = (*sorted(WRITE_OPERATIONS), "GetItem")


class Counted:
    """boto3 clients on one endpoint whose HTTP requests are counted."""

    def __init__(self, url: str) -> None:
        self.session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        self.url = url
        self.requests: Counter[str] = Counter()
        self.write_units = 0.0
        self.read_units = 0.0
        config = Config(retries={"mode": "standard", "total_max_attempts": 3}, max_pool_connections=32)
        self.sqs = self.session.client("sqs", endpoint_url=url, config=config)
        self.dynamodb = self.session.client("dynamodb", endpoint_url=url, config=config)
        for client in (self.sqs, self.dynamodb):
            client.meta.events.register("before-send", self._count)
        for operation in UNIT_OPERATIONS:
            self.dynamodb.meta.events.register(
                f"before-parameter-build.dynamodb.{operation}", self._ask_for_units
            )
            self.dynamodb.meta.events.register(f"after-call.dynamodb.{operation}", self._add_units)

    def _count(self, event_name: str, **_: Any) -> None:
        self.requests[event_name.split(".")[-1]] += 1

    @staticmethod
    def _ask_for_units(params: dict[str, Any], **_: Any) -> None:
        params["ReturnConsumedCapacity"] = "TOTAL"

    def _add_units(self, parsed: dict[str, Any], event_name: str, **_: Any) -> None:
        consumed = parsed.get("ConsumedCapacity") or []
        units = sum(
            float(entry.get("CapacityUnits", 0))
            for entry in (consumed if isinstance(consumed, list) else [consumed])
        )
        if parsed.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            units = 1.0  # a refused write of an item up to 1 KB is billed one unit
        if event_name.endswith(".GetItem"):
            self.read_units += units
        else:
            self.write_units += units

    def reset(self) -> Counter[str]:
        counted = Counter(self.requests)
        counted["write units"] = round(self.write_units * 1000)  # in thousandths
        counted["read units"] = round(self.read_units * 1000)
        self.requests.clear()
        self.write_units = self.read_units = 0.0
        return counted


def gateway_events(count: int) -> list[Event]:
    events: list[Event] = []
    for flow in demo_flows(count):
        events += flow
        if len(events) >= count:
            break
    return events[:count]


def our_queue_and_store(aws: Counted) -> tuple[SQSQueue, DynamoDBStore]:
    """A new eventtrail queue (with its dead-letter queue) and table."""
    name = f"bench-{uuid7_str()}"
    ensure_queues(aws.sqs, QueueSpec(name, f"{name}-dlq", 5, 30, 1024 * 1024))
    url = aws.sqs.get_queue_url(QueueName=name)["QueueUrl"]
    dlq_url = aws.sqs.get_queue_url(QueueName=f"{name}-dlq")["QueueUrl"]
    ensure_table(aws.dynamodb, TableSpec(name, 8))
    store = DynamoDBStore(aws.dynamodb, name)
    store.index_shards  # noqa: B018 - read the table's tag once, before counting
    return SQSQueue(aws.sqs, url, dlq_url, max_receives=5), store


def publish_round(queue: SQSQueue, per_round: int) -> list[str]:
    """One round of gateway events, sent the way the gateway's publisher sends them."""
    bodies = [encode_event(event).decode() for event in gateway_events(per_round)]
    for start in range(0, len(bodies), PUBLISHER_BATCH):
        queue.send(bodies[start : start + PUBLISHER_BATCH])
    return bodies


def ours_worker(aws: Counted, rounds: int, per_round: int) -> tuple[int, Counter[str]]:
    queue, store = our_queue_and_store(aws)
    worker = Worker(queue, Consumer(store), batch_size=1000, wait_seconds=0)
    aws.reset()
    total = 0
    for _ in range(rounds):
        bodies = publish_round(queue, per_round)
        report = worker.run(drain=True)
        assert report.stored == len(bodies), report
        total += len(bodies)
    return total, aws.reset()


def ours_lambda(aws: Counted, rounds: int, per_round: int, batch: int) -> tuple[int, Counter[str]]:
    queue, store = our_queue_and_store(aws)
    runtime = Runtime(Settings(backend="aws"), store=store, sqs=aws.sqs, dlq_url=queue.dlq_url)
    aws.reset()
    total = 0
    for _ in range(rounds):
        bodies = publish_round(queue, per_round)
        for start in range(0, len(bodies), batch):
            records = [
                {"messageId": f"m{start + n}", "body": body, "attributes": {}}
                for n, body in enumerate(bodies[start : start + batch])
            ]
            assert runtime.handle({"Records": records}) == {"batchItemFailures": []}
        total += len(bodies)
    counted = aws.reset()
    # Messages handed to the handler directly stay in the queue: drop them uncounted.
    aws.sqs.purge_queue(QueueUrl=queue.queue_url)
    aws.reset()
    return total, counted


def article(aws: Counted, rounds: int, per_round: int) -> tuple[int, Counter[str]]:
    url = aws.sqs.create_queue(QueueName=f"article-{uuid7_str()}")["QueueUrl"]
    with article_table(aws.dynamodb) as table:
        aws.reset()
        total = 0
        for _ in range(rounds):
            for event in gateway_events(per_round):
                body = encode_event(event).decode()
                # `aws sqs send-message` per event, then the Lambda's PutItem per record.
                aws.sqs.send_message(QueueUrl=url, MessageBody=body)
                article_handler(aws.dynamodb, table, {"Records": [{"body": body}]})
                total += 1
        counted = aws.reset()
    aws.sqs.purge_queue(QueueUrl=url)
    aws.reset()
    return total, counted


def new_table(aws: Counted) -> str:
    name = f"bench-{uuid7_str()}"
    ensure_table(aws.dynamodb, TableSpec(name, 8))
    return name


def batch_write(aws: Counted, table: str, events: list[Event]) -> list[AppendStatus]:
    """BatchWriteItem of 25, as eventtrail wrote before: no condition is possible."""
    for start in range(0, len(events), 25):
        chunk = [{"PutRequest": {"Item": item_of(e, shards=8)}} for e in events[start : start + 25]]
        aws.dynamodb.batch_write_item(RequestItems={table: chunk})  # type: ignore[dict-item]
    return [AppendStatus.STORED] * len(events)


def transact_write(aws: Counted, table: str, events: list[Event]) -> list[AppendStatus]:
    """TransactWriteItems of up to 100 conditional puts; one refused put
    cancels its whole transaction, so a refused one is written again alone."""
    statuses: list[AppendStatus] = []
    for start in range(0, len(events), 100):
        chunk = events[start : start + 100]
        puts = [
            {
                "Put": {
                    "TableName": table,
                    "Item": item_of(event, shards=8),
                    "ConditionExpression": "attribute_not_exists(RequestId)",
                }
            }
            for event in chunk
        ]
        try:
            aws.dynamodb.transact_write_items(TransactItems=puts)  # type: ignore[arg-type]
            statuses += [AppendStatus.STORED] * len(chunk)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            for put in puts:
                try:
                    aws.dynamodb.transact_write_items(TransactItems=[put])  # type: ignore[list-item]
                    statuses.append(AppendStatus.STORED)
                except ClientError:
                    statuses.append(AppendStatus.CONFLICT)  # duplicate or conflict: a read would tell
    return statuses


def write_paths(aws: Counted, endpoint: str, count: int) -> list[dict[str, Any]]:
    """Each write path on one endpoint: ``count`` new events, the same events
    again (a redelivery), then one event claiming a stored key with other data."""
    events = gateway_events(count)
    impostor = msgspec.structs.replace(events[0], data={**events[0].data, "claimed": True})
    rows: list[dict[str, Any]] = []
    paths: list[tuple[str, Callable[[Counted, str, list[Event]], Any]]] = [
        ("BatchWriteItem of 25", batch_write),
        (
            "conditional PutItem (the store)",
            lambda aws, table, batch: DynamoDBStore(aws.dynamodb, table).append(batch),
        ),
        ("TransactWriteItems of 100", transact_write),
    ]
    for label, write in paths:
        table = new_table(aws)
        aws.reset()
        try:
            write(aws, table, events)
        except ClientError as error:
            rows.append({"label": label, "endpoint": endpoint, "missing": str(error)})
            continue
        passes = [aws.reset()]
        write(aws, table, events)
        passes.append(aws.reset())
        write(aws, table, [impostor])
        passes.append(aws.reset())
        partition, sort = item_key(events[0].request_id, events[0].timestamp, events[0].id)
        held = aws.dynamodb.get_item(
            TableName=table,
            Key={"RequestId": {"S": partition}, "TimestampId": {"S": sort}},
            ConsistentRead=True,
        )["Item"]
        kept = canonical(event_from_item(held)) == canonical(events[0])  # type: ignore[arg-type]
        aws.reset()
        rows.append({"label": label, "endpoint": endpoint, "events": count, "passes": passes, "kept": kept})
    return rows


def per_event(counted: Counter[str], events: int, operations: set[str]) -> float:
    return sum(counted[op] for op in operations) / events


def row(label: str, events: int, counted: Counter[str]) -> dict[str, Any]:
    sends = per_event(counted, events, SEND_OPERATIONS)
    writes = per_event(counted, events, WRITE_OPERATIONS)
    units = counted["write units"] / 1000 / events
    other = {
        op: n
        for op, n in sorted(counted.items())
        if op not in SEND_OPERATIONS | WRITE_OPERATIONS | {"write units", "read units"}
    }
    return {
        "label": label,
        "events": events,
        "sends": sends,
        "writes": writes,
        "units": units,
        "other": other,
    }


def print_pipeline(rows: list[dict[str, Any]], article_row: dict[str, Any]) -> None:
    print(
        f"{'design':<34} {'events':>7} {'SQS sends/event':>16} {'DDB writes/event':>17}"
        f" {'write units/event':>18}  other requests/event"
    )
    for item in rows:
        other = ", ".join(f"{op} {n / item['events']:.3f}" for op, n in item["other"].items()) or "-"
        print(
            f"{item['label']:<34} {item['events']:>7} {item['sends']:>16.3f} {item['writes']:>17.3f}"
            f" {item['units']:>18.3f}  {other}"
        )
    worker = rows[0]
    print()
    print(
        f"worker path vs article: {article_row['sends'] / worker['sends']:.0f}x fewer send requests,"
        f" write units per event {worker['units']:.3f} vs {article_row['units']:.3f}"
    )
    print(
        f"targets: sends/event {worker['sends']:.3f} <= {SEND_TARGET}"
        f" {'met' if worker['sends'] <= SEND_TARGET else 'MISSED'};"
        f" write units/event {worker['units']:.3f} <= {WRITE_UNITS_TARGET}"
        f" {'met' if worker['units'] <= WRITE_UNITS_TARGET else 'MISSED'}"
    )


def print_write_paths(paths: list[dict[str, Any]]) -> None:
    print()
    print(
        "write paths, per event: N new events, the same N again (redelivery),"
        " then one event claiming a stored key with other data"
    )
    header = "requests  write units  read units"
    print(
        f"{'endpoint':<9} {'path':<32} {'new: ' + header:>39} | {'redelivery: ' + header:>46} | claimed key"
    )
    for path in paths:
        if "missing" in path:
            print(f"{path['endpoint']:<9} {path['label']:<32} not available here: {path['missing']}")
            continue
        cells = []
        for counted, events in zip(path["passes"][:2], (path["events"], path["events"]), strict=True):
            requests = per_event(counted, events, WRITE_OPERATIONS | {"GetItem"})
            writes = counted["write units"] / 1000 / events
            reads = counted["read units"] / 1000 / events
            # moto reports no units for a transaction: say so rather than 0.
            written = "n/a" if requests and not writes and not reads else f"{writes:.3f}"
            cells.append(f"{requests:>13.3f} {written:>12} {reads:>11.3f}")
        outcome = "refused, stored event kept" if path["kept"] else "OVERWROTE the stored event"
        print(f"{path['endpoint']:<9} {path['label']:<32} {cells[0]:>39} | {cells[1]:>46} | {outcome}")
    print(
        "units as each endpoint reports them: moto reports 1 unit per BatchWriteItem call"
        " (AWS and dynalite: 1 per item of up to 1 KB) and none for transactions"
        " (AWS: 2 per item); a refused conditional put is counted 1 write unit, as AWS bills it"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--lambda-batch", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    logger.setLevel("WARNING")  # the handler's per-batch JSON lines are not the point here
    with moto_server() as moto:
        aws = Counted(moto.url)
        rows = [row("eventtrail, worker", *ours_worker(aws, args.rounds, args.per_round))]
        for batch in args.lambda_batch:
            rows.append(
                row(
                    f"eventtrail, Lambda (batch {batch})",
                    *ours_lambda(aws, args.rounds, args.per_round, batch),
                )
            )
        article_row = row("article (SendMessage + PutItem)", *article(aws, args.rounds, args.per_round))
        rows.append(article_row)
        paths = write_paths(aws, "moto", args.per_round)
    with dynalite_server() as dynalite:
        paths += write_paths(Counted(dynalite.url), "dynalite", args.per_round)
    print_pipeline(rows, article_row)
    print_write_paths(paths)


if __name__ == "__main__":
    main()
