"""`logpipe dlq inspect` and `redrive` against real queues."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.core.envelope import pack_envelope
from logpipe.core.event import encode_event, normalise
from logpipe.dev import promtext
from logpipe.dev.processes import role_env
from logpipe.process import dlq
from logpipe.process.processor import Processor
from tests.support.aws import make_event, queue_counts, scan_events
from tests.support.roles import Roles
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

    assert (first["snapshot"], first["moved"], first["kept"], first["undecodable"]) == (2, 1, 1, 1)
    assert (second["snapshot"], second["moved"], second["kept"]) == (1, 0, 1)
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


async def test_an_event_refused_alone_is_inspected_with_its_reason_and_redriven_only_with_all(
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
    left = await dlq.redrive(clients, settings, everything=False)
    assert (left["moved"], left["kept"], left["refused"]) == (0, 1, 1)
    assert await queue_counts(clients, dlq_url) == (1, 0)  # visible again at once
    moved = await dlq.redrive(clients, settings, everything=True)
    assert (moved["moved"], moved["kept"]) == (1, 0)
    assert await queue_counts(clients, main_url) == (1, 0)
    assert sum(await queue_counts(clients, dlq_url)) == 0
    # Still unstorable: the processor sends it back alone, and stores nothing of it.
    await Processor(settings, clients, main_url).run_until_empty()
    assert await queue_counts(clients, main_url) == (0, 0)
    assert len(await scan_events(clients, settings.table_name)) == 2
    assert (await dlq.inspect(clients, settings, sample=1))["messages"] == 1


async def _visible(clients: Clients, url: str) -> bool:
    return await queue_counts(clients, url) == (1, 0)


# --- redrive against a running processor ------------------------------------------------------

PERMANENT = 300


async def _dlq_total(clients: Clients, url: str) -> int:
    return sum(await queue_counts(clients, url))


async def _refused_by_the_processor(
    clients: Clients, settings: Settings, roles: Roles, count: int
) -> str:
    """`count` events the running processor refused, each alone in the DLQ with its reason."""
    main_url = await queue_url(clients.sqs, settings.queue_name)
    dlq_url = await queue_url(clients.sqs, settings.dlq_name)
    bad = []
    for n in range(count):
        event = normalise(make_event(10_000 + n), now_ms=1)
        event["level"] = "loud"
        bad.append(orjson.dumps(event))
    await clients.sqs.send_message(QueueUrl=main_url, MessageBody=pack_envelope(bad))

    async def all_dead_lettered() -> bool:
        return await _dlq_total(clients, dlq_url) == count

    await wait_until(all_dead_lettered, timeout=60)
    return dlq_url


async def _storable_letters(clients: Clients, url: str, messages: int) -> list[str]:
    """`messages` dead letters of 5 storable events each (as after a long DynamoDB outage)."""
    ids = []
    for m in range(messages):
        events = [normalise(make_event(m * 5 + n), now_ms=1) for n in range(5)]
        ids += [e["id"] for e in events]
        body = pack_envelope([encode_event(e) for e in events])
        await clients.sqs.send_message(QueueUrl=url, MessageBody=body)
    return ids


async def _dead_lettered(roles: Roles) -> float:
    samples = await promtext.scrape(
        roles.session, f"http://127.0.0.1:{roles.settings.metrics_port}/metrics"
    )
    return promtext.total(samples, "logpipe_events_dead_lettered_total")


async def redrive_command(settings: Settings, *args: str) -> tuple[dict[str, Any], float]:
    """`logpipe dlq redrive --json ARGS` as a process, bounded to 60 s; its report and time."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "logpipe",
        "dlq",
        "redrive",
        "--json",
        *args,
        env=role_env(settings, LOGPIPE_LOG_LEVEL="warning"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), REDRIVE_BOUND_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"redrive did not end within {REDRIVE_BOUND_S} s") from None
    elapsed = time.monotonic() - started
    assert process.returncode == 0, err.decode()[-2000:]
    report: dict[str, Any] = orjson.loads(out)
    return report, elapsed


REDRIVE_BOUND_S = 60


async def test_redrive_leaves_permanent_refusals_and_ends_while_a_processor_runs(
    clients: Clients, settings: Settings, roles: Roles
) -> None:
    await roles.start("processor")
    dlq_url = await _refused_by_the_processor(clients, settings, roles, PERMANENT)
    main_url = await queue_url(clients.sqs, settings.queue_name)

    report, elapsed = await redrive_command(settings)

    print(f"redrive of {PERMANENT} refusals: {elapsed:.1f} s, {report}")
    assert report["moved"] == 0 and report["kept"] == report["refused"] == PERMANENT
    assert report["snapshot"] == PERMANENT
    # Unchanged: the same letters, visible again at once; nothing went round the processor.
    assert await queue_counts(clients, dlq_url) == (PERMANENT, 0)
    assert await queue_counts(clients, main_url) == (0, 0)
    assert await _dead_lettered(roles) == PERMANENT


@pytest.mark.timeout(300)
async def test_redrive_all_moves_the_refusals_once_and_ends_while_the_processor_refuses_them_again(
    clients: Clients, settings: Settings, roles: Roles
) -> None:
    await roles.start("processor")
    dlq_url = await _refused_by_the_processor(clients, settings, roles, PERMANENT)

    report, elapsed = await redrive_command(settings, "--all")

    print(f"redrive --all of {PERMANENT} refusals: {elapsed:.1f} s, {report}")
    assert report["moved"] == report["snapshot"] == PERMANENT and report["kept"] == 0

    # The processor refuses each once more, and the redrive is over: all 300 back in the
    # DLQ. (SQS delivers at least once: a refusal received again before its delete, as on a
    # machine too busy for the heartbeat, is dead-lettered twice, so "at least".)
    main_url = await queue_url(clients.sqs, settings.queue_name)

    async def refused_again() -> bool:
        return await _dead_lettered(roles) >= 2 * PERMANENT and await queue_counts(
            clients, main_url
        ) == (0, 0)

    await wait_until(refused_again, timeout=180)
    in_dlq = await _dlq_total(clients, dlq_url)
    assert in_dlq >= PERMANENT
    again, _ = await redrive_command(settings)
    assert (again["moved"], again["kept"]) == (0, in_dlq)


async def test_a_redrive_moves_exactly_the_snapshot_it_began_with(
    clients: Clients, settings: Settings, roles: Roles
) -> None:
    await roles.start("processor")
    dlq_url = await _refused_by_the_processor(clients, settings, roles, 30)
    stored = await _storable_letters(clients, dlq_url, 20)
    # Undecodable dead letters stay too (unless --all).
    await clients.sqs.send_message(QueueUrl=dlq_url, MessageBody="{broken")

    report = await dlq.redrive(clients, settings, everything=False)

    assert report == {
        "snapshot": 51,
        "moved": 20,
        "kept": 31,
        "refused": 30,
        "undecodable": 1,
        "failed": 0,
        "arrived": 0,
    }
    assert dlq.render_redrive(report, settings).splitlines()[1:] == [
        "left 30 events the processor refused (--all moves them; it refuses them again "
        "unless it has changed)",
        "left 1 undecodable messages (--all moves them)",
    ]

    async def all_stored() -> bool:
        return len(await scan_events(clients, settings.table_name)) == len(stored)

    await wait_until(all_stored, timeout=60)
    assert sorted(i["id"] for i in await scan_events(clients, settings.table_name)) == stored
    assert await queue_counts(clients, dlq_url) == (31, 0)

    # With --all, exactly the 31 there at the start move, though the processor sends the
    # refusals back while the redrive runs.
    report = await dlq.redrive(clients, settings, everything=True)
    assert (report["snapshot"], report["moved"], report["kept"]) == (31, 31, 0)


async def test_letters_sent_after_the_redrive_began_are_not_its_to_move(
    clients: Clients, settings: Settings
) -> None:
    dlq_url = await queue_url(clients.sqs, settings.dlq_name)
    await _storable_letters(clients, dlq_url, 10)

    # A redrive whose clock says it began before they were sent.
    report = await dlq.redrive(clients, settings, everything=True, clock=lambda: 0.0)

    assert (report["moved"], report["arrived"]) == (0, 10)
    assert await queue_counts(clients, dlq_url) == (10, 0)
