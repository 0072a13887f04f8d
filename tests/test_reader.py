"""The read path: query parameters, hour buckets and cursors (pure), and the reader against moto."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from logpipe.aws.clients import Clients
from logpipe.aws.registry import ServiceRegistry
from logpipe.config import Settings
from logpipe.core.block import block_items, make_blocks
from logpipe.core.event import normalise
from logpipe.core.query import (
    MAX_HOURS,
    QueryError,
    _mac,
    decode_cursor,
    encode_cursor,
    hour_bucket,
    hour_buckets,
    hour_starts,
    parse_query,
    parse_time,
)
from logpipe.read.reader import Page, Reader
from tests.support.aws import make_event

pytestmark = pytest.mark.aws

SECRET = b"a secret of the tests, 32 bytes."
NOW = 1_790_000_000_000  # 2026-09-21T14:13:20Z
HOUR = 3_600_000
T0 = 1_789_999_200_000  # 2026-09-21T14:00:00Z, an hour boundary


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


async def store_events(
    clients: Clients,
    settings: Settings,
    events: Iterable[dict[str, Any]],
    per_message: int = 10,
    shuffle: bool = True,
) -> None:
    """Write events as the processor would: the events of each message (here `per_message`
    of them; shuffled first, so that blocks overlap in time) as blocks."""
    shuffled = [normalise(e, now_ms=NOW) for e in events]
    if shuffle:
        random.Random(7).shuffle(shuffled)
    items = []
    for start in range(0, len(shuffled), per_message):
        message = shuffled[start : start + per_message]
        items.extend(block_items(message, settings.shards, settings.retention_days))
    for start in range(0, len(items), 25):
        requests = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        response = await clients.dynamodb.batch_write_item(
            RequestItems={settings.table_name: requests}
        )
        assert not response.get("UnprocessedItems")


def window(since: int, until: int, **params: str) -> dict[str, str]:
    return {
        "service": "svc",
        "since": datetime.fromtimestamp(since / 1000, UTC).isoformat(),
        "until": datetime.fromtimestamp(until / 1000, UTC).isoformat(),
        **params,
    }


# --- pure: times, parameters, buckets, cursors ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("NOW", NOW),
        ("0s", NOW),
        ("15m", NOW - 15 * 60_000),
        ("6h", NOW - 6 * HOUR),
        ("2d", NOW - 48 * HOUR),
        ("1w", NOW - 168 * HOUR),
        ("1h30m", NOW - 90 * 60_000),
        ("2026-09-21T14:00:00Z", T0),
        ("2026-09-21t14:00:00z", T0),
        ("2026-09-21T16:00:00+02:00", T0),
        ("2026-09-21T14:00:00.250Z", T0 + 250),
        ("100000d", 0),
    ],
    ids=lambda v: str(v),
)
def test_time_is_a_duration_back_from_now_or_rfc3339(text: str, expected: int) -> None:
    assert parse_time("since", text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("15x", "must be a duration back from now"),
        ("m15", "must be a duration back from now"),
        ("yesterday", "must be a duration back from now"),
        ("-5m", "must be a duration back from now"),
        ("2026-09-21T14:00:00", "needs a time zone offset"),
        ("2026-13-01T00:00:00Z", "must be a duration back from now"),
    ],
)
def test_a_time_that_is_neither_duration_nor_rfc3339_is_refused(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_time("since", text, NOW)


def test_query_defaults_to_the_last_15_minutes_and_100_events() -> None:
    query = parse_query({"service": "svc"}, NOW, SECRET)
    assert (query.services, query.since_ms, query.until_ms) == (("svc",), NOW - 15 * 60_000, NOW)
    assert (query.levels, query.q, query.limit, query.position) == ((), None, 100, None)


@pytest.mark.parametrize(
    ("params", "field", "value"),
    [
        ({"level": "WARNING"}, "levels", ("warn",)),
        ({"level": "Error"}, "levels", ("error",)),
        ({"service": "Shop.API"}, "services", ("shop.api",)),
        ({"q": "disk full"}, "q", "disk full"),
        ({"q": ""}, "q", None),
        ({"limit": "1"}, "limit", 1),
        ({"limit": "1000"}, "limit", 1000),
    ],
    ids=["level-alias", "level-case", "service-case", "q", "empty-q", "limit-1", "limit-1000"],
)
def test_query_parameters_are_normalised(params: dict[str, str], field: str, value: Any) -> None:
    assert getattr(parse_query({"service": "svc", **params}, NOW, SECRET), field) == value


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"service": "a b"}, "service must be 1-64 characters"),
        ({"service": "svc", "level": "verbose"}, "level must be one of"),
        ({"service": "svc", "limit": "0"}, "limit must be an integer 1-1000"),
        ({"service": "svc", "limit": "1001"}, "limit must be an integer 1-1000"),
        ({"service": "svc", "limit": "ten"}, "limit must be an integer 1-1000"),
        ({"service": "svc", "since": "1h", "until": "2h"}, "must not be after until"),
        ({"service": "svc", "since": "32d"}, f"the limit is {MAX_HOURS} \\(31 days\\)"),
        ({"service": "svc", "q": "x" * 1025}, "q must be at most 1024 characters"),
        ({"service": "svc", "cursor": "not-a-cursor"}, "cursor is malformed"),
    ],
    ids=[
        "bad-service",
        "unknown-level",
        "limit-0",
        "limit-1001",
        "limit-text",
        "since-after-until",
        "over-31-days",
        "long-q",
        "garbage-cursor",
    ],
)
def test_bad_query_parameters_are_refused_with_a_reason(
    params: dict[str, str], message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(params, NOW, SECRET)


@pytest.mark.parametrize("now", [T0, T0 + 1, T0 + HOUR - 1])
def test_any_31_day_range_is_allowed(now: int) -> None:
    query = parse_query({"service": "svc", "since": "31d"}, now, SECRET)
    assert len(hour_buckets(query.since_ms, query.until_ms)) <= MAX_HOURS


def test_a_range_of_more_than_31_days_is_refused() -> None:
    with pytest.raises(QueryError, match="spans 746 hour buckets"):
        parse_query(window(T0 - 31 * 24 * HOUR, T0 + HOUR), NOW, SECRET)


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        ("2026-09-21T14:00:00", "2026-09-21T14:59:59.999", ["2026-09-21T14"]),
        ("2026-09-21T14:59:59.999", "2026-09-21T15:00:00", ["2026-09-21T15", "2026-09-21T14"]),
        (
            "2026-09-21T13:30:00",
            "2026-09-21T15:10:00",
            ["2026-09-21T15", "2026-09-21T14", "2026-09-21T13"],
        ),
        ("2026-12-31T23:10:00", "2027-01-01T00:05:00", ["2027-01-01T00", "2026-12-31T23"]),
        ("1970-01-01T00:00:00", "1970-01-01T00:00:00", ["1970-01-01T00"]),
    ],
    ids=["one-hour", "boundary", "three-hours", "new-year", "epoch"],
)
def test_hour_buckets_cover_the_window_newest_first(
    since: str, until: str, expected: list[str]
) -> None:
    assert hour_buckets(ms(since + "+00:00"), ms(until + "+00:00")) == expected


def test_hour_starts_are_the_hours_of_the_buckets() -> None:
    starts = hour_starts(T0 - 1, T0 + HOUR)
    assert starts == [T0 + HOUR, T0, T0 - HOUR]
    assert [hour_bucket(s) for s in starts] == hour_buckets(T0 - 1, T0 + HOUR)


@pytest.mark.parametrize(
    "timestamp", [0, T0 - 1, T0, T0 + 1, T0 + HOUR - 1, 1_798_761_599_999, 9_999_999_999_999]
)
def test_hour_bucket_is_the_one_the_writer_puts_in_the_partition_key(timestamp: int) -> None:
    event = normalise(make_event(1, timestamp=timestamp), now_ms=timestamp)
    block = make_blocks([event])[0][0]
    assert block.pk(8).split("#")[1] == hour_bucket(timestamp)


def test_a_cursor_continues_the_same_window_below_its_position() -> None:
    params = window(T0, T0 + HOUR, level="error")
    first = parse_query(params, NOW, SECRET)
    cursor = encode_cursor(first.fingerprint, first.since_ms, f"{T0 + 500:013d}#ev-1", SECRET)

    later = parse_query({**params, "cursor": cursor, "limit": "5"}, NOW, SECRET)

    assert later.position == f"{T0 + 500:013d}#ev-1"
    assert (later.since_ms, later.until_ms, later.limit) == (T0, T0 + 500, 5)


def test_a_cursor_pins_a_relative_since_so_pages_do_not_slide() -> None:
    first = parse_query({"service": "svc", "since": "1h"}, NOW, SECRET)
    cursor = encode_cursor(first.fingerprint, first.since_ms, f"{NOW - 10:013d}#ev", SECRET)

    an_hour_later = parse_query(
        {"service": "svc", "since": "1h", "cursor": cursor}, NOW + HOUR, SECRET
    )

    assert an_hour_later.since_ms == NOW - HOUR


@pytest.mark.parametrize(
    "changed",
    [{"service": "other"}, {"level": "info"}, {"q": "x"}, {"since": "2h"}, {"until": "5m"}],
    ids=["service", "level", "q", "since", "until"],
)
def test_a_cursor_used_with_other_parameters_is_refused(changed: dict[str, str]) -> None:
    params = {"service": "svc", "since": "1h", "level": "error"}
    first = parse_query(params, NOW, SECRET)
    cursor = encode_cursor(first.fingerprint, first.since_ms, f"{NOW - 10:013d}#ev", SECRET)

    with pytest.raises(QueryError, match="other parameters"):
        parse_query({**params, **changed, "cursor": cursor}, NOW, SECRET)


def signed(doc: object, secret: bytes = SECRET) -> str:
    """A cursor with a valid signature around any document: what only the console can make."""
    body = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    return f"{body}.{_mac(body, secret)}"


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%",
        signed("not a cursor"),
        signed({"v": 1, "f": "f", "s": 0, "p": "0000000000001#x"}),
        signed({"v": 2, "f": "f", "s": 0, "p": "12#x"}),
        signed({"v": 2, "f": "f", "s": 5, "p": "0000000000001#x"}),
        signed({"v": 2, "f": "f", "s": 1, "p": "0000000000001"}),
        signed({"v": 2, "f": "f", "s": 0, "p": "0000000000001#"}),
        signed({"v": 2, "f": "f", "s": 10**30, "p": "0000000000001#x"}),
        "a." * 600,
    ],
    ids=[
        "no-signature",
        "not-an-object",
        "other-version",
        "short-position",
        "since-after",
        "since-at-boundary",
        "no-id",
        "huge-number",
        "too-long",
    ],
)
def test_a_damaged_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(QueryError, match="cursor is malformed"):
        decode_cursor(cursor, "f", SECRET)


def _edit_position(cursor: str, position: str) -> str:
    body, mac = cursor.split(".")
    doc = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    doc["p"] = position
    return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=") + "." + mac


GOOD = encode_cursor("f", T0, f"{T0 + 500:013d}#ev-1", SECRET)


@pytest.mark.parametrize(
    "cursor",
    [
        _edit_position(GOOD, f"{T0 + 5 * HOUR:013d}#ev-1"),
        GOOD[:-2],
        GOOD.split(".")[0] + "." + GOOD.split(".")[0][:22],
        encode_cursor("f", T0, f"{T0 + 500:013d}#ev-1", b"another console's secret, 32 b.."),
        GOOD.split(".")[0] + ".",
    ],
    ids=["position-moved", "truncated", "mac-replaced", "other-secret", "mac-removed"],
)
def test_a_cursor_edited_truncated_or_signed_elsewhere_is_refused(cursor: str) -> None:
    assert decode_cursor(GOOD, "f", SECRET) == (T0, f"{T0 + 500:013d}#ev-1")
    with pytest.raises(QueryError, match="not one this console made"):
        decode_cursor(cursor, "f", SECRET)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "9" * 5000 + "s"}, "since must be at most 64 characters"),
        ({"since": "9" * 13 + "s"}, "since must be a duration back from now"),
        ({"until": "9" * 60 + "d"}, "until must be a duration back from now"),
        ({"until": "9" * 5000}, "until must be at most 64 characters"),
        ({"limit": "9" * 5000}, "limit must be an integer 1-1000"),
        ({"limit": "-1"}, "limit must be an integer 1-1000"),
        ({"limit": "1e3"}, "limit must be an integer 1-1000"),
        ({"limit": "\u0661\u0662"}, "limit must be an integer 1-1000"),
        ({"since": "99999-01-01T00:00:00Z"}, "since must be a duration back from now"),
        ({"cursor": "9" * 5000}, "cursor is malformed"),
        ({"since": "9" * 12 + "w"}, "the limit is 745"),
    ],
    ids=[
        "since-5000-nines",
        "since-13-digits",
        "until-60-digits",
        "until-5000-digits",
        "limit-5000-digits",
        "limit-negative",
        "limit-exponent",
        "limit-arabic-digits",
        "year-99999",
        "cursor-5000-digits",
        "since-largest-duration",
    ],
)
def test_numbers_out_of_any_range_are_refused_before_conversion(
    params: dict[str, str], message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query({"service": "svc", **params}, NOW, SECRET)


# --- the reader against moto's DynamoDB -------------------------------------------------------


def spread(count: int, step_ms: int, **fields: Any) -> list[dict[str, Any]]:
    """`count` events from T0 on, every `step_ms`, with levels and messages that vary."""
    levels = ["info", "info", "warn", "error", "debug"]
    return [
        make_event(
            n,
            timestamp=T0 + n * step_ms,
            level=levels[n % len(levels)],
            message=f"request {n} {'timed out' if n % 7 == 0 else 'ok'}",
            **fields,
        )
        for n in range(count)
    ]


def newest_first(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in sorted(events, key=lambda e: (e["timestamp"], e["id"]), reverse=True)]


async def read_all(reader: Reader, params: dict[str, str]) -> tuple[list[str], int]:
    """Follow cursors to the end: every id in order, and how many pages it took."""
    ids: list[str] = []
    pages = 0
    cursor = None
    while True:
        query = parse_query({**params, **({"cursor": cursor} if cursor else {})}, NOW, SECRET)
        page = await reader.read(query)
        pages += 1
        ids.extend(e["id"] for e in page.events)
        if page.cursor is None:
            return ids, pages
        assert len(page.events) == query.limit
        cursor = page.cursor


@pytest.fixture
def reader(clients: Clients, settings: Settings) -> Reader:
    # A budget no test of what a search finds runs into (the budget has tests of its own).
    return Reader(
        clients.dynamodb,
        settings.table_name,
        settings.shards,
        concurrency=16,
        cursor_secret=SECRET,
        query_budget=10_000,
        deadline_s=60,
    )


async def test_events_come_back_newest_first_across_shards_and_hours(
    clients: Clients, settings: Settings, reader: Reader
) -> None:
    events = spread(200, step_ms=97_000)  # about 5.4 hours, every shard
    await store_events(clients, settings, events)

    page = await reader.read(parse_query(window(T0, T0 + 6 * HOUR, limit="1000"), NOW, SECRET))

    assert [e["id"] for e in page.events] == newest_first(events)
    assert page.cursor is None


@pytest.mark.parametrize("limit", [7, 50])
async def test_pages_cover_every_event_exactly_once_in_order(
    clients: Clients, settings: Settings, reader: Reader, limit: int
) -> None:
    events = spread(120, step_ms=150_000)
    # Ties: several events in one millisecond, spread over shards by their ids.
    events += [make_event(1000 + n, timestamp=T0 + HOUR) for n in range(12)]
    await store_events(clients, settings, events)

    ids, pages = await read_all(reader, window(T0, T0 + 6 * HOUR, limit=str(limit)))

    assert ids == newest_first(events)
    assert pages == -(-len(events) // limit)


async def test_level_and_text_filters_select_exactly_the_matching_events(
    clients: Clients, settings: Settings, reader: Reader
) -> None:
    events = spread(150, step_ms=60_000)
    await store_events(clients, settings, events)
    expected = [e for e in events if e["level"] == "error" and "timed out" in e["message"]]

    ids, _ = await read_all(
        reader, window(T0, T0 + 3 * HOUR, level="error", q="timed out", limit="2")
    )

    assert len(expected) > 2
    assert ids == newest_first(expected)


async def test_window_bounds_are_inclusive_to_the_millisecond(
    clients: Clients, settings: Settings, reader: Reader
) -> None:
    times = [T0 - 1, T0, T0 + 5000, T0 + 10_000, T0 + 10_001]
    events = [make_event(n, timestamp=t) for n, t in enumerate(times)]
    await store_events(clients, settings, events)

    page = await reader.read(parse_query(window(T0, T0 + 10_000), NOW, SECRET))

    assert [e["id"] for e in page.events] == ["ev-00000003", "ev-00000002", "ev-00000001"]


async def test_other_services_events_are_not_returned(
    clients: Clients, settings: Settings, reader: Reader
) -> None:
    await store_events(clients, settings, spread(10, 1000) + spread(10, 1000, service="svc2"))

    page = await reader.read(parse_query(window(T0, T0 + HOUR), NOW, SECRET))

    assert {e["service"] for e in page.events} == {"svc"}
    assert len(page.events) == 10


async def test_a_full_page_in_the_newest_hour_reads_few_partitions_and_never_scans(
    clients: Clients, settings: Settings, reader: Reader
) -> None:
    await store_events(clients, settings, spread(300, step_ms=1000))  # 5 minutes, one hour
    operations: list[str] = []

    def record(model: Any, **kwargs: Any) -> None:
        operations.append(model.name)

    clients.dynamodb.meta.events.register("before-call.dynamodb", record)

    page = await reader.read(
        parse_query(window(T0 - 23 * HOUR, T0 + HOUR - 1, limit="100"), NOW, SECRET)
    )

    assert len(page.events) == 100
    # The newest hour's summaries, one Query a shard, not all 24 hours; then its 30 blocks'
    # bodies (they overlap: each was a message of 10 events from all over the 5 minutes).
    assert operations.count("Query") == settings.shards
    assert operations.count("BatchGetItem") == 2
    assert len(operations) == settings.shards + 2


async def test_a_dense_service_reads_only_the_hours_the_page_needs(
    clients: Clients, settings: Settings, reader: Reader
) -> None:
    # 100 events an hour; the window ends half-way through an hour.
    events = [make_event(n, timestamp=T0 + HOUR // 2 - 1 - n * 36_000) for n in range(600)]
    await store_events(clients, settings, events)
    calls: list[str] = []
    clients.dynamodb.meta.events.register(
        "before-call.dynamodb.Query", lambda **kwargs: calls.append("Query")
    )

    page = await reader.read(parse_query(window(T0 - 12 * HOUR, T0 + HOUR // 2 - 1), NOW, SECRET))

    assert [e["id"] for e in page.events] == newest_first(events)[:100]
    # The half hour (50 events) and the hour before it: two hours of 8 shards, no third.
    assert len(calls) == 2 * settings.shards


async def test_an_empty_window_answers_no_events_and_no_cursor(reader: Reader) -> None:
    page = await reader.read(parse_query(window(T0, T0 + 24 * HOUR), NOW, SECRET))
    assert (page.events, page.cursor) == ([], None)


async def test_fewer_shards_than_the_default_are_read_the_same_way(
    clients: Clients, settings: Settings
) -> None:
    settings = dataclasses.replace(settings, shards=3)
    events = spread(40, step_ms=300_000)
    await store_events(clients, settings, events)
    reader = Reader(
        clients.dynamodb,
        settings.table_name,
        shards=3,
        concurrency=2,
        cursor_secret=SECRET,
        query_budget=10_000,
        deadline_s=60,
    )

    ids, _ = await read_all(reader, window(T0, T0 + 4 * HOUR, limit="9"))

    assert ids == newest_first(events)


# --- the services registry ----------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_services_seen_are_listed_by_name_with_when_they_were_last_seen(
    clients: Clients, settings: Settings
) -> None:
    clock = Clock(1_790_000_000.0)
    registry = ServiceRegistry(clients.dynamodb, settings.table_name, 30, clock=clock)

    await registry.note(["shop", "billing", "shop"])

    assert (await registry.services())[0] == [
        {"service": "billing", "last_seen": "2026-09-21T14:13:20.000Z"},
        {"service": "shop", "last_seen": "2026-09-21T14:13:20.000Z"},
    ]


async def test_a_service_is_written_at_most_once_a_minute(
    clients: Clients, settings: Settings
) -> None:
    clock = Clock(1_790_000_000.0)
    registry = ServiceRegistry(clients.dynamodb, settings.table_name, 30, clock=clock)
    await registry.note(["shop"])

    clock.now += 59
    await registry.note(["shop", "billing"])
    seen = {s["service"]: s["last_seen"] for s in (await registry.services())[0]}
    assert seen == {"shop": "2026-09-21T14:13:20.000Z", "billing": "2026-09-21T14:14:19.000Z"}

    clock.now += 1
    await registry.note(["shop"])
    seen = {s["service"]: s["last_seen"] for s in (await registry.services())[0]}
    assert seen["shop"] == "2026-09-21T14:14:20.000Z"


async def test_services_not_seen_within_the_retention_are_not_listed(
    clients: Clients, settings: Settings
) -> None:
    clock = Clock(1_790_000_000.0)
    registry = ServiceRegistry(clients.dynamodb, settings.table_name, 1, clock=clock)
    await registry.note(["old"])
    clock.now += 86_400 - 120
    await registry.note(["new"])

    clock.now += 121
    assert [s["service"] for s in (await registry.services())[0]] == ["new"]


async def test_registry_items_never_appear_in_a_search(
    clients: Clients, settings: Settings, reader: Reader
) -> None:
    await ServiceRegistry(clients.dynamodb, settings.table_name, 30).note(["svc"])
    page = await reader.read(parse_query({"service": "svc", "since": "2h"}, NOW, SECRET))
    assert page.events == []


async def test_noting_services_when_the_table_is_missing_logs_and_does_not_raise(
    clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ServiceRegistry(clients.dynamodb, "no-such-table", 30)

    await registry.note(["shop"])

    assert "could not record 1 services: ResourceNotFoundException" in caplog.text


# --- the budget of one read ---------------------------------------------------------------------


def budget_reader(clients: Clients, settings: Settings, budget: int, deadline_s: float) -> Reader:
    return Reader(
        clients.dynamodb,
        settings.table_name,
        settings.shards,
        concurrency=16,
        cursor_secret=SECRET,
        query_budget=budget,
        deadline_s=deadline_s,
    )


async def test_a_month_of_an_empty_service_answers_within_the_budget_with_a_cursor(
    clients: Clients, settings: Settings
) -> None:
    reader = budget_reader(clients, settings, budget=48, deadline_s=60)

    page = await reader.read(parse_query({"service": "nobody", "since": "31d"}, NOW, SECRET))

    assert (page.events, page.complete) == ([], False)
    assert page.cursor is not None
    assert reader.query_calls <= 48
    # The cursor goes on below the hours already searched, inside the same window.
    later = parse_query({"service": "nobody", "since": "31d", "cursor": page.cursor}, NOW, SECRET)
    assert later.until_ms < NOW - 4 * HOUR and later.since_ms == NOW - 31 * 24 * HOUR


@pytest.mark.parametrize(
    ("budget", "bodies_per_call", "params"),
    [
        (4, 1, {"limit": "7"}),
        (4, 2, {"level": "error", "limit": "4"}),
        (5, 1, {"q": "REQUEST", "limit": "25"}),
    ],
    ids=["a-block-a-read", "level-filter", "text-filter"],
)
async def test_reads_stopped_by_the_budget_still_cover_every_event_once_in_order(
    clients: Clients,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    budget: int,
    bodies_per_call: int,
    params: dict[str, str],
) -> None:
    # Few bodies per BatchGetItem, so an hour needs several reads and the budget runs out
    # part-way through it.
    monkeypatch.setattr("logpipe.read.reader.BODIES_PER_CALL", bodies_per_call)
    events = spread(160, step_ms=97_000)  # about 4.3 hours, every shard
    # Messages of events in time order, as a service's own logs arrive: blocks barely overlap.
    await store_events(clients, settings, events, shuffle=False)
    reader = budget_reader(clients, settings, budget=budget, deadline_s=60)
    query = window(T0 - HOUR, T0 + 6 * HOUR, **params)
    ids: list[str] = []
    stops: list[str] = []  # where the reads the budget stopped ended
    cursor = None
    while True:
        before = reader.query_calls
        page = await reader.read(
            parse_query({**query, **({"cursor": cursor} if cursor else {})}, NOW, SECRET)
        )
        assert reader.query_calls - before <= budget
        ids.extend(e["id"] for e in page.events)
        if not page.complete:
            assert page.cursor is not None
            stops.append(
                decode_cursor(page.cursor, parse_query(query, NOW, SECRET).fingerprint, SECRET)[1]
            )
        if page.cursor is None:
            break
        cursor = page.cursor

    level, q = params.get("level"), params.get("q")
    expected = [
        e
        for e in events
        if (not level or e["level"] == level) and (not q or q.lower() in e["message"].lower())
    ]
    assert ids == newest_first(expected)
    assert stops


async def test_blocks_that_all_overlap_are_read_past_the_budget_only_as_far_as_progress_needs(
    clients: Clients, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every message holds events from all over one hour: each block reaches every point of
    # it, so nothing can be returned before every block of the hour is read.
    monkeypatch.setattr("logpipe.read.reader.BODIES_PER_CALL", 2)
    events = spread(120, step_ms=29_000)  # 58 minutes: 12 blocks of 10, all overlapping
    await store_events(clients, settings, events)
    reader = budget_reader(clients, settings, budget=3, deadline_s=60)
    query = window(T0, T0 + HOUR - 1, limit="50")
    ids: list[str] = []
    reads: list[int] = []
    cursor = None
    while True:
        before = reader.query_calls
        page = await reader.read(
            parse_query({**query, **({"cursor": cursor} if cursor else {})}, NOW, SECRET)
        )
        reads.append(reader.query_calls - before)
        ids.extend(e["id"] for e in page.events)
        if page.cursor is None:
            break
        cursor = page.cursor

    assert ids == newest_first(events)
    # A page reads past its budget at most the hour's summaries (a Query a shard) and its 12
    # bodies, two a call; and each page moves past at least one block.
    assert max(reads) <= settings.shards + 6
    assert len(reads) <= 12


async def test_past_its_deadline_a_read_finishes_the_first_hour_and_stops(
    clients: Clients, settings: Settings
) -> None:
    reader = budget_reader(clients, settings, budget=10_000, deadline_s=0)
    await store_events(clients, settings, [make_event(1, timestamp=T0 + 2 * HOUR + 5)])
    query = window(T0, T0 + 6 * HOUR - 1)
    pages: list[Page] = []
    cursor = None
    while True:
        page = await reader.read(
            parse_query({**query, **({"cursor": cursor} if cursor else {})}, NOW, SECRET)
        )
        pages.append(page)
        if page.cursor is None:
            break
        cursor = page.cursor

    assert len(pages) == 6  # one hour bucket each: every answer moved the search on
    assert [len(p.events) for p in pages] == [0, 0, 0, 1, 0, 0]
    assert [p.complete for p in pages] == [False] * 5 + [True]


# --- the registry's bounds ----------------------------------------------------------------------


async def test_the_registry_remembers_only_the_services_noted_most_recently(
    clients: Clients, settings: Settings
) -> None:
    clock = Clock(1_790_000_000.0)
    registry = ServiceRegistry(clients.dynamodb, settings.table_name, 30, clock=clock, remembered=3)
    await registry.note([f"junk-{n}" for n in range(50)])
    await registry.note(["shop"])
    assert registry.remembered == 3

    clock.now += 10
    await registry.note(["shop", "junk-0"])  # shop is remembered, junk-0 was forgotten

    seen = {s["service"]: s["last_seen"] for s in (await registry.services())[0]}
    assert seen["shop"] == "2026-09-21T14:13:20.000Z"
    assert seen["junk-0"] == "2026-09-21T14:13:30.000Z"
    assert registry.remembered == 3


async def test_services_are_listed_newest_first_up_to_the_limit(
    clients: Clients, settings: Settings
) -> None:
    clock = Clock(1_790_000_000.0)
    registry = ServiceRegistry(clients.dynamodb, settings.table_name, 30, clock=clock)
    for n in range(5):
        await registry.note([f"svc-{n}"])
        clock.now += 60

    listed, truncated = await registry.services(limit=3)

    assert [s["service"] for s in listed] == ["svc-4", "svc-3", "svc-2"]
    assert truncated
    assert (await registry.services(limit=5))[1] is False
