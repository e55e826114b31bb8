"""The core's queue and store contract suites, unchanged, on SQS and DynamoDB:
moto's server, dynalite (store only) and, when enabled, real AWS."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.provision import QueueSpec, TableSpec, ensure_queues, ensure_table
from eventtrail.aws.sqs import SQSQueue
from tests.aws.conftest import Aws, unique_name
from tests.contract.queue_contract import QueueContract, QueueFactory
from tests.contract.store_contract import StoreContract


def make_sqs_queue(aws: Aws, *, max_receives: int = 5) -> SQSQueue:
    name = unique_name("eventtrail-test")
    client = aws.sqs()
    ensure_queues(
        client,
        QueueSpec(
            queue_name=name,
            dlq_name=f"{name}-dlq",
            max_receives=max_receives,
            visibility_timeout=30,
            max_body_bytes=1024 * 1024,
        ),
    )
    url = client.get_queue_url(QueueName=name)["QueueUrl"]
    dlq_url = client.get_queue_url(QueueName=f"{name}-dlq")["QueueUrl"]
    return SQSQueue(client, url, dlq_url, max_receives=max_receives)


@contextlib.contextmanager
def sqs_queues(aws: Aws) -> Iterator[QueueFactory]:
    made: list[SQSQueue] = []

    def make(max_receives: int = 5) -> SQSQueue:
        queue = make_sqs_queue(aws, max_receives=max_receives)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        for url in (queue.queue_url, queue.dlq_url):
            with contextlib.suppress(ClientError):
                queue.client.delete_queue(QueueUrl=url)


@contextlib.contextmanager
def dynamodb_table(aws: Aws, *, index_shards: int = 4) -> Iterator[DynamoDBStore]:
    client = aws.dynamodb()
    name = unique_name("eventtrail-test")
    ensure_table(client, TableSpec(table_name=name, index_shards=index_shards))
    store = DynamoDBStore(client, name, index_shards=1)
    try:
        yield store
    finally:
        store.close()
        with contextlib.suppress(ClientError):
            client.delete_table(TableName=name)


class TestSQSQueueOnMoto(QueueContract):
    @pytest.fixture
    def make_queue(self, moto: Aws) -> Iterator[QueueFactory]:
        with sqs_queues(moto) as make:
            yield make


class TestSQSQueueOnRealAws(QueueContract):
    @pytest.fixture
    def make_queue(self, real_aws: Aws) -> Iterator[QueueFactory]:
        with sqs_queues(real_aws) as make:
            yield make


class DynamoDBContract(StoreContract):
    detects_id_conflicts = False
    purges_on_demand = False
    reports_duplicates = False


@pytest.fixture(scope="module")
def moto_table(moto: Aws) -> Iterator[DynamoDBStore]:
    with dynamodb_table(moto) as store:
        yield store


class TestDynamoDBStoreOnMoto(DynamoDBContract):
    @pytest.fixture
    def store(self, moto_table: DynamoDBStore) -> DynamoDBStore:
        return moto_table


@pytest.fixture(scope="module")
def dynalite_table(dynalite: Aws) -> Iterator[DynamoDBStore]:
    with dynamodb_table(dynalite) as store:
        yield store


class TestDynamoDBStoreOnDynalite(DynamoDBContract):
    @pytest.fixture
    def store(self, dynalite_table: DynamoDBStore) -> DynamoDBStore:
        return dynalite_table


@pytest.fixture(scope="module")
def real_aws_table(real_aws: Aws) -> Iterator[DynamoDBStore]:
    with dynamodb_table(real_aws) as store:
        yield store


class TestDynamoDBStoreOnRealAws(DynamoDBContract):
    @pytest.fixture
    def store(self, real_aws_table: DynamoDBStore) -> DynamoDBStore:
        return real_aws_table
