"""Reading stored events back: per-hour, per-shard Queries merged newest first; the services seen.

A search never scans. For a service and a window it walks the hour buckets newest first;
in each hour it queries every shard's partition (`pk = service#hour#shard`,
`sk BETWEEN low AND high`, newest first) and merges them by sort key. Hours are disjoint
in time, so an hour's events are all newer than the next hour's: the walk stops as soon
as the page is full. Hours are fetched ahead only as far as the density seen so far says
the page still needs (`hours_ahead`), never the whole window at once.

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
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from logpipe.aws import error_code, with_retries
from logpipe.models import Item, iso_ms
from logpipe.query import (
    LogQuery,
    encode_cursor,
    hour_bucket,
    hour_starts,
    hours_ahead,
    partition_keys,
    sort_key_range,
)

log = logging.getLogger(__name__)

QUERY_ATTEMPTS = 4
# A filtered Query may evaluate many items to return a few; read big pages then.
FILTERED_PAGE_ITEMS = 1000
SERVICES_PK = "_services"  # no '#': it can never equal an event's partition key
NOTE_INTERVAL_S = 60.0
BATCH_WRITE_ITEMS = 25
AWS_ERRORS = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)


@dataclass(frozen=True)
class Page:
    """Up to `limit` stored items, newest first, and the cursor of the next page (or None)."""

    items: list[Item]
    cursor: str | None


class _Desc(str):
    """A sort key that orders backwards, so heapq's min-heap pops the newest first."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)


class _Partition:
    """The items of one partition within the page's range, newest first, fetched by pages."""

    def __init__(self, reader: Reader, query: LogQuery, pk: str, page_items: int) -> None:
        self._reader = reader
        self._query = query
        self._pk = pk
        self._page_items = page_items
        self._start: dict[str, Any] | None = None
        self.exhausted = False
        self.buffer: deque[Item] = deque()

    async def fill(self) -> None:
        """Fetch pages until one item is buffered or the partition has no more."""
        while not self.buffer and not self.exhausted:
            items, self._start = await self._reader.query_page(
                self._query, self._pk, self._page_items, self._start
            )
            self.exhausted = self._start is None
            self.buffer.extend(items)

    def head(self) -> _Desc:
        return _Desc(self.buffer[0]["sk"]["S"])


class Reader:
    """Searches one table; at most `concurrency` Queries in flight across all searches."""

    def __init__(self, dynamodb: Any, table: str, shards: int, concurrency: int = 16) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._shards = shards
        self._queries = asyncio.Semaphore(concurrency)
        # At most this many hours in flight: enough to keep `concurrency` Queries busy.
        self._lookahead = max(1, concurrency // shards)
        self.query_calls = 0

    async def read(self, query: LogQuery) -> Page:
        """One page of `query`: its items newest first, with a cursor when older ones exist."""
        want = query.limit + 1  # one more than the page: then a cursor means "there is more"
        found: list[Item] = []
        hours = iter(hour_starts(query.since_ms, query.until_ms))
        ahead: deque[tuple[int, asyncio.Task[list[Item]]]] = deque()
        covered_from = query.until_ms + 1
        try:
            while len(found) < want:
                covered = query.until_ms + 1 - covered_from
                target = hours_ahead(len(found), want, covered, self._lookahead)
                while len(ahead) < target and (start := next(hours, None)) is not None:
                    hour = self._hour(query, hour_bucket(start), want - len(found))
                    ahead.append((start, asyncio.create_task(hour)))
                if not ahead:
                    break
                start, task = ahead.popleft()
                found.extend(await task)
                covered_from = max(start, query.since_ms)
        finally:
            for _, task in ahead:
                task.cancel()
            await asyncio.gather(*(task for _, task in ahead), return_exceptions=True)
        items = found[: query.limit]
        cursor = None
        if len(found) > query.limit:
            cursor = encode_cursor(query.fingerprint, query.since_ms, items[-1]["sk"]["S"])
        return Page(items, cursor)

    async def _hour(self, query: LogQuery, hour: str, need: int) -> list[Item]:
        """The newest `need` items of one hour bucket, merged across its shards."""
        page_items = min(need, FILTERED_PAGE_ITEMS)
        if query.level or query.q:
            page_items = FILTERED_PAGE_ITEMS
        partitions = [
            _Partition(self, query, pk, page_items)
            for pk in partition_keys(query.service, hour, self._shards)
        ]
        await _all([p.fill() for p in partitions])
        heap = [(p.head(), n) for n, p in enumerate(partitions) if p.buffer]
        heapq.heapify(heap)
        merged: list[Item] = []
        while heap and len(merged) < need:
            _, n = heapq.heappop(heap)
            partition = partitions[n]
            merged.append(partition.buffer.popleft())
            await partition.fill()
            if partition.buffer:
                heapq.heappush(heap, (partition.head(), n))
        return merged

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


async def _all(calls: list[Coroutine[Any, Any, None]]) -> None:
    """Run `calls` concurrently; when one fails, cancel the rest before raising."""
    tasks = [asyncio.create_task(call) for call in calls]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


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


class ServiceRegistry:
    """Which services sent events recently, kept in one small partition (no scan to list them).

    `note` writes `pk=_services, sk=<service>` with `last_seen` at most once a minute per
    service and process; the item expires (TTL) `retention_days` after it was last written.
    """

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        retention_days: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._retention_s = retention_days * 86400
        self._clock = clock
        self._written: dict[str, float] = {}

    async def note(self, services: Iterable[str]) -> None:
        """Record that `services` were seen now; best effort, never raises for AWS errors."""
        now = self._clock()
        due = sorted(s for s in set(services) if not self._fresh(s, now))
        for start in range(0, len(due), BATCH_WRITE_ITEMS):
            group = due[start : start + BATCH_WRITE_ITEMS]
            # Claimed before the write, so concurrent callers do not write the same service;
            # a failed one is released, so the next call tries again.
            self._written.update(dict.fromkeys(group, now))
            for service in await self._write(group, now):
                del self._written[service]

    def _fresh(self, service: str, now: float) -> bool:
        written = self._written.get(service)
        return written is not None and now - written < NOTE_INTERVAL_S

    async def _write(self, services: list[str], now: float) -> list[str]:
        """One BatchWriteItem; the services whose item was not written."""
        requests = [
            {
                "PutRequest": {
                    "Item": {
                        "pk": {"S": SERVICES_PK},
                        "sk": {"S": service},
                        "service": {"S": service},
                        "last_seen": {"S": iso_ms(int(now * 1000))},
                        "expires_at": {"N": str(int(now) + self._retention_s)},
                    }
                }
            }
            for service in services
        ]
        try:
            response = await self._dynamodb.batch_write_item(RequestItems={self._table: requests})
        except AWS_ERRORS as exc:
            log.warning("could not record %d services: %s", len(services), error_code(exc))
            return services
        unprocessed = response.get("UnprocessedItems", {}).get(self._table, [])
        return [r["PutRequest"]["Item"]["sk"]["S"] for r in unprocessed]

    async def services(self) -> list[dict[str, str]]:
        """Every service not yet expired, by name: `{"service", "last_seen"}`."""
        now = int(self._clock())
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": SERVICES_PK}},
        }
        found: list[dict[str, str]] = []
        while True:
            response = await with_retries(
                partial(self._dynamodb.query, **kwargs), QUERY_ATTEMPTS, "Query"
            )
            for item in response.get("Items", []):
                # TTL deletes lazily (within days); an expired item is already gone to us.
                if int(item.get("expires_at", {}).get("N", now + 1)) > now:
                    found.append({"service": item["sk"]["S"], "last_seen": item["last_seen"]["S"]})
            if "LastEvaluatedKey" not in response:
                return found
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
