"""`GET /api/stats`: events per level per step over a whole range, from block summaries."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from logpipe.aws.clients import Clients
from logpipe.aws.registry import ServiceRegistry
from logpipe.config import Settings
from logpipe.core.query import QueryError
from logpipe.read.stats import parse_stats
from tests.support.aws import make_event
from tests.test_console import get, running_console
from tests.test_reader import T0, store_events

HOUR = 3_600_000
LEVELS = ("debug", "info", "info", "info", "warn", "error")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def true_counts(events: list[dict[str, Any]], since: int, until: int, step: int) -> list[Any]:
    counts: dict[int, Counter[str]] = {}
    for e in events:
        if since <= e["timestamp"] <= until:
            counts.setdefault(e["timestamp"] - e["timestamp"] % step, Counter())[e["level"]] += 1
    first = since - since % step
    return [
        {"t": iso(t).replace("Z", ".000Z"), "counts": dict(sorted(counts.get(t, {}).items()))}
        for t in range(first, until + 1, step)
    ]


def events_of(service: str, count: int, start: int, span: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        make_event(
            seed * 100_000 + n,
            service=service,
            timestamp=start + rng.randrange(span),
            level=rng.choice(LEVELS),
        )
        for n in range(count)
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("shuffle", [False, True], ids=["blocks-in-time-order", "overlapping"])
async def test_stats_are_the_true_counts_over_hours_and_services(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession, shuffle: bool
) -> None:
    svc = events_of("svc", 1500, T0 - HOUR // 2, 3 * HOUR, 1)
    api = events_of("api", 700, T0, 2 * HOUR, 2)
    for events in (svc, api):
        await store_events(clients, settings, events, per_message=40, shuffle=shuffle)
    await ServiceRegistry(clients.dynamodb, settings.table_name, 30).note(["svc", "api"])
    since, until, step = T0 - 20 * 60_000, T0 + 2 * HOUR + 7 * 60_000 - 1, 5 * 60_000
    params = {"since": iso(since), "until": iso(until), "step": "5m"}

    async with running_console(settings) as url:
        status, one = await get(http, f"{url}/api/stats", {**params, "service": "svc"})
        _, every = await get(http, f"{url}/api/stats", params)

    assert status == 200 and one["complete"] and one["step_s"] == 300
    assert one["buckets"] == true_counts(svc, since, until, step)
    assert every["buckets"] == true_counts(svc + api, since, until, step)
    assert sum(sum(b["counts"].values()) for b in one["buckets"]) > 1000


@pytest.mark.e2e
async def test_stats_of_blocks_inside_a_step_read_no_bodies(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    # 40 messages of 20 events, each message within one minute: every block inside a step.
    events = [
        make_event(n, timestamp=T0 + (n // 20) * 60_000 + n % 20, level=LEVELS[n % 6])
        for n in range(800)
    ]
    await store_events(clients, settings, events, per_message=20, shuffle=False)
    params = {"service": "svc", "since": iso(T0), "until": iso(T0 + HOUR - 1), "step": "1m"}
    async with running_console(settings) as url:
        before = _operations()
        status, answer = await get(http, f"{url}/api/stats", params)
        after = _operations()

    assert status == 200
    assert answer["buckets"] == true_counts(events, T0, T0 + HOUR - 1, 60_000)
    # The console runs in this process: its calls are counted in this registry.
    assert after["BatchGetItem"] == before["BatchGetItem"]
    assert after["Query"] - before["Query"] == settings.shards


def _operations() -> dict[str, float]:
    return {
        op: REGISTRY.get_sample_value("logpipe_aws_requests_total", {"operation": op}) or 0.0
        for op in ("Query", "BatchGetItem")
    }


@pytest.mark.unit
@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"step": "0s"}, "step must be a duration"),
        ({"step": "5 minutes"}, "step must be a duration"),
        ({"step": "1s", "since": "1d"}, "more than 1000 buckets"),
        ({"since": "40d"}, "31 days"),
        ({"since": "now", "until": "1h"}, "since must not be after until"),
    ],
)
def test_bad_stats_parameters_are_refused(params: dict[str, str], error: str) -> None:
    with pytest.raises(QueryError, match=error):
        parse_stats(["svc"], params, T0)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("since", "step_s"), [("15m", 10), ("1h", 60), ("6h", 300), ("24h", 900), ("7d", 10800)]
)
def test_an_absent_step_gives_at_most_120_buckets(since: str, step_s: int) -> None:
    assert parse_stats([], {"since": since}, T0).step_ms == step_s * 1000


@pytest.mark.unit
def test_more_than_50_services_are_refused() -> None:
    with pytest.raises(QueryError, match="at most 50"):
        parse_stats([f"s{n}" for n in range(51)], {}, T0)
