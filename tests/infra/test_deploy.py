"""The synthesized stack, deployed into moto's CloudFormation, runs the pipeline.

The template and its asset are what ``cdk deploy`` would publish; the test
prepares what ``cdk bootstrap`` would (the version parameter and the asset
bucket). Then, with every name taken from the stack's outputs: ``eventtrail
send`` queues events, the handler from the uploaded asset stores the batch it
would receive from the event source, and ``eventtrail flow`` reads them back.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from eventtrail.aws.schema import INDEX_SHARDS_TAG
from eventtrail.ids import uuid7_str
from tests.aws.lambda_events import sqs_event_of
from tests.cli import run
from tests.infra.conftest import DEV_CONTEXT, ROOT, Synthesized
from tests.infra.lambda_runtime import find_runtime_python, install_boto3, invoke
from tests.servers import LOCAL_AWS_ENV, moto_server

pytestmark = [
    pytest.mark.slow,
    # moto's CloudFormation skips these two resource types (with a warning); the
    # template tests cover them.
    pytest.mark.filterwarnings("ignore:Tried to parse AWS..SQS..QueuePolicy:UserWarning"),
    pytest.mark.filterwarnings("ignore:Tried to parse AWS..CloudWatch..Alarm:UserWarning"),
]

REGION = LOCAL_AWS_ENV["AWS_REGION"]
BOOTSTRAP_VERSION_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
HANDLER_SOURCE = ROOT / "src" / "eventtrail" / "aws" / "lambda_handler.py"

Client = Callable[[str], Any]


@dataclass(frozen=True)
class Deployed:
    endpoint: str
    client: Client
    account: str
    outputs: dict[str, str]
    asset_zips: dict[str, bytes]
    """The uploaded code packages by object key."""

    def cli_env(self) -> dict[str, str]:
        """What a user sets to point the CLI at the stack: its outputs."""
        return {
            **LOCAL_AWS_ENV,
            "AWS_ENDPOINT_URL": self.endpoint,
            "EVENTTRAIL_BACKEND": "aws",
            "EVENTTRAIL_QUEUE_NAME": self.outputs["QueueName"],
            "EVENTTRAIL_DLQ_NAME": self.outputs["DeadLetterQueueName"],
            "EVENTTRAIL_TABLE_NAME": self.outputs["TableName"],
        }


def _publish_assets(synthesized: Synthesized, client: Client, account: str) -> dict[str, bytes]:
    """What ``cdk deploy`` publishes: each file asset, zipped when it is a folder."""
    manifest = json.loads((synthesized.directory / f"{synthesized.dev.artifact_id}.assets.json").read_text())
    s3 = client("s3")
    published: dict[str, bytes] = {}
    for asset in manifest["files"].values():
        source = synthesized.directory / asset["source"]["path"]
        if asset["source"]["packaging"] == "zip":
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(source.rglob("*")):
                    archive.write(path, path.relative_to(source).as_posix())
            body = buffer.getvalue()
        else:
            body = source.read_bytes()
        for destination in asset["destinations"].values():
            bucket = (
                destination["bucketName"]
                .replace("${AWS::AccountId}", account)
                .replace("${AWS::Region}", REGION)
            )
            if bucket not in {entry["Name"] for entry in s3.list_buckets()["Buckets"]}:
                s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key=destination["objectKey"], Body=body)
            published[destination["objectKey"]] = body
    return published


@pytest.fixture(scope="module")
def deployed(synthesized: Synthesized) -> Iterator[Deployed]:
    with moto_server() as endpoint:
        session = boto3.Session(
            aws_access_key_id=LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=LOCAL_AWS_ENV["AWS_SESSION_TOKEN"],
            region_name=REGION,
        )

        def client(service: str) -> Any:
            return session.client(service, endpoint_url=endpoint.url)  # type: ignore[call-overload]

        account = client("sts").get_caller_identity()["Account"]
        # What `cdk bootstrap` leaves behind and the template's BootstrapVersion rule reads.
        client("ssm").put_parameter(Name=BOOTSTRAP_VERSION_PARAMETER, Value="30", Type="String")
        zips = _publish_assets(synthesized, client, account)
        cloudformation = client("cloudformation")
        stack_name = synthesized.dev.stack_name
        cloudformation.create_stack(
            StackName=stack_name,
            TemplateBody=synthesized.template_path(synthesized.dev).read_text(),
            Capabilities=["CAPABILITY_IAM"],
        )
        cloudformation.get_waiter("stack_create_complete").wait(
            StackName=stack_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
        outputs = {output["OutputKey"]: output["OutputValue"] for output in stack["Outputs"]}
        yield Deployed(endpoint.url, client, account, outputs, zips)


def test_stack_creates_the_resources_it_declares(deployed: Deployed) -> None:
    outputs = deployed.outputs
    assert outputs["QueueName"] == DEV_CONTEXT["queue_name"]
    assert outputs["DeadLetterQueueName"] == DEV_CONTEXT["dlq_name"]
    assert outputs["TableName"] == DEV_CONTEXT["table_name"]

    sqs = deployed.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == int(DEV_CONTEXT["max_receive_count"])
    assert redrive["deadLetterTargetArn"].endswith(f":{DEV_CONTEXT['dlq_name']}")
    assert int(attributes["VisibilityTimeout"]) >= 6 * int(DEV_CONTEXT["function_timeout_seconds"])

    table = deployed.client("dynamodb").describe_table(TableName=outputs["TableName"])["Table"]
    assert {index["IndexName"] for index in table["GlobalSecondaryIndexes"]} == {
        "Type-Index",
        "Source-Index",
    }
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    tags = deployed.client("dynamodb").list_tags_of_resource(ResourceArn=table["TableArn"])["Tags"]
    assert {"Key": INDEX_SHARDS_TAG, "Value": DEV_CONTEXT["index_shards"]} in tags

    function = deployed.client("lambda").get_function_configuration(FunctionName=outputs["FunctionName"])
    assert function["Handler"] == "eventtrail.aws.lambda_handler.handler"
    (mapping,) = deployed.client("lambda").list_event_source_mappings(FunctionName=outputs["FunctionName"])[
        "EventSourceMappings"
    ]
    assert mapping["EventSourceArn"] == attributes["QueueArn"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == int(DEV_CONTEXT["batch_size"])


@pytest.fixture(scope="module")
def runtime_python() -> str:
    python = find_runtime_python()
    if python is None:
        pytest.skip("no Python interpreter of the Lambda runtime's version (set EVENTTRAIL_LAMBDA_PYTHON)")
    return python


@pytest.mark.skipif(
    not HANDLER_SOURCE.exists(),
    reason="the Lambda handler (eventtrail.aws.lambda_handler) is not written yet",
)
def test_pipeline_runs_on_the_deployed_stack(
    deployed: Deployed,
    runtime_python: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    request_id = uuid7_str()
    sent: list[dict[str, Any]] = [
        {
            "id": uuid7_str(),
            "requestId": request_id,
            "timestamp": f"2020-05-01T20:00:0{second}Z",
            "type": event_type,
            "source": source,
            "data": {"Name": "Microservice A", "status": 200},
        }
        for second, (event_type, source) in enumerate(
            [
                ("MICROSERVICE_REQUEST", "Gateway"),
                ("MICROSERVICE_RESPONSE", "Microservice A"),
                ("MICROSERVICE_RESPONSE", "Gateway"),
            ]
        )
    ]
    # This test plays the event source mapping's part itself; moto's own
    # emulation of it would take the messages to invoke the function, which
    # needs Docker here.
    functions = deployed.client("lambda")
    for mapping in functions.list_event_source_mappings(FunctionName=deployed.outputs["FunctionName"])[
        "EventSourceMappings"
    ]:
        functions.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)

    events_file = tmp_path / "events.ndjson"
    events_file.write_text("".join(json.dumps(event) + "\n" for event in sent))
    env = deployed.cli_env()

    result = run(tmp_path, "send", str(events_file), env=env)
    assert result.returncode == 0, result.stderr
    # A message no event can be read from: the handler must dead-letter it.
    sqs = deployed.client("sqs")
    queue_url = deployed.outputs["QueueUrl"]
    poison = sqs.send_message(QueueUrl=queue_url, MessageBody="not an event")["MessageId"]

    # The event source's part: receive a batch, call the function, delete
    # what it did not report as failed.
    messages: list[dict[str, Any]] = []
    for _ in range(10):
        messages += sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=0
        ).get("Messages", [])
        if len(messages) > len(sent):
            break
    assert len(messages) == len(sent) + 1
    assert sorted(
        json.loads(message["Body"])["id"] for message in messages if message["MessageId"] != poison
    ) == sorted(event["id"] for event in sent)
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]

    # The code the function runs: the uploaded package, unzipped.
    function = deployed.client("lambda").get_function_configuration(
        FunctionName=deployed.outputs["FunctionName"]
    )
    asset = tmp_path / "function-code"
    (code,) = (body for key, body in deployed.asset_zips.items() if key.endswith(".zip"))
    with zipfile.ZipFile(io.BytesIO(code)) as archive:
        archive.extractall(asset)
    boto3_dir = install_boto3(request.config.cache.mkdir("lambda-runtime"))
    environment = {
        **function["Environment"]["Variables"],
        **LOCAL_AWS_ENV,
        "AWS_ENDPOINT_URL": deployed.endpoint,
        "AWS_LAMBDA_FUNCTION_NAME": function["FunctionName"],
    }
    output = invoke(runtime_python, asset, boto3_dir, sqs_event_of(messages, queue_arn), environment)
    assert Path(output["package"]).resolve().is_relative_to(asset.resolve())
    assert output["response"] == {"batchItemFailures": []}
    for message in messages:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    result = run(tmp_path, "flow", request_id, "--json", env=env)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)
    assert [event["id"] for event in stored] == [event["id"] for event in sent]
    assert [event["data"] for event in stored] == [event["data"] for event in sent]

    # The sharded Type index the stack created serves the type query.
    result = run(
        tmp_path,
        "events",
        "--type",
        "MICROSERVICE_RESPONSE",
        "--since",
        "2020-05-01T00:00:00Z",
        "--until",
        "2020-05-02T00:00:00Z",
        "--json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    responses = [event["id"] for event in sent if event["type"] == "MICROSERVICE_RESPONSE"]
    assert [event["id"] for event in json.loads(result.stdout)["events"]] == responses

    # The poison message went to the DLQ the stack created, with its reason.
    result = run(tmp_path, "dlq", "list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    (letter,) = json.loads(result.stdout)
    assert letter["body"] == "not an event"
    assert letter["reason"]
    shutil.rmtree(asset)
