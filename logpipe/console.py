"""The console: the read API and web page (`logpipe console`), and `logpipe query`."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from logpipe import metrics
from logpipe.aws import error_code, open_clients, read_table_shards
from logpipe.config import Settings
from logpipe.models import Event, from_item
from logpipe.query import QueryError, parse_query
from logpipe.reader import AWS_ERRORS, Reader, ServiceRegistry
from logpipe.web import error_response, http_error, json_response, prometheus, serve_app

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
READ_CONCURRENCY = 16
QUERY_PARAMETERS = frozenset({"service", "since", "until", "level", "q", "limit", "cursor"})
# The page loads nothing from elsewhere (the console may run without internet access).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@dataclass
class Console:
    """What the routes share."""

    settings: Settings
    reader: Reader
    registry: ServiceRegistry


def now_ms() -> int:
    return int(time.time() * 1000)


async def logs(request: Request) -> Response:
    console: Console = request.app.state.console
    started = time.perf_counter()
    unknown = sorted(set(request.query_params) - QUERY_PARAMETERS)
    if unknown:
        metrics.console_searches.labels("bad_request").inc()
        known = ", ".join(sorted(QUERY_PARAMETERS))
        return error_response(400, f"unknown parameter {unknown[0]!r}; known: {known}")
    try:
        query = parse_query(request.query_params, now_ms())
    except QueryError as exc:
        metrics.console_searches.labels("bad_request").inc()
        return error_response(400, str(exc))
    try:
        page = await console.reader.read(query)
    except AWS_ERRORS as exc:
        metrics.console_searches.labels("unavailable").inc()
        log.warning("search of %s failed: %s", query.service, error_code(exc))
        return error_response(503, f"the log table could not be read ({error_code(exc)})")
    metrics.console_searches.labels("ok").inc()
    metrics.console_search_seconds.observe(time.perf_counter() - started)
    return json_response({"events": [from_item(i) for i in page.items], "cursor": page.cursor})


async def services(request: Request) -> Response:
    console: Console = request.app.state.console
    try:
        seen = await console.registry.services()
    except AWS_ERRORS as exc:
        return error_response(503, f"the log table could not be read ({error_code(exc)})")
    return json_response({"services": seen})


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    console: Console = request.app.state.console
    try:
        async with asyncio.timeout(3):
            # A Query, not DescribeTable: the console's role may only Query and GetItem.
            await request.app.state.dynamodb.query(
                TableName=console.settings.table_name,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": "_services"}},
                Limit=1,
            )
    except AWS_ERRORS as exc:
        return json_response({"status": "unavailable", "error": error_code(exc)}, 503)
    return json_response({"status": "ready"})


def create_app(settings: Settings) -> Starlette:
    """The console's ASGI app; the AWS clients live for the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            clients = await open_clients(stack, settings, pool=READ_CONCURRENCY + 4)
            app.state.dynamodb = clients.dynamodb
            # The shard count belongs to the table (see aws.table_shards).
            try:
                shards = await read_table_shards(
                    clients.dynamodb, settings.table_name, settings.shards
                )
            except AWS_ERRORS as exc:
                log.warning(
                    "shard count unreadable (%s): using %d", error_code(exc), settings.shards
                )
                shards = settings.shards
            app.state.console = Console(
                settings,
                Reader(clients.dynamodb, settings.table_name, shards, READ_CONCURRENCY),
                ServiceRegistry(clients.dynamodb, settings.table_name, settings.retention_days),
            )
            log.info("console ready on port %d, table %s", settings.port, settings.table_name)
            yield

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/logs", logs),
            Route("/api/services", services),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", prometheus),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


async def serve(settings: Settings) -> int:
    """Run the console under uvicorn, which owns SIGTERM/SIGINT and drains connections."""
    log.warning(
        "the console has no sign-in of its own: serve it on a private network "
        "or behind an authenticating proxy"
    )
    return await serve_app(create_app(settings), settings)


# --- logpipe query ---------------------------------------------------------------------------


def format_table(events: list[Event]) -> str:
    """Events as aligned lines a person reads: time, level, message, attributes."""
    lines = [f"{'TIME':<24}  {'LEVEL':<5}  MESSAGE"]
    for event in events:
        message = _one_line(str(event.get("message", "")))
        attributes = event.get("attributes") or {}
        extra = " ".join(f"{k}={_one_line(str(v))}" for k, v in attributes.items())
        text = f"{message}  {extra}" if extra else message
        lines.append(
            f"{event.get('timestamp', ''):<24}  {event.get('level', '').upper():<5}  {text}"
        )
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")


async def query_command(
    settings: Settings,
    params: Mapping[str, str],
    as_json: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """`logpipe query`: one page of events newest first, as a table or as NDJSON."""
    try:
        query = parse_query(params, now_ms())
    except QueryError as exc:
        print(f"logpipe: {exc}", file=err)
        return 2
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, settings, pool=READ_CONCURRENCY + 4)
        try:
            shards = await read_table_shards(clients.dynamodb, settings.table_name, settings.shards)
            reader = Reader(clients.dynamodb, settings.table_name, shards, READ_CONCURRENCY)
            page = await reader.read(query)
        except AWS_ERRORS as exc:
            print(f"logpipe: the log table could not be read ({error_code(exc)})", file=err)
            return 1
    events = [from_item(item) for item in page.items]
    if as_json:
        for event in events:
            out.write(orjson.dumps(event).decode() + "\n")
    elif events:
        print(format_table(events), file=out)
    if not events:
        print(f"logpipe: no events of {query.service} in this time range", file=err)
    elif page.cursor:
        print(
            f"logpipe: {len(events)} newest shown; older ones match too: "
            f"raise --limit or pass --until {events[-1]['timestamp']}",
            file=err,
        )
    return 0


def query_params(args: Any) -> dict[str, str]:
    """The search parameters of `logpipe query`'s flags, named as in the HTTP API."""
    given = {
        "service": args.service,
        "since": args.since,
        "until": args.until,
        "level": args.level,
        "q": args.grep,
        "limit": None if args.limit is None else str(args.limit),
    }
    return {k: v for k, v in given.items() if v is not None}
