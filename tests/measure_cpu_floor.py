"""The least CPU each role can spend on an event, against what it spends. One JSON object.

    .venv/bin/python -m tests.measure_cpu_floor [EVENTS] [EVENT_BYTES]

On bench events of EVENT_BYTES (default 1024), CPU µs per event, best of five, this process
only. `floor`: the library calls a role makes for every event and cannot do without, each
timed alone, and one Python pass that only touches each field and attribute (the least any
per-event check costs). `ours`: the same work as the role's code does it, checks, grouping,
Bloom filters and summaries included. Neither counts HTTP, the AWS calls or the event loop,
which `logpipe bench` measures with the rest (`cpu_us_per_event`).

- ingestor, per request of 100 events: inflate the client's gzip, parse, encode each event,
  pack and gzip the SQS envelope;
- processor, per message (an envelope of EVENTS events): base64 and inflate, parse, encode
  each event, compress and hash each block, hash each id and trace id for the filter.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import sys
import time
from typing import Any

import orjson
import zstandard
from isal import isal_zlib

from logpipe.config import Settings
from logpipe.core.block import items_of, make_blocks
from logpipe.core.envelope import message_body, pack_message, unpack_checked
from logpipe.dev.events import make_events
from logpipe.ingest.app import NATIVE, decode
from tests.measure_compression import per_event_us

REQUEST_EVENTS = 100


def touch(events: list[dict[str, Any]]) -> int:
    """Every field and attribute of every event looked at once, and nothing done."""
    for event in events:
        for _ in event.values():
            pass
        for _ in event.get("attributes", {}).values():
            pass
    return len(events)


def ingestor(events: list[dict[str, Any]]) -> dict[str, Any]:
    requests = [events[n : n + REQUEST_EVENTS] for n in range(0, len(events), REQUEST_EVENTS)]
    bodies = [gzip.compress(orjson.dumps(request), 5) for request in requests]
    raw = [isal_zlib.decompress(body, 31) for body in bodies]
    parsed = [orjson.loads(body) for body in raw]
    count = len(events)
    settings = Settings(retention_days=36500)
    steps = {
        "inflate": per_event_us(lambda: [isal_zlib.decompress(b, 31) for b in bodies], count),
        "parse": per_event_us(lambda: [orjson.loads(b) for b in raw], count),
        "touch": per_event_us(lambda: [touch(p) for p in parsed], count),
        "encode": per_event_us(lambda: [[orjson.dumps(e) for e in p] for p in parsed], count),
    }
    encoded = [orjson.dumps(e) for e in events]
    steps["pack"] = per_event_us(lambda: pack_message(encoded), count)

    def ours() -> None:
        for body in bodies:
            accepted = decode(NATIVE, body, "application/json", "gzip", None, settings, _no_hold)
            pack_message(accepted.events())

    return _answer(steps, per_event_us(ours, count))


def processor(events: list[dict[str, Any]]) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    encoded = [orjson.dumps({**e, "ingested_at": now_ms}) for e in events]
    body = pack_message(encoded)
    message = {"Body": body.text, "MessageAttributes": {}}
    if body.gzipped:
        message["MessageAttributes"] = {"content-encoding": {"StringValue": "gzip"}}
    envelope = message_body(message)
    parsed = orjson.loads(envelope)["events"]
    blocks, _ = make_blocks(parsed)
    members = [f"i{e['id']}".encode() for e in parsed]
    members += [f"t{e['trace_id']}".encode() for e in parsed if "trace_id" in e]
    zstd = zstandard.ZstdCompressor(level=1)
    count = len(events)
    steps = {
        "inflate": per_event_us(lambda: _inflate(body.text), count),
        "parse": per_event_us(lambda: orjson.loads(envelope), count),
        "touch": per_event_us(lambda: touch(parsed), count),
        "encode": per_event_us(lambda: [orjson.dumps(e) for e in parsed], count),
        "compress": per_event_us(lambda: [zstd.compress(b.raw) for b in blocks], count),
        "hash": per_event_us(lambda: [hashlib.blake2b(b.raw) for b in blocks], count),
        "filter": per_event_us(
            lambda: [hashlib.blake2b(m, digest_size=8).digest() for m in members], count
        ),
    }

    def ours() -> None:
        good, _, _ = unpack_checked(message_body(message), 8, 30)
        made, _ = make_blocks(good)
        for block in made:
            items_of(block, 8, 30)

    return _answer(steps, per_event_us(ours, count))


def _inflate(text: str) -> bytes:
    return isal_zlib.decompress(base64.b64decode(text), 31)


def _no_hold(size: int, what: str) -> None:
    return None


def _answer(steps: dict[str, float], ours: float) -> dict[str, Any]:
    return {"floor": round(sum(steps.values()), 1), "steps": steps, "ours": ours}


def main(count: int = 900, event_bytes: int = 1024) -> dict[str, Any]:
    # glibc serves large blocks from fresh pages until one such block is freed; a role has
    # freed many long before it is measured. Without this, what runs first pays page faults.
    bytes(4 * 2**20)
    events = make_events("floor", count, int(time.time() * 1000), event_bytes, seed=1)
    return {
        "events": count,
        "event_bytes": event_bytes,
        "ingestor": ingestor(events),
        "processor": processor(events),
    }


if __name__ == "__main__":
    print(orjson.dumps(main(*map(int, sys.argv[1:3]))).decode())
