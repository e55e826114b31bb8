"""What Lambda's SQS event source passes the function."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["sqs_event_of"]


def sqs_event_of(messages: Sequence[Mapping[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event the SQS event source gives the function for these messages,
    as ``receive_message`` returned them with all their system attributes."""
    region = queue_arn.split(":")[3]
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message["Attributes"],
                "messageAttributes": {},
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for message in messages
        ]
    }
