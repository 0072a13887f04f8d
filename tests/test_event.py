"""Event normalisation, ids, encoding, exact JSON and the checks of a stored event: pure
functions."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any, cast

import orjson
import pytest

from logpipe.core import limits
from logpipe.core.block import block_of, make_blocks
from logpipe.core.event import (
    ASSIGNED_TIMESTAMP,
    MAX_EVENT_BYTES,
    MAX_MESSAGE_BYTES,
    Event,
    encode_event,
    event_problem,
    loads_exact,
    new_id,
    normalise,
)
from logpipe.core.timefmt import hour
from logpipe.errors import EventError

pytestmark = pytest.mark.unit

NOW_MS = 1_714_564_800_000  # 2024-05-01T12:00:00.000Z
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MISSING = object()


def raw_event(**changes: object) -> dict[str, object]:
    """A valid input event; a change to MISSING removes the field."""
    raw: dict[str, object] = {"service": "checkout", "level": "info", "message": "hello"}
    for name, value in changes.items():
        if value is MISSING:
            raw.pop(name, None)
        else:
            raw[name] = value
    return raw


def stored_event(**changes: Any) -> Event:
    """An event as `normalise` returns it, with a fixed id and timestamp."""
    event: dict[str, Any] = {
        "id": "ev-1",
        "service": "checkout",
        "level": "info",
        "message": "hello",
        "timestamp": NOW_MS + 789,
        "ingested_at": NOW_MS + 1000,
    }
    event.update(changes)
    return cast(Event, event)


def id_ms(event_id: str) -> int:
    """The milliseconds encoded in the first 10 characters (50 bits) of a generated id."""
    value = 0
    for char in event_id[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


# --- normalise: good values ------------------------------------------------------------------


def test_a_full_event_is_normalised_to_the_envelope_form() -> None:
    raw = {
        "id": "Order-42",
        "service": "Checkout",
        "level": "WARNING",
        "message": "card declined",
        "timestamp": "2024-05-01T14:00:00.250+02:00",
        "trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736",
        "span_id": "00F067AA0BA902B7",
        "attributes": {"region": "eu-west-1", "attempt": 2, "ratio": 0.5, "retry": True},
    }

    assert normalise(raw, NOW_MS) == {
        "id": "Order-42",
        "service": "checkout",
        "level": "warn",
        "message": "card declined",
        "timestamp": NOW_MS + 250,
        "ingested_at": NOW_MS,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "attributes": {"region": "eu-west-1", "attempt": 2, "ratio": 0.5, "retry": True},
    }


def test_absent_optional_fields_are_not_added() -> None:
    event = normalise(raw_event(), NOW_MS)

    assert event.keys() == {"id", "service", "level", "message", "timestamp", "ingested_at"}


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("checkout", "checkout"),
        ("Checkout", "checkout"),
        ("API-Gateway.v2_EU", "api-gateway.v2_eu"),
        ("a", "a"),
        ("s" * 64, "s" * 64),
    ],
    ids=["lower", "capitalised", "mixed-with-punctuation", "one-char", "64-chars"],
)
def test_service_is_lower_cased(service: str, expected: str) -> None:
    assert normalise(raw_event(service=service), NOW_MS)["service"] == expected


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("trace", "trace"),
        ("debug", "debug"),
        ("info", "info"),
        ("warn", "warn"),
        ("error", "error"),
        ("fatal", "fatal"),
        ("INFO", "info"),
        ("Error", "error"),
        ("warning", "warn"),
        ("WARNING", "warn"),
        ("Warn", "warn"),
    ],
    ids=[
        "trace",
        "debug",
        "info",
        "warn",
        "error",
        "fatal",
        "upper-case",
        "capitalised",
        "warning-alias",
        "warning-alias-upper",
        "warn-capitalised",
    ],
)
def test_level_is_case_insensitive_and_normalised(level: str, expected: str) -> None:
    assert normalise(raw_event(level=level), NOW_MS)["level"] == expected


@pytest.mark.parametrize(
    ("timestamp", "expected_ms"),
    [
        ("2024-05-01T12:00:00Z", NOW_MS),
        ("2024-05-01T12:00:00.123Z", NOW_MS + 123),
        ("2024-05-01T12:00:00.123456789Z", NOW_MS + 123),
        ("2024-05-01T14:00:00+02:00", NOW_MS),
        ("2024-05-01T07:30:00.5-04:30", NOW_MS + 500),
        ("2024-05-01T12:00:00+00:00", NOW_MS),
        ("2024-05-01t12:00:00z", NOW_MS),
        ("1970-01-01T00:00:00Z", 0),
        ("1987-02-07T00:30:25.879Z", 539_656_225_879),
        (NOW_MS + 123, NOW_MS + 123),
        (0, 0),
        (10**13 - 1, 10**13 - 1),
    ],
    ids=[
        "rfc3339-z",
        "rfc3339-z-ms",
        "rfc3339-z-ns-truncated",
        "rfc3339-positive-offset",
        "rfc3339-negative-half-hour-offset-fraction",
        "rfc3339-zero-offset",
        "rfc3339-lower-case-t-and-z",
        "rfc3339-epoch",
        "rfc3339-ms-not-lost-to-float-rounding",
        "epoch-ms",
        "epoch-ms-zero",
        "epoch-ms-last-valid",
    ],
)
def test_timestamp_is_stored_as_epoch_ms(timestamp: object, expected_ms: int) -> None:
    assert normalise(raw_event(timestamp=timestamp), NOW_MS)["timestamp"] == expected_ms


def test_missing_timestamp_defaults_to_ingest_time() -> None:
    event = normalise(raw_event(), NOW_MS)

    assert event["timestamp"] == NOW_MS
    assert event["ingested_at"] == NOW_MS


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("trace_id", "4BF92F3577B34DA6A3CE929D0E0E4736", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("trace_id", "abc", "abc"),
        ("span_id", "00F067AA0BA902B7", "00f067aa0ba902b7"),
        ("span_id", "0", "0"),
    ],
    ids=["trace-id-upper-32", "trace-id-short", "span-id-upper-16", "span-id-one-digit"],
)
def test_trace_and_span_ids_are_lower_cased(field: str, value: str, expected: str) -> None:
    assert dict(normalise(raw_event(**{field: value}), NOW_MS))[field] == expected


@pytest.mark.parametrize(
    "event_id",
    ["Order-42", "x", "i" * 128, "01HX3Z/ünïcode id#1"],
    ids=["plain", "one-char", "128-chars", "unicode-and-punctuation"],
)
def test_client_id_is_kept_unchanged(event_id: str) -> None:
    assert normalise(raw_event(id=event_id), NOW_MS)["id"] == event_id


def test_missing_id_is_generated_from_ingest_time() -> None:
    event = normalise(raw_event(), NOW_MS)

    assert len(event["id"]) == 26
    assert id_ms(event["id"]) == NOW_MS


@pytest.mark.parametrize(
    "message",
    [
        "",
        "x" * MAX_MESSAGE_BYTES,
        "€" * 5461 + "a",
        "€" * 5461,
        "😀" * 4096,
    ],
    ids=[
        "empty",
        "ascii-at-limit",
        "multibyte-at-limit-16384-bytes",
        "multibyte-just-under-16383-bytes",
        "four-byte-chars-at-limit",
    ],
)
def test_message_up_to_16_kib_in_utf8_is_kept(message: str) -> None:
    assert normalise(raw_event(message=message), NOW_MS)["message"] == message


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {"region": "eu", "attempt": 3, "ratio": 0.25, "cached": False},
        {f"k{n}": n for n in range(64)},
        {"big": 10**38 - 1, "negative": -(10**38 - 1)},
        {"tiny": 1e-130, "large": 1e125, "zero": 0.0},
        {"k" * 128: "v"},
    ],
    ids=[
        "empty",
        "string-int-float-bool",
        "64-keys",
        "38-digit-integers",
        "floats-at-dynamodb-range-edges",
        "128-char-key",
    ],
)
def test_flat_attributes_are_kept(attributes: dict[str, object]) -> None:
    assert normalise(raw_event(attributes=attributes), NOW_MS)["attributes"] == attributes


# --- normalise: bad values -------------------------------------------------------------------

BAD_EVENTS: list[tuple[object, str, str]] = [
    # (raw event, EventError.field, fragment of the message)
    (raw_event(service=MISSING), "service", "is required"),
    (raw_event(message=MISSING), "message", "is required"),
    (raw_event(service=42), "service", "must be a string"),
    (raw_event(level=3), "level", "must be one of trace, debug, info, warn, error, fatal"),
    (raw_event(message=["hello"]), "message", "must be a string"),
    (raw_event(service="check out"), "service", "1-64 characters of a-z 0-9 . _ -"),
    (raw_event(service="svc/a"), "service", "1-64 characters of a-z 0-9 . _ -"),
    (raw_event(service=""), "service", "1-64 characters"),
    (raw_event(service="s" * 65), "service", "1-64 characters"),
    (raw_event(level="loud"), "level", "must be one of trace, debug, info, warn, error, fatal"),
    (raw_event(level=""), "level", "must be one of"),
    (raw_event(message="x" * (MAX_MESSAGE_BYTES + 1)), "message", "is 16385 bytes; the limit"),
    (raw_event(message="€" * 5461 + "ab"), "message", "is 16385 bytes; the limit is 16384"),
    (raw_event(message="😀" * 4096 + "a"), "message", "is 16385 bytes; the limit is 16384"),
    (raw_event(timestamp="2024-05-01T12:00:00"), "timestamp", "needs a time zone offset"),
    (raw_event(timestamp="yesterday"), "timestamp", "is not an RFC 3339 date-time"),
    (raw_event(timestamp=""), "timestamp", "is not an RFC 3339 date-time"),
    (raw_event(timestamp=True), "timestamp", "RFC 3339 string or epoch milliseconds"),
    (raw_event(timestamp=[NOW_MS]), "timestamp", "RFC 3339 string or epoch milliseconds"),
    (raw_event(timestamp=float("nan")), "timestamp", "finite number of epoch milliseconds"),
    (raw_event(timestamp=10**13), "timestamp", "must lie between 1970 and 2286"),
    (raw_event(timestamp=-1), "timestamp", "must lie between 1970 and 2286"),
    (raw_event(timestamp="2300-01-01T00:00:00Z"), "timestamp", "between 1970 and 2286"),
    (raw_event(timestamp="1969-12-31T23:59:59Z"), "timestamp", "between 1970 and 2286"),
    (raw_event(id=""), "id", "must be a string of 1-128 characters"),
    (raw_event(id="i" * 129), "id", "must be a string of 1-128 characters"),
    (raw_event(id=42), "id", "must be a string of 1-128 characters"),
    (raw_event(id="ab\ncd"), "id", "must not contain control characters"),
    (raw_event(id="ab\x00cd"), "id", "must not contain control characters"),
    (raw_event(trace_id="xyz"), "trace_id", "must contain only hex digits"),
    (raw_event(trace_id="0" * 33), "trace_id", "hex string of 1-32 characters"),
    (raw_event(trace_id=123), "trace_id", "hex string of 1-32 characters"),
    (raw_event(span_id="a" * 17), "span_id", "hex string of 1-16 characters"),
    (raw_event(span_id=""), "span_id", "hex string of 1-16 characters"),
    (raw_event(attributes="region=eu"), "attributes", "must be a flat JSON object"),
    (raw_event(attributes=["eu"]), "attributes", "must be a flat JSON object"),
    (raw_event(attributes={f"k{n}": n for n in range(65)}), "attributes", "more than 64 keys"),
    (raw_event(attributes={"": 1}), "attributes", "keys must be 1-128 characters"),
    (raw_event(attributes={"k" * 129: 1}), "attributes", "keys must be 1-128 characters"),
    (raw_event(attributes={"n": 10**38}), "attributes.n", "integer has more than 38 digits"),
    (raw_event(attributes={"n": -(10**38)}), "attributes.n", "more than 38 digits"),
    (raw_event(attributes={"x": 1e200}), "attributes.x", "number is out of range"),
    (raw_event(attributes={"x": 1e126}), "attributes.x", "number is out of range"),
    (raw_event(attributes={"x": 1e-131}), "attributes.x", "number is out of range"),
    (raw_event(attributes={"x": float("inf")}), "attributes.x", "number is out of range"),
    ([raw_event()], "", "event must be a JSON object"),
    ("hello", "", "event must be a JSON object"),
    (None, "", "event must be a JSON object"),
]
BAD_EVENT_IDS = [
    "service-missing",
    "message-missing",
    "service-not-string",
    "level-not-string",
    "message-not-string",
    "service-with-space",
    "service-with-slash",
    "service-empty",
    "service-65-chars",
    "level-unknown",
    "level-empty",
    "message-ascii-one-byte-over",
    "message-multibyte-one-byte-over",
    "message-four-byte-chars-one-byte-over",
    "timestamp-naive",
    "timestamp-unparsable",
    "timestamp-empty-string",
    "timestamp-bool",
    "timestamp-list",
    "timestamp-nan",
    "timestamp-epoch-ms-too-large",
    "timestamp-epoch-ms-negative",
    "timestamp-rfc3339-after-2286",
    "timestamp-rfc3339-before-1970",
    "id-empty",
    "id-129-chars",
    "id-not-string",
    "id-newline",
    "id-nul",
    "trace-id-not-hex",
    "trace-id-33-chars",
    "trace-id-not-string",
    "span-id-17-chars",
    "span-id-empty",
    "attributes-string",
    "attributes-list",
    "attributes-65-keys",
    "attributes-empty-key",
    "attributes-129-char-key",
    "attributes-39-digit-integer",
    "attributes-39-digit-negative-integer",
    "attributes-float-1e200",
    "attributes-float-1e126-above-dynamodb-max",
    "attributes-float-below-dynamodb-min",
    "attributes-float-inf",
    "event-is-array",
    "event-is-string",
    "event-is-null",
]


@pytest.mark.parametrize(("raw", "field", "fragment"), BAD_EVENTS, ids=BAD_EVENT_IDS)
def test_bad_event_is_refused_naming_field_and_problem(
    raw: object, field: str, fragment: str
) -> None:
    with pytest.raises(EventError) as caught:
        normalise(raw, NOW_MS)

    assert caught.value.field == field
    assert str(caught.value).startswith(field)
    assert fragment in str(caught.value)


# --- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "now_ms", [0, 1, NOW_MS, 10**13 - 1], ids=["epoch", "one-ms", "2024", "year-2286"]
)
def test_new_id_is_26_chars_of_crockford_base32(now_ms: int) -> None:
    event_id = new_id(now_ms)

    assert len(event_id) == 26
    assert set(event_id) <= set(CROCKFORD)
    assert id_ms(event_id) == now_ms


def test_new_ids_made_at_later_milliseconds_sort_after_earlier_ones() -> None:
    moments = [0, 1, 31, 32, 999, 1000, NOW_MS, NOW_MS + 1, NOW_MS + 1000, 10**13 - 1]

    for _ in range(50):
        ids = [new_id(ms) for ms in moments]
        assert sorted(ids) == ids


def test_new_ids_made_in_the_same_millisecond_differ() -> None:
    assert len({new_id(NOW_MS) for _ in range(1000)}) == 1000


# --- encode_event ----------------------------------------------------------------------------


def padded_event(encoded_size: int) -> Event:
    """A normalised event whose compact JSON is exactly `encoded_size` bytes."""
    event = stored_event(attributes={"pad": ""})
    event["attributes"]["pad"] = "x" * (encoded_size - len(orjson.dumps(event)))
    return event


def test_encode_event_gives_compact_json_of_the_event() -> None:
    event = stored_event(attributes={"region": "eu", "attempt": 2})

    data = encode_event(event)

    assert orjson.loads(data) == event
    assert b" " not in data


def test_encode_event_accepts_an_event_of_exactly_max_event_bytes() -> None:
    assert len(encode_event(padded_event(MAX_EVENT_BYTES))) == MAX_EVENT_BYTES


def test_encode_event_refuses_an_event_over_max_event_bytes() -> None:
    with pytest.raises(EventError) as caught:
        encode_event(padded_event(MAX_EVENT_BYTES + 1))

    assert caught.value.field == ""
    assert f"event is {MAX_EVENT_BYTES + 1} bytes encoded" in str(caught.value)
    assert f"the limit is {MAX_EVENT_BYTES}" in str(caught.value)


def test_a_valid_event_with_64_large_attributes_is_refused_on_encoding() -> None:
    raw = raw_event(
        message="m" * MAX_MESSAGE_BYTES, attributes={f"k{n}": "v" * 300 for n in range(64)}
    )

    with pytest.raises(EventError, match="bytes encoded; the limit is"):
        encode_event(normalise(raw, NOW_MS))


# --- events of an envelope, checked one by one -----------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, None),
        ({"attributes": {"n": Decimal("123456789012345678901234")}}, None),
        ({ASSIGNED_TIMESTAMP: True}, None),
        ({"id": None}, "id is required"),
        ({"id": ""}, "id must be a string of 1-128 characters"),
        ({"service": "Checkout"}, "service must be lower case"),
        ({"service": 7}, "service must be a string"),
        ({"level": "WARNING"}, "level must be one of"),
        ({"level": []}, "level must be one of"),
        ({"extra": orjson.loads("[" * 300 + "]" * 300)}, "event cannot be encoded as JSON"),
        ({"message": None}, "message is required"),
        ({"message": "x" * (MAX_MESSAGE_BYTES + 1)}, "message is"),
        ({"timestamp": 10**13}, "timestamp must be epoch milliseconds"),
        ({"timestamp": 1.5}, "timestamp must be epoch milliseconds"),
        ({"timestamp": True}, "timestamp must be epoch milliseconds"),
        ({"ingested_at": 10**20}, "ingested_at must be epoch milliseconds"),
        ({"ingested_at": -1}, "ingested_at must be epoch milliseconds"),
        ({"trace_id": "ABC"}, "trace_id must be lower-case hex"),
        ({"span_id": "xyz"}, "span_id must contain only hex digits"),
        ({"attributes": {"k": [1]}}, "attributes.k must be a string, number or boolean"),
        ({"attributes": {"k": Decimal("1" * 39)}}, "more than 38 significant digits"),
        ({"attributes": {"k": Decimal("1e126")}}, "attributes.k number is out of range"),
        ({ASSIGNED_TIMESTAMP: "yes"}, "assigned_timestamp must be a boolean"),
        ({"attributes": {"k": "x" * MAX_EVENT_BYTES}}, "bytes encoded; the limit is"),
        ({"timestamp": None}, "timestamp must be epoch milliseconds"),
        ({"ingested_at": 1.0}, "ingested_at must be epoch milliseconds"),
        ({"span_id": "ABC"}, "span_id must be lower-case hex"),
        ({"attributes": {"k": 10**38}}, "attributes.k integer has more than 38 digits"),
        ({"attributes": {"k": 1e300}}, "attributes.k number is out of range"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else None,
)
def test_event_problem_names_why_an_envelope_event_can_never_be_stored(
    changes: dict[str, Any], problem: str | None
) -> None:
    event = stored_event(**changes)
    found = event_problem(event)
    if problem is None:
        assert found is None
        assert make_blocks([event]) == (
            [block_of(event["service"], hour(event["timestamp"]), [event])],
            [],
        )
    else:
        assert found is not None and problem in found


def test_event_problem_of_something_that_is_not_an_object() -> None:
    assert event_problem(["id"]) == "event is not a JSON object"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"n": 1}', {"n": 1}),
        ('{"n": 0.1}', {"n": 0.1}),
        ('{"n": 123456789012345678901234}', {"n": Decimal("123456789012345678901234")}),
        ('{"n": 9223372036854775807, "s": "x"}', {"n": 9223372036854775807, "s": "x"}),
        ('{"n": 0.12345678901234567891}', {"n": Decimal("0.12345678901234567891")}),
        ('{"id": "1234567890123456789", "n": 2}', {"id": "1234567890123456789", "n": 2}),
        (
            '{"s": "\u00e9t\u00e9 \u20ac \U0001f600", "n": -1.2345678901234567891e300}',
            {"s": "\u00e9t\u00e9 \u20ac \U0001f600", "n": Decimal("-1.2345678901234567891e300")},
        ),
        ('{"d": "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668" }', None),
        ('{"n": 1.2345678901234567891e5}', {"n": Decimal("123456.78901234567891")}),
    ],
    ids=[
        "small-int",
        "short-decimal",
        "beyond-64-bits",
        "int64-max",
        "long-decimal",
        "digits-in-a-string",
        "non-ascii-text-then-a-long-decimal",
        "non-ascii-digits",
        "long-decimal-with-exponent",
    ],
)
def test_loads_exact_keeps_every_digit(text: str, expected: dict[str, Any] | None) -> None:
    expected = orjson.loads(text) if expected is None else expected
    assert loads_exact(text) == expected
    assert loads_exact(text.encode()) == expected
    parsed = loads_exact(text)
    assert {k: type(v) for k, v in parsed.items()} == {k: type(v) for k, v in expected.items()}


@pytest.mark.parametrize(
    ("text", "slow"),
    [
        ('{"id": "r1-51776904757547767cb804f5"}', False),
        ('{"a": "x_1234567890123456789_y"}', False),
        ('{"a": "run-1234567890123456789"}', False),
        ('{"m": "order 12345678901234567 done"}', True),
        ('{"n": 12345678901234567890123}', True),
        ("[1.234567890123456789e5]", True),
        ('{"n": 1234567890123456}', True),
        ('{"t": "00-8146458566089000e756ed100b81a2c4-01"}', False),
        ('{"a": "x-1234567890123456789"}', False),
        ('{"n":-12345678901234567890}', True),
        ("[0,\n\t-1234567890123456.5]", True),
        ("12345678901234567890", True),
        ("-12345678901234567890", True),
    ],
    ids=[
        *("hex-id", "underscores", "before-a-quote", "spaced-in-text", "big-int", "exp", "16"),
        *("traceparent", "dash-in-text", "negative", "after-white-space", "alone", "alone-neg"),
    ],
)
def test_only_a_run_that_can_be_a_number_takes_the_exact_parse(text: str, slow: bool) -> None:
    from logpipe.core import event as event_module

    assert bool(event_module._LONG_NUMBER.search(text)) is slow
    assert bool(event_module._LONG_BYTES.search(text.encode())) is slow
    assert loads_exact(text) == orjson.loads(text) or slow


def test_the_run_by_run_search_finds_what_the_pattern_finds_in_the_whole_text() -> None:
    from logpipe.core import event as event_module

    rng = random.Random(1)
    alphabet = b'0123456789.eE"_-, :x[]{}'
    texts = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(20000)]
    texts += [b"1" * n + tail for n in (15, 16, 40) for tail in (b"", b"a", b"e", b",")]
    for text in texts:
        found = event_module._has_long_number(text)
        assert found is bool(event_module._LONG_BYTES.search(text)), text
        # The same with the ingest scan's translation (other bytes than 0 and 1 in it).
        assert event_module._has_long_number(text, text.translate(limits._SCAN_TABLE)) is found
    assert any(event_module._has_long_number(t) for t in texts)


def test_loads_exact_refuses_what_orjson_refuses() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads_exact(b"[" * 2000 + b"1" * 20 + b"]" * 2000)
    with pytest.raises(orjson.JSONDecodeError):
        loads_exact("NaN")


@pytest.mark.parametrize(
    ("changes", "flagged"),
    [({"id": "a", "timestamp": NOW_MS}, False), ({"id": "a"}, True), ({}, False)],
    ids=["id-and-timestamp", "id-without-timestamp", "neither"],
)
def test_an_event_with_an_id_and_no_timestamp_is_flagged_for_its_first_timestamp(
    changes: dict[str, object], flagged: bool
) -> None:
    event = normalise(raw_event(**changes), NOW_MS)

    assert event.get(ASSIGNED_TIMESTAMP, False) is flagged


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        pytest.param(2**63 - 1, 2**63 - 1, id="int64-max"),
        pytest.param(-(2**63), -(2**63), id="int64-min"),
        pytest.param(2**64 - 1, 2**64 - 1, id="uint64-max"),
        pytest.param(2**64, Decimal(2**64), id="past-uint64"),
        pytest.param(-(2**63) - 1, Decimal(-(2**63) - 1), id="below-int64"),
        pytest.param(True, True, id="bool-is-not-a-number"),
        pytest.param(1.5, 1.5, id="float"),
    ],
)
def test_integer_attributes_past_64_bits_become_exact_decimals(
    value: object, stored: object
) -> None:
    event = normalise({"service": "s", "message": "m", "attributes": {"a": value}}, NOW_MS)
    assert event["attributes"]["a"] == stored
    assert type(event["attributes"]["a"]) is type(stored)


@pytest.mark.parametrize(
    ("timestamp", "error"),
    [
        pytest.param(0, None, id="epoch"),
        pytest.param(10**13 - 1, None, id="last-ms"),
        pytest.param(10**13, "between 1970 and 2286", id="past-2286"),
        pytest.param(-1, "between 1970 and 2286", id="before-1970"),
        pytest.param(True, "RFC 3339", id="bool"),
    ],
)
def test_integer_timestamps_are_checked_on_the_fast_path_too(
    timestamp: object, error: str | None
) -> None:
    raw = {"service": "s", "message": "m", "timestamp": timestamp}
    if error is None:
        assert normalise(raw, NOW_MS)["timestamp"] == timestamp
    else:
        with pytest.raises(EventError, match=error):
            normalise(raw, NOW_MS)


def test_services_found_valid_before_are_still_lower_cased_and_the_memo_stays_bounded() -> None:
    from logpipe.core import event as event_module

    for n in range(3 * event_module._KNOWN_SERVICES_MAX):
        event = normalise({"service": f"Svc-{n % 1500}", "message": "m"}, NOW_MS)
        assert event["service"] == f"svc-{n % 1500}"
        assert len(event_module._KNOWN_SERVICES) <= event_module._KNOWN_SERVICES_MAX
    with pytest.raises(EventError, match="service"):
        normalise({"service": "Svc 1", "message": "m"}, NOW_MS)
    with pytest.raises(EventError, match="service"):
        normalise({"service": 1, "message": "m"}, NOW_MS)


@pytest.mark.parametrize(
    "message",
    ["ascii only", "caf\u00e9", "\ufffe", "a\uffffb", "\uffef\u00bf"],
    ids=["ascii", "latin", "u+fffe", "u+ffff", "near-noncharacters"],
)
def test_encoded_events_never_carry_raw_noncharacters(message: str) -> None:
    data = encode_event(normalise({"service": "s", "message": message}, NOW_MS))
    assert b"\xef\xbf\xbe" not in data and b"\xef\xbf\xbf" not in data
    assert orjson.loads(data)["message"] == message
