"""Searches across services against a day of 50 services: one JSON object of findings.

    .venv/bin/python -m tests.measure_search

Starts an in-process moto server and the console app (real uvicorn, the default query
budget and deadline), stores a day of events of 50 services as the processor would (a
message holds what arrived within 5 s, at most 250 events, of many services; its events of
one service form a block),
then measures over HTTP: a 1 h search of every service (each page: DynamoDB reads and
seconds, the cursors followed for a few pages), the same naming all 50 services, a 24 h
`/api/stats`, and a trace of three services looked up across 24 h (every page to the end).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson

from logpipe.aws.bootstrap import bootstrap
from logpipe.aws.clients import open_clients
from logpipe.config import Settings
from logpipe.core.block import block_items
from logpipe.core.event import normalise
from logpipe.dev.processes import EmbeddedAws, free_port
from logpipe.read import console
from logpipe.read.reader import Reader
from tests.support.aws import use_local_aws
from tests.support.servers import serving

HOUR_MS = 3_600_000
SERVICES = [f"svc-{n:02d}" for n in range(50)]
LAST_HOUR_EVENTS = 10_000
EARLIER_EVENTS_PER_HOUR = 500
PER_MESSAGE = 250
# An ingestor sends what arrived within its linger time, at most a message's worth.
MESSAGE_SPAN_MS = 5_000
TRACE = "0af7651916cd43dd8448eb211c80319c"
WORDS = ["checkout", "payment", "cache", "timeout", "retry", "user", "order", "disk", "queue"]


def _settings(endpoint: str) -> Settings:
    return Settings(
        endpoint_url=endpoint,
        table_name="measure-search-logs",
        queue_name="measure-search-events",
        dlq_name="measure-search-dlq",
        host="127.0.0.1",
        port=free_port(),
    )


def _events(now_ms: int) -> list[dict[str, Any]]:
    """A day of events of 50 services, twenty times denser in the last hour, in arrival order;
    three of them (20 h ago, three services) one trace."""
    rng = random.Random(1)
    starts = [(now_ms - HOUR_MS, LAST_HOUR_EVENTS)]
    starts += [(now_ms - h * HOUR_MS, EARLIER_EVENTS_PER_HOUR) for h in range(2, 25)]
    events: list[dict[str, Any]] = []
    for start, count in sorted(starts):
        times = sorted(start + rng.randrange(HOUR_MS) for _ in range(count))
        for n, ts in enumerate(times):
            events.append(
                {
                    "id": f"{rng.getrandbits(64):016x}",
                    "service": rng.choice(SERVICES),
                    "level": rng.choice(["debug", "info", "info", "info", "warn", "error"]),
                    "message": " ".join(rng.choices(WORDS, k=6)) + f" #{n}",
                    "timestamp": ts,
                    "trace_id": f"{rng.getrandbits(128):032x}",
                    "attributes": {"region": rng.choice(["eu", "us"]), "n": n % 97},
                }
            )
    trace_at = now_ms - 20 * HOUR_MS
    for n, service in enumerate(("svc-03", "svc-17", "svc-41")):
        events.append(
            {
                "id": f"trace-{n}",
                "service": service,
                "level": "info",
                "message": f"span {n}",
                "timestamp": trace_at + n * 150,
                "trace_id": TRACE,
            }
        )
    return events


async def _store(clients: Any, settings: Settings, now_ms: int) -> dict[str, Any]:
    events = [normalise(e, now_ms) for e in _events(now_ms)]
    events.sort(key=lambda e: e["timestamp"])
    items: list[dict[str, Any]] = []
    messages = 0
    start = 0
    while start < len(events):
        end = start + 1
        first = events[start]["timestamp"]
        while (
            end < len(events)
            and end - start < PER_MESSAGE
            and events[end]["timestamp"] - first < MESSAGE_SPAN_MS
        ):
            end += 1
        items.extend(block_items(events[start:end], settings.shards, settings.retention_days))
        messages += 1
        start = end
    calls = [items[n : n + 25] for n in range(0, len(items), 25)]
    lanes = asyncio.Semaphore(8)

    async def write(chunk: list[dict[str, Any]]) -> None:
        request = [{"PutRequest": {"Item": item}} for item in chunk]
        async with lanes:
            while request:
                response = await clients.dynamodb.batch_write_item(
                    RequestItems={settings.table_name: request}
                )
                request = response.get("UnprocessedItems", {}).get(settings.table_name, [])

    await asyncio.gather(*(write(chunk) for chunk in calls))
    return {
        "events": len(events),
        "messages": messages,
        "blocks": len(items) // 3,
        "items": len(items),
    }


async def _get(
    http: aiohttp.ClientSession, url: str, params: list[tuple[str, str]], reader: Reader
) -> tuple[Any, dict[str, Any]]:
    reads = reader.query_calls
    started = time.perf_counter()
    async with http.get(url, params=params) as response:
        body = await response.json()
        assert response.status == 200, body
    took = {
        "reads": reader.query_calls - reads,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return body, took


async def _pages(
    http: aiohttp.ClientSession,
    url: str,
    params: list[tuple[str, str]],
    reader: Reader,
    most: int,
) -> dict[str, Any]:
    """Up to `most` pages of a search, following its cursors: reads and seconds of each."""
    pages: list[dict[str, Any]] = []
    found = 0
    cursor: str | None = None
    while len(pages) < most:
        more = [("cursor", cursor)] if cursor else []
        body, took = await _get(http, f"{url}/api/logs", params + more, reader)
        found += len(body["events"])
        pages.append({**took, "events": len(body["events"]), "complete": body["complete"]})
        cursor = body["cursor"]
        if cursor is None:
            break
    return {
        "pages": pages,
        "events": found,
        "reads": sum(p["reads"] for p in pages),
        "seconds": round(sum(p["seconds"] for p in pages), 3),
        "ended": cursor is None,
    }


async def measure() -> dict[str, Any]:
    aws = EmbeddedAws()
    endpoint = aws.start()
    settings = _settings(endpoint)
    found: dict[str, Any] = {"shards": settings.shards, "query_budget": settings.query_budget}
    try:
        async with AsyncExitStack() as stack:
            clients = await open_clients(stack, settings, pool=16)
            await bootstrap(clients, settings)
            started = time.perf_counter()
            found["stored"] = await _store(clients, settings, int(time.time() * 1000))
            found["stored"]["seconds"] = round(time.perf_counter() - started, 1)
            print(f"stored: {found['stored']}", file=sys.stderr)
            app = console.create_app(settings)
            url = await stack.enter_async_context(serving(app, settings.port))
            reader: Reader = app.state.console.reader
            http = await stack.enter_async_context(aiohttp.ClientSession())
            hour = [("since", "1h"), ("limit", "100")]
            found["search_1h_every_service"] = await _pages(http, url, hour, reader, 5)
            named = hour + [("service", s) for s in SERVICES]
            found["search_1h_50_services_named"] = await _pages(http, url, named, reader, 5)
            errors = [*hour, ("level", "error"), ("q", "TIMEOUT disk")]
            found["search_1h_error_text"] = await _pages(http, url, errors, reader, 5)
            body, took = await _get(http, f"{url}/api/stats", [("since", "24h")], reader)
            found["stats_24h"] = took
            found["stats_24h"]["complete"] = body["complete"]
            found["stats_24h"]["events_counted"] = sum(
                sum(b["counts"].values()) for b in body["buckets"]
            )
            trace = [("since", "24h"), ("trace_id", TRACE)]
            found["trace_24h"] = await _pages(http, url, trace, reader, 100)
    finally:
        aws.stop()
    return found


def main() -> None:
    use_local_aws()
    print(orjson.dumps(asyncio.run(measure()), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
