"""The console over real HTTP (uvicorn, moto's DynamoDB), `logpipe query` and `ROLE=console`."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from logpipe.aws.clients import Clients
from logpipe.aws.registry import ServiceRegistry
from logpipe.config import Settings
from logpipe.dev.processes import RoleProcess, role_env, wait_http
from logpipe.read.console import create_admin_app, create_app
from tests.support.aws import make_event
from tests.support.servers import serving
from tests.test_reader import T0, newest_first, spread, store_events

pytestmark = pytest.mark.e2e

HOUR = 3_600_000
# Five hour buckets: 40 Queries, within one answer's budget (48).
WINDOW = {"service": "svc", "since": "2026-09-21T14:00:00Z", "until": "2026-09-21T18:59:59Z"}
# Reads in these tests may take their time on a busy machine: the deadline has its own tests.
DEADLINE_S = 60.0


@asynccontextmanager
async def running_console(settings: Settings, app: Starlette | None = None) -> AsyncIterator[str]:
    """The console app under a real uvicorn on a free loopback port, and its /metrics and
    /readyz on `settings.metrics_port` (see `admin_url`); its base URL."""
    app = app or create_app(settings, read_deadline_s=DEADLINE_S)
    async with (
        serving(app, settings.port) as url,
        serving(create_admin_app(app), settings.metrics_port),
    ):
        yield url


def admin_url(settings: Settings) -> str:
    """Where a console of `settings` serves /metrics and /readyz (LOGPIPE_METRICS_PORT)."""
    return f"http://127.0.0.1:{settings.metrics_port}"


@pytest.fixture
async def console_url(settings: Settings) -> AsyncIterator[str]:
    async with running_console(settings) as url:
        yield url


async def get(
    http: aiohttp.ClientSession,
    url: str,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with http.get(url, params=params, headers=headers) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def test_api_logs_answers_stored_events_newest_first_with_their_fields(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession, console_url: str
) -> None:
    events = spread(30, step_ms=600_000)
    events[29]["attributes"] = {"order": 42, "paid": True, "region": "eu"}
    events[29]["trace_id"] = "abcd"
    await store_events(clients, settings, events)

    status, body = await get(http, f"{console_url}/api/logs", {**WINDOW, "limit": "5"})

    assert status == 200
    assert [e["id"] for e in body["events"]] == newest_first(events)[:5]
    assert body["cursor"]
    first = body["events"][0]
    assert first == {
        "id": "ev-00000029",
        "service": "svc",
        "level": "debug",
        "message": "request 29 ok",
        "timestamp": "2026-09-21T18:50:00.000Z",
        "ingested_at": "2026-09-21T14:13:20.000Z",
        "attributes": {"order": 42, "paid": True, "region": "eu"},
        "trace_id": "abcd",
    }


async def test_following_the_cursor_pages_through_every_event_once(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession, console_url: str
) -> None:
    events = spread(45, step_ms=400_000)
    await store_events(clients, settings, events)
    seen: list[str] = []
    cursor = None

    while True:
        params = {**WINDOW, "limit": "10", **({"cursor": cursor} if cursor else {})}
        status, body = await get(http, f"{console_url}/api/logs", params)
        assert status == 200
        seen.extend(e["id"] for e in body["events"])
        cursor = body["cursor"]
        if cursor is None:
            break

    assert seen == newest_first(events)


async def test_level_and_text_filter_the_answer(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession, console_url: str
) -> None:
    events = spread(60, step_ms=60_000)
    await store_events(clients, settings, events)

    _, body = await get(http, f"{console_url}/api/logs", {**WINDOW, "level": "WARN", "q": "out"})

    expected = [e for e in events if e["level"] == "warn" and "out" in e["message"]]
    assert [e["id"] for e in body["events"]] == newest_first(expected)
    assert body["cursor"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({**WINDOW, "service": "a b"}, "service must be 1-64 characters"),
        (
            {**WINDOW, "level": "loud"},
            "level must be one of trace, debug, info, warn, error, fatal",
        ),
        ({**WINDOW, "since": "2026-09-22T00:00:00Z"}, "must not be after until"),
        ({**WINDOW, "limit": "0"}, "limit must be an integer 1-1000"),
        ({**WINDOW, "limit": "5000"}, "limit must be an integer 1-1000"),
        ({**WINDOW, "cursor": "bogus"}, "cursor is malformed"),
        ({**WINDOW, "since": "last tuesday"}, "since must be a duration back from now"),
        ({**WINDOW, "since": "40d", "until": "now"}, "the limit is 745 (31 days)"),
        ({**WINDOW, "levle": "error"}, "unknown parameter 'levle'"),
    ],
    ids=[
        "bad-service",
        "unknown-level",
        "since-after-until",
        "limit-0",
        "limit-5000",
        "bad-cursor",
        "bad-since",
        "too-long",
        "typo",
    ],
)
async def test_bad_parameters_answer_400_with_a_message(
    http: aiohttp.ClientSession, console_url: str, params: dict[str, str], message: str
) -> None:
    status, body = await get(http, f"{console_url}/api/logs", params)

    assert status == 400
    assert message in body["error"]


async def test_a_cursor_used_with_other_parameters_answers_400(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession, console_url: str
) -> None:
    await store_events(clients, settings, spread(10, step_ms=1000))
    _, first = await get(http, f"{console_url}/api/logs", {**WINDOW, "limit": "3"})

    status, body = await get(
        http, f"{console_url}/api/logs", {**WINDOW, "level": "error", "cursor": first["cursor"]}
    )

    assert status == 400
    assert "cursor belongs to a search with other parameters" in body["error"]


async def test_services_lists_what_the_registry_noted(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession, console_url: str
) -> None:
    await ServiceRegistry(clients.dynamodb, settings.table_name, 30).note(["shop", "billing"])

    status, body = await get(http, f"{console_url}/api/services")

    assert status == 200
    assert [s["service"] for s in body["services"]] == ["billing", "shop"]
    assert all(s["last_seen"].endswith("Z") for s in body["services"])


async def test_the_page_and_its_assets_are_served_with_no_outside_sources(
    http: aiohttp.ClientSession, console_url: str
) -> None:
    async with http.get(f"{console_url}/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    assert '<form id="search"' in page
    assert "http://" not in page and "https://" not in page
    for asset, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        async with http.get(f"{console_url}/static/{asset}") as response:
            assert response.status == 200
            assert response.content_type == kind


async def test_health_readiness_and_metrics_answer(
    settings: Settings, http: aiohttp.ClientSession, console_url: str
) -> None:
    admin = admin_url(settings)
    assert await get(http, f"{console_url}/healthz") == (200, {"status": "ok"})
    assert await get(http, f"{admin}/readyz") == (200, {"status": "ready"})
    await get(http, f"{console_url}/api/logs", {"service": "svc"})
    async with http.get(f"{admin}/metrics") as response:
        names = {f.name for f in text_string_to_metric_families(await response.text())}
    assert {"logpipe_console_searches", "logpipe_console_search_seconds"} <= names
    # Neither is served on the public port (LOGPIPE_METRICS_PORT, as on the ingestor).
    for path in ("/readyz", "/metrics"):
        async with http.get(f"{console_url}{path}") as response:
            assert response.status == 404, path


async def test_unknown_path_answers_404_as_json(
    http: aiohttp.ClientSession, console_url: str
) -> None:
    status, body = await get(http, f"{console_url}/api/nothing")
    assert (status, body) == (404, {"error": "Not Found"})


async def test_a_missing_table_answers_503_with_a_reason_not_a_crash(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with running_console(dataclasses.replace(settings, table_name="no-such-table")) as url:
        status, body = await get(http, f"{url}/api/logs", {"service": "svc"})
        assert (status, await get(http, f"{admin_url(settings)}/readyz")) == (
            503,
            (503, {"status": "unavailable", "error": "ResourceNotFoundException"}),
        )
    assert body == {"error": "the log table could not be read (ResourceNotFoundException)"}


# --- logpipe query and ROLE=console as real processes ----------------------------------------


async def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "logpipe",
        *args,
        env=role_env(settings, LOGPIPE_LOG_LEVEL="warning"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return int(process.returncode or 0), out.decode(), err.decode()


async def test_query_command_prints_the_newest_events_as_a_table(
    clients: Clients, settings: Settings
) -> None:
    events = spread(20, step_ms=60_000)
    events[19]["attributes"] = {"order": 7}
    await store_events(clients, settings, events)

    code, out, err = await run_cli(
        settings,
        *("query", "--service", "svc", "--since", WINDOW["since"], "--until", WINDOW["until"]),
        *("--limit", "3"),
    )

    assert code == 0
    assert out.splitlines() == [
        "TIME                      LEVEL  MESSAGE",
        "2026-09-21T14:19:00.000Z  DEBUG  request 19 ok  order=7",
        "2026-09-21T14:18:00.000Z  ERROR  request 18 ok",
        "2026-09-21T14:17:00.000Z  WARN   request 17 ok",
    ]
    assert "older ones match too" in err


async def test_query_command_with_json_prints_one_event_per_line(
    clients: Clients, settings: Settings
) -> None:
    events = spread(20, step_ms=60_000)
    await store_events(clients, settings, events)
    window = ("--since", WINDOW["since"], "--until", WINDOW["until"])

    code, out, _ = await run_cli(
        settings,
        "query",
        "--service",
        "svc",
        *window,
        "--level",
        "error",
        "--grep",
        "timed",
        "--json",
    )

    assert code == 0
    lines = [orjson.loads(line) for line in out.splitlines()]
    expected = [e for e in events if e["level"] == "error" and "timed" in e["message"]]
    assert [e["id"] for e in lines] == newest_first(expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--level", "loud"), "logpipe: level must be one of"),
        (("--limit", "0"), "logpipe: limit must be an integer 1-1000"),
        (("--since", "1h", "--until", "2h"), "logpipe: since (1h) must not be after until (2h)"),
    ],
    ids=["level", "limit", "window"],
)
async def test_query_command_with_bad_flags_exits_2_with_one_line(
    settings: Settings, args: tuple[str, ...], message: str
) -> None:
    code, out, err = await run_cli(settings, "query", "--service", "svc", *args)

    assert (code, out) == (2, "")
    assert err.startswith(message) and err.count("\n") == 1


async def test_console_role_serves_the_api_and_exits_0_on_sigterm(
    clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    await store_events(clients, settings, [make_event(1, timestamp=T0)])
    env = role_env(
        settings, ROLE="console", LOGPIPE_PORT=settings.port, LOGPIPE_LOG_LEVEL="warning"
    )
    # No sub-command: the container entrypoint, where ROLE picks the role.
    role = RoleProcess(
        "console", await asyncio.create_subprocess_exec(sys.executable, "-m", "logpipe", env=env)
    )
    url = f"http://127.0.0.1:{settings.port}"
    try:
        await wait_http(http, f"{url}/healthz", timeout=30)
        query = urlencode({**WINDOW, "limit": "1"})
        status, body = await get(http, f"{url}/api/logs?{query}")
        assert (status, [e["id"] for e in body["events"]]) == (200, ["ev-00000001"])
    finally:
        assert await role.stop(timeout=30) == 0
