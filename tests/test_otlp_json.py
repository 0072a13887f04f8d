"""OTLP JSON decoding: the direct builder yields exactly the request json_format.ParseDict
yields (same message, same bytes, same events and ids), and whatever it is unsure of goes to
ParseDict, so refusals keep their status and their words."""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson
import pytest

from logpipe.core import otlp
from logpipe.errors import BodyError

pytestmark = pytest.mark.unit

JSON = "application/json"
NOT_BUILT = (otlp.Unsure, ValueError, TypeError, OverflowError)


def doc_of(*records: dict[str, Any], resource: Any = None, scope: Any = None) -> dict[str, Any]:
    scope_logs: dict[str, Any] = {"logRecords": list(records)}
    if scope is not None:
        scope_logs["scope"] = scope
    resource_logs: dict[str, Any] = {"scopeLogs": [scope_logs]}
    if resource is not None:
        resource_logs["resource"] = resource
    return {"resourceLogs": [resource_logs]}


def attr(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


def nested_array(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for level in range(depth):
        if level % 2:
            value = {"arrayValue": {"values": [value, {"intValue": level}]}}
        else:
            value = {"kvlistValue": {"values": [attr(f"k{level}", value)]}}
    return value


EVERY_FIELD_CAMEL = {
    "resourceLogs": [
        {
            "resource": {
                "attributes": [
                    attr("service.name", {"stringValue": "checkout"}),
                    attr("host.cores", {"intValue": 8}),
                ],
                "droppedAttributesCount": 2,
            },
            "schemaUrl": "https://opentelemetry.io/schemas/1.24.0",
            "scopeLogs": [
                {
                    "scope": {
                        "name": "my.library",
                        "version": "1.0.0",
                        "attributes": [attr("scope.attr", {"boolValue": False})],
                        "droppedAttributesCount": 1,
                    },
                    "schemaUrl": "https://opentelemetry.io/schemas/1.21.0",
                    "logRecords": [
                        {
                            "timeUnixNano": "1544712660300000000",
                            "observedTimeUnixNano": 1544712660300000001,
                            "severityNumber": 10,
                            "severityText": "Information",
                            "body": {"stringValue": "Example log record"},
                            "attributes": [
                                attr("string", {"stringValue": "some string"}),
                                attr("bool", {"boolValue": True}),
                                attr("int", {"intValue": "10"}),
                                attr("double", {"doubleValue": 637.704}),
                                attr("bytes", {"bytesValue": "aGVsbG8gd29ybGQ="}),
                                attr(
                                    "array",
                                    {
                                        "arrayValue": {
                                            "values": [{"stringValue": "a"}, {"intValue": 1}]
                                        }
                                    },
                                ),
                                attr(
                                    "map",
                                    {
                                        "kvlistValue": {
                                            "values": [attr("inner", {"doubleValue": 1.5})]
                                        }
                                    },
                                ),
                            ],
                            "droppedAttributesCount": 3,
                            "flags": 1,
                            "traceId": "5B8EFFF798038103D269B633813FC60C",
                            "spanId": "eee19b7ec3c1b174",
                            "eventName": "checkout.paid",
                        }
                    ],
                }
            ],
        }
    ]
}

_SNAKE = {
    "resourceLogs": "resource_logs",
    "scopeLogs": "scope_logs",
    "logRecords": "log_records",
    "schemaUrl": "schema_url",
    "droppedAttributesCount": "dropped_attributes_count",
    "timeUnixNano": "time_unix_nano",
    "observedTimeUnixNano": "observed_time_unix_nano",
    "severityNumber": "severity_number",
    "severityText": "severity_text",
    "traceId": "trace_id",
    "spanId": "span_id",
    "eventName": "event_name",
    "stringValue": "string_value",
    "boolValue": "bool_value",
    "intValue": "int_value",
    "doubleValue": "double_value",
    "bytesValue": "bytes_value",
    "arrayValue": "array_value",
    "kvlistValue": "kvlist_value",
}


def snake(value: Any) -> Any:
    """The document with every field spelt as its proto name (keys of attributes kept)."""
    if isinstance(value, list):
        return [snake(item) for item in value]
    if isinstance(value, dict):
        return {_SNAKE.get(k, k): v if k == "key" else snake(v) for k, v in value.items()}
    return value


GOOD = [
    pytest.param(EVERY_FIELD_CAMEL, id="every-field-camel-case"),
    pytest.param(snake(EVERY_FIELD_CAMEL), id="every-field-proto-names"),
    pytest.param(
        doc_of(
            {"time_unix_nano": 5, "severityText": "warn", "body": {"string_value": "x"}},
            resource={"attributes": [attr("a", {"intValue": 1})], "dropped_attributes_count": 1},
        ),
        id="spellings-mixed",
    ),
    pytest.param({}, id="empty-document"),
    pytest.param({"resourceLogs": []}, id="no-resource-logs"),
    pytest.param({"resourceLogs": [{"scopeLogs": []}, {}]}, id="empty-lists-and-objects"),
    pytest.param(doc_of({}, {}, {}), id="empty-records"),
    pytest.param(
        doc_of({"body": {}}, resource={}, scope={}),
        id="empty-objects-are-present-messages",
    ),
    pytest.param(
        doc_of(
            {
                "timeUnixNano": "18446744073709551615",
                "observedTimeUnixNano": 18446744073709551615,
                "severityNumber": 2147483647,
                "droppedAttributesCount": 4294967295,
                "flags": "4294967295",
                "attributes": [
                    attr("max", {"intValue": "9223372036854775807"}),
                    attr("min", {"intValue": "-9223372036854775808"}),
                    attr("max-number", {"intValue": 9223372036854775807}),
                    attr("min-number", {"intValue": -9223372036854775808}),
                    attr("zero", {"intValue": "0"}),
                    attr("minus-zero", {"intValue": "-0"}),
                    attr("leading-zeros", {"intValue": "007"}),
                ],
            },
            {"severityNumber": -1, "timeUnixNano": 0},
        ),
        id="64-bit-edges-as-strings-and-numbers",
    ),
    pytest.param(
        doc_of(
            {
                "attributes": [
                    attr("nan", {"doubleValue": "NaN"}),
                    attr("inf", {"doubleValue": "Infinity"}),
                    attr("-inf", {"doubleValue": "-Infinity"}),
                    attr("zero", {"doubleValue": 0.0}),
                    attr("minus-zero", {"doubleValue": -0.0}),
                    attr("max", {"doubleValue": 1.7976931348623157e308}),
                    attr("tiny", {"doubleValue": 5e-324}),
                    attr("integer", {"doubleValue": 3}),
                    attr("big-integer", {"doubleValue": 2**70}),
                ],
                "body": {"doubleValue": "NaN"},
            }
        ),
        id="doubles-incl-nan-and-infinity",
    ),
    pytest.param(
        doc_of(
            {"severityNumber": "SEVERITY_NUMBER_WARN"},
            {"severityNumber": "SEVERITY_NUMBER_UNSPECIFIED"},
            {"severityNumber": "SEVERITY_NUMBER_FATAL4"},
            {"severityNumber": 99},
        ),
        id="severity-by-name-and-number",
    ),
    pytest.param(
        doc_of(
            {
                "severityText": "ошибка 🔥",
                "body": {"stringValue": "héllo wörld ✓ 日本語 \u0000 \u2028"},
                "eventName": "ünïcode",
                "attributes": [attr("ключ.🔑", {"stringValue": "значение"})],
            },
            resource={"attributes": [attr("service.name", {"stringValue": "Café Service"})]},
            scope={"name": "名前", "version": "β"},
        ),
        id="unicode",
    ),
    pytest.param(
        doc_of(
            {
                "attributes": [
                    attr("padded", {"bytesValue": "aGk="}),
                    attr("unpadded", {"bytesValue": "aGk"}),
                    attr("url-safe", {"bytesValue": "-_-_"}),
                    attr("standard", {"bytesValue": "+/+/"}),
                    attr("empty", {"bytesValue": ""}),
                ],
                "body": {"bytesValue": "AAECAwQ="},
            }
        ),
        id="bytes-in-either-alphabet",
    ),
    pytest.param(
        doc_of(
            {"body": nested_array(12), "attributes": [attr("deep", nested_array(20))]},
            {"body": {"arrayValue": {}}, "attributes": [attr("m", {"kvlistValue": {}})]},
            {"body": {"arrayValue": {"values": []}}},
            {"body": {"kvlistValue": {"values": None}}},
            {"body": {"arrayValue": {"values": [{}, {"arrayValue": {"values": [{}]}}]}}},
        ),
        id="nested-arrays-and-kvlists",
    ),
    pytest.param(
        doc_of(
            {
                "timeUnixNano": None,
                "severityNumber": None,
                "severityText": None,
                "body": None,
                "attributes": None,
                "traceId": None,
                "span_id": None,
                "eventName": None,
                "flags": None,
            },
            {
                "body": {"stringValue": None},
                "attributes": [
                    {"key": "no-value", "value": None},
                    {"key": None, "value": {"intValue": None}},
                    attr("kv", {"kvlistValue": {"values": [{"key": "x"}]}}),
                ],
            },
            resource={"attributes": None, "droppedAttributesCount": None},
            scope={"name": None, "version": None},
        ),
        id="null-fields-are-absent",
    ),
    pytest.param(
        {
            "future": {"anything": [1, 2]},
            "resourceLogs": [
                {
                    "unknown": 1,
                    "resource": {"entityRefz": [], "attributes": [{"key": "k", "other": 1}]},
                    "scopeLogs": [
                        {
                            "scope": {"nameX": "n"},
                            "what": None,
                            "logRecords": [
                                {
                                    "futureField": {"x": 1},
                                    "body": {"futureValue": 5},
                                    "attributes": [attr("k", {"newKind": [1]})],
                                }
                            ],
                        }
                    ],
                }
            ],
        },
        id="unknown-fields-are-ignored",
    ),
    pytest.param(
        doc_of(
            {"traceId": "", "spanId": ""},
            {"traceId": "00000000000000000000000000000000", "spanId": "0000000000000000"},
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "EEE19B7EC3C1B174"},
        ),
        id="ids-as-hex",
    ),
    pytest.param(
        {
            "resourceLogs": [
                {
                    "resource": {"attributes": [attr("service.name", {"stringValue": s})]},
                    "scopeLogs": [
                        {"scope": {"name": f"scope-{n}"}, "logRecords": [{"body": {}}] * 3}
                        for n in range(2)
                    ],
                }
                for s in ("a", "b")
            ]
        },
        id="several-resources-scopes-and-identical-records",
    ),
]


def reference(doc: dict[str, Any]) -> Any:
    """The request as ParseDict builds it (it converts the hex ids of its copy in place)."""
    return otlp._parse_dict(copy.deepcopy(doc))


def assert_same_as_parse_dict(doc: dict[str, Any], built: Any) -> None:
    expected = reference(doc)
    assert built == expected
    assert built.SerializeToString() == expected.SerializeToString()
    events, expected_events = otlp.to_events(built), otlp.to_events(expected)
    assert orjson.dumps(events, default=repr) == orjson.dumps(expected_events, default=repr)


@pytest.mark.parametrize("doc", GOOD)
def test_builder_yields_the_request_and_events_parse_dict_yields(doc: dict[str, Any]) -> None:
    original = copy.deepcopy(doc)

    built = otlp.build_request(doc)  # raises if it would fall back

    assert doc == original  # left untouched for a fallback
    assert_same_as_parse_dict(doc, built)


def test_ids_of_json_records_match_those_of_the_same_records_sent_as_protobuf() -> None:
    built = otlp.build_request(EVERY_FIELD_CAMEL)
    as_json = otlp.parse(orjson.dumps(EVERY_FIELD_CAMEL), JSON)
    as_protobuf = otlp.parse(built.SerializeToString(), "application/x-protobuf")

    assert [e["id"] for e in as_json] == [e["id"] for e in as_protobuf]  # type: ignore[index]
    assert as_json == as_protobuf


def random_any_value(rng: random.Random, depth: int) -> dict[str, Any]:
    kind = rng.randrange(9 if depth < 6 else 7)
    if kind == 0:
        return {"stringValue": "".join(rng.choice('aé😀 "\\\n') for _ in range(rng.randrange(6)))}
    if kind == 1:
        return {"boolValue": rng.random() < 0.5}
    if kind == 2:
        number = rng.randrange(-(2**63), 2**63)
        return {"intValue": str(number) if rng.random() < 0.5 else number}
    if kind == 3:
        choices: list[Any] = [rng.uniform(-1e300, 1e300), rng.random(), "NaN", "-Infinity", 7]
        return {"doubleValue": rng.choice(choices)}
    if kind == 4:
        return {"bytesValue": rng.choice(["", "aGk=", "aGk", "AAEC-_8"])}
    if kind == 5:
        return {}
    if kind == 6:
        return {"stringValue": None}
    if kind == 7:
        values = [random_any_value(rng, depth + 1) for _ in range(rng.randrange(4))]
        return {"arrayValue": {"values": values}}
    pairs = [attr(f"k{n}", random_any_value(rng, depth + 1)) for n in range(rng.randrange(4))]
    return {"kvlistValue": {"values": pairs}}


@pytest.mark.parametrize("seed", range(20))
def test_builder_matches_parse_dict_on_random_any_values(seed: int) -> None:
    rng = random.Random(seed)
    records = [
        {
            "timeUnixNano": str(rng.randrange(2**64)),
            "severityNumber": rng.randrange(25),
            "body": random_any_value(rng, 0),
            "attributes": [attr(f"a{n}", random_any_value(rng, 0)) for n in range(5)],
        }
        for _ in range(10)
    ]
    doc = doc_of(*records)

    assert_same_as_parse_dict(doc, otlp.build_request(doc))


# --- left to ParseDict -----------------------------------------------------------------------

# Documents ParseDict accepts that the builder leaves to it: the answer is still ParseDict's.
ACCEPTED_BY_FALLBACK = [
    pytest.param(doc_of({"timeUnixNano": 1.5e18}), id="integer-as-a-float"),
    pytest.param(doc_of({"timeUnixNano": "1e3"}), id="integer-as-an-exponent-string"),
    pytest.param(doc_of({"severityNumber": "9"}), id="enum-as-a-number-string"),
    pytest.param(doc_of({"severityNumber": "SEVERITY_NUMBER_LOUD"}), id="unknown-enum-name"),
    pytest.param(doc_of({"severityNumber": True}), id="enum-as-a-bool"),
    pytest.param(doc_of({"body": {"doubleValue": "1.5"}}), id="double-as-a-string"),
    pytest.param(doc_of({"body": {"doubleValue": True}}), id="double-as-a-bool"),
    pytest.param(
        doc_of({"body": {"stringValue": "x", "intValue": None}}), id="oneof-with-a-null-other"
    ),
    pytest.param(
        doc_of({"body": {"stringValue": "x", "future": 1}}), id="any-value-with-unknown-field"
    ),
    pytest.param(
        doc_of({"timeUnixNano": "1", "time_unix_nano": "2"}), id="both-spellings-of-a-field"
    ),
    pytest.param(
        doc_of({"severityText": "a", "severity_text": None}), id="both-spellings-one-null"
    ),
    pytest.param(doc_of({"body": nested_array(30)}), id="nesting-past-the-builders-depth"),
    pytest.param(doc_of(resource={"entityRefs": []}), id="field-the-builder-does-not-set"),
    pytest.param(doc_of({"attributes": [{"key": "k", "keyStrindex": 1}]}), id="key-strindex"),
    pytest.param(doc_of({"body": "text"}), id="string-where-an-object-is-expected"),
]


@pytest.mark.parametrize("doc", ACCEPTED_BY_FALLBACK)
def test_documents_the_builder_is_unsure_of_get_parse_dicts_answer(
    doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(NOT_BUILT):
        otlp.build_request(copy.deepcopy(doc))
    fallbacks = count_fallbacks(monkeypatch)

    decoded = otlp.decode_request(orjson.dumps(doc), JSON)

    assert fallbacks == [1]
    assert decoded == reference(doc)
    assert decoded.SerializeToString() == reference(doc).SerializeToString()


def count_fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    parse_dict = otlp._parse_dict

    def counted(doc: dict[str, Any]) -> Any:
        calls.append(1)
        return parse_dict(doc)

    monkeypatch.setattr(otlp, "_parse_dict", counted)
    return calls


def record_doc(**fields: Any) -> bytes:
    return orjson.dumps(doc_of(fields))


REFUSED = [
    pytest.param(b'{"resourceLogs": 5}', id="resource-logs-not-a-list"),
    pytest.param(b'{"resourceLogs": [5]}', id="resource-logs-item-not-an-object"),
    pytest.param(b'{"resourceLogs": [null]}', id="null-in-a-list"),
    pytest.param(b'{"resourceLogs": [{"scopeLogs": {}}]}', id="scope-logs-an-object"),
    pytest.param(b'{"resourceLogs": [], "[ext.field]": 1}', id="extension-syntax"),
    pytest.param(record_doc(timeUnixNano="soon"), id="time-not-a-number"),
    pytest.param(record_doc(timeUnixNano="-1"), id="time-negative"),
    pytest.param(record_doc(timeUnixNano="18446744073709551616"), id="time-past-64-bits"),
    pytest.param(record_doc(timeUnixNano=1.5), id="time-a-fraction"),
    pytest.param(record_doc(timeUnixNano=" 12"), id="time-with-a-space"),
    pytest.param(record_doc(timeUnixNano=True), id="time-a-bool"),
    pytest.param(record_doc(flags=4294967296), id="flags-past-32-bits"),
    pytest.param(record_doc(droppedAttributesCount=-1), id="dropped-negative"),
    pytest.param(record_doc(severityNumber=2147483648), id="severity-past-int32"),
    pytest.param(record_doc(severityNumber=[9]), id="severity-a-list"),
    pytest.param(record_doc(severityText=5), id="severity-text-a-number"),
    pytest.param(record_doc(eventName={"a": 1}), id="event-name-an-object"),
    pytest.param(record_doc(body={"stringValue": 5}), id="string-value-a-number"),
    pytest.param(record_doc(body={"boolValue": "true"}), id="bool-value-a-string"),
    pytest.param(record_doc(body={"intValue": "9223372036854775808"}), id="int-value-past-int64"),
    pytest.param(record_doc(body={"intValue": True}), id="int-value-a-bool"),
    pytest.param(record_doc(body={"doubleValue": "nan"}), id="double-lowercase-nan"),
    pytest.param(record_doc(body={"doubleValue": "lots"}), id="double-not-a-number"),
    pytest.param(record_doc(body={"bytesValue": "a"}), id="bytes-not-base64"),
    pytest.param(record_doc(body={"bytesValue": 5}), id="bytes-a-number"),
    pytest.param(record_doc(body={"stringValue": "a", "intValue": 1}), id="two-oneof-fields"),
    pytest.param(
        record_doc(body={"stringValue": "a", "string_value": "b"}), id="oneof-in-both-spellings"
    ),
    pytest.param(record_doc(body=5), id="body-a-number"),
    pytest.param(record_doc(body={"arrayValue": {"values": [None]}}), id="null-array-item"),
    pytest.param(record_doc(body={"arrayValue": {"values": {}}}), id="array-values-an-object"),
    pytest.param(record_doc(attributes={}), id="attributes-an-object"),
    pytest.param(record_doc(attributes=[None]), id="null-attribute"),
    pytest.param(record_doc(attributes=[{"key": 5}]), id="attribute-key-a-number"),
    pytest.param(record_doc(body=nested_array(60)), id="nesting-past-parse-dicts-depth"),
    pytest.param(record_doc(traceId="xyz"), id="trace-id-not-hex"),
    pytest.param(record_doc(spanId="abc", traceId="zz"), id="both-ids-bad-trace-id-named"),
    pytest.param(record_doc(traceId=5), id="trace-id-a-number"),
]


@pytest.mark.parametrize("body", REFUSED)
def test_documents_parse_dict_refuses_are_refused_alike_through_the_fallback(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BodyError) as expected:
        reference(orjson.loads(body))
    with pytest.raises(NOT_BUILT):
        otlp.build_request(orjson.loads(body))
    fallbacks = count_fallbacks(monkeypatch)

    with pytest.raises(BodyError) as caught:
        otlp.parse(body, JSON)

    assert fallbacks == [1]
    assert caught.value.status == expected.value.status == 400
    assert str(caught.value) == str(expected.value)
