"""`GET /api/stats`: events per level per step over a whole range, from block summaries.

A block's summary counts its events per level. A block whose events all fall in one step
(and inside the range) adds its counts to that step without its body being read; only a
block that spans a step's edge or the range's edge is opened and counted event by event.
Blocks hold a few seconds of one service's events, so with steps of a minute or more almost
every block is counted from its summary.

One service is counted from its own partitions; none (every service) or several from the
partition every service shares, which holds each block's summary once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from logpipe.core.block import SHARED, Summary
from logpipe.core.query import (
    DEFAULT_SINCE,
    MAX_HOURS,
    MAX_TIME_CHARS,
    QueryError,
    hour_bucket,
    hour_count,
    hour_starts,
    parse_services,
    parse_time,
)
from logpipe.core.timefmt import iso_ms
from logpipe.read.reader import BODIES_PER_CALL, Reader

STATS_PARAMETERS = frozenset({"service", "since", "until", "step"})
MAX_BUCKETS = 1000
# Summaries are small: a histogram may read this many times LOGPIPE_QUERY_BUDGET.
STATS_BUDGET_FACTOR = 8
# The steps an absent `step` is chosen from: the smallest giving at most AUTO_BUCKETS.
AUTO_BUCKETS = 120
STEPS_S = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400)
_STEP = re.compile(r"([0-9]{1,6})([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class StatsQuery:
    """The services (empty: every one), the range and the step."""

    services: tuple[str, ...]
    since_ms: int
    until_ms: int
    step_ms: int


def parse_stats(services: Sequence[str], params: Mapping[str, str], now_ms: int) -> StatsQuery:
    """Validate `/api/stats`' parameters; QueryError (a 400) says what is wrong."""
    named = parse_services(services)
    since_ms = parse_time("since", _bounded("since", params.get("since") or DEFAULT_SINCE), now_ms)
    until_ms = parse_time("until", _bounded("until", params.get("until") or "now"), now_ms)
    if since_ms > until_ms:
        raise QueryError("since must not be after until")
    if hour_count(since_ms, until_ms) > MAX_HOURS:
        raise QueryError(f"the range spans more than {MAX_HOURS} hour buckets (31 days)")
    span_ms = until_ms - since_ms + 1
    raw = params.get("step")
    if raw:
        match = _STEP.fullmatch(raw.strip())
        if match is None or int(match.group(1)) == 0:
            raise QueryError(f"step must be a duration such as 30s, 5m or 1h, got {raw[:20]!r}")
        step_ms = int(match.group(1)) * _UNIT_S[match.group(2)] * 1000
    else:
        step_ms = next(
            (s * 1000 for s in STEPS_S if -(-span_ms // (s * 1000)) <= AUTO_BUCKETS),
            STEPS_S[-1] * 1000,
        )
    if -(-span_ms // step_ms) > MAX_BUCKETS:
        raise QueryError(f"step gives more than {MAX_BUCKETS} buckets: choose a larger step")
    return StatsQuery(named, since_ms, until_ms, step_ms)


def _bounded(name: str, value: str) -> str:
    if len(value) > MAX_TIME_CHARS:
        raise QueryError(f"{name} must be at most {MAX_TIME_CHARS} characters")
    return value


class _Reads:
    def __init__(self, budget: int) -> None:
        self.left = budget

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def count_levels(reader: Reader, query: StatsQuery, budget: int) -> dict[str, Any]:
    """The `/api/stats` answer: counts per level of every step of the range."""
    counts: dict[int, Counter[str]] = {}
    reads = _Reads(budget * STATS_BUDGET_FACTOR)
    complete = True
    for start in hour_starts(query.since_ms, query.until_ms):
        if not await _count_hour(reader, query, hour_bucket(start), counts, reads):
            complete = False
            break
    first = query.since_ms - query.since_ms % query.step_ms
    buckets = [
        {"t": iso_ms(t), "counts": dict(sorted(counts.get(t, Counter()).items()))}
        for t in range(first, query.until_ms + 1, query.step_ms)
    ]
    return {"step_s": query.step_ms // 1000, "buckets": buckets, "complete": complete}


async def _count_hour(
    reader: Reader, query: StatsQuery, hour: str, counts: dict[int, Counter[str]], reads: _Reads
) -> bool:
    """Add one hour of the services to `counts`; False when the reads ran out."""
    services = query.services
    partition = services[0] if len(services) == 1 else SHARED
    summaries = await reader.hour_summaries(partition, hour, query.since_ms, reads.take)
    if summaries is None:
        return False
    reaching = [
        s
        for s in summaries
        if s.oldest <= query.until_ms and (not services or s.service in services)
    ]
    opened = [s for s in reaching if not _counted_whole(s, query, counts)]
    for n in range(0, len(opened), BODIES_PER_CALL):
        if not reads.take():
            return False
        for events in await reader.bodies(opened[n : n + BODIES_PER_CALL]):
            for event in events:
                ts = event["timestamp"]
                if query.since_ms <= ts <= query.until_ms:
                    counts.setdefault(ts - ts % query.step_ms, Counter())[event["level"]] += 1
    return True


def _counted_whole(summary: Summary, query: StatsQuery, counts: dict[int, Counter[str]]) -> bool:
    """Add the block's counts to its step when all its events fall in that one step of the
    range; False when its body must be counted event by event."""
    if summary.oldest < query.since_ms or summary.newest > query.until_ms:
        return False
    bucket = summary.oldest - summary.oldest % query.step_ms
    if summary.newest - summary.newest % query.step_ms != bucket:
        return False
    counts.setdefault(bucket, Counter()).update(summary.levels)
    return True
