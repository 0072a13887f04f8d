"""The services registry: which services sent events recently, in one small partition.

The processor notes the services it stores; the console lists them. Listing never scans.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from logpipe.aws.calls import with_retries
from logpipe.aws.errors import AWS_ERRORS, error_code
from logpipe.core.timefmt import iso_ms

log = logging.getLogger(__name__)

QUERY_ATTEMPTS = 4
SERVICES_PK = "_services"  # no '#': it can never equal an event's partition key
NOTE_INTERVAL_S = 60.0
# Services the registry remembers writing (least recently noted forgotten first).
NOTED_SERVICES = 4096
# What `services()` reads of the registry's partition, and answers at most.
SERVICES_READ_PAGES = 4
SERVICES_LIMIT = 1000
BATCH_WRITE_ITEMS = 25


class ServiceRegistry:
    """Which services sent events recently, kept in one small partition (no scan to list them).

    `note` writes `pk=_services, sk=<service>` with `last_seen` at most once a minute per
    service and process; the item expires (TTL) `retention_days` after it was last written.
    It remembers what it wrote for at most `remembered` services, forgetting the least
    recently noted first (forgetting only costs one more write).
    """

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        retention_days: int,
        clock: Callable[[], float] = time.time,
        remembered: int = NOTED_SERVICES,
    ) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._retention_s = retention_days * 86400
        self._clock = clock
        self._remembered = remembered
        self._written: OrderedDict[str, float] = OrderedDict()

    async def note(self, services: Iterable[str]) -> None:
        """Record that `services` were seen now; best effort, never raises for AWS errors."""
        now = self._clock()
        due = sorted(s for s in set(services) if not self._fresh(s, now))
        for start in range(0, len(due), BATCH_WRITE_ITEMS):
            group = due[start : start + BATCH_WRITE_ITEMS]
            # Claimed before the write, so concurrent callers do not write the same service;
            # a failed one is released, so the next call tries again.
            for service in group:
                self._remember(service, now)
            for service in await self._write(group, now):
                self._written.pop(service, None)

    def _fresh(self, service: str, now: float) -> bool:
        written = self._written.get(service)
        if written is None:
            return False
        self._written.move_to_end(service)
        return now - written < NOTE_INTERVAL_S

    def _remember(self, service: str, now: float) -> None:
        self._written[service] = now
        self._written.move_to_end(service)
        while len(self._written) > self._remembered:
            self._written.popitem(last=False)

    @property
    def remembered(self) -> int:
        """How many services the registry currently remembers writing."""
        return len(self._written)

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

    async def services(self, limit: int = SERVICES_LIMIT) -> tuple[list[dict[str, str]], bool]:
        """The `limit` services seen most recently, newest first: `{"service", "last_seen"}`.

        Reads at most SERVICES_READ_PAGES pages of the registry; the flag says whether
        anything was left out (more services, or more of the registry than was read).
        """
        now = int(self._clock())
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": SERVICES_PK}},
        }
        found: list[dict[str, str]] = []
        unread = True
        for _ in range(SERVICES_READ_PAGES):
            response = await with_retries(
                partial(self._dynamodb.query, **kwargs), QUERY_ATTEMPTS, "Query"
            )
            for item in response.get("Items", []):
                # TTL deletes lazily (within days); an expired item is already gone to us.
                if int(item.get("expires_at", {}).get("N", now + 1)) > now:
                    found.append({"service": item["sk"]["S"], "last_seen": item["last_seen"]["S"]})
            if "LastEvaluatedKey" not in response:
                unread = False
                break
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        found.sort(key=lambda s: s["service"])
        found.sort(key=lambda s: s["last_seen"], reverse=True)  # stable: ties stay by name
        return found[:limit], unread or len(found) > limit
