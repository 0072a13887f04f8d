"""`logpipe export`: every stored event of a range, each once, as NDJSON.

Per service (those named, or every one the registry has seen), hour by hour oldest first:
every block summary of the hour's shards, then the bodies of the blocks that overlap the
range; one hour of one service is held at a time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import IO

from logpipe.aws.bootstrap import read_table_shards
from logpipe.aws.clients import open_clients
from logpipe.aws.errors import AWS_ERRORS, read_failure
from logpipe.aws.registry import ServiceRegistry
from logpipe.config import Settings
from logpipe.core.block import first_copies, stored_event
from logpipe.core.event import Event, dumps_exact
from logpipe.core.query import (
    QueryError,
    hour_bucket,
    hour_starts,
    parse_service,
    parse_time,
)
from logpipe.read.reader import BODIES_PER_CALL, Reader


async def export_events(
    reader: Reader, services: list[str], since_ms: int, until_ms: int
) -> AsyncIterator[Event]:
    """Each stored event of `services` in [since_ms, until_ms] once, by service, oldest first."""
    for service in services:
        for start in reversed(hour_starts(since_ms, until_ms)):
            events = await _hour(reader, service, hour_bucket(start), since_ms, until_ms)
            for event in sorted(events, key=lambda e: (e["timestamp"], e["id"])):
                yield event


async def _hour(
    reader: Reader, service: str, hour: str, since_ms: int, until_ms: int
) -> list[Event]:
    summaries = await reader.hour_summaries(service, hour, since_ms) or []
    wanted = [s for s in summaries if s.oldest <= until_ms]
    events: list[Event] = []
    for n in range(0, len(wanted), BODIES_PER_CALL):
        for body in await reader.bodies(wanted[n : n + BODIES_PER_CALL]):
            events.extend(e for e in body if since_ms <= e["timestamp"] <= until_ms)
    return first_copies(events)


async def write_ndjson(events: AsyncIterator[Event], out: IO[bytes]) -> int:
    """Write each event as one JSON line (the read API's event shape); how many were written."""
    written = 0
    async for event in events:
        out.write(dumps_exact(stored_event(event)) + b"\n")
        written += 1
    return written


async def export_command(
    settings: Settings,
    services: list[str],
    since: str,
    until: str,
    out: IO[bytes] | None = None,
    err: IO[str] = sys.stderr,
) -> int:
    """`logpipe export`: 0 once every event of the range is written, 1 if the table could
    not be read, 2 for a bad argument."""
    now = int(time.time() * 1000)
    try:
        named = [parse_service(s) for s in services]
        since_ms, until_ms = parse_time("since", since, now), parse_time("until", until, now)
    except QueryError as exc:
        print(f"logpipe: {exc}", file=err)
        return 2
    stream = out if out is not None else sys.stdout.buffer
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, settings, pool=8)
        try:
            shards = await read_table_shards(clients.dynamodb, settings.table_name, settings.shards)
            reader = Reader(
                clients.dynamodb, settings.table_name, shards, cursor_secret=os.urandom(16)
            )
            if not named:
                registry = ServiceRegistry(
                    clients.dynamodb, settings.table_name, settings.retention_days
                )
                seen, _ = await registry.services()
                named = sorted(entry["service"] for entry in seen)
            written = await write_ndjson(export_events(reader, named, since_ms, until_ms), stream)
        except AWS_ERRORS as exc:
            print(f"logpipe: {read_failure(exc)}", file=err)
            return 1
    stream.flush()
    print(f"logpipe: exported {written} events of {len(named)} services", file=err)
    return 0
