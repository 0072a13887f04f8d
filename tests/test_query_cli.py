"""`logpipe query` as a real process: its flags as the API's parameters, and reading through a
console role (LOGPIPE_CONSOLE_URL, LOGPIPE_READ_KEY) with no AWS settings at all."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from argparse import Namespace
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from logpipe.aws.clients import Clients
from logpipe.cli import build_parser
from logpipe.config import Settings
from logpipe.dev.processes import free_port, role_env, wait_http
from logpipe.errors import ConfigError
from logpipe.read.query_cli import MAX_API_ANSWER_BYTES, query_pairs, where_pair
from tests.support.aws import make_event
from tests.support.roles import Roles
from tests.support.servers import serving
from tests.test_query_follow import follow_three_events
from tests.test_reader import T0, newest_first, spread, store_events

READ_KEY = "read-key-of-the-tests"
WINDOW = ("--since", "2026-09-21T14:00:00Z", "--until", "2026-09-21T18:59:59Z")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "pairs"),
    [
        pytest.param([], [], id="nothing: every service, the defaults"),
        pytest.param(
            ["--service", "api", "--service", "web"],
            [("service", "api"), ("service", "web")],
            id="services-repeat",
        ),
        pytest.param(
            ["--level", "warn", "--level", "error", "--trace-id", "ab12"],
            [("trace_id", "ab12"), ("level", "warn"), ("level", "error")],
            id="levels-and-trace",
        ),
        pytest.param(
            ["--where", "order_id=42", "--where", "url=/a?b=c", "-q", "Timed Out"],
            [("q", "Timed Out"), ("attr.order_id", "42"), ("attr.url", "/a?b=c")],
            id="where-splits-at-the-first-equals",
        ),
        pytest.param(
            ["--since", "1h", "--until", "5m", "--limit", "7"],
            [("since", "1h"), ("until", "5m"), ("limit", "7")],
            id="window-and-limit",
        ),
    ],
)
def test_the_flags_become_the_apis_parameters(
    argv: list[str], pairs: list[tuple[str, str]]
) -> None:
    args = build_parser().parse_args(["query", *argv])
    assert query_pairs(args) == pairs


@pytest.mark.unit
@pytest.mark.parametrize("text", ["order_id", "=42", ""])
def test_where_without_a_key_and_equals_sign_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--where takes KEY=VALUE"):
        where_pair(text)
    with pytest.raises(ConfigError):
        query_pairs(
            Namespace(
                service=None,
                since=None,
                until=None,
                trace_id=None,
                grep=None,
                level=None,
                where=[text],
                limit=None,
            )
        )


# --- through a console role -----------------------------------------------------------------


@pytest.fixture
async def console(roles: Roles, http: aiohttp.ClientSession) -> AsyncIterator[str]:
    """A console role with a read key; its URL."""
    await roles.start("console", LOGPIPE_READ_KEYS=READ_KEY)
    url = f"http://127.0.0.1:{roles.settings.port}"
    await wait_http(http, f"{url}/healthz", timeout=30)
    yield url


def api_env(tmp_path: Path, url: str, key: str | None = READ_KEY) -> dict[str, str]:
    """An environment without a single AWS variable, credential or config file."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LOGPIPE_CONSOLE_URL": url,
        "LOGPIPE_LOG_LEVEL": "warning",
    }
    if key is not None:
        env["LOGPIPE_READ_KEY"] = key
    return env


async def start_query(env: dict[str, str], cwd: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "logpipe", "query", *args),
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_query(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    process = await start_query(env, cwd, *args)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return int(process.returncode or 0), out.decode(), err.decode()


@pytest.mark.e2e
async def test_with_a_console_url_and_read_key_it_needs_no_aws_settings(
    clients: Clients, settings: Settings, console: str, tmp_path: Path
) -> None:
    events = spread(20, step_ms=60_000)
    events[19]["trace_id"] = "cd" * 16
    await store_events(clients, settings, events)
    env = api_env(tmp_path, console)
    assert not [name for name in env if name.startswith("AWS_")]

    code, out, err = await run_query(env, tmp_path, "--service", "svc", *WINDOW, "--json")
    assert (code, err) == (0, "")
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == newest_first(events)

    code, out, _ = await run_query(env, tmp_path, "--service", "svc", *WINDOW, "--limit", "2")
    assert code == 0
    assert out.splitlines() == [
        "TIME                      LEVEL  MESSAGE",
        f"2026-09-21T14:19:00.000Z  DEBUG  request 19 ok  trace={'cd' * 16}",
        "2026-09-21T14:18:00.000Z  ERROR  request 18 ok",
    ]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("key", "said"),
    [
        pytest.param(None, "needs a read key (401): set LOGPIPE_READ_KEY", id="no-key"),
        pytest.param("not-the-key", "refused LOGPIPE_READ_KEY (401)", id="wrong-key"),
    ],
)
async def test_a_refused_read_key_exits_2_saying_which_variable_to_set(
    console: str, tmp_path: Path, key: str | None, said: str
) -> None:
    code, out, err = await run_query(api_env(tmp_path, console, key), tmp_path, "--service", "s")

    assert (code, out) == (2, "")
    [line] = err.splitlines()
    assert line == f"logpipe: the console at {console} {said}" + (
        ": set it to one of the console's LOGPIPE_READ_KEYS" if key else ""
    )


@pytest.mark.e2e
async def test_a_search_the_console_refuses_prints_its_message_on_one_line(
    console: str, tmp_path: Path
) -> None:
    code, out, err = await run_query(
        api_env(tmp_path, console), tmp_path, "--service", "s", "--limit", "0"
    )

    assert (code, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith("logpipe: limit must be an integer 1-1000")


@pytest.mark.e2e
async def test_a_console_that_is_not_there_is_named_with_its_variable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    code, out, err = await run_query(api_env(tmp_path, url), tmp_path, "--service", "s")

    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith(f"logpipe: cannot reach the console at {url}")
    assert "LOGPIPE_CONSOLE_URL" in line


@pytest.mark.e2e
async def test_a_url_that_is_no_console_is_named_with_its_variable(
    ingestor_url: str, tmp_path: Path
) -> None:
    code, out, err = await run_query(api_env(tmp_path, ingestor_url), tmp_path, "--service", "s")

    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith(f"logpipe: the console at {ingestor_url} answered 404")
    assert line.endswith("is LOGPIPE_CONSOLE_URL a logpipe console?")


@pytest.mark.e2e
async def test_an_endless_answer_is_cut_off_at_the_bound_not_held(tmp_path: Path) -> None:
    async def endless() -> AsyncIterator[bytes]:
        # Four times the bound, as one JSON document: read whole, it would be a page.
        yield b'{"events": ["'
        for _ in range(4 * MAX_API_ANSWER_BYTES // len(CHUNK)):
            yield CHUNK
        yield b'"], "cursor": null, "complete": true}'

    async def logs(request: Request) -> StreamingResponse:
        return StreamingResponse(endless(), media_type="application/json")

    app = Starlette(routes=[Route("/api/logs", logs)])
    async with serving(app, free_port()) as url:
        code, out, err = await run_query(api_env(tmp_path, url), tmp_path, "--service", "s")

    assert (code, out) == (1, "")
    assert err == f"logpipe: the console's answer is larger than {MAX_API_ANSWER_BYTES} bytes\n"


CHUNK = b"x" * (1024 * 1024)


@pytest.mark.e2e
async def test_cursors_are_followed_through_the_api_each_event_once(
    clients: Clients,
    settings: Settings,
    roles: Roles,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    events = spread(60, step_ms=300_000)  # 12 an hour for 5 hours
    await store_events(clients, settings, events)
    # Each answer reads one hour bucket at most, and stops at 64 KiB of events.
    await roles.start(
        "console",
        LOGPIPE_READ_KEYS=READ_KEY,
        LOGPIPE_QUERY_BUDGET=settings.shards,
        LOGPIPE_MAX_ANSWER_BYTES=65536,
    )
    url = f"http://127.0.0.1:{settings.port}"
    await wait_http(http, f"{url}/healthz", timeout=30)

    code, out, err = await run_query(
        api_env(tmp_path, url), tmp_path, "--service", "svc", *WINDOW, "--json"
    )

    assert (code, err) == (0, "")
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == newest_first(events)
    assert await searches_answered(http, settings) >= 5


async def searches_answered(http: aiohttp.ClientSession, settings: Settings) -> float:
    async with http.get(f"http://127.0.0.1:{settings.metrics_port}/metrics") as response:
        text = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "logpipe_console_searches_total" and sample.labels["outcome"] == "ok"
    )


@pytest.mark.e2e
async def test_follow_through_the_api_prints_new_events_and_exits_0_on_ctrl_c(
    clients: Clients, settings: Settings, console: str, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    await store_events(clients, settings, [make_event(1, timestamp=now - 60_000)])
    process = await start_query(
        api_env(tmp_path, console), tmp_path, "--service", "svc", "--since", "10m", "-f"
    )
    code, lines = await follow_three_events(process, clients, settings)
    assert code == 0
    messages = [line.split("  ")[2].strip() for line in lines if "event number" in line]
    assert messages == ["event number 1", "event number 2", "event number 3"]


# --- the filters, reading the table and through the console ---------------------------------

TRACE = "7f" * 16


def incident() -> list[dict[str, Any]]:
    """Three services over two hours: one trace through all three, attributes, mixed case."""
    services = ["api", "web", "db"]
    levels = ["info", "warn", "error", "debug"]
    events = []
    for n in range(36):
        event = make_event(
            n,
            service=services[n % 3],
            timestamp=T0 + n * 200_000,
            level=levels[n % 4],
            message=f"Request {n} {'TIMED Out' if n % 5 == 0 else 'ok'}"
            + (" Retry+1&x=2" if n % 9 == 4 else ""),
            attributes={"order_id": f"o-{n % 4}", "region": "eu" if n % 6 < 3 else "us"},
        )
        if n in (6, 7, 8):
            event["trace_id"] = TRACE
        events.append(event)
    return events


@pytest.fixture(params=["table", "console"])
async def query_env(
    request: pytest.FixtureRequest,
    settings: Settings,
    roles: Roles,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> dict[str, str]:
    """How `logpipe query` reads: the table with AWS rights, or a console with a read key."""
    if request.param == "table":
        return role_env(settings, LOGPIPE_LOG_LEVEL="warning")
    await roles.start("console", LOGPIPE_READ_KEYS=READ_KEY)
    url = f"http://127.0.0.1:{settings.port}"
    await wait_http(http, f"{url}/healthz", timeout=30)
    return api_env(tmp_path, url)


Match = Callable[[dict[str, Any]], bool]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("argv", "match"),
    [
        pytest.param(
            ["--service", "api", "--service", "db"],
            lambda e: e["service"] in ("api", "db"),
            id="two-services",
        ),
        pytest.param(["--trace-id", TRACE], lambda e: e.get("trace_id") == TRACE, id="trace"),
        pytest.param(
            ["--where", "order_id=o-1", "--where", "region=eu"],
            lambda e: e["attributes"] == {"order_id": "o-1", "region": "eu"},
            id="where-and",
        ),
        pytest.param(
            ["--level", "warn", "--level", "error"],
            lambda e: e["level"] in ("warn", "error"),
            id="two-levels",
        ),
        pytest.param(["-q", "timed out"], lambda e: "TIMED Out" in e["message"], id="q-any-case"),
        pytest.param(
            ["-q", "retry+1&X=2"], lambda e: "Retry+1&x=2" in e["message"], id="q-plus-ampersand"
        ),
    ],
)
async def test_each_filter_finds_exactly_its_events_across_services(
    clients: Clients,
    settings: Settings,
    query_env: dict[str, str],
    tmp_path: Path,
    argv: list[str],
    match: Match,
) -> None:
    events = incident()
    await store_events(clients, settings, events)
    expected = newest_first([e for e in events if match(e)])
    assert 0 < len(expected) < len(events)

    code, out, err = await run_query(query_env, tmp_path, *WINDOW, *argv, "--json")

    assert (code, err) == (0, "")
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == expected
