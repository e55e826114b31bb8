"""The core's queue and store contract suites, unchanged, on SQS and DynamoDB:
moto's server, dynalite (store only) and, when enabled, real AWS."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.provision import QueueSpec, TableSpec, ensure_queues, ensure_table
from eventtrail.aws.schema import read_models_table_name
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
        for table in (name, read_models_table_name(name)):
            with contextlib.suppress(ClientError):
                client.delete_table(TableName=table)


class SQSContract(QueueContract):
    #: The name of the fixture (tests/aws/conftest.py) of the endpoint the queues live on.
    endpoint: str

    @pytest.fixture
    def make_queue(self, request: pytest.FixtureRequest) -> Iterator[QueueFactory]:
        with sqs_queues(request.getfixturevalue(self.endpoint)) as make:
            yield make


class TestSQSQueueOnMoto(SQSContract):
    endpoint = "moto"


class TestSQSQueueOnRealAws(SQSContract):
    endpoint = "real_aws"


class DynamoDBContract(StoreContract):
    #: The name of the fixture (tests/aws/conftest.py) of the endpoint the table lives on.
    endpoint: str

    # The tests share one table per endpoint (they use fresh ids): a table
    # takes a while to create on real AWS.
    @pytest.fixture(scope="class")
    @classmethod
    def table(cls, request: pytest.FixtureRequest) -> Iterator[DynamoDBStore]:
        with dynamodb_table(request.getfixturevalue(cls.endpoint)) as store:
            yield store

    @pytest.fixture
    def store(self, table: DynamoDBStore) -> DynamoDBStore:
        return table


class TestDynamoDBStoreOnMoto(DynamoDBContract):
    endpoint = "moto"


class TestDynamoDBStoreOnDynalite(DynamoDBContract):
    endpoint = "dynalite"


class TestDynamoDBStoreOnRealAws(DynamoDBContract):
    endpoint = "real_aws"
