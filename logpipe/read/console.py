"""The console: the read API and web page (`logpipe console`)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from logpipe.aws.bootstrap import read_table_shards
from logpipe.aws.clients import Clients, open_clients
from logpipe.aws.errors import AWS_ERRORS, error_code
from logpipe.aws.registry import ServiceRegistry
from logpipe.config import Settings
from logpipe.core.query import ATTR_PREFIX, QueryError, parse_query
from logpipe.obs import metrics
from logpipe.read.reader import READ_DEADLINE_S, Reader
from logpipe.read.stats import STATS_PARAMETERS, count_levels, parse_stats
from logpipe.web import (
    authorised,
    error_response,
    http_error,
    json_response,
    prometheus,
    serve_app,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
READ_CONCURRENCY = 16
QUERY_PARAMETERS = frozenset(
    {"service", "since", "until", "level", "q", "trace_id", "limit", "cursor"}
)
SERVICES_DEFAULT_LIMIT = 100
# The page loads nothing from elsewhere (the console may run without internet access).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'; object-src 'none'"
    ),
    "Cache-Control": "no-cache",
}
# On every answer of the console, the API's included.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# On every /api/* answer: stored logs are kept by no browser or proxy cache.
API_HEADERS = {"Cache-Control": "no-store"}
# How long /readyz gives its last answer again before asking DynamoDB anew.
READY_CACHE_S = 5.0


@dataclass
class Console:
    """What the routes share."""

    settings: Settings
    reader: Reader
    registry: ServiceRegistry
    cursor_secret: bytes


def now_ms() -> int:
    return int(time.time() * 1000)


def cursor_secret(settings: Settings) -> bytes:
    """LOGPIPE_CURSOR_SECRET, or one made for this process (its cursors work only here)."""
    return settings.cursor_secret.encode() if settings.cursor_secret else secrets.token_bytes(32)


class ReadGuard:
    """Every answer gets the security headers; every /api/* request needs a read key, and
    at most `max_reads` of them are served at once.

    Only LOGPIPE_READ_KEYS open the API (ingest keys never do); with none set it is open.
    A read past LOGPIPE_MAX_CONCURRENT_READS is answered 429 with Retry-After at once, not
    queued (a queue would hold what the bound is there to save); the slot is held until the
    answer is sent, so a client that reads slowly holds one too.
    """

    def __init__(self, app: ASGIApp, read_keys: tuple[str, ...], max_reads: int) -> None:
        self._app = app
        self._keys = read_keys
        self._max_reads = max_reads
        self.reads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        api = path.startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if api:
                    for name, value in API_HEADERS.items():
                        headers[name] = value
            await send(message)

        if not api:
            await self._app(scope, receive, send_with_headers)
            return
        if self._keys and not authorised(Request(scope).headers.get("authorization"), self._keys):
            metrics.console_searches.labels("unauthorised").inc()
            response = error_response(401, "a read key is required: Authorization: Bearer <key>")
            await response(scope, receive, send_with_headers)
            return
        if self.reads >= self._max_reads:
            metrics.console_searches.labels("busy").inc()
            response = error_response(
                429, f"the console serves {self._max_reads} reads at once; retry"
            )
            await response(scope, receive, send_with_headers)
            return
        self.reads += 1
        try:
            await self._app(scope, receive, send_with_headers)
        finally:
            self.reads -= 1


async def logs(request: Request) -> Response:
    console: Console = request.app.state.console
    started = time.perf_counter()
    unknown = sorted(
        k for k in set(request.query_params) - QUERY_PARAMETERS if not k.startswith(ATTR_PREFIX)
    )
    if unknown:
        metrics.console_searches.labels("bad_request").inc()
        known = ", ".join([*sorted(QUERY_PARAMETERS), "attr.<name>"])
        return error_response(400, f"unknown parameter {unknown[0]!r}; known: {known}")
    try:
        query = parse_query(request.query_params, now_ms(), console.cursor_secret)
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
    return json_response(
        {
            "events": page.events,
            "cursor": page.cursor,
            "complete": page.complete,
        }
    )


async def services(request: Request) -> Response:
    """The services seen most recently first, at most `limit` (1-1000, default 100)."""
    console: Console = request.app.state.console
    raw = request.query_params.get("limit") or str(SERVICES_DEFAULT_LIMIT)
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= 1000):
        return error_response(400, f"limit must be an integer 1-1000, got {raw[:20]!r}")
    try:
        seen, truncated = await console.registry.services(int(raw))
    except AWS_ERRORS as exc:
        return error_response(503, f"the log table could not be read ({error_code(exc)})")
    return json_response({"services": seen, "truncated": truncated})


async def stats(request: Request) -> Response:
    """Events per level per step over the whole range, from block summaries (`read/stats`)."""
    console: Console = request.app.state.console
    unknown = sorted(set(request.query_params) - STATS_PARAMETERS)
    if unknown:
        known = ", ".join(sorted(STATS_PARAMETERS))
        return error_response(400, f"unknown parameter {unknown[0]!r}; known: {known}")
    try:
        query = parse_stats(request.query_params.getlist("service"), request.query_params, now_ms())
    except QueryError as exc:
        return error_response(400, str(exc))
    try:
        answer = await count_levels(console.reader, query, console.settings.query_budget)
    except AWS_ERRORS as exc:
        return error_response(503, f"the log table could not be read ({error_code(exc)})")
    return json_response(answer)


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


class Readiness:
    """/readyz of the console: whether the table answers a Query, asked at most once every
    `ttl_s` however many ask (concurrent callers share the one Query in flight)."""

    def __init__(self, ttl_s: float = READY_CACHE_S) -> None:
        self._ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._answer: tuple[int, dict[str, str]] | None = None
        self._until = 0.0
        self.checks = 0

    async def answer(self, console: Console, dynamodb: Any) -> tuple[int, dict[str, str]]:
        async with self._lock:
            if self._answer is None or time.monotonic() >= self._until:
                self._answer = await self._check(console, dynamodb)
                self._until = time.monotonic() + self._ttl_s
            return self._answer

    async def _check(self, console: Console, dynamodb: Any) -> tuple[int, dict[str, str]]:
        self.checks += 1
        try:
            async with asyncio.timeout(3):
                # A Query, not DescribeTable: the console's role may only Query and GetItem.
                await dynamodb.query(
                    TableName=console.settings.table_name,
                    KeyConditionExpression="pk = :pk",
                    ExpressionAttributeValues={":pk": {"S": "_services"}},
                    Limit=1,
                )
        except AWS_ERRORS as exc:
            return 503, {"status": "unavailable", "error": error_code(exc)}
        return 200, {"status": "ready"}


async def readyz(request: Request) -> Response:
    public = request.app.state.public
    console: Console | None = getattr(public.state, "console", None)
    if console is None:
        return json_response({"status": "starting"}, 503)
    readiness: Readiness = request.app.state.readiness
    status, body = await readiness.answer(console, public.state.dynamodb)
    return json_response(body, status)


def create_app(settings: Settings, read_deadline_s: float = READ_DEADLINE_S) -> Starlette:
    """The console's ASGI app; the AWS clients live for the app's lifespan.

    Each search stops asking DynamoDB for more after `read_deadline_s` (and after
    LOGPIPE_QUERY_BUDGET Queries), answering what it found and a cursor.
    """
    secret = cursor_secret(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            clients = await open_clients(stack, settings, pool=READ_CONCURRENCY + 4)
            app.state.dynamodb = clients.dynamodb
            shards = await _shards_or_configured(clients, settings)
            app.state.console = Console(
                settings,
                reader_for(clients, settings, shards, secret, read_deadline_s),
                ServiceRegistry(clients.dynamodb, settings.table_name, settings.retention_days),
                secret,
            )
            log.info("console ready on port %d, table %s", settings.port, settings.table_name)
            yield

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/logs", logs),
            Route("/api/services", services),
            Route("/api/stats", stats),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={HTTPException: http_error},
        middleware=[
            Middleware(
                ReadGuard,
                read_keys=settings.read_keys,
                max_reads=settings.max_concurrent_reads,
            )
        ],
        lifespan=lifespan,
    )


def create_admin_app(public: Starlette, ready_cache_s: float = READY_CACHE_S) -> Starlette:
    """GET /metrics and /readyz for LOGPIPE_METRICS_PORT, off the public port, as on the
    ingestor: neither is reachable where the API is, with or without a read key."""
    app = Starlette(
        routes=[Route("/metrics", prometheus), Route("/readyz", readyz)],
        exception_handlers={HTTPException: http_error},
    )
    app.state.public = public
    app.state.readiness = Readiness(ready_cache_s)
    return app


async def _shards_or_configured(clients: Clients, settings: Settings) -> int:
    """The table's shard count (it belongs to the table: see aws.table_shards); LOGPIPE_SHARDS
    when it cannot be read."""
    try:
        return await read_table_shards(clients.dynamodb, settings.table_name, settings.shards)
    except AWS_ERRORS as exc:
        log.warning("shard count unreadable (%s): using %d", error_code(exc), settings.shards)
        return settings.shards


def reader_for(
    clients: Clients,
    settings: Settings,
    shards: int,
    secret: bytes,
    deadline_s: float = READ_DEADLINE_S,
) -> Reader:
    """A Reader of the table on `clients`, with the console's budget and concurrency."""
    return Reader(
        clients.dynamodb,
        settings.table_name,
        shards,
        READ_CONCURRENCY,
        cursor_secret=secret,
        query_budget=settings.query_budget,
        deadline_s=deadline_s,
        answer_bytes=settings.max_answer_bytes,
    )


async def serve(settings: Settings) -> int:
    """Run the console under uvicorn, which owns SIGTERM/SIGINT and drains connections."""
    if not settings.read_keys:
        log.warning(
            "LOGPIPE_READ_KEYS is unset: anyone who reaches the console reads every stored "
            "log; set read keys, or serve it only on a private network"
        )
    if not settings.cursor_secret:
        log.warning(
            "LOGPIPE_CURSOR_SECRET is unset: cursors work only on this console process; "
            "give every console task the same secret"
        )
    app = create_app(settings)
    return await serve_app(app, settings, admin=create_admin_app(app))
