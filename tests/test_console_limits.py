"""The console's read side locked and bounded: read keys, headers, the query budget, signed
cursors, bounded numbers and service lists, and `logpipe query` output a terminal can trust."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import random
import sys
import time
import unicodedata
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from logpipe.aws.clients import Clients, open_clients
from logpipe.aws.registry import ServiceRegistry
from logpipe.config import Settings
from logpipe.core.event import MAX_EVENT_BYTES
from logpipe.core.query import encode_cursor, parse_query
from logpipe.dev import promtext
from logpipe.dev.processes import RoleProcess, free_port, role_env, wait_http
from logpipe.errors import ConfigError
from logpipe.ingest.app import MAX_SERVICES_PER_REQUEST, validate
from logpipe.read.console import create_app
from logpipe.read.query_cli import _Progress, escape_controls, format_table
from tests.support.aws import bootstrapped, fresh_settings, make_event
from tests.support.roles import peak_rss_mb
from tests.support.wait import wait_until
from tests.test_console import WINDOW, get, running_console
from tests.test_reader import HOUR, T0, newest_first, spread, store_events

pytestmark = pytest.mark.e2e

READ_KEY = "read-key-of-the-tests"
OTHER_READ_KEY = "another-read-key"
INGEST_KEY = "ingest-key-of-the-tests"
AUTH = {"Authorization": f"Bearer {READ_KEY}"}
ONE_HOUR = {"service": "svc", "since": "2026-09-21T14:00:00Z", "until": "2026-09-21T14:59:59Z"}


@pytest.fixture
def locked(settings: Settings) -> Settings:
    """Read keys and ingest keys both set, one cursor secret shared by the consoles."""
    return dataclasses.replace(
        settings,
        read_keys=(READ_KEY, OTHER_READ_KEY),
        api_keys=(INGEST_KEY,),
        cursor_secret="a cursor secret shared by every console",
    )


# --- read keys and headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": f"Bearer {INGEST_KEY}"}, 401),
        ({"Authorization": "Bearer not-a-key-at-all"}, 401),
        ({"Authorization": f"Bearer {READ_KEY}x"}, 401),
        ({"Authorization": READ_KEY}, 401),
        ({"Authorization": f"Basic {READ_KEY}"}, 401),
        (AUTH, 200),
        ({"Authorization": f"bearer {OTHER_READ_KEY}"}, 200),
    ],
    ids=[
        "none",
        "ingest-key",
        "wrong",
        "longer",
        "no-scheme",
        "basic",
        "read-key",
        "second-read-key",
    ],
)
async def test_the_api_answers_only_a_read_key(
    locked: Settings, http: aiohttp.ClientSession, headers: dict[str, str], status: int
) -> None:
    async with running_console(locked) as url:
        for path in ("/api/logs?service=svc", "/api/services"):
            async with http.get(url + path, headers=headers) as response:
                assert response.status == status, path
                if status == 401:
                    assert response.headers["WWW-Authenticate"] == 'Bearer realm="logpipe"'
                    assert "read key" in (await response.json())["error"]


async def test_without_read_keys_the_api_is_open(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with running_console(dataclasses.replace(settings, api_keys=(INGEST_KEY,))) as url:
        assert (await get(http, f"{url}/api/services"))[0] == 200


async def test_every_answer_carries_nosniff_and_no_referrer_and_the_page_its_csp(
    locked: Settings, http: aiohttp.ClientSession
) -> None:
    answers = [
        ("/api/logs?service=svc", AUTH, 200),
        ("/api/logs?service=svc", {}, 401),
        ("/api/logs?service=svc&limit=0", AUTH, 400),
        ("/api/services", AUTH, 200),
        ("/api/nothing", AUTH, 404),
        ("/", {}, 200),
        ("/static/console.js", {}, 200),
        ("/healthz", {}, 200),
    ]
    async with running_console(locked) as url:
        for path, headers, status in answers:
            async with http.get(url + path, headers=headers) as response:
                assert response.status == status, path
                assert response.headers["X-Content-Type-Options"] == "nosniff", path
                assert response.headers["Referrer-Policy"] == "no-referrer", path
                # Stored logs stay out of every browser and proxy cache.
                no_store = response.headers.get("Cache-Control") == "no-store"
                assert no_store == path.startswith("/api/"), path
        async with http.get(f"{url}/") as response:
            policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


async def test_with_read_keys_metrics_and_readyz_are_only_on_the_metrics_port_and_cached(
    locked: Settings, http: aiohttp.ClientSession
) -> None:
    metrics_port = free_port()
    env = role_env(
        locked,
        LOGPIPE_PORT=locked.port,
        LOGPIPE_METRICS_PORT=metrics_port,
        LOGPIPE_LOG_LEVEL="warning",
        LOGPIPE_READ_KEYS=READ_KEY,
    )
    role = await RoleProcess.start("console", env)
    public, admin = f"http://127.0.0.1:{locked.port}", f"http://127.0.0.1:{metrics_port}"
    try:
        await wait_http(http, f"{public}/healthz", timeout=30)
        # Where the API is, neither answers, with a read key or without one.
        for path in ("/metrics", "/readyz"):
            for headers in ({}, AUTH):
                async with http.get(public + path, headers=headers) as response:
                    assert response.status == 404, (path, headers)
        # On LOGPIPE_METRICS_PORT (inside the VPC, as the ingestor's), /readyz asks
        # DynamoDB at most once every few seconds, however many ask.
        assert await get(http, f"{admin}/readyz") == (200, {"status": "ready"})
        queries = await _queries(http, admin)
        answers = await asyncio.gather(*(get(http, f"{admin}/readyz") for _ in range(20)))
        made = await _queries(http, admin) - queries
    finally:
        assert await role.stop(timeout=30) == 0
    assert answers == [(200, {"status": "ready"})] * 20
    assert made <= 1, made  # before: one Query per /readyz, on the public port


async def _queries(http: aiohttp.ClientSession, admin: str) -> float:
    samples = await promtext.scrape(http, f"{admin}/metrics")
    return promtext.total(samples, "logpipe_aws_requests_total", operation="Query")


def test_read_keys_fail_closed_and_the_budget_and_secret_are_checked() -> None:
    assert Settings.from_env({}).read_keys == ()
    assert Settings.from_env({}).query_budget == 48
    assert Settings.from_env({}).max_answer_bytes == 4 * 1024 * 1024
    assert Settings.from_env({}).max_concurrent_reads == 8
    bounds = {"LOGPIPE_MAX_ANSWER_BYTES": "65536", "LOGPIPE_MAX_CONCURRENT_READS": "2"}
    bounded = Settings.from_env(bounds)
    assert (bounded.max_answer_bytes, bounded.max_concurrent_reads) == (65536, 2)
    keys = Settings.from_env({"LOGPIPE_READ_KEYS": " first-key-1, second-key-2 ,"}).read_keys
    assert keys == ("first-key-1", "second-key-2")
    for env in (
        {"LOGPIPE_READ_KEYS": ""},
        {"LOGPIPE_READ_KEYS": " , ,"},
        {"LOGPIPE_READ_KEYS": "short"},
        {"LOGPIPE_QUERY_BUDGET": "0"},
        {"LOGPIPE_QUERY_BUDGET": "9" * 5000},
        {"LOGPIPE_CURSOR_SECRET": "too short"},
        {"LOGPIPE_MAX_ANSWER_BYTES": "1000"},  # less than one event
        {"LOGPIPE_MAX_ANSWER_BYTES": "4MiB"},
        {"LOGPIPE_MAX_CONCURRENT_READS": "0"},
    ):
        name = next(iter(env))
        with pytest.raises(ConfigError, match=name):
            Settings.from_env(env)


# --- the query budget ---------------------------------------------------------------------------


async def test_a_month_long_search_of_an_empty_service_answers_in_seconds_with_a_cursor(
    locked: Settings, http: aiohttp.ClientSession
) -> None:
    app = create_app(locked)
    params = {"service": "nobody", "since": "31d", "limit": "1"}
    async with running_console(locked, app) as url:
        started = time.monotonic()
        status, body = await get(http, f"{url}/api/logs", params, AUTH)
        elapsed = time.monotonic() - started
        calls = app.state.console.reader.query_calls

        assert (status, body["events"], body["complete"]) == (200, [], False)
        assert body["cursor"]
        assert calls <= locked.query_budget
        assert elapsed < 5, elapsed  # it was 18 s and 5,960 Queries in one answer
        print(f"31-day empty search: {elapsed:.2f} s, {calls} Queries")

        # The cursor goes on searching, within the budget again.
        status, second = await get(
            http, f"{url}/api/logs", {**params, "cursor": body["cursor"]}, AUTH
        )
        assert status == 200 and second["cursor"] not in (None, body["cursor"])
        assert app.state.console.reader.query_calls - calls <= locked.query_budget


async def test_a_page_that_ran_out_of_budget_says_so_and_its_cursor_finds_the_rest(
    clients: Clients, locked: Settings, http: aiohttp.ClientSession
) -> None:
    # A budget of one hour bucket per answer; events in the newest and the oldest hour.
    locked = dataclasses.replace(locked, query_budget=locked.shards)
    events = [make_event(n, timestamp=T0 + 600_000 + n * 4 * HOUR) for n in range(2)]
    await store_events(clients, locked, events)
    params = {**WINDOW, "limit": "10"}
    seen: list[str] = []
    answers = []
    async with running_console(locked) as url:
        cursor = None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            status, body = await get(http, f"{url}/api/logs", query, AUTH)
            assert status == 200
            seen += [e["id"] for e in body["events"]]
            answers.append(body["complete"])
            cursor = body["cursor"]
            if cursor is None:
                break
    assert seen == newest_first(events)
    assert answers == [False] * (len(answers) - 1) + [True] and len(answers) > 2


# --- cursors and numbers ------------------------------------------------------------------------


def _moved(cursor: str) -> str:
    """The cursor with one character of its body changed (a position edited by hand)."""
    body, mac = cursor.split(".")
    index = len(body) // 2
    swapped = "A" if body[index] != "A" else "B"
    return f"{body[:index]}{swapped}{body[index + 1 :]}.{mac}"


async def test_edited_truncated_and_foreign_cursors_answer_400_and_a_shared_secret_works(
    clients: Clients, locked: Settings, http: aiohttp.ClientSession
) -> None:
    await store_events(clients, locked, spread(10, step_ms=1000))
    async with running_console(locked) as url:
        _, first = await get(http, f"{url}/api/logs", {**ONE_HOUR, "limit": "3"}, AUTH)
    cursor = first["cursor"]
    query = parse_query(ONE_HOUR, 1_790_000_000_000, b"x")
    foreign = encode_cursor(query.fingerprint, query.since_ms, "1790000000000#ev", b"other" * 8)
    bad = {
        "edited": _moved(cursor),
        "truncated": cursor[:-4],
        "body-only": cursor.split(".")[0],
        "foreign": foreign,
        "huge": "A" * 5000,
    }
    # Another console with the same LOGPIPE_CURSOR_SECRET follows the cursor.
    async with running_console(locked) as url:
        status, page = await get(http, f"{url}/api/logs", {**ONE_HOUR, "cursor": cursor}, AUTH)
        assert (status, len(page["events"])) == (200, 7)
        for name, forged in bad.items():
            status, body = await get(http, f"{url}/api/logs", {**ONE_HOUR, "cursor": forged}, AUTH)
            assert status == 400, name
            assert "cursor" in body["error"], name
    # One without it (a secret made for its process) does not.
    async with running_console(dataclasses.replace(locked, cursor_secret="")) as url:
        status, body = await get(http, f"{url}/api/logs", {**ONE_HOUR, "cursor": cursor}, AUTH)
        assert status == 400 and "not one this console made" in body["error"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/logs", {"service": "svc", "since": "9" * 5000 + "s"}),
        ("/api/logs", {"service": "svc", "until": "9" * 5000}),
        ("/api/logs", {"service": "svc", "limit": "9" * 5000}),
        ("/api/logs", {"service": "svc", "limit": "-5"}),
        ("/api/logs", {"service": "svc", "since": "99999999999999w"}),
        ("/api/logs", {"service": "svc", "since": "+275760-09-13T00:00:00Z"}),
        ("/api/logs", {"service": "s" * 5000}),
        ("/api/services", {"limit": "0"}),
        ("/api/services", {"limit": "9" * 5000}),
        ("/api/services", {"limit": "ten"}),
    ],
    ids=[
        "since-5000-nines",
        "until-5000-nines",
        "limit-5000-nines",
        "limit-negative",
        "since-14-digit-weeks",
        "since-far-year",
        "service-5000",
        "services-limit-0",
        "services-limit-5000-nines",
        "services-limit-text",
    ],
)
async def test_odd_numbers_answer_400_never_500(
    locked: Settings, http: aiohttp.ClientSession, path: str, params: dict[str, str]
) -> None:
    async with running_console(locked) as url:
        status, body = await get(http, url + path, params, AUTH)
    assert status == 400, body
    assert len(body["error"]) < 300


async def test_services_are_capped_newest_first(
    clients: Clients, locked: Settings, http: aiohttp.ClientSession
) -> None:
    registry = ServiceRegistry(clients.dynamodb, locked.table_name, 30)
    await registry.note([f"junk-{n:04d}" for n in range(150)])
    clock = time.time() + 120
    await ServiceRegistry(clients.dynamodb, locked.table_name, 30, clock=lambda: clock).note(
        ["shop"]
    )
    async with running_console(locked) as url:
        _, default = await get(http, f"{url}/api/services", None, AUTH)
        _, few = await get(http, f"{url}/api/services", {"limit": "3"}, AUTH)
    assert len(default["services"]) == 100 and default["truncated"] is True
    assert [s["service"] for s in few["services"]] == ["shop", "junk-0000", "junk-0001"]


# --- logpipe query ------------------------------------------------------------------------------


async def run_query(settings: Settings, *args: str, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "logpipe",
        "query",
        "--service",
        "svc",
        *("--since", WINDOW["since"], "--until", WINDOW["until"]),
        *args,
        env=role_env(settings, LOGPIPE_LOG_LEVEL="warning", **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return int(process.returncode or 0), out.decode(), err.decode()


HOSTILE = (
    "\x1b[2J\x1b[H cleared \x1b]0;retitled\x07 \x1b]52;c;ZWNobyBwd25lZA==\x07 "
    "\x9b31m c1 \x90dcs\x9c \r\x08\x7f \u202eevil\u202c \x00end"
)


def _controls(text: str) -> list[str]:
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf")]


async def test_query_text_output_escapes_every_control_character_and_json_stays_exact(
    clients: Clients, settings: Settings
) -> None:
    event = make_event(
        1,
        timestamp=1_790_000_000_000,
        message=HOSTILE,
        attributes={"k\x1b[31m": "v\x1b]52;c;eA==\x07", "n": 1},
    )
    await store_events(clients, settings, [event])

    code, out, _ = await run_query(settings)
    assert code == 0
    assert _controls(out) == []
    assert "\\x1b[2J\\x1b[H cleared \\x1b]0;retitled\\x07" in out
    assert "k\\x1b[31m=v\\x1b]52;c;eA==\\x07" in out

    code, out, _ = await run_query(settings, "--json")
    assert code == 0
    (stored,) = [orjson.loads(line) for line in out.splitlines()]
    assert stored["message"] == HOSTILE
    assert stored["attributes"]["k\x1b[31m"] == "v\x1b]52;c;eA==\x07"


def test_every_field_of_the_table_is_escaped() -> None:
    hostile = {"timestamp": "\x1b[1m", "level": "\x9binfo", "message": "m", "attributes": {}}
    table = format_table([hostile])
    assert _controls(table) == []
    assert escape_controls("a\tb\nc\rd\x1be\x85f") == "a\\tb\\nc\\rd\\x1be\\x85f"
    assert escape_controls("naïve — ünïcode ✓") == "naïve — ünïcode ✓"


async def test_query_follows_cursors_until_the_limit_or_the_end_of_the_range(
    clients: Clients, settings: Settings
) -> None:
    events = spread(25, step_ms=720_000)  # 5 an hour for 5 hours
    await store_events(clients, settings, events)
    one_hour = {"LOGPIPE_QUERY_BUDGET": str(settings.shards)}  # each read: one hour bucket

    code, out, err = await run_query(settings, "--limit", "12", "--json", **one_hour)
    assert code == 0
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == newest_first(events)[:12]
    assert "older ones match too" in err

    code, out, err = await run_query(settings, "--limit", "100", "--json", **one_hour)
    assert code == 0
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == newest_first(events)
    assert err == ""


def test_the_progress_line_is_shown_on_a_terminal_only_and_cleared() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for err in (terminal, pipe):
        progress = _Progress(err)
        progress.show(3, "2026-09-21T14:00:00.000Z")
        progress.show(12, "2026-09-21T13:00:00.000Z")
        progress.clear()
    assert pipe.getvalue() == ""
    shown = terminal.getvalue()
    assert "12 found, searched back to 2026-09-21T13:00:00.000Z" in shown
    assert shown.endswith("\r") and "\n" not in shown


def test_one_ingest_request_names_a_bounded_number_of_services() -> None:
    raw = [
        {"service": f"svc-{n % 80}", "level": "info", "message": "m", "id": f"e{n}"}
        for n in range(160)
    ]

    accepted, rejected = validate(raw, 1_790_000_000_000)

    services = {orjson.loads(e)["service"] for e in accepted}
    assert len(services) == MAX_SERVICES_PER_REQUEST == 64
    assert len(rejected) == 2 * (80 - 64)
    assert rejected[0] == {"index": 64, "error": "service is one more than 64 in a request"}


async def test_the_console_warns_when_open_and_refuses_to_start_with_blank_read_keys(
    settings: Settings, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    env = role_env(settings, LOGPIPE_PORT=settings.port, LOGPIPE_LOG_LEVEL="warning")
    env.pop("LOGPIPE_READ_KEYS", None)
    env.pop("LOGPIPE_CURSOR_SECRET", None)
    with (tmp_path / "console.log").open("wb") as log:
        role = await RoleProcess.start("console", env, log_file=log)
        try:
            await wait_http(http, f"http://127.0.0.1:{settings.port}/healthz", timeout=30)
        finally:
            assert await role.stop(timeout=30) == 0
    printed = (tmp_path / "console.log").read_text()
    assert "LOGPIPE_READ_KEYS is unset: anyone who reaches the console reads" in printed
    assert "LOGPIPE_CURSOR_SECRET is unset" in printed

    blank = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "logpipe",
        "console",
        env={**env, "LOGPIPE_READ_KEYS": " , "},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await blank.communicate()
    assert blank.returncode == 2
    assert "LOGPIPE_READ_KEYS is set but holds no key" in err.decode()


# --- memory: answers bounded in bytes, reads bounded in number ---------------------------------

LARGE_EVENTS = 1100


def large_events(count: int) -> list[dict[str, Any]]:
    """Events of about 30 KB (a 16 KB message, 4 attributes of 3,300 characters), 3 s apart
    from T0: one dense hour. Random text, so nothing is shared or compressible."""
    events = []
    for n in range(count):
        rng = random.Random(n)
        attributes = {f"field_{k}": rng.randbytes(1650).hex() for k in range(4)}
        message = rng.randbytes(8000).hex()
        events.append(
            make_event(n, timestamp=T0 + n * 3000, message=message, attributes=attributes)
        )
    return events


async def _peak_under_concurrent_pages(
    http: aiohttp.ClientSession, url: str, pid: int, readers: int
) -> tuple[float, list[tuple[int, dict[str, str], Any]]]:
    """`readers` concurrent `limit=1000` searches by clients that read an answer only once
    every search has been answered (a slow link): the console's peak RSS, and each answer."""
    params = {**ONE_HOUR, "limit": "1000"}
    answered = asyncio.Barrier(readers)

    async def one() -> tuple[int, dict[str, str], Any]:
        async with http.get(f"{url}/api/logs", params=params, headers=AUTH) as response:
            await answered.wait()
            return response.status, dict(response.headers), await response.json()

    answers = await asyncio.gather(*(one() for _ in range(readers)))
    return peak_rss_mb(pid), answers


async def test_ten_concurrent_pages_of_large_events_stay_within_the_console_memory(
    aws_endpoint: str, http: aiohttp.ClientSession
) -> None:
    # 40 shards: the first Query of every shard of the hour (never cut by the deadline)
    # brings the whole page, so every answer would hold 1,000 events, however busy the host.
    locked = await bootstrapped(fresh_settings(aws_endpoint, shards=40))
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, locked, pool=8)
        await store_events(clients, locked, large_events(LARGE_EVENTS))
    seeded = time.monotonic() - started
    env = role_env(
        locked,
        LOGPIPE_PORT=locked.port,
        LOGPIPE_METRICS_PORT=free_port(),
        LOGPIPE_LOG_LEVEL="warning",
        LOGPIPE_READ_KEYS=READ_KEY,
    )
    role = await RoleProcess.start("console", env)
    url = f"http://127.0.0.1:{locked.port}"
    try:
        await wait_http(http, f"{url}/healthz", timeout=30)
        idle = peak_rss_mb(role.process.pid)
        peak, answers = await _peak_under_concurrent_pages(http, url, role.process.pid, 10)
    finally:
        assert await role.stop(timeout=30) == 0
    statuses = sorted(status for status, _, _ in answers)
    served = [body for status, _, body in answers if status == 200]
    sizes = [len(orjson.dumps(body)) / 1e6 for body in served]
    print(
        f"seeded {LARGE_EVENTS} events in {seeded:.1f} s; console RSS {idle:.0f} MB idle, "
        f"peak {peak:.0f} MB under 10 concurrent limit=1000; statuses {statuses}; "
        f"answers {min(sizes, default=0):.1f}-{max(sizes, default=0):.1f} MB, "
        f"{[len(body['events']) for body in served]} events"
    )
    assert peak <= 400, peak  # before: 360-373 MB here, answers of 27 MB (~900 events)
    # Each answer stops at LOGPIPE_MAX_ANSWER_BYTES (with the event that passed it), and says
    # so: not complete, a cursor to go on.
    bound = Settings().max_answer_bytes + 2 * MAX_EVENT_BYTES
    assert served and all(len(orjson.dumps(body["events"])) <= bound for body in served)
    assert all(body["cursor"] and body["complete"] is False for body in served)
    for status, headers, _ in answers:
        assert status in (200, 429)
        if status == 429:
            assert int(headers["Retry-After"]) >= 1


async def test_an_answer_stopped_by_its_byte_bound_continues_exactly_where_it_stopped(
    clients: Clients, locked: Settings, http: aiohttp.ClientSession
) -> None:
    bounded = dataclasses.replace(locked, max_answer_bytes=64 * 1024)
    # Events of 1-7 KB over five hours: answers end inside hours and at their edges.
    events = spread(90, step_ms=200_000)
    for n, event in enumerate(events):
        event["message"] = f"{n:04d} " + "x" * (1000 + n * 397 % 6000)
    await store_events(clients, bounded, events)
    seen: list[str] = []
    answers: list[tuple[int, bool]] = []
    async with running_console(bounded) as url:
        cursor = None
        while True:
            query = {**WINDOW, "limit": "1000", **({"cursor": cursor} if cursor else {})}
            status, body = await get(http, f"{url}/api/logs", query, AUTH)
            assert status == 200
            seen += [e["id"] for e in body["events"]]
            answers.append((len(orjson.dumps(body["events"])), body["complete"]))
            cursor = body["cursor"]
            if cursor is None:
                break
    assert seen == newest_first(events)  # none lost, none twice, in order
    assert len(answers) >= 5
    assert all(size <= 64 * 1024 + 8 * 1024 for size, _ in answers)
    assert [complete for _, complete in answers] == [False] * (len(answers) - 1) + [True]


async def test_reads_past_the_concurrent_cap_get_429_with_retry_after_and_no_store(
    locked: Settings, http: aiohttp.ClientSession
) -> None:
    # One read at a time; a 31-day search of an empty service holds it about 3 s (its
    # deadline), a budget it never reaches.
    capped = dataclasses.replace(locked, max_concurrent_reads=1, query_budget=100_000)
    slow = {"service": "nobody", "since": "31d", "limit": "1"}
    async with running_console(capped, create_app(capped, read_deadline_s=3.0)) as url:
        long_reads: list[asyncio.Task[tuple[int, Any]]] = []
        refused: list[tuple[dict[str, str], Any]] = []

        async def a_read_is_refused_while_the_long_one_runs() -> bool:
            if not long_reads or long_reads[-1].done():
                # Start the long read (again, when a poll came first and took the slot, or
                # it ended first), and let it begin before the next poll.
                long_reads.append(asyncio.create_task(get(http, f"{url}/api/logs", slow, AUTH)))
                return False
            async with http.get(f"{url}/api/services", headers=AUTH) as response:
                if response.status == 429:
                    refused.append((dict(response.headers), await response.json()))
            return bool(refused)

        await wait_until(a_read_is_refused_while_the_long_one_runs, timeout=30, interval=0.02)
        headers, body = refused[0]
        assert int(headers["Retry-After"]) >= 1
        assert headers["Cache-Control"] == "no-store"
        assert body == {"error": "the console serves 1 reads at once; retry"}
        assert (await long_reads[-1])[0] == 200
        # The slot is free again once it ends.
        assert (await get(http, f"{url}/api/services", None, AUTH))[0] == 200
