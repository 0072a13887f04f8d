"""Group commit: pack events from many requests into SQS messages, send, answer each request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from logpipe.aws.errors import classify
from logpipe.core.envelope import (
    COMPRESS_FROM_BYTES,
    ENVELOPE_OVERHEAD,
    MAX_INFLATED_BYTES,
    MessageBody,
    envelope_size,
    pack_message,
)
from logpipe.core.retry import RetryPolicy, retry_entries
from logpipe.errors import EntryFailure, Overloaded, QueueUnavailable
from logpipe.obs import metrics

log = logging.getLogger(__name__)

MAX_BATCH_ENTRIES = 10
# A message is filled with this share of the events its gzipped size allows, so that most
# fit at once; one that does not is split in two.
FILL_SHARE = 0.9
# How much the gzip ratio of the messages sent last weighs in the next fill; the ratio
# assumed before any was measured (logs shrink 3-5x, 2.2-3.7x once in base64).
RATIO_WEIGHT = 0.25
FIRST_RATIO = 2.0
# The events of one message, as the processor inflates them: well within its bound.
MAX_MESSAGE_EVENT_BYTES = MAX_INFLATED_BYTES // 2


SendBatch = Callable[[list[MessageBody]], Awaitable[list[EntryFailure | None]]]


@dataclass(eq=False)
class _Request:
    future: asyncio.Future[None]
    remaining: int


@dataclass(eq=False)
class Pending:
    """One request's events waiting in the buffer: those from `start` on are not yet taken."""

    events: list[bytes]
    request: _Request | None
    start: int = 0
    # Bytes of the events not yet taken, each with its separator (len + 1); -1: not known.
    left: int = -1


@dataclass
class _Message:
    events: list[bytes] = field(default_factory=list)
    # Each request with events in this message, with how many of them.
    requests: list[tuple[_Request | None, int]] = field(default_factory=list)
    size: int = ENVELOPE_OVERHEAD

    def halves(self) -> tuple[_Message, _Message]:
        """The first and the second half of the events, each with its requests' counts."""
        middle = len(self.events) // 2
        first, second = _Message(self.events[:middle]), _Message(self.events[middle:])
        left = middle
        for request, count in self.requests:
            taken = min(count, left)
            if taken:
                first.requests.append((request, taken))
            if count > taken:
                second.requests.append((request, count - taken))
            left -= taken
        first.size, second.size = envelope_size(first.events), envelope_size(second.events)
        return first, second


class MessageSizer:
    """How many events an SQS message of `max_bytes` holds, and the bodies that carry them.

    A large envelope is gzipped (`pack_message`), so a message is filled with the raw bytes
    that the gzip ratio of the last messages lets fit in `max_bytes`. A body that comes out
    larger all the same is split in two, and the bodies are grouped into SendMessageBatch
    calls that SQS takes (at most ten entries and `max_bytes` in all).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._ratio = FIRST_RATIO

    @property
    def fill_bytes(self) -> int:
        """Raw envelope bytes to fill a message with."""
        fill = int(self.max_bytes * max(1.0, self._ratio * FILL_SHARE))
        return min(fill, max(MAX_MESSAGE_EVENT_BYTES, self.max_bytes))

    def pack(self, messages: list[_Message]) -> list[tuple[_Message, MessageBody]]:
        """Each message's body, in order; a message whose body is over `max_bytes` goes as
        two."""
        return [entry for message in messages for entry in self._pack(message)]

    def _pack(self, message: _Message) -> list[tuple[_Message, MessageBody]]:
        body = pack_message(message.events)
        if body.size > self.max_bytes and len(message.events) > 1:
            first, second = message.halves()
            return self._pack(first) + self._pack(second)
        if message.size >= COMPRESS_FROM_BYTES:  # gzipped, or sent plain as it would not shrink
            self._ratio += RATIO_WEIGHT * (message.size / body.size - self._ratio)
        return [(message, body)]

    def batches(
        self, packed: list[tuple[_Message, MessageBody]]
    ) -> list[list[tuple[_Message, MessageBody]]]:
        """The bodies in order, in groups SendMessageBatch takes."""
        groups: list[list[tuple[_Message, MessageBody]]] = []
        total = 0
        for entry in packed:
            size = entry[1].size
            if not groups or len(groups[-1]) == MAX_BATCH_ENTRIES or total + size > self.max_bytes:
                groups.append([])
                total = 0
            groups[-1].append(entry)
            total += size
        return groups


def take_batch(
    buffer: deque[Pending],
    message_bytes: int,
    batch_bytes: int,
    max_entries: int = MAX_BATCH_ENTRIES,
) -> list[_Message]:
    """Take the messages of one SendMessageBatch: each <= message_bytes, all <= batch_bytes.

    SQS caps a whole batch like one message, so with both limits equal (the default) a
    batch under load is one full message; smaller messages share a batch up to ten. The
    buffer holds one entry per request; a request's events may span messages and batches.
    """
    messages: list[_Message] = []
    total = 0
    current = _Message()
    while buffer:
        pending = buffer[0]
        taken, stop = _fill(current, pending, message_bytes, batch_bytes - total)
        if taken:
            current.requests.append((pending.request, taken))
            pending.start += taken
        if pending.start == len(pending.events):
            buffer.popleft()
        if stop == _BATCH_FULL:
            break
        if stop == _MESSAGE_FULL:
            messages.append(current)
            total += current.size
            current = _Message()
            if len(messages) == max_entries:
                break
    if current.events:
        messages.append(current)
    return messages


_MESSAGE_FULL = "message full"
_BATCH_FULL = "batch full"


def _fill(message: _Message, pending: Pending, message_bytes: int, room: int) -> tuple[int, str]:
    """Move a request's waiting events into a message while they fit: how many, and why it
    stopped (the message or the batch is full; "" when the request has none left)."""
    events, size, waiting = message.events, message.size, pending.events
    index = start = pending.start
    if pending.left >= 0:
        # The whole rest fits (the usual case): taken at once, as the loop below would.
        whole = size + (pending.left if events else pending.left - 1)
        if whole <= message_bytes and whole <= room:
            events.extend(waiting[start:] if start else waiting)
            message.size = whole
            pending.left = 0
            return len(waiting) - start, ""
    # Runs once per event: the message's parts are kept in locals, not looked up each time.
    append = events.append
    stop = ""
    for index in range(start, len(waiting)):
        event = waiting[index]
        extra = len(event) + 1 if events else len(event)
        if events and size + extra > message_bytes:
            stop = _MESSAGE_FULL
            break
        if size + extra > room:
            stop = _BATCH_FULL
            break
        append(event)
        size += extra
    else:
        index = len(waiting)
    if pending.left >= 0:
        pending.left -= sum(map(len, waiting[start:index])) + index - start
    message.size = size
    return index - start, stop


class Sender(Protocol):
    """What the ingestor hands accepted events to; `submit` returns once SQS holds them all."""

    async def __aenter__(self) -> Sender: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def submit(self, events: list[bytes]) -> None: ...


class Batcher:
    """Bounded group-commit batcher in front of SendMessageBatch.

    `submit` returns once SQS holds every event it was given, raises Overloaded when the
    in-flight bound is reached, and QueueUnavailable when SQS refused them after retries or
    did not take them within `ack_timeout_s` (then the request's events not yet sent are
    taken out of the buffer, so a client's retry can double only what was already on the
    wire: never when the client sent ids).
    """

    def __init__(
        self,
        send_batch: SendBatch,
        *,
        max_bytes: int,
        linger_s: float,
        concurrency: int,
        max_inflight_bytes: int,
        attempts: int,
        ack_timeout_s: float = 10.0,
    ) -> None:
        self._send_batch = send_batch
        self._sizer = MessageSizer(max_bytes)
        self._linger_s = linger_s
        self._max_inflight_bytes = max_inflight_bytes
        self._policy = RetryPolicy(base=0.1, cap=2.0, attempts=attempts)
        self._ack_timeout_s = ack_timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._buffer: deque[Pending] = deque()
        self._buffered_bytes = 0
        self._inflight_bytes = 0
        self._oldest = 0.0
        self._wake = asyncio.Event()
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        # (deadline, request) of the requests waiting for SQS, in deadline order.
        self._deadlines: deque[tuple[float, _Request]] = deque()
        self._expiry: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="batcher-flush")

    async def stop(self) -> None:
        """Send everything buffered, wait for the sends, refuse new work. Idempotent."""
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    async def __aenter__(self) -> Batcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def inflight_bytes(self) -> int:
        return self._inflight_bytes

    async def submit(self, events: list[bytes]) -> None:
        """Queue encoded events and wait until SQS has accepted all of them."""
        if not events:
            return
        size = sum(map(len, events)) + len(events)
        if self._closing:
            raise Overloaded("the ingestor is shutting down")
        if self._inflight_bytes + size > self._max_inflight_bytes:
            raise Overloaded("too many events are waiting for SQS")
        loop = asyncio.get_running_loop()
        request = _Request(loop.create_future(), remaining=len(events))
        now = loop.time()
        if not self._buffer:
            self._oldest = now
        self._buffer.append(Pending(events, request, left=size))
        self._buffered_bytes += size
        self._inflight_bytes += size
        metrics.inflight_events.inc(len(events))
        self._wake.set()
        # Past its deadline a request's unsent events are withdrawn and its future fails with
        # QueueUnavailable. Every request waits as long, so deadlines come in order: one
        # queue and one timer for all of them, not a timer per request.
        deadlines = self._deadlines
        self._prune()
        deadlines.append((now + self._ack_timeout_s, request))
        if self._expiry is None:
            self._expiry = loop.call_at(now + self._ack_timeout_s, self._expire_due)
        # Not shielded: a client that hangs up cancels only its own wait; its events stay in
        # the batch and are sent and settled as any others (a done future is skipped).
        await request.future

    def _prune(self) -> None:
        """Drop the settled requests at the head of the deadlines; no timer when none wait."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].future.done():
            deadlines.popleft()
        if not deadlines and self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire_due(self) -> None:
        """Withdraw every request past its deadline; wait for the next one's."""
        self._expiry = None
        deadlines = self._deadlines
        now = asyncio.get_running_loop().time()
        while deadlines:
            deadline, request = deadlines[0]
            if not request.future.done():
                if deadline > now:
                    self._expiry = asyncio.get_running_loop().call_at(deadline, self._expire_due)
                    return
                self._withdraw(request)
            deadlines.popleft()

    def _withdraw(self, request: _Request) -> None:
        """Take a request's unsent events out of the buffer; its sent ones settle as usual."""
        kept: deque[Pending] = deque()
        withdrawn = 0
        for pending in self._buffer:
            if pending.request is request:
                unsent = pending.events[pending.start :]
                size = sum(map(len, unsent)) + len(unsent)
                self._buffered_bytes -= size
                self._inflight_bytes -= size
                withdrawn += len(unsent)
            else:
                kept.append(pending)
        self._buffer = kept
        metrics.inflight_events.dec(withdrawn)
        if not request.future.done():
            request.future.set_exception(QueueUnavailable("SQS did not take the events in time"))

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            fill = self._sizer.fill_bytes
            full = self._buffered_bytes + ENVELOPE_OVERHEAD >= fill
            wait = self._oldest + self._linger_s - loop.time()
            if not (full or self._closing) and wait > 0:
                self._wake.clear()
                # A timer that wakes the loop, not wait_for's task per wait.
                timer = loop.call_later(wait, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
                continue
            await self._slots.acquire()
            messages = take_batch(self._buffer, fill, fill)
            self._buffered_bytes -= sum(m.size - ENVELOPE_OVERHEAD + 1 for m in messages)
            self._oldest = loop.time()
            task = asyncio.create_task(self._send(messages))
            self._sends.add(task)
            task.add_done_callback(self._send_done)

    def _send_done(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        self._slots.release()

    async def _send(self, messages: list[_Message]) -> None:
        """Pack the messages (gzip in a worker thread), send them in as many batches as SQS
        needs, and settle each message exactly once."""
        if any(m.size >= COMPRESS_FROM_BYTES for m in messages):
            packed = await asyncio.to_thread(self._sizer.pack, messages)
        else:
            packed = self._sizer.pack(messages)
        await asyncio.gather(*(self._send_batch_of(b) for b in self._sizer.batches(packed)))

    async def _send_batch_of(self, packed: list[tuple[_Message, MessageBody]]) -> None:
        """Send one batch, retrying per message; settle each exactly once."""
        messages = [message for message, _ in packed]
        bodies = [body for _, body in packed]
        settled: set[int] = set()

        async def send(pending: list[int]) -> list[EntryFailure | None]:
            started = time.perf_counter()
            outcomes = await self._send_batch([bodies[i] for i in pending])
            metrics.sqs_batches_sent.inc()
            metrics.sqs_send_seconds.observe(time.perf_counter() - started)
            for index, outcome in zip(pending, outcomes, strict=True):
                if outcome is None or not outcome.retriable:
                    settled.add(index)
                    self._settle(messages[index], _refusal(outcome))
            return outcomes

        outcome = await retry_entries(
            send,
            range(len(messages)),
            self._policy,
            classify,
            what="SendMessageBatch",
            waited=lambda pending, _failure, _delay: metrics.sqs_send_retries.inc(len(pending)),
        )
        for index, failure in outcome.failed:
            if index not in settled:
                self._settle(
                    messages[index], QueueUnavailable(f"SQS is unavailable: {failure.code}")
                )

    def _settle(self, message: _Message, error: Exception | None) -> None:
        self._inflight_bytes -= message.size - ENVELOPE_OVERHEAD + 1
        metrics.inflight_events.dec(len(message.events))
        if error is None:
            metrics.sqs_messages_sent.inc()
            metrics.sqs_events_per_message.observe(len(message.events))
        for request, count in message.requests:
            if request is None:
                continue
            request.remaining -= count
            if request.future.done():
                continue
            if error is not None:
                request.future.set_exception(error)
            elif request.remaining == 0:
                request.future.set_result(None)
        self._prune()


def _refusal(outcome: EntryFailure | None) -> QueueUnavailable | None:
    return None if outcome is None else QueueUnavailable(f"SQS refused: {outcome.code}")
