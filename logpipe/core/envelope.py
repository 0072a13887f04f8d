"""The SQS envelope: many encoded events in one message body, packed, sized, unpacked and
checked (with the dead-letter body for an event that can never be stored). No I/O.

A large envelope travels gzipped and in base64, flagged by the message attribute
`content-encoding: gzip`: logs compress three to five times, so a message of SQS's size holds
that many more events, which the processor then stores in blocks that many times larger.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, cast

import orjson
from isal import isal_zlib

from logpipe.core.event import (
    UNKNOWN_SIZE,
    Event,
    dumps_exact,
    event_problem,
    exact_document,
    item_fixed_bytes,
    loads_exact,
    plain_size,
    sqs_safe,
)
from logpipe.errors import LogpipeError

ENVELOPE_VERSION = 1


class EnvelopeError(LogpipeError):
    """An SQS message body that is not a logpipe envelope."""


ENVELOPE_HEAD = b'{"v":1,"events":['
ENVELOPE_TAIL = b"]}"
ENVELOPE_OVERHEAD = len(ENVELOPE_HEAD) + len(ENVELOPE_TAIL)
ENCODING_ATTRIBUTE = "content-encoding"
GZIP = "gzip"
# What SQS counts of the flag in a message's size: the attribute's name, type and value.
GZIP_FLAG_BYTES = len(ENCODING_ATTRIBUTE) + len("String") + len(GZIP)
# Smaller envelopes go as they are: compressing them would save little and cost CPU.
COMPRESS_FROM_BYTES = 32 * 1024
# ISA-L's deflate writes and reads gzip four and three times as fast as zlib's does, and at
# its level 1 shrinks logs a little more than zlib's level 1 (4.0x against 3.9x); level 3
# gains 4 % more for twice the time.
GZIP_LEVEL = 1
# An envelope is at most this once inflated; a gzip body that inflates past it is not ours.
MAX_INFLATED_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MessageBody:
    """An SQS message body: an envelope as it is, or gzipped and in base64."""

    text: str
    gzipped: bool = False

    @property
    def size(self) -> int:
        """Bytes SQS counts for the message: its body and its attributes."""
        return len(self.text.encode()) + (GZIP_FLAG_BYTES if self.gzipped else 0)

    @property
    def attributes(self) -> dict[str, Any]:
        """The message attributes of a SendMessageBatch entry."""
        if not self.gzipped:
            return {}
        return {ENCODING_ATTRIBUTE: {"DataType": "String", "StringValue": GZIP}}


def pack_envelope(encoded_events: list[bytes]) -> str:
    """One SQS message body holding many events encoded by `encode_event`."""
    if not encoded_events:
        return (ENVELOPE_HEAD + ENVELOPE_TAIL).decode("utf-8")
    # Head and tail joined to the end events (small copies): the body is copied once.
    parts = list(encoded_events)
    parts[0] = ENVELOPE_HEAD + parts[0]
    parts[-1] = parts[-1] + ENVELOPE_TAIL
    return b",".join(parts).decode("utf-8")


def pack_message(encoded_events: list[bytes]) -> MessageBody:
    """The SQS body of an envelope of `encoded_events`: gzipped from COMPRESS_FROM_BYTES on,
    unless gzip and base64 make it no smaller (events already compressed or random)."""
    envelope = ENVELOPE_HEAD + b",".join(encoded_events) + ENVELOPE_TAIL
    if len(envelope) < COMPRESS_FROM_BYTES:
        return MessageBody(envelope.decode("utf-8"))
    packer = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)  # 31: gzip framing
    text = base64.b64encode(packer.compress(envelope) + packer.flush())
    if len(text) + GZIP_FLAG_BYTES >= len(envelope):
        return MessageBody(envelope.decode("utf-8"))
    return MessageBody(text.decode("ascii"), gzipped=True)


# binascii.Error and UnicodeDecodeError are ValueErrors; isal's stub types its error class
# as an instance.
_INFLATE_ERRORS = (ValueError, cast(type[Exception], isal_zlib.error))
GZIP_MAGIC = b"\x1f\x8b"


def inflate(body: str) -> str:
    """A gzip+base64 body as text, inflated to at most MAX_INFLATED_BYTES; else EnvelopeError."""
    try:
        packed = base64.b64decode(body, validate=True)
        if not packed.startswith(GZIP_MAGIC):  # ISA-L would wait for a whole header first
            raise ValueError("not gzip")
        inflater = isal_zlib.decompressobj(wbits=31)  # gzip framing
        data = inflater.decompress(packed, MAX_INFLATED_BYTES)
        complete, too_big = inflater.eof, bool(inflater.unconsumed_tail)
        text = data.decode("utf-8")
    except _INFLATE_ERRORS:
        raise EnvelopeError("body is flagged gzip but does not decode") from None
    if too_big:
        raise EnvelopeError(f"body is flagged gzip and inflates past {MAX_INFLATED_BYTES} bytes")
    if not complete:
        raise EnvelopeError("body is flagged gzip but is truncated")
    return text


def message_body(message: dict[str, Any]) -> str:
    """The envelope text of an SQS message, inflating a gzip-flagged body."""
    body = message.get("Body", "")
    encoding = message.get("MessageAttributes", {}).get(ENCODING_ATTRIBUTE, {})
    if encoding.get("StringValue") == GZIP:
        return inflate(body)
    return str(body)


def envelope_size(encoded_events: list[bytes]) -> int:
    """Bytes of the envelope `pack_envelope` would build."""
    return ENVELOPE_OVERHEAD + sum(len(e) for e in encoded_events) + max(len(encoded_events) - 1, 0)


def unpack_envelope(body: str) -> list[Event]:
    """The events of one SQS message; EnvelopeError if it is not ours or any event is bad."""
    events = unpack_events(body)
    for event in events:
        if event_problem(event) is not None:
            raise EnvelopeError("envelope holds an event that is not a valid logpipe event")
    return events


def unpack_events(body: str) -> list[Any]:
    """The events list of an envelope, each unchecked (see `event_problem`); EnvelopeError
    if the body is not a version 1 envelope at all."""
    try:
        doc = loads_exact(body)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"body is not JSON: {exc}") from None
    return _envelope_events(doc)


def dead_letter_body(event: object, reason: str) -> str:
    """The envelope that carries one event that can never be stored, and why, to the DLQ."""
    try:
        data = dumps_exact({"v": ENVELOPE_VERSION, "events": [event], "reason": reason})
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: only the reason goes
        data = dumps_exact({"v": ENVELOPE_VERSION, "events": [], "reason": reason})
    return sqs_safe(data).decode()


_ENVELOPE_KEYS = frozenset({"v", "events"})


def unpack_checked(
    body: str, shards: int, retention_days: int
) -> tuple[list[Event], list[int], list[tuple[object, str]]]:
    """An envelope's storable events, a bound on each one's `item_size` (UNKNOWN_SIZE where
    none is known), and each other event with why it cannot be stored: what `unpack_events`
    and `event_problem` answer, with one parse and one walk of each usual event.

    The long-number scan of `loads_exact` is needed only where orjson may have rounded: it
    reads every number it cannot hold exactly (a fraction, an exponent, an integer beyond 64
    bits) as a float. When the envelope and each of its events are plain and hold no float,
    orjson's document is the exact one.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"body is not JSON: {exc}") from None
    fixed = item_fixed_bytes(shards, retention_days)
    events: list[Any] = []
    sizes: list[int] = []
    if _plain_envelope(doc):
        events = doc["events"]
        sizes = [plain_size(event, fixed) for event in events]
    if sizes and min(sizes) > 0:  # the usual envelope: every event plain, no float read
        return events, sizes, []
    try:
        exact = exact_document(body, doc)
    except orjson.JSONDecodeError as exc:  # nested too deeply for the exact parse
        raise EnvelopeError(f"body is not JSON: {exc}") from None
    if exact is not doc or not sizes:
        events = _envelope_events(exact)
        sizes = [plain_size(event, fixed) for event in events]
    good: list[Event] = []
    bounds: list[int] = []
    bad: list[tuple[object, str]] = []
    for event, size in zip(events, sizes, strict=True):
        if size:
            good.append(event)
            bounds.append(abs(size))
            continue
        problem = event_problem(event)
        if problem is None:
            good.append(event)
            bounds.append(UNKNOWN_SIZE)
        else:
            bad.append((event, problem))
    return good, bounds, bad


def _plain_envelope(doc: object) -> bool:
    """An envelope of version 1 and its events list only, as `pack_envelope` writes it."""
    return (
        type(doc) is dict
        and doc.keys() == _ENVELOPE_KEYS
        and type(doc["v"]) is int
        and doc["v"] == ENVELOPE_VERSION
        and type(doc["events"]) is list
    )


def _envelope_events(doc: object) -> list[Any]:
    """The events list of a decoded envelope; EnvelopeError if it is not a version 1 one."""
    if not isinstance(doc, dict) or doc.get("v") != ENVELOPE_VERSION:
        raise EnvelopeError("body is not a version 1 logpipe envelope")
    events = doc.get("events")
    if not isinstance(events, list):
        raise EnvelopeError("envelope has no events list")
    return events
