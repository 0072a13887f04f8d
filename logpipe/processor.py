"""The processor: receive from SQS, write events to DynamoDB, delete what is fully stored."""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from logpipe import heap, metrics
from logpipe.aws import (
    THROTTLE_CODES,
    Clients,
    backoff_delay,
    call_entries,
    error_code,
    is_retriable,
    open_clients,
    queue_url,
)
from logpipe.config import Settings
from logpipe.emf import EmfReporter
from logpipe.lifecycle import run_until_signalled, stop_signals
from logpipe.metrics import serve_metrics
from logpipe.models import (
    EnvelopeError,
    Event,
    Item,
    item_key,
    to_item,
    unpack_envelope,
    write_units,
)
from logpipe.monitor import QueueMonitor, oldest_age_s
from logpipe.reader import ServiceRegistry

log = logging.getLogger(__name__)

BATCH_WRITE_ITEMS = 25
RECEIVE_MESSAGES = 10
MAX_RETRY_DELAY_S = 300


@dataclass(eq=False)
class Tracker:
    """One received message: how many of its events still wait to be stored."""

    message: dict[str, Any]
    pending: int
    failed: bool = False

    @property
    def receive_count(self) -> int:
        return int(self.message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))


@dataclass
class _Write:
    """One item to write, and the messages waiting for it. The item is built when written,
    so only the items of the calls in flight exist at once."""

    event: Event
    key: tuple[str, str]
    trackers: list[Tracker] = field(default_factory=list)


def decode_message(message: dict[str, Any]) -> list[Event]:
    """The events of an SQS message, gzip+base64 bodies included; EnvelopeError if damaged."""
    body: str = message.get("Body", "")
    encoding = message.get("MessageAttributes", {}).get("content-encoding", {})
    if encoding.get("StringValue") == "gzip":
        try:
            body = gzip.decompress(base64.b64decode(body, validate=True)).decode("utf-8")
        except (binascii.Error, OSError, EOFError, UnicodeDecodeError):
            raise EnvelopeError("body is flagged gzip but does not decode") from None
    return unpack_envelope(body)


def _key(item: Item) -> tuple[str, str]:
    return item["pk"]["S"], item["sk"]["S"]


def retry_delay(receive_count: int) -> int:
    """Seconds a message whose events could not all be stored stays hidden: 2, 4, 8, ..."""
    return int(min(2 ** max(receive_count, 1), MAX_RETRY_DELAY_S))


def plan_writes(
    trackers_events: Iterable[tuple[Tracker, list[Event]]], shards: int
) -> list[_Write]:
    """One write per distinct key; an event repeated across messages is written once for all."""
    writes: dict[tuple[str, str], _Write] = {}
    for tracker, events in trackers_events:
        for event in events:
            key = item_key(event, shards)
            write = writes.get(key)
            if write is None:
                write = writes[key] = _Write(event, key)
            else:
                write.event = event
            write.trackers.append(tracker)
    return list(writes.values())


class Processor:
    """Several long-poll receivers sharing a bounded pool of BatchWriteItem calls."""

    receive_messages = RECEIVE_MESSAGES

    def __init__(self, settings: Settings, clients: Clients, queue_url: str) -> None:
        self._settings = settings
        self._sqs = clients.sqs
        self._dynamodb = clients.dynamodb
        self._queue_url = queue_url
        self._writes = asyncio.Semaphore(settings.write_concurrency)
        self._registry = ServiceRegistry(
            clients.dynamodb, settings.table_name, settings.retention_days
        )
        self._stopping = asyncio.Event()
        # Events received and not yet finished; receivers wait while it is over the bound.
        self._inflight = 0
        self._room = asyncio.Condition()

    def stop(self) -> None:
        """Stop receiving; messages already received are still finished."""
        self._stopping.set()

    async def run(self) -> None:
        """Poll with every receiver until stopped, then finish what was received."""
        await asyncio.gather(*(self._poll_loop(n) for n in range(self._settings.pollers)))

    async def run_until_empty(self, idle_rounds: int = 2) -> None:
        """Burst mode: handle messages until `idle_rounds` receives in a row come back empty."""
        idle = 0
        while idle < idle_rounds:
            messages = await self._receive(wait_s=1)
            idle = 0 if messages else idle + 1
            await self.handle(messages)

    async def _poll_loop(self, number: int) -> None:
        failures = 0
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                async with self._room:
                    await self._room.wait_for(
                        lambda: self._inflight < self._settings.max_inflight_events
                    )
                receive = asyncio.create_task(self._receive(self._settings.receive_wait_s))
                await asyncio.wait({receive, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    # Anything SQS hands out to this abandoned call reappears after its timeout.
                    receive.cancel()
                    break
                try:
                    messages = receive.result()
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    failures += 1
                    log.warning("receiver %d: receive failed (%s)", number, error_code(exc))
                    await asyncio.sleep(backoff_delay(failures, base=0.2, cap=10))
                    continue
                failures = 0
                await self.handle(messages)
        finally:
            stop_wait.cancel()

    async def _receive(self, wait_s: int) -> list[dict[str, Any]]:
        response = await self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=self.receive_messages,
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    async def handle(self, messages: list[dict[str, Any]], delete: bool = True) -> None:
        """Store every event of `messages`; delete the messages whose events are all stored."""
        if not messages:
            return
        metrics.messages_received.inc(len(messages))
        metrics.queue_oldest_age.labels("main").set(oldest_age_s(messages, time.time() * 1000))
        decoded: list[tuple[Tracker, list[Event]]] = []
        undecodable: list[Tracker] = []
        for message in messages:
            tracker = Tracker(message, pending=0)
            if tracker.receive_count > 1:
                metrics.messages_redelivered.inc()
            try:
                events = decode_message(message)
            except EnvelopeError as exc:
                log.warning(
                    "message %s is undecodable (receive %d): %s",
                    message.get("MessageId"),
                    tracker.receive_count,
                    exc,
                )
                metrics.messages_undecodable.inc()
                undecodable.append(tracker)
                continue
            tracker.pending = len(events)
            decoded.append((tracker, events))
        writes = plan_writes(decoded, self._settings.shards)
        trackers = [t for t, _ in decoded]
        del decoded  # the items hold what is needed; let the events go
        heartbeat = asyncio.create_task(self._keep_invisible(trackers))
        self._inflight += len(writes)
        try:
            chunks = [
                writes[i : i + BATCH_WRITE_ITEMS] for i in range(0, len(writes), BATCH_WRITE_ITEMS)
            ]
            await asyncio.gather(*(self._write_chunk(chunk) for chunk in chunks))
        finally:
            heartbeat.cancel()
            async with self._room:
                self._inflight -= len(writes)
                self._room.notify_all()
        await self._registry.note({w.event["service"] for w in writes})
        done = [t for t in trackers if not t.failed and t.pending == 0]
        retry = [t for t in trackers if t.failed or t.pending > 0]
        if delete:
            await self._delete(done)
        # Waiting cannot mend an undecodable message: make it visible now, so it reaches the
        # DLQ after maxReceiveCount receives instead of after that many visibility timeouts.
        await self._set_visibility(undecodable, lambda t: 0)
        await self._set_visibility(retry, lambda t: retry_delay(t.receive_count))
        metrics.messages_retried.inc(len(retry))

    async def _write_chunk(self, writes: list[_Write]) -> None:
        """Write up to 25 items, retrying what is unprocessed; isolate an item DynamoDB refuses."""
        table = self._settings.table_name
        items = {w.key: self._item(w.event) for w in writes}
        pending = {w.key: w for w in writes}
        reason = "retries exhausted"
        for attempt in range(self._settings.write_attempts):
            if attempt:
                metrics.write_retries.inc(len(pending))
                await asyncio.sleep(backoff_delay(attempt - 1, base=0.05, cap=5.0))
            request = [{"PutRequest": {"Item": items[key]}} for key in pending]
            try:
                async with self._writes:
                    started = time.perf_counter()
                    response = await self._dynamodb.batch_write_item(RequestItems={table: request})
                    metrics.write_seconds.observe(time.perf_counter() - started)
            except Exception as exc:
                reason = error_code(exc)
                if is_retriable(exc):
                    if reason in THROTTLE_CODES:
                        metrics.write_throttles.inc()
                    continue
                if len(pending) > 1:
                    # One bad item fails the whole call: halve until it stands alone, so the
                    # messages around it are still stored and deleted.
                    halves = list(pending.values())
                    middle = len(halves) // 2
                    await asyncio.gather(
                        self._write_chunk(halves[:middle]), self._write_chunk(halves[middle:])
                    )
                    return
                break
            unprocessed = response.get("UnprocessedItems", {}).get(table, [])
            left = {_key(r["PutRequest"]["Item"]) for r in unprocessed}
            self._record_stored(
                [w for key, w in pending.items() if key not in left],
                sum(write_units(items[key]) for key in pending if key not in left),
            )
            pending = {key: pending[key] for key in left}
            if not pending:
                return
        log.warning(
            "could not store %d items (%s); their messages will be retried",
            len(pending),
            reason,
            extra={"items": len(pending), "reason": reason},
        )
        metrics.write_failures.inc(len(pending))
        for write in pending.values():
            for tracker in write.trackers:
                tracker.failed = True

    def _item(self, event: Event) -> Item:
        return to_item(event, self._settings.shards, self._settings.retention_days)

    def _record_stored(self, writes: list[_Write], units: int) -> None:
        now_ms = time.time() * 1000
        labels: Counter[tuple[str, str]] = Counter()
        for write in writes:
            for tracker in write.trackers:
                tracker.pending -= 1
            labels[(write.event["service"], write.event["level"])] += 1
            ingested_at = write.event.get("ingested_at")
            if isinstance(ingested_at, int):
                metrics.e2e_latency.observe(max(now_ms - ingested_at, 0) / 1000)
        metrics.dynamodb_write_units.inc(units)
        for (service, level), count in labels.items():
            metrics.events_stored.labels(metrics.service_label(service), level).inc(count)

    async def _keep_invisible(self, trackers: list[Tracker]) -> None:
        """Extend the visibility of messages still being written, so no one else gets them."""
        timeout = self._settings.visibility_timeout_s
        while True:
            await asyncio.sleep(max(timeout / 2, 0.5))
            busy = [t for t in trackers if t.pending > 0 and not t.failed]
            await self._set_visibility(busy, lambda t: timeout)

    async def _delete(self, trackers: list[Tracker]) -> None:
        for start in range(0, len(trackers), RECEIVE_MESSAGES):
            group = trackers[start : start + RECEIVE_MESSAGES]
            entries = [
                {"Id": str(i), "ReceiptHandle": t.message["ReceiptHandle"]}
                for i, t in enumerate(group)
            ]
            call = partial(self._sqs.delete_message_batch, QueueUrl=self._queue_url)
            # What is not deleted is redelivered: the same keys are written again, no double.
            left = await call_entries(call, entries, attempts=5, what="DeleteMessageBatch")
            metrics.messages_deleted.inc(len(group) - len(left))

    async def _set_visibility(
        self, trackers: list[Tracker], seconds: Callable[[Tracker], int]
    ) -> None:
        for start in range(0, len(trackers), RECEIVE_MESSAGES):
            group = trackers[start : start + RECEIVE_MESSAGES]
            entries = [
                {
                    "Id": str(i),
                    "ReceiptHandle": t.message["ReceiptHandle"],
                    "VisibilityTimeout": seconds(t),
                }
                for i, t in enumerate(group)
            ]
            call = partial(self._sqs.change_message_visibility_batch, QueueUrl=self._queue_url)
            await call_entries(call, entries, attempts=3, what="ChangeMessageVisibilityBatch")


async def serve(settings: Settings) -> int:
    """The processor role: metrics endpoint, shared clients, receivers, drain on SIGTERM."""
    with stop_signals() as stopping:
        port, stop_metrics = serve_metrics(settings.host, settings.metrics_port)
        try:
            async with AsyncExitStack() as stack:
                pool = settings.write_concurrency + settings.pollers * 2 + 4
                clients = await open_clients(stack, settings, pool=pool)
                url = await queue_url(clients.sqs, settings.queue_name)
                dlq_url = await queue_url(clients.sqs, settings.dlq_name)
                queues = {"main": url, "dlq": dlq_url}
                await stack.enter_async_context(
                    QueueMonitor(clients.sqs, queues, settings.queue_poll_s)
                )
                if settings.emf:
                    await stack.enter_async_context(
                        EmfReporter("processor", settings.emf_interval_s)
                    )
                processor = Processor(settings, clients, url)
                heap.settle()
                if settings.naive:
                    from logpipe.naive import NaiveProcessor

                    processor = NaiveProcessor(settings, clients, url)
                log.info(
                    "processor polling %s with %d receivers; metrics on port %d",
                    settings.queue_name,
                    settings.pollers,
                    port,
                )
                return await run_until_signalled(
                    processor.run, processor.stop, settings.drain_seconds, stopping
                )
        finally:
            stop_metrics()
