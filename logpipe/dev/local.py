"""`logpipe up`: an embedded AWS endpoint, every role as a subprocess, live progress, a verdict."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TextIO

import aiohttp
import orjson

from logpipe.aws.bootstrap import bootstrap
from logpipe.aws.calls import stored_ids
from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.dev.processes import (
    LOCAL_CREDENTIALS,
    EmbeddedAws,
    RoleProcess,
    free_port,
    role_env,
    wait_http,
)
from logpipe.dev.promtext import buckets, scrape, total
from logpipe.obs.metrics import bucket_deltas, histogram_quantile

log = logging.getLogger(__name__)

DEMO_RATE = 20.0
STALL_SECONDS = 60.0
CONSOLE_PORT = 8081
AWS_PORT = 8082
# Written by `logpipe up` in the directory it runs in, removed when it stops: how `query`,
# `dlq` and `bench --endpoint` started from the same checkout find the running stack.
STATE_FILE = ".logpipe-up.json"
# Any of these means the user has AWS set up: then the local stack is never used implicitly.
AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)
CURL_EXAMPLE = (
    "curl -X POST localhost:{port}/ingest -H 'Content-Type: application/json' \\\n"
    '    -d \'{{"service":"checkout","level":"error","message":"card declined"}}\''
)


def ports_problem(ports: Mapping[str, int]) -> str | None:
    """Why the stack cannot listen on these loopback ports, or None when it can."""
    seen: dict[int, str] = {}
    for role, port in ports.items():
        if port in seen:
            return f"{role} and {seen[port]} cannot share port {port}"
        seen[port] = role
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                return (
                    f"port {port} for {role} is not free ({exc.strerror}); is another "
                    f"`logpipe up` running? Stop it, or pick another port with the flag named"
                )
    return None


@dataclass(frozen=True)
class StackState:
    """Where a running `logpipe up` listens and which resources it made."""

    pid: int
    endpoint: str
    ingestor: str
    console: str
    region: str | None
    queue_name: str
    dlq_name: str
    table_name: str

    @classmethod
    def of(cls, settings: Settings, pid: int, console_port: int) -> StackState:
        return cls(
            pid=pid,
            endpoint=settings.endpoint_url or "",
            ingestor=f"http://localhost:{settings.port}",
            console=f"http://localhost:{console_port}",
            region=settings.region,
            queue_name=settings.queue_name,
            dlq_name=settings.dlq_name,
            table_name=settings.table_name,
        )

    def write(self, directory: Path) -> None:
        path = directory / STATE_FILE
        with suppress(OSError):  # a read-only checkout still runs, only without discovery
            path.write_bytes(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))

    def remove(self, directory: Path) -> None:
        if read_state(directory) == self:
            with suppress(OSError):
                (directory / STATE_FILE).unlink()

    def apply(self, settings: Settings) -> Settings:
        return settings.with_overrides(
            endpoint_url=self.endpoint,
            region=self.region,
            queue_name=self.queue_name,
            dlq_name=self.dlq_name,
            table_name=self.table_name,
        )


def read_state(directory: Path) -> StackState | None:
    """The state file of a `logpipe up` in `directory` whose process still runs, else None."""
    try:
        doc = orjson.loads((directory / STATE_FILE).read_bytes())
        state = StackState(**doc)
    except (OSError, orjson.JSONDecodeError, TypeError):
        return None
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return None  # left behind by a stack that was killed
    except PermissionError:
        pass  # alive, someone else's
    return state


def aws_configured(env: Mapping[str, str], home: Path) -> str | None:
    """What shows that AWS is set up (a variable or a file), or None when nothing does."""
    for name in AWS_VARIABLES:
        if env.get(name, "").strip():
            return name
    for name in ("credentials", "config"):
        path = home / ".aws" / name
        if path.exists():
            return str(path)
    return None


def attach(
    settings: Settings, env: Mapping[str, str], directory: Path, home: Path, err: TextIO
) -> Settings | None:
    """Settings for the `logpipe up` running from `directory`, when no AWS settings exist.

    Says so on `err`; None (use the settings as they are) when AWS is configured or no
    local stack runs here.
    """
    if aws_configured(env, home):
        return None
    state = read_state(directory)
    if state is None:
        return None
    print(
        f"logpipe: no AWS settings found; using the local stack of `logpipe up` "
        f"(pid {state.pid}, endpoint {state.endpoint})",
        file=err,
    )
    os.environ.update(LOCAL_CREDENTIALS)
    return state.apply(settings)


def banner(state: StackState, log_path: str) -> str:
    """What `logpipe up` prints once everything answers: the URLs and what to try."""
    port = state.ingestor.rsplit(":", 1)[1]
    program = sys.argv[0] if sys.argv[0].endswith("logpipe") else "logpipe"
    if os.path.isabs(program) and program.startswith(os.getcwd() + os.sep):
        program = os.path.relpath(program)
    return (
        f"logpipe up: the whole pipeline runs on this machine; Ctrl-C stops it\n"
        f"  ingest    {state.ingestor}/ingest   (and /v1/logs for OTLP)\n"
        f"  console   {state.console}/\n"
        f"  AWS       {state.endpoint}   (embedded; `logpipe query`, `dlq` and "
        f"`bench --endpoint` run from this directory use it)\n"
        f"  role logs {log_path}\n"
        f"send an event:\n  {CURL_EXAMPLE.format(port=port)}\n"
        f"read it back:\n  {program} query --service checkout\n"
        f"demo emitters send service-a and service-b events meanwhile:"
    )


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


async def up(
    settings: Settings,
    events: int | None,
    rate: float | None,
    console_port: int = CONSOLE_PORT,
    aws_port: int = AWS_PORT,
) -> int:
    """Run the local stack; with `events`, stop after that many, verify and give a verdict."""
    problem = ports_problem(
        {
            "the ingestor (--port)": settings.port,
            "the console (--console-port)": console_port,
            "the embedded AWS endpoint (--aws-port)": aws_port,
        }
    )
    if problem:
        print(f"logpipe up: {problem}", file=sys.stderr)
        return 2
    aws = EmbeddedAws(port=aws_port)
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
            stack = LocalStack(settings, log_file, console_port, log_path)
            return await stack.run(events, rate, stopping)
    finally:
        aws.stop()


class LocalStack:
    """The roles of `logpipe up` and the loop that watches them."""

    def __init__(
        self, settings: Settings, log_file: IO[bytes], console_port: int, log_path: str
    ) -> None:
        self.settings = settings
        self._log_file = log_file
        self._log_path = log_path
        self.ingestor_port = settings.port
        self.console_port = console_port
        self.processor_metrics_port = free_port()
        self.ingestor_metrics_port = free_port()
        self.ingestor_url = f"http://127.0.0.1:{self.ingestor_port}"
        self.console_url = f"http://127.0.0.1:{self.console_port}"

    async def run(self, events: int | None, rate: float | None, stopping: asyncio.Event) -> int:
        async with AsyncExitStack() as stack:
            clients = await open_clients(stack, self.settings, pool=4)
            urls = await bootstrap(clients, self.settings)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            env = role_env(self.settings, LOGPIPE_QUEUE_POLL_S=1)
            roles = await self._start_roles(env)
            state = StackState.of(self.settings, os.getpid(), self.console_port)
            try:
                await wait_http(session, f"{self.ingestor_url}/healthz")
                await wait_http(session, f"{self.console_url}/healthz")
                emitters = await self._start_emitters(env, events, rate)
                roles[:0] = emitters
                watch = Watch(self, clients, session, urls)
                state.write(Path.cwd())
                print(banner(state, self._log_path), flush=True)
                if events is None:
                    await watch.until(stopping)
                    return 0
                return await watch.verdict(emitters, stopping)
            finally:
                state.remove(Path.cwd())
                for role in roles:
                    await role.stop()

    async def _start_roles(self, env: dict[str, str]) -> list[RoleProcess]:
        """The ingestor, the processor and the console, as child processes."""
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
        console = await RoleProcess.start(
            "console",
            {**env, "LOGPIPE_PORT": str(self.console_port), "LOGPIPE_METRICS_PORT": "0"},
            log_file=self._log_file,
        )
        return [ingestor, processor, console]

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
        outputs = await self._emitter_outputs(emitters, stopping)
        if outputs is None:
            self._progress.end()
            return 130
        totals = emitter_totals(outputs)
        reading = await self._until_stored(totals["accepted"], stopping)
        seconds = time.monotonic() - started
        self._progress.end()
        stored_items = len(set(await stored_ids(self._clients, self._stack.settings.table_name)))
        lost = max(totals["accepted"] - stored_items, 0)
        print(done_report(totals, stored_items, lost, seconds, reading), flush=True)
        return 0 if lost == 0 and totals["accepted"] == totals["sent"] else 1

    async def _emitter_outputs(
        self, emitters: list[RoleProcess], stopping: asyncio.Event
    ) -> list[bytes] | None:
        """What each emitter printed once all have finished; None if stopped first."""
        finished = asyncio.gather(*(e.output() for e in emitters))
        while not finished.done() and not stopping.is_set():
            await self.sample()
            await asyncio.wait({finished}, timeout=1.0)
        if stopping.is_set():
            return None
        return list(finished.result())

    async def _until_stored(self, accepted: int, stopping: asyncio.Event) -> Reading:
        """Sample until every accepted event is stored and the queue is empty, or it stalls."""
        last_change, last_stored = time.monotonic(), -1.0
        reading = await self.sample()
        while not stopping.is_set():
            if reading.stored >= accepted and reading.queue == 0:
                break
            if reading.stored != last_stored:
                last_change, last_stored = time.monotonic(), reading.stored
            elif time.monotonic() - last_change > STALL_SECONDS:
                break
            await asyncio.sleep(0.5)
            reading = await self.sample()
        return reading


def emitter_totals(outputs: list[bytes]) -> dict[str, int]:
    """Events sent and accepted, summed from the emitters' closing JSON lines."""
    totals = {"sent": 0, "accepted": 0}
    for output in outputs:
        lines = output.strip().splitlines()
        summary = orjson.loads(lines[-1]) if lines else {}
        for key in totals:
            totals[key] += int(summary.get(key, 0))
    return totals


def done_report(
    totals: dict[str, int], stored_items: int, lost: int, seconds: float, reading: Reading
) -> str:
    """What `logpipe up --events N` prints at the end."""
    return (
        f"logpipe up: done\n"
        f"  sent      {totals['sent']}\n"
        f"  accepted  {totals['accepted']}\n"
        f"  stored    {stored_items}\n"
        f"  lost      {lost}\n"
        f"  seconds   {seconds:.1f}\n"
        f"  events/s  {stored_items / seconds:.0f}\n"
        f"  e2e p50   {_ms(reading.latency_ms(0.5))}\n"
        f"  e2e p99   {_ms(reading.latency_ms(0.99))}\n"
        f"  dlq       {reading.dlq:.0f}"
    )
