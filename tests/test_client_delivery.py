"""logpipe.client delivers on its own and survives a bad server: each client path (the blocking
`Client`, `AsyncClient`, `LogpipeHandler`) run as a program of its own against a small
misbehaving server of the test's own (tests/support/hostile.py) or the real ingestor."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import orjson
import pytest

from logpipe.aws.clients import Clients
from logpipe.client import AsyncClient, LogpipeHandler, stamped
from logpipe.client.shipping import Answer, Delivery, ShipStats, parse_retry_after, retry_delay
from logpipe.config import Settings
from tests.support.hostile import (
    ASYNC_CLIENT,
    CLIENT_FLUSH,
    HANDLER_FLOOD,
    HANDLER_FLUSH,
    Hostile,
    dead_url,
    run_program,
)
from tests.support.wait import wait_until
from tests.test_client import stored_events

PROGRAMS = [
    pytest.param(CLIENT_FLUSH, id="Client"),
    pytest.param(ASYNC_CLIENT, id="AsyncClient"),
    pytest.param(HANDLER_FLUSH, id="LogpipeHandler"),
]
COUNT = 10

# --- Retry-After -----------------------------------------------------------------------------

NOW = 1_790_000_000.0


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + seconds_from_now, UTC), usegmt=True)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("7", 7.0, id="delta-seconds"),
        pytest.param(" 120 ", 120.0, id="delta-seconds-with-spaces"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param(http_date(30), 30.0, id="http-date"),
        pytest.param(http_date(-30), 0.0, id="http-date-in-the-past"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", 0.0, id="rfc-850-date"),
        pytest.param("³", None, id="superscript-three-isdigit-but-not-ascii"),
        pytest.param("٣", None, id="arabic-indic-three-float-would-take"),
        pytest.param("1.5", None, id="fraction"),
        pytest.param("-1", None, id="negative"),
        pytest.param("1e3", None, id="exponent"),
        pytest.param("soon", None, id="word"),
        pytest.param("", None, id="empty"),
    ],
)
def test_retry_after_is_ascii_delta_seconds_or_an_http_date_and_nothing_else(
    value: str, seconds: float | None
) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.unit
@pytest.mark.parametrize("hint", ["³", "٣", "x" * 10_000, "Wed, 99 Foo 2015 07:28:00 GMT"])
def test_a_retry_after_that_is_not_http_falls_back_to_backoff(hint: str) -> None:
    assert all(0 <= retry_delay(0, hint) <= 0.1 for _ in range(50))
    delivery = Delivery(4, ShipStats(), give_up_after_s=60)
    delay = delivery.next_try(Answer(503, retry_after=hint))
    assert delay is not None and delay <= 0.1


@pytest.mark.unit
def test_no_wait_is_started_that_would_end_past_the_give_up_time() -> None:
    stats = ShipStats()
    delivery = Delivery(4, stats, give_up_after_s=5)

    assert delivery.next_try(Answer(503, retry_after="30")) is None
    assert stats.failed == 4
    assert delivery.attempt_deadline(timeout_s=60) <= time.monotonic() + 5


@pytest.mark.e2e
@pytest.mark.parametrize("program", PROGRAMS)
async def test_every_client_path_retries_past_a_unicode_digit_retry_after(program: str) -> None:
    # '³' as UTF-8 (aiohttp reads '³') and as Latin-1 (http.client reads '³').
    async with Hostile("retry-after", retry_after=("³".encode(), "³".encode("latin-1"))) as server:
        result, err, code = await run_program(program, server.url, COUNT, 60, 10, timeout=60)

    assert code == 0, err
    assert result is not None
    assert (result["error"] if "error" in result else result["errors"]) in (None, [])
    assert (result["accepted"], result["failed"]) == (COUNT, 0)
    assert server.requests == 3  # two refusals, then the batch
    assert sorted(server.messages()) == sorted(f"event {n}" for n in range(COUNT))


# --- answers read to a bound, one deadline per attempt ---------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("program", PROGRAMS)
async def test_a_202_with_a_1_5_gb_body_is_read_to_64_kib_and_memory_stays_flat(
    program: str,
) -> None:
    async with Hostile("huge") as server:
        result, err, code = await run_program(program, server.url, COUNT, 60, 10, timeout=120)

    assert code == 0, err
    assert result is not None
    assert (result["accepted"], result["failed"]) == (COUNT, 0)
    assert server.requests == 1
    assert result["peak_rss_mb"] <= 200  # 2,900 MB when the whole body was read
    assert server.streamed < 200_000_000  # the client hung up long before the end


@pytest.mark.e2e
@pytest.mark.parametrize("program", PROGRAMS)
async def test_flush_returns_within_give_up_after_s_against_a_server_dripping_a_byte_a_second(
    program: str,
) -> None:
    give_up, timeout = 5, 2
    async with Hostile("drip") as server:
        result, err, code = await run_program(
            program, server.url, COUNT, give_up, timeout, timeout=120
        )

    assert code == 0, err
    assert result is not None
    # Still blocked at 60 s when the timeout was per socket read.
    assert result["seconds"] <= give_up + 4
    assert (result["accepted"], result["failed"]) == (0, COUNT)
    assert 2 <= server.requests <= give_up / timeout + 1  # each attempt cut at its deadline
    assert "gave up on 10 events" in err


@pytest.mark.e2e
@pytest.mark.parametrize("program", PROGRAMS)
async def test_flush_returns_within_give_up_after_s_against_a_tls_handshake_dripped(
    program: str,
) -> None:
    # The handshake is inside the attempt's deadline too.
    give_up, timeout = 5, 2
    async with Hostile("tls-drip") as server:
        url = server.url.replace("http://", "https://")
        result, err, code = await run_program(program, url, COUNT, give_up, timeout, timeout=120)

    assert code == 0, err
    assert result is not None
    assert result["seconds"] <= give_up + 4
    assert (result["accepted"], result["failed"]) == (0, COUNT)


# --- buffers bounded in bytes, exact sizes, drops reported ----------------------------------


@pytest.mark.e2e
async def test_handler_memory_stays_bounded_under_20k_records_of_31_kb_to_a_dead_endpoint() -> None:
    count = 20_000
    result, err, code = await run_program(HANDLER_FLOOD, dead_url(), count, 31_000, timeout=240)

    assert code == 0, err
    assert result is not None
    assert result["peak_rss_mb"] <= 300  # 1,320 MB when only records were counted
    # 32 MiB hold about a thousand of them; the rest are dropped, counted and reported.
    assert 18_000 <= result["dropped"] < count
    reported = [int(n) for n in re.findall(r"dropped (\d+) log records in the last", err)]
    assert reported and sum(reported) <= result["dropped"]


KEEP_ENCODED = """
import json, logging, sys
from logpipe.client.handler import encode_record

def rss_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))

count, kept = int(sys.argv[1]), []
before = rss_kb()
for n in range(count):
    record = logging.LogRecord("app", 30, "/app.py", 1, "%d %s", (n, "x" * 15_500), None)
    record.payload = "y" * 15_500
    kept.append(encode_record(record, "app", record.getMessage()))
print(json.dumps({"kb_per_record": (rss_kb() - before) / count, "bytes": len(kept[0])}))
"""


@pytest.mark.e2e
async def test_an_encoded_record_is_kept_in_a_block_of_its_own_size() -> None:
    result, err, code = await run_program(KEEP_ENCODED, 3000, timeout=120)

    assert code == 0, err
    assert result is not None
    assert result["bytes"] > 30_000
    # About 130 KB each while orjson's own output was kept.
    assert result["kb_per_record"] * 1024 <= 1.5 * result["bytes"]


@pytest.fixture
def capture() -> Iterator[list[logging.LogRecord]]:
    """The client's own warnings, as records."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("logpipe.client")
    keep = Keep()
    logger.addHandler(keep)
    yield records
    logger.removeHandler(keep)


@pytest.mark.unit
async def test_dropped_records_are_reported_once_per_interval_with_their_count(
    capture: list[logging.LogRecord],
) -> None:
    handler = LogpipeHandler(
        dead_url(),
        "app",
        give_up_after_s=1,
        capacity=5,
        flush_interval_s=60,
        report_interval_s=0.5,
        close_timeout_s=0.5,
    )
    logger = logging.getLogger("app.drops")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for n in range(100):
            logger.warning("record %d", n)
        dropped_while_logging = handler.dropped

        def reports() -> list[logging.LogRecord]:
            return [r for r in capture if hasattr(r, "logpipe.dropped")]

        async def all_reported() -> bool:
            return sum(getattr(r, "logpipe.dropped") for r in reports()) >= dropped_while_logging

        await wait_until(all_reported, timeout=20)
    finally:
        logger.removeHandler(handler)
        await asyncio.to_thread(handler.close)

    assert dropped_while_logging == 95
    times = [r.created for r in reports()]
    assert all(later - earlier >= 0.45 for earlier, later in itertools.pairwise(times))
    assert "dropped" in reports()[0].getMessage()


# --- AsyncClient when its task has ended ----------------------------------------------------


def background_task() -> asyncio.Task[object]:
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == "logpipe-client"]
    return task


@pytest.mark.unit
async def test_async_client_send_raises_once_its_task_has_ended_and_stop_does_not() -> None:
    event = stamped({"service": "app", "level": "info", "message": "m"})
    size = len(orjson.dumps(event)) + 1
    client = AsyncClient(dead_url(), max_buffered_bytes=2 * size + size // 2, batch_events=1)
    await client.start()
    await client.send(event)
    await client.send(event)
    blocked = asyncio.create_task(client.send(event))  # the buffer is full: it waits

    task = background_task()
    task.cancel()  # as a framework's shutdown or a stray cancel_all would

    with pytest.raises(RuntimeError, match="background task has ended"):
        await asyncio.wait_for(blocked, 10)
    with pytest.raises(RuntimeError, match="background task has ended"):
        await client.send(event)
    await client.stop()


@pytest.mark.unit
async def test_async_client_stop_does_not_raise_for_batches_it_gave_up() -> None:
    async with AsyncClient(dead_url(), give_up_after_s=0.5, timeout_s=0.2) as client:
        for n in range(3):
            await client.send({"service": "app", "level": "info", "message": f"m{n}"})
        await asyncio.wait_for(client.flush(), 10)

    assert (client.stats.sent, client.stats.failed) == (3, 3)


# --- the handler ships on its own; SIGTERM ---------------------------------------------------

# Logs N records and then idles, with no flush, no close, until stdin closes.
LOG_AND_IDLE = """
import logging, sys
from logpipe.client import LogpipeHandler
log = logging.getLogger("app")
log.addHandler(LogpipeHandler(sys.argv[1], "app"))
for n in range(int(sys.argv[2])):
    log.warning("record %d", n)
print("logged", flush=True)
sys.stdin.read()
"""


@pytest.mark.e2e
@pytest.mark.parametrize("count", [1, 499])
async def test_handler_ships_within_the_flush_interval_with_no_call_from_the_app(
    count: int,
) -> None:
    async with Hostile("ok") as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LOG_AND_IDLE,
            server.url,
            str(count),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            assert await asyncio.wait_for(process.stdout.readline(), 60) == b"logged\n"
            logged = time.monotonic()

            async def all_arrived() -> bool:
                return len(server.events) == count

            # Within flush_interval_s (1 s); the margin is for a busy machine.
            await wait_until(all_arrived, timeout=10, interval=0.02)
            assert time.monotonic() - logged < 6
            assert process.returncode is None  # no exit, no flush: the interval did it
        finally:
            process.stdin.close()
            assert await asyncio.wait_for(process.wait(), 30) == 0
    assert sorted(server.messages()) == sorted(f"record {n}" for n in range(count))


# A web app's shape: records buffered (an interval far longer than the test), then idle
# until ECS stops it with SIGTERM. The one line of docs/sending.md makes SIGTERM an orderly exit.
SIGTERMED_APP = """
import logging, signal, sys, time
from logpipe.client import LogpipeHandler
if sys.argv[3] == "with-the-line":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
root = logging.getLogger()
root.setLevel(logging.INFO)
root.addHandler(LogpipeHandler(sys.argv[1], "stopped", flush_interval_s=600))
for n in range(int(sys.argv[2])):
    logging.info("record %d", n)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("line", "exit_code", "stored"),
    [
        pytest.param("with-the-line", 0, 300, id="with-the-line-everything-arrives"),
        pytest.param("without", -signal.SIGTERM, 0, id="without-it-the-buffer-is-lost"),
    ],
)
async def test_a_sigtermed_app_flushes_its_records_with_the_readme_line(
    line: str,
    exit_code: int,
    stored: int,
    ingestor_url: str,
    clients: Clients,
    settings: Settings,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SIGTERMED_APP,
        ingestor_url,
        "300",
        line,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 60) == b"ready\n"
    process.send_signal(signal.SIGTERM)

    assert await asyncio.wait_for(process.wait(), 60) == exit_code
    events = await stored_events(clients, settings)
    assert len(events) == stored
    assert {e["message"] for e in events} == {f"record {n}" for n in range(stored)}


@pytest.mark.unit
def test_the_docs_show_the_sigterm_line() -> None:
    sending = (Path(__file__).parent.parent / "docs" / "sending.md").read_text()
    assert "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))" in sending
    assert "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))" in SIGTERMED_APP
