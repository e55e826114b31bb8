"""The synthesized templates say what the design says (by intent: resources
are found by their properties, never by logical id)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_cdk.assertions import Match, Template

from eventtrail.aws import lambda_handler
from eventtrail.aws.schema import INDEX_SHARDS_TAG, READ_MODELS, TABLE, read_models_table_name
from eventtrail.config import ENV_PREFIX, Settings
from eventtrail_infra.access import (
    CONSUMER_TABLE_ACTIONS,
    GATEWAY_ACTIONS,
    GATEWAY_DLQ_ACTIONS,
    READER_ACTIONS,
)
from eventtrail_infra.readmodels import CONSUMER_READ_MODEL_ACTIONS, READER_READ_MODEL_ACTIONS
from eventtrail_infra.runtime import HANDLER, RUNTIME_PYTHON_VERSION
from eventtrail_infra.settings import StackSettings
from eventtrail_infra.stack import consumer_environment
from tests.infra.conftest import DEV_CONTEXT, PROD_SETTINGS


def only(found: Mapping[str, Mapping[str, Any]]) -> tuple[str, Mapping[str, Any]]:
    assert len(found) == 1, f"expected one resource, found {sorted(found)}"
    ((logical_id, resource),) = found.items()
    return logical_id, resource


def queue_id(template: Template, name: str) -> str:
    return only(template.find_resources("AWS::SQS::Queue", {"Properties": {"QueueName": name}}))[0]


def table_id(template: Template, name: str = DEV_CONTEXT["table_name"]) -> str:
    return only(template.find_resources("AWS::DynamoDB::Table", {"Properties": {"TableName": name}}))[0]


#: The dev stack's read-model table, named after its events table.
DEV_READ_MODEL_TABLE = read_models_table_name(DEV_CONTEXT["table_name"])


def function_id(template: Template) -> tuple[str, Mapping[str, Any]]:
    return only(template.find_resources("AWS::Lambda::Function", {"Properties": {"Handler": HANDLER}}))


def arn_of(logical_id: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def statements_of_role(template: Template, role_id: str) -> list[dict[str, Any]]:
    policies = template.find_resources("AWS::IAM::Policy", {"Properties": {"Roles": [{"Ref": role_id}]}})
    statements: list[dict[str, Any]] = []
    for policy in policies.values():
        statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def resources(statement: dict[str, Any]) -> list[Any]:
    resource = statement["Resource"]
    return resource if isinstance(resource, list) else [resource]


# --- queue -----------------------------------------------------------------


def test_queue_redrives_to_the_dead_letter_queue_after_the_configured_receives(
    dev_template: Template,
) -> None:
    dlq = queue_id(dev_template, DEV_CONTEXT["dlq_name"])
    dev_template.has_resource_properties(
        "AWS::SQS::Queue",
        {
            "QueueName": DEV_CONTEXT["queue_name"],
            "RedrivePolicy": {
                "deadLetterTargetArn": arn_of(dlq),
                "maxReceiveCount": int(DEV_CONTEXT["max_receive_count"]),
            },
        },
    )
    dev_template.resource_count_is("AWS::SQS::Queue", 2)


def test_both_queues_are_encrypted_at_rest(dev_template: Template) -> None:
    queues = dev_template.find_resources("AWS::SQS::Queue")
    assert len(queues) == 2
    for queue in queues.values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True


def test_both_queues_refuse_requests_without_tls(dev_template: Template) -> None:
    for name in (DEV_CONTEXT["queue_name"], DEV_CONTEXT["dlq_name"]):
        dev_template.has_resource_properties(
            "AWS::SQS::QueuePolicy",
            {
                "Queues": [{"Ref": queue_id(dev_template, name)}],
                "PolicyDocument": {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Deny",
                                    "Action": "sqs:*",
                                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                }
                            )
                        ]
                    )
                },
            },
        )


def test_visibility_timeout_is_at_least_six_function_timeouts(dev_template: Template) -> None:
    _, function = function_id(dev_template)
    timeout = function["Properties"]["Timeout"]
    assert timeout == int(DEV_CONTEXT["function_timeout_seconds"])
    _, queue = only(
        dev_template.find_resources(
            "AWS::SQS::Queue", {"Properties": {"QueueName": DEV_CONTEXT["queue_name"]}}
        )
    )
    assert queue["Properties"]["VisibilityTimeout"] >= 6 * timeout


# --- consumer ----------------------------------------------------------------


def test_function_runs_the_packaged_handler_on_a_current_python(dev_template: Template) -> None:
    dev_template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": HANDLER,
            "Runtime": f"python{RUNTIME_PYTHON_VERSION}",
            "Architectures": ["x86_64"],
            "MemorySize": int(DEV_CONTEXT["function_memory_mb"]),
            "Code": {
                "S3Bucket": Match.any_value(),
                "S3Key": Match.string_like_regexp(r"^[0-9a-f]{64}\.zip$"),
            },
        },
    )


def test_function_gets_its_settings_from_the_stack(dev_template: Template) -> None:
    _, function = function_id(dev_template)
    assert function["Properties"]["Environment"]["Variables"] == {
        "EVENTTRAIL_TABLE_NAME": DEV_CONTEXT["table_name"],
        "EVENTTRAIL_INDEX_SHARDS": DEV_CONTEXT["index_shards"],
        "EVENTTRAIL_DLQ_URL": {"Ref": queue_id(dev_template, DEV_CONTEXT["dlq_name"])},
    }


def test_function_environment_is_what_the_handler_reads() -> None:
    settings = StackSettings(retention_days=30)
    names = set(consumer_environment(settings, "https://example/dlq"))
    assert names == {
        "EVENTTRAIL_TABLE_NAME",
        "EVENTTRAIL_INDEX_SHARDS",
        "EVENTTRAIL_RETENTION_DAYS",
        lambda_handler.DLQ_URL_VARIABLE,
    }
    settings_names = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.__struct_fields__}
    assert names - {lambda_handler.DLQ_URL_VARIABLE} <= settings_names


def test_event_source_reports_batch_item_failures_with_bounded_concurrency(
    dev_template: Template,
) -> None:
    function, _ = function_id(dev_template)
    dev_template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "FunctionName": {"Ref": function},
            "EventSourceArn": arn_of(queue_id(dev_template, DEV_CONTEXT["queue_name"])),
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "BatchSize": int(DEV_CONTEXT["batch_size"]),
            "MaximumBatchingWindowInSeconds": int(DEV_CONTEXT["max_batching_window_seconds"]),
            "ScalingConfig": {"MaximumConcurrency": int(DEV_CONTEXT["maximum_concurrency"])},
        },
    )
    dev_template.resource_count_is("AWS::Lambda::EventSourceMapping", 1)


# --- table -------------------------------------------------------------------


def test_table_keys_and_indexes_are_the_adapter_schema(dev_template: Template) -> None:
    _, table = only(
        dev_template.find_resources(
            "AWS::DynamoDB::Table", {"Properties": {"TableName": DEV_CONTEXT["table_name"]}}
        )
    )
    properties = table["Properties"]
    assert properties["TableName"] == DEV_CONTEXT["table_name"]
    assert properties["KeySchema"] == [
        {"AttributeName": TABLE.partition_key, "KeyType": "HASH"},
        {"AttributeName": TABLE.sort_key, "KeyType": "RANGE"},
    ]
    indexes = {index["IndexName"]: index for index in properties["GlobalSecondaryIndexes"]}
    assert set(indexes) == {index.name for index in TABLE.indexes}
    for schema in TABLE.indexes:
        assert indexes[schema.name]["KeySchema"] == [
            {"AttributeName": schema.partition_key, "KeyType": "HASH"},
            {"AttributeName": TABLE.sort_key, "KeyType": "RANGE"},
        ]
        assert indexes[schema.name]["Projection"] == {"ProjectionType": "ALL"}
    assert sorted(
        (attribute["AttributeName"], attribute["AttributeType"])
        for attribute in properties["AttributeDefinitions"]
    ) == sorted(TABLE.key_attributes())


def test_table_is_on_demand_with_recovery_ttl_and_its_shard_count(dev_template: Template) -> None:
    dev_template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "BillingMode": "PAY_PER_REQUEST",
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "TimeToLiveSpecification": {"AttributeName": TABLE.ttl, "Enabled": True},
            "Tags": Match.array_with([{"Key": INDEX_SHARDS_TAG, "Value": DEV_CONTEXT["index_shards"]}]),
        },
    )


def test_dev_deletes_its_data_with_the_stack(dev_template: Template) -> None:
    dev_template.has_resource("AWS::DynamoDB::Table", {"DeletionPolicy": "Delete"})
    tables = dev_template.find_resources("AWS::DynamoDB::Table")
    assert len(tables) == 2  # the events and their read models
    for table in tables.values():
        assert table["DeletionPolicy"] == "Delete"
        assert not table["Properties"].get("DeletionProtectionEnabled", False)


def test_prod_retains_and_protects_its_data(prod_template: Template) -> None:
    prod_template.has_resource(
        "AWS::DynamoDB::Table",
        {
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": Match.object_like({"DeletionProtectionEnabled": True}),
        },
    )
    for queue in prod_template.find_resources("AWS::SQS::Queue").values():
        assert queue["DeletionPolicy"] == "Retain"


def test_prod_sets_retention_for_the_handler(prod_template: Template) -> None:
    _, function = function_id(prod_template)
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables["EVENTTRAIL_RETENTION_DAYS"] == str(PROD_SETTINGS.retention_days)


# --- least privilege ----------------------------------------------------------


def test_function_role_has_no_managed_policies_and_no_wildcards(dev_template: Template) -> None:
    _, function = function_id(dev_template)
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    role_resource = dev_template.to_json()["Resources"][role]
    assert role_resource["Type"] == "AWS::IAM::Role"
    assert "ManagedPolicyArns" not in role_resource["Properties"]
    statements = statements_of_role(dev_template, role)
    assert statements
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert all("*" not in action for action in actions(statement)), statement
        assert all(resource != "*" for resource in resources(statement)), statement


def test_function_writes_only_the_table_and_never_its_indexes(dev_template: Template) -> None:
    _, function = function_id(dev_template)
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    table_statements = [
        statement
        for statement in statements_of_role(dev_template, role)
        if any(action.startswith("dynamodb:") for action in actions(statement))
    ]
    # One on the events table, one on the read models (which it keeps as it stores events).
    assert len(table_statements) == 2
    by_table = {repr(resources(statement)): sorted(actions(statement)) for statement in table_statements}
    assert by_table == {
        repr([arn_of(table_id(dev_template))]): sorted(CONSUMER_TABLE_ACTIONS),
        repr([arn_of(table_id(dev_template, DEV_READ_MODEL_TABLE))]): sorted(CONSUMER_READ_MODEL_ACTIONS),
    }


def test_function_consumes_the_queue_and_sends_only_to_the_dead_letter_queue(
    dev_template: Template,
) -> None:
    _, function = function_id(dev_template)
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    queue = arn_of(queue_id(dev_template, DEV_CONTEXT["queue_name"]))
    dlq = arn_of(queue_id(dev_template, DEV_CONTEXT["dlq_name"]))
    by_resource: dict[str, set[str]] = {}
    for statement in statements_of_role(dev_template, role):
        for action in actions(statement):
            if action.startswith("sqs:"):
                for resource in resources(statement):
                    by_resource.setdefault(repr(resource), set()).add(action)
    assert by_resource.keys() == {repr(queue), repr(dlq)}
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= by_resource[
        repr(queue)
    ]
    assert "sqs:SendMessage" not in by_resource[repr(queue)]
    assert "sqs:SendMessage" in by_resource[repr(dlq)]
    assert "sqs:ReceiveMessage" not in by_resource[repr(dlq)]


def _grants(statements: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(effect, action, resource) of every statement: the same grants whatever
    their order (the minimizePolicies flag sorts and merges statements)."""
    grants = set()
    for statement in statements:
        actions, resources = statement["Action"], statement["Resource"]
        for action in [actions] if isinstance(actions, str) else actions:
            for resource in resources if isinstance(resources, list) else [resources]:
                grants.add((statement["Effect"], action, json.dumps(resource, sort_keys=True)))
    return grants


def managed_policy_grants(template: Template) -> list[set[tuple[str, str, str]]]:
    return [
        _grants(policy["Properties"]["PolicyDocument"]["Statement"])
        for policy in template.find_resources("AWS::IAM::ManagedPolicy").values()
    ]


def test_gateway_policy_only_sends_to_the_queue(dev_template: Template) -> None:
    queue = arn_of(queue_id(dev_template, DEV_CONTEXT["queue_name"]))
    dlq = arn_of(queue_id(dev_template, DEV_CONTEXT["dlq_name"]))
    assert "sqs:SendMessage" in GATEWAY_ACTIONS
    assert "sqs:SendMessage" not in GATEWAY_DLQ_ACTIONS
    expected = _grants(
        [
            {"Effect": "Allow", "Action": GATEWAY_ACTIONS, "Resource": queue},
            {"Effect": "Allow", "Action": GATEWAY_DLQ_ACTIONS, "Resource": dlq},
        ]
    )
    assert expected in managed_policy_grants(dev_template)


def test_reader_policy_queries_the_table_and_each_named_index(dev_template: Template) -> None:
    table = arn_of(table_id(dev_template))
    index_arns = [{"Fn::Join": ["", [table, f"/index/{index.name}"]]} for index in TABLE.indexes]
    read_models = arn_of(table_id(dev_template, DEV_READ_MODEL_TABLE))
    read_model_index = {"Fn::Join": ["", [read_models, f"/index/{READ_MODELS.requests_index.name}"]]}
    expected = _grants(
        [
            {"Effect": "Allow", "Action": READER_ACTIONS, "Resource": [table, *index_arns]},
            {
                "Effect": "Allow",
                "Action": READER_READ_MODEL_ACTIONS,
                "Resource": [read_models, read_model_index],
            },
        ]
    )
    assert expected in managed_policy_grants(dev_template)


def test_prod_without_gateway_policy_has_only_the_reader_policy(prod_template: Template) -> None:
    prod_template.resource_count_is("AWS::IAM::ManagedPolicy", 1)
    assert "GatewayPolicyArn" not in prod_template.find_outputs("*")


# --- alarms and outputs ------------------------------------------------------


def test_alarm_on_dead_letter_queue_depth(dev_template: Template) -> None:
    dlq = queue_id(dev_template, DEV_CONTEXT["dlq_name"])
    dev_template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": "AWS/SQS",
            "MetricName": "ApproximateNumberOfMessagesVisible",
            "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": [dlq, "QueueName"]}}],
            "Threshold": 1,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        },
    )


def test_alarm_on_function_errors(dev_template: Template) -> None:
    function, _ = function_id(dev_template)
    dev_template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": "AWS/Lambda",
            "MetricName": "Errors",
            "Dimensions": [{"Name": "FunctionName", "Value": {"Ref": function}}],
            "Threshold": 1,
        },
    )


def test_alarms_notify_the_topic_when_one_is_given(dev_template: Template, prod_template: Template) -> None:
    for alarm in prod_template.find_resources("AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmActions"] == [PROD_SETTINGS.alarm_topic_arn]
    prod_template.resource_count_is("AWS::CloudWatch::Alarm", 2)
    for alarm in dev_template.find_resources("AWS::CloudWatch::Alarm").values():
        assert "AlarmActions" not in alarm["Properties"]


def test_outputs_name_what_clients_need(dev_template: Template) -> None:
    queue = queue_id(dev_template, DEV_CONTEXT["queue_name"])
    dlq = queue_id(dev_template, DEV_CONTEXT["dlq_name"])
    dev_template.has_output("QueueUrl", {"Value": {"Ref": queue}})
    dev_template.has_output("QueueName", {"Value": {"Fn::GetAtt": [queue, "QueueName"]}})
    dev_template.has_output("DeadLetterQueueUrl", {"Value": {"Ref": dlq}})
    dev_template.has_output("DeadLetterQueueName", {"Value": {"Fn::GetAtt": [dlq, "QueueName"]}})
    dev_template.has_output("TableName", {"Value": {"Ref": table_id(dev_template)}})
    dev_template.has_output("GatewayPolicyArn", {"Value": {"Ref": Match.any_value()}})
    dev_template.has_output("ReaderPolicyArn", {"Value": {"Ref": Match.any_value()}})


# --- read models ---------------------------------------------------------------


def test_read_model_table_keys_and_request_index_are_the_adapter_schema(dev_template: Template) -> None:
    _, table = only(
        dev_template.find_resources(
            "AWS::DynamoDB::Table", {"Properties": {"TableName": DEV_READ_MODEL_TABLE}}
        )
    )
    properties = table["Properties"]
    assert properties["KeySchema"] == [
        {"AttributeName": READ_MODELS.partition_key, "KeyType": "HASH"},
        {"AttributeName": READ_MODELS.sort_key, "KeyType": "RANGE"},
    ]
    index = READ_MODELS.requests_index
    assert properties["GlobalSecondaryIndexes"] == [
        {
            "IndexName": index.name,
            "KeySchema": [
                {"AttributeName": index.partition_key, "KeyType": "HASH"},
                {"AttributeName": index.attribute, "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ]
    assert sorted(
        (attribute["AttributeName"], attribute["AttributeType"])
        for attribute in properties["AttributeDefinitions"]
    ) == sorted(READ_MODELS.key_attributes())
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["TimeToLiveSpecification"] == {"AttributeName": READ_MODELS.ttl, "Enabled": True}


def test_prod_retains_and_protects_its_read_models(prod_template: Template) -> None:
    name = read_models_table_name(PROD_SETTINGS.table_name)
    _, table = only(prod_template.find_resources("AWS::DynamoDB::Table", {"Properties": {"TableName": name}}))
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")
    assert table["Properties"]["DeletionProtectionEnabled"] is True


def test_read_models_need_no_stream_schedule_or_second_function(dev_template: Template) -> None:
    # The consumer keeps them as it stores events (docs/read-models.md).
    for table in dev_template.find_resources("AWS::DynamoDB::Table").values():
        assert "StreamSpecification" not in table["Properties"]
    dev_template.resource_count_is("AWS::Lambda::Function", 1)
    dev_template.resource_count_is("AWS::Events::Rule", 0)
    dev_template.resource_count_is("AWS::Lambda::EventSourceMapping", 1)


def test_read_model_grants_never_delete_scan_or_touch_the_index_from_the_consumer() -> None:
    for action in CONSUMER_READ_MODEL_ACTIONS + READER_READ_MODEL_ACTIONS:
        assert action.startswith("dynamodb:") and "*" not in action
    assert not {"dynamodb:Scan", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:DeleteTable"} & {
        *CONSUMER_READ_MODEL_ACTIONS,
        *READER_READ_MODEL_ACTIONS,
    }
    assert not {"dynamodb:PutItem", "dynamodb:UpdateItem"} & set(READER_READ_MODEL_ACTIONS)


def test_outputs_name_the_read_model_table(dev_template: Template) -> None:
    dev_template.has_output(
        "ReadModelTableName", {"Value": {"Ref": table_id(dev_template, DEV_READ_MODEL_TABLE)}}
    )
