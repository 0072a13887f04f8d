"""Shipping events to logpipe from Python: an async client, a blocking client, a logging handler.

Every event gets its `id` and `timestamp` when it is created (`new_event`, `stamped`),
never when it is sent, so a batch sent again after a 429, a 5xx or a lost connection
lands on the same keys downstream and cannot be stored twice. Buffers are bounded.

This module holds the clients, `Client` (blocking) and `AsyncClient` (asyncio); the
delivery machinery they share is in `logpipe.client.shipping`, and the logging handler in
`logpipe.client.handler`. The public names are re-exported by `logpipe.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from logpipe.client.handler import LogpipeHandler, Scalar
from logpipe.client.shipping import (
    BATCH_BYTES,
    BATCH_EVENTS,
    TIMEOUT_S,
    Shipper,
    ShipStats,
    _BlockingShipper,
    exact,
    take_batch,
)
from logpipe.core.event import new_id

__all__ = [
    "AsyncClient",
    "Client",
    "LogpipeHandler",
    "ShipStats",
    "Shipper",
    "new_event",
    "stamped",
]

log = logging.getLogger(__name__)


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


# --- clients ---------------------------------------------------------------------------------


class Client:
    """A blocking client: `send` buffers, and a full batch, `flush` or `close` ships it.

    Shipping happens in the calling thread and retries until the ingestor answers or
    `give_up_after_s` passes (which bounds `flush` and `close`: each attempt ends by then
    too), so the buffer never holds more than one batch.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        batch_events: int = BATCH_EVENTS,
        batch_bytes: int = BATCH_BYTES,
        give_up_after_s: float = 300.0,
        timeout_s: float = TIMEOUT_S,
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
        data = exact(orjson.dumps(stamped(event)))
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
    it is full, and raises once the background task has ended. An event is given up
    `give_up_after_s` after it was sent, so that bounds `flush`. `stop` ships what is left,
    waiting at most `drain_timeout_s`; what could not be delivered is counted in `stats`
    and logged, never raised.
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
        timeout_s: float = TIMEOUT_S,
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
        self._timeout_s = timeout_s
        self._drain_timeout_s = drain_timeout_s
        self._session = session
        self._owns_session = session is None
        self._buffer: deque[bytes] = deque()
        self._buffered_at: deque[float] = deque()  # when each buffered event was sent
        self._buffered_bytes = 0
        self._unsettled_bytes = 0
        self._flushing = 0
        self._closing = False
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._ended = False
        self._ended_by: BaseException | None = None
        self._waking: asyncio.Future[None] | None = None
        self.stats = ShipStats()

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        shipper = Shipper(
            self._session,
            self._url,
            self._api_key,
            self._give_up_after_s,
            self.stats,
            timeout_s=self._timeout_s,
        )
        self._task = asyncio.create_task(self._run(shipper), name="logpipe-client")
        self._task.add_done_callback(self._task_ended)

    async def stop(self) -> None:
        """Ship what is buffered (within `drain_timeout_s`), then close. Idempotent; what
        was not delivered is in `stats` and the log, not raised."""
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
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise  # stop itself was cancelled
            self._report_ended()
        except Exception:
            # `send` has raised it already, or will to the next caller: here it is told.
            self._report_ended()
        if self._owns_session and self._session is not None:
            await self._session.close()

    def _report_ended(self) -> None:
        log.warning(
            "the background task had ended (%r): %d bytes of events undelivered",
            self._ended_by,
            self._unsettled_bytes,
        )

    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def send(self, event: Mapping[str, Any]) -> None:
        """Buffer one event (id and timestamp fixed now), waiting while the buffer is full."""
        if self._task is None:
            raise RuntimeError("AsyncClient is not started; use `async with` or start()")
        data = exact(orjson.dumps(stamped(event)))
        size = len(data) + 1
        async with self._changed:
            await self._changed.wait_for(
                lambda: (
                    self._closing
                    or self._ended
                    or self._unsettled_bytes == 0
                    or self._unsettled_bytes + size <= self._max_buffered_bytes
                )
            )
            if self._closing:
                raise RuntimeError("AsyncClient is stopped")
            if self._ended:
                error = RuntimeError(
                    f"AsyncClient's background task has ended ({self._ended_by!r})"
                )
                raise error from self._ended_by
            self._buffer.append(data)
            self._buffered_at.append(time.monotonic())
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
                    lambda: self._unsettled_bytes == 0 or self._task is None or self._ended
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
        while (taken := await self._next_batch()) is not None:
            batch, since = taken
            try:
                await shipper.ship_encoded(batch, since)
            except Exception:
                # A bug here must not stop every later send: count the batch, go on.
                log.exception("could not ship %d events", len(batch))
                self.stats.failed += len(batch)
            async with self._changed:
                self._unsettled_bytes -= sum(len(data) + 1 for data in batch)
                self._changed.notify_all()

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """Whoever waits in send or flush learns that the task has ended, however it did
        (cancelled before it ever ran, too)."""
        self._ended_by = asyncio.CancelledError() if task.cancelled() else task.exception()
        self._ended = True
        self._waking = asyncio.ensure_future(self._wake_all())

    async def _wake_all(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _next_batch(self) -> tuple[list[bytes], float] | None:
        """The next batch, once due, and when its oldest event was sent; None once stopped
        with nothing left."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._buffer) or self._closing)
            if not self._buffer:
                return None
            if not self._due():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._linger_s):
                        await self._changed.wait_for(self._due)
            since = self._buffered_at[0]
            batch = take_batch(self._buffer, self._batch_events, self._batch_bytes)
            for _ in batch:
                self._buffered_at.popleft()
            self._buffered_bytes -= sum(len(data) + 1 for data in batch)
            return batch, since
