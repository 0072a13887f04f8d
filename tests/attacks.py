"""Hostile requests against a running ingestor, and what they cost it (status, time, RSS, /healthz).

Shared by tests/test_ingest_attacks.py and tests/measure_ingest_attacks.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

KEY = "attack-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GZIP_JSON = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}
GZIP_PROTOBUF = {**AUTH, "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def otlp_empty_records(count: int) -> bytes:
    """An ExportLogsServiceRequest: one resource, one scope, `count` empty log records."""
    scope_logs = b"\x12\x00" * count  # field 2 (log_records), length 0
    return _field(1, _field(2, scope_logs))


def gzip_bomb_otlp(records: int = 2_500_000) -> bytes:
    return gzip.compress(otlp_empty_records(records), 9)


def empty_gzip_members(total_bytes: int = 5 * 1024 * 1024) -> bytes:
    member = gzip.compress(b"", 9)
    return member * (total_bytes // len(member))


def empty_objects_array(total_bytes: int = 5 * 1024 * 1024) -> bytes:
    """`[{},{},...]` of about `total_bytes`, gzipped (a few KB on the wire)."""
    count = (total_bytes - 2) // 3
    return gzip.compress(b"[" + b"{}," * (count - 1) + b"{}]", 9)


def otlp_json_empty_records(total_bytes: int = 5 * 1024 * 1024 - 4096) -> bytes:
    """OTLP JSON with one scope of about `total_bytes` of empty log records (just under the
    default body limit once inflated), gzipped."""
    count = total_bytes // 3
    records = b"{}," * (count - 1) + b"{}"
    return gzip.compress(b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[' + records + b"]}]}]}", 9)


def otlp_json_deep_body(depth: int = 100_000) -> bytes:
    """OTLP JSON whose one record's body nests `depth` key-value lists, gzipped."""
    opening = b'{"kvlistValue":{"values":[{"key":"k","value":' * depth
    closing = b"}]}}" * depth
    record = b'{"body":' + opening + b'{"stringValue":"x"}' + closing + b"}"
    return gzip.compress(b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[' + record + b"]}]}]}", 9)


def events_body(count: int, tag: str) -> bytes:
    events = [
        {
            "service": "attack",
            "level": "info",
            "message": f"{tag} event {n} of a request that waits for a slow queue",
            "attributes": {"request": tag, "n": n},
        }
        for n in range(count)
    ]
    return gzip.compress(orjson.dumps(events), 6)


@dataclass
class Outcome:
    """What one attack did: the statuses, when they came, the ingestor's peak RSS, /healthz."""

    name: str
    statuses: list[int | str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    worst_healthz_s: float = 0.0
    note: str = ""

    def row(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for status in self.statuses:
            counts[str(status)] = counts.get(str(status), 0) + 1
        return {
            "attack": self.name,
            "statuses": counts,
            "seconds": round(self.seconds, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "worst_healthz_s": round(self.worst_healthz_s, 3),
            "note": self.note,
        }


@contextlib.asynccontextmanager
async def healthz_probe(url: str, interval: float = 0.05) -> AsyncIterator[list[float]]:
    """Time GET /healthz over and over on a connection of its own while the block runs."""
    latencies: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    async with session.get(f"{url}/healthz") as response:
                        await response.read()
                except aiohttp.ClientError:
                    pass
                latencies.append(time.perf_counter() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)

    task = asyncio.create_task(probe())
    try:
        yield latencies
    finally:
        stop.set()
        await task


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> int | str:
    try:
        async with session.post(url, data=io.BytesIO(body), headers=headers) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


# The slowest answer of each status in the last `concurrent_posts`, for the measurements.
slowest_answer: dict[str, float] = {}


async def concurrent_posts(url: str, bodies: list[bytes], headers: dict[str, str]) -> list[Any]:
    connector = aiohttp.TCPConnector(limit=len(bodies) + 1)
    timeout = aiohttp.ClientTimeout(total=120)
    slowest_answer.clear()
    started = time.perf_counter()

    async def timed(session: aiohttp.ClientSession, body: bytes) -> int | str:
        status = await post(session, url, body, headers)
        elapsed = time.perf_counter() - started
        slowest_answer[str(status)] = max(slowest_answer.get(str(status), 0.0), elapsed)
        return status

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return list(await asyncio.gather(*(timed(session, b) for b in bodies)))


async def attack_otlp_bomb(base: str) -> list[Any]:
    return await concurrent_posts(f"{base}/v1/logs", [gzip_bomb_otlp()], GZIP_PROTOBUF)


async def attack_otlp_json_bomb(base: str) -> list[Any]:
    body = otlp_json_empty_records()
    return await concurrent_posts(f"{base}/v1/logs", [body] * 6, GZIP_JSON)


async def attack_otlp_json_deep(base: str) -> list[Any]:
    return await concurrent_posts(f"{base}/v1/logs", [otlp_json_deep_body()], GZIP_JSON)


async def attack_gzip_members(base: str) -> list[Any]:
    return await concurrent_posts(f"{base}/ingest", [empty_gzip_members()], GZIP_JSON)


async def attack_empty_objects(base: str) -> list[Any]:
    body = empty_objects_array()
    return await concurrent_posts(f"{base}/ingest", [body] * 6, GZIP_JSON)


async def attack_slow_queue(base: str, requests: int = 40, events: int = 10_000) -> list[Any]:
    bodies = [events_body(events, f"r{n}") for n in range(requests)]
    return await concurrent_posts(f"{base}/ingest", bodies, GZIP_JSON)


async def raw_exchange(host: str, port: int, data: bytes, wait: float) -> bytes:
    """Send raw bytes, then read until the server closes or `wait` seconds pass."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            return await asyncio.wait_for(reader.read(65536), wait)
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def attack_huge_header(base: str) -> list[Any]:
    host, port = base.removeprefix("http://").split(":")
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * (1024 * 1024) + b"\r\n\r\n"
    answer = await raw_exchange(host, int(port), request, 10)
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
    return [int(status) if status.isdigit() else status]


async def attack_half_requests(base: str, connections: int = 300, wait: float = 45) -> list[Any]:
    """Open connections that send half a request each; how many the server closed by `wait`."""
    host, port = base.removeprefix("http://").split(":")
    half = b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    streams = []
    for _ in range(connections):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(half)
        streams.append((reader, writer))

    async def closed(reader: asyncio.StreamReader) -> str:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        return "closed"

    tasks = [asyncio.create_task(closed(reader)) for reader, _ in streams]
    done, pending = await asyncio.wait(tasks, timeout=wait)
    for task in pending:
        task.cancel()
    for _, writer in streams:
        writer.close()
    return ["closed"] * len(done) + ["open"] * len(pending)


Attack = Callable[[str], Awaitable[list[Any]]]


async def attack_public_admin_routes(base: str) -> list[Any]:
    """GET /metrics and /readyz on the public port (each /readyz costs an SQS call)."""
    async with aiohttp.ClientSession() as session:
        statuses = []
        for path in ("/metrics", "/readyz"):
            async with session.get(f"{base}{path}") as response:
                await response.read()
                statuses.append(response.status)
        return statuses
