"""`logpipe bench --ceiling`: what the endpoint itself allows for our traffic.

The same events, packed into the same SQS messages, sent with SendMessageBatch, received and
deleted in batches and written with concurrent BatchWriteItem — by one bare asyncio loop,
with no HTTP, no validation and no per-message bookkeeping. The pipeline is measured as a
fraction of this figure.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, cast

import orjson
from prometheus_client import REGISTRY

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.calls import send_message_batch
from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.core.block import block_items, item_bytes, write_units
from logpipe.core.envelope import message_body, unpack_envelope
from logpipe.core.event import Event
from logpipe.dev import promtext
from logpipe.dev.report import mean_event_bytes, summarise
from logpipe.ingest.batcher import MessageSizer, Pending, take_batch
from logpipe.obs import metrics

RECEIVE_WAIT_S = 1


def registry_samples() -> list[promtext.Sample]:
    return [(s.name, s.labels, s.value) for f in REGISTRY.collect() for s in f.samples]


def counter_deltas(
    after: list[promtext.Sample], before: list[promtext.Sample]
) -> list[promtext.Sample]:
    earlier = {(name, tuple(sorted(labels.items()))): value for name, labels, value in before}
    return [
        (name, labels, value - earlier.get((name, tuple(sorted(labels.items()))), 0.0))
        for name, labels, value in after
    ]


async def run_ceiling(
    settings: Settings, clients: Clients, events: list[dict[str, Any]], pitr: bool = False
) -> dict[str, Any]:
    url = await queue_url(clients.sqs, settings.queue_name)
    before = registry_samples()
    latencies: list[float] = []
    started = time.monotonic()
    producer = asyncio.create_task(_produce(settings, clients, url, events))
    consumers = [
        asyncio.create_task(_consume(settings, clients, url, latencies, len(events)))
        for _ in range(settings.pollers)
    ]
    await producer
    await asyncio.wait(consumers, return_when=asyncio.FIRST_COMPLETED)
    seconds = time.monotonic() - started
    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    samples = counter_deltas(registry_samples(), before)
    latencies.sort()
    return summarise(
        mode="ceiling",
        events=len(events),
        acknowledged=len(events),
        counts={"stored": len(latencies), "lost": len(events) - len(latencies), "duplicates": 0},
        seconds=seconds,
        samples=samples,
        latency_ms=(_percentile(latencies, 0.5), _percentile(latencies, 0.99)),
        event_bytes=mean_event_bytes(events),
        retention_days=settings.retention_days,
        pitr=pitr,
    )


def _percentile(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    return round(sorted_ms[min(int(q * len(sorted_ms)), len(sorted_ms) - 1)], 1)


def _envelope_event(event: dict[str, Any], now_ms: int) -> Event:
    """A bench event (already in the envelope's form) as the ingestor would send it on."""
    return cast(Event, {**event, "ingested_at": now_ms})


async def _produce(
    settings: Settings, clients: Clients, url: str, events: list[dict[str, Any]]
) -> None:
    slots = asyncio.Semaphore(settings.send_concurrency)
    now_ms = int(time.time() * 1000)
    buffer = deque([Pending([orjson.dumps(_envelope_event(e, now_ms)) for e in events], None)])
    sends = []
    sizer = MessageSizer(settings.sqs_max_bytes)
    while buffer:
        messages = take_batch(buffer, sizer.fill_bytes, sizer.fill_bytes)
        for batch in sizer.batches(sizer.pack(messages)):
            await slots.acquire()
            bodies = [body for _, body in batch]
            task = asyncio.create_task(send_message_batch(clients.sqs, url, bodies))
            task.add_done_callback(lambda _: slots.release())
            sends.append(task)
    for outcome in await asyncio.gather(*sends):
        assert not any(outcome), "the endpoint refused a batch"


async def _consume(
    settings: Settings, clients: Clients, url: str, latencies: list[float], total: int
) -> None:
    writes = asyncio.Semaphore(settings.write_concurrency)
    table = settings.table_name

    async def write(chunk: list[dict[str, Any]]) -> None:
        pending = [{"PutRequest": {"Item": item}} for item in chunk]
        while pending:
            async with writes:
                response = await clients.dynamodb.batch_write_item(RequestItems={table: pending})
            pending = response.get("UnprocessedItems", {}).get(table, [])

    while len(latencies) < total:
        response = await clients.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=RECEIVE_WAIT_S,
            MessageAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            continue
        items = []
        ingested: list[int] = []
        for message in messages:
            events = unpack_envelope(message_body(message))
            ingested.extend(event["ingested_at"] for event in events)
            items.extend(block_items(events, settings.shards, settings.retention_days))
        sizes = [item_bytes(item) for item in items]
        metrics.dynamodb_write_units.inc(sum(map(write_units, sizes)))
        metrics.dynamodb_stored_bytes.inc(sum(sizes))
        await asyncio.gather(*(write(items[i : i + 24]) for i in range(0, len(items), 24)))
        now_ms = time.time() * 1000
        latencies.extend(now_ms - t for t in ingested)
        await clients.sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
