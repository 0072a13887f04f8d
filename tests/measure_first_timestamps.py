"""Events with an id and no timestamp: DynamoDB calls and seconds to store them, once sent and
once retried. One JSON object.

    .venv/bin/python -m tests.measure_first_timestamps [EVENTS]

Starts an in-process moto server, queues EVENTS (default 3,000) such events in messages of
300, and times one real `Processor.handle` of them; then the same ids again, later (a
client's retry). Calls are read from `logpipe_aws_requests_total`, stored events with
`stored_events` (each (service, id) once). The same events with timestamps are the
baseline.
"""

from __future__ import annotations

import asyncio
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import orjson

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.calls import stored_events
from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.core.envelope import pack_envelope
from logpipe.core.event import encode_event, normalise
from logpipe.dev.processes import EmbeddedAws
from logpipe.obs import metrics
from logpipe.process.processor import Processor
from tests.support.aws import bootstrapped, fresh_settings, use_local_aws

PER_MESSAGE = 300
DYNAMODB_CALLS = ("PutItem", "TransactWriteItems", "BatchWriteItem", "UpdateItem", "GetItem")


def _calls() -> dict[str, float]:
    return {op: metrics.aws_requests.labels(op)._value.get() for op in DYNAMODB_CALLS}


async def _round(
    clients: Clients, settings: Settings, events: int, now_ms: int, timestamps: bool
) -> dict[str, Any]:
    url = await queue_url(clients.sqs, settings.queue_name)
    raw = [
        {"id": f"retry-{n:06d}", "service": f"svc{n % 3}", "message": f"event {n}"}
        | ({"timestamp": now_ms - n} if timestamps else {})
        for n in range(events)
    ]
    encoded = [encode_event(normalise(e, now_ms=now_ms)) for e in raw]
    for start in range(0, events, PER_MESSAGE):
        body = pack_envelope(encoded[start : start + PER_MESSAGE])
        await clients.sqs.send_message(QueueUrl=url, MessageBody=body)
    messages: list[dict[str, Any]] = []
    while len(messages) < -(-events // PER_MESSAGE):
        got = await clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        messages.extend(got.get("Messages", []))
    before = _calls()
    started = time.perf_counter()
    await Processor(settings, clients, url).handle(messages)
    seconds = time.perf_counter() - started
    after = _calls()
    stored = await stored_events(clients, settings.table_name)
    return {
        "seconds": round(seconds, 2),
        "dynamodb_calls": {
            op: int(after[op] - before[op]) for op in DYNAMODB_CALLS if after[op] > before[op]
        },
        "stored": len(stored),
        "distinct_timestamps": len({e["timestamp"] for e in stored}),
    }


async def main(events: int) -> dict[str, Any]:
    use_local_aws()
    aws = EmbeddedAws()
    endpoint = aws.start()
    try:
        results: dict[str, Any] = {"events": events}
        async with AsyncExitStack() as stack:
            settings = await bootstrapped(fresh_settings(endpoint))
            clients = await open_clients(stack, settings, pool=20)
            now_ms = int(time.time() * 1000)
            results["with_timestamps"] = await _round(clients, settings, events, now_ms, True)
            settings = await bootstrapped(fresh_settings(endpoint))
            clients = await open_clients(stack, settings, pool=20)
            results["ids_only"] = await _round(clients, settings, events, now_ms, False)
            results["ids_only_retried"] = await _round(
                clients, settings, events, now_ms + 60_000, False
            )
        return results
    finally:
        aws.stop()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    print(orjson.dumps(asyncio.run(main(count))).decode())
