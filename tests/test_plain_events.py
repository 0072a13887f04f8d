"""The processor's shortcut for events in the form `normalise` writes gives exactly what the
general checks give, and bounds the item's size it claims to bound: tables of events and
envelopes, each judged both ways (the shortcut switched off by monkeypatching)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import orjson
import pytest

from logpipe.core import envelope as envelope_module
from logpipe.core import event as event_module
from logpipe.core.envelope import EnvelopeError, pack_envelope, unpack_checked, unpack_events
from logpipe.core.event import (
    ASSIGNED_TIMESTAMP,
    MAX_EVENT_BYTES,
    MAX_MESSAGE_BYTES,
    UNKNOWN_SIZE,
    Event,
    dumps_exact,
    encode_event,
    event_problem,
    item_fixed_bytes,
    loads_exact,
    normalise,
    plain_size,
)

pytestmark = pytest.mark.unit

NOW_MS = 1_764_115_200_123
UNICODE = "Gr\u00fc\u00dfe \u6771\u4eac \U0001f680 \u2028"
SHARDS = (1, 8, 1000, 10**6)
RETENTION_DAYS = (1, 30, 36500)


def stored(message: Any = "request 1 done", **changes: Any) -> dict[str, Any]:
    """An event as an envelope carries it: normalised, encoded and decoded, then changed."""
    raw = {
        "id": "run1-00000001",
        "service": "checkout",
        "level": "info",
        "message": "m",
        "timestamp": NOW_MS,
        "attributes": {"http.status_code": 200, "duration_ms": 12, "region": "eu-west-1"},
    }
    event: dict[str, Any] = loads_exact(encode_event(normalise(raw, NOW_MS)))
    event["message"] = message
    for name, value in changes.items():
        if value is DROP:
            event.pop(name, None)
        else:
            event[name] = value
    return event


DROP = object()


def stored_event(**changes: Any) -> Event:
    return stored(**changes)  # type: ignore[return-value]


def events() -> dict[str, Any]:
    table: dict[str, Any] = {
        "bench": stored(),
        "bare": stored(ingested_at=DROP, attributes=DROP),
        "no attributes": stored(attributes=DROP),
        "empty attributes": stored(attributes={}),
        "traced": stored(trace_id="ab" * 16, span_id="cd" * 8),
        "trace only": stored(trace_id="0"),
        "assigned": stored(**{ASSIGNED_TIMESTAMP: True}),
        "assigned false": stored(**{ASSIGNED_TIMESTAMP: False}),
        "everything": stored(trace_id="ab" * 16, span_id="cd" * 8, **{ASSIGNED_TIMESTAMP: True}),
        "unicode": stored(
            UNICODE,
            id="Gr\u00fc\u00dfe-\u6771\u4eac-\U0001f680",
            attributes={UNICODE: UNICODE, "a": "\u00e9"},
        ),
        "escapes": stored('"\\\x00\x01\x1f\t\n' * 500),
        "message at the quick limit": stored("m" * (MAX_MESSAGE_BYTES // 4)),
        "message past the quick limit": stored("m" * (MAX_MESSAGE_BYTES // 4 + 1)),
        "message of 4-byte characters": stored("\U0001f680" * (MAX_MESSAGE_BYTES // 4)),
        "message too large": stored("m" * (MAX_MESSAGE_BYTES + 1)),
        "64 attributes": stored(attributes={f"k{i}": i for i in range(64)}),
        "65 attributes": stored(attributes={f"k{i}": i for i in range(65)}),
        "long key and value": stored(attributes={"k" * 128: "v" * 400}),
        "wide attributes": stored(attributes={f"{i:0128d}": "v" * 100 for i in range(64)}),
        "too wide": stored(attributes={f"k{i}": "v" * 600 for i in range(64)}),
        "escapes everywhere": stored(
            "\x01" * (MAX_MESSAGE_BYTES // 4),
            attributes={f"\x01\x02{i:c}": -1.0000000000000003e-130 for i in range(32, 96)},
        ),
        "floats": stored(attributes={"a": 1.5, "b": -0.0, "c": 1e-130, "d": 9.99e125}),
        "float nan": stored(attributes={"a": math.nan}),
        "float inf": stored(attributes={"a": -math.inf}),
        "float tiny": stored(attributes={"a": 1e-131}),
        "float huge": stored(attributes={"a": 1e126}),
        "ints": stored(attributes={"a": -(2**63), "b": 2**64 - 1, "c": 0, "t": True, "f": False}),
        "int below 64 bits": stored(attributes={"a": -(2**63) - 1}),
        "int past 64 bits": stored(attributes={"a": 2**64}),
        "int of 39 digits": stored(attributes={"a": 10**38}),
        "decimal": stored(attributes={"a": Decimal("1.2345678901234567890123")}),
        "decimal nan": stored(attributes={"a": Decimal("NaN")}),
        "attribute null": stored(attributes={"a": None}),
        "attribute list": stored(attributes={"a": [1]}),
        "attribute map": stored(attributes={"a": {"b": 1}}),
        "attribute key empty": stored(attributes={"": 1}),
        "attribute key 129": stored(attributes={"k" * 129: 1}),
        "attribute key not text": stored(attributes={1: "x"}),
        "attributes null": stored(attributes=None),
        "attributes list": stored(attributes=[1]),
        "id missing": stored(id=DROP),
        "id empty": stored(id=""),
        "id 128": stored(id="i" * 128),
        "id 129": stored(id="i" * 129),
        "id control": stored(id="a\x00b"),
        "id separator": stored(id="a\u2028b"),
        "id number": stored(id=7),
        "service upper": stored(service="Checkout"),
        "service bad": stored(service="a b"),
        "service long": stored(service="s" * 65),
        "service number": stored(service=7),
        "service missing": stored(service=DROP),
        "level alias": stored(level="warning"),
        "level upper": stored(level="INFO"),
        "level list": stored(level=[]),
        "level missing": stored(level=DROP),
        "message missing": stored(message=DROP),
        "message number": stored(message=5),
        "timestamp zero": stored(timestamp=0),
        "timestamp last": stored(timestamp=10**13 - 1),
        "timestamp past": stored(timestamp=10**13),
        "timestamp negative": stored(timestamp=-1),
        "timestamp float": stored(timestamp=1.5),
        "timestamp bool": stored(timestamp=True),
        "timestamp text": stored(timestamp="2024-05-01T12:00:00Z"),
        "ingested_at null": stored(ingested_at=None),
        "ingested_at bool": stored(ingested_at=True),
        "ingested_at float": stored(ingested_at=1.0),
        "ingested_at past": stored(ingested_at=10**13),
        "trace upper": stored(trace_id="AB"),
        "trace long": stored(trace_id="a" * 33),
        "trace empty": stored(trace_id=""),
        "trace null": stored(trace_id=None),
        "span not hex": stored(span_id="xyz"),
        "span long": stored(span_id="a" * 17),
        "assigned text": stored(**{ASSIGNED_TIMESTAMP: "yes"}),
        "assigned null": stored(**{ASSIGNED_TIMESTAMP: None}),
        "unknown field": stored(hostname="h1"),
        "unknown field nested deeply": stored(extra=orjson.loads("[" * 300 + "]" * 300)),
        "lone surrogate in message": stored("\ud800"),
        "lone surrogate in id": stored(id="\udfff"),
        "lone surrogate in attribute": stored(attributes={"a": "\ud800"}),
        "lone surrogate in attribute key": stored(attributes={"\ud800": "a"}),
        "not an object": ["id"],
        "text": "event",
        "null": None,
    }
    # Messages of about 1 and 2 KB: ASCII, 2-, 3- and 4-byte characters.
    for char in ("a", "\u00e9", "\u20ac", "\U0001f680"):
        width = len(char.encode())
        for target in (1000, 1023, 1024, 1025, 2048, 2049):
            count, rest = divmod(target, width)
            table[f"{char!a} to {target} bytes"] = stored(char * count + "a" * rest)
    return table


EVENTS = events()


@contextmanager
def general_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shortcut switched off: every event takes the general checks."""
    with monkeypatch.context() as patch:
        # Both modules' names: the envelope's unpacking calls the event's shortcut too.
        for module in (event_module, envelope_module):
            patch.setattr(module, "plain_size", lambda event, fixed: 0)
        yield


def general_problem(event: Any, monkeypatch: pytest.MonkeyPatch) -> str | None:
    with general_path(monkeypatch):
        return event_problem(event)


def has_float(event: Any) -> bool:
    attributes = event.get("attributes") if isinstance(event, dict) else None
    return isinstance(attributes, dict) and any(type(v) is float for v in attributes.values())


@pytest.mark.parametrize("name", list(EVENTS))
def test_the_shortcut_judges_as_the_general_checks(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = EVENTS[name]
    expected = general_problem(event, monkeypatch)
    assert event_problem(event) == expected
    for shards in SHARDS:
        for retention_days in RETENTION_DAYS:
            size = plain_size(event, item_fixed_bytes(shards, retention_days))
            if size == 0:
                continue
            assert expected is None
            assert (size < 0) == has_float(event)
            assert len(dumps_exact(event)) <= MAX_EVENT_BYTES


def test_the_table_reaches_both_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fixed = item_fixed_bytes(8, 30)
    plain = {name for name, event in EVENTS.items() if plain_size(event, fixed)}
    storable = {n for n, e in EVENTS.items() if general_problem(e, monkeypatch) is None}
    plain_ones = {"bench", "traced", "everything", "unicode", "escapes", "floats", "ints"}
    assert plain_ones | {"escapes everywhere"} <= plain
    # Storable, but left to the general checks: each reason the shortcut steps aside.
    assert {
        "id separator",
        "unknown field",
        "decimal",
        "message past the quick limit",
        "wide attributes",
        "ingested_at null",
    } <= storable - plain


def encodable(event: Any) -> bool:
    """Whether JSON can carry `event` (no integer beyond 64 bits as int, no NaN, no lone
    surrogate, not nested too deeply)."""
    try:
        orjson.loads(dumps_exact(event))
    except (TypeError, orjson.JSONEncodeError, orjson.JSONDecodeError):
        return False
    return True


def bodies() -> dict[str, str]:
    def envelope(*events: Any) -> str:
        return dumps_exact({"v": 1, "events": list(events)}).decode("utf-8", "surrogatepass")

    carried = {name: event for name, event in EVENTS.items() if encodable(event)}
    table = {f"alone: {name}": envelope(event) for name, event in carried.items()}
    table["all together"] = envelope(*carried.values())
    table["plain ones"] = pack_envelope([encode_event(stored_event(id=f"e{n}")) for n in range(30)])
    table["empty"] = envelope()
    table["extra envelope key"] = dumps_exact(
        {"v": 1, "events": [stored()], "reason": 0.10000000000000000555}
    ).decode()
    table["version as float"] = '{"v":1.0,"events":[]}'
    table["version long"] = '{"v":1.00000000000000000001,"events":[]}'
    table["version 2"] = '{"v":2,"events":[]}'
    table["events missing"] = '{"v":1}'
    table["events an object"] = '{"v":1,"events":{}}'
    table["not an object"] = "[1,2]"
    table["not JSON"] = "{"
    table["empty text"] = ""
    plain = encode_event(stored_event()).decode()
    for digits in ("12345678901234567890123456789", "0.1000000000000000055511151231257827"):
        with_long = plain.replace('"duration_ms":12', f'"duration_ms":{digits}')
        table[f"long number {digits[:6]}"] = f'{{"v":1,"events":[{plain},{with_long}]}}'
    table["long number in the id"] = f'{{"v":1,"events":[{plain.replace("run1", "1" * 20)}]}}'
    table["surrogate escape"] = (
        '{"v":1,"events":[' + plain.replace("request", "\\ud800") + "]}"
    )  # orjson refuses it: not JSON
    deep = "[" * 2000 + "]" * 2000
    table["long number and deep nesting"] = (
        f'{{"v":1,"events":[{plain}],"x":{deep},"n":12345678901234567890123}}'
    )
    return table


BODIES = bodies()


def general_unpack(
    body: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], list[tuple[object, str]]] | str:
    """What the processor did before the shortcut: `unpack_events`, then `event_problem`."""
    try:
        events = unpack_events(body)
    except EnvelopeError as exc:
        return str(exc)
    good = [e for e in events if general_problem(e, monkeypatch) is None]
    bad = [(e, p) for e in events if (p := general_problem(e, monkeypatch)) is not None]
    return good, bad


@pytest.mark.parametrize("name", list(BODIES))
def test_unpacking_with_the_shortcut_equals_the_general_path(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = BODIES[name]
    expected = general_unpack(body, monkeypatch)
    try:
        good, bounds, bad = unpack_checked(body, 8, 30)
    except EnvelopeError as exc:
        assert str(exc) == expected
        return
    assert not isinstance(expected, str), expected
    # Equal and of the same types: a Decimal is not 1.0, nor 1.0 a float that was rounded.
    assert dumps_exact(good) == dumps_exact(expected[0]) and good == expected[0]
    assert repr(bad) == repr(expected[1])
    assert len(bounds) == len(good)
    for event, bound in zip(good, bounds, strict=True):
        if bound == UNKNOWN_SIZE:
            assert not plain_size(event, item_fixed_bytes(8, 30))


def test_long_numbers_keep_their_digits() -> None:
    good, _, _ = unpack_checked(BODIES["long number 123456"], 8, 30)
    assert good[1]["attributes"]["duration_ms"] == Decimal("12345678901234567890123456789")
    good, _, _ = unpack_checked(BODIES["long number 0.1000"], 8, 30)
    assert good[1]["attributes"]["duration_ms"] == Decimal("0.1000000000000000055511151231257827")
