"""The group-commit batcher: packing decisions, and its promises against a real SQS endpoint."""

from __future__ import annotations

import asyncio
import base64
import random
from collections import deque
from functools import partial
from typing import Any

import orjson
import pytest

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.calls import send_message_batch
from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.core.envelope import (
    ENVELOPE_OVERHEAD,
    MessageBody,
    envelope_size,
    message_body,
    unpack_envelope,
    unpack_events,
)
from logpipe.core.event import Event
from logpipe.dev.events import make_events
from logpipe.errors import EntryFailure, Overloaded, QueueUnavailable
from logpipe.ingest.batcher import Batcher, Pending, SendBatch, _Request, take_batch
from tests.support.aws import queue_counts

pytestmark = pytest.mark.aws


def _buffer(sizes: list[int]) -> deque[Pending]:
    request = _Request(asyncio.get_running_loop().create_future(), remaining=len(sizes))
    return deque([Pending([b"x" * size for size in sizes], request)])


def _left(buffer: deque[Pending]) -> int:
    return sum(len(p.events) - p.start for p in buffer)


@pytest.mark.parametrize(
    ("sizes", "max_bytes", "expected"),
    [
        ([10, 10, 10], 1000, [3]),
        ([400, 400, 400], 1000, [2]),
        ([100] * 30, 300, [2]),
        ([100] * 30, 1000, [9]),
        ([], 1000, []),
    ],
    ids=["all-fit-one-message", "message-full", "small-limit", "nine-per-kilobyte", "empty"],
)
async def test_take_batch_fills_messages_up_to_the_byte_limit(
    sizes: list[int], max_bytes: int, expected: list[int]
) -> None:
    buffer = _buffer(sizes)
    messages = take_batch(buffer, max_bytes, max_bytes)
    assert [len(m.events) for m in messages] == expected
    assert all(m.size == envelope_size(m.events) <= max_bytes for m in messages)
    assert _left(buffer) == len(sizes) - sum(expected)


async def test_take_batch_splits_into_at_most_ten_messages_within_the_total() -> None:
    # Events too big to share a message: one per message, ten per batch at most.
    buffer = _buffer([600] * 25)
    messages = take_batch(buffer, message_bytes=1000, batch_bytes=10000, max_entries=10)
    assert len(messages) == 10
    assert sum(m.size for m in messages) <= 10000
    assert all(len(m.events) == 1 for m in messages)
    assert _left(buffer) == 15


async def test_take_batch_keeps_the_order_of_events() -> None:
    request = _Request(asyncio.get_running_loop().create_future(), remaining=5)
    buffer = deque([Pending([f'"{n}"'.encode() for n in range(5)], request)])
    messages = take_batch(buffer, ENVELOPE_OVERHEAD + 8, ENVELOPE_OVERHEAD + 8)
    assert [e for m in messages for e in m.events] == [b'"0"', b'"1"']


async def test_take_batch_counts_each_requests_events_across_messages_and_batches() -> None:
    loop = asyncio.get_running_loop()
    sizes = [3, 1, 7, 2, 5]
    requests = [_Request(loop.create_future(), remaining=n) for n in sizes]
    buffer: deque[Pending] = deque()
    expected: list[bytes] = []
    for r, (request, n) in enumerate(zip(requests, sizes, strict=True)):
        events = [f'"{r}-{i}"'.encode() for i in range(n)]
        expected += events
        buffer.append(Pending(events, request))
    taken: list[bytes] = []
    counts: dict[int, int] = {}
    calls = 0
    while buffer:
        # Three 5-byte events per message, two messages per batch.
        messages = take_batch(buffer, ENVELOPE_OVERHEAD + 17, 1000, max_entries=2)
        calls += 1
        assert 1 <= len(messages) <= 2
        for message in messages:
            assert sum(count for _, count in message.requests) == len(message.events) <= 3
            taken += message.events
            for owner, count in message.requests:
                assert owner is not None
                r = requests.index(owner)
                counts[r] = counts.get(r, 0) + count
    assert taken == expected
    assert counts == dict(enumerate(sizes))
    assert calls == 3


def _batcher(send: SendBatch, **overrides: float) -> Batcher:
    options: dict[str, float] = {
        "max_bytes": 65536,
        "linger_s": 0.01,
        "concurrency": 4,
        "max_inflight_bytes": 1 << 24,
        "attempts": 4,
    }
    options.update(overrides)
    return Batcher(send, **options)  # type: ignore[arg-type]


async def _drain(clients: Clients, url: str) -> list[list[Event]]:
    """Every envelope in the queue, each as its list of events."""
    return [unpack_envelope(message_body(m)) for m in await _drain_messages(clients, url)]


def _event(n: int) -> bytes:
    return orjson.dumps(
        {"id": f"e{n}", "service": "s", "level": "info", "message": "m" * 200, "timestamp": n}
    )


async def test_concurrent_requests_share_messages_and_every_event_lands_once(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    async with _batcher(partial(send_message_batch, clients.sqs, url)) as batcher:
        await asyncio.gather(
            *(batcher.submit([_event(r * 10 + n) for n in range(10)]) for r in range(200))
        )
        assert batcher.inflight_bytes == 0

    envelopes = await _drain(clients, url)
    ids = [e["id"] for events in envelopes for e in events]
    assert sorted(ids) == sorted(f"e{n}" for n in range(2000))
    assert len(envelopes) < 200 / 4  # packed: far fewer messages than requests


async def test_entries_that_fail_once_are_sent_again(clients: Clients, settings: Settings) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    calls: list[int] = []

    async def first_entry_fails_once(bodies: list[MessageBody]) -> list[EntryFailure | None]:
        calls.append(len(bodies))
        if len(calls) == 1:
            return [EntryFailure("InternalError", retriable=True)] * len(bodies)
        return await send_message_batch(clients.sqs, url, bodies)

    async with _batcher(first_entry_fails_once) as batcher:
        await batcher.submit([_event(n) for n in range(20)])

    assert len(calls) == 2
    envelopes = await _drain(clients, url)
    assert sorted(e["id"] for events in envelopes for e in events) == sorted(
        f"e{n}" for n in range(20)
    )


async def test_a_refused_entry_fails_its_request_with_queue_unavailable() -> None:
    async def refuse(bodies: list[MessageBody]) -> list[EntryFailure | None]:
        return [EntryFailure("InvalidMessageContents", retriable=False)] * len(bodies)

    async with _batcher(refuse) as batcher:
        with pytest.raises(QueueUnavailable, match="InvalidMessageContents"):
            await batcher.submit([_event(1)])
        assert batcher.inflight_bytes == 0


async def test_retriable_failures_give_up_after_the_last_attempt() -> None:
    calls = 0

    async def always_throttled(bodies: list[MessageBody]) -> list[EntryFailure | None]:
        nonlocal calls
        calls += 1
        return [EntryFailure("ThrottlingException", retriable=True)] * len(bodies)

    async with _batcher(always_throttled, attempts=3) as batcher:
        with pytest.raises(QueueUnavailable, match="ThrottlingException"):
            await batcher.submit([_event(1)])
    assert calls == 3


async def test_a_full_batcher_refuses_new_work_instead_of_growing(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    gate = asyncio.Event()

    async def slow_send(bodies: list[MessageBody]) -> list[EntryFailure | None]:
        await gate.wait()
        return await send_message_batch(clients.sqs, url, bodies)

    async with _batcher(slow_send, max_inflight_bytes=1 << 20) as batcher:
        big = [_event(n) for n in range(4000)]  # ~1 MiB together: the whole allowance
        first = asyncio.create_task(batcher.submit(big[:3500]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.submit(big[3500:])
        gate.set()
        await first
        await batcher.submit(big[3500:])  # room again once SQS has the first request

    visible, _ = await queue_counts(clients, url)
    assert visible > 0
    assert len(await _drain(clients, url)) == visible


async def test_stop_sends_what_is_still_lingering(clients: Clients, settings: Settings) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    batcher = _batcher(partial(send_message_batch, clients.sqs, url), linger_s=60)
    await batcher.start()
    pending = asyncio.create_task(batcher.submit([_event(1), _event(2)]))
    await asyncio.sleep(0)
    await batcher.stop()
    await pending
    await batcher.stop()  # idempotent
    with pytest.raises(Overloaded):
        await batcher.submit([_event(3)])
    envelopes = await _drain(clients, url)
    assert [e["id"] for events in envelopes for e in events] == ["e1", "e2"]


async def test_a_request_sqs_does_not_take_in_time_gets_503_and_its_events_are_withdrawn() -> None:
    release, on_wire = asyncio.Event(), asyncio.Event()
    sent: list[MessageBody] = []

    async def stuck(bodies: list[MessageBody]) -> list[EntryFailure | None]:
        sent.extend(bodies)
        on_wire.set()
        await release.wait()
        return [None] * len(bodies)

    # One send slot: the first request's message is on the wire, the second's waits behind it.
    async with _batcher(stuck, concurrency=1, ack_timeout_s=0.3) as batcher:
        first = asyncio.create_task(batcher.submit([_event(1)]))
        await asyncio.wait_for(on_wire.wait(), 10)
        with pytest.raises(QueueUnavailable, match="in time"):
            await batcher.submit([_event(n) for n in range(2, 12)])
        with pytest.raises(QueueUnavailable, match="in time"):
            await first
        # Only the message already on the wire is still counted; the withdrawn events never go.
        assert 0 < batcher.inflight_bytes < len(_event(1)) * 2
        release.set()
    assert batcher.inflight_bytes == 0
    assert [e["id"] for body in sent for e in unpack_envelope(body.text)] == ["e1"]


async def test_a_burst_of_logs_goes_gzipped_in_far_fewer_messages_each_within_sqs_limit(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    events = [orjson.dumps(e) for e in make_events("burst", 3000, 1_700_000_000_000, seed=3)]
    max_bytes = 262144
    async with _batcher(partial(send_message_batch, clients.sqs, url), max_bytes=max_bytes) as b:
        await asyncio.gather(*(b.submit(events[n : n + 100]) for n in range(0, 3000, 100)))

    messages = await _drain_messages(clients, url)
    assert all(len(m["Body"]) <= max_bytes for m in messages)
    flagged = [m for m in messages if "MessageAttributes" in m]
    assert flagged
    ids = [e["id"] for m in messages for e in unpack_events(message_body(m))]
    assert sorted(ids) == sorted(orjson.loads(e)["id"] for e in events)
    plain_messages = envelope_size(events) / max_bytes  # what plain envelopes would need
    assert len(messages) < plain_messages * 0.6


async def test_events_that_do_not_compress_after_logs_that_do_are_split_to_fit_sqs(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    logs = [orjson.dumps(e) for e in make_events("logs", 1500, 1_700_000_000_000, seed=4)]
    rng = random.Random(5)
    noise = [
        orjson.dumps({"id": f"x{n}", "m": base64.b64encode(rng.randbytes(700)).decode()})
        for n in range(1500)
    ]
    max_bytes = 262144
    async with _batcher(partial(send_message_batch, clients.sqs, url), max_bytes=max_bytes) as b:
        # The logs teach the batcher to fill messages with about 3x their size...
        await asyncio.gather(*(b.submit(logs[n : n + 100]) for n in range(0, 1500, 100)))
        # ... which these, already random and in base64, cannot shrink into.
        await asyncio.gather(*(b.submit(noise[n : n + 100]) for n in range(0, 1500, 100)))

    messages = await _drain_messages(clients, url)
    assert all(len(m["Body"]) <= max_bytes for m in messages)
    ids = [e["id"] for m in messages for e in unpack_events(message_body(m))]
    assert sorted(ids) == sorted(orjson.loads(e)["id"] for e in logs + noise)


async def _drain_messages(clients: Clients, url: str) -> list[dict[str, Any]]:
    """Every message in the queue, with its attributes."""
    messages: list[dict[str, Any]] = []
    while True:
        got = await clients.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        )
        if not got.get("Messages"):
            return messages
        for message in got["Messages"]:
            messages.append(message)
            await clients.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
