"""POST /ingest and the ingestor's other routes, over real HTTP to uvicorn and moto's SQS."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from logpipe.aws.clients import Clients
from logpipe.config import Settings
from tests.support.aws import make_event
from tests.support.wait import wait_until

pytestmark = pytest.mark.aws

MAX_BODY_BYTES = 64 * 1024
MAX_EVENTS = 50
JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
async def settings(settings: Settings) -> Settings:
    """Small limits so the 413 cases stay cheap; a linger long enough to pack concurrent posts."""
    return dataclasses.replace(
        settings,
        max_body_bytes=MAX_BODY_BYTES,
        max_events_per_request=MAX_EVENTS,
        linger_ms=50,
    )


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: Mapping[str, str] = JSON
) -> tuple[int, dict[str, Any]]:
    """POST /ingest with exactly the headers given (aiohttp adds no Content-Type of its own)."""
    async with http.post(
        f"{url}/ingest", data=body, headers=headers, skip_auto_headers=("Content-Type",)
    ) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def queued_events(clients: Clients, settings: Settings, count: int) -> list[list[Any]]:
    """Receive SQS messages until `count` events arrived; the events of each message, decoded."""
    url = (await clients.sqs.get_queue_url(QueueName=settings.queue_name))["QueueUrl"]
    messages: list[list[Any]] = []

    async def all_arrived() -> bool:
        response = await clients.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        for message in response.get("Messages", []):
            envelope = orjson.loads(message["Body"])
            assert envelope["v"] == 1
            messages.append(envelope["events"])
        return sum(len(events) for events in messages) >= count

    await wait_until(all_arrived, timeout=10)
    return messages


def ids(messages: list[list[Any]]) -> list[str]:
    return sorted(event["id"] for events in messages for event in events)


async def accepted_total(http: aiohttp.ClientSession, metrics_port: int) -> float:
    async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "logpipe_events_accepted_total":
                return sample.value
    raise AssertionError("logpipe_events_accepted_total is not exposed")


async def assert_healthy(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(f"{url}/healthz") as response:
        assert response.status == 200


# --- happy paths -----------------------------------------------------------------------------


async def test_one_json_object_is_accepted_and_lands_in_sqs(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    status, body = await post(http, ingestor_url, orjson.dumps(make_event(1)))

    assert (status, body) == (202, {"accepted": 1, "rejected": []})
    messages = await queued_events(clients, settings, 1)
    assert ids(messages) == ["ev-00000001"]


async def test_event_reaches_sqs_normalised(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    event = make_event(
        1, service="Checkout", level="WARNING", timestamp="2026-09-21T12:00:00+02:00"
    )

    status, _ = await post(http, ingestor_url, orjson.dumps(event))

    assert status == 202
    [[queued]] = await queued_events(clients, settings, 1)
    assert queued["service"] == "checkout"
    assert queued["level"] == "warn"
    assert queued["timestamp"] == int(datetime(2026, 9, 21, 10, tzinfo=UTC).timestamp() * 1000)


async def test_json_array_of_three_is_accepted_and_packed_into_one_message(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    events = [make_event(n) for n in range(3)]

    status, body = await post(http, ingestor_url, orjson.dumps(events))

    assert (status, body) == (202, {"accepted": 3, "rejected": []})
    messages = await queued_events(clients, settings, 3)
    assert len(messages) == 1
    assert ids(messages) == ["ev-00000000", "ev-00000001", "ev-00000002"]


async def test_concurrent_requests_share_sqs_messages(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    answers = await asyncio.gather(
        *(post(http, ingestor_url, orjson.dumps(make_event(n))) for n in range(20))
    )

    assert {status for status, _ in answers} == {202}
    messages = await queued_events(clients, settings, 20)
    assert ids(messages) == [f"ev-{n:08d}" for n in range(20)]
    assert len(messages) < 20


async def test_ndjson_skips_blank_lines_and_rejects_only_the_broken_line(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    # The index counts events, not lines: the blank line is not an event.
    lines = [
        orjson.dumps(make_event(0)),
        b"",
        b'{"service": "svc", "lev',
        orjson.dumps(make_event(2)),
    ]

    status, body = await post(http, ingestor_url, b"\n".join(lines) + b"\n", NDJSON)

    assert status == 202
    assert body["accepted"] == 2
    [rejected] = body["rejected"]
    assert rejected["index"] == 1
    assert "not valid JSON" in rejected["error"]
    assert ids(await queued_events(clients, settings, 2)) == ["ev-00000000", "ev-00000002"]


async def test_gzip_body_is_inflated_and_accepted(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    events = [make_event(n) for n in range(5)]
    headers = {**JSON, "Content-Encoding": "gzip"}

    status, body = await post(http, ingestor_url, gzip.compress(orjson.dumps(events)), headers)

    assert (status, body) == (202, {"accepted": 5, "rejected": []})
    assert ids(await queued_events(clients, settings, 5)) == [f"ev-{n:08d}" for n in range(5)]


async def test_mixed_array_accepts_the_good_and_names_the_bad_field(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    events = [make_event(0), make_event(1, level="loud"), make_event(2)]

    status, body = await post(http, ingestor_url, orjson.dumps(events))

    assert status == 202
    assert body["accepted"] == 2
    [rejected] = body["rejected"]
    assert rejected["index"] == 1
    assert rejected["error"].startswith("level ")
    assert ids(await queued_events(clients, settings, 2)) == ["ev-00000000", "ev-00000002"]


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "application/ndjson"],
)
async def test_content_type_parameters_case_and_ndjson_aliases_are_accepted(
    content_type: str, ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    status, body = await post(
        http, ingestor_url, orjson.dumps(make_event(0)), {"Content-Type": content_type}
    )

    assert (status, body) == (202, {"accepted": 1, "rejected": []})


async def test_concatenated_gzip_members_are_all_inflated(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    members = [gzip.compress(orjson.dumps(make_event(n)) + b"\n") for n in range(3)]
    headers = {**NDJSON, "Content-Encoding": "gzip"}

    status, body = await post(http, ingestor_url, b"".join(members), headers)

    assert (status, body) == (202, {"accepted": 3, "rejected": []})
    assert ids(await queued_events(clients, settings, 3)) == [f"ev-{n:08d}" for n in range(3)]


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
@pytest.mark.parametrize(
    ("size", "status"),
    [
        pytest.param(MAX_BODY_BYTES, 202, id="at-limit"),
        pytest.param(MAX_BODY_BYTES + 1, 413, id="one-over"),
    ],
)
async def test_body_limit_holds_to_the_byte_before_and_after_inflating(
    encoding: str, size: int, status: int, ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    # Trailing whitespace keeps the JSON valid while it brings the body to the exact size.
    body = orjson.dumps([make_event(0)]).ljust(size)
    if encoding == "gzip":
        body = gzip.compress(body)

    got, answer = await post(http, ingestor_url, body, {**JSON, "Content-Encoding": encoding})

    assert got == status, answer


# --- bad input -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A request the ingestor must refuse: the answer's status, error fragment, rejected list."""

    body: bytes
    status: int
    error: str
    rejected: tuple[tuple[int, str], ...] = ()
    headers: Mapping[str, str] = dataclasses.field(default_factory=lambda: JSON)


def one(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def without(event: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != name}


GZIP = {**JSON, "Content-Encoding": "gzip"}
BIG_MESSAGE = "x" * 2048
BAD_INPUT = [
    pytest.param(Bad(b'{"service": ', 400, "not valid JSON"), id="unparsable-json"),
    pytest.param(Bad(b"42", 400, "JSON object or an array"), id="json-number"),
    pytest.param(Bad(b'"hello"', 400, "JSON object or an array"), id="json-string"),
    pytest.param(Bad(b'{"service": "\xff"}', 400, "not valid JSON"), id="invalid-utf8"),
    pytest.param(Bad(b"[" * 2_000, 400, "not valid JSON"), id="deeply-nested-json"),
    pytest.param(Bad(b"", 400, "empty"), id="empty-body"),
    pytest.param(Bad(b"  \n ", 400, "empty"), id="whitespace-body"),
    pytest.param(Bad(b"[]", 400, "no events"), id="empty-array"),
    pytest.param(Bad(b"\n\n", 400, "empty", headers=NDJSON), id="ndjson-of-blank-lines"),
    pytest.param(
        Bad(
            orjson.dumps([without(make_event(0), "service"), 42]),
            400,
            "no valid events",
            ((0, "service is required"), (1, "must be a JSON object")),
        ),
        id="every-event-invalid",
    ),
    pytest.param(
        Bad(
            one(without(make_event(0), "service")),
            400,
            "no valid events",
            ((0, "service is required"),),
        ),
        id="missing-service",
    ),
    pytest.param(
        Bad(one(make_event(0, level=5)), 400, "no valid events", ((0, "level must be one of"),)),
        id="level-not-a-string",
    ),
    pytest.param(
        Bad(
            one(make_event(0, message="x" * (16 * 1024 + 1))),
            400,
            "no valid events",
            ((0, "message is 16385 bytes"),),
        ),
        id="message-over-16-kib",
    ),
    pytest.param(
        Bad(
            one(make_event(0, attributes={f"k{i}": i for i in range(65)})),
            400,
            "no valid events",
            ((0, "attributes has more than 64 keys"),),
        ),
        id="65-attributes",
    ),
    pytest.param(
        Bad(
            one(make_event(0, level="loud")),
            400,
            "no valid events",
            ((0, "level must be one of"),),
        ),
        id="unknown-level",
    ),
    pytest.param(
        Bad(
            orjson.dumps([make_event(n, message=BIG_MESSAGE) for n in range(40)]),
            413,
            f"the limit is {MAX_BODY_BYTES}",
        ),
        id="body-over-max-body-bytes",
    ),
    pytest.param(
        Bad(gzip.compress(b"\0" * (10 * 1024 * 1024)), 413, "once inflated", headers=GZIP),
        id="gzip-bomb",
    ),
    pytest.param(Bad(b"this is not gzip", 400, "not valid gzip", headers=GZIP), id="invalid-gzip"),
    pytest.param(
        Bad(gzip.compress(one(make_event(0)))[:10] + b"\xff" * 40, 400, "not valid gzip", (), GZIP),
        id="garbage-after-a-gzip-header",
    ),
    pytest.param(
        Bad(gzip.compress(one(make_event(0)))[:-12], 400, "truncated", headers=GZIP),
        id="truncated-gzip",
    ),
    pytest.param(
        Bad(one(make_event(0)), 415, "'br'", headers={**JSON, "Content-Encoding": "br"}),
        id="brotli-encoding",
    ),
    pytest.param(
        Bad(one(make_event(0)), 415, "Content-Type", headers={"Content-Type": "text/plain"}),
        id="text-plain",
    ),
    pytest.param(Bad(one(make_event(0)), 415, "Content-Type", headers={}), id="no-content-type"),
    pytest.param(
        Bad(
            orjson.dumps([make_event(n) for n in range(MAX_EVENTS + 1)]),
            413,
            f"the limit is {MAX_EVENTS} per request",
        ),
        id="too-many-events",
    ),
]


@pytest.mark.parametrize("case", BAD_INPUT)
async def test_bad_input_gets_a_clear_4xx_and_the_ingestor_stays_healthy(
    case: Bad, ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    status, body = await post(http, ingestor_url, case.body, case.headers)

    assert status == case.status, body
    assert case.error in body["error"]
    rejected = body.get("rejected", [])
    assert [r["index"] for r in rejected] == [index for index, _ in case.rejected]
    for got, (_, fragment) in zip(rejected, case.rejected, strict=True):
        assert fragment in got["error"]
    await assert_healthy(http, ingestor_url)
    url = (await clients.sqs.get_queue_url(QueueName=settings.queue_name))["QueueUrl"]
    response = await clients.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    assert response.get("Messages", []) == []


async def test_chunked_body_over_the_limit_gets_413_while_streaming(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"["
        for n in range(100):
            yield orjson.dumps(make_event(n, message=BIG_MESSAGE)) + b","
        yield orjson.dumps(make_event(100)) + b"]"

    status, body = await post(http, ingestor_url, chunks())

    assert status == 413
    assert f"limit of {MAX_BODY_BYTES} bytes" in body["error"]
    await assert_healthy(http, ingestor_url)


# --- other routes ----------------------------------------------------------------------------


async def test_healthz_answers_200(ingestor_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{ingestor_url}/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


async def test_readyz_is_200_while_the_queue_exists_and_503_once_it_is_gone(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    admin = f"http://127.0.0.1:{settings.metrics_port}"
    async with http.get(f"{admin}/readyz") as response:
        assert response.status == 200

    url = (await clients.sqs.get_queue_url(QueueName=settings.queue_name))["QueueUrl"]
    await clients.sqs.delete_queue(QueueUrl=url)

    async with http.get(f"{admin}/readyz") as response:
        assert response.status == 503
        assert (await response.json())["status"] == "unavailable"
    await assert_healthy(http, ingestor_url)


async def test_metrics_count_the_accepted_events(
    ingestor_url: str, http: aiohttp.ClientSession, settings: Settings
) -> None:
    # The registry is process-wide, so compare before and after rather than absolute values.
    before = await accepted_total(http, settings.metrics_port)
    events = [make_event(0), make_event(1), make_event(2, level="loud"), make_event(3)]

    status, body = await post(http, ingestor_url, orjson.dumps(events))

    assert (status, body["accepted"]) == (202, 3)
    assert await accepted_total(http, settings.metrics_port) - before == 3


async def test_unknown_path_gets_404_json(ingestor_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{ingestor_url}/nowhere") as response:
        assert response.status == 404
        assert response.content_type == "application/json"
        assert "Not Found" in (await response.json())["error"]


async def test_get_on_ingest_gets_405_json_that_allows_post(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{ingestor_url}/ingest") as response:
        assert response.status == 405
        assert response.content_type == "application/json"
        assert "Method Not Allowed" in (await response.json())["error"]
        # RFC 9110 §15.5.6: a 405 answer MUST carry Allow.
        assert response.headers.get("Allow") == "POST"
