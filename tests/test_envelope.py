"""The SQS envelope: packing, sizing and unpacking events, and refusing bodies that are not
ours: pure functions."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from logpipe.core.block import body_item, decode_body, make_blocks
from logpipe.core.block import stored_event as stored_block_event
from logpipe.core.envelope import EnvelopeError, envelope_size, pack_envelope, unpack_envelope
from logpipe.core.event import Event, encode_event, loads_exact, normalise

pytestmark = pytest.mark.unit

NOW_MS = 1_714_564_800_000  # 2024-05-01T12:00:00.000Z


def raw_event(**changes: object) -> dict[str, object]:
    """A valid input event with `changes`."""
    return {"service": "checkout", "level": "info", "message": "hello", **changes}


def envelope_events() -> list[Event]:
    return [
        normalise(raw_event(id="a", message="plain"), NOW_MS),
        normalise(raw_event(id="b", message="naïve ☃ 😀", trace_id="ABC"), NOW_MS),
        normalise(raw_event(id="c", attributes={"n": 1, "ok": True}), NOW_MS),
    ]


def test_pack_then_unpack_envelope_round_trips_the_events() -> None:
    events = envelope_events()

    body = pack_envelope([encode_event(e) for e in events])

    assert unpack_envelope(body) == events


@pytest.mark.parametrize(
    "count", [0, 1, 3], ids=["no-events", "one-event", "three-events-with-multibyte"]
)
def test_envelope_size_equals_the_packed_length_in_bytes(count: int) -> None:
    encoded = [encode_event(e) for e in envelope_events()[:count]]

    assert envelope_size(encoded) == len(pack_envelope(encoded).encode("utf-8"))


def test_noncharacters_in_a_message_are_escaped_in_the_body_and_come_back_unchanged() -> None:
    message = "before \uffff middle \ufffe after \ufffd"
    event = normalise(raw_event(id="nc", message=message), NOW_MS)

    body = pack_envelope([encode_event(event)])

    assert "\uffff" not in body
    assert "\ufffe" not in body
    assert "\\uffff" in body
    assert "\\ufffe" in body
    assert unpack_envelope(body)[0]["message"] == message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("not json", "body is not JSON"),
        ("", "body is not JSON"),
        ('{"v":2,"events":[]}', "not a version 1 logpipe envelope"),
        ('[{"v":1}]', "not a version 1 logpipe envelope"),
        ('{"v":1}', "envelope has no events list"),
        ('{"v":1,"events":{}}', "envelope has no events list"),
        (
            '{"v":1,"events":[{"service":"s","level":"info","message":"m","timestamp":1}]}',
            "not a valid logpipe event",
        ),
        ('{"v":1,"events":["text"]}', "not a valid logpipe event"),
        (
            '{"v":1,"events":[{"id":"a","service":"s","level":"info","message":"m",'
            '"timestamp":100000000000000}]}',
            "not a valid logpipe event",
        ),
        (
            '{"v":1,"events":[{"id":"a","service":"s","level":"info","message":"m",'
            '"timestamp":1,"attributes":{"k":[1]}}]}',
            "not a valid logpipe event",
        ),
    ],
    ids=[
        "not-json",
        "empty-body",
        "wrong-version",
        "not-an-object",
        "events-missing",
        "events-not-a-list",
        "event-missing-id",
        "event-not-an-object",
        "timestamp-past-2286",
        "nested-attribute",
    ],
)
def test_unpack_envelope_refuses_a_body_that_is_not_a_logpipe_envelope(
    body: str, fragment: str
) -> None:
    with pytest.raises(EnvelopeError, match=re.escape(fragment)):
        unpack_envelope(body)


def test_exact_numbers_go_through_the_envelope_unchanged() -> None:
    raw = loads_exact(
        '{"id":"n","service":"s","level":"info","message":"m",'
        '"attributes":{"big":-123456789012345678901234,"dec":1.10000000000000000001}}'
    )
    event = normalise(raw, NOW_MS)

    [back] = unpack_envelope(pack_envelope([encode_event(event)]))

    assert back["attributes"] == {
        "big": Decimal("-123456789012345678901234"),
        "dec": Decimal("1.10000000000000000001"),
    }
    [block], _ = make_blocks([back])
    [stored] = decode_body(body_item(block, shards=2, retention_days=30))
    assert stored["attributes"] == back["attributes"]
    assert stored_block_event(stored)["attributes"] == {
        "big": "-123456789012345678901234",
        "dec": "1.10000000000000000001",
    }
