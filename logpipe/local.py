"""`logpipe up`: an embedded AWS endpoint, every role as a subprocess, live progress, a verdict."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import IO

import aiohttp
import orjson

from logpipe.aws import Clients, bootstrap, open_clients, stored_ids
from logpipe.config import Settings
from logpipe.metrics import bucket_deltas, buckets, histogram_quantile, scrape, total
from logpipe.processes import (
    LOCAL_CREDENTIALS,
    EmbeddedAws,
    RoleProcess,
    free_port,
    role_env,
    wait_http,
)

log = logging.getLogger(__name__)

DEMO_RATE = 20.0
STALL_SECONDS = 60.0


@dataclass(frozen=True)
class Reading:
    """One look at the running pipeline, from the roles' own /metrics."""

    at: float
    accepted: float
    stored: float
    queue: float
    dlq: float
    e2e_buckets: list[tuple[float, float]]

    def latency_ms(self, q: float, before: Reading | None = None) -> float | None:
        window = bucket_deltas(self.e2e_buckets, before.e2e_buckets if before else [])
        seconds = histogram_quantile(window, q)
        return None if seconds is None else seconds * 1000


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


class Progress:
    """The live line: in/s, stored/s, queue and DLQ depth, end-to-end p50/p99."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._tty = out.isatty()
        self._last: Reading | None = None
        self._printed = 0.0

    def show(self, now: Reading) -> None:
        last = self._last or Reading(now.at - 1, 0, 0, 0, 0, [])
        self._last = now
        span = max(now.at - last.at, 1e-6)
        line = (
            f"in {(now.accepted - last.accepted) / span:>6.0f}/s  "
            f"stored {(now.stored - last.stored) / span:>6.0f}/s  "
            f"total {now.stored:>8.0f}/{now.accepted:<8.0f}  "
            f"queue {now.queue:>4.0f}  dlq {now.dlq:>3.0f}  "
            f"p50 {_ms(now.latency_ms(0.5, last)):>7}  p99 {_ms(now.latency_ms(0.99, last)):>7}"
        )
        if self._tty:
            self._out.write("\r" + line)
        elif now.at - self._printed >= 5:
            self._out.write(line + "\n")
            self._printed = now.at
        self._out.flush()

    def end(self) -> None:
        if self._tty:
            self._out.write("\n")


async def up(settings: Settings, events: int | None, rate: float | None) -> int:
    """Run the local stack; with `events`, stop after that many, verify and give a verdict."""
    aws = EmbeddedAws()
    endpoint = aws.start()
    settings = settings.with_overrides(
        endpoint_url=endpoint, visibility_timeout_s=30, host="127.0.0.1"
    )
    os.environ.update(LOCAL_CREDENTIALS)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log_path = os.path.join(tempfile.gettempdir(), f"logpipe-up-{os.getpid()}.log")
    try:
        with open(log_path, "wb") as log_file:  # noqa: ASYNC230 - once, at start
            stack = LocalStack(settings, log_file)
            print(f"logpipe up: AWS endpoint {endpoint}; role logs in {log_path}", flush=True)
            return await stack.run(events, rate, stopping)
    finally:
        aws.stop()


class LocalStack:
    """The roles of `logpipe up` and the loop that watches them."""

    def __init__(self, settings: Settings, log_file: IO[bytes]) -> None:
        self.settings = settings
        self._log_file = log_file
        self.ingestor_port = free_port()
        self.processor_metrics_port = free_port()
        self.ingestor_metrics_port = free_port()
        self.ingestor_url = f"http://127.0.0.1:{self.ingestor_port}"

    async def run(self, events: int | None, rate: float | None, stopping: asyncio.Event) -> int:
        async with AsyncExitStack() as stack:
            clients = await open_clients(stack, self.settings, pool=4)
            urls = await bootstrap(clients, self.settings)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            env = role_env(self.settings, LOGPIPE_QUEUE_POLL_S=1)
            ingestor = await RoleProcess.start(
                "ingestor",
                {
                    **env,
                    "LOGPIPE_PORT": str(self.ingestor_port),
                    "LOGPIPE_METRICS_PORT": str(self.ingestor_metrics_port),
                },
                log_file=self._log_file,
            )
            processor = await RoleProcess.start(
                "processor",
                {**env, "LOGPIPE_METRICS_PORT": str(self.processor_metrics_port)},
                log_file=self._log_file,
            )
            roles = [ingestor, processor]
            try:
                await wait_http(session, f"{self.ingestor_url}/healthz")
                emitters = await self._start_emitters(env, events, rate)
                roles[:0] = emitters
                watch = Watch(self, clients, session, urls)
                if events is None:
                    print(f"ingest at {self.ingestor_url}/ingest; Ctrl-C stops", flush=True)
                    await watch.until(stopping)
                    return 0
                return await watch.verdict(emitters, stopping)
            finally:
                for role in roles:
                    await role.stop()

    async def _start_emitters(
        self, env: dict[str, str], events: int | None, rate: float | None
    ) -> list[RoleProcess]:
        if rate is None:
            rate = 0.0 if events else DEMO_RATE
        emitters = []
        for index, service in enumerate(("service-a", "service-b")):
            share = 0 if events is None else events // 2 + (events % 2 if index == 0 else 0)
            emitters.append(
                await RoleProcess.start(
                    "emitter",
                    {
                        **env,
                        "LOGPIPE_INGESTOR_URL": self.ingestor_url,
                        "LOGPIPE_METRICS_PORT": "0",
                        "LOGPIPE_EMITTER_SERVICE": service,
                        "LOGPIPE_EMITTER_RATE": str(rate),
                        "LOGPIPE_EMITTER_EVENTS": str(share),
                    },
                    log_file=self._log_file,
                )
            )
        return emitters


class Watch:
    """Reads the roles' own metrics and the queues, for the live line and the final count."""

    def __init__(
        self,
        stack: LocalStack,
        clients: Clients,
        session: aiohttp.ClientSession,
        urls: dict[str, str],
    ) -> None:
        self._stack = stack
        self._clients = clients
        self._session = session
        self._urls = urls
        self._progress = Progress(sys.stdout)

    async def sample(self) -> Reading:
        ingestor = await scrape(
            self._session, f"http://127.0.0.1:{self._stack.ingestor_metrics_port}/metrics"
        )
        processor = await scrape(
            self._session, f"http://127.0.0.1:{self._stack.processor_metrics_port}/metrics"
        )
        reading = Reading(
            at=time.monotonic(),
            accepted=total(ingestor, "logpipe_events_accepted_total"),
            stored=total(processor, "logpipe_events_stored_total"),
            queue=total(processor, "logpipe_queue_visible_messages", queue="main")
            + total(processor, "logpipe_queue_inflight_messages", queue="main"),
            dlq=total(processor, "logpipe_queue_visible_messages", queue="dlq"),
            e2e_buckets=buckets(processor, "logpipe_e2e_latency_seconds"),
        )
        self._progress.show(reading)
        return reading

    async def until(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.sample()
            with suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
        self._progress.end()

    async def verdict(self, emitters: list[RoleProcess], stopping: asyncio.Event) -> int:
        started = time.monotonic()
        finished = asyncio.gather(*(e.output() for e in emitters))
        while not finished.done() and not stopping.is_set():
            await self.sample()
            await asyncio.wait({finished}, timeout=1.0)
        if stopping.is_set():
            self._progress.end()
            return 130
        totals = {"sent": 0, "accepted": 0}
        for output in finished.result():
            lines = output.strip().splitlines()
            summary = orjson.loads(lines[-1]) if lines else {}
            for key in totals:
                totals[key] += int(summary.get(key, 0))
        last_change, last_stored = time.monotonic(), -1.0
        reading = await self.sample()
        while not stopping.is_set():
            if reading.stored >= totals["accepted"] and reading.queue == 0:
                break
            if reading.stored != last_stored:
                last_change, last_stored = time.monotonic(), reading.stored
            elif time.monotonic() - last_change > STALL_SECONDS:
                break
            await asyncio.sleep(0.5)
            reading = await self.sample()
        seconds = time.monotonic() - started
        self._progress.end()
        stored_items = len(set(await stored_ids(self._clients, self._stack.settings.table_name)))
        lost = max(totals["accepted"] - stored_items, 0)
        print(
            f"logpipe up: done\n"
            f"  sent      {totals['sent']}\n"
            f"  accepted  {totals['accepted']}\n"
            f"  stored    {stored_items}\n"
            f"  lost      {lost}\n"
            f"  seconds   {seconds:.1f}\n"
            f"  events/s  {stored_items / seconds:.0f}\n"
            f"  e2e p50   {_ms(reading.latency_ms(0.5))}\n"
            f"  e2e p99   {_ms(reading.latency_ms(0.99))}\n"
            f"  dlq       {reading.dlq:.0f}",
            flush=True,
        )
        return 0 if lost == 0 and totals["accepted"] == totals["sent"] else 1
