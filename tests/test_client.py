"""logpipe.client: the retry rules as tables, then the clients and the logging handler against
the real ingestor on loopback, with the ingestor down, black-holed or losing its answers."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients
from logpipe.client import AsyncClient, Client, new_event, stamped
from logpipe.client.handler import (
    TRUNCATED,
    LogpipeHandler,
    clip,
    current_span_ids,
    encode_record,
    level_of,
)
from logpipe.client.shipping import Answer, Delivery, ShipStats, pack, retry_delay, take_batch
from logpipe.config import Settings
from logpipe.core.event import MAX_EVENT_BYTES, MAX_MESSAGE_BYTES, normalise
from logpipe.process.processor import Processor
from tests.support.aws import scan_events
from tests.support.roles import Roles
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

# --- what an answer means --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "settled", "stats"),
    [
        pytest.param(Answer(202, b'{"accepted": 4, "rejected": []}'), True, (4, 0, 0), id="202"),
        pytest.param(
            Answer(202, b'{"accepted": 3, "rejected": [{"index": 1, "error": "x"}]}'),
            True,
            (3, 1, 0),
            id="202-with-a-rejected-event",
        ),
        pytest.param(Answer(400, b'{"error": "no valid events"}'), True, (0, 4, 0), id="400"),
        pytest.param(Answer(401), True, (0, 4, 0), id="401-is-not-retried"),
        pytest.param(Answer(413), True, (0, 4, 0), id="413-is-not-retried"),
        pytest.param(Answer(415), True, (0, 4, 0), id="415-is-not-retried"),
        pytest.param(Answer(429, retry_after="1"), False, (0, 0, 0), id="429"),
        pytest.param(Answer(500), False, (0, 0, 0), id="500"),
        pytest.param(Answer(502), False, (0, 0, 0), id="502"),
        pytest.param(Answer(503, retry_after="2"), False, (0, 0, 0), id="503"),
        pytest.param(Answer(504), False, (0, 0, 0), id="504"),
        pytest.param(Answer(0, b"ConnectionRefusedError"), False, (0, 0, 0), id="no-connection"),
    ],
)
def test_each_answer_settles_the_batch_or_asks_for_a_retry(
    answer: Answer, settled: bool, stats: tuple[int, int, int]
) -> None:
    counts = ShipStats()
    delivery = Delivery(4, counts, give_up_after_s=60)

    delay = delivery.next_try(answer)

    assert (delay is None) == settled
    assert (counts.accepted, counts.rejected, counts.failed) == stats
    assert counts.sent == 4


def test_retriable_answer_past_the_deadline_gives_up_and_counts_the_batch_failed() -> None:
    counts = ShipStats()
    delivery = Delivery(4, counts, give_up_after_s=0)

    assert delivery.next_try(Answer(503)) is None
    assert counts.failed == 4


@pytest.mark.parametrize("attempt", range(8))
def test_retry_delay_is_capped_exponential_backoff_with_full_jitter(attempt: int) -> None:
    delays = [retry_delay(attempt) for _ in range(200)]

    assert all(0 <= d <= min(5.0, 0.1 * 2**attempt) for d in delays)
    assert len(set(delays)) > 100


def test_retry_delay_honours_retry_after_with_jitter_below_it() -> None:
    delays = [retry_delay(0, retry_after="2") for _ in range(200)]

    assert all(1.0 <= d <= 2.0 for d in delays)
    assert all(retry_delay(0, retry_after="86400") <= 60 for _ in range(20))


# --- batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "max_events", "max_bytes", "taken"),
    [
        pytest.param([10] * 5, 3, 10_000, 3, id="by-count"),
        pytest.param([10] * 5, 100, 2 + 10 * 3 + 2, 3, id="by-bytes"),
        pytest.param([500, 10], 100, 100, 1, id="an-oversized-event-goes-alone"),
        pytest.param([10] * 2, 100, 10_000, 2, id="everything-when-it-fits"),
    ],
)
def test_take_batch_stops_at_the_count_or_the_bytes(
    sizes: list[int], max_events: int, max_bytes: int, taken: int
) -> None:
    buffer = deque(b"x" * size for size in sizes)

    batch = take_batch(buffer, max_events, max_bytes)

    assert len(batch) == taken
    assert len(buffer) == len(sizes) - taken


def test_small_batch_is_sent_plain_and_a_large_one_gzipped() -> None:
    small = [orjson.dumps(new_event("svc", "info", "hi"))]
    large = [orjson.dumps(new_event("svc", "info", f"event {n}")) for n in range(50)]

    small_body, small_headers = pack(small)
    large_body, large_headers = pack(large)

    assert "Content-Encoding" not in small_headers
    assert orjson.loads(small_body) == [orjson.loads(small[0])]
    assert large_headers["Content-Encoding"] == "gzip"
    assert orjson.loads(gzip.decompress(large_body)) == [orjson.loads(e) for e in large]


def test_events_get_their_id_and_timestamp_once_at_creation() -> None:
    event = new_event("checkout", "warn", "card declined", order=42)

    assert stamped(event) == event
    assert event["attributes"] == {"order": 42}
    assert normalise(event, now_ms=1)["id"] == event["id"]
    assert abs(event["timestamp"] - time.time() * 1000) < 60_000


def test_stamping_keeps_the_callers_id_and_timestamp() -> None:
    event = {"service": "s", "level": "info", "message": "m", "id": "mine", "timestamp": 5}

    assert stamped(event) == event


# --- log records -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("levelno", "level"),
    [
        (logging.CRITICAL, "fatal"),
        (logging.ERROR + 5, "error"),
        (logging.ERROR, "error"),
        (logging.WARNING, "warn"),
        (logging.INFO, "info"),
        (logging.DEBUG, "debug"),
        (5, "trace"),
        (logging.NOTSET, "trace"),
    ],
    ids=[
        "critical",
        "custom-between-error-and-critical",
        "error",
        "warning",
        "info",
        "debug",
        "custom-below-debug",
        "notset",
    ],
)
def test_stdlib_levels_map_to_schema_levels(levelno: int, level: str) -> None:
    assert level_of(levelno) == level


def make_record(msg: str = "hello", level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("app.orders", level, "/src/orders.py", 12, msg, (), None, "place")
    record.__dict__.update(extra)
    return record


def test_record_becomes_a_schema_event_with_its_origin_and_extra_fields() -> None:
    record = make_record(order=42, ratio=0.5, ok=True, who=object(), huge=10**40)

    event = orjson.loads(encode_record(record, "orders", "hello"))

    normalise(event, now_ms=1)
    assert event["service"] == "orders"
    assert event["timestamp"] == int(record.created * 1000)
    assert event["attributes"]["logger.name"] == "app.orders"
    assert event["attributes"]["code.line.number"] == 12
    assert event["attributes"]["code.function.name"] == "place"
    assert (event["attributes"]["order"], event["attributes"]["ratio"]) == (42, 0.5)
    assert event["attributes"]["ok"] is True
    assert event["attributes"]["who"].startswith("<object object")
    assert event["attributes"]["huge"] == str(10**40)


def test_record_carries_the_trace_ids_of_the_otel_logging_instrumentation() -> None:
    inside = make_record(
        otelTraceID="5b8efff798038103d269b633813fc60c", otelSpanID="eee19b7ec3c1b174"
    )
    outside = make_record(otelTraceID="0" * 32, otelSpanID="0" * 16)

    assert orjson.loads(encode_record(inside, "s", "m"))["span_id"] == "eee19b7ec3c1b174"
    assert "trace_id" not in orjson.loads(encode_record(outside, "s", "m"))


def test_dict_and_list_extras_are_stored_as_json() -> None:
    record = make_record(cart={"items": 2, "ids": [1, 2]}, tags=["a", "b"], pair=(1, "x"))

    attributes = orjson.loads(encode_record(record, "s", "m"))["attributes"]

    assert orjson.loads(attributes["cart"]) == {"items": 2, "ids": [1, 2]}
    assert attributes["tags"] == '["a","b"]'
    assert attributes["pair"] == '[1,"x"]'


ACTIVE = SpanContext(
    trace_id=0x5B8EFFF798038103D269B633813FC60C,
    span_id=0xEEE19B7EC3C1B174,
    is_remote=False,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)


def test_active_span_ids_are_read_without_any_instrumentation() -> None:
    assert current_span_ids() is None
    with trace.use_span(NonRecordingSpan(ACTIVE)):
        assert current_span_ids() == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")


async def test_handler_stores_the_active_span_ids_unless_switched_off(
    ingestor_url: str,
    app_logger: logging.Logger,
    handlers: list[LogpipeHandler],
    clients: Clients,
    settings: Settings,
) -> None:
    on = LogpipeHandler(ingestor_url, "traced")
    off = LogpipeHandler(ingestor_url, "untraced", trace_context=False)
    handlers.extend((on, off))
    for handler in (on, off):
        app_logger.addHandler(handler)
    with trace.use_span(NonRecordingSpan(ACTIVE)):
        app_logger.warning("inside")
    app_logger.warning("outside")
    for handler in (on, off):
        await asyncio.to_thread(handler.flush)

    ids = {
        (e["service"], e["message"]): (e.get("trace_id"), e.get("span_id"))
        for e in await stored_events(clients, settings)
    }
    assert ids == {
        ("traced", "inside"): ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"),
        ("traced", "outside"): (None, None),
        ("untraced", "inside"): (None, None),
        ("untraced", "outside"): (None, None),
    }


def test_oversized_record_is_cut_to_the_schema_instead_of_refused() -> None:
    record = make_record(**dict[str, Any]({f"field{n}": "v" * 1000 for n in range(40)}))

    data = encode_record(record, "s", "é" * MAX_MESSAGE_BYTES)
    event = orjson.loads(data)

    assert len(data) <= MAX_EVENT_BYTES
    assert event["message"].endswith(TRUNCATED)
    assert len(event["message"].encode()) <= MAX_MESSAGE_BYTES
    assert event["attributes"]["logpipe.attributes_dropped"] is True
    normalise(event, now_ms=1)


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [("short", 100, "short"), ("x" * 30, 20, "x" * (20 - len(TRUNCATED.encode())) + TRUNCATED)],
    ids=["fits", "cut"],
)
def test_clip_cuts_at_a_byte_limit_and_says_so(text: str, limit: int, expected: str) -> None:
    assert clip(text, limit) == expected


# --- against the ingestor --------------------------------------------------------------------


async def stored_events(clients: Clients, settings: Settings) -> list[dict[str, Any]]:
    """Drain the queue into the table with a processor in burst mode; every stored event."""
    url = await queue_url(clients.sqs, settings.queue_name)
    await Processor(settings, clients, url).run_until_empty()
    return await scan_events(clients, settings.table_name)


class LossyProxy:
    """A loopback proxy to the ingestor that hangs up, unanswered, on the first `lose` requests.

    The ingestor has taken those events (SQS holds them); the client never hears so and
    sends them again: a lost 202, as a flaky network loses one.
    """

    def __init__(self, target: str, session: aiohttp.ClientSession, lose: int) -> None:
        self.target = target
        self.session = session
        self.lose = lose
        self.forwarded = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                path = head[0].split(" ")[1]
                headers = dict(line.split(": ", 1) for line in head[1:] if line)
                size = int(next((v for k, v in headers.items() if k.lower() == "content-length")))
                body = await reader.readexactly(size)
                forward = {
                    k: v
                    for k, v in headers.items()
                    if k.lower() in ("content-type", "content-encoding", "authorization")
                }
                async with self.session.post(self.target + path, data=body, headers=forward) as r:
                    status, answer = r.status, await r.read()
                self.forwarded += 1
                if self.forwarded <= self.lose:
                    return
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class BlackHole:
    """The ingestor's port, held by a socket that takes connections and never answers."""

    def __init__(self, port: int) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def black_hole(settings: Settings) -> Iterator[BlackHole]:
    hole = BlackHole(settings.port)
    yield hole
    hole.close()


async def test_async_client_ships_every_event_once_in_batches(
    ingestor_url: str, clients: Clients, settings: Settings
) -> None:
    async with AsyncClient(ingestor_url, batch_events=500) as client:
        for n in range(1200):
            await client.send(new_event("shop", "info", f"event {n}", n=n))
        await client.flush()
        assert (client.stats.sent, client.stats.accepted) == (1200, 1200)

    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == sorted(f"event {n}" for n in range(1200))


async def test_async_client_resends_a_batch_whose_answer_was_lost_and_it_is_stored_once(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    async with LossyProxy(ingestor_url, http, lose=1) as proxy, AsyncClient(proxy.url) as client:
        for n in range(50):
            await client.send(new_event("shop", "info", f"event {n}"))
        await client.flush()

    assert proxy.forwarded == 2  # the ingestor took the batch twice
    assert (client.stats.sent, client.stats.accepted) == (50, 50)
    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == sorted(f"event {n}" for n in range(50))


async def test_sync_client_resends_a_batch_whose_answer_was_lost_and_it_is_stored_once(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    def send_all(url: str) -> ShipStats:
        with Client(url, batch_events=100) as client:
            for n in range(250):
                client.send({"service": "batch-job", "level": "info", "message": f"row {n}"})
        return client.stats

    async with LossyProxy(ingestor_url, http, lose=1) as proxy:
        # Blocking I/O to the ingestor this event loop serves: off the loop.
        stats = await asyncio.to_thread(send_all, proxy.url)

    assert proxy.forwarded == 4  # three batches, the first one twice
    assert (stats.sent, stats.accepted) == (250, 250)
    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == sorted(f"row {n}" for n in range(250))


async def test_async_client_send_waits_while_the_buffer_is_full_until_the_ingestor_is_back(
    roles: Roles, clients: Clients, settings: Settings
) -> None:
    one = len(orjson.dumps(new_event("shop", "info", "event 000"))) + 1
    client = AsyncClient(
        f"http://127.0.0.1:{settings.port}", batch_events=5, max_buffered_bytes=10 * one
    )
    async with client:
        for n in range(10):
            await client.send(new_event("shop", "info", f"event {n:03d}"))
        blocked = asyncio.create_task(client.send(new_event("shop", "info", "event 010")))

        async def first_batch_underway() -> bool:
            return client.stats.sent > 0

        await wait_until(first_batch_underway, timeout=10)

        assert not blocked.done()  # no room until a batch is settled, and none can be
        await roles.start("ingestor")
        await asyncio.wait_for(blocked, 30)
        await client.flush()

    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == [f"event {n:03d}" for n in range(11)]


# --- the logging handler ---------------------------------------------------------------------


@pytest.fixture
def app_logger() -> Iterator[logging.Logger]:
    """A logger of its own, so the records go to the handler under test and nowhere else."""
    logger = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


@pytest.fixture
async def handlers() -> AsyncIterator[list[LogpipeHandler]]:
    """Handlers a test makes; closed off the event loop when it ends."""
    made: list[LogpipeHandler] = []
    yield made
    for handler in made:
        await asyncio.to_thread(handler.close)


async def test_handler_used_from_many_threads_stores_every_record_exactly_once(
    ingestor_url: str,
    app_logger: logging.Logger,
    handlers: list[LogpipeHandler],
    clients: Clients,
    settings: Settings,
) -> None:
    handler = LogpipeHandler(ingestor_url, "threads", batch_events=100)
    handlers.append(handler)
    app_logger.addHandler(handler)

    def work(thread: int) -> None:
        for n in range(125):
            app_logger.warning("thread %d record %d", thread, n, extra={"n": n})

    await asyncio.gather(*(asyncio.to_thread(work, t) for t in range(8)))
    await asyncio.to_thread(handler.flush)

    assert (handler.stats.accepted, handler.dropped) == (1000, 0)
    events = await stored_events(clients, settings)
    messages = [e["message"] for e in events]
    assert len(messages) == 1000
    assert set(messages) == {f"thread {t} record {n}" for t in range(8) for n in range(125)}
    assert {e["level"] for e in events} == {"warn"}
    assert {e["service"] for e in events} == {"threads"}
    for event in events:
        assert event["attributes"]["logger.name"] == app_logger.name
        assert event["attributes"]["n"] == int(event["message"].rsplit(" ", 1)[1])


async def test_handler_never_blocks_while_the_ingestor_hangs_and_delivers_once_it_is_back(
    black_hole: BlackHole,
    roles: Roles,
    app_logger: logging.Logger,
    handlers: list[LogpipeHandler],
    clients: Clients,
    settings: Settings,
) -> None:
    handler = LogpipeHandler(
        black_hole.url, "hanging", capacity=100, batch_events=50, timeout_s=2, close_timeout_s=60
    )
    handlers.append(handler)
    app_logger.addHandler(handler)

    slowest = 0.0
    started = time.monotonic()
    for n in range(1000):
        before = time.monotonic()
        app_logger.info("record %d", n)
        slowest = max(slowest, time.monotonic() - before)
    elapsed = time.monotonic() - started

    # The shipping thread is stuck waiting on the black hole; the application is not.
    assert elapsed < 1.0
    assert slowest < 0.1
    assert 1000 - 100 - 50 <= handler.dropped <= 1000 - 100
    black_hole.close()
    await roles.start("ingestor")
    await asyncio.to_thread(handler.flush)

    delivered = 1000 - handler.dropped
    assert handler.stats.accepted == delivered
    events = await stored_events(clients, settings)
    assert len({e["message"] for e in events}) == len(events) == delivered


async def test_handler_close_is_bounded_while_the_ingestor_hangs_and_later_records_are_counted(
    black_hole: BlackHole, app_logger: logging.Logger
) -> None:
    handler = LogpipeHandler(
        black_hole.url, "hanging", close_timeout_s=0.5, timeout_s=5, give_up_after_s=1
    )
    app_logger.addHandler(handler)
    for n in range(10):
        app_logger.info("record %d", n)

    started = time.monotonic()
    await asyncio.to_thread(handler.close)
    app_logger.info("after close")

    assert time.monotonic() - started < 2.0
    assert handler.dropped == 1


async def test_handler_ships_what_is_buffered_at_interpreter_exit(
    ingestor_url: str, clients: Clients, settings: Settings
) -> None:
    # A flush interval far longer than the program: only the exit can send these.
    program = (
        "import logging, sys\n"
        "from logpipe.client import LogpipeHandler\n"
        "root = logging.getLogger()\n"
        "root.setLevel(logging.INFO)\n"
        "root.addHandler(LogpipeHandler(sys.argv[1], 'exiting', flush_interval_s=600))\n"
        "for n in range(20):\n"
        "    logging.info('record %d', n)\n"
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", program, ingestor_url)

    assert await asyncio.wait_for(process.wait(), 60) == 0
    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == sorted(f"record {n}" for n in range(20))


async def test_handler_keeps_shipping_in_a_forked_worker(
    ingestor_url: str, clients: Clients, settings: Settings
) -> None:
    # A pre-forking server: the handler is made in the parent, records are logged in both.
    program = (
        "import logging, os, sys\n"
        "from logpipe.client import LogpipeHandler\n"
        "root = logging.getLogger()\n"
        "root.setLevel(logging.INFO)\n"
        "root.addHandler(LogpipeHandler(sys.argv[1], 'forking', flush_interval_s=0.05))\n"
        "logging.info('parent before fork')\n"
        "pid = os.fork()\n"
        "who = 'child' if pid == 0 else 'parent'\n"
        "for n in range(5):\n"
        "    logging.info('%s record %d', who, n)\n"
        "if pid:\n"
        "    os.waitpid(pid, 0)\n"
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", program, ingestor_url)

    assert await asyncio.wait_for(process.wait(), 60) == 0
    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == sorted(
        ["parent before fork"]
        + [f"{who} record {n}" for who in ("child", "parent") for n in range(5)]
    )
