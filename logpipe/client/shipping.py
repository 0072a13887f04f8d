"""Delivering encoded events to logpipe's POST /ingest, and what each answer means.

`Delivery` holds the retry rules (429, 5xx and no answer are retried with backoff and
jitter as `CLIENT_POLICY` says, Retry-After honoured when it is ASCII delta-seconds or an
HTTP-date; anything else is settled) with no I/O; the async `Shipper` (aiohttp) and the
blocking `_BlockingShipper` (one keep-alive `_Connection`) both loop on it, so every client
path retries alike. Each attempt has one deadline for connecting, sending and reading, and
never outlives the batch's give-up time; an answer is read to `MAX_ANSWER_BYTES` at most.
Batches are gzipped when large. Because every event carries its id and timestamp from when
it was created, a batch sent again lands on the same keys downstream and cannot be stored
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import http.client
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from logpipe.core.retry import RetryPolicy

log = logging.getLogger(__name__)

BATCH_EVENTS = 500
BATCH_BYTES = 1024 * 1024  # well under the ingestor's body limit (5 MiB by default)
GZIP_MIN_BYTES = 1024
RETRY_BASE_S = 0.1
RETRY_CAP_S = 5.0
MAX_RETRY_AFTER_S = 60.0
# The ingestor's answers are a few hundred bytes; a longer one is cut here, not read on.
MAX_ANSWER_BYTES = 64 * 1024
TIMEOUT_S = 10.0  # one attempt: connect, send and read, all told
# No count of tries: a batch is retried until the shipper's give-up time.
CLIENT_POLICY = RetryPolicy(
    base=RETRY_BASE_S, cap=RETRY_CAP_S, attempts=None, max_hint=MAX_RETRY_AFTER_S
)


def exact(data: bytes) -> bytes:
    """`data` in a block of its own size: orjson's output can sit in a block several times
    larger, which a buffer holding many events would keep. (`bytes(data)` is `data`.)"""
    return bytes(memoryview(data))


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
    """Whether an answer is worth another try: none came, 429 (Overloaded) or a 5xx."""
    return status == 0 or status == 429 or 500 <= status <= 599


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for: ASCII delta-seconds or an HTTP-date (`now` is
    epoch seconds); None for anything else, which then counts as no hint at all."""
    value = value.strip()
    if not value or not value.isascii():
        return None  # '³'.isdigit() is true, and float('٣') is 3.0: neither is HTTP
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # an HTTP-date is always GMT
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def retry_delay(attempt: int, retry_after: str = "", policy: RetryPolicy = CLIENT_POLICY) -> float:
    """Seconds before retry number `attempt`: the policy's backoff, about Retry-After when
    the server sent a valid one (at most the policy's `max_hint`)."""
    return policy.delay(attempt, parse_retry_after(retry_after))


class Delivery:
    """One batch on its way: what each answer means and when to try again. No I/O.

    The async and the blocking shippers both loop on `next_try`, so they retry alike. The
    batch is given up `give_up_after_s` after `since` (a `time.monotonic()` instant: when
    its oldest event was buffered; default now), and no attempt or wait runs past that.
    """

    def __init__(
        self,
        count: int,
        stats: ShipStats,
        give_up_after_s: float,
        policy: RetryPolicy = CLIENT_POLICY,
        since: float | None = None,
    ) -> None:
        self.count = count
        self.accepted = 0
        self._stats = stats
        self._policy = policy.within(give_up_after_s, since)
        self._attempt = 0
        stats.sent += count

    def attempt_deadline(self, timeout_s: float | None) -> float:
        """When the next attempt must be over: `timeout_s` from now (None: no limit of its
        own), or the give-up time if that comes first."""
        assert self._policy.deadline is not None
        if timeout_s is None:
            return self._policy.deadline
        return min(time.monotonic() + timeout_s, self._policy.deadline)

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
        delay = retry_delay(self._attempt, answer.retry_after, self._policy)
        # A wait that would end past the give-up time is not worth starting.
        if self._policy.give_up(self._attempt + 1, time.monotonic() + delay):
            log.error(
                "gave up on %d events after %d attempts (%s)",
                self.count,
                self._attempt + 1,
                answer.status or "no answer",
            )
            self._stats.failed += self.count
            return None
        self._attempt += 1
        return delay


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
    the same items downstream instead of doubling them. Each attempt ends within
    `timeout_s` (None: as the session's own timeout says) and by the give-up time.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        api_key: str | None = None,
        give_up_after_s: float = 300.0,
        stats: ShipStats | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self._session = session
        self._url = _ingest_url(url)
        self._auth = _auth(api_key)
        self._give_up_after_s = give_up_after_s
        self._timeout_s = timeout_s
        self.stats = stats if stats is not None else ShipStats()

    async def ship(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Post `events` until answered for good; return how many the ingestor accepted."""
        return await self.ship_encoded([orjson.dumps(event) for event in events])

    async def ship_encoded(self, encoded: Sequence[bytes], since: float | None = None) -> int:
        """Post encoded events until answered for good or given up (`give_up_after_s`
        after `since`, a monotonic instant; default now); how many were accepted."""
        body, headers = pack(encoded)
        delivery = Delivery(len(encoded), self.stats, self._give_up_after_s, since=since)
        while True:
            answer = await self._post(body, headers, delivery.attempt_deadline(self._timeout_s))
            delay = delivery.next_try(answer)
            if delay is None:
                return delivery.accepted
            await asyncio.sleep(delay)

    async def _post(self, body: bytes, headers: dict[str, str], deadline: float) -> Answer:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                async with self._session.post(
                    self._url, data=body, headers={**headers, **self._auth}
                ) as response:
                    data = await _read_bounded(response)
                    return Answer(response.status, data, response.headers.get("Retry-After", ""))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Answer(0, repr(exc).encode())


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """At most `MAX_ANSWER_BYTES` of the body; the connection is dropped if more was coming."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_ANSWER_BYTES and (
        chunk := await response.content.read(MAX_ANSWER_BYTES - size)
    ):
        chunks.append(chunk)
        size += len(chunk)
    if not response.content.at_eof():
        response.close()
    return b"".join(chunks)


class _Cutoff:
    """Shuts a socket down at a deadline, from a timer thread, unless disarmed first.

    A socket timeout bounds each read alone, and a server that sends one byte a second
    never trips it: this bounds the whole exchange. A shut-down socket makes the blocked
    read or write in the other thread return at once.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._armed = True
        self.fired = False
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._cut)
        self._timer.name, self._timer.daemon = "logpipe-cutoff", True
        self._timer.start()

    def _cut(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self.fired = True
            # The plain socket's shutdown, under TLS too: the SSL object stays the reader's.
            # OSError: the peer has already closed it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
        self._timer.cancel()


class _Connection:
    """One keep-alive HTTP/1.1 connection for blocking posts, opened again when it breaks."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._host = parts.netloc
        self._path = parts.path or "/"
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str], deadline: float) -> Answer:
        """POST `body`; the answer, or status 0 if none came before `deadline` (monotonic)."""
        reused = self._conn is not None
        try:
            return self._post_once(body, headers, deadline)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if not reused or time.monotonic() >= deadline:
                return Answer(0, repr(exc).encode())
        # The server may have closed an idle keep-alive connection: one fresh try, at once.
        try:
            return self._post_once(body, headers, deadline)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Answer(0, repr(exc).encode())

    def _post_once(self, body: bytes, headers: dict[str, str], deadline: float) -> Answer:
        conn = self._connect(deadline)
        assert conn.sock is not None
        conn.sock.settimeout(_left(deadline))
        cutoff = _Cutoff(conn.sock, deadline)
        try:
            conn.request("POST", self._path, body, headers)
            response = conn.getresponse()
            data = response.read(MAX_ANSWER_BYTES)
        finally:
            cutoff.disarm()
        if cutoff.fired:
            self.close()
            raise TimeoutError("no full answer before the attempt's deadline")
        # A body left unread (longer than the bound) would be taken for the next answer.
        if response.will_close or not response.isclosed():
            self.close()
        return Answer(response.status, data, response.getheader("Retry-After") or "")

    def _connect(self, deadline: float) -> http.client.HTTPConnection:
        if self._conn is not None and self._conn.sock is not None:
            return self._conn
        # The socket's timeout bounds connecting, and the TLS handshake as a whole (CPython
        # gives the handshake one deadline); the cutoff takes over from there.
        timeout = _left(deadline)
        self._conn = (
            http.client.HTTPConnection(self._host, timeout=timeout)
            if self._tls is None
            else http.client.HTTPSConnection(self._host, timeout=timeout, context=self._tls)
        )
        self._conn.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _left(deadline: float) -> float:
    """Seconds to `deadline` (monotonic); TimeoutError when none are left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's deadline has passed")
    return left


class _BlockingShipper:
    """The blocking twin of Shipper, for the sync Client and the handler's thread."""

    def __init__(
        self, url: str, api_key: str | None, give_up_after_s: float, timeout_s: float
    ) -> None:
        self._connection = _Connection(_ingest_url(url))
        self._auth = _auth(api_key)
        self._give_up_after_s = give_up_after_s
        self._timeout_s = timeout_s
        self.stats = ShipStats()

    def ship_encoded(
        self,
        encoded: Sequence[bytes],
        since: float | None = None,
        pause: Callable[[float], None] = time.sleep,
    ) -> int:
        """Post encoded events until answered for good or given up (`give_up_after_s` after
        `since`, a monotonic instant; default now); `pause` waits between tries."""
        body, headers = pack(encoded)
        headers.update(self._auth)
        delivery = Delivery(len(encoded), self.stats, self._give_up_after_s, since=since)
        while True:
            deadline = delivery.attempt_deadline(self._timeout_s)
            delay = delivery.next_try(self._connection.post(body, headers, deadline))
            if delay is None:
                return delivery.accepted
            pause(delay)

    def close(self) -> None:
        self._connection.close()

    def forget_connection(self) -> None:
        """Drop the connection without a word on it (a forked child shares its socket)."""
        self._connection = _Connection(self._connection.url)
