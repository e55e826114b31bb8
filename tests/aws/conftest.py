"""Local AWS endpoints for the AWS backend's tests: moto's server and
dynalite, each started once per session on a free loopback port.

``EVENTTRAIL_TEST_REAL_AWS=1`` adds real AWS (the normal boto3 credential and
region chain) to the contract suites; those tests create and delete their own
uniquely named queues and table.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from botocore.config import Config
from mypy_boto3_dynamodb import DynamoDBClient
from mypy_boto3_sqs import SQSClient

from eventtrail.aws.backend import CLIENT_CONFIG
from eventtrail.ids import uuid7_str
from tests.servers import LOCAL_AWS_ENV, dynalite_server, moto_server

REAL_AWS_VARIABLE = "EVENTTRAIL_TEST_REAL_AWS"


@dataclass(frozen=True)
class Aws:
    """Clients for one AWS endpoint (``url`` is ``None`` for real AWS)."""

    name: str
    url: str | None

    def session(self) -> boto3.session.Session:
        if self.url is None:
            session = boto3.session.Session()
            if session.region_name is None and os.environ.get("AWS_REGION"):
                session = boto3.session.Session(region_name=os.environ["AWS_REGION"])
            return session
        return boto3.session.Session(
            aws_access_key_id=LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=LOCAL_AWS_ENV["AWS_SESSION_TOKEN"],
            region_name=LOCAL_AWS_ENV["AWS_REGION"],
        )

    def sqs(self) -> SQSClient:
        return self.session().client("sqs", endpoint_url=self.url, config=CLIENT_CONFIG)

    def dynamodb(self, config: Config = CLIENT_CONFIG) -> DynamoDBClient:
        return self.session().client("dynamodb", endpoint_url=self.url, config=config)

    @property
    def env(self) -> dict[str, str]:
        """Environment for a child process that should use this endpoint."""
        if self.url is None:
            return {}
        return {**LOCAL_AWS_ENV, "AWS_ENDPOINT_URL": self.url}


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid7_str()}"


def real_aws_enabled() -> bool:
    return os.environ.get(REAL_AWS_VARIABLE) == "1"


@pytest.fixture(scope="session")
def moto() -> Iterator[Aws]:
    with moto_server() as endpoint:
        yield Aws("moto", endpoint.url)


@pytest.fixture(scope="session")
def dynalite() -> Iterator[Aws]:
    with dynalite_server() as endpoint:
        yield Aws("dynalite", endpoint.url)


@pytest.fixture(scope="session")
def real_aws() -> Aws:
    if not real_aws_enabled():
        pytest.skip(f"real AWS: set {REAL_AWS_VARIABLE}=1 with AWS credentials and a region")
    return Aws("aws", None)
