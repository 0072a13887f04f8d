"""Query latency of the reader on the embedded endpoint: 100 results over 24 hours x 8 shards.

    .venv/bin/python -m tests.measure_query_latency [--runs 10] [--per-hour 100]

Stores events over the last 24 hours (every hour bucket, all 8 shards) on a fresh table of an
in-process moto server, then times `Reader.read` plus the JSON conversion for a few shapes of
search and prints one JSON object per shape.

moto's Query sorts every item of the table on each call (moto/dynamodb/models/table.py,
`all_items`), so here the time per Query grows with the table; DynamoDB reads one partition.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import AsyncExitStack
from typing import Any

import orjson

from logpipe.aws.bootstrap import bootstrap
from logpipe.aws.clients import open_clients
from logpipe.config import Settings
from logpipe.core.block import block_items
from logpipe.core.event import normalise
from logpipe.core.query import parse_query
from logpipe.dev.processes import EmbeddedAws
from logpipe.read.console import READ_CONCURRENCY
from logpipe.read.reader import Reader
from tests.support.aws import use_local_aws

HOUR_MS = 3_600_000
SECRET = b"measure-query-latency"


def events(now_ms: int, per_hour: int, service: str) -> list[dict[str, Any]]:
    """`per_hour` events in each of the last 24 hours; one in 25 is an error."""
    step = HOUR_MS // per_hour
    return [
        {
            "id": f"{service}-{n:07d}",
            "service": service,
            "level": "error" if n % 25 == 0 else "info",
            "message": f"request {n} served in {n % 300} ms",
            "timestamp": now_ms - 1000 - n * step,
            "attributes": {"route": "/checkout", "status": 200},
        }
        for n in range(24 * per_hour)
    ]


async def store(clients: Any, settings: Settings, batch: list[dict[str, Any]]) -> None:
    items = block_items([normalise(e, e["timestamp"]) for e in batch], settings.shards, 30)
    chunks = [items[i : i + 25] for i in range(0, len(items), 25)]
    for chunk in chunks:
        await clients.dynamodb.batch_write_item(
            RequestItems={settings.table_name: [{"PutRequest": {"Item": i}} for i in chunk]}
        )


async def timed(reader: Reader, params: dict[str, str], runs: int) -> dict[str, Any]:
    seconds: list[float] = []
    calls = 0
    count = 0
    for _ in range(runs):
        reader.query_calls = 0
        started = time.perf_counter()
        page = await reader.read(parse_query(params, int(time.time() * 1000), SECRET))
        results = page.events
        seconds.append(time.perf_counter() - started)
        calls, count = reader.query_calls, len(results)
    seconds.sort()
    return {
        "search": params,
        "results": count,
        "query_calls": calls,
        "p50_ms": round(statistics.median(seconds) * 1000, 1),
        "p95_ms": round(seconds[int(len(seconds) * 0.95) - 1] * 1000, 1),
        "runs": runs,
    }


async def main(runs: int, per_hour: int, endpoint: str | None) -> None:
    use_local_aws()
    aws = EmbeddedAws()
    endpoint = endpoint or aws.start()
    table = f"latency-{int(time.time())}"
    settings = Settings(endpoint_url=endpoint, table_name=table, shards=8)
    try:
        async with AsyncExitStack() as stack:
            clients = await open_clients(stack, settings, pool=READ_CONCURRENCY + 4)
            await bootstrap(clients, settings)
            now_ms = int(time.time() * 1000)
            await store(clients, settings, events(now_ms, per_hour=per_hour, service="dense"))
            await store(clients, settings, events(now_ms, per_hour=5, service="sparse"))
            print(f"table: {24 * (per_hour + 5)} items", flush=True)
            reader = Reader(
                clients.dynamodb, settings.table_name, 8, READ_CONCURRENCY, cursor_secret=SECRET
            )
            for params in (
                {"service": "dense", "since": "24h", "limit": "100"},
                {"service": "sparse", "since": "24h", "limit": "100"},
                {"service": "dense", "since": "24h", "limit": "100", "level": "error"},
            ):
                print(orjson.dumps(await timed(reader, params, runs)).decode(), flush=True)
    finally:
        if aws.url:
            aws.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--per-hour", type=int, default=100)
    parser.add_argument("--endpoint", help="an endpoint already running (default: in-process)")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.per_hour, args.endpoint))
