"""Epoch milliseconds as the UTC strings items carry, formatted once per hour and second.

A processor stores thousands of events a second whose timestamps fall in a few distinct
seconds and hours; formatting each through `datetime` cost more than building the rest of
the item. Integer arithmetic splits off the milliseconds, so the result is exact for every
timestamp an event may carry (float seconds are not, near the year 2286).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS_PER_HOUR = 3_600_000


@lru_cache(maxsize=1024)
def _hour(hours: int) -> str:
    return (EPOCH + timedelta(hours=hours)).strftime("%Y-%m-%dT%H")


@lru_cache(maxsize=8192)
def _second(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")


def hour(ms: int) -> str:
    """`YYYY-MM-DDTHH` (UTC) of epoch milliseconds: the hour part of an item's key."""
    return _hour(ms // MS_PER_HOUR)


# ".000Z" to ".999Z": looked up, not formatted (formatting was half of `iso_ms`).
_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with millisecond precision."""
    seconds, millis = divmod(ms, 1000)
    return _second(seconds) + _MILLIS[millis]


@lru_cache(maxsize=1024)
def iso_ms_shared(ms: int) -> str:
    """`iso_ms` of a time many events share: the ingest time of one request's events."""
    return iso_ms(ms)
