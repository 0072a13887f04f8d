"""A tiny HTTP server of the tests' own that stands in for the ingestor, well or badly behaved,
and small client programs that run against it as processes of their own.

`Hostile` takes POST /ingest on a loopback port, records every event it was sent, and
answers as its `mode` says:

- `ok`: 202 `{"accepted": n, "rejected": []}`;
- `retry-after`: 503 with a `Retry-After` header to the first requests, one for each of the
  raw header values in `retry_after`, then as `ok`;
- `huge`: 202 with a body of `huge_bytes` (1.5 GB), streamed;
- `drip`: an answer sent one byte a second, which never ends;
- `tls-drip`: for an https:// URL, the start of a TLS handshake record, then one byte a
  second of it (no request is ever read).

`dead_url()` is a loopback address where nothing listens (connections are refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import socket
import sys
from typing import Any

import orjson

HUGE_BYTES = 1_500_000_000
_CHUNK = b"\0" * (1024 * 1024)


class Hostile:
    """The server; `async with Hostile("drip") as server:` serves on `server.url`."""

    def __init__(
        self,
        mode: str = "ok",
        *,
        retry_after: tuple[bytes, ...] = (b"1",),
        huge_bytes: int = HUGE_BYTES,
    ) -> None:
        self.mode = mode
        self.retry_after = retry_after
        self.huge_bytes = huge_bytes
        self.requests = 0
        self.events: list[dict[str, Any]] = []
        self.streamed = 0  # bytes of a huge answer written before the client hung up
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def __aenter__(self) -> Hostile:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._closing = True
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def messages(self) -> list[str]:
        return [str(event["message"]) for event in self.events]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if self.mode == "tls-drip":
                # A handshake record of 16 KiB announced, then sent a byte a second.
                await self._drip(writer, b"\x16\x03\x03\x40\x00" + b"\x02" * 16_384)
            while not self._closing and await self._answer_one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request, answer it; whether the connection may carry another."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in head[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        events = orjson.loads(body)
        self.requests += 1
        if self.mode == "retry-after" and self.requests <= len(self.retry_after):
            hint = b"Retry-After: " + self.retry_after[self.requests - 1] + b"\r\n"
            await _write(writer, 503, b'{"error": "busy"}', hint)
            return True
        self.events.extend(events)
        answer = orjson.dumps({"accepted": len(events), "rejected": []})
        if self.mode == "huge":
            await self._stream_huge(writer, answer)
            return False
        if self.mode == "drip":
            await self._drip(writer, b"HTTP/1.1 202 Accepted\r\nX-Drip: " + b"." * 100_000)
            return False
        await _write(writer, 202, answer)
        return True

    async def _stream_huge(self, writer: asyncio.StreamWriter, answer: bytes) -> None:
        head = f"HTTP/1.1 202 Accepted\r\nContent-Length: {self.huge_bytes}\r\n\r\n".encode()
        writer.write(head + answer)
        self.streamed = len(answer)
        while self.streamed < self.huge_bytes:
            chunk = _CHUNK[: self.huge_bytes - self.streamed]
            writer.write(chunk)
            await writer.drain()
            self.streamed += len(chunk)

    async def _drip(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for byte in data:
            if self._closing:
                return
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1)  # the behaviour under test: one byte a second


async def _write(
    writer: asyncio.StreamWriter, status: int, body: bytes, extra: bytes = b""
) -> None:
    writer.write(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n".encode()
        + extra
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()


def dead_url() -> str:
    """A loopback URL whose port was free a moment ago and has no listener."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- the client programs ---------------------------------------------------------------------

# Each prints one JSON line at the end; `peak_rss_mb` is the program's own VmHWM. (Not
# getrusage's ru_maxrss: Linux carries that across exec, so a child of a big pytest worker
# would report the worker's size.)
PEAK = (
    "next(int(line.split()[1]) for line in open('/proc/self/status')"
    " if line.startswith('VmHWM')) / 1024"
)

CLIENT_FLUSH = f"""
import json, sys, time
from logpipe.client import Client
url, count, give_up, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
client = Client(url, give_up_after_s=give_up, timeout_s=timeout)
for n in range(count):
    client.send({{"service": "app", "level": "info", "message": f"event {{n}}"}})
started = time.monotonic()
error = None
try:
    client.flush()
except Exception as exc:
    error = repr(exc)
s = client.stats
print(json.dumps({{"seconds": time.monotonic() - started, "error": error, "sent": s.sent,
    "accepted": s.accepted, "failed": s.failed, "peak_rss_mb": {PEAK}}}), flush=True)
"""

ASYNC_CLIENT = f"""
import asyncio, json, sys, time
from logpipe.client import AsyncClient
async def main():
    url, count = sys.argv[1], int(sys.argv[2])
    give_up, timeout = float(sys.argv[3]), float(sys.argv[4])
    errors = []
    client = AsyncClient(url, give_up_after_s=give_up, timeout_s=timeout)
    await client.start()
    started = time.monotonic()
    try:
        for n in range(count):
            await asyncio.wait_for(client.send({{"service": "app", "level": "info",
                                                 "message": f"event {{n}}"}}), 30)
        await asyncio.wait_for(client.flush(), 60)
    except Exception as exc:
        errors.append(repr(exc))
    try:
        await client.stop()
    except Exception as exc:
        errors.append("stop: " + repr(exc))
    s = client.stats
    print(json.dumps({{"seconds": time.monotonic() - started, "errors": errors, "sent": s.sent,
        "accepted": s.accepted, "failed": s.failed, "peak_rss_mb": {PEAK}}}), flush=True)
asyncio.run(main())
"""

HANDLER_FLUSH = f"""
import json, logging, sys, time
from logpipe.client import LogpipeHandler
url, count, give_up, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
handler = LogpipeHandler(url, "app", give_up_after_s=give_up, timeout_s=timeout, close_timeout_s=60)
log = logging.getLogger("app")
log.propagate = False
log.addHandler(handler)
for n in range(count):
    log.warning("event %d", n)
started = time.monotonic()
handler.flush()
s = handler.stats
print(json.dumps({{"seconds": time.monotonic() - started, "error": None, "sent": s.sent,
    "accepted": s.accepted, "failed": s.failed, "peak_rss_mb": {PEAK}}}), flush=True)
"""

# 20k records of about 31 KB each (a 15 KB message and a 15 KB extra field) to an endpoint
# that refuses every connection.
HANDLER_FLOOD = f"""
import json, logging, sys, time
from logpipe.client import LogpipeHandler
url, count, half = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) // 2
handler = LogpipeHandler(url, "flood", close_timeout_s=1, report_interval_s=1)
log = logging.getLogger("flood")
log.propagate = False
log.addHandler(handler)
started = time.monotonic()
for n in range(count):
    log.warning("%d %s", n, "x" * half, extra={{"payload": "y" * half}})
print(json.dumps({{"seconds": time.monotonic() - started, "dropped": handler.dropped,
    "peak_rss_mb": {PEAK}}}), flush=True)
"""


async def run_program(
    program: str, *args: str | int | float, timeout: float = 240
) -> tuple[dict[str, Any] | None, str, int]:
    """`program` as a process of its own: its last stdout line as JSON, its stderr, its code."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        program,
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    lines = out.decode().strip().splitlines()
    result = orjson.loads(lines[-1]) if lines else None
    assert process.returncode is not None
    return result, err.decode(), process.returncode
