"""Injected AWS faults, killed roles, a lost endpoint: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson
import pytest
from botocore.exceptions import ClientError

from logpipe.aws.bootstrap import bootstrap, queue_url
from logpipe.aws.clients import Clients, open_clients
from logpipe.aws.errors import is_retriable
from logpipe.config import Settings
from logpipe.core.envelope import pack_envelope
from logpipe.core.event import encode_event, normalise
from logpipe.dev.bench import peak_rss_mb
from logpipe.dev.faults import SQS_ERRORS, Faults
from logpipe.dev.processes import RoleProcess, free_port, start_moto
from logpipe.dev.switches import Switches
from logpipe.errors import ConfigError
from logpipe.process.processor import Processor
from tests.support.aws import make_event, queue_counts, scan_events
from tests.support.roles import Roles, run_bench
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", Faults()),
        ("kill-processor:3", Faults(kill_processor=3)),
        ("sqs-error:0.1, ddb-throttle:0.2", Faults(sqs_error=0.1, ddb_throttle=0.2)),
        (
            "sqs-delay:50,poison:20,kill-ingestor:1",
            Faults(sqs_delay=50, poison=20, kill_ingestor=1),
        ),
    ],
    ids=["none", "kills", "probabilities", "mixed"],
)
def test_fault_spec_is_parsed(spec: str, expected: Faults) -> None:
    assert Faults.parse(spec) == expected
    assert Faults.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("explode:1", "is not one of"),
        ("sqs-error", "is not one of"),
        ("sqs-error:lots", "needs a number"),
        ("sqs-error:1.5", "out of range"),
        ("kill-processor:-1", "out of range"),
    ],
    ids=["unknown", "no-value", "not-a-number", "probability-above-1", "negative"],
)
def test_bad_fault_spec_is_refused_with_a_clear_line(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Switches.from_env({"LOGPIPE_FAULTS": spec})


async def _faulty(settings: Settings, spec: str, stack: AsyncExitStack) -> Clients:
    hook = Switches(faults=Faults.parse(spec)).client_hook()
    return await open_clients(stack, settings, pool=8, hook=hook)


async def test_injected_sqs_errors_are_the_retriable_errors_aws_returns(settings: Settings) -> None:
    async with AsyncExitStack() as stack:
        clients = await _faulty(settings, "sqs-error:1", stack)
        url = await queue_url(clients.sqs, settings.queue_name)  # start-up calls are spared
        with pytest.raises(ClientError) as caught:
            await clients.sqs.send_message(QueueUrl=url, MessageBody="x")
    assert caught.value.response["Error"]["Code"] in {code for code, _ in SQS_ERRORS}
    assert is_retriable(caught.value)


async def test_processor_stores_everything_through_throttling_and_unprocessed_items(
    settings: Settings, clients: Clients
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    for m in range(4):
        events = [encode_event(normalise(make_event(m * 100 + n), now_ms=1)) for n in range(100)]
        await clients.sqs.send_message(QueueUrl=url, MessageBody=pack_envelope(events))
    async with AsyncExitStack() as stack:
        processor = Processor(settings, await _faulty(settings, "ddb-throttle:0.5", stack), url)
        running = asyncio.create_task(processor.run())
        await wait_until(lambda: _drained(clients, url), timeout=60, interval=0.5)
        processor.stop()
        await running
    ids = sorted(i["id"] for i in await scan_events(clients, settings.table_name))
    assert ids == [f"ev-{n:08d}" for n in range(400)]


async def _drained(clients: Clients, url: str) -> bool:
    return await queue_counts(clients, url) == (0, 0)


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("kill-processor:2", "kill-processor"),
        ("kill-ingestor:2", "kill-ingestor"),
        # Seeded: the processor's first ReceiveMessage draws below 0.2, so the fault fires.
        ("sqs-error:0.2,seed:1", "sqs-error"),
        ("sqs-delay:20", "sqs-delay"),
        # Seeded: the processor's first write draws below 0.3 (a run makes only a few).
        ("ddb-throttle:0.3,seed:1", "ddb-"),
        ("poison:4", None),
    ],
    ids=lambda v: v if isinstance(v, str) and ":" in v else "",
)
def test_under_each_fault_every_acknowledged_event_is_stored_once(
    spec: str, fault: str | None
) -> None:
    doc = run_bench("--events", "1500", "--concurrency", "4", "--chaos", spec)
    assert doc["chaos"] == spec
    assert (doc["lost"], doc["duplicates"]) == (0, 0)
    assert doc["stored"] == doc["acknowledged"] == 1500
    if fault:
        # A throttled write, or (a batch's) half left unprocessed: "ddb-" is either.
        assert sum(n for name, n in doc["faults"].items() if name.startswith(fault)) > 0
    assert doc["poison_in_dlq"] == Faults.parse(spec).poison


async def test_ingestor_keeps_accepting_while_the_processor_is_stopped(
    roles: Roles, clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    await roles.start("ingestor")
    url = f"http://127.0.0.1:{settings.port}/ingest"
    for batch in range(20):
        events = [make_event(batch * 50 + n) for n in range(50)]
        async with http.post(url, json=events) as resp:
            assert resp.status == 202
    visible, _ = await queue_counts(clients, await queue_url(clients.sqs, settings.queue_name))
    assert visible >= 1


async def test_ingestor_answers_503_while_sqs_is_down_and_recovers_without_restart(
    settings: Settings, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = await start_moto(port)
    settings = dataclasses.replace(settings, endpoint_url=endpoint)
    async with AsyncExitStack() as stack:
        await bootstrap(await open_clients(stack, settings, pool=2), settings)
    roles = Roles(settings, http)
    ingestor = await roles.start("ingestor", LOGPIPE_SEND_ATTEMPTS=3)
    url = f"http://127.0.0.1:{settings.port}/ingest"
    try:
        moto.terminate()
        await moto.wait()
        for n in range(100):
            async with http.post(url, json=[make_event(n, message="x" * 2000)]) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"].isdigit()
        rss = peak_rss_mb(ingestor.process.pid)
        assert rss is not None and rss < 200

        moto = await start_moto(port)
        async with AsyncExitStack() as stack:
            await bootstrap(await open_clients(stack, settings, pool=2), settings)
        async with http.post(url, json=[make_event(1)]) as resp:
            assert resp.status == 202
        assert ingestor.process.returncode is None  # the same process, never restarted
    finally:
        await roles.stop_all()
        moto.terminate()
        await moto.wait()


async def test_emitter_sigterm_exits_zero_with_everything_it_sent_acknowledged(
    ingestor_url: str, settings: Settings, roles: Roles, clients: Clients
) -> None:
    emitter = await RoleProcess.start(
        "emitter",
        roles.env(
            LOGPIPE_INGESTOR_URL=ingestor_url, LOGPIPE_EMITTER_RATE=500, LOGPIPE_METRICS_PORT=0
        ),
    )
    url = await queue_url(clients.sqs, settings.queue_name)
    await wait_until(lambda: _some_queued(clients, url), timeout=30)
    emitter.process.send_signal(signal.SIGTERM)
    output = await asyncio.wait_for(emitter.output(), 30)
    assert emitter.process.returncode == 0
    summary = orjson.loads(output.strip().splitlines()[-1])
    assert summary["sent"] > 0
    assert summary["accepted"] == summary["sent"]


async def _some_queued(clients: Clients, url: str) -> bool:
    """The emitter's events went through the ingestor into the queue."""
    visible, in_flight = await queue_counts(clients, url)
    return visible + in_flight > 0
