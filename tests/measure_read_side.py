"""The console's read side under abuse: one JSON object of findings.

    .venv/bin/python -m tests.measure_read_side

Starts an in-process moto server and the console app (real uvicorn, ingest keys set, read
keys set when this version of logpipe knows them) and measures: reading with no key, one
31-day search of an empty service (seconds and DynamoDB Queries), a cursor edited by hand,
an absurd number, the headers of an answer, `/api/services` after 10,000 junk names, the
processor's registry cache after those names, and whether `logpipe query` text output
lets an escape sequence through.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson

from logpipe.aws.bootstrap import bootstrap
from logpipe.aws.clients import open_clients
from logpipe.aws.registry import ServiceRegistry
from logpipe.config import Settings
from logpipe.core.block import block_items
from logpipe.core.event import normalise
from logpipe.dev.processes import EmbeddedAws, free_port
from logpipe.read import console, query_cli
from tests.support.aws import use_local_aws
from tests.support.servers import serving

READ_KEY = "read-key-0123456789"
INGEST_KEY = "ingest-key-0123456789"
HOUR_MS = 3_600_000


def _settings(endpoint: str) -> Settings:
    settings = Settings(
        endpoint_url=endpoint,
        table_name="measure-logs",
        queue_name="measure-events",
        dlq_name="measure-dlq",
        host="127.0.0.1",
        port=free_port(),
        api_keys=(INGEST_KEY,),
    )
    if any(f.name == "read_keys" for f in dataclasses.fields(settings)):
        settings = dataclasses.replace(settings, read_keys=(READ_KEY,))
    return settings


async def _store(clients: Any, settings: Settings, now_ms: int) -> None:
    events = [
        {
            "id": f"v-{n:04d}",
            "service": "victim",
            "level": "info",
            "message": f"secret {n}",
            "timestamp": now_ms - 60_000 - n * 1000,
        }
        for n in range(20)
    ]
    items = block_items([normalise(e, now_ms) for e in events], settings.shards, 30)
    await clients.dynamodb.batch_write_item(
        RequestItems={settings.table_name: [{"PutRequest": {"Item": i}} for i in items]}
    )


def _forge(cursor: str, delta_ms: int) -> str:
    """The cursor with its position moved `delta_ms` later (outside the window when large)."""
    body, dot, mac = cursor.partition(".")  # a signature, where there is one, is kept
    doc = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    ms = int(doc["p"][:13]) + delta_ms
    doc["p"] = f"{ms:013d}{doc['p'][13:]}"
    return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=") + dot + mac


VICTIM = {"service": "victim", "since": "1h", "limit": "5"}


async def _keys(http: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> dict[str, Any]:
    """Which keys open /api/logs and /api/services."""
    found: dict[str, Any] = {}
    ingest_auth = {"Authorization": f"Bearer {INGEST_KEY}"}
    for name, headers in (("none", {}), ("ingest", ingest_auth), ("read", auth)):
        async with http.get(f"{url}/api/logs", params=VICTIM, headers=headers) as r:
            found[f"logs_with_{name}_key"] = r.status
    async with http.get(f"{url}/api/services") as r:
        found["services_with_no_key"] = r.status
    return found


async def _empty_month(
    http: aiohttp.ClientSession, url: str, auth: dict[str, str], reader: Any
) -> dict[str, Any]:
    """A 31-day search of a service with no events: one answer, then its cursors followed."""
    found: dict[str, Any] = {}
    calls = reader.query_calls
    started = time.perf_counter()
    nobody = {"service": "nobody", "since": "31d", "limit": "1"}
    async with http.get(f"{url}/api/logs", params=nobody, headers=auth) as r:
        body = await r.json()
        found["empty_31d"] = {
            "status": r.status,
            "seconds": round(time.perf_counter() - started, 2),
            "queries": reader.query_calls - calls,
            "cursor": bool(body.get("cursor")),
            "complete": body.get("complete"),
        }
    answers, cursor = 1, body.get("cursor")
    while cursor:
        more = {**nobody, "cursor": cursor}
        async with http.get(f"{url}/api/logs", params=more, headers=auth) as r:
            cursor = (await r.json())["cursor"]
            answers += 1
    found["empty_31d_followed_to_the_end"] = {
        "answers": answers,
        "seconds": round(time.perf_counter() - started, 2),
        "queries": reader.query_calls - calls,
    }
    return found


async def _cursors(http: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> dict[str, Any]:
    """Security headers, then an edited cursor, a truncated one and an absurd window."""
    found: dict[str, Any] = {}
    async with http.get(f"{url}/api/logs", params=VICTIM, headers=auth) as r:
        page = await r.json()
        found["logs_headers"] = {
            k: r.headers.get(k) for k in ("X-Content-Type-Options", "Referrer-Policy")
        }
    forged = _forge(page["cursor"], 3 * HOUR_MS)
    async with http.get(f"{url}/api/logs", params={**VICTIM, "cursor": forged}, headers=auth) as r:
        found["forged_cursor_status"] = r.status
    cut = {**VICTIM, "cursor": page["cursor"][:-3]}
    async with http.get(f"{url}/api/logs", params=cut, headers=auth) as r:
        found["truncated_cursor_status"] = r.status
    huge = {"service": "victim", "since": "9" * 5000 + "s"}
    async with http.get(f"{url}/api/logs", params=huge, headers=auth) as r:
        found["since_5000_nines_status"] = r.status
    return found


async def _services(
    http: aiohttp.ClientSession, url: str, auth: dict[str, str], clients: Any, settings: Settings
) -> dict[str, Any]:
    """10,000 junk service names noted: what the registry keeps and /api/services answers."""
    found: dict[str, Any] = {}
    junk = [f"junk-{n:05d}" for n in range(10_000)]
    registry = ServiceRegistry(clients.dynamodb, settings.table_name, 30)
    await registry.note(junk)
    found["registry_cache_entries_after_10000_names"] = (
        registry.remembered if hasattr(registry, "remembered") else len(registry._written)
    )
    async with http.get(f"{url}/api/services", headers=auth) as r:
        payload = await r.read()
        found["services_answer"] = {
            "status": r.status,
            "bytes": len(payload),
            "services": len(orjson.loads(payload)["services"]),
        }
    return found


def _raw_controls() -> int:
    """Control characters that reach a terminal through `logpipe query`'s text output."""
    event = {
        "timestamp": "2026-01-01T00:00:00.000Z",
        "level": "info",
        "message": "\x1b[2J\x1b]0;owned\x07\x1b]52;c;ZXZpbA==\x07\x9b31m",
        "attributes": {"k": "\x1b[31mred"},
    }
    table = query_cli.format_table([event])
    return sum(1 for c in table if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0)


async def measure() -> dict[str, Any]:
    aws = EmbeddedAws()
    endpoint = aws.start()
    settings = _settings(endpoint)
    found: dict[str, Any] = {}
    try:
        async with AsyncExitStack() as stack:
            clients = await open_clients(stack, settings, pool=8)
            await bootstrap(clients, settings)
            await _store(clients, settings, int(time.time() * 1000))
            app = console.create_app(settings)
            url = await stack.enter_async_context(serving(app, settings.port))
            auth = {"Authorization": f"Bearer {READ_KEY}"}
            http = await stack.enter_async_context(aiohttp.ClientSession())
            found |= await _keys(http, url, auth)
            found |= await _empty_month(http, url, auth, app.state.console.reader)
            found |= await _cursors(http, url, auth)
            found |= await _services(http, url, auth, clients, settings)
    finally:
        aws.stop()
    found["query_text_raw_controls"] = _raw_controls()
    return found


def main() -> None:
    use_local_aws()
    print(orjson.dumps(asyncio.run(measure()), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
