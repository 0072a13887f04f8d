"""moto's server as the AWS endpoint: credentials, fresh resources, and reading them back."""

from __future__ import annotations

import os
import uuid
from contextlib import AsyncExitStack
from typing import Any

from logpipe.aws.bootstrap import bootstrap
from logpipe.aws.calls import stored_events
from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.core.block import stored_event
from logpipe.dev.processes import LOCAL_CREDENTIALS, free_port

# The tests' events carry fixed dates (make_event: 2026-09-21); the ingestor refuses events
# older than the retention, so the tests' roles keep ten years.
TEST_RETENTION_DAYS = 3650


def use_local_aws() -> None:
    """This process (and the roles it starts) talks to a local endpoint with test credentials,
    and keeps events for TEST_RETENTION_DAYS."""
    os.environ.update(LOCAL_CREDENTIALS)
    os.environ.setdefault("LOGPIPE_RETENTION_DAYS", str(TEST_RETENTION_DAYS))
    os.environ["AWS_REGION"] = "us-east-1"
    os.environ.pop("AWS_ENDPOINT_URL", None)


def fresh_settings(endpoint: str, prefix: str = "t", **overrides: Any) -> Settings:
    """Settings naming a queue, DLQ and table of their own, with free loopback ports."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    fields: dict[str, Any] = {
        "endpoint_url": endpoint,
        "queue_name": f"{name}-events",
        "dlq_name": f"{name}-dlq",
        "table_name": f"{name}-logs",
        "host": "127.0.0.1",
        "port": free_port(),
        "metrics_port": free_port(),
        "retention_days": TEST_RETENTION_DAYS,
        **overrides,
    }
    return Settings(**fields)


async def bootstrapped(settings: Settings) -> Settings:
    """Create the queue, DLQ and table of `settings` on its endpoint; `settings` back."""
    async with AsyncExitStack() as stack:
        await bootstrap(await open_clients(stack, settings, pool=4), settings)
    return settings


async def scan_events(clients: Clients, table: str) -> list[dict[str, Any]]:
    """Every stored event of the table once, as the read API shows it (a consistent scan of
    the block bodies)."""
    return [stored_event(e) for e in await stored_events(clients, table)]


async def queue_counts(clients: Clients, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    response = await clients.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attrs = response["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


def make_event(n: int, service: str = "svc", **fields: Any) -> dict[str, Any]:
    """A valid event with a client id, so a test can tell exactly which ones were stored."""
    return {
        "id": f"ev-{n:08d}",
        "service": service,
        "level": "info",
        "message": f"event number {n}",
        "timestamp": 1_790_000_000_000 + n,
        **fields,
    }
