"""Keys that cannot move, and numbers that keep their digits: through the real ingestor,
the processor and moto's DynamoDB."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from logpipe.aws.bootstrap import queue_url, read_table_shards, table_shards
from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.process.processor import Processor
from tests.support.aws import scan_events
from tests.support.roles import Roles
from tests.support.wait import wait_until
from tests.test_processor import _envelope

pytestmark = pytest.mark.e2e

OTLP_WITHOUT_TIME = {
    "resourceLogs": [
        {
            "resource": {
                "attributes": [{"key": "service.name", "value": {"stringValue": "otel-app"}}]
            },
            "scopeLogs": [{"logRecords": [{"body": {"stringValue": "no time fields at all"}}]}],
        }
    ]
}


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> dict[str, Any]:
    async with http.post(url, json=body) as response:
        assert response.status in (200, 202), await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def _drain(clients: Clients, settings: Settings) -> list[dict[str, Any]]:
    url = await queue_url(clients.sqs, settings.queue_name)
    await Processor(settings, clients, url).run_until_empty()
    return await scan_events(clients, settings.table_name)


async def _later() -> None:
    """Wait until the clock has moved on, so an ingest now gets another timestamp."""
    since_ms = int(time.time() * 1000)
    await wait_until(lambda: _clock_moved(since_ms), timeout=5, interval=0.01)


async def _clock_moved(since_ms: int) -> bool:
    return int(time.time() * 1000) > since_ms + 5


async def test_a_retry_with_the_same_id_and_no_timestamp_is_one_event_with_its_first_time(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    events = [
        {"id": f"r-{n}", "service": "svc", "level": "info", "message": "m"} for n in range(50)
    ]
    await _post(http, f"{ingestor_url}/ingest", events)
    first = {i["id"]: i["timestamp"] for i in await _drain(clients, settings)}
    # The retry is ingested later, and once more while the queue still holds a copy.
    await _later()
    await _post(http, f"{ingestor_url}/ingest", events)
    await _later()
    await _post(http, f"{ingestor_url}/ingest", events)

    items = await _drain(clients, settings)

    assert len(items) == 50
    assert {i["id"]: i["timestamp"] for i in items} == first


async def test_an_otlp_record_without_time_fields_resent_is_one_event(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    await _post(http, f"{ingestor_url}/v1/logs", OTLP_WITHOUT_TIME)
    await _drain(clients, settings)
    await _later()
    await _post(http, f"{ingestor_url}/v1/logs", OTLP_WITHOUT_TIME)

    items = await _drain(clients, settings)

    assert [i["message"] for i in items] == ["no time fields at all"]


async def test_the_shard_count_belongs_to_the_table_and_the_first_value_stays(
    clients: Clients, settings: Settings
) -> None:
    # Bootstrap stored the settings' count (8); no later value replaces it.
    assert await table_shards(clients.dynamodb, settings.table_name, 3) == settings.shards
    assert await read_table_shards(clients.dynamodb, settings.table_name, 3) == settings.shards


async def test_a_processor_with_another_shard_count_writes_the_same_keys(
    roles: Roles, clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(40)))
    await roles.start("processor", LOGPIPE_SHARDS=3)
    await wait_until(lambda: _stored(clients, settings, 40), timeout=30)
    # Stored once more by a processor configured differently: the same 40 items.
    await clients.sqs.send_message(QueueUrl=url, MessageBody=_envelope(range(40)))
    await roles.stop_all()
    roles.running.clear()
    await roles.start("processor", LOGPIPE_SHARDS=5)
    await wait_until(lambda: _queue_empty(clients, url), timeout=30)

    assert len(await scan_events(clients, settings.table_name)) == 40
    page = await clients.dynamodb.scan(TableName=settings.table_name, ConsistentRead=True)
    keys = [(i["pk"]["S"], i["sk"]["S"]) for i in page["Items"] if i["sk"]["S"].startswith("b#")]
    # One message, twice: one block, in the shard the table's count gives its hash.
    [(pk, sk)] = keys
    assert pk.endswith(f"#{int(sk.removeprefix('b#')[:8], 16) % settings.shards}")


async def _stored(clients: Clients, settings: Settings, count: int) -> bool:
    return len(await scan_events(clients, settings.table_name)) == count


async def _queue_empty(clients: Clients, url: str) -> bool:
    response = await clients.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attrs = response["Attributes"]
    return (
        attrs["ApproximateNumberOfMessages"]
        == attrs["ApproximateNumberOfMessagesNotVisible"]
        == "0"
    )


async def test_numbers_beyond_64_bits_and_long_decimals_are_stored_with_their_exact_digits(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    body = (
        b'[{"id":"exact","service":"svc","level":"info","message":"m","timestamp":1790000000000,'
        b'"attributes":{"big":123456789012345678901234,"neg":-98765432109876543210987654321,'
        b'"dec":0.12345678901234567891,"small":1.5,"int":42}},'
        b'{"id":"too-long","service":"svc","level":"info","message":"m",'
        b'"attributes":{"n":1234567890123456789012345678901234567890}}]'
    )
    async with http.post(
        f"{ingestor_url}/ingest", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        answer = await response.json()
    assert answer["accepted"] == 1
    assert answer["rejected"] == [
        {"index": 1, "error": "attributes.n number has more than 38 significant digits"}
    ]

    [item] = await _drain(clients, settings)

    # Read back: exact digits where a JSON number would round them.
    assert item["attributes"] == {
        "big": "123456789012345678901234",
        "neg": "-98765432109876543210987654321",
        "dec": "0.12345678901234567891",
        "small": 1.5,
        "int": 42,
    }
