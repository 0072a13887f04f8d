"""Reading stored events back: per-hour, per-shard Queries merged newest first; the services seen.

A search never scans. For a service and a window it walks the hour buckets newest first;
in each hour it queries every shard's partition (`pk = service#hour#shard`,
`sk BETWEEN low AND high`, newest first) and merges them by sort key. Hours are disjoint
in time, so an hour's events are all newer than the next hour's: the walk stops as soon
as the page is full. Hours are fetched ahead only as far as the density seen so far says
the page still needs (`hours_ahead`), never the whole window at once.

Each read has a budget: at most `query_budget` Queries and about `deadline_s` seconds. When
it runs out before the page is full, the page ends where everything newer has been searched
(an hour's boundary, or inside an hour the highest point any shard was read down to) and its
cursor continues from there (`complete` is False). The first page of every shard of the first
hour is always read, so every answer moves the search on.

The budget also holds the bytes one answer may carry (`answer_bytes`, LOGPIPE_MAX_ANSWER_BYTES):
once the events taken hold that many, the page stops after its last event, with a cursor
that continues just below it (`complete` is False), as when the Queries run out. Hours are
fetched ahead concurrently but merged into the page one after the other, newest first, so
the check sees the page in its order.

Level and text are filtered by DynamoDB (FilterExpression), not here: the read capacity is
the same either way, but items that do not match never cross the wire nor go through
botocore's parser, which is where a Python reader spends its time.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from logpipe.aws.calls import with_retries
from logpipe.aws.registry import QUERY_ATTEMPTS
from logpipe.core.models import Item, item_size
from logpipe.core.query import (
    LogQuery,
    encode_cursor,
    hour_bucket,
    hour_starts,
    hours_ahead,
    partition_keys,
    sort_key_range,
)

log = logging.getLogger(__name__)


# A filtered Query may evaluate many items to return a few; read big pages then.
FILTERED_PAGE_ITEMS = 1000
QUERY_BUDGET = 48
READ_DEADLINE_S = 2.0
ANSWER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Page:
    """Up to `limit` stored items, newest first, and the cursor of the next page (or None).

    `complete` is False when the budget ran out before the page was full: the cursor then
    continues the search, which may still find events.
    """

    items: list[Item]
    cursor: str | None
    complete: bool = True


class _Budget:
    """The Queries, the time and the bytes of events one read may still spend."""

    def __init__(self, queries: int, seconds: float, answer_bytes: int) -> None:
        self.left = queries
        self._deadline = time.monotonic() + seconds
        self.bytes_left = answer_bytes

    def take(self, queries: int = 1, *, first: bool = False) -> bool:
        """Spend `queries` if they are left (and time is, unless this is the first hour)."""
        if self.left < queries or (not first and time.monotonic() > self._deadline):
            return False
        self.left -= queries
        return True


class _Desc(str):
    """A sort key that orders backwards, so heapq's min-heap pops the newest first."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)


class _Partition:
    """The items of one partition within the page's range, newest first, fetched by pages."""

    def __init__(
        self, reader: Reader, query: LogQuery, pk: str, page_items: int, budget: _Budget
    ) -> None:
        self._reader = reader
        self._query = query
        self._pk = pk
        self._page_items = page_items
        self._budget = budget
        self._start: dict[str, Any] | None = None
        self._paid = True  # the hour paid for every shard's first Query
        self.exhausted = False
        self.stalled = False
        self.buffer: deque[Item] = deque()

    async def fill(self) -> None:
        """Fetch pages until one item is buffered, the partition has no more, or no budget."""
        while not self.buffer and not self.exhausted and not self.stalled:
            if not self._paid and not self._budget.take():
                self.stalled = True
                return
            self._paid = False
            items, self._start = await self._reader.query_page(
                self._query, self._pk, self._page_items, self._start
            )
            self.exhausted = self._start is None
            self.buffer.extend(items)

    @property
    def floor(self) -> str:
        """A stalled partition's items from here up have all been read (the buffer holds them)."""
        assert self._start is not None
        return str(self._start["sk"]["S"])

    def head(self) -> _Desc:
        return _Desc(self.buffer[0]["sk"]["S"])


class Reader:
    """Searches one table; at most `concurrency` Queries in flight across all searches.

    One `read` makes at most `query_budget` Queries (never fewer than one per shard), stops
    asking for more after `deadline_s` and answers at most `answer_bytes` of events (plus
    the one that passes it); `cursor_secret` signs the cursors it hands out.
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
        self._shards = shards
        self._queries = asyncio.Semaphore(concurrency)
        # At most this many hours in flight: enough to keep `concurrency` Queries busy.
        self._lookahead = max(1, concurrency // shards)
        self._secret = cursor_secret
        self._budget = max(query_budget, shards)
        self._deadline_s = deadline_s
        self._answer_bytes = answer_bytes
        self.query_calls = 0

    async def read(self, query: LogQuery) -> Page:
        """One page of `query`: its items newest first, with a cursor when older ones exist."""
        want = query.limit + 1  # one more than the page: then a cursor means "there is more"
        budget = _Budget(self._budget, self._deadline_s, self._answer_bytes)
        found, stopped_at = await self._walk(query, want, budget)
        items = found[: query.limit]
        if len(found) > query.limit:
            return Page(items, self._cursor(query, items[-1]["sk"]["S"]))
        if stopped_at is not None:
            return Page(items, self._cursor(query, stopped_at), complete=False)
        return Page(items, None)

    async def _walk(
        self, query: LogQuery, want: int, budget: _Budget
    ) -> tuple[list[Item], str | None]:
        """Hours newest first until `want` items are found, the window ends or the budget does.

        Also where the search stopped short of the window's start (None if it did not):
        everything above that position has been searched.
        """
        found: list[Item] = []
        hours = hour_starts(query.since_ms, query.until_ms)
        scheduled = 0
        ahead: deque[tuple[int, asyncio.Task[list[_Partition]]]] = deque()
        covered_from = query.until_ms + 1
        try:
            while len(found) < want:
                covered = query.until_ms + 1 - covered_from
                target = hours_ahead(len(found), want, covered, self._lookahead)
                scheduled = self._schedule(
                    query, hours, scheduled, ahead, target, want - len(found), budget
                )
                if not ahead:
                    break
                start, task = ahead.popleft()
                stopped_at = await self._merge(await task, found, want, budget)
                if stopped_at is not None:
                    return found, stopped_at
                covered_from = max(start, query.since_ms)
        finally:
            await _cancel([task for _, task in ahead])
        if scheduled < len(hours):
            return found, f"{covered_from:013d}"  # every hour from here up was searched
        return found, None

    def _schedule(
        self,
        query: LogQuery,
        hours: list[int],
        scheduled: int,
        ahead: deque[tuple[int, asyncio.Task[list[_Partition]]]],
        target: int,
        want: int,
        budget: _Budget,
    ) -> int:
        """Start the next hours' Queries (each for up to `want` items) until `target` hours are
        in flight, or the window's hours or the budget run out; how many hours are started."""
        while (
            len(ahead) < target
            and scheduled < len(hours)
            and budget.take(self._shards, first=scheduled == 0)
        ):
            start = hours[scheduled]
            scheduled += 1
            hour = self._fetch(query, hour_bucket(start), want, budget)
            ahead.append((start, asyncio.create_task(hour)))
        return scheduled

    def _cursor(self, query: LogQuery, position: str) -> str:
        return encode_cursor(query.fingerprint, query.since_ms, position, self._secret)

    async def _fetch(
        self, query: LogQuery, hour: str, need: int, budget: _Budget
    ) -> list[_Partition]:
        """The partitions of one hour bucket, each with its first page read (for up to `need`
        items, and more when the search filters)."""
        page_items = min(need, FILTERED_PAGE_ITEMS)
        if query.level or query.q:
            page_items = FILTERED_PAGE_ITEMS
        partitions = [
            _Partition(self, query, pk, page_items, budget)
            for pk in partition_keys(query.service, hour, self._shards)
        ]
        await _all([p.fill() for p in partitions])
        return partitions

    async def _merge(
        self, partitions: list[_Partition], found: list[Item], want: int, budget: _Budget
    ) -> str | None:
        """Move one hour's items into `found`, newest first across its shards, until it holds
        `want`; None when the hour is done, else the position the page stops at.

        The page stops when the budget does: when a shard is stalled, only items at or above
        its floor are certain to be the newest; when the page holds `answer_bytes`, it ends
        with the item that passed them. Everything at or above the position is in `found`.
        """
        heap = [(p.head(), n) for n, p in enumerate(partitions) if p.buffer]
        heapq.heapify(heap)
        floor = _floor(partitions)
        while heap and len(found) < want:
            if floor is not None and str(heap[0][0]) < floor:
                break
            if budget.bytes_left <= 0:  # the answer holds LOGPIPE_MAX_ANSWER_BYTES
                return str(found[-1]["sk"]["S"])
            _, n = heapq.heappop(heap)
            partition = partitions[n]
            item = partition.buffer.popleft()
            budget.bytes_left -= item_size(item)
            found.append(item)
            await partition.fill()
            if partition.buffer:
                heapq.heappush(heap, (partition.head(), n))
            elif partition.stalled:
                floor = _floor(partitions)
        return floor

    async def query_page(
        self, query: LogQuery, pk: str, page_items: int, start: dict[str, Any] | None
    ) -> tuple[list[Item], dict[str, Any] | None]:
        """One Query call: matching items below the page's high key, and where to go on."""
        low, high = sort_key_range(query)
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {
                ":pk": {"S": pk},
                ":low": {"S": low},
                ":high": {"S": high},
            },
            "ScanIndexForward": False,
            "Limit": page_items,
        }
        _add_filter(kwargs, query)
        if start is not None:
            kwargs["ExclusiveStartKey"] = start
        async with self._queries:
            self.query_calls += 1
            response = await with_retries(
                partial(self._dynamodb.query, **kwargs), QUERY_ATTEMPTS, "Query"
            )
        # `high` is exclusive: it is the item the previous page ended on.
        items = [i for i in response.get("Items", []) if i["sk"]["S"] != high]
        return items, response.get("LastEvaluatedKey")


def _floor(partitions: list[_Partition]) -> str | None:
    stalled = [p.floor for p in partitions if p.stalled]
    return max(stalled) if stalled else None


async def _all(calls: list[Coroutine[Any, Any, None]]) -> None:
    """Run `calls` concurrently; when one fails, cancel the rest before raising."""
    tasks = [asyncio.create_task(call) for call in calls]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        await _cancel(tasks)
        raise


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until each has ended."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _add_filter(kwargs: dict[str, Any], query: LogQuery) -> None:
    conditions = []
    names: dict[str, str] = {}
    values = kwargs["ExpressionAttributeValues"]
    if query.level:
        conditions.append("#level = :level")
        names["#level"] = "level"
        values[":level"] = {"S": query.level}
    if query.q:
        conditions.append("contains(#message, :q)")
        names["#message"] = "message"
        values[":q"] = {"S": query.q}
    if conditions:
        kwargs["FilterExpression"] = " AND ".join(conditions)
        kwargs["ExpressionAttributeNames"] = names
