"""CPU per call of our real AWS clients, against an endpoint that does next to nothing.

python bench/percall.py [--latency-ms 0,8] [--events 30000] [--calls 2000] [--send-calls 200]

`logpipe bench` measures each role while moto's server shares the machine's CPUs, and a busy
endpoint makes every call of the client slower. Here a minimal endpoint in its own process
(logpipe/dev/quick_endpoint.py) answers each call after a fixed latency, and this process
measures its own CPU time (user and system) per BatchWriteItem of 25 bench items, per
SendMessageBatch of 10 envelopes of about 25 KiB, and per event through `Processor.handle`
(10 messages packed as the ingestor packs them, no delete), with the clients, settings and
concurrency the roles use. One JSON line on stdout, a markdown table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson

from logpipe import heap
from logpipe.aws.calls import send_message_batch
from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.core.block import block_items
from logpipe.core.envelope import MessageBody, pack_envelope, pack_message, unpack_envelope
from logpipe.dev.bench import batches
from logpipe.dev.events import make_events
from logpipe.dev.processes import LOCAL_CREDENTIALS, free_port, wait_http
from logpipe.ingest.app import validate
from logpipe.ingest.batcher import MAX_BATCH_ENTRIES, MessageSizer, Pending, take_batch
from logpipe.process.processor import BATCH_WRITE_ITEMS, RECEIVE_MESSAGES, Processor

T = TypeVar("T")

REQUEST_EVENTS = 100  # events per ingest request, as `logpipe bench` sends them
ENVELOPE_BYTES = 25 * 1024
QUEUE_PATH = "/000000000000/percall"


@dataclass(frozen=True)
class Usage:
    """CPU seconds this process has used: in all (process_time), as user and as system."""

    cpu: float
    user: float
    system: float

    @classmethod
    def now(cls) -> Usage:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.process_time(), usage.ru_utime, usage.ru_stime)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.cpu - other.cpu, self.user - other.user, self.system - other.system)


async def spread(jobs: Iterable[T], concurrency: int, run: Callable[[T], Awaitable[None]]) -> None:
    """Run every job, at most `concurrency` at once: each worker takes the next job when free."""
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            await run(job)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


class Measurement:
    """CPU of this process while it runs some work, and what the endpoint answered meanwhile."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url

    async def _counts(self) -> dict[str, dict[str, int]]:
        async with self._session.get(f"{self._url}/counts") as resp:
            counts: dict[str, dict[str, int]] = await resp.json()
            return counts

    async def __call__(self, work: Awaitable[None], units: int, unit: str) -> dict[str, Any]:
        before = await self._counts()
        heap.settle()  # the garbage of the set-up is not collected inside the window
        used, started = Usage.now(), time.perf_counter()
        await work
        used, wall = Usage.now() - used, time.perf_counter() - started
        after = await self._counts()
        per = 1e6 / units
        return {
            f"cpu_us_per_{unit}": round(used.cpu * per, 1),
            f"user_us_per_{unit}": round(used.user * per, 1),
            f"sys_us_per_{unit}": round(used.system * per, 1),
            "wall_s": round(wall, 3),
            **{kind: _grown(before[kind], after[kind]) for kind in ("calls", "entries")},
        }


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}


def ingested(run: str, count: int, now_ms: int) -> list[list[bytes]]:
    """`count` bench events as the ingestor encodes them, one list per request of 100."""
    requests = []
    for request in batches(make_events(run, count, now_ms), REQUEST_EVENTS):
        accepted, rejected = validate(request, now_ms)
        if rejected:
            raise ValueError(f"bench events were rejected: {rejected[:3]}")
        requests.append(accepted)
    return requests


def packed(
    requests: list[list[bytes]], message_bytes: int, batch_bytes: int
) -> list[list[MessageBody]]:
    """The bodies of each SendMessageBatch the ingestor's batcher sends for `requests`, each
    message filled with `message_bytes` of envelope (gzipped from COMPRESS_FROM_BYTES)."""
    buffer = deque(
        Pending(events, None, left=sum(map(len, events)) + len(events)) for events in requests
    )
    sends = []
    while buffer:
        messages = take_batch(buffer, message_bytes, batch_bytes)
        sends.append([pack_message(message.events) for message in messages])
    return sends


def packed_as_the_ingestor(requests: list[list[bytes]], max_bytes: int) -> list[MessageBody]:
    """The message bodies the ingestor's batcher sends for `requests` under load: each
    filled with what the gzip ratio of the messages before it lets fit in `max_bytes`."""
    buffer = deque(
        Pending(events, None, left=sum(map(len, events)) + len(events)) for events in requests
    )
    sizer = MessageSizer(max_bytes)
    bodies = []
    while buffer:
        messages = take_batch(buffer, sizer.fill_bytes, sizer.fill_bytes)
        bodies += [body for _, body in sizer.pack(messages)]
    return bodies


def received(bodies: Sequence[MessageBody], now_ms: int) -> list[dict[str, Any]]:
    """The bodies as ReceiveMessage hands them to the processor."""
    return [
        {
            "MessageId": f"m-{n}",
            "ReceiptHandle": f"r-{n}",
            "Body": body.text,
            "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(now_ms)},
            "MessageAttributes": body.attributes,
        }
        for n, body in enumerate(bodies)
    ]


async def batch_write_item(
    clients: Clients, settings: Settings, measure: Measurement, calls: int
) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    encoded = ingested("bwi", BATCH_WRITE_ITEMS, now_ms)[0]
    events = unpack_envelope(pack_envelope(encoded))  # decoded as the processor decodes
    items = block_items(events, settings.shards, settings.retention_days)
    request = {settings.table_name: [{"PutRequest": {"Item": item}} for item in items]}

    async def call(_: int) -> None:
        await clients.dynamodb.batch_write_item(RequestItems=request)

    concurrency = settings.write_concurrency
    await spread(range(concurrency), concurrency, call)  # connections opened, caches warm
    figures = await measure(spread(range(calls), concurrency, call), calls, "call")
    return {"calls_asked": calls, "concurrency": concurrency, **figures}


async def send_message_batch_calls(
    clients: Clients, settings: Settings, measure: Measurement, calls: int
) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    events = ingested("smb", 1000, now_ms)
    bodies = packed(events, ENVELOPE_BYTES, settings.sqs_max_bytes)[0]
    if len(bodies) != MAX_BATCH_ENTRIES:
        raise ValueError(f"expected {MAX_BATCH_ENTRIES} envelopes in a batch, got {len(bodies)}")
    url = f"{settings.endpoint_url}{QUEUE_PATH}"

    async def call(_: int) -> None:
        failures = await send_message_batch(clients.sqs, url, bodies)
        if any(failures):
            raise RuntimeError(f"SendMessageBatch entries failed: {failures}")

    concurrency = settings.send_concurrency
    await spread(range(concurrency), concurrency, call)
    figures = await measure(spread(range(calls), concurrency, call), calls, "call")
    envelope = sum(body.size for body in bodies) // len(bodies)
    return {"calls_asked": calls, "concurrency": concurrency, "envelope_bytes": envelope, **figures}


async def handle(
    clients: Clients, settings: Settings, measure: Measurement, events: int
) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    url = f"{settings.endpoint_url}{QUEUE_PATH}"
    processor = Processor(settings, clients, url, f"{url}-dlq")

    def receives(run: str, count: int) -> list[list[dict[str, Any]]]:
        bodies = packed_as_the_ingestor(ingested(run, count, now_ms), settings.sqs_max_bytes)
        messages = received(bodies, now_ms)
        return [
            messages[i : i + RECEIVE_MESSAGES] for i in range(0, len(messages), RECEIVE_MESSAGES)
        ]

    async def run(messages: list[dict[str, Any]]) -> None:
        await processor.handle(messages, delete=False)

    concurrency = settings.pollers
    # The warm-up also notes the bench's services in the registry, as a running processor has.
    await spread(receives("warm", 1000), concurrency, run)
    rounds = receives("handle", events)
    figures = await measure(spread(rounds, concurrency, run), events, "event")
    messages = sum(map(len, rounds))
    return {"events": events, "messages": messages, "concurrency": concurrency, **figures}


async def at_latency(
    latency_ms: float, args: argparse.Namespace, session: aiohttp.ClientSession, pids: list[int]
) -> dict[str, Any]:
    """Every measurement against a fresh endpoint answering after `latency_ms`."""
    port = free_port()
    endpoint = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "logpipe.dev.quick_endpoint", "--port", str(port)),
        *("--latency-ms", str(latency_ms)),
    )
    pids.append(endpoint.pid)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_http(session, f"{url}/counts", timeout=30)
        settings = Settings(endpoint_url=url)
        measure = Measurement(session, url)
        async with AsyncExitStack() as stack:
            pool = settings.write_concurrency + settings.pollers * 2 + 4  # the processor's
            clients = await open_clients(stack, settings, pool=pool)
            return {
                "latency_ms": latency_ms,
                "batch_write_item": await batch_write_item(clients, settings, measure, args.calls),
                "send_message_batch": await send_message_batch_calls(
                    clients, settings, measure, args.send_calls
                ),
                "handle": await handle(clients, settings, measure, args.events),
            }
    finally:
        if endpoint.returncode is None:
            endpoint.terminate()
        await endpoint.wait()


def load_average() -> list[float]:
    return [round(load, 2) for load in os.getloadavg()]


async def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    pids: list[int] = []
    load_start = load_average()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        runs = [await at_latency(ms, args, session, pids) for ms in args.latency_ms]
    return {
        "runs": runs,
        "load_average": {"start": load_start, "end": load_average()},
        "endpoint_pids": pids,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| latency ms | BatchWriteItem µs/call | SendMessageBatch µs/call | handle µs/event |",
        "|---|---|---|---|",
    ]
    for run in result["runs"]:
        cells = [
            f"{run[name][f'cpu_us_per_{unit}']} ({run[name][f'user_us_per_{unit}']} user, "
            f"{run[name][f'sys_us_per_{unit}']} sys)"
            for name, unit in (
                ("batch_write_item", "call"),
                ("send_message_batch", "call"),
                ("handle", "event"),
            )
        ]
        lines.append(f"| {run['latency_ms']:g} | " + " | ".join(cells) + " |")
    load = result["load_average"]
    lines.append(f"\nload average (1, 5, 15 min) at start {load['start']}, at end {load['end']}")
    return "\n".join(lines)


def latencies(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-ms", type=latencies, default=[0.0, 8.0])
    parser.add_argument("--events", type=int, default=30000)
    parser.add_argument("--calls", type=int, default=2000, help="BatchWriteItem calls")
    parser.add_argument("--send-calls", type=int, default=200, help="SendMessageBatch calls")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the whole run")
    args = parser.parse_args()
    os.environ.update(LOCAL_CREDENTIALS)

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(args.timeout):
            return await measure_all(args)

    try:
        result = asyncio.run(bounded())
    except TimeoutError:
        print(f"percall: not finished within {args.timeout:g} s", file=sys.stderr)
        return 1
    print(table(result), file=sys.stderr)
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
