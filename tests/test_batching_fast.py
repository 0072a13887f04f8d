"""The batcher's shortcuts: a request taken whole packs as the per-event walk packs; the
deadline timer that replaces wait_for keeps its promises. No AWS: the sends are stand-ins."""

from __future__ import annotations

import asyncio
import random
from collections import deque

import orjson
import pytest

from logpipe.core.envelope import (
    ENCODING_ATTRIBUTE,
    ENVELOPE_OVERHEAD,
    GZIP_FLAG_BYTES,
    MAX_INFLATED_BYTES,
    MessageBody,
    envelope_size,
    message_body,
    pack_envelope,
    pack_message,
    unpack_events,
)
from logpipe.dev.events import make_events
from logpipe.errors import EntryFailure, QueueUnavailable
from logpipe.ingest.batcher import Batcher, MessageSizer, Pending, _Message, _Request, take_batch
from tests.support.wait import wait_until

pytestmark = pytest.mark.unit


def _requests(rng: random.Random) -> list[list[bytes]]:
    requests = []
    for r in range(rng.randint(1, 12)):
        sizes = [rng.choice((1, 5, 40, 300, 900)) for _ in range(rng.randint(1, 30))]
        requests.append([f'"{r}-{i}-{"x" * size}"'.encode() for i, size in enumerate(sizes)])
    return requests


def _drain(
    requests: list[list[bytes]], known: bool, message_bytes: int, batch_bytes: int, entries: int
) -> list[list[tuple[list[bytes], list[int]]]]:
    """Every batch take_batch makes of the requests: per message, its events and counts."""
    loop = asyncio.get_running_loop()
    buffer: deque[Pending] = deque()
    ids: dict[int, int] = {}
    for n, events in enumerate(requests):
        request = _Request(loop.create_future(), remaining=len(events))
        ids[id(request)] = n
        left = sum(map(len, events)) + len(events) if known else -1
        buffer.append(Pending(list(events), request, left=left))
    batches = []
    while buffer:
        messages = take_batch(buffer, message_bytes, batch_bytes, entries)
        assert messages
        for message in messages:
            assert message.size == envelope_size(message.events)
            assert message.size <= message_bytes or len(message.events) == 1
        batches.append(
            [
                (m.events, [ids[id(r)] * 1000 + c for r, c in m.requests if r is not None])
                for m in messages
            ]
        )
    return batches


@pytest.mark.parametrize("seed", range(40))
async def test_requests_taken_whole_pack_exactly_as_the_per_event_walk(seed: int) -> None:
    rng = random.Random(seed)
    requests = _requests(rng)
    message_bytes = rng.choice((ENVELOPE_OVERHEAD + 950, 2000, 5000, 40000))
    batch_bytes = rng.choice((message_bytes, message_bytes * 3))
    entries = rng.choice((1, 3, 10))
    whole = _drain(requests, True, message_bytes, batch_bytes, entries)
    walked = _drain(requests, False, message_bytes, batch_bytes, entries)
    assert whole == walked
    assert [e for batch in whole for events, _ in batch for e in events] == [
        e for events in requests for e in events
    ]


@pytest.mark.parametrize("count", [0, 1, 2, 7])
def test_pack_envelope_is_head_events_and_tail(count: int) -> None:
    events = [f'{{"id":"e{n}","m":"caf\u00e9"}}'.encode() for n in range(count)]
    body = pack_envelope(events)
    assert body.encode() == b'{"v":1,"events":[' + b",".join(events) + b"]}"
    assert len(body.encode()) == envelope_size(events)
    assert events == [f'{{"id":"e{n}","m":"caf\u00e9"}}'.encode() for n in range(count)]
    if count:
        assert [e["id"] for e in unpack_events(body)] == [f"e{n}" for n in range(count)]


def _event(n: int) -> bytes:
    return f'{{"id":"e{n}"}}'.encode()


def _batcher(send: object, ack_timeout_s: float) -> Batcher:
    return Batcher(
        send,  # type: ignore[arg-type]
        max_bytes=65536,
        linger_s=0.01,
        concurrency=2,
        max_inflight_bytes=1 << 20,
        attempts=2,
        ack_timeout_s=ack_timeout_s,
    )


async def test_a_settled_request_leaves_no_deadline_timer_behind() -> None:
    sent: list[MessageBody] = []

    async def send(bodies: list[MessageBody]) -> list[EntryFailure | None]:
        sent.extend(bodies)
        return [None] * len(bodies)

    async with _batcher(send, ack_timeout_s=0.2) as batcher:
        await batcher.submit([_event(1), _event(2)])
        assert batcher.inflight_bytes == 0
        loop = asyncio.get_running_loop()
        # No timer of a settled request is left to fire (asyncio's own loop lists its timers).
        scheduled = loop._scheduled  # type: ignore[attr-defined]
        assert not [h for h in scheduled if not h.cancelled() and "_expire" in repr(h)]
        await batcher.submit([_event(3)])
    assert [e["id"] for body in sent for e in unpack_events(body.text)] == ["e1", "e2", "e3"]


async def test_a_client_that_hangs_up_leaves_its_events_in_the_batch() -> None:
    release = asyncio.Event()
    sent: list[MessageBody] = []

    async def send(bodies: list[MessageBody]) -> list[EntryFailure | None]:
        await release.wait()
        sent.extend(bodies)
        return [None] * len(bodies)

    async def on_the_wire() -> bool:
        return batcher.inflight_bytes > 0 and not batcher._buffer

    async with _batcher(send, ack_timeout_s=5.0) as batcher:
        task = asyncio.create_task(batcher.submit([_event(1)]))
        await wait_until(on_the_wire, 10, interval=0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
    assert [e["id"] for body in sent for e in unpack_events(body.text)] == ["e1"]
    assert batcher.inflight_bytes == 0


async def test_the_deadline_withdraws_unsent_events_with_queue_unavailable() -> None:
    release = asyncio.Event()

    async def stuck(bodies: list[MessageBody]) -> list[EntryFailure | None]:
        await release.wait()
        return [None] * len(bodies)

    async def on_the_wire() -> bool:
        return not batcher._buffer

    batcher = Batcher(
        stuck,
        max_bytes=65536,
        linger_s=0.01,
        concurrency=1,
        max_inflight_bytes=1 << 20,
        attempts=2,
        ack_timeout_s=0.2,
    )
    async with batcher:
        first = asyncio.create_task(batcher.submit([_event(1)]))
        await wait_until(on_the_wire, 10, interval=0.005)
        with pytest.raises(QueueUnavailable, match="in time"):
            await batcher.submit([_event(2)])
        assert not batcher._buffer
        release.set()
        with pytest.raises(QueueUnavailable, match="in time"):
            await first
    assert batcher.inflight_bytes == 0


async def test_each_request_is_withdrawn_at_its_own_deadline_by_one_timer() -> None:
    release = asyncio.Event()

    async def stuck(bodies: list[MessageBody]) -> list[EntryFailure | None]:
        await release.wait()
        return [None] * len(bodies)

    async def on_the_wire() -> bool:
        return batcher.inflight_bytes > 0 and not batcher._buffer

    batcher = Batcher(
        stuck,
        max_bytes=65536,
        linger_s=0.01,
        concurrency=1,
        max_inflight_bytes=1 << 20,
        attempts=2,
        ack_timeout_s=0.3,
    )
    loop = asyncio.get_running_loop()
    failed: dict[str, float] = {}

    async def submit(name: str, n: int) -> float:
        started = loop.time()
        with pytest.raises(QueueUnavailable, match="in time"):
            await batcher.submit([_event(n)])
        failed[name] = loop.time()
        return started

    def timers() -> list[asyncio.TimerHandle]:
        scheduled = loop._scheduled  # type: ignore[attr-defined]
        return [h for h in scheduled if not h.cancelled() and "_expire" in repr(h)]

    async with batcher:
        first = asyncio.create_task(submit("first", 1))
        await wait_until(on_the_wire, 10, interval=0.005)
        second = asyncio.create_task(submit("second", 2))
        gone = asyncio.create_task(batcher.submit([_event(3)]))
        await wait_until(lambda: _waiting(batcher, 3), 10, interval=0.005)
        gone.cancel()  # a client that hung up: never withdrawn, its events stay queued
        third = asyncio.create_task(submit("third", 4))
        await wait_until(lambda: _waiting(batcher, 4), 10, interval=0.005)
        assert len(timers()) == 1  # one timer for every waiting request
        started = {"second": await second, "third": await third}
        # Each failed no earlier than its own deadline (a busy machine only makes it later).
        for name in ("second", "third"):
            assert failed[name] >= started[name] + 0.3 - 0.01
        # Only the events of the client that hung up are left to send.
        assert [p.events[p.start :] for p in batcher._buffer] == [[_event(3)]]
        release.set()
        assert await first >= 0
    assert batcher.inflight_bytes == 0
    assert set(failed) == {"first", "second", "third"}
    assert not timers()


async def _waiting(batcher: Batcher, count: int) -> bool:
    return len(batcher._deadlines) >= count


def _realistic(count: int) -> list[bytes]:
    return [orjson.dumps(e) for e in make_events("gz", count, 1_700_000_000_000, seed=7)]


def _incompressible(count: int, size: int = 1000) -> list[bytes]:
    rng = random.Random(count)
    return [orjson.dumps({"id": f"r{n}", "m": rng.randbytes(size).hex()}) for n in range(count)]


def test_a_small_envelope_goes_as_it_is_and_a_large_one_gzipped_and_flagged() -> None:
    small = pack_message(_realistic(3))
    assert not small.gzipped and small.attributes == {}
    assert small.text == pack_envelope(_realistic(3))

    events = _realistic(300)
    large = pack_message(events)
    assert large.gzipped
    assert large.attributes == {ENCODING_ATTRIBUTE: {"DataType": "String", "StringValue": "gzip"}}
    assert large.size == len(large.text) + GZIP_FLAG_BYTES
    assert large.size < envelope_size(events) / 2  # logs like real ones shrink at least 2x
    received = {"Body": large.text, "MessageAttributes": large.attributes}
    assert message_body(received) == pack_envelope(events)


def test_the_sizer_fills_the_next_messages_with_what_gzip_lets_fit() -> None:
    sizer = MessageSizer(65536)
    first = sizer.fill_bytes
    message = _message(_realistic(60))
    [(_, body)] = sizer.pack([message])
    assert body.gzipped and body.size <= 65536
    assert sizer.fill_bytes > first
    for _ in range(20):
        sizer.pack([_message(_realistic(60))])
    ratio = envelope_size(_realistic(60)) / body.size
    assert 2 * 65536 < sizer.fill_bytes <= 65536 * ratio
    assert MessageSizer(4 << 20).fill_bytes <= MAX_INFLATED_BYTES


def test_a_body_over_the_limit_is_split_in_order_and_each_request_still_counts_its_events() -> None:
    loop = asyncio.new_event_loop()
    try:
        requests = [_Request(loop.create_future(), remaining=n) for n in (70, 130, 100)]
    finally:
        loop.close()
    events = _incompressible(300)
    message = _message(events, [(r, r.remaining) for r in requests])
    sizer = MessageSizer(65536)
    packed = sizer.pack([message])
    assert len(packed) >= 4  # 600 KB of hex cannot shrink into one 64 KB message
    assert all(body.size <= 65536 for _, body in packed)
    assert [e for part, _ in packed for e in part.events] == events
    assert [e for _, body in packed for e in unpack_events(message_body(_received(body)))] == [
        orjson.loads(e) for e in events
    ]
    for request in requests:
        counts = [c for part, _ in packed for r, c in part.requests if r is request]
        assert sum(counts) == request.remaining
    assert all(part.size == envelope_size(part.events) for part, _ in packed)


def test_bodies_are_grouped_into_batches_sqs_takes() -> None:
    sizer = MessageSizer(65536)
    small = [_message([_event(n)]) for n in range(23)]
    groups = sizer.batches(sizer.pack(small))
    assert [len(g) for g in groups] == [10, 10, 3]
    large = [_message(_incompressible(25, 1000)) for _ in range(5)]  # about 50 KB each
    groups = sizer.batches(sizer.pack(large))
    assert all(sum(body.size for _, body in g) <= 65536 for g in groups)
    assert [m for g in groups for m, _ in g] == large


def _message(
    events: list[bytes], requests: list[tuple[_Request | None, int]] | None = None
) -> _Message:
    return _Message(events, requests or [(None, len(events))], envelope_size(events))


def _received(body: MessageBody) -> dict[str, object]:
    return {"Body": body.text, "MessageAttributes": body.attributes}


def test_events_that_gzip_cannot_shrink_go_plain_and_the_fill_falls_back_to_the_limit() -> None:
    rng = random.Random(9)
    printable = [chr(c) for c in range(33, 127) if chr(c) not in '"\\']

    def noise(count: int) -> list[bytes]:
        return [
            orjson.dumps({"id": f"n{n}", "m": "".join(rng.choices(printable, k=900))})
            for n in range(count)
        ]

    events = noise(60)
    body = pack_message(events)
    assert not body.gzipped and body.size == envelope_size(events)
    sizer = MessageSizer(65536)
    for _ in range(12):
        [(_, body)] = sizer.pack([_message(noise(60))])
        assert not body.gzipped
    assert sizer.fill_bytes == 65536  # no longer filled past what goes plain
