"""The processor's store-then-delete bookkeeping, against the real (moto) SQS and DynamoDB."""

from __future__ import annotations

import base64
import gzip
from typing import Any

import orjson
import pytest

from logpipe.aws import Clients, queue_url
from logpipe.config import Settings
from logpipe.models import EnvelopeError, encode_event, normalise, pack_envelope
from logpipe.processor import Processor, decode_message, retry_delay
from tests.conftest import make_event, queue_counts, scan_items


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
    return sorted(i["id"]["S"] for i in await scan_items(clients, settings.table_name))


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
    # DynamoDB refuses an item over 400 KB; such an event can only come from a forged body.
    huge = orjson.loads(_envelope(range(100, 101)))
    huge["events"][0]["message"] = "x" * 500_000
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(0, 10)))
    await clients.sqs.send_message(
        QueueUrl=url,
        MessageBody=pack_envelope(
            [orjson.dumps(huge["events"][0]), encode_event(normalise(make_event(10), now_ms=1))]
        ),
    )
    messages = await _receive_all(clients, url, 2)

    await Processor(settings, clients, url).handle(messages)

    # The good message is stored and gone; the one with the refused item stays, hidden a while.
    assert await _stored_ids(clients, settings) == [f"ev-{n:08d}" for n in range(11)]
    assert await queue_counts(clients, url) == (0, 1)


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
    ("receive_count", "seconds"), [(1, 2), (2, 4), (3, 8), (9, 300), (50, 300)]
)
def test_retry_delay_grows_and_is_capped(receive_count: int, seconds: int) -> None:
    assert retry_delay(receive_count) == seconds
