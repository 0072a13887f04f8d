"""`logpipe bench`: drive events end to end through the real roles, count exactly, price it.

Modes: batched (the pipeline as deployed), naive (the textbook one-call-per-event
pipeline, same roles with LOGPIPE_NAIVE=1) and ceiling (a bare asyncio script moving the
same events with the same batch calls: what the endpoint itself allows).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from typing import IO, Any

import aiohttp

from logpipe import metrics
from logpipe.aws import Clients, bootstrap, open_clients
from logpipe.config import Settings
from logpipe.emitter import Shipper
from logpipe.local import LOCAL_CREDENTIALS, RoleProcess, free_port, role_env, wait_http

# Public on-demand prices, us-east-1, as listed on 2026-11-25 (unchanged since 2024-11-01):
# SQS standard queue, per million requests after the free tier
# (https://aws.amazon.com/sqs/pricing/); each 64 KiB of a call's payload is one request.
SQS_USD_PER_MILLION_REQUESTS = 0.40
# DynamoDB on-demand, per million write request units, 1 WRU per started KB of an item
# (https://aws.amazon.com/dynamodb/pricing/on-demand/).
DYNAMODB_USD_PER_MILLION_WRITE_UNITS = 0.625

MESSAGE_CHARS = 300
SERVICES = ("checkout", "payments", "search", "inventory")
LEVELS = ("debug", "info", "info", "info", "info", "warn", "error")
STALL_SECONDS = 60.0


@dataclass(frozen=True)
class BenchOptions:
    events: int
    naive: bool = False
    ceiling: bool = False
    concurrency: int = 16
    batch: int = 100
    endpoint: str | None = None


def make_events(run: str, count: int, now_ms: int) -> list[dict[str, Any]]:
    """`count` distinct events with client ids and timestamps (so retries cannot double)."""
    filler = "".join(random.choices("abcdefghijklmnopqrstuvwxyz      ", k=MESSAGE_CHARS))
    return [
        {
            "id": f"{run}-{n:08d}",
            "service": SERVICES[n % len(SERVICES)],
            "level": LEVELS[n % len(LEVELS)],
            "timestamp": now_ms + n // 100,
            "message": f"request {n} {filler}"[:MESSAGE_CHARS],
            "attributes": {"http.status_code": 200, "duration_ms": n % 1000, "region": "eu-west-1"},
        }
        for n in range(count)
    ]


def batches(events: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


def percentile_ms(buckets: list[tuple[float, float]], q: float) -> float | None:
    seconds = metrics.histogram_quantile(buckets, q)
    return None if seconds is None else round(seconds * 1000, 1)


def cost_figures(events: int, billed_sqs: float, write_units: float) -> dict[str, float]:
    """Billed requests per event and USD per million events at the prices above."""
    usd = (
        billed_sqs * SQS_USD_PER_MILLION_REQUESTS
        + write_units * DYNAMODB_USD_PER_MILLION_WRITE_UNITS
    ) / 1e6
    return {
        "billed_sqs_requests_per_event": round(billed_sqs / events, 5),
        "write_units_per_event": round(write_units / events, 3),
        "billed_requests_per_event": round((billed_sqs + write_units) / events, 5),
        "usd_per_million_events": round(usd / events * 1e6, 4),
    }


@asynccontextmanager
async def endpoint(url: str | None, log: IO[bytes]) -> AsyncIterator[str]:
    """The given endpoint, or moto's server in its own process on a free loopback port."""
    if url:
        yield url
        return
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
        stdout=log,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:
            await wait_http(session, f"http://127.0.0.1:{port}/moto-api/", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size (VmHWM), in MB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class ProgressBar:
    """One line on stderr, redrawn: sent and stored against the total."""

    def __init__(self, total: int) -> None:
        self._total = total
        self._tty = sys.stderr.isatty()

    def draw(self, sent: float, stored: float) -> None:
        if not self._tty:
            return
        width = 30
        filled = int(width * min(stored / max(self._total, 1), 1))
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] sent {sent:.0f}/{self._total} "
            f"stored {stored:.0f}"
        )
        sys.stderr.flush()

    def end(self) -> None:
        if self._tty:
            sys.stderr.write("\n")


async def run(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    """Run one bench and return its JSON object."""
    os.environ.update(LOCAL_CREDENTIALS)
    run_id = uuid.uuid4().hex[:8]
    log_path = os.path.join(tempfile.gettempdir(), f"logpipe-bench-{run_id}.log")
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - once, at start
        async with AsyncExitStack() as stack:
            url = await stack.enter_async_context(endpoint(options.endpoint, log))
            settings = replace(
                settings,
                endpoint_url=url,
                queue_name=f"bench-{run_id}-events",
                dlq_name=f"bench-{run_id}-dlq",
                table_name=f"bench-{run_id}-logs",
                host="127.0.0.1",
                port=free_port(),
                metrics_port=free_port(),
            )
            clients = await open_clients(stack, settings, pool=64)
            await bootstrap(clients, settings)
            events = make_events(run_id, options.events, int(time.time() * 1000))
            if options.ceiling:
                from logpipe.ceiling import run_ceiling

                return await run_ceiling(settings, clients, events)
            return await PipelineBench(settings, clients, options, log).run(events)


class PipelineBench:
    """Ingestor and processor as real subprocesses, driven over HTTP, verified in the table."""

    def __init__(
        self, settings: Settings, clients: Clients, options: BenchOptions, log: IO[bytes]
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.options = options
        self.log = log
        self.ingestor_url = f"http://127.0.0.1:{settings.port}"
        self.processor_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"

    async def run(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        env = role_env(
            self.settings,
            LOGPIPE_PORT=self.settings.port,
            LOGPIPE_METRICS_PORT=self.settings.metrics_port,
            LOGPIPE_NAIVE=int(self.options.naive),
            LOGPIPE_LOG_LEVEL="warning",
            LOGPIPE_QUEUE_POLL_S=1,
        )
        roles = [
            await RoleProcess.start("ingestor", env, log_file=self.log),
            await RoleProcess.start("processor", env, log_file=self.log),
        ]
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=self.options.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            try:
                await wait_http(session, f"{self.ingestor_url}/healthz")
                await wait_http(session, self.processor_url)
                return await self._measure(session, events, roles)
            finally:
                for role in roles:
                    await role.stop()

    async def _measure(
        self, session: aiohttp.ClientSession, events: list[dict[str, Any]], roles: list[RoleProcess]
    ) -> dict[str, Any]:
        shipper = Shipper(session, self.ingestor_url)
        acknowledged: set[str] = set()
        pending = batches(events, self.options.batch)
        bar = ProgressBar(len(events))

        async def driver() -> None:
            for batch in pending:
                if await shipper.ship(batch) == len(batch):
                    acknowledged.update(e["id"] for e in batch)

        started = time.monotonic()
        drivers = asyncio.gather(*(driver() for _ in range(self.options.concurrency)))
        stored = 0.0
        last_change, last_stored = time.monotonic(), -1.0
        while True:
            samples = await metrics.scrape(session, self.processor_url)
            stored = metrics.total(samples, "logpipe_events_stored_total")
            bar.draw(shipper.stats.sent, stored)
            if drivers.done() and stored >= len(acknowledged):
                break
            if stored != last_stored:
                last_change, last_stored = time.monotonic(), stored
            elif time.monotonic() - last_change > STALL_SECONDS:
                break
            await asyncio.sleep(0.2)
        seconds = time.monotonic() - started
        bar.end()
        drivers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drivers
        rss = {role.role: peak_rss_mb(role.process.pid) for role in roles}
        ingestor = await metrics.scrape(session, f"{self.ingestor_url}/metrics")
        counts = await verify(self.clients, self.settings.table_name, acknowledged)
        return summarise(
            mode="naive" if self.options.naive else "batched",
            events=len(events),
            acknowledged=len(acknowledged),
            counts=counts,
            seconds=seconds,
            samples=ingestor + samples,
            peak_rss_mb=rss,
        )


async def verify(clients: Clients, table: str, acknowledged: set[str]) -> dict[str, int]:
    """Read the table back: how many acknowledged events are stored, lost, or stored twice."""
    ids: list[str] = []
    kwargs: dict[str, Any] = {"TableName": table, "ProjectionExpression": "id"}
    while True:
        page = await clients.dynamodb.scan(**kwargs)
        ids.extend(item["id"]["S"] for item in page["Items"])
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    distinct = set(ids)
    return {
        "stored": len(distinct & acknowledged),
        "lost": len(acknowledged - distinct),
        "duplicates": len(ids) - len(distinct),
    }


def summarise(
    *,
    mode: str,
    events: int,
    acknowledged: int,
    counts: dict[str, int],
    seconds: float,
    samples: list[metrics.Sample],
    peak_rss_mb: dict[str, float | None] | None = None,
    latency_ms: tuple[float | None, float | None] | None = None,
) -> dict[str, Any]:
    """The bench's JSON object (DESIGN.md's fields, then extra detail)."""
    operations: dict[str, int] = {}
    for name, labels, value in samples:
        if name == "logpipe_aws_requests_total" and value:
            operations[labels["operation"]] = operations.get(labels["operation"], 0) + int(value)
    if latency_ms is None:
        e2e = metrics.buckets(samples, "logpipe_e2e_latency_seconds")
        latency_ms = (percentile_ms(e2e, 0.5), percentile_ms(e2e, 0.99))
    billed_sqs = metrics.total(samples, "logpipe_sqs_billed_requests_total")
    write_units = metrics.total(samples, "logpipe_dynamodb_write_units_total")
    costs = cost_figures(max(counts["stored"], 1), billed_sqs, write_units)
    return {
        "events": events,
        "stored": counts["stored"],
        "lost": counts["lost"],
        "duplicates": counts["duplicates"],
        "seconds": round(seconds, 2),
        "events_per_s": round(counts["stored"] / seconds, 1) if seconds else 0.0,
        "e2e_p50_ms": latency_ms[0],
        "e2e_p99_ms": latency_ms[1],
        "aws_requests": dict(sorted(operations.items())),
        "billed_requests_per_event": costs["billed_requests_per_event"],
        "usd_per_million_events": costs["usd_per_million_events"],
        "mode": mode,
        "chaos": "",
        "acknowledged": acknowledged,
        "billed_sqs_requests_per_event": costs["billed_sqs_requests_per_event"],
        "write_units_per_event": costs["write_units_per_event"],
        "peak_rss_mb": peak_rss_mb or {},
    }
