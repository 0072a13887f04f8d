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


# --- round 2 (issue 25): OTLP attribute bombs, a flood of inline bodies, idle connections ---


def _key_value(key: bytes, value: bytes) -> bytes:
    """A KeyValue: its key, and an AnyValue already encoded."""
    return _field(1, key) + _field(2, value)


def _string_value(text: bytes) -> bytes:
    return _field(1, text)  # AnyValue.string_value


def _kvlist_value(pairs: list[bytes]) -> bytes:
    return _field(6, b"".join(_field(1, pair) for pair in pairs))  # AnyValue.kvlist_value


def otlp_long_key_kvlist(key_bytes: int = 1024 * 1024, children: int = 1500) -> bytes:
    """One log record whose one attribute is a map of `children` under a key of `key_bytes`:
    mapped naively, every child's dotted key copies the long one."""
    pairs = [_key_value(b"c%d" % n, _string_value(b"v")) for n in range(children)]
    attribute = _key_value(b"k" * key_bytes, _kvlist_value(pairs))
    record = _field(6, attribute) + _field(5, _string_value(b"hello"))
    return gzip.compress(_field(1, _field(2, _field(2, record))), 9)


def otlp_json_long_key_kvlist(key_bytes: int = 1024 * 1024, children: int = 1500) -> bytes:
    """The OTLP JSON of `otlp_long_key_kvlist`, gzipped."""
    values = [{"key": f"c{n}", "value": {"stringValue": "v"}} for n in range(children)]
    attribute = {"key": "k" * key_bytes, "value": {"kvlistValue": {"values": values}}}
    record = {"body": {"stringValue": "hello"}, "attributes": [attribute]}
    doc = {"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}
    return gzip.compress(orjson.dumps(doc), 9)


def otlp_wide_resource(attributes: int = 40_000, records: int = 3_200) -> bytes:
    """One resource of `attributes` attributes over `records` empty records, gzipped:
    merged per record, the resource is walked `records` times."""
    pairs = b"".join(
        _field(1, _key_value(b"resource.attribute.%d" % n, _string_value(b"v")))
        for n in range(attributes)
    )
    resource_logs = _field(1, pairs) + _field(2, b"\x12\x00" * records)
    return gzip.compress(_field(1, resource_logs), 9)


def otlp_json_wide_resource(attributes: int = 40_000, records: int = 10_000) -> bytes:
    """The OTLP JSON of `otlp_wide_resource`, gzipped."""
    pairs = [
        {"key": f"resource.attribute.{n}", "value": {"stringValue": "v"}} for n in range(attributes)
    ]
    doc = {
        "resourceLogs": [
            {"resource": {"attributes": pairs}, "scopeLogs": [{"logRecords": [{}] * records}]}
        ]
    }
    return gzip.compress(orjson.dumps(doc), 9)


async def attack_otlp_long_key(base: str) -> list[Any]:
    return await concurrent_posts(f"{base}/v1/logs", [otlp_long_key_kvlist()], GZIP_PROTOBUF)


async def attack_otlp_json_long_key(base: str) -> list[Any]:
    return await concurrent_posts(f"{base}/v1/logs", [otlp_json_long_key_kvlist()], GZIP_JSON)


async def attack_otlp_wide_resource(base: str) -> list[Any]:
    body = otlp_wide_resource()
    return await concurrent_posts(f"{base}/v1/logs", [body] * 2, GZIP_PROTOBUF)


async def attack_otlp_json_wide_resource(base: str) -> list[Any]:
    return await concurrent_posts(f"{base}/v1/logs", [otlp_json_wide_resource()], GZIP_JSON)


def refused_events_body(events: int = 1025) -> bytes:
    """`[{},{},...]`: the most work a body still decoded on the event loop can ask for (every
    event refused, 1,024 commas)."""
    return b"[" + b",".join([b"{}"] * events) + b"]"


@dataclass
class Flood:
    """What a flood of keep-alive connections did, and what a legitimate client saw meanwhile."""

    statuses: list[int | str] = field(default_factory=list)
    legitimate: list[tuple[int | str, float]] = field(default_factory=list)

    def legitimate_median_s(self) -> float:
        times = sorted(seconds for _, seconds in self.legitimate)
        return times[len(times) // 2] if times else 0.0


async def flood(
    base: str, connections: int = 200, seconds: float = 8.0, body: bytes | None = None
) -> Flood:
    """`connections` keep-alive connections POSTing `body` (inline-sized) back to back for
    `seconds`, while one legitimate client sends one event at a time on its own connection."""
    body = body if body is not None else refused_events_body()
    headers = {**AUTH, "Content-Type": "application/json"}
    outcome = Flood()
    deadline = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=60)

    async def attacker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            outcome.statuses.append(await post(session, f"{base}/ingest", body, headers))

    async def legitimate() -> None:
        event = orjson.dumps({"service": "legit", "message": "a real event"})
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status = await post(session, f"{base}/ingest", event, headers)
                outcome.legitimate.append((status, time.perf_counter() - started))

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(legitimate(), *(attacker(session) for _ in range(connections)))
    return outcome


async def attack_inline_flood(base: str) -> list[Any]:
    outcome = await flood(base)
    served = sum(1 for status, _ in outcome.legitimate if status == 202)
    slowest_answer["legitimate median"] = outcome.legitimate_median_s()
    slowest_answer[f"legitimate served {served}/{len(outcome.legitimate)}"] = 0.0
    return outcome.statuses


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def idle_connections(base: str, count: int) -> list[Stream]:
    """`count` keep-alive connections that each made one request and then sit idle."""
    host, port = base.removeprefix("http://").split(":")
    streams = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)  # the whole answer
        streams.append((reader, writer))
    return streams


async def served_while_idle_connections_open(
    base: str, idle: int = 1001, requests: int = 50
) -> list[int | str]:
    """The statuses of `requests` legitimate POSTs (each on a new connection) made while `idle`
    keep-alive connections sit open."""
    streams = await idle_connections(base, idle)
    headers = {**AUTH, "Content-Type": "application/json"}
    event = orjson.dumps({"service": "legit", "message": "a real event"})
    statuses: list[int | str] = []
    try:
        for _ in range(requests):
            connector = aiohttp.TCPConnector(force_close=True)
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                statuses.append(await post(session, f"{base}/ingest", event, headers))
    finally:
        for _, writer in streams:
            writer.close()
    return statuses


async def attack_idle_connections(base: str) -> list[Any]:
    return await served_while_idle_connections_open(base)


async def trickled_body(base: str, interval: float = 0.5, wait: float = 60) -> tuple[bytes, float]:
    """A POST whose body arrives one byte every `interval` seconds; the answer and when it came."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.perf_counter()
    answer = b""
    try:
        writer.write(
            b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100000\r\n\r\n"
        )
        while not answer and time.perf_counter() - started < wait:
            writer.write(b" ")
            with contextlib.suppress(TimeoutError, ConnectionError):
                # Pacing the drip: the answer ends it early.
                answer = await asyncio.wait_for(reader.read(65536), interval)
            if reader.at_eof():
                break
    finally:
        writer.close()
    return answer, time.perf_counter() - started


async def attack_trickled_body(base: str) -> list[Any]:
    answer, seconds = await trickled_body(base)
    slowest_answer["answered after"] = seconds
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
    return [int(status) if status.isdigit() else status]
