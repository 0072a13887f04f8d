"""logpipe: a log pipeline for services on AWS (HTTP/OTLP → SQS → DynamoDB)."""

__version__ = "0.1.0"
