"""Shipping events to logpipe from Python: an async client, a blocking client, a logging handler.

Every event gets its `id` and `timestamp` when it is created, never when it is sent, so
a batch sent again after a 429, a 5xx or a lost connection lands on the same keys
downstream and cannot be stored twice. Buffers are bounded; batches are gzipped.

    handler = LogpipeHandler("http://logpipe:8080", service="checkout", api_key=KEY)
    logging.getLogger().addHandler(handler)
    logging.getLogger(__name__).warning("card declined", extra={"order": 42})
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import logging
import os
import random
import re
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from logpipe.models import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTES,
    MAX_EVENT_BYTES,
    MAX_MESSAGE_BYTES,
    new_id,
)

log = logging.getLogger(__name__)

BATCH_EVENTS = 500
BATCH_BYTES = 1024 * 1024  # well under the ingestor's body limit (5 MiB by default)
GZIP_MIN_BYTES = 1024
RETRY_BASE_S = 0.1
RETRY_CAP_S = 5.0
MAX_RETRY_AFTER_S = 60.0
TRUNCATED = "… [truncated]"

Scalar = str | int | float | bool
_HEX = re.compile(r"[0-9a-fA-F]{1,32}")
_DDB_MIN, _DDB_LIMIT = 1e-130, 1e126


def new_event(service: str, level: str, message: str, **attributes: Scalar) -> dict[str, Any]:
    """An event whose id and timestamp are fixed now, so no retry can ever double it."""
    return stamped({"service": service, "level": level, "message": message, **_attrs(attributes)})


def _attrs(attributes: dict[str, Scalar]) -> dict[str, Any]:
    return {"attributes": attributes} if attributes else {}


def stamped(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `event` with `timestamp` (epoch ms) and `id` set now unless it has them."""
    out = dict(event)
    now_ms = time.time_ns() // 1_000_000
    out.setdefault("timestamp", now_ms)
    if "id" not in out:
        out["id"] = new_id(out["timestamp"] if isinstance(out["timestamp"], int) else now_ms)
    return out


def pack(encoded: Sequence[bytes]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a POST /ingest carrying `encoded` events (gzipped if large)."""
    body = b"[" + b",".join(encoded) + b"]"
    headers = {"Content-Type": "application/json"}
    if len(body) >= GZIP_MIN_BYTES:
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return body, headers


def take_batch(buffer: deque[bytes], max_events: int, max_bytes: int) -> list[bytes]:
    """Pop the next batch: at least one event, then up to `max_events` and `max_bytes`."""
    batch = [buffer.popleft()]
    size = len(batch[0]) + 2
    while buffer and len(batch) < max_events and size + len(buffer[0]) + 1 <= max_bytes:
        size += len(buffer[0]) + 1
        batch.append(buffer.popleft())
    return batch


# --- what an answer means ------------------------------------------------------------------


@dataclass
class ShipStats:
    """What happened to the events a shipper was given."""

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Answer:
    """The ingestor's answer to one POST; status 0 when none came (refused, reset, timeout)."""

    status: int
    body: bytes = b""
    retry_after: str = ""


def retriable(status: int) -> bool:
    return status == 0 or status == 429 or 500 <= status <= 599


def retry_delay(attempt: int, retry_after: str = "") -> float:
    """Exponential backoff with full jitter, capped; about Retry-After when the server sent it."""
    backoff = random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2**attempt))
    hinted = min(float(retry_after), MAX_RETRY_AFTER_S) if retry_after.isdigit() else 0.0
    return max(hinted * random.uniform(0.5, 1.0), backoff)


class Delivery:
    """One batch on its way: what each answer means and when to try again. No I/O.

    The async and the blocking shippers both loop on `next_try`, so they retry alike.
    """

    def __init__(self, count: int, stats: ShipStats, give_up_after_s: float) -> None:
        self.count = count
        self.accepted = 0
        self._stats = stats
        self._deadline = time.monotonic() + give_up_after_s
        self._attempt = 0
        stats.sent += count

    def next_try(self, answer: Answer) -> float | None:
        """Seconds to wait before posting the batch again, or None once it is settled."""
        if answer.status == 202:
            self.accepted = _accepted(answer.body, self.count)
            self._stats.accepted += self.accepted
            self._stats.rejected += self.count - self.accepted
            return None
        if not retriable(answer.status):
            reason = answer.body[:200].decode(errors="replace")
            log.warning("ingestor refused %d events (%d): %s", self.count, answer.status, reason)
            self._stats.rejected += self.count
            return None
        if time.monotonic() >= self._deadline:
            log.error(
                "gave up on %d events after %d attempts (%s)",
                self.count,
                self._attempt + 1,
                answer.status or "no connection",
            )
            self._stats.failed += self.count
            return None
        self._attempt += 1
        return retry_delay(self._attempt - 1, answer.retry_after)


def _accepted(body: bytes, count: int) -> int:
    try:
        return int(orjson.loads(body)["accepted"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return count  # a 202 means SQS holds every valid event; the count is a courtesy


def _ingest_url(url: str) -> str:
    return url.rstrip("/") + "/ingest"


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# --- shippers: one batch, retried until settled ---------------------------------------------


class Shipper:
    """Posts batches to /ingest on an aiohttp session; retries 429/5xx/connection errors.

    Because the ids travel with the events, a retry of a batch SQS did accept overwrites
    the same items downstream instead of doubling them.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        api_key: str | None = None,
        give_up_after_s: float = 300.0,
        stats: ShipStats | None = None,
    ) -> None:
        self._session = session
        self._url = _ingest_url(url)
        self._auth = _auth(api_key)
        self._give_up_after_s = give_up_after_s
        self.stats = stats if stats is not None else ShipStats()

    async def ship(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Post `events` until answered for good; return how many the ingestor accepted."""
        return await self.ship_encoded([orjson.dumps(event) for event in events])

    async def ship_encoded(self, encoded: Sequence[bytes]) -> int:
        body, headers = pack(encoded)
        delivery = Delivery(len(encoded), self.stats, self._give_up_after_s)
        while True:
            delay = delivery.next_try(await self._post(body, headers))
            if delay is None:
                return delivery.accepted
            await asyncio.sleep(delay)

    async def _post(self, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            async with self._session.post(
                self._url, data=body, headers={**headers, **self._auth}
            ) as response:
                retry_after = response.headers.get("Retry-After", "")
                return Answer(response.status, await response.read(), retry_after)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Answer(0, repr(exc).encode())


class _Connection:
    """One keep-alive HTTP/1.1 connection for blocking posts, opened again when it breaks."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.url = url
        self.timeout_s = timeout_s
        self._https = parts.scheme == "https"
        self._host = parts.netloc
        self._path = parts.path or "/"
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        reused = self._conn is not None
        try:
            return self._post_once(body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if not reused:
                return Answer(0, repr(exc).encode())
        # The server may have closed an idle keep-alive connection: one fresh try, at once.
        try:
            return self._post_once(body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Answer(0, repr(exc).encode())

    def _post_once(self, body: bytes, headers: dict[str, str]) -> Answer:
        if self._conn is None:
            self._conn = (
                http.client.HTTPSConnection(
                    self._host, timeout=self.timeout_s, context=ssl.create_default_context()
                )
                if self._https
                else http.client.HTTPConnection(self._host, timeout=self.timeout_s)
            )
        self._conn.request("POST", self._path, body, headers)
        response = self._conn.getresponse()
        data = response.read()
        if response.will_close:
            self.close()
        return Answer(response.status, data, response.getheader("Retry-After") or "")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _BlockingShipper:
    """The blocking twin of Shipper, for the sync Client and the handler's thread."""

    def __init__(
        self, url: str, api_key: str | None, give_up_after_s: float, timeout_s: float
    ) -> None:
        self._connection = _Connection(_ingest_url(url), timeout_s)
        self._auth = _auth(api_key)
        self._give_up_after_s = give_up_after_s
        self.stats = ShipStats()

    def ship_encoded(self, encoded: Sequence[bytes]) -> int:
        body, headers = pack(encoded)
        headers.update(self._auth)
        delivery = Delivery(len(encoded), self.stats, self._give_up_after_s)
        while (delay := delivery.next_try(self._connection.post(body, headers))) is not None:
            time.sleep(delay)
        return delivery.accepted

    def close(self) -> None:
        self._connection.close()

    def forget_connection(self) -> None:
        """Drop the connection without a word on it (a forked child shares its socket)."""
        self._connection = _Connection(self._connection.url, self._connection.timeout_s)


# --- clients ---------------------------------------------------------------------------------


class Client:
    """A blocking client: `send` buffers, and a full batch, `flush` or `close` ships it.

    Shipping happens in the calling thread and retries until the ingestor answers (or
    `give_up_after_s` passes), so the buffer never holds more than one batch.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        batch_events: int = BATCH_EVENTS,
        batch_bytes: int = BATCH_BYTES,
        give_up_after_s: float = 300.0,
        timeout_s: float = 10.0,
    ) -> None:
        self._shipper = _BlockingShipper(url, api_key, give_up_after_s, timeout_s)
        self._batch_events = batch_events
        self._batch_bytes = batch_bytes
        self._buffer: list[bytes] = []
        self._buffered_bytes = 2
        self._lock = threading.Lock()

    @property
    def stats(self) -> ShipStats:
        return self._shipper.stats

    def send(self, event: Mapping[str, Any]) -> None:
        """Buffer one event (id and timestamp fixed now); ship the batch once it is full."""
        data = orjson.dumps(stamped(event))
        with self._lock:
            if self._buffer and self._buffered_bytes + len(data) + 1 > self._batch_bytes:
                self._ship()
            self._buffer.append(data)
            self._buffered_bytes += len(data) + 1
            if len(self._buffer) >= self._batch_events:
                self._ship()

    def flush(self) -> int:
        """Ship what is buffered; how many events the ingestor accepted."""
        with self._lock:
            return self._ship()

    def close(self) -> None:
        self.flush()
        self._shipper.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ship(self) -> int:
        batch, self._buffer, self._buffered_bytes = self._buffer, [], 2
        return self._shipper.ship_encoded(batch) if batch else 0


class AsyncClient:
    """An asyncio client: `send` buffers, a background task ships batches as they fill.

    The buffer is bounded in bytes (events buffered or being shipped); `send` waits while
    it is full. `stop` ships what is left, waiting at most `drain_timeout_s`.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        batch_events: int = BATCH_EVENTS,
        batch_bytes: int = BATCH_BYTES,
        linger_s: float = 0.2,
        max_buffered_bytes: int = 16 * 1024 * 1024,
        give_up_after_s: float = 300.0,
        drain_timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._batch_events = batch_events
        self._batch_bytes = batch_bytes
        self._linger_s = linger_s
        self._max_buffered_bytes = max_buffered_bytes
        self._give_up_after_s = give_up_after_s
        self._drain_timeout_s = drain_timeout_s
        self._session = session
        self._owns_session = session is None
        self._buffer: deque[bytes] = deque()
        self._buffered_bytes = 0
        self._unsettled_bytes = 0
        self._flushing = 0
        self._closing = False
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.stats = ShipStats()

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        shipper = Shipper(
            self._session, self._url, self._api_key, self._give_up_after_s, self.stats
        )
        self._task = asyncio.create_task(self._run(shipper), name="logpipe-client")

    async def stop(self) -> None:
        """Ship what is buffered (within `drain_timeout_s`), then close. Idempotent."""
        if self._task is None or self._closing:
            return
        async with self._changed:
            self._closing = True
            self._changed.notify_all()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._drain_timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            log.warning("stopped with %d bytes of events undelivered", self._unsettled_bytes)
        if self._owns_session and self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def send(self, event: Mapping[str, Any]) -> None:
        """Buffer one event (id and timestamp fixed now), waiting while the buffer is full."""
        if self._task is None:
            raise RuntimeError("AsyncClient is not started; use `async with` or start()")
        data = orjson.dumps(stamped(event))
        size = len(data) + 1
        async with self._changed:
            await self._changed.wait_for(
                lambda: (
                    self._closing
                    or self._unsettled_bytes == 0
                    or self._unsettled_bytes + size <= self._max_buffered_bytes
                )
            )
            if self._closing:
                raise RuntimeError("AsyncClient is stopped")
            self._buffer.append(data)
            self._buffered_bytes += size
            self._unsettled_bytes += size
            if self._due():
                self._changed.notify_all()

    async def flush(self) -> None:
        """Ship everything sent so far; return once the ingestor has answered for it."""
        async with self._changed:
            self._flushing += 1
            self._changed.notify_all()
            try:
                await self._changed.wait_for(
                    lambda: self._unsettled_bytes == 0 or self._task is None or self._task.done()
                )
            finally:
                self._flushing -= 1

    def _due(self) -> bool:
        return bool(
            len(self._buffer) >= self._batch_events
            or self._buffered_bytes >= self._batch_bytes
            or self._closing
            or self._flushing
        )

    async def _run(self, shipper: Shipper) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._buffer) or self._closing)
                if not self._buffer:
                    return
                if not self._due():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._linger_s):
                            await self._changed.wait_for(self._due)
                batch = take_batch(self._buffer, self._batch_events, self._batch_bytes)
                size = sum(len(data) + 1 for data in batch)
                self._buffered_bytes -= size
            await shipper.ship_encoded(batch)
            async with self._changed:
                self._unsettled_bytes -= size
                self._changed.notify_all()


# --- stdlib logging --------------------------------------------------------------------------


class LogpipeHandler(logging.Handler):
    """A logging handler that ships records to logpipe from a background thread.

    `emit` never waits for the network: a record is encoded and put in a bounded buffer,
    or dropped and counted in `dropped` when the buffer is full (the ingestor is down or
    slow). A daemon thread ships batches, retrying with the same ids. `flush` and `close`
    (logging.shutdown calls both at interpreter exit) ship what is left, each waiting at
    most `close_timeout_s`.
    """

    def __init__(
        self,
        url: str,
        service: str,
        *,
        api_key: str | None = None,
        level: int = logging.NOTSET,
        capacity: int = 10_000,
        batch_events: int = BATCH_EVENTS,
        batch_bytes: int = BATCH_BYTES,
        flush_interval_s: float = 1.0,
        close_timeout_s: float = 5.0,
        give_up_after_s: float = 300.0,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__(level)
        self.service = service
        self._shipper = _BlockingShipper(url, api_key, give_up_after_s, timeout_s)
        self._capacity = capacity
        self._batch_events = batch_events
        self._batch_bytes = batch_bytes
        self._flush_interval_s = flush_interval_s
        self._close_timeout_s = close_timeout_s
        self._ready = threading.Condition(threading.Lock())
        self._buffer: deque[bytes] = deque()
        self._unsettled = 0
        self._flushing = 0
        self._closing = False
        self._dropped = 0
        self._thread = self._start_thread()
        if hasattr(os, "register_at_fork"):
            after_fork = weakref.WeakMethod(self._after_fork_in_child)
            os.register_at_fork(after_in_child=lambda: _call(after_fork))

    @property
    def dropped(self) -> int:
        """Records dropped because the buffer was full (or the handler closed)."""
        return self._dropped

    @property
    def stats(self) -> ShipStats:
        return self._shipper.stats

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self._thread:
            return  # the shipper's own warnings would feed the buffer they are about
        try:
            data = encode_record(record, self.service, self.format(record))
        except Exception:
            self.handleError(record)
            return
        with self._ready:
            if self._closing or len(self._buffer) >= self._capacity:
                self._dropped += 1
                return
            self._buffer.append(data)
            self._unsettled += 1
            if len(self._buffer) >= self._batch_events:
                self._ready.notify_all()

    def flush(self) -> None:
        """Ship what is buffered; wait for the answers, at most `close_timeout_s`."""
        with self._ready:
            self._flushing += 1
            self._ready.notify_all()
            try:
                self._ready.wait_for(
                    lambda: self._unsettled == 0 or not self._thread.is_alive(),
                    self._close_timeout_s,
                )
            finally:
                self._flushing -= 1

    def close(self) -> None:
        """Ship what is left (at most `close_timeout_s`), then stop the thread. Idempotent."""
        with self._ready:
            closing, self._closing = self._closing, True
            self._ready.notify_all()
        if not closing:
            self._thread.join(self._close_timeout_s)
            if self._thread.is_alive():
                log.warning("closed with %d log records undelivered", self._unsettled)
            else:
                self._shipper.close()
        super().close()

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="logpipe-handler", daemon=True)
        thread.start()
        return thread

    def _after_fork_in_child(self) -> None:
        # A forked worker (gunicorn, multiprocessing) has no shipping thread and may hold
        # a lock the parent's thread had taken: start afresh; the parent ships its buffer.
        self._ready = threading.Condition(threading.Lock())
        self._buffer.clear()
        self._unsettled = 0
        self._shipper.forget_connection()
        if not self._closing:
            self._thread = self._start_thread()

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._shipper.ship_encoded(batch)
            except Exception:
                # A bug here must not silence every later record: count the batch, go on.
                log.exception("could not ship %d log records", len(batch))
                self._shipper.stats.failed += len(batch)
            with self._ready:
                self._unsettled -= len(batch)
                self._ready.notify_all()

    def _next_batch(self) -> list[bytes] | None:
        with self._ready:
            self._ready.wait_for(lambda: bool(self._buffer) or self._closing)
            if not self._buffer:
                return None
            self._ready.wait_for(self._due, self._flush_interval_s)
            return take_batch(self._buffer, self._batch_events, self._batch_bytes)

    def _due(self) -> bool:
        return len(self._buffer) >= self._batch_events or self._closing or bool(self._flushing)


def _call(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()


_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "otelTraceID",
    "otelSpanID",
    "otelTraceSampled",
    "otelServiceName",
}


def level_of(levelno: int) -> str:
    """The schema level of a stdlib logging level (custom levels round down)."""
    for threshold, name in (
        (logging.CRITICAL, "fatal"),
        (logging.ERROR, "error"),
        (logging.WARNING, "warn"),
        (logging.INFO, "info"),
        (logging.DEBUG, "debug"),
    ):
        if levelno >= threshold:
            return name
    return "trace"


def encode_record(record: logging.LogRecord, service: str, message: str) -> bytes:
    """A log record as an encoded event, cut to the schema's limits rather than refused."""
    ms = int(record.created * 1000)
    event: dict[str, Any] = {
        "id": new_id(ms),
        "service": service,
        "level": level_of(record.levelno),
        "message": clip(message, MAX_MESSAGE_BYTES),
        "timestamp": ms,
        "attributes": record_attributes(record),
    }
    # Set by opentelemetry-instrumentation-logging inside a span; all zeros outside one.
    for name, field in (("trace_id", "otelTraceID"), ("span_id", "otelSpanID")):
        value = getattr(record, field, None)
        if isinstance(value, str) and _HEX.fullmatch(value) and value.strip("0"):
            event[name] = value
    data = orjson.dumps(event)
    if len(data) > MAX_EVENT_BYTES:
        event["attributes"] = {"logger.name": record.name, "logpipe.attributes_dropped": True}
        data = orjson.dumps(event)
    return data


def record_attributes(record: logging.LogRecord) -> dict[str, Scalar]:
    """Where the record came from, plus the `extra=` fields, as flat attributes."""
    attributes: dict[str, Scalar] = {
        "logger.name": record.name,
        "code.function.name": record.funcName or "",
        "code.file.path": record.pathname,
        "code.line.number": record.lineno,
        "thread.name": record.threadName or "",
        "process.pid": record.process or 0,
    }
    if record.exc_info and record.exc_info[0] is not None:
        attributes["exception.type"] = record.exc_info[0].__name__
    for key, value in vars(record).items():
        if len(attributes) >= MAX_ATTRIBUTES:
            break
        if key not in _RECORD_FIELDS and 1 <= len(key) <= MAX_ATTRIBUTE_KEY_CHARS:
            attributes[key] = _scalar(value)
    return attributes


def _scalar(value: object) -> Scalar:
    if isinstance(value, str | bool):
        return value
    if isinstance(value, int) and abs(value) < 10**38:
        return value
    if isinstance(value, float) and (value == 0 or _DDB_MIN <= abs(value) < _DDB_LIMIT):
        return value  # what DynamoDB can store as a number (NaN and Inf are not)
    return repr(value)


def clip(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, marked as truncated when cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    room = max_bytes - len(TRUNCATED.encode())
    return data[:room].decode("utf-8", "ignore") + TRUNCATED
