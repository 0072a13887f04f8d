"""An event sent with an id and no timestamp keeps the first timestamp given to its id: a
client's retry, or two processors racing, is one event. The real processor against moto."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import pytest
from prometheus_client import REGISTRY

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.core.block import BODY_PREFIX, decode_body
from logpipe.core.envelope import pack_envelope
from logpipe.core.event import encode_event, normalise
from logpipe.process.processor import TRANSACT_ITEMS, Processor, first_timestamp_partition
from tests.support.aws import queue_counts

FIRST_MS = 1_790_000_000_000
RETRY_MS = FIRST_MS + 60_000
PER_MESSAGE = 300


def _calls(operation: str) -> float:
    labels = {"operation": operation}
    return REGISTRY.get_sample_value("logpipe_aws_requests_total", labels) or 0.0


async def _queue(clients: Clients, url: str, ids: range, now_ms: int) -> list[dict[str, Any]]:
    """Events of `ids` without timestamps, as the ingestor at `now_ms` packs them, received."""
    encoded = [
        encode_event(normalise({"id": f"ev-{n:06d}", "service": "svc", "message": "m"}, now_ms))
        for n in ids
    ]
    for start in range(0, len(encoded), PER_MESSAGE):
        body = pack_envelope(encoded[start : start + PER_MESSAGE])
        await clients.sqs.send_message(QueueUrl=url, MessageBody=body)
    messages: list[dict[str, Any]] = []
    while len(messages) < -(-len(encoded) // PER_MESSAGE):
        got = await clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        messages.extend(got.get("Messages", []))
    return messages


async def _copies(clients: Clients, table: str) -> dict[str, set[int]]:
    """Per id, the timestamps of every copy stored in any block body (no first-copy rule)."""
    copies: dict[str, set[int]] = {}
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = await clients.dynamodb.scan(**kwargs)
        for item in page["Items"]:
            if item["sk"]["S"].startswith(BODY_PREFIX):
                for event in decode_body(item):
                    copies.setdefault(event["id"], set()).add(event["timestamp"])
        if "LastEvaluatedKey" not in page:
            return copies
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@pytest.mark.aws
async def test_3000_ids_without_timestamps_take_a_transaction_per_100_and_are_stored_once(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    messages = await _queue(clients, url, range(3000), FIRST_MS)
    puts, transactions = _calls("PutItem"), _calls("TransactWriteItems")

    await Processor(settings, clients, url).handle(messages)

    assert _calls("PutItem") == puts
    assert _calls("TransactWriteItems") - transactions == 3000 / TRANSACT_ITEMS
    copies = await _copies(clients, settings.table_name)
    assert copies == {f"ev-{n:06d}": {FIRST_MS} for n in range(3000)}
    assert await queue_counts(clients, url) == (0, 0)


@pytest.mark.aws
async def test_ids_retried_later_keep_their_first_timestamp(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    await Processor(settings, clients, url).handle(await _queue(clients, url, range(250), FIRST_MS))
    # The retry repeats the first 150 ids and adds 200 new ones: transactions of both kinds.
    retry = await _queue(clients, url, range(100, 450), RETRY_MS)
    transactions = _calls("TransactWriteItems")

    await Processor(settings, clients, url).handle(retry)

    copies = await _copies(clients, settings.table_name)
    assert copies == {f"ev-{n:06d}": {FIRST_MS if n < 250 else RETRY_MS} for n in range(450)}
    # 350 claims: four transactions, and each one holding old ids sent again for its new ones.
    assert _calls("TransactWriteItems") - transactions <= 8
    assert await queue_counts(clients, url) == (0, 0)


@pytest.mark.aws
async def test_two_processors_racing_on_the_same_ids_store_one_timestamp_each(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    first = await _queue(clients, url, range(600), FIRST_MS)
    second = await _queue(clients, url, range(600), RETRY_MS)
    async with AsyncExitStack() as stack:
        others = await open_clients(stack, settings, pool=20)

        await asyncio.gather(
            Processor(settings, clients, url).handle(first),
            Processor(settings, others, url).handle(second),
        )

    copies = await _copies(clients, settings.table_name)
    assert sorted(copies) == [f"ev-{n:06d}" for n in range(600)]
    assert all(len(timestamps) == 1 for timestamps in copies.values()), copies
    assert await queue_counts(clients, url) == (0, 0)


@pytest.mark.unit
def test_first_timestamps_of_one_service_spread_over_partitions() -> None:
    partitions = {first_timestamp_partition("svc", f"ev-{n:06d}") for n in range(1000)}
    assert len(partitions) == 16
    assert first_timestamp_partition("svc", "ev-1") == first_timestamp_partition("svc", "ev-1")
    assert all(p.startswith("_first#svc#") for p in partitions)
