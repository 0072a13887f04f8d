"""The processor role: SQS to DynamoDB, and the dead-letter queue tools."""
