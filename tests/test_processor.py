"""The processor's store-then-delete bookkeeping, against the real (moto) SQS and DynamoDB."""

from __future__ import annotations

import base64
import gzip
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import orjson
import pytest

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.core.envelope import EnvelopeError, pack_envelope
from logpipe.core.event import encode_event, normalise
from logpipe.dev.faults import Faults
from logpipe.dev.switches import Switches
from logpipe.process.processor import Processor, decode_message, redelivery_delay
from tests.support.aws import make_event, queue_counts, scan_events

pytestmark = pytest.mark.aws


def _envelope(numbers: range, **fields: Any) -> str:
    return pack_envelope(
        [encode_event(normalise(make_event(n, **fields), now_ms=1)) for n in numbers]
    )


async def _receive_all(clients: Clients, url: str, expected: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while len(messages) < expected:
        got = await clients.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        )
        messages.extend(got.get("Messages", []))
    return messages


async def _stored_ids(clients: Clients, settings: Settings) -> list[str]:
    return sorted(i["id"] for i in await scan_events(clients, settings.table_name))


async def test_an_event_in_two_messages_is_written_once_and_both_messages_are_deleted(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(0, 30)))
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(20, 50)))
    messages = await _receive_all(clients, url, 2)

    await Processor(settings, clients, url).handle(messages)

    assert await _stored_ids(clients, settings) == [f"ev-{n:08d}" for n in range(50)]
    assert await queue_counts(clients, url) == (0, 0)


async def test_events_of_one_message_are_split_into_25_item_writes(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(260)))
    messages = await _receive_all(clients, url, 1)

    await Processor(settings, clients, url).handle(messages)

    assert await _stored_ids(clients, settings) == [f"ev-{n:08d}" for n in range(260)]
    assert await queue_counts(clients, url) == (0, 0)


async def test_message_is_deleted_only_after_all_its_events_are_stored(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(0, 1)))
    messages = await _receive_all(clients, url, 1)
    async with AsyncExitStack() as stack:
        # Every write throttled, and a horizon too short to wait it out: nothing is stored.
        hook = Switches(faults=Faults(ddb_throttle=1.0)).client_hook()
        throttled = await open_clients(stack, settings, pool=8, hook=hook)
        processor = Processor(replace(settings, retry_horizon_s=1), throttled, url)
        await processor.handle(messages)

    assert await _stored_ids(clients, settings) == []
    assert await queue_counts(clients, url) == (0, 1)  # kept, hidden for a short delay


async def test_an_event_that_can_never_be_stored_goes_to_the_dlq_alone_and_its_siblings_are_stored(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    dlq_url = await queue_url(clients.sqs, settings.dlq_name)
    events = [encode_event(normalise(make_event(n), now_ms=1)) for n in range(3)]
    # ingested_at 10**20 is past any date and beyond 64 bits: only a forged body holds it.
    events[1] = events[1].replace(b'"ingested_at":1', b'"ingested_at":' + str(10**20).encode())
    await clients.sqs.send_message(QueueUrl=url, MessageBody=pack_envelope(events))
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(10, 20)))
    messages = await _receive_all(clients, url, 2)

    await Processor(settings, clients, url).handle(messages)

    stored = await _stored_ids(clients, settings)
    assert stored == [f"ev-{n:08d}" for n in (0, 2, *range(10, 20))]
    assert await queue_counts(clients, url) == (0, 0)
    [letter] = (await clients.sqs.receive_message(QueueUrl=dlq_url, MessageAttributeNames=["All"]))[
        "Messages"
    ]
    body = orjson.loads(letter["Body"].replace(str(10**20), "0"))
    assert [e["id"] for e in body["events"]] == ["ev-00000001"]
    assert "ingested_at" in body["reason"]
    assert letter["MessageAttributes"]["reason"]["StringValue"] == body["reason"]


async def test_an_oversized_event_goes_to_the_dlq_alone(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    huge = orjson.loads(_envelope(range(100, 101)))["events"][0]
    huge["message"] = "x" * 500_000  # DynamoDB refuses an item over 400 KB
    good = encode_event(normalise(make_event(10), now_ms=1))
    await clients.sqs.send_message(
        QueueUrl=url, MessageBody=pack_envelope([orjson.dumps(huge), good])
    )
    messages = await _receive_all(clients, url, 1)

    await Processor(settings, clients, url).handle(messages)

    assert await _stored_ids(clients, settings) == ["ev-00000010"]
    assert await queue_counts(clients, url) == (0, 0)
    dlq_url = await queue_url(clients.sqs, settings.dlq_name)
    assert await queue_counts(clients, dlq_url) == (1, 0)


async def test_undecodable_message_is_made_visible_again_at_once(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    await clients.sqs.send_message(QueueUrl=url, MessageBody="garbage")
    messages = await _receive_all(clients, url, 1)

    await Processor(settings, clients, url).handle(messages)

    assert await queue_counts(clients, url) == (1, 0)


def test_gzip_flagged_body_is_decoded() -> None:
    body = _envelope(range(3))
    message = {
        "Body": base64.b64encode(gzip.compress(body.encode())).decode(),
        "MessageAttributes": {"content-encoding": {"StringValue": "gzip", "DataType": "String"}},
    }
    assert [e["id"] for e in decode_message(message)] == [f"ev-{n:08d}" for n in range(3)]


def test_gzip_flagged_body_that_is_not_gzip_is_undecodable() -> None:
    message = {
        "Body": "not base64!",
        "MessageAttributes": {"content-encoding": {"StringValue": "gzip", "DataType": "String"}},
    }
    with pytest.raises(EnvelopeError, match="gzip"):
        decode_message(message)


@pytest.mark.parametrize(
    "packed",
    [b"\x1f", b"no gzip at all", gzip.compress(b'{"v":1,"events":[]}')[:10] + b"\xff" * 40],
    ids=["one-byte", "no-magic", "garbage-after-the-header"],
)
def test_a_flagged_body_that_does_not_inflate_is_undecodable(packed: bytes) -> None:
    message = {
        "Body": base64.b64encode(packed).decode(),
        "MessageAttributes": {"content-encoding": {"StringValue": "gzip", "DataType": "String"}},
    }
    with pytest.raises(EnvelopeError, match="does not decode"):
        decode_message(message)


def test_gzip_bomb_is_refused_without_inflating_it_all() -> None:
    bomb = gzip.compress(b"0" * (64 * 1024 * 1024), compresslevel=9)
    message = {
        "Body": base64.b64encode(bomb).decode(),
        "MessageAttributes": {"content-encoding": {"StringValue": "gzip", "DataType": "String"}},
    }
    with pytest.raises(EnvelopeError, match="inflates past"):
        decode_message(message)


def test_truncated_gzip_body_is_undecodable() -> None:
    data = gzip.compress(_envelope(range(50)).encode())
    message = {
        "Body": base64.b64encode(data[: len(data) // 2]).decode(),
        "MessageAttributes": {"content-encoding": {"StringValue": "gzip", "DataType": "String"}},
    }
    with pytest.raises(EnvelopeError, match="truncated"):
        decode_message(message)


@pytest.mark.parametrize(
    ("receive_count", "seconds"), [(1, 2), (2, 4), (3, 8), (9, 300), (50, 300)]
)
def test_redelivery_delay_grows_and_is_capped(receive_count: int, seconds: int) -> None:
    assert redelivery_delay(receive_count) == seconds
