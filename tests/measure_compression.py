"""What compressing one SQS envelope costs, per event, with each codec at hand. One JSON
object.

    .venv/bin/python -m tests.measure_compression [EVENTS] [EVENT_BYTES]

Packs EVENTS (default 700, about a gzipped message's worth) bench events of EVENT_BYTES
(default 1024) into one envelope, as the ingestor encodes them, and times, best of five:
gzip by zlib and by ISA-L (what `pack_message` uses) and zstd, each writing and reading,
plus the base64 both ends of an SQS body pay. CPU time of this process only.
"""

from __future__ import annotations

import base64
import sys
import time
import zlib
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
import zstandard
from isal import isal_zlib

from logpipe.core.envelope import ENVELOPE_HEAD, ENVELOPE_TAIL
from logpipe.core.event import encode_event, normalise
from logpipe.dev.events import make_events

ROUNDS = 5


def per_event_us(work: Callable[[], object], events: int, repeat: int = 10) -> float:
    """The best of ROUNDS runs of `repeat` calls, in CPU µs per event."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(repeat):
            work()
        best = min(best, time.process_time() - started)
    return round(best / repeat / events * 1e6, 2)


def gzip_by(module: Any, level: int) -> Callable[[bytes], bytes]:
    def pack(data: bytes) -> bytes:
        packer = module.compressobj(level, module.DEFLATED, 31)
        return bytes(packer.compress(data) + packer.flush())

    return pack


def gunzip_by(module: Any) -> Callable[[bytes], bytes]:
    return lambda data: bytes(module.decompressobj(wbits=31).decompress(data))


def main(count: int = 700, event_bytes: int = 1024) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    events = make_events("gz", count, now_ms, event_bytes, seed=1)
    encoded = [encode_event({**normalise(e, now_ms), "ingested_at": now_ms}) for e in events]
    envelope = ENVELOPE_HEAD + b",".join(encoded) + ENVELOPE_TAIL
    codecs: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "gzip by zlib, level 1": (gzip_by(zlib, 1), gunzip_by(zlib)),
        "gzip by ISA-L, level 1": (gzip_by(isal_zlib, 1), gunzip_by(isal_zlib)),
        "zstd, level 1": (
            zstandard.ZstdCompressor(level=1).compress,
            zstandard.ZstdDecompressor().decompress,
        ),
    }
    figures: dict[str, Any] = {}
    for name, (pack, unpack) in codecs.items():
        packed = pack(envelope)
        if unpack(packed) != envelope:
            raise RuntimeError(f"{name} does not round-trip")
        figures[name] = {
            "ratio": round(len(envelope) / len(packed), 2),
            "write_us_per_event": per_event_us(partial(pack, envelope), count),
            "read_us_per_event": per_event_us(partial(unpack, packed), count),
        }
    text = base64.b64encode(gzip_by(isal_zlib, 1)(envelope))
    figures["base64"] = {
        "encode_us_per_event": per_event_us(lambda: base64.b64encode(text), count),
        "decode_us_per_event": per_event_us(lambda: base64.b64decode(text, validate=True), count),
    }
    return {"events": count, "envelope_bytes": len(envelope), "codecs": figures}


if __name__ == "__main__":
    sizes = [int(arg) for arg in sys.argv[1:3]]
    sys.stdout.write(orjson.dumps(main(*sizes), option=orjson.OPT_INDENT_2).decode() + "\n")
