"""`logpipe dlq inspect` and `redrive` against real queues."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.core.models import encode_event, normalise, pack_envelope
from logpipe.process import dlq
from logpipe.process.processor import Processor
from tests.support.aws import make_event, queue_counts, scan_events
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


async def _fill_dlq(clients: Clients, settings: Settings) -> str:
    url = await queue_url(clients.sqs, settings.dlq_name)
    good = pack_envelope([encode_event(normalise(make_event(n), now_ms=1)) for n in range(5)])
    await clients.sqs.send_message(QueueUrl=url, MessageBody=good)
    await clients.sqs.send_message(QueueUrl=url, MessageBody="{broken")
    return url


async def test_inspect_counts_and_says_why_each_message_failed(
    clients: Clients, settings: Settings
) -> None:
    await _fill_dlq(clients, settings)

    report = await dlq.inspect(clients, settings, sample=10)

    assert report["messages"] == 2
    reasons = sorted(item["why"] for item in report["sample"])
    assert reasons[0].startswith("decodes to 5 events")
    assert reasons[1].startswith("undecodable: body is not JSON")
    assert all(item["receive_count"] >= 1 for item in report["sample"])
    assert "undecodable" in dlq.render_inspection(report)


async def test_redrive_moves_what_can_be_stored_and_is_safe_to_run_twice(
    clients: Clients, settings: Settings
) -> None:
    dlq_url = await _fill_dlq(clients, settings)
    main_url = await queue_url(clients.sqs, settings.queue_name)

    first = await dlq.redrive(clients, settings, everything=False)
    second = await dlq.redrive(clients, settings, everything=False)

    assert first == {"moved": 1, "kept": 1}
    assert second["moved"] == 0
    assert await queue_counts(clients, main_url) == (1, 0)
    assert sum(await queue_counts(clients, dlq_url)) == 1  # the undecodable one stays
    await Processor(settings, clients, main_url).run_until_empty()
    assert len(await scan_events(clients, settings.table_name)) == 5


def test_dlq_inspect_command_prints_json(aws_endpoint: str, settings: Settings) -> None:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": aws_endpoint,
        "LOGPIPE_QUEUE_NAME": settings.queue_name,
        "LOGPIPE_DLQ_NAME": settings.dlq_name,
    }
    result = subprocess.run(
        [sys.executable, "-m", "logpipe", "dlq", "inspect", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert orjson.loads(result.stdout)["messages"] == 0


async def test_an_event_refused_alone_is_inspected_with_its_reason_and_can_be_redriven(
    clients: Clients, settings: Settings
) -> None:
    main_url = await queue_url(clients.sqs, settings.queue_name)
    dlq_url = await queue_url(clients.sqs, settings.dlq_name)
    bad = normalise(make_event(1), now_ms=1)
    bad["level"] = "loud"
    good = [encode_event(normalise(make_event(n), now_ms=1)) for n in (0, 2)]
    await clients.sqs.send_message(
        QueueUrl=main_url, MessageBody=pack_envelope([good[0], orjson.dumps(bad), good[1]])
    )
    await Processor(settings, clients, main_url).run_until_empty()
    assert sorted(i["id"] for i in await scan_events(clients, settings.table_name)) == [
        "ev-00000000",
        "ev-00000002",
    ]

    report = await dlq.inspect(clients, settings, sample=10)

    assert report["messages"] == 1
    [item] = report["sample"]
    assert (
        item["why"] == "event refused: level must be one of trace, debug, info, warn, error, fatal"
    )
    assert "event refused: level" in dlq.render_inspection(report)

    # Inspecting hides the sampled messages for a few seconds.
    await wait_until(lambda: _visible(clients, dlq_url), timeout=dlq.INSPECT_HOLD_S + 10)
    assert await dlq.redrive(clients, settings, everything=False) == {"moved": 1, "kept": 0}
    assert await queue_counts(clients, main_url) == (1, 0)
    assert sum(await queue_counts(clients, dlq_url)) == 0
    # Still unstorable: the processor sends it back alone, and stores nothing of it.
    await Processor(settings, clients, main_url).run_until_empty()
    assert await queue_counts(clients, main_url) == (0, 0)
    assert len(await scan_events(clients, settings.table_name)) == 2
    assert (await dlq.inspect(clients, settings, sample=1))["messages"] == 1


async def _visible(clients: Clients, url: str) -> bool:
    return await queue_counts(clients, url) == (1, 0)
