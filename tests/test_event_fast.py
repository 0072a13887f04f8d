"""The ingestor's shortcuts give exactly what the general paths give: tables of cases, no I/O.

`normalise` skips `fold` and the attribute pass for an event they would leave unchanged;
each case here is normalised both ways (the shortcut switched off by monkeypatching) and
the encoded events, or the refusals, must be the same.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import orjson
import pytest

from logpipe.core import event as event_module
from logpipe.core.event import encode_event, loads_exact, normalise
from logpipe.errors import EventError

pytestmark = pytest.mark.unit

NOW_MS = 1_714_564_800_000
BASE: dict[str, Any] = {
    "id": "ev-0001",
    "service": "checkout",
    "level": "info",
    "timestamp": NOW_MS - 5,
    "message": "request 1 done",
    "attributes": {"http.status_code": 200, "duration_ms": 12, "region": "eu-west-1"},
}


def _with(**changes: Any) -> dict[str, Any]:
    event = {**BASE, **changes}
    return {k: v for k, v in event.items() if v is not _DROP}


_DROP = object()
KEY_129 = "k" * 129
KEY_128 = "k" * 128

CASES: list[tuple[str, Any]] = [
    ("bench-like", BASE),
    ("minimal", {"service": "s", "message": "m"}),
    ("no-attributes", _with(attributes=_DROP)),
    ("attributes-null", _with(attributes=None)),
    ("attributes-empty", _with(attributes={})),
    ("attributes-list", _with(attributes=[1, 2])),
    ("attributes-text", _with(attributes="x")),
    ("attributes-64", _with(attributes={f"a{i}": i for i in range(64)})),
    ("attributes-65", _with(attributes={f"a{i}": i for i in range(65)})),
    ("key-empty", _with(attributes={"": 1})),
    ("key-128", _with(attributes={KEY_128: 1})),
    ("key-129", _with(attributes={KEY_129: 1})),
    ("nested", _with(attributes={"http": {"status": 200, "path": "/x"}, "a": 1})),
    ("nested-empty", _with(attributes={"http": {}, "a": 1})),
    ("list-value", _with(attributes={"tags": ["a", "b"]})),
    ("null-value", _with(attributes={"gone": None, "a": 1})),
    ("bools", _with(attributes={"t": True, "f": False})),
    ("int64-min", _with(attributes={"n": -(2**63)})),
    ("below-int64", _with(attributes={"n": -(2**63) - 1})),
    ("int64-max", _with(attributes={"n": 2**63 - 1})),
    ("uint64-max", _with(attributes={"n": 2**64 - 1})),
    ("uint64-past", _with(attributes={"n": 2**64})),
    ("38-digits", _with(attributes={"n": 10**38 - 1})),
    ("39-digits", _with(attributes={"n": 10**38})),
    ("floats", _with(attributes={"a": 1.5, "b": -2.25, "c": 0.0, "d": -0.0})),
    ("float-tiny", _with(attributes={"a": 1e-131})),
    ("float-huge", _with(attributes={"a": 1e126})),
    ("float-almost-huge", _with(attributes={"a": 9.99e125})),
    ("float-nan", _with(attributes={"a": math.nan})),
    ("float-inf", _with(attributes={"a": -math.inf})),
    ("decimal", _with(attributes={"a": Decimal("1.2345678901234567890123")})),
    ("decimal-nan", _with(attributes={"a": Decimal("NaN")})),
    ("object-value", _with(attributes={"a": object()})),
    ("int-key", _with(attributes={1: "x"})),
    ("unicode", _with(message="caf\u00e9 \u2603 \U0001f600", attributes={"\u00e9": "\u2603"})),
    ("noncharacters", _with(message="a\ufffeb\uffff")),
    ("level-missing", _with(level=_DROP)),
    ("level-null", _with(level=None)),
    ("level-upper", _with(level="WARN")),
    ("level-warning", _with(level="warning")),
    ("level-alias-name", _with(level="notice")),
    ("level-pino", _with(level=30)),
    ("level-bool", _with(level=True)),
    ("level-unknown", _with(level="loud")),
    ("service-upper", _with(service="Checkout")),
    ("service-missing", _with(service=_DROP)),
    ("service-null", _with(service=None)),
    ("service-number", _with(service=5)),
    ("service-bad", _with(service="a b")),
    ("message-missing", _with(message=_DROP)),
    ("message-number", _with(message=5)),
    ("message-large", _with(message="x" * (16 * 1024 + 1))),
    ("id-missing-timestamp-given", _with(id=_DROP)),
    ("id-given-timestamp-missing", _with(timestamp=_DROP)),
    ("id-empty", _with(id="")),
    ("id-control", _with(id="a\nb")),
    ("id-number", _with(id=5)),
    ("timestamp-text", _with(timestamp="2024-05-01T12:00:00.5Z")),
    ("timestamp-naive", _with(timestamp="2024-05-01T12:00:00")),
    ("timestamp-bool", _with(timestamp=True)),
    ("timestamp-float", _with(timestamp=1.7e12)),
    ("timestamp-negative", _with(timestamp=-1)),
    ("trace-and-span", _with(trace_id="ABCDEF0123456789abcdef0123456789", span_id="0123ABCD")),
    ("trace-bad", _with(trace_id="xyz")),
    ("span-long", _with(span_id="0" * 17)),
    ("alias-msg", {**_with(message=_DROP), "msg": "from msg"}),
    ("alias-time", {**_with(timestamp=_DROP), "time": 1_714_564_800.5}),
    ("alias-severity", {**_with(level=_DROP), "severity": "error"}),
    ("extra-fields", {**BASE, "hostname": "h1", "pid": 7}),
    ("extra-clash", {**BASE, "region": "us-east-1"}),
    ("trace-33", _with(trace_id="a" * 33)),
    ("span-not-hex", _with(span_id="0123xyz")),
    ("trace-empty", _with(trace_id="")),
    ("span-number", _with(span_id=12)),
    ("id-128", _with(id="i" * 128)),
    ("id-129", _with(id="i" * 129)),
    ("id-line-separator", _with(id="a\u2028b")),
    ("id-unicode", _with(id="\u00e9v\u00e9nement-1")),
    ("timestamp-zero", _with(timestamp=0)),
    ("timestamp-last", _with(timestamp=10**13 - 1)),
    ("timestamp-past-last", _with(timestamp=10**13)),
    ("timestamp-big", _with(timestamp=2**70)),
    ("timestamp-null-id-null", _with(timestamp=None, id=None)),
    ("message-4096-wide", _with(message="\U0001f600" * 4096)),
    ("message-4097-ascii", _with(message="x" * 4097)),
    ("message-empty", _with(message="")),
    ("level-fatal", _with(level="fatal")),
    ("level-empty", _with(level="")),
    ("service-new", _with(service="first-seen-here")),
    ("service-dotted", _with(service="a.b_c-9")),
    ("event-list", [BASE]),
    ("event-text", "x"),
]


def _outcome(raw: Any, default_service: str | None) -> bytes | str:
    try:
        event = normalise(raw, NOW_MS, default_service)
    except EventError as exc:
        return f"{exc.field}: {exc}"
    if raw.get("id") is None:
        event["id"] = "generated"  # a new random id each time
    try:
        return encode_event(event)
    except EventError as exc:
        return f"encode {exc.field}: {exc}"


@pytest.mark.parametrize("default_service", [None, "fallback"])
@pytest.mark.parametrize(("name", "raw"), CASES, ids=[name for name, _ in CASES])
def test_normalise_shortcut_equals_the_general_path(
    name: str, raw: Any, default_service: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _outcome(raw, default_service)  # a valid service is known from here on
    one_pass = _outcome(raw, default_service)
    monkeypatch.setattr(event_module, "_plain_event", lambda raw, now_ms: None)
    folded = _outcome(raw, default_service)
    monkeypatch.setattr(event_module, "_folded_already", lambda raw: False)
    general = _outcome(raw, default_service)
    assert first == one_pass == folded == general


@pytest.mark.parametrize(("name", "raw"), CASES, ids=[name for name, _ in CASES])
def test_the_one_pass_event_is_the_general_one_or_none(name: str, raw: Any) -> None:
    """`_plain_event` gives the general path's event (same fields, same order) or declines."""
    if not isinstance(raw, dict):
        return
    try:
        general = normalise(raw, NOW_MS)
    except EventError:
        general = None
    fast = event_module._plain_event(raw, NOW_MS)
    if fast is None:
        return
    assert general is not None
    if "id" not in raw or raw["id"] is None:
        fast["id"] = general["id"] = "generated"
    assert list(fast.items()) == list(general.items())


def test_the_one_pass_path_takes_schema_events_of_known_services() -> None:
    normalise(BASE, NOW_MS)
    assert event_module._plain_event(dict(BASE), NOW_MS) is not None
    traced = _with(trace_id="ABCDEF0123456789abcdef0123456789", span_id="0123ABCD")
    assert event_module._plain_event(traced, NOW_MS) is not None
    assert event_module._plain_event(_with(id=_DROP, timestamp=_DROP), NOW_MS) is not None
    assert event_module._plain_event(_with(service="never-seen-before-x"), NOW_MS) is None
    assert event_module._plain_event(_with(level="WARN"), NOW_MS) is None
    assert event_module._plain_event({**BASE, "msg": "x"}, NOW_MS) is None


def test_the_shortcut_is_taken_for_bench_like_events_only() -> None:
    assert event_module._folded_already(BASE)
    assert event_module._folded_already({"service": "s", "message": "m", "attributes": {"a": 1.5}})
    assert not event_module._folded_already({**BASE, "level": "WARN"})
    assert not event_module._folded_already({**BASE, "attributes": {"n": 2**64}})
    assert not event_module._folded_already({k: v for k, v in BASE.items() if k != "service"})


def test_parsed_bodies_with_long_numbers_normalise_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    body = (
        b'[{"service":"s","message":"m","attributes":{"big":123456789012345678901234567890,'
        b'"exact":0.1000000000000000055511151231257827,"id":18446744073709551615}}]'
    )
    raw = {"id": "x", **loads_exact(body)[0]}
    shortcut = encode_event(normalise(raw, NOW_MS))
    monkeypatch.setattr(event_module, "_folded_already", lambda raw: False)
    general = encode_event(normalise(raw, NOW_MS))
    assert shortcut == general
    assert orjson.loads(shortcut)["attributes"]["id"] == 2**64 - 1
