"""Delivering encoded events to logpipe's POST /ingest, and what each answer means.

`Delivery` holds the retry rules (429, 5xx and no answer are retried with backoff and
jitter as `CLIENT_POLICY` says, Retry-After honoured; anything else is settled) with no
I/O; the async `Shipper` (aiohttp) and the blocking `_BlockingShipper` (one keep-alive
`_Connection`) both loop on it, so they retry alike. Batches are gzipped when large.
Because every event carries its id and timestamp from when it was created, a batch sent
again lands on the same keys downstream and cannot be stored twice.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import logging
import ssl
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
# No count of tries: a batch is retried until the shipper's give-up time.
CLIENT_POLICY = RetryPolicy(
    base=RETRY_BASE_S, cap=RETRY_CAP_S, attempts=None, max_hint=MAX_RETRY_AFTER_S
)


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


def retry_delay(attempt: int, retry_after: str = "", policy: RetryPolicy = CLIENT_POLICY) -> float:
    """Seconds before retry number `attempt`: the policy's backoff, about Retry-After (in
    seconds) when the server sent it."""
    return policy.delay(attempt, float(retry_after) if retry_after.isdigit() else None)


class Delivery:
    """One batch on its way: what each answer means and when to try again. No I/O.

    The async and the blocking shippers both loop on `next_try`, so they retry alike.
    """

    def __init__(
        self,
        count: int,
        stats: ShipStats,
        give_up_after_s: float,
        policy: RetryPolicy = CLIENT_POLICY,
    ) -> None:
        self.count = count
        self.accepted = 0
        self._stats = stats
        self._policy = policy.within(give_up_after_s)
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
        if self._policy.give_up(self._attempt + 1, time.monotonic()):
            log.error(
                "gave up on %d events after %d attempts (%s)",
                self.count,
                self._attempt + 1,
                answer.status or "no connection",
            )
            self._stats.failed += self.count
            return None
        self._attempt += 1
        return retry_delay(self._attempt - 1, answer.retry_after, self._policy)


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
