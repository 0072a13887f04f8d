"""The processor under bad bodies, throttling and SIGTERM, with real role processes and moto."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import json
import signal
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from logpipe.aws.bootstrap import bootstrap, queue_url
from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.core.block import body_item, item_bytes, make_blocks
from logpipe.core.envelope import EnvelopeError, dead_letter_body, pack_envelope
from logpipe.core.event import encode_event, normalise
from logpipe.dev import promtext
from logpipe.errors import ConfigError
from logpipe.process.processor import Processor, split_message
from tests.support.aws import make_event, queue_counts, scan_events
from tests.support.roles import Roles
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

GZIP = {"content-encoding": {"StringValue": "gzip", "DataType": "String"}}


def _envelope(numbers: range) -> str:
    return pack_envelope([encode_event(normalise(make_event(n), now_ms=1)) for n in numbers])


async def _ids(clients: Clients, settings: Settings) -> list[str]:
    return sorted(i["id"] for i in await scan_events(clients, settings.table_name))


async def _metric(http: aiohttp.ClientSession, settings: Settings, name: str) -> float:
    samples = await promtext.scrape(http, f"http://127.0.0.1:{settings.metrics_port}/metrics")
    return promtext.total(samples, name)


async def _rebootstrap(settings: Settings, **changes: Any) -> Settings:
    """The test's queue with other attributes (bootstrap updates them in place)."""
    changed = dataclasses.replace(settings, **changes)
    async with AsyncExitStack() as stack:
        await bootstrap(await open_clients(stack, changed, pool=2), changed)
    return changed


# --- decoding never fails but with EnvelopeError ---------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**45), max_value=10**45),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children)
    ),
    max_leaves=8,
)
good_event = st.integers(min_value=0, max_value=10**6).map(
    lambda n: normalise(make_event(n), now_ms=1_790_000_000_000)
)
mutated_event = st.tuples(
    good_event,
    st.sampled_from(
        [
            "id",
            "service",
            "level",
            "message",
            "timestamp",
            "ingested_at",
            "trace_id",
            "span_id",
            "attributes",
            "assigned_timestamp",
        ]
    ),
    values,
).map(lambda t: {**t[0], t[1]: t[2]})
envelope_events = st.lists(st.one_of(good_event, mutated_event, values), max_size=6)


def _json_text(value: Any) -> str:
    return json.dumps(value)  # orjson cannot write integers beyond 64 bits


raw_bodies = st.one_of(
    envelope_events.map(lambda events: _json_text({"v": 1, "events": events})),
    st.fixed_dictionaries({"v": values, "events": values}).map(_json_text),
    values.map(_json_text),
    st.text(max_size=200),
    st.integers(min_value=16, max_value=400).map(
        lambda n: '{"v":1,"events":[{"id":"a","timestamp":' + "9" * n + "}]}"
    ),
)


@st.composite
def sqs_messages(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(raw_bodies)
    how = draw(st.sampled_from(["plain", "gzip", "gzip-truncated", "gzip-flag-on-text"]))
    if how == "plain":
        return {"Body": body}
    data = gzip.compress(body.encode("utf-8", "surrogatepass"))
    if how == "gzip-truncated":
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    encoded = base64.b64encode(data).decode() if how != "gzip-flag-on-text" else body
    return {"Body": encoded, "MessageAttributes": GZIP}


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=sqs_messages())
def test_decoding_any_body_gives_storable_events_reasons_or_an_envelope_error(
    message: dict[str, Any],
) -> None:
    try:
        good, bad = split_message(message)
    except EnvelopeError:
        return
    blocks, refused = make_blocks(good)
    assert refused == []
    for block in blocks:
        assert item_bytes(body_item(block, shards=8, retention_days=30)) < 400 * 1024
    for event, reason in bad:
        assert reason
        assert orjson.loads(dead_letter_body(event, reason))["reason"] == reason


NASTY_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("not json", {}),
    ('{"v":1,"events":[{"id":"x"}]}', {}),
    ('{"v":1,"events":[1,"two",null,[]]}', {}),
    (
        '{"v":1,"events":[{"id":"a","service":"s","level":"info","message":"m",'
        '"timestamp":1,"ingested_at":100000000000000000000}]}',
        {},
    ),
    (
        '{"v":1,"events":[{"id":"b","service":"s","level":"info","message":"m",'
        '"timestamp":1,"attributes":{"n":' + "1" * 40 + "}}]}",
        {},
    ),
    ("[" * 900 + "1" * 20 + "]" * 900, {}),
    (base64.b64encode(gzip.compress(b"0" * (32 * 1024 * 1024))).decode(), GZIP),
    (
        '{"v":1,"events":[{"id":"c","service":"s","level":[],"message":"m","timestamp":1},'
        '{"id":"d","service":"s","level":"info","message":"m","timestamp":1,"x":'
        + "[" * 300
        + "]" * 300
        + "}]}",
        {},
    ),
    ("not base64 at all!", GZIP),
    (base64.b64encode(b"\xff" * 100).decode(), GZIP),
]


async def test_the_processor_survives_any_body_and_stores_the_good_messages_around_it(
    roles: Roles, clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    for body, attributes in NASTY_BODIES:
        extra = {"MessageAttributes": attributes} if attributes else {}
        await clients.sqs.send_message(QueueUrl=url, MessageBody=body, **extra)
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(20)))
    processor = await roles.start("processor")

    await wait_until(lambda: _has_ids(clients, settings, 20), timeout=30)

    assert processor.process.returncode is None
    # Nine events that can never be stored, each on its own, and five undecodable messages
    # once they have been received maxReceiveCount times.
    dlq_url = await queue_url(clients.sqs, settings.dlq_name)
    await wait_until(lambda: _depth_at_least(clients, dlq_url, 9 + 5), timeout=30)
    assert await processor.stop() == 0
    assert await _ids(clients, settings) == [f"ev-{n:08d}" for n in range(20)]
    assert await queue_counts(clients, url) == (0, 0)


async def _has_ids(clients: Clients, settings: Settings, count: int) -> bool:
    return len(await _ids(clients, settings)) == count


async def _depth_at_least(clients: Clients, url: str, count: int) -> bool:
    return sum(await queue_counts(clients, url)) >= count


# --- retriable failures never spend receives ---------------------------------------------------


async def test_a_throttling_window_dead_letters_nothing_and_everything_is_stored_once_after(
    roles: Roles, clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    # Two receives would be enough to dead-letter a message if throttling spent them.
    roles.settings = await _rebootstrap(settings, max_receive_count=2)
    url = await queue_url(clients.sqs, settings.queue_name)
    dlq_url = await queue_url(clients.sqs, settings.dlq_name)
    for m in range(6):
        await clients.sqs.send_message(
            QueueUrl=url, MessageBody=_envelope(range(m * 50, m * 50 + 50))
        )
    throttled = await roles.start(
        "processor", LOGPIPE_FAULTS="ddb-throttle:1.0", LOGPIPE_DRAIN_SECONDS=6
    )
    started = time.monotonic()
    await wait_until(lambda: _elapsed(started, 12), timeout=20)
    waited = await _metric(http, settings, "logpipe_throttle_wait_seconds_total")
    assert waited > 0
    assert await queue_counts(clients, dlq_url) == (0, 0)

    assert await throttled.stop() == 0
    await roles.start("processor")
    await wait_until(lambda: _drained(clients, url), timeout=60)

    assert await _ids(clients, settings) == [f"ev-{n:08d}" for n in range(300)]
    assert await queue_counts(clients, dlq_url) == (0, 0)


async def _elapsed(started: float, seconds: float) -> bool:
    return time.monotonic() - started >= seconds


async def _drained(clients: Clients, url: str) -> bool:
    return await queue_counts(clients, url) == (0, 0)


# --- heartbeat -------------------------------------------------------------------------------


async def test_every_message_of_a_receive_stays_hidden_until_it_is_deleted(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(1)))
    for m in range(6):
        await clients.sqs.send_message(
            QueueUrl=url, MessageBody=_envelope(range(1000 + m * 1000, 2000 + m * 1000))
        )
    received: list[dict[str, Any]] = []
    while len(received) < 7:
        response = await clients.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=2
        )
        received.extend(response.get("Messages", []))
    # One write at a time: the small message is stored seconds before its siblings.
    quick = dataclasses.replace(settings, visibility_timeout_s=2, write_concurrency=1)
    handling = asyncio.create_task(Processor(quick, clients, url).handle(received))
    seen_again = 0
    while not handling.done():
        response = await clients.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
        seen_again += len(response.get("Messages", []))
        await asyncio.sleep(0.1)
    await handling

    assert seen_again == 0
    assert len(await _ids(clients, settings)) == 6001
    assert await queue_counts(clients, url) == (0, 0)


# --- SIGTERM ---------------------------------------------------------------------------------


async def test_sigterm_during_long_polls_handles_what_they_return_and_exits_zero(
    roles: Roles, clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    processor = await roles.start("processor", LOGPIPE_RECEIVE_WAIT_S=20)
    await wait_until(lambda: _receives_started(http, settings), timeout=20)

    processor.process.send_signal(signal.SIGTERM)
    for m in range(2):
        await clients.sqs.send_message(
            QueueUrl=url, MessageBody=_envelope(range(m * 10, m * 10 + 10))
        )
    code = await asyncio.wait_for(processor.process.wait(), 30)

    assert code == 0
    assert await _ids(clients, settings) == [f"ev-{n:08d}" for n in range(20)]
    assert await queue_counts(clients, url) == (0, 0)


async def _receives_started(http: aiohttp.ClientSession, settings: Settings) -> bool:
    samples = await promtext.scrape(http, f"http://127.0.0.1:{settings.metrics_port}/metrics")
    return promtext.total(samples, "logpipe_aws_requests_total", operation="ReceiveMessage") >= 2


async def test_at_the_drain_deadline_unfinished_messages_are_made_visible_again(
    roles: Roles, clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    # A long visibility timeout: a message left hidden would stay away for two minutes.
    roles.settings = await _rebootstrap(settings, visibility_timeout_s=120)
    url = await queue_url(clients.sqs, settings.queue_name)
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(10)))
    processor = await roles.start(
        "processor",
        LOGPIPE_FAULTS="ddb-throttle:1.0",
        LOGPIPE_DRAIN_SECONDS=5,
        LOGPIPE_VISIBILITY_TIMEOUT_S=120,
    )
    await wait_until(lambda: _throttled(http, settings), timeout=20)
    assert await queue_counts(clients, url) == (0, 1)

    processor.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(processor.process.wait(), 20)

    assert code == 0
    assert await queue_counts(clients, url) == (1, 0)


async def _throttled(http: aiohttp.ClientSession, settings: Settings) -> bool:
    return await _metric(http, settings, "logpipe_write_throttles_total") > 0


def test_the_retry_horizon_defaults_to_15_minutes_and_refuses_nonsense() -> None:
    assert Settings.from_env({}).retry_horizon_s == 900
    assert Settings.from_env({"LOGPIPE_RETRY_HORIZON_S": "60"}).retry_horizon_s == 60
    with pytest.raises(ConfigError, match="LOGPIPE_RETRY_HORIZON_S"):
        Settings.from_env({"LOGPIPE_RETRY_HORIZON_S": "0"})
