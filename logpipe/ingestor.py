"""The ingestor: a Starlette app that validates events and hands them to the batcher."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import uvicorn
from botocore.exceptions import ClientError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from logpipe import metrics
from logpipe.aws import Clients, error_code, open_clients, queue_url, send_message_batch
from logpipe.batching import Batcher
from logpipe.config import Settings
from logpipe.errors import BodyError, EventError, Overloaded, QueueUnavailable
from logpipe.models import encode_event, normalise
from logpipe.web import (
    authorised,
    decode_content,
    error_response,
    http_error,
    json_response,
    media_type,
    read_body,
)

log = logging.getLogger(__name__)

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
_REASONS = frozenset({"id", "service", "level", "message", "timestamp", "trace_id", "span_id"})


@dataclass
class Pipeline:
    """What the routes share: the settings, the AWS clients, the queue and the batcher."""

    settings: Settings
    clients: Clients
    queue_url: str
    batcher: Batcher


def parse_events(body: bytes, ndjson: bool) -> list[Any]:
    """The raw events of a body; an NDJSON line that is not JSON stands as an EventError."""
    if ndjson:
        events: list[Any] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                events.append(EventError("", "line is not valid JSON"))
        return events
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(400, f"body is not valid JSON: {exc}") from None
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list):
        return doc
    raise BodyError(400, "body must be a JSON object or an array of objects")


def validate(raw_events: list[Any], now_ms: int) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Split raw events into encoded valid ones and the rejection list of the 202 answer."""
    accepted: list[bytes] = []
    rejected: list[dict[str, Any]] = []
    for index, raw in enumerate(raw_events):
        try:
            if isinstance(raw, EventError):
                raise raw
            accepted.append(encode_event(normalise(raw, now_ms)))
        except EventError as exc:
            rejected.append({"index": index, "error": str(exc)})
            reason = exc.field.split(".", 1)[0]
            metrics.events_rejected.labels(reason if reason in _REASONS else "invalid").inc()
    return accepted, rejected


async def ingest(request: Request) -> Response:
    pipeline: Pipeline = request.app.state.pipeline
    settings = pipeline.settings
    if not authorised(request.headers.get("authorization"), settings.api_keys):
        return error_response(401, "missing or wrong API key (Authorization: Bearer <key>)")
    kind = media_type(request.headers.get("content-type"))
    if kind not in JSON_TYPES and kind not in NDJSON_TYPES:
        return error_response(415, "Content-Type must be application/json or application/x-ndjson")
    try:
        raw = await read_body(request, settings.max_body_bytes)
        body = decode_content(raw, request.headers.get("content-encoding"), settings.max_body_bytes)
        if not body.strip():
            raise BodyError(400, "body is empty")
        raw_events = parse_events(body, ndjson=kind in NDJSON_TYPES)
    except BodyError as exc:
        return error_response(exc.status, str(exc))
    except ClientDisconnect:
        return error_response(400, "client disconnected before sending the whole body")
    if not raw_events:
        return error_response(400, "body holds no events")
    if len(raw_events) > settings.max_events_per_request:
        return error_response(
            413,
            f"body holds {len(raw_events)} events; the limit is "
            f"{settings.max_events_per_request} per request",
        )
    metrics.events_received.inc(len(raw_events))
    accepted, rejected = validate(raw_events, int(time.time() * 1000))
    if not accepted:
        first = f": {rejected[0]['error']}" if len(rejected) == 1 else ""
        return error_response(400, f"no valid events{first}", accepted=0, rejected=rejected)
    try:
        await pipeline.batcher.submit(accepted)
    except Overloaded as exc:
        return error_response(429, str(exc))
    except QueueUnavailable as exc:
        return error_response(503, str(exc))
    metrics.events_accepted.inc(len(accepted))
    return json_response({"accepted": len(accepted), "rejected": rejected}, 202)


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    pipeline: Pipeline = request.app.state.pipeline
    try:
        async with asyncio.timeout(3):
            await pipeline.clients.sqs.get_queue_attributes(
                QueueUrl=pipeline.queue_url, AttributeNames=["QueueArn"]
            )
    except (ClientError, OSError, TimeoutError) as exc:
        return json_response({"status": "unavailable", "error": error_code(exc)}, 503)
    return json_response({"status": "ready"})


async def prometheus(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings) -> Starlette:
    """The ingestor's ASGI app; AWS clients and the batcher live for the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            clients = await open_clients(stack, settings, pool=settings.send_concurrency + 4)
            url = await queue_url(clients.sqs, settings.queue_name)
            batcher = Batcher(
                partial(send_message_batch, clients.sqs, url),
                max_bytes=settings.sqs_max_bytes,
                linger_s=settings.linger_ms / 1000,
                concurrency=settings.send_concurrency,
                max_inflight_bytes=settings.max_inflight_bytes,
                attempts=settings.send_attempts,
            )
            await stack.enter_async_context(batcher)
            app.state.pipeline = Pipeline(settings, clients, url, batcher)
            log.info("ingestor ready on port %d, queue %s", settings.port, settings.queue_name)
            yield

    return Starlette(
        routes=[
            Route("/ingest", ingest, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", prometheus),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


class _Server(uvicorn.Server):
    """uvicorn whose SIGTERM/SIGINT mean "drain and exit 0" (ECS), not "die by the signal"."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def serve(settings: Settings) -> int:
    """Run the ingestor under uvicorn, which owns SIGTERM/SIGINT and drains connections."""
    if not settings.api_keys:
        log.warning("LOGPIPE_API_KEYS is not set: /ingest accepts events from anyone")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_seconds),
        server_header=False,
    )
    server = _Server(config)
    await server.serve()
    return 0 if server.started else 1
