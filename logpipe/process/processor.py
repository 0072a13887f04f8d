"""The processor: receive from SQS, write events to DynamoDB, delete what is fully stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from operator import itemgetter, methodcaller
from typing import Any

from botocore.exceptions import ClientError

from logpipe import heap
from logpipe.aws.bootstrap import queue_url, table_shards
from logpipe.aws.calls import call_entries
from logpipe.aws.clients import ClientHook, Clients, open_clients
from logpipe.aws.errors import cancellation_reasons, classify, error_code, is_retriable
from logpipe.aws.monitor import QueueMonitor, oldest_age_s
from logpipe.aws.registry import ServiceRegistry
from logpipe.config import Settings
from logpipe.core.block import (
    Block,
    item_bytes,
    items_of,
    make_blocks,
    split,
    write_units,
)
from logpipe.core.envelope import (
    EnvelopeError,
    dead_letter_body,
    message_body,
    unpack_checked,
    unpack_envelope,
)
from logpipe.core.event import ASSIGNED_TIMESTAMP, Event, Item
from logpipe.core.retry import RetryPolicy, retry_entries
from logpipe.errors import EntryFailure
from logpipe.lifecycle import run_until_signalled, stop_signals
from logpipe.obs import metrics
from logpipe.obs.emf import EmfReporter
from logpipe.obs.metrics import serve_metrics

log = logging.getLogger(__name__)

BATCH_WRITE_ITEMS = 25
# A block is three items (body, summary, shared summary): a BatchWriteItem carries 8 blocks.
BATCH_WRITE_BLOCKS = BATCH_WRITE_ITEMS // 3
RECEIVE_MESSAGES = 10
MAX_RETRY_DELAY_S = 300
WRITE_BACKOFF_CAP_S = 5.0
# Of the drain deadline, the part kept for handing unfinished messages back to SQS.
RELEASE_MARGIN_S = 3.0
# The first timestamp given to a client's id without one, kept this long for its retries,
# spread over this many partitions of each service (a transaction's writes count against
# each partition's 1,000 write units a second, two units an item).
FIRST_TIMESTAMP_PREFIX = "_first#"
FIRST_TIMESTAMP_TTL_S = 86400
FIRST_TIMESTAMP_PARTITIONS = 16
# TransactWriteItems takes at most 100 actions.
TRANSACT_ITEMS = 100
# A claim a transaction cancelled only because another claim of it failed.
COMPANY = EntryFailure("CancelledWithOthers", retriable=True)
DLQ_REASON_CHARS = 256
# Writes are retried until the round's horizon (LOGPIPE_RETRY_HORIZON_S), not a count.
WRITE_POLICY = RetryPolicy(base=0.05, cap=WRITE_BACKOFF_CAP_S, attempts=None)
# A receiver whose receives fail waits longer each time, and never gives up.
RECEIVE_POLICY = RetryPolicy(base=0.2, cap=10.0, attempts=None)
# DynamoDB leaves items unprocessed when their partition is over its throughput.
UNPROCESSED = EntryFailure("UnprocessedItems", retriable=True, throttled=True)
# (service, level) pairs whose counters a processor keeps at hand; more are looked up.
MAX_STORED_COUNTERS = 4096
_SERVICE = itemgetter("service")
_LEVEL = itemgetter("level")
_ASSIGNED = methodcaller("get", ASSIGNED_TIMESTAMP)
_INGESTED_AT = methodcaller("get", "ingested_at")


@dataclass(eq=False)
class Tracker:
    """One received message: how many of its events still wait to be stored."""

    message: dict[str, Any]
    pending: int = 0
    failed: bool = False
    # Deleted or handed back to SQS: no more heartbeats, nothing to hand back at exit.
    finished: bool = False

    @property
    def receive_count(self) -> int:
        return int(self.message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))


@dataclass(slots=True)
class _Write:
    """One block to write, and the messages waiting for it. Its items are built when
    written, so only the items of the calls in flight exist at once."""

    block: Block
    trackers: list[Tracker] = field(default_factory=list)


# A message and its storable events.
_Decoded = tuple[Tracker, list[Event]]


@dataclass
class _Round:
    """What the writes of one `handle` share: when retrying stops, and what DynamoDB refused."""

    policy: RetryPolicy
    refused: list[tuple[_Write, str]] = field(default_factory=list)


@dataclass
class _DeadLetter:
    """An event that can never be stored, why, and the messages that wait for it to leave."""

    event: object
    reason: str
    trackers: list[Tracker]


def decode_message(message: dict[str, Any]) -> list[Event]:
    """Every event of an SQS message; EnvelopeError if the body or any event is damaged."""
    return unpack_envelope(message_body(message))


def split_message(message: dict[str, Any]) -> tuple[list[Event], list[tuple[object, str]]]:
    """The storable events of a message, and each other event with why it cannot be stored;
    EnvelopeError when the body is not an envelope at all."""
    good, _, bad = unpack_checked(message_body(message), 1, 1)
    return good, bad


@dataclass(slots=True)
class _Claim:
    """The first timestamp of one (service, id): the earliest one proposed in this round,
    the events that take it, and the one stored, once known."""

    key: tuple[str, str]
    proposed: int
    held: list[tuple[Tracker, Event]] = field(default_factory=list)
    first: int | None = None


def _claims(decoded: list[_Decoded]) -> list[_Claim]:
    """One claim per (service, id) of the events whose timestamp was assigned."""
    claims: dict[tuple[str, str], _Claim] = {}
    for tracker, events in decoded:
        for event in filter(_ASSIGNED, events):
            key = (event["service"], event["id"])
            claim = claims.get(key)
            if claim is None:
                claim = claims[key] = _Claim(key, event["timestamp"])
            claim.proposed = min(claim.proposed, event["timestamp"])
            claim.held.append((tracker, event))
    return list(claims.values())


def first_timestamp_partition(service: str, event_id: str) -> str:
    """The partition key of an id's first timestamp: a stable hash of the id picks one of
    FIRST_TIMESTAMP_PARTITIONS per service, the same in every process."""
    shard = zlib.crc32(event_id.encode("utf-8", "surrogatepass")) % FIRST_TIMESTAMP_PARTITIONS
    return f"{FIRST_TIMESTAMP_PREFIX}{service}#{shard}"


def _key(item: Item) -> tuple[str, str]:
    return item["pk"]["S"], item["sk"]["S"]


def redelivery_delay(receive_count: int) -> int:
    """Seconds a message whose events could not all be stored stays hidden: 2, 4, 8, ..."""
    return int(min(2 ** max(min(receive_count, 16), 1), MAX_RETRY_DELAY_S))


def plan_writes(
    trackers_events: Iterable[tuple[Tracker, list[Event]]],
) -> tuple[list[_Write], list[_DeadLetter]]:
    """The blocks of each message's events, one write per distinct block (the same block
    of two messages is written once for both), and the events no block can hold."""
    writes: dict[str, _Write] = {}
    dead: list[_DeadLetter] = []
    for tracker, events in trackers_events:
        blocks, refused = make_blocks(events)
        dead.extend(_DeadLetter(event, reason, [tracker]) for event, reason in refused)
        for block in blocks:
            write = writes.get(block.digest)
            if write is None:
                writes[block.digest] = _Write(block, [tracker])
            else:
                write.trackers.append(tracker)
    return list(writes.values()), dead


def _dead_letter_entries(dead: list[_DeadLetter]) -> list[dict[str, Any]]:
    """One SendMessageBatch entry per dead letter: the event and why, as body and attribute."""
    return [
        {
            "Id": str(n),
            "MessageBody": dead_letter_body(letter.event, letter.reason),
            "MessageAttributes": {
                "reason": {"DataType": "String", "StringValue": _attribute_text(letter.reason)}
            },
        }
        for n, letter in enumerate(dead)
    ]


def _attribute_text(reason: str) -> str:
    """A reason as an SQS message attribute takes it: printable ASCII, at most 256 chars."""
    return "".join(c if " " <= c <= "~" else "?" for c in reason[:DLQ_REASON_CHARS]) or "?"


class Processor:
    """Several long-poll receivers sharing a bounded pool of BatchWriteItem calls."""

    receive_messages = RECEIVE_MESSAGES

    def __init__(
        self, settings: Settings, clients: Clients, queue_url: str, dlq_url: str | None = None
    ) -> None:
        self._settings = settings
        self._sqs = clients.sqs
        self._dynamodb = clients.dynamodb
        self._queue_url = queue_url
        self._dlq_url = dlq_url
        self._writes = asyncio.Semaphore(settings.write_concurrency)
        self._registry = ServiceRegistry(
            clients.dynamodb, settings.table_name, settings.retention_days
        )
        self._stopping = asyncio.Event()
        # Events received and not yet finished; receivers wait while it is over the bound.
        self._inflight = 0
        self._room = asyncio.Event()
        # Messages received and not yet deleted or handed back.
        self._held: set[Tracker] = set()
        # The events_stored child per (service, level) seen: labels() checks its arguments
        # on every call, which cost as much as the rest of counting a batch.
        self._stored_counters: dict[tuple[str, str], Any] = {}

    def stop(self) -> None:
        """Stop receiving; messages already received are still finished."""
        self._stopping.set()

    async def run(self) -> None:
        """Poll with every receiver until stopped; then finish what was received within the
        drain deadline, and hand back to SQS (visibility 0) whatever is still unfinished."""
        pollers = [asyncio.create_task(self._poll_loop(n)) for n in range(self._settings.pollers)]
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([*pollers, stopping], return_when=asyncio.FIRST_COMPLETED)
            self._stopping.set()  # a receiver that failed stops the others too
            drain = max(
                self._settings.drain_seconds - RELEASE_MARGIN_S, self._settings.drain_seconds / 2
            )
            _, unfinished = await asyncio.wait(pollers, timeout=drain)
            if unfinished:
                log.warning(
                    "drain deadline: %d receivers still busy, stopping them", len(unfinished)
                )
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
        finally:
            stopping.cancel()
            for task in pollers:
                task.cancel()
            await self.release()
        for task in pollers:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def run_until_empty(self, idle_rounds: int = 2) -> None:
        """Burst mode: handle messages until `idle_rounds` receives in a row come back empty."""
        idle = 0
        while idle < idle_rounds:
            messages = await self._receive(wait_s=1)
            idle = 0 if messages else idle + 1
            await self.handle(messages)

    async def release(self) -> None:
        """Make every message received and not finished visible again at once (SIGTERM)."""
        held = [t for t in self._held if not t.finished]
        self._held.clear()
        if held:
            log.warning("handing %d unfinished messages back to the queue", len(held))
            await self._hand_back(held, lambda t: 0)

    async def _poll_loop(self, number: int) -> None:
        failures = 0
        while await self._wait_for_room():
            try:
                # Never cancelled on stop: what SQS hands this call is handled, not stranded.
                messages = await self._receive(self._settings.receive_wait_s)
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                failures += 1
                log.warning("receiver %d: receive failed (%s)", number, error_code(exc))
                with contextlib.suppress(TimeoutError):
                    delay = RECEIVE_POLICY.delay(failures)
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            failures = 0
            await self.handle(messages)

    async def _wait_for_room(self) -> bool:
        """Wait while the in-flight bound is reached; False once stopping."""
        while self._inflight >= self._settings.max_inflight_events and not self._stopping.is_set():
            self._room.clear()
            waits = {
                asyncio.ensure_future(self._room.wait()),
                asyncio.ensure_future(self._stopping.wait()),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return not self._stopping.is_set()

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
        """Store every event of `messages`; delete the messages whose events are all stored.

        Every message stays hidden (heartbeat) until it is deleted or handed back.
        """
        if not messages:
            return
        metrics.messages_received.inc(len(messages))
        metrics.queue_oldest_age.labels("main").set(oldest_age_s(messages, time.time() * 1000))
        trackers = [Tracker(message) for message in messages]
        metrics.messages_redelivered.inc(sum(t.receive_count > 1 for t in trackers))
        self._held.update(trackers)
        heartbeat = asyncio.create_task(self._keep_invisible(trackers))
        try:
            await self._settle(trackers, delete)
        finally:
            heartbeat.cancel()
            self._held.difference_update([t for t in trackers if t.finished])

    async def _settle(self, trackers: list[Tracker], delete: bool) -> None:
        """Decode, dead-letter what can never be stored, write the rest, then delete the
        messages whose events are all stored and hand the others back."""
        round_ = _Round(WRITE_POLICY.within(self._settings.retry_horizon_s))
        decoded, undecodable, dead = self._decode(trackers)
        await self._dead_letter(dead)
        await self._assign_first_timestamps(decoded, round_)
        writes, unencodable = plan_writes(d for d in decoded if not d[0].failed)
        del decoded  # the writes hold what is needed; let the events go
        await self._dead_letter(unencodable)
        await self._write(writes, round_)
        await self._dead_letter(
            [_DeadLetter(w.block.events[0], r, w.trackers) for w, r in round_.refused]
        )
        await self._registry.note({w.block.service for w in writes})
        await self._finish(trackers, undecodable, delete)

    async def _write(self, writes: list[_Write], round_: _Round) -> None:
        """Write in concurrent BatchWriteItem calls of 8 blocks; their events count as in
        flight."""
        events = sum(len(w.block.events) for w in writes)
        self._inflight += events
        try:
            step = BATCH_WRITE_BLOCKS
            chunks = [writes[i : i + step] for i in range(0, len(writes), step)]
            await asyncio.gather(*(self._write_chunk(chunk, round_) for chunk in chunks))
        finally:
            self._inflight -= events
            self._room.set()

    async def _finish(
        self, trackers: list[Tracker], undecodable: list[Tracker], delete: bool
    ) -> None:
        """Delete what is stored; hand back what is not, undecodable messages at once."""
        done = [t for t in trackers if not t.failed and t.pending == 0 and t not in undecodable]
        retry = [t for t in trackers if t.failed or t.pending > 0]
        if delete:
            await self._delete(done)
        # Waiting cannot mend an undecodable message: make it visible now, so it reaches the
        # DLQ after maxReceiveCount receives instead of after that many visibility timeouts.
        await self._hand_back(undecodable, lambda t: 0)
        await self._hand_back(retry, lambda t: redelivery_delay(t.receive_count))
        metrics.messages_retried.inc(len(retry))

    def _decode(
        self, trackers: list[Tracker]
    ) -> tuple[list[_Decoded], list[Tracker], list[_DeadLetter]]:
        """Each message's storable events with a bound on each one's item size; the
        undecodable messages; the events to dead-letter."""
        decoded: list[_Decoded] = []
        undecodable: list[Tracker] = []
        dead: list[_DeadLetter] = []
        shards, retention_days = self._settings.shards, self._settings.retention_days
        for tracker in trackers:
            try:
                body = message_body(tracker.message)
                events, _, bad = unpack_checked(body, shards, retention_days)
            except EnvelopeError as exc:
                log.warning(
                    "message %s is undecodable (receive %d): %s",
                    tracker.message.get("MessageId"),
                    tracker.receive_count,
                    exc,
                )
                metrics.messages_undecodable.inc()
                undecodable.append(tracker)
                continue
            tracker.pending = len(events) + len(bad)
            dead.extend(_DeadLetter(event, reason, [tracker]) for event, reason in bad)
            decoded.append((tracker, events))
        return decoded, undecodable, dead

    async def _dead_letter(self, dead: list[_DeadLetter]) -> None:
        """Send each event that can never be stored to the DLQ on its own, with its reason;
        its messages count it as settled once the DLQ holds it."""
        if not dead:
            return
        if self._dlq_url is None:
            self._dlq_url = await queue_url(self._sqs, self._settings.dlq_name)
        failed: set[str] = set()
        for group in self._dlq_batches(_dead_letter_entries(dead)):
            call = partial(self._sqs.send_message_batch, QueueUrl=self._dlq_url)
            left = await call_entries(call, group, attempts=5, what="SendMessageBatch (DLQ)")
            failed.update(e["Id"] for e in left)
        for n, letter in enumerate(dead):
            for tracker in letter.trackers:
                if str(n) in failed:
                    tracker.failed = True
                else:
                    tracker.pending -= 1
        sent = len(dead) - len(failed)
        metrics.events_dead_lettered.inc(sent)
        log.warning(
            "sent %d events that can never be stored to the DLQ (%d failed); first: %s",
            sent,
            len(failed),
            dead[0].reason,
            extra={"events": sent, "reason": dead[0].reason},
        )

    def _dlq_batches(self, entries: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
        """Entries in SendMessageBatch calls of at most 10 and LOGPIPE_SQS_MAX_BYTES."""
        limit = self._settings.sqs_max_bytes
        group: list[dict[str, Any]] = []
        size = 0
        for entry in entries:
            length = len(entry["MessageBody"].encode("utf-8", "surrogatepass")) + 300
            if group and (len(group) == RECEIVE_MESSAGES or size + length > limit):
                yield group
                group, size = [], 0
            group.append(entry)
            size += length
        if group:
            yield group

    async def _assign_first_timestamps(self, decoded: list[_Decoded], round_: _Round) -> None:
        """Give each event whose client sent an id and no timestamp the first timestamp ever
        assigned to that id, so a client's retry is the same event. Claims go in
        transactions of up to 100; the messages of a claim that cannot be settled fail
        (they are retried)."""
        pending = _claims(decoded)
        if not pending:
            return
        chunks = [pending[i : i + TRANSACT_ITEMS] for i in range(0, len(pending), TRANSACT_ITEMS)]
        outcomes = await asyncio.gather(
            *(
                retry_entries(
                    self._claim_first,
                    chunk,
                    round_.policy,
                    classify,
                    what="TransactWriteItems (first timestamps)",
                    waited=self._note_wait,
                )
                for chunk in chunks
            )
        )
        for outcome in outcomes:
            for claim, _ in outcome.failed:
                for tracker, _ in claim.held:
                    tracker.failed = True
        for claim in pending:
            if claim.first is not None:
                for _, event in claim.held:
                    event["timestamp"] = claim.first

    async def _claim_first(self, claims: list[_Claim]) -> list[EntryFailure | None]:
        """Put each claim's timestamp unless its id has one already, in one transaction;
        per claim, None once its first timestamp is known, else why not.

        A transaction is all or nothing: when some ids have a timestamp already, DynamoDB
        cancels it and returns each stored timestamp (ALL_OLD) in its reason; the claims it
        cancelled only for company are sent again at once in a new transaction. Any other
        reason (conflict, throttling) goes back to the retry policy, with the company."""
        todo = claims
        failures: dict[int, EntryFailure] = {}
        while todo:
            async with self._writes:
                try:
                    await self._dynamodb.transact_write_items(
                        TransactItems=[self._first_put(claim) for claim in todo]
                    )
                except ClientError as exc:
                    reasons = cancellation_reasons(exc, len(todo))
                    if reasons is None:
                        raise
                else:
                    for claim in todo:
                        claim.first = claim.proposed
                    break
            again: list[_Claim] = []
            for claim, reason in zip(todo, reasons, strict=True):
                if reason.code == "ConditionalCheckFailed" and reason.stored is not None:
                    claim.first = int(reason.stored["ts"]["N"])
                elif reason.code == "None":
                    again.append(claim)
                else:
                    failures[id(claim)] = reason.failure
            if failures:
                failures.update((id(claim), COMPANY) for claim in again)
                break
            todo = again
        return [None if claim.first is not None else failures[id(claim)] for claim in claims]

    def _first_put(self, claim: _Claim) -> dict[str, Any]:
        service, event_id = claim.key
        return {
            "Put": {
                "TableName": self._settings.table_name,
                "Item": {
                    "pk": {"S": first_timestamp_partition(service, event_id)},
                    "sk": {"S": event_id},
                    "ts": {"N": str(claim.proposed)},
                    "expires_at": {"N": str(int(time.time()) + FIRST_TIMESTAMP_TTL_S)},
                },
                "ConditionExpression": "attribute_not_exists(pk)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    @staticmethod
    def _classify_write(exc: Exception) -> EntryFailure:
        failure = classify(exc)
        if failure.throttled:
            metrics.write_throttles.inc()
        return failure

    @staticmethod
    def _note_wait(pending: list[Any], failure: EntryFailure, seconds: float) -> None:
        if failure.throttled:
            metrics.throttle_wait_seconds.inc(seconds)

    def _note_write_wait(
        self, pending: list[_Write], failure: EntryFailure, seconds: float
    ) -> None:
        metrics.write_retries.inc(len(pending))
        self._note_wait(pending, failure, seconds)

    async def _write_chunk(self, writes: list[_Write], round_: _Round) -> None:
        """Write up to 8 blocks. Unprocessed items, throttling, 5xx and network errors are
        retried with backoff until the round's deadline; a block DynamoDB refuses is split
        until the event it refuses stands alone, and that one is dead-lettered; what is left
        fails its messages (they are retried)."""
        items: dict[str, tuple[Item, ...]] = {}  # built by the first call, kept for retries
        outcome = await retry_entries(
            partial(self._batch_write, items),
            writes,
            round_.policy,
            self._classify_write,
            what="BatchWriteItem",
            waited=self._note_write_wait,
        )
        failed = [write for write, _ in outcome.failed]
        if not failed:
            return
        if outcome.error is not None and error_code(outcome.error) == "ValidationException":
            await self._isolate(failed, round_, str(outcome.error))
            return
        metrics.write_failures.inc(len(failed))
        for write in failed:
            for tracker in write.trackers:
                tracker.failed = True

    async def _batch_write(
        self, items: dict[str, tuple[Item, ...]], writes: list[_Write]
    ) -> list[EntryFailure | None]:
        """One BatchWriteItem of `writes`' blocks; per write, None once all of its items
        are stored, else UNPROCESSED."""
        table = self._settings.table_name
        async with self._writes:
            # Built once a call may start: only the items of the calls in flight exist.
            request: list[dict[str, Any]] = []
            for write in writes:
                own = items.get(write.block.digest)
                if own is None:
                    own = items[write.block.digest] = self._items(write.block)
                request.extend({"PutRequest": {"Item": item}} for item in own)
            started = time.perf_counter()
            response = await self._dynamodb.batch_write_item(RequestItems={table: request})
            metrics.write_seconds.observe(time.perf_counter() - started)
        unprocessed = response.get("UnprocessedItems", {}).get(table, [])
        left = {_key(r["PutRequest"]["Item"]) for r in unprocessed}
        outcomes: list[EntryFailure | None] = []
        stored: list[_Write] = []
        for write in writes:
            own = items[write.block.digest]
            if left and any(_key(item) in left for item in own):
                outcomes.append(UNPROCESSED)
            else:
                outcomes.append(None)
                stored.append(write)
        self._record_stored(stored, [items[w.block.digest] for w in stored])
        return outcomes

    async def _isolate(self, writes: list[_Write], round_: _Round, error: str) -> None:
        """One refused item fails the whole call: halve the blocks, then the block, until
        the refused event stands alone, so the events around it are stored; the one left
        is refused for good."""
        if len(writes) == 1 and len(writes[0].block.events) == 1:
            round_.refused.append((writes[0], f"DynamoDB refused the item: {error}"))
            return
        if len(writes) == 1:
            write = writes[0]
            halves = [[_Write(half, write.trackers)] for half in split(write.block)]
        else:
            middle = len(writes) // 2
            halves = [writes[:middle], writes[middle:]]
        await asyncio.gather(*(self._write_chunk(half, round_) for half in halves))

    def _items(self, block: Block) -> tuple[Item, ...]:
        return items_of(block, self._settings.shards, self._settings.retention_days)

    def _record_stored(self, writes: list[_Write], blocks: list[tuple[Item, ...]]) -> None:
        """Count stored blocks: their messages' pending events, the events stored per
        service and level, their end-to-end latency, the write units and bytes."""
        for write in writes:
            for tracker in write.trackers:
                tracker.pending -= len(write.block.events)
        sizes = [item_bytes(item) for block in blocks for item in block]
        metrics.dynamodb_write_units.inc(sum(map(write_units, sizes)))
        metrics.dynamodb_stored_bytes.inc(sum(sizes))
        events = [event for write in writes for event in write.block.events]
        labels = Counter(zip(map(_SERVICE, events), map(_LEVEL, events), strict=True))
        now_ms = time.time() * 1000
        latencies = [
            (max(now_ms - ingested_at, 0) / 1000, count)
            for ingested_at, count in Counter(map(_INGESTED_AT, events)).items()
            if isinstance(ingested_at, int)
        ]
        metrics.observe_counted(metrics.e2e_latency, latencies)
        for key, count in labels.items():
            counter = self._stored_counters.get(key)
            if counter is None:
                service, level = key
                counter = metrics.events_stored.labels(metrics.service_label(service), level)
                if len(self._stored_counters) < MAX_STORED_COUNTERS:
                    self._stored_counters[key] = counter
            counter.inc(count)

    async def _keep_invisible(self, trackers: list[Tracker]) -> None:
        """Extend the visibility of every message of a receive until it is deleted or handed
        back, stored or not, so no other receiver gets it meanwhile."""
        timeout = self._settings.visibility_timeout_s
        while True:
            await asyncio.sleep(max(timeout / 2, 0.5))
            busy = [t for t in trackers if not t.finished]
            await self._set_visibility(busy, lambda t: timeout)

    async def _delete(self, trackers: list[Tracker]) -> None:
        for tracker in trackers:
            # What is not deleted is redelivered: the same keys are written again, no double.
            tracker.finished = True
        for start in range(0, len(trackers), RECEIVE_MESSAGES):
            group = trackers[start : start + RECEIVE_MESSAGES]
            entries = [
                {"Id": str(i), "ReceiptHandle": t.message["ReceiptHandle"]}
                for i, t in enumerate(group)
            ]
            call = partial(self._sqs.delete_message_batch, QueueUrl=self._queue_url)
            left = await call_entries(call, entries, attempts=5, what="DeleteMessageBatch")
            metrics.messages_deleted.inc(len(group) - len(left))

    async def _hand_back(self, trackers: list[Tracker], seconds: Callable[[Tracker], int]) -> None:
        """Give messages back to SQS: visible again after `seconds`."""
        for tracker in trackers:
            tracker.finished = True
        await self._set_visibility(trackers, seconds)

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


async def serve(
    settings: Settings,
    processor_cls: type[Processor] = Processor,
    client_hook: ClientHook | None = None,
) -> int:
    """The processor role: metrics endpoint, shared clients, receivers, drain on SIGTERM.

    `processor_cls` and `client_hook` are where the bench and chaos runs swap parts.
    """
    with stop_signals() as stopping:
        port, stop_metrics = serve_metrics(settings.host, settings.metrics_port)
        try:
            async with AsyncExitStack() as stack:
                pool = settings.write_concurrency + settings.pollers * 2 + 4
                clients = await open_clients(stack, settings, pool=pool, hook=client_hook)
                url = await queue_url(clients.sqs, settings.queue_name)
                dlq_url = await queue_url(clients.sqs, settings.dlq_name)
                await _watch(stack, clients, settings, {"main": url, "dlq": dlq_url})
                settings = await _with_table_and_queue(clients, settings, url)
                processor = processor_cls(settings, clients, url, dlq_url)
                heap.settle()
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


async def _watch(
    stack: AsyncExitStack, clients: Clients, settings: Settings, queues: dict[str, str]
) -> None:
    """Queue depth gauges, and EMF lines when asked for, for as long as `stack` is open."""
    await stack.enter_async_context(QueueMonitor(clients.sqs, queues, settings.queue_poll_s))
    if settings.emf:
        await stack.enter_async_context(EmfReporter("processor", settings.emf_interval_s))


async def _with_table_and_queue(clients: Clients, settings: Settings, url: str) -> Settings:
    """`settings` with what the table and the queue decide: the shard count (keys depend on
    it: the table's, not this process's setting) and the visibility timeout (the heartbeat
    must beat within the queue's own)."""
    shards = await table_shards(clients.dynamodb, settings.table_name, settings.shards)
    attrs = await clients.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["VisibilityTimeout"]
    )
    visibility = int(attrs["Attributes"]["VisibilityTimeout"])
    return replace(settings, shards=shards, visibility_timeout_s=visibility)
