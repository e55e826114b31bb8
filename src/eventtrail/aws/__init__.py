"""The AWS backend: Amazon SQS as the queue, Amazon DynamoDB as the store, and
the AWS Lambda handler that runs the consumer core on SQS batches."""

__all__: list[str] = []
