"""The stored format: the events of one service and hour bucket, compressed into blocks.

One SQS message's events are grouped by service and hour bucket and sorted newest first;
each group is cut into blocks of at most MAX_BLOCK_RAW_BYTES of JSON, compressed with zstd.
A block is three DynamoDB items:

- the body, `pk = service#hour#shard, sk = b#<hash>`: the compressed events;
- the summary, `pk = service#hour#shard, sk = s#<newest ms>#<hash>`: service, hour, oldest
  and newest timestamp, the event count, counts per level and a Bloom filter of the ids and
  trace ids. Reads that need only these (histograms, which blocks can hold a trace, where a
  page starts) query the summaries, a few hundred bytes each, and fetch only the bodies they
  need: DynamoDB charges a read by the size of the whole item, so the summary cannot share
  the body's item;
- the same summary again in the partition every service shares, `pk = *#hour#shard` (same
  sk and attributes; `*` is no service name). A search of one service reads that service's
  partitions; a search across services reads one Query page per shard and hour here,
  however many services there are, instead of one per service. A summary's body is always
  at `<its service attribute>#hour#shard`, whichever partition it was read from.

The hash is of the block's own bytes, so the key is a pure function of its events: a
redelivered message writes the same blocks again, never new ones.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from operator import itemgetter
from typing import Any, Final

import orjson
import zstandard

from logpipe.core import timefmt
from logpipe.core.event import Event, StoredEvent, dumps_exact, loads_exact
from logpipe.errors import LogpipeError

FORMAT: Final = "blocks-2"
# Far below DynamoDB's 400 KB item: zstd never grows data by more than a fraction of a
# percent, and one event is at most 32 KiB.
MAX_BLOCK_RAW_BYTES: Final = 128 * 1024
ZSTD_LEVEL: Final = 1
BODY_PREFIX: Final = "b#"
SUMMARY_PREFIX: Final = "s#"
# The partition key's first part for the summaries of every service (not a service name:
# those are [a-z0-9._-]).
SHARED: Final = "*"
HASH_BYTES: Final = 12
ONE_UNIT_BYTES: Final = 1024
# A Bloom filter of 12 bits an element with 4 probes answers "maybe" for about 0.6 % of
# the values it does not hold.
BLOOM_BITS_PER_ELEMENT: Final = 12
BLOOM_PROBES: Final = 4
BLOOM_MIN_BITS: Final = 64
# Stored events carry these as the envelope does; reads turn them into the API's shape.
_INTERNAL = ("assigned_timestamp",)

_compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
_decompressor = zstandard.ZstdDecompressor()


def _newest_first(event: Event) -> tuple[int, str]:
    return event["timestamp"], event["id"]


@dataclass(frozen=True, slots=True)
class Block:
    """The events of one block (newest first) and what is known of them before writing."""

    service: str
    hour: str
    events: list[Event]
    raw: bytes
    digest: str

    @property
    def newest(self) -> int:
        return self.events[0]["timestamp"]

    @property
    def oldest(self) -> int:
        return self.events[-1]["timestamp"]

    def shard(self, shards: int) -> int:
        return int(self.digest[:8], 16) % shards

    def pk(self, shards: int) -> str:
        return f"{self.service}#{self.hour}#{self.shard(shards)}"

    def shared_pk(self, shards: int) -> str:
        return f"{SHARED}#{self.hour}#{self.shard(shards)}"

    @property
    def body_sk(self) -> str:
        return BODY_PREFIX + self.digest

    @property
    def summary_sk(self) -> str:
        return f"{SUMMARY_PREFIX}{self.newest:013d}#{self.digest}"


def make_blocks(events: Iterable[Event]) -> tuple[list[Block], list[tuple[Event, str]]]:
    """The blocks that store `events` (one or more per service and hour bucket), and each
    event that cannot be encoded with why."""
    groups: dict[tuple[str, str], list[Event]] = {}
    for event in events:
        groups.setdefault((event["service"], timefmt.hour(event["timestamp"])), []).append(event)
    blocks: list[Block] = []
    refused: list[tuple[Event, str]] = []
    for (service, hour), group in groups.items():
        group.sort(key=_newest_first, reverse=True)
        kept: list[Event] = []
        encoded: list[bytes] = []
        for event in group:
            try:
                encoded.append(dumps_exact(event))
            except orjson.JSONEncodeError as exc:
                refused.append((event, f"event cannot be encoded: {exc}"))
                continue
            kept.append(event)
        if kept:
            blocks.extend(_cut(service, hour, kept, encoded))
    return blocks, refused


def block_of(service: str, hour: str, events: list[Event]) -> Block:
    """One block of `events` (already newest first), as `make_blocks` would make it."""
    raw = b"[" + b",".join(dumps_exact(e) for e in events) + b"]"
    return Block(service, hour, events, raw, _digest(raw))


def _cut(service: str, hour: str, events: list[Event], encoded: list[bytes]) -> Iterator[Block]:
    start, size = 0, 2
    for n, data in enumerate(encoded):
        if n > start and size + len(data) + 1 > MAX_BLOCK_RAW_BYTES:
            yield _block(service, hour, events[start:n], encoded[start:n])
            start, size = n, 2
        size += len(data) + 1
    yield _block(service, hour, events[start:], encoded[start:])


def _block(service: str, hour: str, events: list[Event], encoded: list[bytes]) -> Block:
    raw = b"[" + b",".join(encoded) + b"]"
    return Block(service, hour, events, raw, _digest(raw))


def _digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=HASH_BYTES).hexdigest()


def split(block: Block) -> tuple[Block, Block]:
    """Two halves of a block of more than one event (to find the one DynamoDB refuses)."""
    middle = len(block.events) // 2
    return (
        block_of(block.service, block.hour, block.events[:middle]),
        block_of(block.service, block.hour, block.events[middle:]),
    )


def item_bytes(item: Mapping[str, Any]) -> int:
    """DynamoDB's size of a block's item: names and values (every value is ASCII or binary),
    numbers counted by their text, a byte or two over DynamoDB's own count."""
    size = 0
    for name, typed in item.items():
        size += len(name)
        if "M" in typed:
            size += 3 + sum(len(k) + 1 + len(v["N"]) for k, v in typed["M"].items())
        else:
            size += len(next(iter(typed.values())))
    return size


def write_units(size: int) -> int:
    return max(1, -(-size // ONE_UNIT_BYTES))


def level_counts(events: Iterable[Event]) -> Counter[str]:
    return Counter(map(_LEVEL, events))


def expires_at(block: Block, retention_days: int) -> int:
    """Epoch seconds when the block may go: its newest event's full retention."""
    return block.newest // 1000 + retention_days * 86400


def body_item(block: Block, shards: int, retention_days: int) -> dict[str, Any]:
    """The DynamoDB item (low-level attribute values) of the block's compressed events."""
    return {
        "pk": {"S": block.pk(shards)},
        "sk": {"S": block.body_sk},
        "z": {"B": _compressor.compress(block.raw)},
        "n": {"N": str(len(block.events))},
        "expires_at": {"N": str(expires_at(block, retention_days))},
    }


def summary_item(block: Block, shards: int, retention_days: int) -> dict[str, Any]:
    """The DynamoDB item that describes the block without its events."""
    levels = level_counts(block.events)
    return {
        "pk": {"S": block.pk(shards)},
        "sk": {"S": block.summary_sk},
        "service": {"S": block.service},
        "hour": {"S": block.hour},
        "oldest": {"N": str(block.oldest)},
        "newest": {"N": str(block.newest)},
        "n": {"N": str(len(block.events))},
        "levels": {"M": {level: {"N": str(n)} for level, n in sorted(levels.items())}},
        "filter": {"B": bloom(_members(block.events))},
        "expires_at": {"N": str(expires_at(block, retention_days))},
    }


def items_of(block: Block, shards: int, retention_days: int) -> tuple[dict[str, Any], ...]:
    """The three items that store one block: body, summary, shared summary."""
    summary = summary_item(block, shards, retention_days)
    return (
        body_item(block, shards, retention_days),
        summary,
        {**summary, "pk": {"S": block.shared_pk(shards)}},
    )


def block_items(events: Iterable[Event], shards: int, retention_days: int) -> list[dict[str, Any]]:
    """The items that store `events` arrived together: each block's three (`items_of`)."""
    blocks, refused = make_blocks(events)
    if refused:
        raise ValueError(f"event cannot be encoded: {refused[0][1]}")
    return [item for block in blocks for item in items_of(block, shards, retention_days)]


def is_shared(pk: str) -> bool:
    """Whether a partition key is of the partition every service shares."""
    return pk.startswith(SHARED + "#")


@dataclass(frozen=True, slots=True)
class Summary:
    """A block's summary as read back: enough to decide whether its body is needed.

    `pk` is the partition it was read from: the service's own or the shared one.
    """

    pk: str
    digest: str
    service: str
    oldest: int
    newest: int
    count: int
    levels: dict[str, int]
    filter: bytes

    @property
    def body_key(self) -> dict[str, Any]:
        """The body's key: in the summary's service's partition, whichever one it was read
        from (hour and shard are the same in both)."""
        _, hour, shard = self.pk.split("#")
        body_pk = f"{self.service}#{hour}#{shard}"
        return {"pk": {"S": body_pk}, "sk": {"S": BODY_PREFIX + self.digest}}

    def has_level(self, levels: Iterable[str]) -> bool:
        """Whether the block holds an event of any of `levels`."""
        return any(self.levels.get(level, 0) > 0 for level in levels)

    def may_hold_trace(self, trace_id: str) -> bool:
        return bloom_may_hold(self.filter, b"t" + trace_id.encode())

    def may_hold_id(self, event_id: str) -> bool:
        return bloom_may_hold(self.filter, b"i" + event_id.encode("utf-8", "surrogatepass"))


def summary_from_item(item: Mapping[str, Any]) -> Summary:
    sk = item["sk"]["S"]
    return Summary(
        pk=item["pk"]["S"],
        digest=sk.rsplit("#", 1)[1],
        service=item["service"]["S"],
        oldest=int(item["oldest"]["N"]),
        newest=int(item["newest"]["N"]),
        count=int(item["n"]["N"]),
        levels={level: int(v["N"]) for level, v in item["levels"]["M"].items()},
        filter=bytes(item["filter"]["B"]),
    )


class BlockError(LogpipeError):
    """A stored body that is not a block this format writes (damaged, or written by hand)."""


def decode_body(item: Mapping[str, Any]) -> list[Event]:
    """The events of a body item, newest first, exactly as they were stored; BlockError for
    a body that is damaged or would inflate past MAX_BLOCK_RAW_BYTES."""
    data = bytes(item["z"]["B"])
    try:
        # A frame that states its size is inflated to that size at once: check it first.
        if zstandard.frame_content_size(data) > MAX_BLOCK_RAW_BYTES:
            raise BlockError(f"block {item.get('sk', {}).get('S')} inflates past its bound")
        raw = _decompressor.decompress(data, max_output_size=MAX_BLOCK_RAW_BYTES)
        events = loads_exact(raw)
    except (zstandard.ZstdError, orjson.JSONDecodeError) as exc:
        raise BlockError(f"block {item.get('sk', {}).get('S')} does not decode: {exc}") from None
    if not isinstance(events, list):
        raise BlockError(f"block {item.get('sk', {}).get('S')} holds no list of events")
    return events


def stored_event(event: Event) -> StoredEvent:
    """A stored event in the read API's shape (DESIGN.md's stored event fields): times in
    ISO 8601 UTC, and each number that JSON readers would round as its digits in a string."""
    shown: StoredEvent = {key: value for key, value in event.items() if key not in _INTERNAL}
    shown["timestamp"] = timefmt.iso_ms(event["timestamp"])
    ingested_at = event.get("ingested_at")
    if isinstance(ingested_at, int):
        shown["ingested_at"] = timefmt.iso_ms(ingested_at)
    attributes = event.get("attributes") or {}
    shown["attributes"] = {
        name: _shown_number(value) if type(value) is Decimal else value
        for name, value in attributes.items()
    }
    return shown


def _shown_number(value: Decimal) -> int | float | str:
    """A number JSON readers would round (beyond 64-bit integers and doubles) as its digits;
    any other as int or float."""
    text = str(value)
    if not any(c in text for c in ".eE"):
        integer = int(text)
        return integer if -(2**63) <= integer < 2**64 else text
    number = float(value)
    return number if Decimal(repr(number)) == value else text


def first_copies(events: Iterable[Event]) -> list[Event]:
    """Each event once: of the copies of one service, timestamp and id (a client's retry
    stored in another block), the one ingested first; ties go to the smaller content."""
    chosen: dict[tuple[str, int, str], Event] = {}
    for event in events:
        key = (event["service"], event["timestamp"], event["id"])
        kept = chosen.get(key)
        if kept is None or _first_key(event) < _first_key(kept):
            chosen[key] = event
    return list(chosen.values())


def _first_key(event: Event) -> tuple[int, bytes]:
    ingested = event.get("ingested_at")
    return (ingested if isinstance(ingested, int) else 0), dumps_exact(event)


def position(event: Event) -> str:
    """Where an event sorts in a search (newest first): `13-digit ms#service#id`, as cursors
    hold. An event is one (service, id): across services, two may share an id and a time.
    `#` sorts below every character of a service name, so the text sorts as the tuple."""
    return f"{event['timestamp']:013d}#{event['service']}#{event['id']}"


def _members(events: Iterable[Event]) -> Iterator[bytes]:
    for event in events:
        yield b"i" + event["id"].encode("utf-8", "surrogatepass")
        trace = event.get("trace_id")
        if trace:
            yield b"t" + trace.encode()


def bloom(members: Iterable[bytes]) -> bytes:
    """A Bloom filter of `members` (BLOOM_PROBES probes, BLOOM_BITS_PER_ELEMENT bits each):
    probe k sets bit (h1 + k * h2) % bits of the member's `_hash_pair`."""
    members = list(members)
    bits = max(BLOOM_MIN_BITS, math.ceil(len(members) * BLOOM_BITS_PER_ELEMENT / 8) * 8)
    # Bit `spot` of the filter is bit spot % 8 of byte spot // 8 (a little-endian number);
    # set in place: or-ing into one big integer copied it for every probe. The hash and the
    # BLOOM_PROBES (4) probes are written out: calls and loops cost more than the arithmetic.
    data = bytearray(bits // 8)
    blake2b, bit = hashlib.blake2b, _BIT
    for member in members:
        h1, h2 = _TWO_WORDS(blake2b(member, digest_size=8).digest())
        h2 |= 1
        spot = h1 % bits
        data[spot >> 3] |= bit[spot & 7]
        spot = (h1 + h2) % bits
        data[spot >> 3] |= bit[spot & 7]
        spot = (h1 + 2 * h2) % bits
        data[spot >> 3] |= bit[spot & 7]
        spot = (h1 + 3 * h2) % bits
        data[spot >> 3] |= bit[spot & 7]
    return bytes(data)


def bloom_may_hold(data: bytes, member: bytes) -> bool:
    """False when `member` is certainly not in the filter `data`."""
    bits = len(data) * 8
    if not bits:
        return False
    h1, h2 = _hash_pair(member)
    for probe in range(BLOOM_PROBES):
        spot = (h1 + probe * h2) % bits
        if not data[spot >> 3] & (1 << (spot & 7)):
            return False
    return True


def _hash_pair(member: bytes) -> tuple[int, int]:
    """The low and the high 32 bits (made odd) of the member's 64-bit blake2b, little-endian."""
    low, high = _TWO_WORDS(hashlib.blake2b(member, digest_size=8).digest())
    return low, high | 1


_TWO_WORDS = struct.Struct("<II").unpack
_LEVEL = itemgetter("level")
_BIT = tuple(1 << n for n in range(8))
