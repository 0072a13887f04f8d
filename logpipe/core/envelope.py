"""The SQS envelope: many encoded events in one message body, packed, sized, unpacked and
checked (with the dead-letter body for an event that can never be stored). No I/O."""

from __future__ import annotations

from typing import Any

import orjson

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


def pack_envelope(encoded_events: list[bytes]) -> str:
    """One SQS message body holding many events encoded by `encode_event`."""
    if not encoded_events:
        return (ENVELOPE_HEAD + ENVELOPE_TAIL).decode("utf-8")
    # Head and tail joined to the end events (small copies): the body is copied once.
    parts = list(encoded_events)
    parts[0] = ENVELOPE_HEAD + parts[0]
    parts[-1] = parts[-1] + ENVELOPE_TAIL
    return b",".join(parts).decode("utf-8")


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
