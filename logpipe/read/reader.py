"""Reading stored events back from blocks, newest first, each event once.

A search never scans. For a window it walks the hour buckets newest first. In each hour it
reads the block summaries of every shard (`sk = s#<newest ms>#<hash>`, small items): of
the service's own partitions (`pk = service#hour#shard`) when it names one service, else of
the partition every service shares (`pk = *#hour#shard`), so a search across fifty services
reads no more Query pages than a search of one. Summaries come newest first, a hundred at
first and twice as many each next Query of the shard, read only as far as the page needs
(a trace search reads whole pages: its blocks may be anywhere). It keeps the blocks that
can hold a match: of a service named, in the window, below the cursor, with events of a
wanted level, and whose Bloom filter may hold the trace searched for. Those are taken
newest block first; their bodies are fetched (BatchGetItem) only as far as the page needs.
Blocks overlap in time, so an event is emitted only once it is newer than every block not
yet fetched (the next summary's newest timestamp) and every summary not yet read (the
newest timestamp of the last one read of each shard): no unread block can hold a newer one.

An event sent twice (a client's retry) sits in two blocks with the same service, timestamp
and id; the copy ingested first is the one returned, and the other is skipped.

Each read has a budget: at most `query_budget` DynamoDB reads (Query pages and
BatchGetItem calls) and about `deadline_s` seconds. When it runs out before the page is
full, the page ends where everything newer has been searched and its cursor continues from
there (`complete` is False). The first hour's first summaries, its first bodies, and the
summaries and bodies of every block that may reach the page's upper end are always read,
so every answer moves the search on, however much blocks overlap.

The budget also holds the bytes one answer may carry (`answer_bytes`, LOGPIPE_MAX_ANSWER_BYTES):
once the events taken hold that many, the page stops after its last event, with a cursor
that continues just below it (`complete` is False), as when the reads run out.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from logpipe.aws.calls import with_retries
from logpipe.aws.registry import QUERY_ATTEMPTS
from logpipe.core.block import (
    SUMMARY_PREFIX,
    Summary,
    decode_body,
    position,
    stored_event,
    summary_from_item,
)
from logpipe.core.event import Event, StoredEvent, dumps_exact
from logpipe.core.query import (
    HOUR_MS,
    LogQuery,
    encode_cursor,
    hour_bucket,
    hour_starts,
    partition_keys,
    position_until,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

QUERY_BUDGET = 48
READ_DEADLINE_S = 2.0
ANSWER_BYTES = 4 * 1024 * 1024
# Bodies asked for in one BatchGetItem (DynamoDB takes 100 keys and answers 16 MB at most;
# a body is at most ~130 KB).
BODIES_PER_CALL = 16
# A search's first Query of a shard's hour asks for this many summaries, each next one for
# twice as many as the last (at most MAX_SUMMARIES): a page of the newest events needs the
# newest blocks only, and an hour of many services holds thousands.
FIRST_SUMMARIES = 100
MAX_SUMMARIES = 3200


@dataclass(frozen=True)
class Page:
    """Up to `limit` stored events, newest first, and the cursor of the next page (or None).

    `complete` is False when the budget ran out before the page was full: the cursor then
    continues the search, which may still find events.
    """

    events: list[StoredEvent]
    cursor: str | None
    complete: bool = True


class _Budget:
    """The reads and the time one search may still spend."""

    def __init__(self, reads: int, seconds: float, answer_bytes: int) -> None:
        self.left = reads
        self._deadline = time.monotonic() + seconds
        self.bytes_left = answer_bytes

    def take(self, *, first: bool = False) -> bool:
        """Spend one read if one is left (and time is, unless it is one the search must make)."""
        if first:
            self.left -= 1
            return True
        if self.left < 1 or time.monotonic() > self._deadline:
            return False
        self.left -= 1
        return True


class _Desc(str):
    """A position that orders backwards, so heapq's min-heap pops the newest first."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)


# (position, ingested_at, n, event): newest first, then the copy ingested first.
_Entry = tuple[_Desc, int, int, Event]


class _Shard:
    """How far one partition's summaries have been read: the key to continue from, how
    many to ask for next, and `floor`, the newest an unread one may be (None: all read)."""

    __slots__ = ("floor", "limit", "pk", "start")

    def __init__(self, pk: str, floor: int, limit: int | None) -> None:
        self.pk = pk
        self.start: dict[str, Any] | None = None
        self.floor: int | None = floor
        self.limit = limit


class _Hour:
    """One hour bucket of one search: its block summaries, newest first, and the bodies
    fetched so far as a heap of matching events."""

    def __init__(self, reader: Reader, query: LogQuery, start_ms: int, budget: _Budget) -> None:
        self._reader = reader
        self._query = query
        self._hour = hour_bucket(start_ms)
        self._budget = budget
        self._high = query.position or f"{query.until_ms + 1:013d}"
        self._upper_ms = position_until(self._high)
        self._top_ms = min(self._upper_ms, start_ms + HOUR_MS - 1)
        self.blocks: list[Summary] = []
        self._next = 0
        self._shards: list[_Shard] = []
        self._heap: list[_Entry] = []
        self._pushed = 0

    async def read_summaries(self, forced: bool) -> None:
        """The first page of summaries of every shard."""
        # A trace's blocks are few and anywhere in the hour: its summaries are read in
        # whole pages. Any other search mostly needs the newest blocks.
        limit = None if self._query.trace_id else FIRST_SUMMARIES
        keys = partition_keys(self._query.partition, self._hour, self._reader.shards)
        self._shards = [_Shard(pk, self._top_ms, limit) for pk in keys]
        await self._read_pages(self._shards, forced)

    async def _read_pages(self, shards: list[_Shard], forced: bool) -> bool:
        """The next page of each of `shards`, concurrently; False when the budget had no
        read left for any of them."""
        found = await _all([self._page(shard, forced) for shard in shards])
        fresh = [s for part in found if part is not None for s in part if self._may_match(s)]
        pending = self.blocks[self._next :] + fresh
        pending.sort(key=lambda s: (s.newest, s.digest), reverse=True)
        self.blocks[self._next :] = pending
        return any(part is not None for part in found)

    async def _page(self, shard: _Shard, forced: bool) -> list[Summary] | None:
        if not self._budget.take(first=forced):
            return None
        items, shard.start = await self._reader.summaries_page(
            shard.pk, self._query.since_ms, shard.start, shard.limit
        )
        summaries = list(map(summary_from_item, items))
        if shard.limit is not None:
            shard.limit = min(shard.limit * 2, MAX_SUMMARIES)
        if shard.start is None:
            shard.floor = None
        elif summaries:
            shard.floor = min(summaries[-1].newest, self._top_ms)
        return summaries

    def _unread_floor(self) -> int | None:
        """No summary not yet read holds a matching event newer than this."""
        return max((s.floor for s in self._shards if s.floor is not None), default=None)

    def _may_match(self, summary: Summary) -> bool:
        query = self._query
        if summary.oldest > self._upper_ms or summary.newest < query.since_ms:
            return False
        if query.services and summary.service not in query.services:
            return False
        if query.levels and not summary.has_level(query.levels):
            return False
        return query.trace_id is None or summary.may_hold_trace(query.trace_id)

    def frontier(self) -> int | None:
        """No block not yet fetched holds an event newer than this (None: none is left)."""
        pending = self.blocks[self._next].newest if self._next < len(self.blocks) else None
        floor = self._unread_floor()
        if floor is None:
            return pending
        return floor if pending is None else max(pending, floor)

    def take_ready(self, out: list[Event], want: int, last: list[_Desc]) -> bool:
        """Move the events no unread block can outrank to `out`, each position once; True
        when the answer holds its bytes (the page ends with the last event taken)."""
        frontier = self.frontier()
        heap = self._heap
        budget = self._budget
        while heap and len(out) < want:
            entry = heap[0]
            event = entry[3]
            if frontier is not None and event["timestamp"] <= frontier:
                return False
            if budget.bytes_left <= 0:  # the answer holds LOGPIPE_MAX_ANSWER_BYTES
                return True
            heapq.heappop(heap)
            if entry[0] == last[0]:
                continue  # a later copy of an event already taken
            last[0] = entry[0]
            out.append(event)
            budget.bytes_left -= len(dumps_exact(event))
        return False

    def more_blocks(self) -> bool:
        return self._next < len(self.blocks) or self._unread_floor() is not None

    def straddles(self) -> bool:
        """Whether a block not yet fetched (or a summary not yet read) may hold events at or
        above the page's upper end: until those are read, nothing below it can be returned."""
        frontier = self.frontier()
        return frontier is not None and frontier >= self._upper_ms

    async def fetch(self, need: int, forced: bool) -> bool:
        """Read on: the next summaries of the shards whose unread ones may be newer than
        every block found, else the next blocks' bodies (enough for `need` events, and the
        blocks that overlap those in time). False when the budget has no read left."""
        floor = self._unread_floor()
        pending = self.blocks[self._next].newest if self._next < len(self.blocks) else None
        if floor is not None and (pending is None or floor >= pending):
            low = pending if pending is not None else 0
            behind = [s for s in self._shards if s.floor is not None and s.floor >= low]
            return await self._read_pages(behind, forced)
        if not self._budget.take(first=forced):
            return False
        group: list[Summary] = []
        count = 0
        oldest = self._upper_ms
        levels = self._query.levels
        while self._next < len(self.blocks) and len(group) < BODIES_PER_CALL:
            summary = self.blocks[self._next]
            if count >= need and summary.newest < oldest:
                break
            if group and floor is not None and summary.newest < floor:
                break  # an unread summary may be newer: read it first
            group.append(summary)
            self._next += 1
            count += sum(summary.levels.get(lv, 0) for lv in levels) if levels else summary.count
            if not self._query.selective:
                oldest = min(oldest, summary.oldest)
        for events in await self._reader.bodies(group):
            self._push(events)
        return True

    def _push(self, events: list[Event]) -> None:
        query = self._query
        for event in events:
            ts = event["timestamp"]
            if ts < query.since_ms or ts > self._upper_ms:
                continue
            key = position(event)
            if key >= self._high:
                continue
            if not query.matches(event):
                continue
            ingested = event.get("ingested_at")
            self._pushed += 1
            entry = (
                _Desc(key),
                ingested if isinstance(ingested, int) else 0,
                self._pushed,
                event,
            )
            heapq.heappush(self._heap, entry)


class Reader:
    """Searches one table; at most `concurrency` DynamoDB reads in flight across searches.

    One `read` makes at most `query_budget` reads (beyond what the first hour must read to
    move the search on: see the module's note) and stops asking for more after
    `deadline_s`; `cursor_secret` signs the cursors it hands out.
    """

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        shards: int,
        concurrency: int = 16,
        *,
        cursor_secret: bytes,
        query_budget: int = QUERY_BUDGET,
        deadline_s: float = READ_DEADLINE_S,
        answer_bytes: int = ANSWER_BYTES,
    ) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self.shards = shards
        self._reads = asyncio.Semaphore(concurrency)
        self._secret = cursor_secret
        self._budget = max(query_budget, shards + 1)
        self._deadline_s = deadline_s
        self._answer_bytes = answer_bytes
        self.query_calls = 0

    async def read(self, query: LogQuery) -> Page:
        """One page of `query`: its events newest first, with a cursor when older ones exist."""
        want = query.limit + 1  # one more than the page: then a cursor means "there is more"
        budget = _Budget(self._budget, self._deadline_s, self._answer_bytes)
        found, stopped_at = await self._walk(query, want, budget)
        events = found[: query.limit]
        shown = [stored_event(e) for e in events]
        if len(found) > query.limit:
            return Page(shown, self._cursor(query, position(events[-1])))
        if stopped_at is not None:
            return Page(shown, self._cursor(query, stopped_at), complete=False)
        return Page(shown, None)

    async def _walk(
        self, query: LogQuery, want: int, budget: _Budget
    ) -> tuple[list[Event], str | None]:
        """Hours newest first until `want` events are found, the window ends or the budget
        does. Also where the search stopped short of the window's start (None if it did not):
        every event above that position has been returned."""
        found: list[Event] = []
        last = [_Desc("")]
        hours = hour_starts(query.since_ms, query.until_ms)
        for n, start in enumerate(hours):
            first_hour = first_fetch = n == 0
            hour = _Hour(self, query, start, budget)
            await hour.read_summaries(forced=first_hour)
            full = hour.take_ready(found, want, last)
            while not full and len(found) < want and hour.more_blocks():
                # The first hour always reads as far as the page's upper end moves: every
                # answer moves the search on, however much blocks overlap.
                forced = first_fetch or (first_hour and hour.straddles())
                if not await hour.fetch(want - len(found), forced):
                    break
                first_fetch = False
                full = hour.take_ready(found, want, last)
            if full:
                return found, position(found[-1])
            if len(found) >= want:
                return found, None
            frontier = hour.frontier()
            if frontier is not None:
                return found, f"{frontier + 1:013d}"
            if n + 1 < len(hours) and budget.left < self.shards + 1:
                return found, f"{max(start, query.since_ms):013d}"
        return found, None

    def _cursor(self, query: LogQuery, at: str) -> str:
        return encode_cursor(query.fingerprint, query.since_ms, at, self._secret)

    async def summaries_page(
        self, pk: str, since_ms: int, start: dict[str, Any] | None, limit: int | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """One Query of a partition's block summaries whose newest event is at `since_ms` or
        later, newest first (at most `limit` of them)."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {
                ":pk": {"S": pk},
                ":low": {"S": f"{SUMMARY_PREFIX}{since_ms:013d}"},
                ":high": {"S": f"{SUMMARY_PREFIX}~"},
            },
            "ScanIndexForward": False,
        }
        if start is not None:
            kwargs["ExclusiveStartKey"] = start
        if limit is not None:
            kwargs["Limit"] = limit
        async with self._reads:
            self.query_calls += 1
            response = await with_retries(
                partial(self._dynamodb.query, **kwargs), QUERY_ATTEMPTS, "Query"
            )
        return response.get("Items", []), response.get("LastEvaluatedKey")

    async def hour_summaries(
        self, partition: str, hour: str, since_ms: int, take: Callable[[], bool] = lambda: True
    ) -> list[Summary] | None:
        """Every block summary of one hour of `partition` (a service, or SHARED for every
        service) whose newest event is at `since_ms` or later, every shard and page; None
        when `take` refuses a read (a budget)."""
        summaries: list[Summary] = []
        for pk in partition_keys(partition, hour, self.shards):
            start: dict[str, Any] | None = None
            while True:
                if not take():
                    return None
                items, start = await self.summaries_page(pk, since_ms, start)
                summaries.extend(map(summary_from_item, items))
                if start is None:
                    break
        return summaries

    async def bodies(self, summaries: list[Summary]) -> list[list[Event]]:
        """The events of each block (BatchGetItem, asking again for unprocessed keys)."""
        keys = [s.body_key for s in summaries]
        found: dict[str, list[Event]] = {}
        while keys:
            request = {self._table: {"Keys": keys}}
            async with self._reads:
                self.query_calls += 1
                response = await with_retries(
                    partial(self._dynamodb.batch_get_item, RequestItems=request),
                    QUERY_ATTEMPTS,
                    "BatchGetItem",
                )
            for item in response.get("Responses", {}).get(self._table, []):
                found[item["sk"]["S"]] = decode_body(item)
            keys = response.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
        # A summary whose body is not (yet) there: its message is not deleted, and is written
        # again; until then the block holds nothing to read.
        return [found.get(s.body_key["sk"]["S"], []) for s in summaries]


async def _all(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run `calls` concurrently; when one fails, cancel the rest before raising."""
    tasks = [asyncio.create_task(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
