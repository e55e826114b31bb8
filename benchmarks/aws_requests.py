"""AWS API requests per event: eventtrail's pipeline next to the reference
article's design, counted on moto's server (requests, not time: moto's speed
says nothing about AWS's).

Every HTTP request a boto3 client sends is counted by a botocore event hook
(``before-send``, so botocore's own retries count too), per service and
operation. The load is steady: rounds of ``--per-round`` gateway events are
sent the way the gateway's publisher sends them (batches of up to 500 bodies),
then consumed, so the queue never holds more than one round.

- eventtrail, worker: ``eventtrail worker`` (receives up to 1,000 messages
  per batch, deletes in batches, BatchWriteItem of 25).
- eventtrail, Lambda: the handler on SQS batches of ``--lambda-batch``
  records (the event source mapping's batch size); the mapping's own receive
  and delete requests are made by AWS and are not counted here.
- article: one SendMessage per event, and its Lambda's one PutItem per record
  (the article's table and Lambda as ``tests/aws/article.py`` reproduces them).

Targets (steady load): at most 0.1 SQS send requests and 0.04 DynamoDB write
requests per event.

    .venv/bin/python benchmarks/aws_requests.py [--rounds 10] [--per-round 100]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.lambda_handler import Runtime, logger
from eventtrail.aws.provision import QueueSpec, TableSpec, ensure_queues, ensure_table
from eventtrail.aws.sqs import SQSQueue
from eventtrail.config import Settings
from eventtrail.consumer import Consumer
from eventtrail.demo import demo_flows
from eventtrail.event import Event, encode_event
from eventtrail.gateway.config import PublisherSettings
from eventtrail.ids import uuid7_str
from eventtrail.worker import Worker

# Run as a script: the repository's root makes the tests' local AWS server and
# their reproduction of the article's design importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.aws.article import article_handler, article_table
from tests.servers import moto_server

SEND_TARGET = 0.1
WRITE_TARGET = 0.04
PUBLISHER_BATCH = PublisherSettings().batch_size  # as the gateway's publisher sends
SEND_OPERATIONS = {"SendMessage", "SendMessageBatch"}
WRITE_OPERATIONS = {"PutItem", "BatchWriteItem"}


class Counted:
    """boto3 clients on one endpoint whose HTTP requests are counted."""

    def __init__(self, url: str) -> None:
        self.session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        self.url = url
        self.requests: Counter[str] = Counter()
        config = Config(retries={"mode": "standard", "total_max_attempts": 3})
        self.sqs = self.session.client("sqs", endpoint_url=url, config=config)
        self.dynamodb = self.session.client("dynamodb", endpoint_url=url, config=config)
        for client in (self.sqs, self.dynamodb):
            client.meta.events.register("before-send", self._count)

    def _count(self, event_name: str, **_: Any) -> None:
        self.requests[event_name.split(".")[-1]] += 1

    def reset(self) -> Counter[str]:
        counted = Counter(self.requests)
        self.requests.clear()
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


def per_event(counted: Counter[str], events: int, operations: set[str]) -> float:
    return sum(counted[op] for op in operations) / events


def row(label: str, events: int, counted: Counter[str]) -> dict[str, Any]:
    sends = per_event(counted, events, SEND_OPERATIONS)
    writes = per_event(counted, events, WRITE_OPERATIONS)
    other = {op: n for op, n in sorted(counted.items()) if op not in SEND_OPERATIONS | WRITE_OPERATIONS}
    return {"label": label, "events": events, "sends": sends, "writes": writes, "other": other}


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
    print(
        f"{'design':<34} {'events':>7} {'SQS sends/event':>16} {'DDB writes/event':>17}  other requests/event"
    )
    for item in rows:
        other = ", ".join(f"{op} {n / item['events']:.3f}" for op, n in item["other"].items()) or "-"
        print(
            f"{item['label']:<34} {item['events']:>7} {item['sends']:>16.3f} {item['writes']:>17.3f}  {other}"
        )
    worker = rows[0]
    print()
    print(
        f"worker path vs article: {article_row['sends'] / worker['sends']:.0f}x fewer send requests,"
        f" {article_row['writes'] / worker['writes']:.0f}x fewer write requests"
    )
    print(
        f"targets: sends/event {worker['sends']:.3f} <= {SEND_TARGET}"
        f" {'met' if worker['sends'] <= SEND_TARGET else 'MISSED'};"
        f" writes/event {worker['writes']:.3f} <= {WRITE_TARGET}"
        f" {'met' if worker['writes'] <= WRITE_TARGET else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
