"""The ingestor's hot POST paths answer exactly as Starlette's full stack answers them.

`HotRoutes` sends POST /ingest and POST /v1/logs straight to their endpoints; the same app
with no hot paths takes every request through the router and the middleware. Both serve
under real uvicorn against moto's SQS, and each request of a table (valid, aliases, gzip,
NDJSON, OTLP, every refusal) must get the same status, headers and body from both.
"""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from logpipe.config import Settings
from logpipe.dev.processes import free_port
from logpipe.ingest.app import create_app
from logpipe.web import HotRoutes
from tests.support.servers import serving

pytestmark = pytest.mark.aws

KEY = "hot-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
NDJSON = {**AUTH, "Content-Type": "application/x-ndjson"}
OTLP_JSON = {**AUTH, "Content-Type": "application/json"}
OTLP_PROTO = {**AUTH, "Content-Type": "application/x-protobuf"}
EVENT = {
    "id": "hot-1",
    "service": "checkout",
    "level": "info",
    "timestamp": 1_714_564_800_000,
    "message": "caf\u00e9 \u2603",
    "attributes": {"n": 7, "f": 0.5},
}
# Numbers a double cannot hold, which take the exact parse.
LONG_NUMBERS = (
    b'[{"service":"s","message":"m","attributes":{"n":%d,"f":0.10000000000000000555}}]' % (2**70)
)
OTLP_BODY = {
    "resourceLogs": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "s"}}]},
            "scopeLogs": [
                {
                    "logRecords": [
                        {"timeUnixNano": "1714564800000000000", "body": {"stringValue": "m"}},
                        {"timeUnixNano": "1714564800000000000", "traceId": "00"},
                    ]
                }
            ],
        }
    ]
}

# (name, method, path, headers, body)
REQUESTS: list[tuple[str, str, str, dict[str, str], bytes]] = [
    ("valid", "POST", "/ingest", JSON, orjson.dumps([EVENT, {**EVENT, "id": "hot-2"}])),
    ("one-object", "POST", "/ingest", JSON, orjson.dumps(EVENT)),
    ("long-numbers", "POST", "/ingest", JSON, LONG_NUMBERS),
    (
        "aliases",
        "POST",
        "/ingest",
        JSON,
        b'{"msg":"m","severity":"WARNING","service":"X","time":1.5}',
    ),
    ("query-service", "POST", "/ingest?service=billing", JSON, b'[{"message":"m"}]'),
    ("header-service", "POST", "/ingest", {**JSON, "X-Logpipe-Service": "b"}, b'{"message":"m"}'),
    ("mixed", "POST", "/ingest", JSON, orjson.dumps([EVENT, {"service": "s"}, 5])),
    ("all-refused", "POST", "/ingest", JSON, b'[{"service":"s"}]'),
    ("ndjson", "POST", "/ingest", NDJSON, orjson.dumps(EVENT) + b"\n\nnot json\n"),
    (
        "gzip",
        "POST",
        "/ingest",
        {**JSON, "Content-Encoding": "gzip"},
        gzip.compress(orjson.dumps(EVENT)),
    ),
    ("bad-gzip", "POST", "/ingest", {**JSON, "Content-Encoding": "gzip"}, b"not gzip"),
    ("brotli", "POST", "/ingest", {**JSON, "Content-Encoding": "br"}, b"[]"),
    ("empty", "POST", "/ingest", JSON, b""),
    ("not-json", "POST", "/ingest", JSON, b"{nope"),
    ("scalar", "POST", "/ingest", JSON, b"5"),
    ("empty-array", "POST", "/ingest", JSON, b"[]"),
    ("deep", "POST", "/ingest", JSON, b"[" * 2000 + b"]" * 2000),
    ("too-many", "POST", "/ingest", JSON, orjson.dumps([{"message": "m"}] * 21)),
    ("too-large", "POST", "/ingest", JSON, b'["' + b"x" * 70_000 + b'"]'),
    ("no-key", "POST", "/ingest", {"Content-Type": "application/json"}, b"[]"),
    ("wrong-key", "POST", "/ingest", {**JSON, "Authorization": "Bearer no"}, b"[]"),
    ("wrong-type", "POST", "/ingest", {**AUTH, "Content-Type": "text/plain"}, b"[]"),
    ("otlp-json", "POST", "/v1/logs", OTLP_JSON, orjson.dumps(OTLP_BODY)),
    ("otlp-proto-bad", "POST", "/v1/logs", OTLP_PROTO, b"\xff\xff\xff"),
    ("otlp-no-key", "POST", "/v1/logs", {"Content-Type": "application/x-protobuf"}, b""),
    ("otlp-wrong-type", "POST", "/v1/logs", {**AUTH, "Content-Type": "text/csv"}, b""),
    ("otlp-too-large", "POST", "/v1/logs", OTLP_PROTO, b"\x00" * 70_000),
    ("trailing-slash", "POST", "/ingest/", JSON, b"[]"),
    ("get-ingest", "GET", "/ingest", AUTH, b""),
    ("put-logs", "PUT", "/v1/logs", OTLP_JSON, b"{}"),
    ("unknown", "POST", "/nowhere", JSON, b"[]"),
]


@pytest.fixture
async def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, api_keys=(KEY,), max_body_bytes=64 * 1024, max_events_per_request=20
    )


@pytest.fixture
async def urls(settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """The ingestor with its hot paths, and the same app with none."""
    hot = create_app(settings)
    stack = create_app(settings)
    assert isinstance(stack, HotRoutes) and stack.hot
    stack.hot = {}
    async with (
        serving(hot, free_port(), access_log=False) as hot_url,
        serving(stack, free_port(), access_log=False) as stack_url,
    ):
        yield hot_url, stack_url


async def answer(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    async with http.request(
        method, url, data=body, headers=headers, skip_auto_headers=("Content-Type",)
    ) as response:
        kept = [(k.lower(), v) for k, v in response.headers.items() if k.lower() != "date"]
        return response.status, sorted(kept), await response.read()


async def test_hot_paths_answer_every_request_as_the_full_stack(
    urls: tuple[str, str], http: aiohttp.ClientSession
) -> None:
    hot_url, stack_url = urls
    statuses = set()
    for name, method, path, headers, body in REQUESTS:
        hot = await answer(http, method, hot_url + path, headers, body)
        stack = await answer(http, method, stack_url + path, headers, body)
        assert hot == stack, name
        statuses.add(hot[0])
    # The table reaches every kind of answer: accepted, partial, refused, unknown, not allowed.
    assert {200, 202, 400, 401, 404, 405, 413, 415} <= statuses


async def test_an_endpoint_that_fails_gets_the_stacks_500(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    answers: list[Any] = []
    for hot_paths in (True, False):
        app = create_app(settings)
        assert isinstance(app, HotRoutes)
        if not hot_paths:
            app.hot = {}
        async with serving(app, free_port(), access_log=False) as url:
            app.state.pipeline = None  # every ingest request now fails inside the endpoint
            answers.append(await answer(http, "POST", f"{url}/ingest", JSON, b"[]"))
    assert answers[0] == answers[1]
    assert answers[0][0] == 500
    assert answers[0][2] == b"Internal Server Error"
