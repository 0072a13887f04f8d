"""The ingestor: a Starlette app that validates events (/ingest, OTLP /v1/logs) for the batcher."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from botocore.exceptions import ClientError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from logpipe import heap
from logpipe.aws.bootstrap import queue_url
from logpipe.aws.calls import send_message_batch
from logpipe.aws.clients import ClientHook, Clients, open_clients
from logpipe.aws.errors import error_code
from logpipe.aws.monitor import QueueMonitor
from logpipe.config import Settings
from logpipe.core import otlp
from logpipe.core.event import encode_event, loads_exact, normalise
from logpipe.core.limits import (
    HELD_BYTES_PER_EVENT,
    MIB,
    JsonScan,
    MemoryBudget,
    Refused,
    Reservation,
    count_array_items,
    count_ndjson_lines,
    parsed_json_bytes,
    scan_json,
    too_many,
)
from logpipe.errors import BodyError, EventError, Overloaded, QueueUnavailable
from logpipe.ingest.batcher import Batcher, Sender
from logpipe.obs import metrics
from logpipe.obs.emf import EmfReporter
from logpipe.web import (
    HotRoutes,
    authorised,
    decode_content,
    error_response,
    gzip_size_hint,
    http_error,
    json_response,
    media_type,
    prometheus,
    read_body,
    serve_app,
)

log = logging.getLogger(__name__)

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
DECODE_WORKERS = 2
DECODE_WAIT_S = 2.0
# A JSON body this small is decoded on the event loop: the hop to a worker thread and back
# costs more CPU than decoding a typical 100-event request. Both bounds keep the time the
# loop is held to about 6 ms in the worst case (1,025 events all refused; the GIL's switch
# interval, 5 ms, is what a decoding worker holds the loop to anyway); separators (commas,
# newlines) bound the events and values, which cost more than their bytes when refused.
INLINE_BYTES = 64 * 1024
INLINE_SEPARATORS = 1024
# Small bodies decoded on the loop at once, and how long one waits for its turn (as many,
# and as long, as on the worker threads). Each turn starts on a pass of the loop of its own,
# so a pass decodes at most INLINE_DECODES bodies (about 12 ms in the worst case) whatever
# the number of connections posting them: a flood of small bodies waits here, or gets 503,
# instead of queueing ahead of /healthz. (Measured with 200 connections: 4 turns and 0.5 s
# let twice as many refused requests come back, and the other clients waited longer.)
INLINE_DECODES = DECODE_WORKERS
INLINE_WAIT_S = DECODE_WAIT_S
# A plain body of at most this many commas and newlines (a few events) costs no more to
# decode than its HTTP exchange: it needs no turn, and is never refused for a flood's sake.
FREE_SEPARATORS = 16
_ARRAY = re.compile(rb"\s*\[")
_REASONS = frozenset({"id", "service", "level", "message", "timestamp", "trace_id", "span_id"})
# Distinct services one request may name: each becomes a registry entry the console lists.
MAX_SERVICES_PER_REQUEST = 64
DAY_MS = 86_400_000
# How far ahead of the ingestor's clock an event's timestamp may be (clocks drift, a little).
MAX_AHEAD_MS = 2 * 3_600_000


@dataclass
class Pipeline:
    """What the routes share: the settings, the AWS clients, the queue and the batcher."""

    settings: Settings
    clients: Clients
    queue_url: str
    batcher: Sender
    budget: MemoryBudget
    # Decoding is CPU work: a worker thread keeps /healthz and the other requests answering.
    decoder: ThreadPoolExecutor
    worker_turns: Turns
    inline_turns: Turns


class Turns:
    """At most `slots` requests at once; one that cannot start within `wait_s` is refused
    (503 + Retry-After) rather than queued for long.

    `own_pass`: every turn starts on a later pass of the event loop than the one that asked
    for it, so that work done on the loop inside turns is at most `slots` turns per pass.
    """

    def __init__(self, slots: int, wait_s: float, busy: str, own_pass: bool = False) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._wait_s = wait_s
        self._busy = busy
        self._own_pass = own_pass

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        # A turn that has to wait is handed over by a release, on a later pass already.
        waits = self._slots.locked()
        try:
            async with asyncio.timeout(self._wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise Refused(503, self._busy, "busy") from None
        try:
            if self._own_pass and not waits:
                await asyncio.sleep(0)
            yield
        finally:
            self._slots.release()


def parse_events(
    body: bytes, ndjson: bool, long_runs: bool | None = None, digit_runs: bytes | None = None
) -> list[Any]:
    """The raw events of a body; an NDJSON line that is not JSON stands as an EventError.

    `long_runs`: whether the body holds a run of 16 digits and dots (None: not looked yet);
    `digit_runs`: the scan's translation of the body, when it has them (`JsonScan`).
    """
    if ndjson:
        events: list[Any] = []
        # A body without long runs has none in any line: no line needs the look.
        line_runs = None if long_runs else long_runs
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                events.append(loads_exact(line, line_runs))
            except orjson.JSONDecodeError:
                events.append(EventError("", "line is not valid JSON"))
        return events
    try:
        doc = loads_exact(body, long_runs, digit_runs)
    except orjson.JSONDecodeError as exc:
        raise BodyError(400, f"body is not valid JSON: {exc}{_ndjson_hint(body)}") from None
    if isinstance(doc, dict):
        if doc.keys() & OTLP_KEYS:
            raise BodyError(400, "body is an OTLP logs request: send it to POST /v1/logs")
        return [doc]
    if isinstance(doc, list):
        return doc
    raise BodyError(400, "body must be a JSON object or an array of objects")


# The top-level fields of an OTLP JSON logs request, either spelling.
OTLP_KEYS = frozenset({"resourceLogs", "resource_logs"})


def _ndjson_hint(body: bytes) -> str:
    """What to add to a JSON parse error when the body is JSON lines sent as one document."""
    lines = [line for line in body.strip().split(b"\n", 2)[:2] if line.strip()]
    if len(lines) < 2:
        return ""
    try:
        for line in lines:  # the first two lines each a JSON value
            orjson.loads(line)
    except orjson.JSONDecodeError:
        return ""
    return (
        "; the body holds one JSON value per line (NDJSON): send it with "
        "Content-Type: application/x-ndjson"
    )


def validate(
    raw_events: list[Any],
    now_ms: int,
    default_service: str | None = None,
    retention_days: int | None = None,
) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Split raw events into encoded valid ones and the rejection list of the 202 answer.

    With `retention_days`, an event older than the retention (it would expire at once) or
    more than MAX_AHEAD_MS ahead of `now_ms` is refused.
    """
    oldest = now_ms - retention_days * DAY_MS if retention_days else 0
    accepted: list[bytes] = []
    rejected: list[dict[str, Any]] = []
    services: set[str] = set()
    reasons: Counter[str] = Counter()
    for index, raw in enumerate(raw_events):
        try:
            if isinstance(raw, EventError):
                raise raw
            event = normalise(raw, now_ms, default_service)
            if retention_days:
                _check_window(event["timestamp"], oldest, now_ms + MAX_AHEAD_MS, retention_days)
            if event["service"] not in services and len(services) >= MAX_SERVICES_PER_REQUEST:
                raise EventError(
                    "service", f"is one more than {MAX_SERVICES_PER_REQUEST} in a request"
                )
            services.add(event["service"])
            accepted.append(encode_event(event))
        except EventError as exc:
            rejected.append({"index": index, "error": str(exc)})
            reason = exc.field.split(".", 1)[0]
            reasons[reason if reason in _REASONS else "invalid"] += 1
    for reason, count in reasons.items():  # once per request, not per event
        metrics.events_rejected.labels(reason).inc(count)
    return accepted, rejected


def _check_window(timestamp: int, oldest: int, newest: int, retention_days: int) -> None:
    if timestamp < oldest:
        raise EventError(
            "timestamp", f"is older than the retention ({retention_days} days): it would expire"
        )
    if timestamp > newest:
        raise EventError("timestamp", "is more than 2 hours in the future")


Hold = Callable[[int, str], None]


@dataclass(frozen=True)
class Protocol:
    """What one ingest route does its own way; the steps between are shared (`receive`)."""

    content_types: frozenset[str]
    wrong_type: str
    # body, content type, event cap, hold, the inline check's scan, the attributes dropped by
    # event index (filled in) -> raw events; counts and holds before building.
    parse: Callable[[bytes, str, int, Hold, JsonScan | None, dict[int, int]], list[Any]]
    # accepted, rejected, total, content type, attributes dropped by event index
    answer: Callable[[int, list[dict[str, Any]], int, str, dict[int, int]], Response]
    refuse: Callable[[int, str, str], Response]
    # inflated body, content type -> its scan when it is cheap enough to decode on the event
    # loop, else None
    inline: Callable[[bytes, str], JsonScan | None] | None = None


@dataclass
class Decoded:
    """What a request holds once decoded: its encoded events packed in one buffer, rejections.

    One buffer, not one bytes object per event: objects made in the worker thread among the
    parse's temporaries would pin that memory (tens of MB per request) while SQS is slow.
    The loop thread cuts the buffer into events once the temporaries are gone.
    """

    packed: bytes
    lengths: array[int]
    rejected: list[dict[str, Any]]
    total: int
    # Decoded on the loop thread: the events as they are, nothing to cut.
    unpacked: list[bytes] | None = None
    # Attributes left out of stored events, by event index (OTLP).
    dropped: dict[int, int] = field(default_factory=dict)

    def events(self) -> list[bytes]:
        if self.unpacked is not None:
            return self.unpacked
        events = []
        pos = 0
        for length in self.lengths:
            events.append(self.packed[pos : pos + length])
            pos += length
        return events

    def held_bytes(self) -> int:
        size = len(self.packed)
        if self.unpacked is not None:
            size = sum(map(len, self.unpacked))
        return 2 * size + HELD_BYTES_PER_EVENT * self.total


def decode(
    protocol: Protocol,
    raw: bytes,
    kind: str,
    encoding: str | None,
    service: str | None,
    settings: Settings,
    hold: Hold,
) -> Decoded:
    """Inflate, count, parse and validate one body (in a worker thread); Refused past a limit."""
    body = decode_content(raw, encoding, settings.max_body_bytes, hold)
    del raw
    accepted, rejected, total, dropped = _decode_body(protocol, body, kind, service, settings, hold)
    return Decoded(
        b"".join(accepted), array("I", map(len, accepted)), rejected, total, None, dropped
    )


def _decode_body(
    protocol: Protocol,
    body: bytes,
    kind: str,
    service: str | None,
    settings: Settings,
    hold: Hold,
    scan: JsonScan | None = None,
) -> tuple[list[bytes], list[dict[str, Any]], int, dict[int, int]]:
    dropped: dict[int, int] = {}
    raw_events = protocol.parse(body, kind, settings.max_events_per_request, hold, scan, dropped)
    del body
    total = len(raw_events)
    if total > settings.max_events_per_request:
        raise too_many(total, settings.max_events_per_request)
    metrics.events_received.inc(total)
    now_ms = int(time.time() * 1000)
    accepted, rejected = validate(raw_events, now_ms, service, settings.retention_days)
    refused = {r["index"] for r in rejected}
    return accepted, rejected, total, {i: n for i, n in dropped.items() if i not in refused}


def decode_inline(
    protocol: Protocol,
    raw: bytes,
    kind: str,
    encoding: str | None,
    service: str | None,
    settings: Settings,
    reservation: Reservation,
) -> Decoded | tuple[bytes, str | None]:
    """Decode a small body on the calling thread; else what is left for `decode` in a worker
    thread: the body and its encoding (inflated already when that stayed under INLINE_BYTES).
    """
    # A gzip body that says it inflates past the bound goes to a worker at once: inflating
    # its first INLINE_BYTES here would be thrown away.
    if protocol.inline is None or len(raw) > INLINE_BYTES or gzip_size_hint(raw) > INLINE_BYTES:
        return raw, encoding
    held = reservation.held
    limit = min(INLINE_BYTES, settings.max_body_bytes)
    try:
        body = decode_content(raw, encoding, limit, reservation.add)
    except Refused as exc:
        if exc.label != "too_large" or limit == settings.max_body_bytes:
            raise
        reservation.shrink_to(held)  # inflated past INLINE_BYTES: the worker starts again
        return raw, encoding
    scan = protocol.inline(body, kind)
    if scan is None:
        return body, None
    accepted, rejected, total, dropped = _decode_body(
        protocol, body, kind, service, settings, reservation.add, scan
    )
    return Decoded(b"", array("I"), rejected, total, accepted, dropped)


async def receive(request: Request, protocol: Protocol) -> Response:
    """Auth, content type, bounded body, gzip, parse, validate, submit; 2xx only once in SQS."""
    pipeline: Pipeline = request.app.state.pipeline
    settings = pipeline.settings
    kind = media_type(request.headers.get("content-type"))
    if not authorised(request.headers.get("authorization"), settings.api_keys):
        metrics.requests_rejected.labels("unauthorised").inc()
        return protocol.refuse(401, "missing or wrong API key (Authorization: Bearer <key>)", kind)
    if kind not in protocol.content_types:
        metrics.requests_rejected.labels("content_type").inc()
        return protocol.refuse(415, protocol.wrong_type, kind)
    reservation = pipeline.budget.reservation()
    try:
        decoded = await _read_and_decode(request, protocol, kind, pipeline, reservation)
        # The body, its inflated copy and its parsed objects are gone: hold what is left.
        reservation.shrink_to(decoded.held_bytes())
        metrics.memory_held_bytes.set(pipeline.budget.used)
        accepted = decoded.events()
        decoded.packed = b""
        if accepted:
            await pipeline.batcher.submit(accepted)
            metrics.events_accepted.inc(len(accepted))
    except BodyError as exc:
        metrics.requests_rejected.labels(getattr(exc, "label", "bad_body")).inc()
        response = protocol.refuse(exc.status, str(exc), kind)
        if exc.status == 408:
            response.headers["connection"] = "close"
        return response
    except ClientDisconnect:
        metrics.requests_rejected.labels("disconnected").inc()
        return protocol.refuse(400, "client disconnected before sending the whole body", kind)
    except Overloaded as exc:
        metrics.requests_rejected.labels("overloaded").inc()
        return protocol.refuse(exc.status, str(exc), kind)
    except QueueUnavailable as exc:
        metrics.requests_rejected.labels("queue_unavailable").inc()
        return protocol.refuse(exc.status, str(exc), kind)
    finally:
        reservation.release()
        metrics.memory_held_bytes.set(pipeline.budget.used)
    return protocol.answer(len(accepted), decoded.rejected, decoded.total, kind, decoded.dropped)


async def _read_and_decode(
    request: Request, protocol: Protocol, kind: str, pipeline: Pipeline, reservation: Reservation
) -> Decoded:
    settings = pipeline.settings
    raw = await read_body(
        request, settings.max_body_bytes, reservation.add, settings.read_timeout_s
    )
    service = default_service(request)
    encoding = request.headers.get("content-encoding")
    left: Decoded | tuple[bytes, str | None]
    if protocol.inline is None or len(raw) > INLINE_BYTES:
        left = (raw, encoding)
    elif encoding is None and raw.count(b",") + raw.count(b"\n") <= FREE_SEPARATORS:
        left = decode_inline(protocol, raw, kind, encoding, service, settings, reservation)
    else:
        async with pipeline.inline_turns.turn():
            left = decode_inline(protocol, raw, kind, encoding, service, settings, reservation)
    del raw
    if isinstance(left, Decoded):
        return left
    body, encoding = left
    del left
    work = partial(decode, protocol, body, kind, encoding, service, settings, reservation.add)
    del body  # the worker holds the only reference, and drops it when done
    async with pipeline.worker_turns.turn():
        return await asyncio.get_running_loop().run_in_executor(pipeline.decoder, work)


def default_service(request: Request) -> str | None:
    """The service for events that name none: `?service=`, else the X-Logpipe-Service header."""
    # No query string (the usual case): no QueryParams to build.
    service = request.query_params.get("service") if request.scope["query_string"] else None
    return service or request.headers.get("x-logpipe-service")


# --- POST /ingest: logpipe's own JSON --------------------------------------------------------


def _small_json(body: bytes, kind: str) -> JsonScan | None:
    if len(body) > INLINE_BYTES:
        return None
    scan = scan_json(body)  # the parse takes it over
    # Events and values are separated by commas in JSON, and lines too in NDJSON.
    separators = scan.commas
    if kind in NDJSON_TYPES:
        separators += body.count(b"\n")
    return scan if separators <= INLINE_SEPARATORS else None


def _parse_native(
    body: bytes,
    kind: str,
    cap: int,
    hold: Hold,
    scan: JsonScan | None = None,
    dropped: dict[int, int] | None = None,
) -> list[Any]:
    if not body.strip():
        raise BodyError(400, "body is empty")
    if scan is None:
        scan = scan_json(body)
    # Parsed objects and the encoded events they become, held before either is built, and
    # the scan's translation of the body kept for the parse.
    translation = len(scan.digit_runs) if scan.digit_runs is not None else 0
    hold(parsed_json_bytes(body, scan.values) + len(body) + translation, "the parsed body")
    ndjson = kind in NDJSON_TYPES
    if ndjson:
        count_ndjson_lines(body, cap)
    elif _ARRAY.match(body):
        count_array_items(body, cap, scan.commas)
    raw_events = parse_events(body, ndjson, scan.long_runs, scan.digit_runs)
    if not raw_events:
        raise BodyError(400, "body holds no events")
    return raw_events


def _answer_native(
    accepted: int, rejected: list[dict[str, Any]], total: int, kind: str, dropped: dict[int, int]
) -> Response:
    if not accepted:
        first = f": {rejected[0]['error']}" if len(rejected) == 1 else ""
        return error_response(400, f"no valid events{first}", accepted=0, rejected=rejected)
    return json_response({"accepted": accepted, "rejected": rejected}, 202)


NATIVE = Protocol(
    content_types=JSON_TYPES | NDJSON_TYPES,
    wrong_type="Content-Type must be application/json or application/x-ndjson",
    parse=_parse_native,
    answer=_answer_native,
    refuse=lambda status, error, kind: error_response(status, error),
    inline=_small_json,
)


async def ingest(request: Request) -> Response:
    return await receive(request, NATIVE)


# --- POST /v1/logs: OTLP/HTTP ----------------------------------------------------------------


def _otlp_media(kind: str) -> str:
    # The answer's encoding follows the request's (OTLP/HTTP); JSON when the type is unknown.
    return kind if kind in otlp.PROTOBUF_TYPES else otlp.JSON_TYPE


def _answer_otlp(
    accepted: int, rejected: list[dict[str, Any]], total: int, kind: str, dropped: dict[int, int]
) -> Response:
    # Records that fail validation are a partial success, not a failure: a retry cannot mend
    # them. Records stored without some attributes are told of in the same message.
    notes = [otlp.rejection_summary(rejected, total)] if rejected else []
    if dropped:
        notes.append(otlp.dropped_summary(dropped, total))
    error = "; ".join(notes)
    media = _otlp_media(kind)
    body = otlp.encode_response(len(rejected), error, as_json=media == otlp.JSON_TYPE)
    return Response(body, 200, media_type=media)


def _refuse_otlp(status: int, error: str, kind: str) -> Response:
    """A google.rpc.Status body with the same Retry-After / WWW-Authenticate as /ingest."""
    media = _otlp_media(kind)
    body = otlp.encode_status(status, error, as_json=media == otlp.JSON_TYPE)
    response = Response(body, status, media_type=media)
    shared = error_response(status, error).headers
    for name in ("retry-after", "www-authenticate"):
        if name in shared:
            response.headers[name] = shared[name]
    return response


def _parse_otlp(
    body: bytes, kind: str, cap: int, hold: Hold, scan: JsonScan | None, dropped: dict[int, int]
) -> list[Any]:
    return otlp.parse(body, kind, cap, hold, dropped)


OTLP = Protocol(
    content_types=otlp.CONTENT_TYPES,
    wrong_type="Content-Type must be application/x-protobuf or application/json (OTLP/HTTP)",
    parse=_parse_otlp,
    answer=_answer_otlp,
    refuse=_refuse_otlp,
)


async def otlp_logs(request: Request) -> Response:
    return await receive(request, OTLP)


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    pipeline: Pipeline | None = getattr(request.app.state.public.state, "pipeline", None)
    if pipeline is None:
        return json_response({"status": "starting"}, 503)
    try:
        async with asyncio.timeout(3):
            await pipeline.clients.sqs.get_queue_attributes(
                QueueUrl=pipeline.queue_url, AttributeNames=["QueueArn"]
            )
    except (ClientError, OSError, TimeoutError) as exc:
        return json_response({"status": "unavailable", "error": error_code(exc)}, 503)
    return json_response({"status": "ready"})


# Builds the sender of accepted events from the SQS client, the queue's URL and the settings.
SenderFactory = Callable[[Any, str, Settings], Sender]


def batcher(sqs: Any, url: str, settings: Settings) -> Sender:
    """The production sender: events packed into SendMessageBatch calls."""
    return Batcher(
        partial(send_message_batch, sqs, url),
        max_bytes=settings.sqs_max_bytes,
        linger_s=settings.linger_ms / 1000,
        concurrency=settings.send_concurrency,
        max_inflight_bytes=settings.max_inflight_bytes,
        attempts=settings.send_attempts,
        ack_timeout_s=settings.ack_timeout_s,
    )


def create_app(
    settings: Settings, sender: SenderFactory = batcher, client_hook: ClientHook | None = None
) -> Starlette:
    """The ingestor's ASGI app; AWS clients and the sender live for the app's lifespan.

    `sender` and `client_hook` are where the bench and chaos runs swap parts (see `logpipe.cli`).
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            clients = await open_clients(
                stack, settings, pool=settings.send_concurrency + 4, hook=client_hook
            )
            url = await queue_url(clients.sqs, settings.queue_name)
            batcher = await stack.enter_async_context(sender(clients.sqs, url, settings))
            decoder = stack.enter_context(
                ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="decode")
            )
            budget = MemoryBudget(settings.memory_budget_mb * MIB)
            # The main queue's depth, even while no processor runs (the DLQ is the processor's).
            monitor = QueueMonitor(clients.sqs, {"main": url}, settings.queue_poll_s)
            await stack.enter_async_context(monitor)
            if settings.emf:
                await stack.enter_async_context(EmfReporter("ingestor", settings.emf_interval_s))
            busy = "the ingestor is busy decoding; retry later"
            app.state.pipeline = Pipeline(
                settings,
                clients,
                url,
                batcher,
                budget,
                decoder,
                worker_turns=Turns(DECODE_WORKERS, DECODE_WAIT_S, busy),
                inline_turns=Turns(INLINE_DECODES, INLINE_WAIT_S, busy, own_pass=True),
            )
            heap.settle()
            log.info("ingestor ready on port %d, queue %s", settings.port, settings.queue_name)
            yield

    return HotRoutes(
        routes=[
            Route("/ingest", ingest, methods=["POST"]),
            Route("/v1/logs", otlp_logs, methods=["POST"]),
            Route("/healthz", healthz),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
        hot={"/ingest": ingest, "/v1/logs": otlp_logs},
    )


def create_admin_app(public: Starlette) -> Starlette:
    """GET /metrics and /readyz for LOGPIPE_METRICS_PORT, off the public port (an SQS call each)."""
    app = Starlette(
        routes=[Route("/metrics", prometheus), Route("/readyz", readyz)],
        exception_handlers={HTTPException: http_error},
    )
    app.state.public = public
    return app


async def serve(
    settings: Settings, sender: SenderFactory = batcher, client_hook: ClientHook | None = None
) -> int:
    """Run the ingestor under uvicorn, which owns SIGTERM/SIGINT and drains connections."""
    if not settings.api_keys:
        log.warning("LOGPIPE_API_KEYS is not set: /ingest and /v1/logs accept events from anyone")
    app = create_app(settings, sender, client_hook)
    return await serve_app(app, settings, admin=create_admin_app(app))
