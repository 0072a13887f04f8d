"""Stored blocks: the format (pure), and what the processor and the reads promise over it."""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import random
from typing import Any

import orjson
import pytest
import zstandard
from botocore.awsrequest import AWSResponse

from logpipe.aws.bootstrap import queue_url, read_table_shards, table_shards
from logpipe.aws.calls import stored_events
from logpipe.aws.clients import Clients
from logpipe.aws.serialise import call_body
from logpipe.config import Settings
from logpipe.core.block import (
    BLOOM_BITS_PER_ELEMENT,
    BLOOM_MIN_BITS,
    BLOOM_PROBES,
    MAX_BLOCK_RAW_BYTES,
    BlockError,
    _hash_pair,
    block_of,
    bloom,
    bloom_may_hold,
    body_item,
    decode_body,
    first_copies,
    item_bytes,
    make_blocks,
    split,
    summary_from_item,
    summary_item,
    write_units,
)
from logpipe.core.envelope import pack_envelope
from logpipe.core.event import Event, encode_event, normalise
from logpipe.core.query import parse_query
from logpipe.errors import ConfigError
from logpipe.process.processor import Processor
from logpipe.read.export import export_events, write_ndjson
from logpipe.read.reader import Reader
from tests.support.aws import make_event, queue_counts

T0 = 1_790_000_000_000


def event(n: int, **fields: Any) -> Event:
    return normalise(make_event(n, **fields), now_ms=T0)


# --- the format ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_blocks_hold_one_service_and_hour_each_newest_first() -> None:
    events = [
        event(1, timestamp=T0),
        event(2, timestamp=T0 + 5, service="other"),
        event(3, timestamp=T0 + 3_600_000),
        event(4, timestamp=T0 + 9),
    ]

    blocks, refused = make_blocks(events)

    assert refused == []
    layout = sorted((b.service, b.hour, [e["id"] for e in b.events]) for b in blocks)
    assert layout == [
        ("other", "2026-09-21T14", ["ev-00000002"]),
        ("svc", "2026-09-21T14", ["ev-00000004", "ev-00000001"]),
        ("svc", "2026-09-21T15", ["ev-00000003"]),
    ]


@pytest.mark.unit
def test_a_blocks_key_depends_on_its_events_only() -> None:
    events = [event(n, timestamp=T0 + n) for n in range(50)]
    shuffled = list(events)
    random.Random(3).shuffle(shuffled)

    [first], _ = make_blocks(events)
    [again], _ = make_blocks(shuffled)
    [changed], _ = make_blocks([*events[:-1], event(49, timestamp=T0 + 49, message="other")])

    assert (first.pk(2), first.body_sk, first.summary_sk) == (
        again.pk(2),
        again.body_sk,
        again.summary_sk,
    )
    assert changed.digest != first.digest


@pytest.mark.unit
def test_a_large_message_is_cut_into_blocks_below_the_raw_bound() -> None:
    rng = random.Random(5)
    events = [
        event(n, timestamp=T0 + n, message=os.urandom(6000).hex()[: rng.randint(4000, 12000)])
        for n in range(120)
    ]

    blocks, _ = make_blocks(events)

    assert len(blocks) > 1
    assert all(len(b.raw) <= MAX_BLOCK_RAW_BYTES for b in blocks)
    assert sorted(e["id"] for b in blocks for e in b.events) == sorted(e["id"] for e in events)
    for block in blocks:
        item = body_item(block, shards=2, retention_days=30)
        assert item_bytes(item) < 200 * 1024  # far below DynamoDB's 400 KB
        assert decode_body(item) == block.events


@pytest.mark.unit
def test_a_body_reads_back_exactly_what_was_stored() -> None:
    events = [
        event(1, attributes={"big": 12345678901234567890123, "pi": 3.14159, "ok": True}),
        event(2, trace_id="ab" * 16, span_id="cd" * 8, message="línea\nsegunda"),
    ]
    [block], _ = make_blocks(events)
    assert decode_body(body_item(block, 2, 30)) == block.events


@pytest.mark.unit
def test_a_body_that_inflates_past_the_bound_is_refused() -> None:
    raw = b"[" + b" " * (MAX_BLOCK_RAW_BYTES + 10) + b"]"
    stated = zstandard.ZstdCompressor().compress(raw)
    unstated = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    for bomb in (stated, unstated, b"not zstd at all", zstandard.compress(b'{"a": 1}')):
        with pytest.raises(BlockError):
            decode_body({"z": {"B": bomb}})


@pytest.mark.unit
def test_a_summary_counts_levels_and_knows_its_ids_and_traces() -> None:
    events = [
        event(n, timestamp=T0 + n, level=("error" if n % 4 == 0 else "info"), trace_id=f"{n:032x}")
        for n in range(40)
    ]
    [block], _ = make_blocks(events)

    summary = summary_from_item(summary_item(block, 2, 30))

    assert (summary.oldest, summary.newest, summary.count) == (T0, T0 + 39, 40)
    assert summary.levels == {"error": 10, "info": 30}
    assert all(summary.may_hold_id(e["id"]) for e in events)
    assert all(summary.may_hold_trace(e["trace_id"]) for e in events)
    assert summary_item(block, 2, 30)["expires_at"] == {"N": str((T0 + 39) // 1000 + 30 * 86400)}


@pytest.mark.unit
def test_the_bloom_filter_rarely_claims_what_it_does_not_hold() -> None:
    members = [f"member-{n}".encode() for n in range(2000)]
    data = bloom(members)
    strangers = [f"stranger-{n}".encode() for n in range(20_000)]

    assert all(bloom_may_hold(data, m) for m in members)
    assert sum(bloom_may_hold(data, s) for s in strangers) < 0.02 * len(strangers)


@pytest.mark.unit
def test_split_halves_a_block_into_blocks_of_their_own() -> None:
    [block], _ = make_blocks([event(n, timestamp=T0 + n) for n in range(5)])
    left, right = split(block)
    assert [e["id"] for e in left.events + right.events] == [e["id"] for e in block.events]
    assert left == block_of(block.service, block.hour, block.events[:2])
    assert len({block.digest, left.digest, right.digest}) == 3


@pytest.mark.unit
def test_of_two_copies_the_one_ingested_first_is_kept() -> None:
    first: Event = {**event(1), "ingested_at": T0 + 10}
    retry: Event = {**event(1, message="rewritten"), "ingested_at": T0 + 20}
    other: Event = {**event(2), "ingested_at": T0 + 30}
    assert first_copies([retry, other, first]) == [first, other]


@pytest.mark.unit
@pytest.mark.parametrize(("size", "units"), [(0, 1), (1024, 1), (1025, 2), (40_000, 40)])
def test_write_units_are_one_per_started_kilobyte(size: int, units: int) -> None:
    assert write_units(size) == units


# --- the processor and the reads, against moto ----------------------------------------------------


def _message(events: list[Event], ingested_at: int) -> str:
    return pack_envelope([encode_event({**e, "ingested_at": ingested_at}) for e in events])


async def _handle(
    clients: Clients, settings: Settings, bodies: list[str], delete: bool = True
) -> Any:
    url = await queue_url(clients.sqs, settings.queue_name)
    for body in bodies:
        await clients.sqs.send_message(QueueUrl=url, MessageBody=body)
    messages: list[dict[str, Any]] = []
    while len(messages) < len(bodies):
        got = await clients.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        )
        messages.extend(got.get("Messages", []))
    await Processor(settings, clients, url).handle(messages, delete=delete)
    return url


async def _keys(clients: Clients, settings: Settings) -> list[tuple[str, str]]:
    page = await clients.dynamodb.scan(TableName=settings.table_name, ConsistentRead=True)
    return sorted((i["pk"]["S"], i["sk"]["S"]) for i in page["Items"] if "#" in i["pk"]["S"])


def _reader(clients: Clients, settings: Settings) -> Reader:
    return Reader(clients.dynamodb, settings.table_name, settings.shards, cursor_secret=b"s" * 32)


async def _read(clients: Clients, settings: Settings) -> list[dict[str, Any]]:
    params = {"service": "svc", "since": "2026-09-21T13:00:00Z", "until": "2026-09-21T16:00:00Z"}
    query = parse_query({**params, "limit": "1000"}, T0, b"s" * 32)
    return (await _reader(clients, settings).read(query)).events


@pytest.mark.aws
async def test_a_redelivered_message_writes_the_same_blocks_again(
    clients: Clients, settings: Settings
) -> None:
    body = _message([event(n, timestamp=T0 + n * 1000) for n in range(300)], T0)
    url = await _handle(clients, settings, [body], delete=False)
    written = await _keys(clients, settings)

    await _handle(clients, settings, [body])

    assert await _keys(clients, settings) == written
    # Each block is three items: body and summary in its service's partition, the summary
    # again in the partition every service shares, under the same sort key.
    bodies = [(pk, sk) for pk, sk in written if sk.startswith("b#")]
    assert bodies and len(written) == 3 * len(bodies)
    for pk, sk in bodies:
        _, hour, shard = pk.split("#")
        digest = sk.removeprefix("b#")
        [own] = [k for p, k in written if p == pk and k.startswith("s#") and k.endswith(digest)]
        assert (f"*#{hour}#{shard}", own) in written
    assert len(await stored_events(clients, settings.table_name)) == 300
    visible, hidden = await queue_counts(clients, url)
    assert visible + hidden == 1  # the first receipt was not deleted


@pytest.mark.aws
async def test_a_client_retry_in_another_block_is_read_once_and_the_first_copy_wins(
    clients: Clients, settings: Settings
) -> None:
    originals = [event(n, timestamp=T0 + n) for n in range(20)]
    rewritten: list[Event] = [{**e, "message": "rewritten by someone"} for e in originals[5:10]]
    first = _message(originals, ingested_at=T0 + 100)
    retry = _message(originals[:10], ingested_at=T0 + 200)
    forged = _message(rewritten, ingested_at=T0 + 300)

    await _handle(clients, settings, [forged, retry, first])

    read = await _read(clients, settings)
    assert [e["id"] for e in read] == [e["id"] for e in reversed(originals)]
    assert {e["message"] for e in read} == {e["message"] for e in originals}
    assert all(e["ingested_at"] == "2026-09-21T14:13:20.100Z" for e in read)
    exported = await stored_events(clients, settings.table_name)
    assert sorted(e["id"] for e in exported) == sorted(e["id"] for e in originals)


@pytest.mark.aws
async def test_export_writes_every_event_of_the_range_once_in_time_order(
    clients: Clients, settings: Settings
) -> None:
    rng = random.Random(11)
    events = [
        event(n, timestamp=T0 + rng.randrange(0, 3 * 3_600_000), service=rng.choice(["svc", "api"]))
        for n in range(400)
    ]
    bodies = [_message(events[n : n + 37], T0) for n in range(0, 400, 37)]
    await _handle(clients, settings, [*bodies, bodies[0]])  # one message twice
    out = io.BytesIO()

    count = await write_ndjson(
        export_events(_reader(clients, settings), ["api", "svc"], T0, T0 + 2 * 3_600_000), out
    )

    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    wanted = sorted(
        (e for e in events if e["timestamp"] <= T0 + 2 * 3_600_000),
        key=lambda e: (e["service"], e["timestamp"], e["id"]),
    )
    assert count == len(lines) == len(wanted)
    assert [(e["service"], e["id"]) for e in lines] == [(e["service"], e["id"]) for e in wanted]


@pytest.mark.aws
async def test_a_block_dynamodb_refuses_is_split_until_the_refused_event_stands_alone(
    clients: Clients, settings: Settings
) -> None:
    events = [event(n, timestamp=T0 + n) for n in range(40)]
    calls: list[int] = []

    def refuse_event_17(params: dict[str, Any], **kwargs: Any) -> Any:
        body = call_body(params, kwargs["context"])
        if b'"z":' not in body:
            return None  # the services registry
        request = orjson.loads(body)["RequestItems"][settings.table_name]
        bodies = [
            {"z": {"B": base64.b64decode(r["PutRequest"]["Item"]["z"]["B"])}}
            for r in request
            if "z" in r["PutRequest"]["Item"]
        ]
        calls.append(len(bodies))
        if any(e["id"] == "ev-00000017" for item in bodies for e in decode_body(item)):
            return _validation_error()
        return None

    clients.dynamodb.meta.events.register(
        "before-call.dynamodb.BatchWriteItem", refuse_event_17, unique_id="refuse-17"
    )
    try:
        url = await _handle(clients, settings, [_message(events, T0)])
    finally:
        clients.dynamodb.meta.events.unregister(
            "before-call.dynamodb.BatchWriteItem", unique_id="refuse-17"
        )

    stored = sorted(e["id"] for e in await stored_events(clients, settings.table_name))
    assert stored == [e["id"] for e in events if e["id"] != "ev-00000017"]
    dlq = await queue_url(clients.sqs, settings.dlq_name)
    [letter] = (await clients.sqs.receive_message(QueueUrl=dlq))["Messages"]
    body = orjson.loads(letter["Body"])
    assert [e["id"] for e in body["events"]] == ["ev-00000017"]
    assert body["reason"].startswith("DynamoDB refused the item")
    assert await queue_counts(clients, url) == (0, 0)
    assert max(calls) == 1 and len(calls) > 5  # halved down to a block of one


@pytest.mark.aws
async def test_a_table_of_the_previous_block_format_is_refused_with_one_line(
    clients: Clients, settings: Settings
) -> None:
    config = {"pk": {"S": "_config"}, "sk": {"S": "shards"}, "shards": {"N": "2"}}
    config["format"] = {"S": "blocks-1"}
    await clients.dynamodb.put_item(TableName=settings.table_name, Item=config)

    with pytest.raises(ConfigError, match=r"stores events as blocks-1, .* writes blocks-2"):
        await read_table_shards(clients.dynamodb, settings.table_name, 2)


def _validation_error() -> tuple[AWSResponse, dict[str, Any]]:
    response = AWSResponse("https://dynamodb", 400, {}, None)
    error = {"Code": "ValidationException", "Message": "item refused"}
    return response, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}


@pytest.mark.aws
async def test_a_table_of_another_format_is_refused_with_one_line(
    clients: Clients, settings: Settings
) -> None:
    config = {"pk": {"S": "_config"}, "sk": {"S": "shards"}, "shards": {"N": "8"}}
    await clients.dynamodb.put_item(TableName=settings.table_name, Item=config)

    with pytest.raises(ConfigError, match=r"stores events as items \(one per event\)") as raised:
        await table_shards(clients.dynamodb, settings.table_name, 2)
    assert "\n" not in str(raised.value) and settings.table_name in str(raised.value)
    with pytest.raises(ConfigError):
        await read_table_shards(clients.dynamodb, settings.table_name, 2)


def _bloom_as_one_number(members: list[bytes]) -> bytes:
    """The filter as first written: every probe or-ed into one little-endian integer."""
    pairs = [_hash_pair(m) for m in members]
    bits = max(BLOOM_MIN_BITS, math.ceil(len(pairs) * BLOOM_BITS_PER_ELEMENT / 8) * 8)
    value = 0
    for h1, h2 in pairs:
        for probe in range(BLOOM_PROBES):
            value |= 1 << ((h1 + probe * h2) % bits)
    return value.to_bytes(bits // 8, "little")


def _hash_as_one_number(member: bytes) -> tuple[int, int]:
    digest = int.from_bytes(hashlib.blake2b(member, digest_size=8).digest(), "little")
    return digest & 0xFFFFFFFF, (digest >> 32) | 1


@pytest.mark.unit
@pytest.mark.parametrize("count", [0, 1, 5, 64, 700])
def test_the_bloom_filter_is_the_one_written_bit_by_bit_into_a_number(count: int) -> None:
    rng = random.Random(count)
    members = [rng.randbytes(rng.randrange(1, 40)) for _ in range(count)]
    assert [_hash_pair(m) for m in members] == [_hash_as_one_number(m) for m in members]
    assert bloom(members) == _bloom_as_one_number(members)
