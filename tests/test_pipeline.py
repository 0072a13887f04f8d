"""The whole path, each role a real subprocess: HTTP -> ingestor -> SQS -> processor -> table."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.core.envelope import pack_envelope
from logpipe.core.event import encode_event, normalise
from logpipe.dev.processes import free_port
from tests.support.aws import make_event, queue_counts, scan_events
from tests.support.roles import Roles
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


async def post_until_accepted(
    http: aiohttp.ClientSession, url: str, events: list[dict[str, Any]], deadline_s: float = 60
) -> None:
    """POST a batch, retrying 429/5xx/connection errors with the same ids, until 202."""

    async def accepted() -> bool:
        try:
            async with http.post(f"{url}/ingest", json=events) as resp:
                if resp.status == 202:
                    body = await resp.json()
                    assert body == {"accepted": len(events), "rejected": []}
                    return True
                assert resp.status in (429, 503), await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            pass
        return False

    await wait_until(accepted, timeout=deadline_s, interval=0.2)


async def drive(
    http: aiohttp.ClientSession, url: str, total: int, clients: int, batch: int
) -> set[str]:
    """Send `total` events from `clients` concurrent senders; return the acknowledged ids."""
    acknowledged: set[str] = set()

    async def sender(first: int) -> None:
        for start in range(first, total, clients * batch):
            events = [make_event(n) for n in range(start, min(start + batch, total))]
            await post_until_accepted(http, url, events)
            acknowledged.update(e["id"] for e in events)

    await asyncio.gather(*(sender(c * batch) for c in range(clients)))
    return acknowledged


async def stored_ids(clients: Clients, settings: Settings) -> list[str]:
    return [item["id"] for item in await scan_events(clients, settings.table_name)]


async def wait_stored(
    clients: Clients, settings: Settings, count: int, timeout: float
) -> list[str]:
    async def all_stored() -> bool:
        return len(await stored_ids(clients, settings)) >= count

    await wait_until(all_stored, timeout=timeout, interval=0.5)
    return await stored_ids(clients, settings)


async def test_every_acknowledged_event_is_stored_exactly_once(
    roles: Roles, clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    await roles.start("ingestor")
    await roles.start("processor")
    url = f"http://127.0.0.1:{settings.port}"

    acknowledged = await drive(http, url, total=5000, clients=8, batch=50)

    ids = await wait_stored(clients, settings, 5000, timeout=90)
    assert len(acknowledged) == 5000
    assert len(ids) == 5000
    assert set(ids) == acknowledged
    main = await queue_url(clients.sqs, settings.queue_name)
    await wait_until(lambda: _empty(clients, main), timeout=30)


async def _empty(clients: Clients, url: str) -> bool:
    return await queue_counts(clients, url) == (0, 0)


async def test_processor_sigterm_under_load_exits_zero_and_loses_nothing(
    roles: Roles, clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    await roles.start("ingestor")
    processor = await roles.start("processor")
    url = f"http://127.0.0.1:{settings.port}"
    sending = asyncio.create_task(drive(http, url, total=3000, clients=4, batch=25))
    await wait_until(lambda: _some_stored(clients, settings), timeout=30)

    processor.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(processor.process.wait(), 30)

    assert code == 0
    acknowledged = await sending
    await roles.start("processor")
    ids = await wait_stored(clients, settings, 3000, timeout=90)
    assert sorted(ids) == sorted(acknowledged)


async def _some_stored(clients: Clients, settings: Settings) -> bool:
    page = await clients.dynamodb.scan(TableName=settings.table_name, Limit=1)
    return bool(page["Items"])


async def test_ingestor_sigterm_under_load_exits_zero_and_loses_nothing(
    roles: Roles, clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    ingestor = await roles.start("ingestor")
    await roles.start("processor")
    url = f"http://127.0.0.1:{settings.port}"
    sending = asyncio.create_task(drive(http, url, total=3000, clients=4, batch=25))
    await wait_until(lambda: _some_stored(clients, settings), timeout=30)

    ingestor.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(ingestor.process.wait(), 30)
    assert code == 0
    await roles.start("ingestor")  # the senders retry the batches they saw refused

    acknowledged = await sending
    ids = await wait_stored(clients, settings, 3000, timeout=90)
    assert len(ids) == 3000
    assert set(ids) == acknowledged


async def test_redelivered_message_overwrites_the_same_items(
    clients: Clients, settings: Settings
) -> None:
    from logpipe.process.processor import Processor

    url = await queue_url(clients.sqs, settings.queue_name)
    events = [encode_event(normalise(make_event(n), now_ms=1)) for n in range(60)]
    await clients.sqs.send_message(QueueUrl=url, MessageBody=pack_envelope(events))
    processor = Processor(settings, clients, url)

    # A processor that stores the events, then dies before it can delete the message.
    received = await clients.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )
    await processor.handle(received["Messages"], delete=False)
    assert len(await stored_ids(clients, settings)) == 60

    # Once its visibility timeout passes the message comes back and is handled again.
    await wait_until(lambda: _visible(clients, url), timeout=settings.visibility_timeout_s + 5)
    again = await clients.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )
    assert again["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "2"
    await processor.handle(again["Messages"])

    ids = await stored_ids(clients, settings)
    assert sorted(ids) == sorted(f"ev-{n:08d}" for n in range(60))
    assert await queue_counts(clients, url) == (0, 0)


async def _visible(clients: Clients, url: str) -> bool:
    visible, _ = await queue_counts(clients, url)
    return visible == 1


async def test_poison_message_reaches_the_dlq_and_the_rest_is_stored(
    roles: Roles, clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    dlq = await queue_url(clients.sqs, settings.dlq_name)
    good = [
        [encode_event(normalise(make_event(m * 10 + n), now_ms=1)) for n in range(10)]
        for m in range(3)
    ]
    await clients.sqs.send_message(QueueUrl=url, MessageBody=pack_envelope(good[0]))
    await clients.sqs.send_message(QueueUrl=url, MessageBody="this is not an envelope {")
    await clients.sqs.send_message(QueueUrl=url, MessageBody=orjson.dumps({"v": 9}).decode())
    for batch in good[1:]:
        await clients.sqs.send_message(QueueUrl=url, MessageBody=pack_envelope(batch))

    await roles.start("processor")

    ids = await wait_stored(clients, settings, 30, timeout=30)
    assert sorted(ids) == sorted(f"ev-{n:08d}" for n in range(30))

    async def poison_in_dlq() -> bool:
        return await queue_counts(clients, dlq) == (2, 0)

    await wait_until(poison_in_dlq, timeout=60, interval=0.5)
    await wait_until(lambda: _empty(clients, url), timeout=30)
    dead = await clients.sqs.receive_message(
        QueueUrl=dlq, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )
    bodies = sorted(m["Body"] for m in dead["Messages"])
    assert bodies == sorted(["this is not an envelope {", '{"v":9}'])
    assert all(
        int(m["Attributes"]["ApproximateReceiveCount"]) >= settings.max_receive_count
        for m in dead["Messages"]
    )


def test_logpipe_up_with_events_stores_them_all_and_exits_zero(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    ports = ("--port", "--console-port", "--aws-port")
    result = subprocess.run(
        [sys.executable, "-m", "logpipe", "up", "--events", "2000"]
        + [arg for flag in ports for arg in (flag, str(free_port()))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = dict(re.findall(r"^\s+(sent|accepted|stored|lost)\s+(\d+)$", result.stdout, re.M))
    assert summary == {"sent": "2000", "accepted": "2000", "stored": "2000", "lost": "0"}


def test_bootstrap_is_idempotent_and_sets_the_redrive_policy(aws_endpoint: str) -> None:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": aws_endpoint,
        "LOGPIPE_QUEUE_NAME": "boot-events",
        "LOGPIPE_DLQ_NAME": "boot-dlq",
        "LOGPIPE_TABLE_NAME": "boot-logs",
    }
    command = [sys.executable, "-m", "logpipe", "bootstrap"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    second = subprocess.run(command, env=env, capture_output=True, text=True, check=True)

    assert orjson.loads(first.stdout) == orjson.loads(second.stdout)
    import boto3

    sqs = boto3.client("sqs", endpoint_url=aws_endpoint, region_name="us-east-1")
    attrs = sqs.get_queue_attributes(
        QueueUrl=orjson.loads(first.stdout)["queue_url"], AttributeNames=["RedrivePolicy"]
    )["Attributes"]
    policy = orjson.loads(attrs["RedrivePolicy"])
    assert int(policy["maxReceiveCount"]) == 5
    assert policy["deadLetterTargetArn"].endswith(":boot-dlq")
    ddb = boto3.client("dynamodb", endpoint_url=aws_endpoint, region_name="us-east-1")
    ttl = ddb.describe_time_to_live(TableName="boot-logs")["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
