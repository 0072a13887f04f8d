"""Search across services: `/api/logs` and `/api/stats` with no service, several, a trace id,
attributes, repeated levels and text, over a real console against moto's server."""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import REGISTRY
from starlette.datastructures import QueryParams

from logpipe.aws.calls import stored_events
from logpipe.aws.clients import Clients
from logpipe.aws.registry import ServiceRegistry
from logpipe.config import Settings
from logpipe.core.query import MAX_ATTR_FILTERS, MAX_SERVICES, QueryError, parse_query
from logpipe.read.export import export_command
from tests.support.aws import make_event
from tests.test_console import running_console
from tests.test_reader import NOW, SECRET, T0, store_events
from tests.test_stats import events_of, true_counts

HOUR = 3_600_000
SERVICES = ("api", "billing", "cart", "search")
LEVELS = ("debug", "info", "info", "warn", "error")

Pairs = list[tuple[str, str]]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def span(since: int, until: int, *pairs: tuple[str, str]) -> Pairs:
    return [("since", iso(since)), ("until", iso(until)), *pairs]


async def get(http: aiohttp.ClientSession, url: str, params: Pairs) -> tuple[int, Any]:
    async with http.get(url, params=params) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def every_page(
    http: aiohttp.ClientSession, url: str, params: Pairs
) -> tuple[list[dict[str, Any]], list[bool]]:
    """Follow the cursors to the end: every event, and each page's `complete`."""
    events: list[dict[str, Any]] = []
    completes: list[bool] = []
    cursor: str | None = None
    while True:
        status, body = await get(
            http, f"{url}/api/logs", params + ([("cursor", cursor)] if cursor else [])
        )
        assert status == 200, body
        events.extend(body["events"])
        completes.append(body["complete"])
        cursor = body["cursor"]
        if cursor is None:
            return events, completes


def keys(events: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["service"], e["id"]) for e in events]


def newest_first(events: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    ordered = sorted(events, key=lambda e: (e["timestamp"], e["service"], e["id"]), reverse=True)
    return keys(ordered)


def mixed(count: int, since: int, span_ms: int, seed: int) -> list[dict[str, Any]]:
    """Events of every service with the same ids in each (an id is one per service) and,
    now and then, the same millisecond too."""
    rng = random.Random(seed)
    events = []
    for n in range(count):
        for service in SERVICES:
            ts = (
                since + (n * 997) % span_ms
                if rng.random() < 0.3
                else since + rng.randrange(span_ms)
            )
            events.append(
                make_event(
                    n,
                    service=service,
                    timestamp=ts,
                    level=rng.choice(LEVELS),
                    message=rng.choice(["Disk FULL on /var", "user signed in", "cache miss"]),
                    trace_id=f"{rng.randrange(16**32):032x}",
                    attributes={"region": rng.choice(["eu", "us"]), "order_id": n % 7},
                )
            )
    return events


def _operations() -> dict[str, float]:
    return {
        op: REGISTRY.get_sample_value("logpipe_aws_requests_total", {"operation": op}) or 0.0
        for op in ("Query", "BatchGetItem")
    }


@pytest.mark.e2e
async def test_a_search_of_no_service_or_several_is_newest_first_each_event_once(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    events = mixed(60, T0 - HOUR // 2, HOUR, 1)
    await store_events(clients, settings, events, per_message=25)
    since, until = T0 - HOUR, T0 + HOUR

    async with running_console(settings) as url:
        every, _ = await every_page(http, url, span(since, until, ("limit", "37")))
        two, _ = await every_page(
            http, url, span(since, until, ("service", "cart"), ("service", "api"))
        )
        one, _ = await every_page(http, url, span(since, until, ("service", "billing")))

    assert keys(every) == newest_first(events)
    assert len(every) == 4 * 60
    assert keys(two) == newest_first(e for e in events if e["service"] in ("api", "cart"))
    assert keys(one) == newest_first(e for e in events if e["service"] == "billing")


@pytest.mark.e2e
async def test_a_trace_across_three_services_is_found_with_no_service_named(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    noise = mixed(50, T0 - 3 * HOUR, 4 * HOUR, 2)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    spans = [
        make_event(9000 + n, service=s, timestamp=T0 - HOUR + n * 1_200_000, trace_id=trace)
        for n, s in enumerate(["api", "cart", "billing", "cart"])
    ]
    await store_events(clients, settings, noise + spans, per_message=20)
    since, until = T0 - 3 * HOUR, T0 + HOUR - 1

    async with running_console(settings) as url:
        before = _operations()
        found, completes = await every_page(
            http, url, span(since, until, ("trace_id", trace.upper()))
        )
        after = _operations()

    assert keys(found) == newest_first(spans)
    assert {e["trace_id"] for e in found} == {trace}
    assert all(completes)
    # The shared partition: one Query page per shard and hour, whatever the services.
    assert after["Query"] - before["Query"] == settings.shards * 4


@pytest.mark.e2e
async def test_attribute_filters_all_hold_and_match_the_stored_values_exactly(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    events = mixed(70, T0, HOUR, 3)
    events[0]["attributes"] = {"region": "eu", "order_id": 3, "paid": True}
    await store_events(clients, settings, events, per_message=30)
    since, until = T0, T0 + HOUR - 1

    async with running_console(settings) as url:
        both, _ = await every_page(
            http, url, span(since, until, ("attr.region", "eu"), ("attr.order_id", "3"))
        )
        paid, _ = await every_page(http, url, span(since, until, ("attr.paid", "true")))
        case, _ = await every_page(http, url, span(since, until, ("attr.region", "EU")))

    truth = [e for e in events if e["attributes"]["region"] == "eu"]
    truth = [e for e in truth if e["attributes"]["order_id"] == 3]
    assert len(truth) > 3 and keys(both) == newest_first(truth)
    assert keys(paid) == [(events[0]["service"], events[0]["id"])]
    assert case == []


@pytest.mark.e2e
async def test_repeated_levels_and_text_in_any_case_filter_across_services(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    events = mixed(60, T0, HOUR, 4)
    await store_events(clients, settings, events, per_message=30)
    since, until = T0, T0 + HOUR - 1

    async with running_console(settings) as url:
        levels, _ = await every_page(
            http, url, span(since, until, ("level", "warn"), ("level", "ERROR"), ("limit", "25"))
        )
        text, _ = await every_page(http, url, span(since, until, ("q", "disk full")))
        both, _ = await every_page(
            http, url, span(since, until, ("q", "DISK"), ("level", "error"), ("service", "api"))
        )

    assert keys(levels) == newest_first(e for e in events if e["level"] in ("warn", "error"))
    assert keys(text) == newest_first(e for e in events if "Disk FULL" in e["message"])
    assert keys(both) == newest_first(
        e
        for e in events
        if e["service"] == "api" and e["level"] == "error" and "Disk" in e["message"]
    )
    assert levels and text and both


@pytest.mark.e2e
async def test_a_cursor_continues_only_its_own_filter_set_in_any_order(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    events = mixed(30, T0, HOUR, 5)
    await store_events(clients, settings, events, per_message=30)
    base = span(T0, T0 + HOUR - 1, ("limit", "5"))
    filters = [("service", "api"), ("service", "cart"), ("level", "info"), ("level", "warn")]
    filters += [("attr.region", "eu")]

    async with running_console(settings) as url:
        status, first = await get(http, f"{url}/api/logs", base + filters)
        cursor = [("cursor", first["cursor"])]
        swapped = base + list(reversed(filters)) + cursor
        status_swapped, same = await get(http, f"{url}/api/logs", swapped)
        refused = [
            await get(http, f"{url}/api/logs", base + other + cursor)
            for other in (
                filters[:1] + filters[2:],
                filters[1:],
                filters[:4],
                [*filters, ("trace_id", "ab")],
                [*filters, ("attr.region", "us")],
            )
        ]

    assert status == 200 and first["cursor"]
    assert status_swapped == 200 and same["events"]
    assert not set(keys(same["events"])) & set(keys(first["events"]))
    assert [s for s, _ in refused] == [400] * 5
    assert all("other parameters" in body["error"] for _, body in refused)


@pytest.mark.e2e
async def test_a_cross_service_search_out_of_budget_continues_to_the_exact_truth(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    events = mixed(40, T0 - 5 * HOUR, 6 * HOUR, 6)
    await store_events(clients, settings, events, per_message=7)
    tight = dataclasses.replace(settings, query_budget=settings.shards + 1)
    params = span(T0 - 5 * HOUR, T0 + HOUR - 1, ("level", "error"), ("limit", "30"))

    async with running_console(tight) as url:
        found, completes = await every_page(http, url, params)

    assert False in completes
    assert keys(found) == newest_first(e for e in events if e["level"] == "error")


@pytest.mark.e2e
@pytest.mark.parametrize("budget", [48, 3], ids=["default-budget", "tight-budget"])
async def test_an_hour_of_more_summaries_than_one_query_asks_for_pages_exactly(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession, budget: int
) -> None:
    # Messages of two events: some 400 blocks, overlapping in time (shuffled), about 200
    # summaries per shard, read a hundred, then two hundred at a time.
    events = mixed(100, T0, HOUR, 8)
    await store_events(clients, settings, events, per_message=2)
    tight = dataclasses.replace(settings, query_budget=budget)

    async with running_console(tight) as url:
        found, completes = await every_page(
            http, url, span(T0, T0 + HOUR - 1, ("limit", "50"), ("service", "api"))
        )
        every, _ = await every_page(http, url, span(T0, T0 + HOUR - 1, ("limit", "50")))

    assert keys(found) == newest_first(e for e in events if e["service"] == "api")
    assert keys(every) == newest_first(events)
    assert (budget == 3) == (False in completes)


@pytest.mark.e2e
async def test_stats_across_services_are_the_true_counts_over_hours(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    streams = [events_of(s, 700, T0 - HOUR // 2, 3 * HOUR, n + 1) for n, s in enumerate(SERVICES)]
    for events in streams:
        await store_events(clients, settings, events, per_message=40)
    since, until = T0 - 20 * 60_000, T0 + 2 * HOUR + 7 * 60_000 - 1
    params = span(since, until, ("step", "5m"))

    async with running_console(settings) as url:
        _, every = await get(http, f"{url}/api/stats", params)
        _, two = await get(
            http, f"{url}/api/stats", [*params, ("service", "cart"), ("service", "api")]
        )
        _, one = await get(http, f"{url}/api/stats", [*params, ("service", "search")])

    everything = [e for events in streams for e in events]
    assert every["complete"] and two["complete"] and one["complete"]
    assert every["buckets"] == true_counts(everything, since, until, 5 * 60_000)
    assert two["buckets"] == true_counts(streams[0] + streams[2], since, until, 5 * 60_000)
    assert one["buckets"] == true_counts(streams[3], since, until, 5 * 60_000)
    assert sum(sum(b["counts"].values()) for b in every["buckets"]) > 1000


@pytest.mark.aws
async def test_export_and_stored_counts_take_no_shared_copy_twice(
    clients: Clients, settings: Settings
) -> None:
    events = mixed(40, T0 - HOUR // 2, HOUR, 7)
    await store_events(clients, settings, events, per_message=15)
    await ServiceRegistry(clients.dynamodb, settings.table_name, 30).note(list(SERVICES))
    out = io.BytesIO()

    code = await export_command(settings, [], iso(T0 - HOUR), iso(T0 + HOUR), out=out)

    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert code == 0
    assert sorted(keys(lines)) == sorted(keys(events))
    assert len(await stored_events(clients, settings.table_name)) == len(events)


@pytest.mark.e2e
async def test_unknown_and_unbounded_search_parameters_are_refused(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with running_console(settings) as url:
        unknown = await get(http, f"{url}/api/logs", [("services", "api")])
        attribute = await get(http, f"{url}/api/logs", [("attr.region", "eu")])

    assert unknown[0] == 400 and "unknown parameter 'services'" in unknown[1]["error"]
    assert attribute == (200, {"events": [], "cursor": None, "complete": True})


@pytest.mark.unit
@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("service", f"s{n}") for n in range(MAX_SERVICES + 1)], "at most 50 services"),
        ([(f"attr.k{n}", "v") for n in range(MAX_ATTR_FILTERS + 1)], "at most 10 attr"),
        ([("attr.", "v")], "attribute names are 1-128"),
        ([("attr.k", "v" * 257)], "at most 256 characters"),
        ([("trace_id", "not-hex")], "trace_id must be 1-32 hex digits"),
        ([("trace_id", "a" * 33)], "trace_id must be 1-32 hex digits"),
        ([("level", "info"), ("level", "loud")], "level must be one of"),
    ],
    ids=["services", "attrs", "empty-name", "long-value", "trace-text", "trace-long", "level"],
)
def test_bad_search_filters_are_refused_with_a_reason(pairs: Pairs, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(QueryParams(pairs), NOW, SECRET)


@pytest.mark.unit
def test_repeated_filters_are_sets_and_a_plain_mapping_still_parses() -> None:
    query = parse_query(
        QueryParams(
            [
                *[("service", "Cart"), ("service", "api"), ("service", "cart"), ("level", "ERROR")],
                *[("level", "warning"), ("attr.a", "1"), ("attr.a", "2"), ("trace_id", "ABC")],
            ]
        ),
        NOW,
        SECRET,
    )
    plain = parse_query({"service": "cart", "level": "warn"}, NOW, SECRET)

    assert query.services == ("api", "cart") and query.partition == "*"
    assert query.levels == ("error", "warn") and query.trace_id == "abc"
    assert query.attrs == (("a", "1"), ("a", "2"))
    assert plain.services == ("cart",) and plain.partition == "cart" and plain.levels == ("warn",)
