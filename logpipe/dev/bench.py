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
from dataclasses import dataclass, field, replace
from typing import IO, Any

import aiohttp

from logpipe.aws.bootstrap import bootstrap, queue_url
from logpipe.aws.clients import Clients, open_clients
from logpipe.client import Shipper
from logpipe.config import Settings
from logpipe.dev import promtext
from logpipe.dev.cpu import CpuMeter, Profiler
from logpipe.dev.events import make_events
from logpipe.dev.faults import Faults
from logpipe.dev.processes import (
    LOCAL_CREDENTIALS,
    RoleProcess,
    free_port,
    role_env,
    start_moto,
    wait_http,
)
from logpipe.dev.report import fired, mean_event_bytes, summarise, verify

PROGRESS_INTERVAL_S = 1.0
STALL_SECONDS = 60.0


@dataclass(frozen=True)
class BenchOptions:
    events: int
    naive: bool = False
    ceiling: bool = False
    concurrency: int = 16
    batch: int = 100
    endpoint: str | None = None
    rate: float = 0.0
    chaos: Faults = field(default_factory=Faults)
    profile: str | None = None
    keepalive: bool = True
    event_bytes: int = 1024
    seed: int | None = None
    pitr: bool = False


def batches(events: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


async def start_keepalive_moto(port: int, log: IO[bytes]) -> asyncio.subprocess.Process:
    """moto under uvicorn (keep-alive, as AWS endpoints) on `port`, once it answers."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "logpipe.dev.keepalive_moto:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        stdout=log,
        stderr=log,
    )
    async with aiohttp.ClientSession() as session:
        await wait_http(session, f"http://127.0.0.1:{port}/moto-api/", timeout=30)
    return process


@asynccontextmanager
async def endpoint(url: str | None, log: IO[bytes], keepalive: bool = True) -> AsyncIterator[str]:
    """The given endpoint, or moto in its own process on a free loopback port: served by
    uvicorn with keep-alive (`keepalive`), or by moto's own server, which closes every
    connection after one call."""
    if url:
        yield url
        return
    port = free_port()
    process = await (start_keepalive_moto if keepalive else start_moto)(port, log)
    try:
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

    @property
    def shown(self) -> bool:
        return self._tty

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
            url = await stack.enter_async_context(
                endpoint(options.endpoint, log, options.keepalive)
            )
            settings = replace(
                settings,
                endpoint_url=url,
                queue_name=f"bench-{run_id}-events",
                dlq_name=f"bench-{run_id}-dlq",
                table_name=f"bench-{run_id}-logs",
                host="127.0.0.1",
                port=free_port(),
                metrics_port=free_port(),
                # Messages a killed processor held come back after this: keep chaos runs short.
                visibility_timeout_s=10 if options.chaos.kill_processor else 60,
            )
            clients = await open_clients(stack, settings, pool=64)
            await bootstrap(clients, settings)
            now_ms = int(time.time() * 1000)
            events = make_events(run_id, options.events, now_ms, options.event_bytes, options.seed)
            if options.ceiling:
                from logpipe.dev.ceiling import run_ceiling

                return await run_ceiling(settings, clients, events, pitr=options.pitr)
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
        self.env = role_env(
            settings,
            LOGPIPE_PORT=settings.port,
            LOGPIPE_METRICS_PORT=settings.metrics_port,
            LOGPIPE_NAIVE=int(options.naive),
            LOGPIPE_LOG_LEVEL="warning",
            # The queue gauges are read every LOGPIPE_QUEUE_POLL_S as in production (the
            # bench reads the depth itself): their GetQueueAttributes count in the CPU figures.
            LOGPIPE_FAULTS=str(options.chaos.in_clients),
        )
        # The ingestor serves /metrics on a port of its own, apart from the processor's.
        self.ingestor_metrics_port = free_port()
        self.roles: dict[str, RoleProcess] = {}
        self.retired: list[promtext.Sample] = []  # metrics of role processes killed on purpose
        self.peak_rss: dict[str, float | None] = {}
        self.kills = {"ingestor": 0, "processor": 0}
        self.cpu = CpuMeter()
        self.profiler = Profiler(options.profile) if options.profile else None

    async def run(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=self.options.concurrency + 4)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self.session = session
            try:
                for role in ("ingestor", "processor"):
                    await self.start(role)
                return await self._measure(events)
            finally:
                for process in self.roles.values():
                    await process.stop()

    async def start(self, role: str) -> None:
        env = self.env
        if role == "ingestor":
            env = {**env, "LOGPIPE_METRICS_PORT": str(self.ingestor_metrics_port)}
        self.roles[role] = await RoleProcess.start(role, env, log_file=self.log)
        url = f"{self.ingestor_url}/healthz" if role == "ingestor" else self.processor_url
        await wait_http(self.session, url, process=self.roles[role].process)

    def metrics_url(self, role: str) -> str:
        if role == "ingestor":
            return f"http://127.0.0.1:{self.ingestor_metrics_port}/metrics"
        return self.processor_url

    async def kill(self, role: str) -> None:
        """SIGKILL `role` at once (its last metrics are kept), then start a fresh one."""
        with contextlib.suppress(aiohttp.ClientError):
            self.retired += await promtext.scrape(self.session, self.metrics_url(role))
        self._note_rss(role)
        self.cpu.take(role)
        process = self.roles[role].process
        process.kill()
        await process.wait()
        self.kills[role] += 1
        await self.start(role)
        self.cpu.mark(role, self.roles[role].process.pid)

    def _note_rss(self, role: str) -> None:
        rss = peak_rss_mb(self.roles[role].process.pid)
        if rss is not None:
            self.peak_rss[role] = max(self.peak_rss.get(role) or 0.0, rss)

    async def _chaos(self, drivers: asyncio.Future[Any]) -> None:
        chaos = self.options.chaos
        kills = ["processor"] * chaos.kill_processor + ["ingestor"] * chaos.kill_ingestor
        random.shuffle(kills)
        for role in kills:
            await asyncio.sleep(random.uniform(0.5, 2.5))
            await self.kill(role)

    async def _measure(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        shipper = Shipper(self.session, self.ingestor_url)
        acknowledged: set[str] = set()
        bar = ProgressBar(len(events))
        main_url = await self._prepare()
        started = time.monotonic()
        drivers = self._drive(shipper, batches(events, self.options.batch), acknowledged, started)
        chaos = asyncio.ensure_future(self._chaos(drivers))
        await self._until_drained(main_url, shipper, bar, (drivers, chaos))
        seconds = time.monotonic() - started
        await self._wind_down(bar, (drivers, chaos))
        samples = await self._final_samples()
        counts = await verify(self.clients, self.settings.table_name, acknowledged)
        result = summarise(
            mode="naive" if self.options.naive else "batched",
            events=len(events),
            acknowledged=len(acknowledged),
            counts=counts,
            seconds=seconds,
            samples=samples,
            peak_rss_mb=self.peak_rss,
            cpu_us_per_event=self.cpu.per_event_us(len(events)),
            event_bytes=mean_event_bytes(events),
            retention_days=self.settings.retention_days,
            pitr=self.options.pitr,
        )
        if self.options.chaos != Faults():
            result.update(await self._chaos_result(samples))
        return result

    async def _prepare(self) -> str:
        """Poison in the queue (if asked), CPU and profiles from now; the main queue's URL."""
        main_url = await queue_url(self.clients.sqs, self.settings.queue_name)
        await put_poison(self.clients.sqs, main_url, self.options.chaos.poison)
        for role, process in self.roles.items():
            self.cpu.mark(role, process.process.pid)
            if self.profiler:
                await self.profiler.attach(role, process.process.pid)
        return main_url

    def _drive(
        self,
        shipper: Shipper,
        pending: Iterator[list[dict[str, Any]]],
        acknowledged: set[str],
        started: float,
    ) -> asyncio.Future[Any]:
        """`concurrency` drivers shipping the batches (at `rate`, if set), noting each 202."""

        async def driver() -> None:
            for batch in pending:
                if self.options.rate:
                    ahead = started + shipper.stats.sent / self.options.rate - time.monotonic()
                    await asyncio.sleep(max(ahead, 0))
                if await shipper.ship(batch) == len(batch):
                    acknowledged.update(e["id"] for e in batch)

        return asyncio.gather(*(driver() for _ in range(self.options.concurrency)))

    async def _until_drained(
        self,
        main_url: str,
        shipper: Shipper,
        bar: ProgressBar,
        tasks: tuple[asyncio.Future[Any], asyncio.Future[Any]],
    ) -> None:
        """Until the drivers and chaos are done and the queue is empty, or it stalls."""
        last_change, last_depth = time.monotonic(), -1
        next_draw = 0.0
        while True:
            # Read the flags before the depth: a driver that finishes after the depth was read
            # may have sent messages that depth did not see yet.
            finished = all(task.done() for task in tasks)
            depth = await queue_depth(self.clients.sqs, main_url)
            # A scrape costs the processor CPU that is counted as its own: only for a bar
            # someone sees, once a second (Prometheus scrapes every 15 s or more).
            if bar.shown and time.monotonic() >= next_draw:
                next_draw = time.monotonic() + PROGRESS_INTERVAL_S
                with contextlib.suppress(aiohttp.ClientError):
                    samples = await promtext.scrape(self.session, self.processor_url)
                    stored = promtext.total(samples, "logpipe_events_stored_total")
                    bar.draw(shipper.stats.sent, stored)
            # Every 202 means SQS holds the event, and only stored events leave the queue.
            if finished and depth == 0:
                return
            if depth != last_depth:
                last_change, last_depth = time.monotonic(), depth
            elif time.monotonic() - last_change > STALL_SECONDS:
                return
            await asyncio.sleep(0.2)

    async def _wind_down(
        self, bar: ProgressBar, tasks: tuple[asyncio.Future[Any], asyncio.Future[Any]]
    ) -> None:
        """CPU and profiles up to now, the drivers and chaos cancelled, peak RSS noted."""
        for role in self.roles:
            self.cpu.take(role)
        if self.profiler:
            await self.profiler.stop()
        bar.end()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for role in self.roles:
            self._note_rss(role)

    async def _final_samples(self) -> list[promtext.Sample]:
        """The metrics of every role process of the run, the killed ones' included."""
        samples = self.retired
        for role in self.roles:
            samples = samples + await promtext.scrape(self.session, self.metrics_url(role))
        return samples

    async def _chaos_result(self, samples: list[promtext.Sample]) -> dict[str, Any]:
        dlq_url = await queue_url(self.clients.sqs, self.settings.dlq_name)
        return {
            "chaos": str(self.options.chaos),
            "faults": fired(samples, self.kills),
            "poison_in_dlq": await wait_dlq(self.clients.sqs, dlq_url, self.options.chaos.poison),
        }


POISON_BODIES = (
    "not json at all",
    '{"v": 99, "events": []}',
    '{"v": 1, "events": [{"id": "x"}]}',
    '{"v": 1}',
)


async def put_poison(sqs: Any, url: str, count: int) -> None:
    """`count` undecodable messages, the kinds a processor must survive."""
    for n in range(count):
        await sqs.send_message(QueueUrl=url, MessageBody=POISON_BODIES[n % len(POISON_BODIES)])


async def queue_depth(sqs: Any, url: str) -> int:
    response = await sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attrs = response["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


async def wait_dlq(sqs: Any, url: str, expected: int, timeout: float = 60.0) -> int:
    """The DLQ's depth once it reaches `expected` (or when `timeout` passes)."""
    deadline = time.monotonic() + timeout
    while True:
        depth = await queue_depth(sqs, url)
        if depth >= expected or time.monotonic() > deadline:
            return depth
        await asyncio.sleep(0.5)
