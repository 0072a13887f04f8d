"""The ingestor role: routes and decoding (app), the SQS batcher."""
