"""The read-model contract on DynamoDB (moto's server and dynalite, over real
HTTP), and what the DynamoDB adapter adds: the version of a table made
beside stored events, a store without a read-model table, the readers' cost,
and hostile names."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventtrail.aws.backend import CLIENT_CONFIG
from eventtrail.aws.dynamodb import DynamoDBStore
from eventtrail.aws.provision import TableSpec, ensure_table
from eventtrail.aws.schema import READ_MODELS, read_models_table_name
from eventtrail.ids import uuid7_str
from eventtrail.readmodels import ReadModelsOutdated, RequestQuery, read_models_of
from eventtrail.readmodels.dynamodb import DynamoDBReadModels
from eventtrail.readmodels.prometheus import render_metrics
from eventtrail.times import EARLIEST
from tests import cli
from tests.aws import conftest as aws_endpoints
from tests.aws.conftest import Aws, unique_name
from tests.contract.readmodels_contract import (
    T0,
    Opener,
    ReadModelsContract,
    a_call,
    flat,
    totals,
    unique_service,
)
from tests.servers import LOCAL_AWS_ENV

pytestmark = pytest.mark.slow

# The local endpoints (session fixtures of tests/aws), for this folder too.
moto = aws_endpoints.moto
dynalite = aws_endpoints.dynalite


def open_store(url: str, table_name: str) -> DynamoDBStore:
    """A store on the table ``table_name`` at ``url`` (picklable through
    :func:`functools.partial`, for the consumers in child processes)."""
    client = boto3.session.Session(
        aws_access_key_id=LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=LOCAL_AWS_ENV["AWS_SESSION_TOKEN"],
        region_name=LOCAL_AWS_ENV["AWS_REGION"],
    ).client("dynamodb", endpoint_url=url, config=CLIENT_CONFIG)
    return DynamoDBStore(client, table_name, index_shards=2)


@contextlib.contextmanager
def tables(aws: Aws) -> Iterator[Opener]:
    """A fresh events table and its read-model table; an opener of stores on them."""
    client = aws.dynamodb()
    name = unique_name("eventtrail-rm")
    ensure_table(client, TableSpec(table_name=name, index_shards=2))
    assert aws.url is not None
    try:
        yield functools.partial(open_store, aws.url, name)
    finally:
        for table in (name, read_models_table_name(name)):
            with contextlib.suppress(ClientError):
                client.delete_table(TableName=table)


class DynamoDBReadModelsContract(ReadModelsContract):
    #: The name of the fixture (tests/aws/conftest.py) of the endpoint the tables live on.
    endpoint: str

    @pytest.fixture
    def opener(self, request: pytest.FixtureRequest) -> Iterator[Opener]:
        with tables(request.getfixturevalue(self.endpoint)) as opener:
            yield opener


class TestReadModelsOnMoto(DynamoDBReadModelsContract):
    endpoint = "moto"


class TestReadModelsOnDynalite(DynamoDBReadModelsContract):
    endpoint = "dynalite"


# ---------------------------------------------------------------- the adapter's own


@pytest.fixture
def dynalite_opener(dynalite: Aws) -> Iterator[Opener]:
    with tables(dynalite) as opener:
        yield opener


def test_a_read_model_table_made_beside_stored_events_asks_for_a_rebuild(dynalite: Aws) -> None:
    client = dynalite.dynamodb()
    name = unique_name("eventtrail-rm")
    ensure_table(client, TableSpec(table_name=name, index_shards=2))
    client.delete_table(TableName=read_models_table_name(name))
    assert dynalite.url is not None
    service = unique_service()
    try:
        # Events stored while the deployment had no read models.
        with open_store(dynalite.url, name) as store:
            assert all(
                r.ok
                for r in store.append(flat([a_call(service, T0 + timedelta(seconds=i)) for i in range(3)]))
            )
        done = ensure_table(client, TableSpec(table_name=name, index_shards=2))
        assert any("run `eventtrail rebuild`" in line for line in done)
        with open_store(dynalite.url, name) as store:
            models = read_models_of(store)
            with pytest.raises(ReadModelsOutdated, match="eventtrail rebuild"):
                totals(models, service, T0, T0 + timedelta(minutes=1))
            # Outdated read models are left alone by new events...
            store.append(list(a_call(service, T0 + timedelta(seconds=10))))
            assert models.rebuild() >= 8
            # ...and the rebuild counts every stored event.
            assert totals(models, service, T0, T0 + timedelta(minutes=1)).calls == 4
            store.append(list(a_call(service, T0 + timedelta(seconds=20))))
            assert totals(models, service, T0, T0 + timedelta(minutes=1)).calls == 5
    finally:
        for table in (name, read_models_table_name(name)):
            with contextlib.suppress(ClientError):
                client.delete_table(TableName=table)


def test_events_are_stored_when_the_read_model_table_is_missing(
    dynalite: Aws, caplog: pytest.LogCaptureFixture
) -> None:
    client = dynalite.dynamodb()
    name = unique_name("eventtrail-rm")
    ensure_table(client, TableSpec(table_name=name, index_shards=2))
    client.delete_table(TableName=read_models_table_name(name))
    assert dynalite.url is not None
    try:
        with open_store(dynalite.url, name) as store, caplog.at_level(logging.WARNING):
            request, outcome = a_call(unique_service(), T0)
            assert [r.status.value for r in store.append([request, outcome])] == ["stored", "stored"]
            assert [event.id for event in store.flow(request.request_id)] == [request.id, outcome.id]
        assert "read models not kept" in caplog.text
        assert "does not exist" in caplog.text
    finally:
        with contextlib.suppress(ClientError):
            client.delete_table(TableName=name)


class _Reads:
    """Counts the Query calls a client makes and the items they return, with
    botocore's own event hooks (nothing is patched)."""

    def __init__(self, store: DynamoDBStore) -> None:
        self.queries = 0
        self.items = 0
        store.client.meta.events.register("after-call.dynamodb.Query", self._count)

    def _count(self, parsed: dict[str, Any], **_: Any) -> None:
        self.queries += 1
        self.items += int(parsed.get("Count", 0))


def test_a_health_read_costs_the_same_whatever_the_events_in_the_window(dynalite_opener: Opener) -> None:
    services = [unique_service() for _ in range(3)]
    cost = []
    with dynalite_opener() as store:
        assert isinstance(store, DynamoDBStore)
        models = read_models_of(store)
        for round_, events_per_service in enumerate((5, 60)):
            start = T0 + timedelta(hours=round_ * 2)
            for service in services:
                store.append(
                    flat(
                        [
                            a_call(service, start + timedelta(seconds=i * 10 // events_per_service))
                            for i in range(events_per_service)
                        ]
                    )
                )
            reads = _Reads(store)
            found = models.rollups(start, start + timedelta(minutes=15))
            assert {edge[1]: rollup.calls for edge, rollup in found.items()} == dict.fromkeys(
                services, events_per_service
            )
            cost.append((reads.queries, reads.items))
    # Twelve times the events, the same queries and the same rows read.
    assert cost[0] == cost[1]
    assert cost[0][1] == len(services)


def test_reads_from_the_first_stored_call_query_only_what_holds_rows(dynalite_opener: Opener) -> None:
    service = unique_service()
    later = T0 + timedelta(days=62)  # two months on: 2021-05
    shards = READ_MODELS.rollup_shards
    with dynalite_opener() as store:
        assert isinstance(store, DynamoDBStore)
        store.append(flat([a_call(service, T0 + timedelta(minutes=i)) for i in range(3)]))
        store.append(flat([a_call(service, later + timedelta(minutes=i), status=503) for i in range(2)]))
        models = read_models_of(store)
        # /metrics: the all-time rows, one partition per shard.
        reads = _Reads(store)
        text = render_metrics(models).decode()
        assert reads.queries == shards
        # A window from year 1: the six-hour rows of the months holding rows
        # (the two of the calls, and year 1's, of the all-time rows), then
        # the hours and minutes of the last day.
        reads = _Reads(store)
        found = models.rollups(EARLIEST, later + timedelta(hours=3, minutes=30), service=service)
        assert reads.queries == shards * 5, reads.queries
    edge = f'caller="Gateway",service="{service}"'
    assert f"eventtrail_service_calls_total{{{edge}}} 5" in text
    assert f'eventtrail_service_call_failures_total{{{edge},kind="5xx"}} 2' in text
    assert found[("Gateway", service, "*")].calls == 5


_hostile_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=300).filter(
    lambda text: text.strip() != ""
)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    service=_hostile_text,
    caller=_hostile_text,
    path=st.text(max_size=400),
    request_suffix=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200),
)
def test_hostile_names_are_counted_under_their_own_names(
    dynalite_opener: Opener, service: str, caller: str, path: str, request_suffix: str
) -> None:
    # The examples share one table: a fresh prefix keeps each one's service its own.
    service = f"{uuid7_str()}{service}"
    request_id = uuid7_str() + request_suffix
    with dynalite_opener() as store:
        models = read_models_of(store)
        calls = [
            a_call(service, T0 + timedelta(seconds=i), path="/" + path, request_id=request_id, caller=caller)
            for i in range(2)
        ]
        assert all(result.ok for result in store.append(flat(calls)))
        found = models.rollups(T0, T0 + timedelta(minutes=1), service=service)
        assert {edge: rollup.calls for edge, rollup in found.items()} == {(caller, service, "*"): 2}
        [summary] = models.requests(RequestQuery(service=service)).requests
        assert (summary.request_id, summary.calls, summary.services) == (request_id, 2, [service])


def test_a_rebuild_that_fails_leaves_the_read_models_outdated(dynalite_opener: Opener) -> None:
    service = unique_service()
    with dynalite_opener() as store:
        models = read_models_of(store)
        assert isinstance(models, DynamoDBReadModels)
        store.append(flat([a_call(service, T0 + timedelta(seconds=i)) for i in range(3)]))

        def fail(done: int, total: int | None) -> None:
            if done:
                raise RuntimeError("the operator pressed ^C")

        with pytest.raises(RuntimeError):
            models.rebuild(progress=fail)
        assert not models.is_current()
        with pytest.raises(ReadModelsOutdated):
            models.rollups(T0, T0 + timedelta(minutes=1))
        models.rebuild()
        assert totals(models, service, T0, T0 + timedelta(minutes=1)).calls == 3


def test_the_rebuild_command_rebuilds_the_read_models_on_the_aws_backend(
    dynalite: Aws, tmp_path: Path
) -> None:
    client = dynalite.dynamodb()
    name = unique_name("eventtrail-rm")
    ensure_table(client, TableSpec(table_name=name, index_shards=2))
    assert dynalite.url is not None
    service = unique_service()
    env = {**dynalite.env, "EVENTTRAIL_BACKEND": "aws", "EVENTTRAIL_TABLE_NAME": name}
    try:
        with open_store(dynalite.url, name) as store:
            store.append(flat([a_call(service, T0 + timedelta(seconds=i), status=503) for i in range(4)]))
            models = read_models_of(store)
            assert totals(models, service, T0, T0 + timedelta(minutes=1)).calls == 4
        # The service's rollup rows are lost, as a consumer killed mid-projection would leave them.
        table = read_models_table_name(name)
        for item in client.scan(TableName=table)["Items"]:
            if item.get("Service", {}).get("S") == service:
                client.delete_item(TableName=table, Key={"Key": item["Key"], "Sort": item["Sort"]})
        with open_store(dynalite.url, name) as store:
            assert totals(read_models_of(store), service, T0, T0 + timedelta(minutes=1)).calls == 0
        result = cli.run(tmp_path, "rebuild", env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "rebuilt the read models (all of them): 8 events replayed" in result.stderr
        with open_store(dynalite.url, name) as store:
            rollup = totals(read_models_of(store), service, T0, T0 + timedelta(minutes=1))
            assert (rollup.calls, rollup.errors) == (4, 4)
        bad = cli.run(tmp_path, "rebuild", "--since", "not a time", env=env)
        assert bad.returncode == 2
        assert bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    finally:
        for table in (name, read_models_table_name(name)):
            with contextlib.suppress(ClientError):
                client.delete_table(TableName=table)


def test_a_request_id_too_long_for_an_index_key_is_still_listed(dynalite_opener: Opener) -> None:
    service = unique_service()
    # The events table takes partition keys up to 2,048 bytes; the request
    # index's sort key only 1,024.
    request_id = uuid7_str() + "é" * 700
    with dynalite_opener() as store:
        assert all(r.ok for r in store.append(list(a_call(service, T0, request_id=request_id))))
        [summary] = read_models_of(store).requests(RequestQuery(service=service)).requests
        assert summary.request_id == request_id
