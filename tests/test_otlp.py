"""OTLP/HTTP logs: the mapping as tables of cases, then POST /v1/logs over real HTTP, then the
real OpenTelemetry Python SDK exporting to the real ingestor, down to the stored items."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourcePb
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.core import otlp
from logpipe.core.event import MAX_ATTRIBUTES, normalise
from logpipe.errors import BodyError
from logpipe.ingest.app import validate
from logpipe.process.processor import Processor
from tests.support.aws import scan_events

pytestmark = pytest.mark.aws

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
SPAN_ID = 0xEEE19B7EC3C1B174

# The log example of the OTLP specification (opentelemetry-proto, examples/logs.json).
SPEC_EXAMPLE = b"""{
  "resourceLogs": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
    "scopeLogs": [{
      "scope": {
        "name": "my.library", "version": "1.0.0",
        "attributes": [
          {"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}
        ]
      },
      "logRecords": [{
        "timeUnixNano": 1544712660300000000,
        "observedTimeUnixNano": 1544712660300000000,
        "severityText": "Information",
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "body": {"stringValue": "Example log record"},
        "attributes": [
          {"key": "string.attribute", "value": {"stringValue": "some string"}},
          {"key": "boolean.attribute", "value": {"boolValue": true}},
          {"key": "int.attribute", "value": {"intValue": 10}},
          {"key": "double.attribute", "value": {"doubleValue": 637.704}},
          {"key": "array.attribute", "value": {"arrayValue": {"values": [
            {"stringValue": "many"}, {"stringValue": "values"}]}}},
          {"key": "map.attribute", "value": {"kvlistValue": {"values": [
            {"key": "some.map.key", "value": {"stringValue": "some value"}}]}}}
        ]
      }]
    }]
  }]
}"""


# --- building requests -----------------------------------------------------------------------


def any_value(value: object) -> AnyValue:
    """A Python value as an OTLP AnyValue (dict -> kvlist, list -> array)."""
    if isinstance(value, AnyValue):
        return value
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=key_values(value)))
    return AnyValue(string_value=str(value))


def key_values(mapping: Mapping[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in mapping.items()]


def record(
    body: object = "hello", attributes: Mapping[str, object] | None = None, **fields: Any
) -> LogRecord:
    fields.setdefault("time_unix_nano", 1_790_000_000_123_456_789)
    fields.setdefault("severity_number", SeverityNumber.INFO.value)
    return LogRecord(body=any_value(body), attributes=key_values(attributes or {}), **fields)


def request(
    *records: LogRecord,
    resource: Mapping[str, object] | None = None,
    scope: InstrumentationScope | None = None,
) -> ExportLogsServiceRequest:
    attrs = {"service.name": "checkout"} if resource is None else resource
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=ResourcePb(attributes=key_values(attrs)),
                scope_logs=[ScopeLogs(scope=scope, log_records=list(records))],
            )
        ]
    )


def mapped(log_record: LogRecord, **kwargs: Any) -> dict[str, Any]:
    """The one raw event a record maps to; it must also pass the schema's validation."""
    [event] = otlp.to_events(request(log_record, **kwargs))
    assert isinstance(event, dict), event
    normalise(event, now_ms=1)
    return event


# --- severity --------------------------------------------------------------------------------

SEVERITY_NUMBERS = [
    pytest.param(number, level, id=SeverityNumber(number).name)
    for level, numbers in (
        ("trace", range(1, 5)),
        ("debug", range(5, 9)),
        ("info", range(9, 13)),
        ("warn", range(13, 17)),
        ("error", range(17, 21)),
        ("fatal", range(21, 25)),
    )
    for number in numbers
]


@pytest.mark.parametrize(("number", "level"), SEVERITY_NUMBERS)
def test_severity_number_maps_to_its_level(number: int, level: str) -> None:
    assert mapped(record(severity_number=number, severity_text="ignored"))["level"] == level


@pytest.mark.parametrize(
    ("text", "level"),
    [
        pytest.param("Information", "info", id="spec-example-information"),
        pytest.param("WARNING", "warn", id="python-warning"),
        pytest.param("warn", "warn", id="otel-short-name"),
        pytest.param("ERROR3", "error", id="otel-numbered-short-name"),
        pytest.param("CRITICAL", "fatal", id="python-critical"),
        pytest.param("crit", "fatal", id="syslog-crit"),
        pytest.param("emerg", "fatal", id="syslog-emerg"),
        pytest.param("notice", "info", id="syslog-notice"),
        pytest.param("err", "error", id="syslog-err"),
        pytest.param("SEVERE", "error", id="jul-severe"),
        pytest.param("finest", "trace", id="jul-finest"),
        pytest.param("Verbose", "trace", id="dotnet-verbose"),
        pytest.param(" debug ", "debug", id="padded"),
        pytest.param("loud", "info", id="unknown-text-defaults-to-info"),
        pytest.param("", "info", id="no-severity-at-all-defaults-to-info"),
    ],
)
def test_severity_text_is_the_fallback_when_the_number_is_unset(text: str, level: str) -> None:
    assert mapped(record(severity_number=0, severity_text=text))["level"] == level


@pytest.mark.parametrize("number", [25, 100, -3], ids=["25", "100", "negative"])
def test_severity_number_out_of_range_falls_back_to_the_text(number: int) -> None:
    assert mapped(record(severity_number=number, severity_text="error"))["level"] == "error"


# --- body ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("card declined", "card declined", id="string"),
        pytest.param("", "", id="empty-string"),
        pytest.param(42, "42", id="int"),
        pytest.param(-(2**63), str(-(2**63)), id="int64-min"),
        pytest.param(2.5, "2.5", id="double"),
        pytest.param(math.inf, '"inf"', id="double-infinity"),
        pytest.param(True, "true", id="bool"),
        pytest.param(b"\x00\xffhi", "AP9oaQ==", id="bytes-as-base64"),
        pytest.param(
            {"user": "ada", "cart": {"items": 3}},
            '{"user":"ada","cart":{"items":3}}',
            id="kvlist-as-json",
        ),
        pytest.param(["a", 1, None, b"\x01"], '["a",1,null,"AQ=="]', id="array-as-json"),
        pytest.param(None, "", id="no-body"),
    ],
)
def test_body_becomes_the_message(body: object, message: str) -> None:
    assert mapped(record(body=body))["message"] == message


def test_body_over_16_kib_is_rejected_by_the_schema() -> None:
    [event] = otlp.to_events(request(record(body="x" * (16 * 1024 + 1))))
    accepted, rejected = validate([event], now_ms=1)

    assert accepted == []
    assert rejected == [{"index": 0, "error": "message is 16385 bytes; the limit is 16384"}]


# --- attributes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "flat"),
    [
        pytest.param({"http.method": "GET"}, {"http.method": "GET"}, id="string"),
        pytest.param(
            {"n": 7, "ok": False, "r": 0.5}, {"n": 7, "ok": False, "r": 0.5}, id="scalars"
        ),
        pytest.param(
            {"http": {"request": {"method": "GET", "size": 12}}},
            {"http.request.method": "GET", "http.request.size": 12},
            id="nested-maps-to-dotted-keys",
        ),
        pytest.param({"tags": ["a", "b", 3]}, {"tags": '["a","b",3]'}, id="array-as-json"),
        pytest.param({"raw": b"\x01\x02"}, {"raw": "AQI="}, id="bytes-as-base64"),
        pytest.param({"nan": math.nan}, {"nan": "nan"}, id="nan-as-string"),
        pytest.param({"tiny": 1e-200}, {"tiny": "1e-200"}, id="number-dynamodb-cannot-store"),
        pytest.param({"empty": None, "": "x"}, {}, id="empty-value-and-empty-key-left-out"),
        pytest.param({"m": {}}, {}, id="empty-map-left-out"),
    ],
)
def test_attributes_are_flattened_to_schema_values(
    attributes: dict[str, object], flat: dict[str, object]
) -> None:
    assert mapped(record(attributes=attributes)).get("attributes", {}) == flat


def test_record_attributes_win_over_scope_and_resource_attributes() -> None:
    event = mapped(
        record(attributes={"env": "record", "only.record": 1}),
        resource={"service.name": "checkout", "env": "resource", "host.name": "web-1"},
        scope=InstrumentationScope(
            name="payments", version="2.0", attributes=key_values({"env": "scope", "lib": "x"})
        ),
    )

    assert event["attributes"] == {
        "env": "record",
        "only.record": 1,
        "lib": "x",
        "otel.scope.name": "payments",
        "otel.scope.version": "2.0",
        "host.name": "web-1",
    }


def test_attributes_past_the_schema_limit_are_dropped_and_counted() -> None:
    many = {f"record.{n:03d}": n for n in range(70)}

    event = mapped(record(attributes=many), resource={"service.name": "s", "res": "r"})

    attributes = event["attributes"]
    assert len(attributes) == MAX_ATTRIBUTES
    assert [f"record.{n:03d}" for n in range(63)] == list(attributes)[:63]
    assert attributes["otel.dropped_attributes_count"] == 70 + 1 - 63


def test_keys_too_long_for_the_schema_are_dropped_and_counted_with_the_sdks_own_drops() -> None:
    event = mapped(
        record(attributes={"k" * 129: 1, "short": 2}, dropped_attributes_count=3),
        resource={"service.name": "s"},
    )

    assert event["attributes"] == {"short": 2, "otel.dropped_attributes_count": 4}


def test_event_name_becomes_an_attribute() -> None:
    assert mapped(record(event_name="browser.page_view"))["attributes"] == {
        "event.name": "browser.page_view"
    }


# --- service ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "service"),
    [
        pytest.param({"service.name": "checkout"}, "checkout", id="plain"),
        pytest.param({"service.name": "Checkout API"}, "checkout-api", id="case-and-space"),
        pytest.param(
            {"service.name": "unknown_service:python"}, "unknown_service-python", id="sdk-default"
        ),
        pytest.param({"service.name": "Café Ölberg"}, "cafe-olberg", id="accents-folded"),
        pytest.param({"service.name": "svc/äpi//v2"}, "svc-api-v2", id="runs-of-other-chars"),
        pytest.param({"service.name": "x" * 80}, "x" * 64, id="cut-to-64"),
        pytest.param({"service.name": "日本"}, "unknown_service", id="nothing-left"),
        pytest.param({"service.name": 42}, "unknown_service", id="not-a-string"),
        pytest.param({}, "unknown_service", id="missing-per-otel-convention"),
    ],
)
def test_resource_service_name_becomes_a_schema_service(
    resource: dict[str, object], service: str
) -> None:
    event = mapped(record(), resource=resource)

    assert event["service"] == service
    assert "service.name" not in event.get("attributes", {})


# --- time and ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "timestamp"),
    [
        pytest.param({"time_unix_nano": 1_544_712_660_300_999_999}, 1_544_712_660_300, id="time"),
        pytest.param(
            {"time_unix_nano": 0, "observed_time_unix_nano": 1_544_712_661_000_000_000},
            1_544_712_661_000,
            id="observed-when-time-unset",
        ),
        pytest.param(
            {"time_unix_nano": 1_544_712_660_000_000_000, "observed_time_unix_nano": 1},
            1_544_712_660_000,
            id="time-wins-over-observed",
        ),
        pytest.param({"time_unix_nano": 0}, None, id="neither-means-time-of-ingest"),
    ],
)
def test_timestamp_comes_from_time_else_observed_time(
    fields: dict[str, Any], timestamp: int | None
) -> None:
    assert mapped(record(**fields)).get("timestamp") == timestamp


def test_trace_and_span_ids_are_hex_of_the_protobuf_bytes() -> None:
    event = mapped(record(trace_id=TRACE_ID.to_bytes(16), span_id=SPAN_ID.to_bytes(8)))

    assert event["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert event["span_id"] == "eee19b7ec3c1b174"


def test_all_zero_ids_mean_no_trace() -> None:
    event = mapped(record(trace_id=bytes(16), span_id=bytes(8)))

    assert "trace_id" not in event
    assert "span_id" not in event


def test_trace_id_of_a_wrong_length_rejects_only_that_record() -> None:
    events = otlp.to_events(request(record(trace_id=bytes(range(1, 18))), record()))

    accepted, rejected = validate(events, now_ms=1)

    assert len(accepted) == 1
    assert [r["index"] for r in rejected] == [0]
    assert rejected[0]["error"].startswith("trace_id ")


def test_ids_are_stable_for_a_resent_request_and_distinct_for_identical_records() -> None:
    body = request(record(), record(), record(body="other")).SerializeToString()

    first = [normalise(e, now_ms=1)["id"] for e in otlp.parse(body, PROTOBUF)]
    again = [normalise(e, now_ms=2)["id"] for e in otlp.parse(body, PROTOBUF)]

    assert first == again
    assert len(set(first)) == 3


def test_json_and_protobuf_of_the_same_records_map_to_the_same_events() -> None:
    message = request(
        record(
            body={"k": [1, "two"]},
            attributes={"a": 1.5},
            trace_id=TRACE_ID.to_bytes(16),
            span_id=SPAN_ID.to_bytes(8),
        ),
        scope=InstrumentationScope(name="lib"),
    )
    as_json = otlp_json(message)

    assert otlp.parse(as_json, JSON) == otlp.parse(message.SerializeToString(), PROTOBUF)


def otlp_json(message: ExportLogsServiceRequest) -> bytes:
    """OTLP JSON as the specification wants it: ids as hex, enums as ints, int64 as strings."""
    doc = json_format.MessageToDict(message, use_integers_for_enums=True)
    for resource_logs in doc["resourceLogs"]:
        for scope_logs in resource_logs["scopeLogs"]:
            for log_record in scope_logs["logRecords"]:
                for key in ("traceId", "spanId"):
                    if key in log_record:
                        log_record[key] = base64.b64decode(log_record[key]).hex().upper()
    return orjson.dumps(doc)


# --- decoding --------------------------------------------------------------------------------


def test_spec_example_json_maps_every_field() -> None:
    [event] = otlp.parse(SPEC_EXAMPLE, JSON)

    assert isinstance(event, dict)
    assert {k: v for k, v in event.items() if k != "id"} == {
        "service": "my.service",
        "level": "info",
        "message": "Example log record",
        "timestamp": 1_544_712_660_300,
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "span_id": "eee19b7ec3c1b174",
        "attributes": {
            "string.attribute": "some string",
            "boolean.attribute": True,
            "int.attribute": 10,
            "double.attribute": 637.704,
            "array.attribute": '["many","values"]',
            "map.attribute.some.map.key": "some value",
            "my.scope.attribute": "some scope attribute",
            "otel.scope.name": "my.library",
            "otel.scope.version": "1.0.0",
        },
    }


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(
            {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"severityNumber": 17}]}]}]},
            id="enum-as-int",
        ),
        pytest.param(
            {
                "resourceLogs": [
                    {"scopeLogs": [{"logRecords": [{"severityNumber": "SEVERITY_NUMBER_ERROR"}]}]}
                ]
            },
            id="enum-as-name",
        ),
        pytest.param(
            {"resource_logs": [{"scope_logs": [{"log_records": [{"severity_number": 17}]}]}]},
            id="snake-case-field-names",
        ),
        pytest.param(
            {
                "resourceLogs": [
                    {"scopeLogs": [{"logRecords": [{"severityNumber": 17, "futureField": 1}]}]}
                ],
                "unknownTopLevel": True,
            },
            id="unknown-fields-ignored",
        ),
    ],
)
def test_otlp_json_quirks_are_understood(doc: dict[str, Any]) -> None:
    [event] = otlp.parse(orjson.dumps(doc), JSON)

    assert isinstance(event, dict)
    assert event["level"] == "error"
    assert event["service"] == "unknown_service"


def test_int64_as_a_json_string_is_a_number() -> None:
    doc = {
        "resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "1544712660300000000"}]}]}]
    }

    [event] = otlp.parse(orjson.dumps(doc), JSON)

    assert isinstance(event, dict)
    assert event["timestamp"] == 1_544_712_660_300


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        pytest.param(
            request(record()).SerializeToString()[:-5],
            PROTOBUF,
            "protobuf",
            id="truncated-protobuf",
        ),
        pytest.param(b"\xff\xff\xff\xff", PROTOBUF, "protobuf", id="garbage-protobuf"),
        pytest.param(b"{", JSON, "not valid JSON", id="broken-json"),
        pytest.param(b"[]", JSON, "JSON object", id="json-array"),
        pytest.param(b'{"resourceLogs": 5}', JSON, "resourceLogs", id="json-wrong-type"),
        pytest.param(
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}',
            JSON,
            "timeUnixNano",
            id="json-time-not-a-number",
        ),
        pytest.param(
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": 5}}]}]}]}',
            JSON,
            "stringValue",
            id="json-body-wrong-type",
        ),
        pytest.param(
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "xyz"}]}]}]}',
            JSON,
            "traceId",
            id="json-trace-id-not-hex",
        ),
    ],
)
def test_undecodable_payload_is_a_400(body: bytes, content_type: str, fragment: str) -> None:
    with pytest.raises(BodyError) as caught:
        otlp.parse(body, content_type)

    assert caught.value.status == 400
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", PROTOBUF),
        (b"", JSON),
        (b"{}", JSON),
        (ExportLogsServiceRequest().SerializeToString(), PROTOBUF),
    ],
    ids=["empty-protobuf", "empty-json-body", "empty-json-object", "no-resource-logs"],
)
def test_empty_request_holds_no_events(body: bytes, content_type: str) -> None:
    assert otlp.parse(body, content_type) == []


# --- answers ---------------------------------------------------------------------------------


def test_partial_success_response_round_trips_in_both_encodings() -> None:
    as_protobuf = ExportLogsServiceResponse.FromString(
        otlp.encode_response(2, "2 of 5 log records rejected", as_json=False)
    )
    as_json = json_format.Parse(
        otlp.encode_response(2, "2 of 5 log records rejected", as_json=True),
        ExportLogsServiceResponse(),
    )

    for response in (as_protobuf, as_json):
        assert response.partial_success.rejected_log_records == 2
        assert response.partial_success.error_message == "2 of 5 log records rejected"
    assert otlp.encode_response(0, "", as_json=True) == b"{}"
    assert otlp.encode_response(0, "", as_json=False) == b""


def test_status_body_is_a_google_rpc_status() -> None:
    status = status_pb2.Status.FromString(otlp.encode_status(400, "bad", as_json=False))

    assert (status.code, status.message) == (3, "bad")
    assert orjson.loads(otlp.encode_status(503, "later", as_json=True)) == {
        "code": 14,
        "message": "later",
    }


# --- over HTTP -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def response(self) -> ExportLogsServiceResponse:
        assert self.status == 200, self.body
        if self.headers["Content-Type"] == JSON:
            return json_format.Parse(self.body, ExportLogsServiceResponse())
        assert self.headers["Content-Type"] == PROTOBUF
        return ExportLogsServiceResponse.FromString(self.body)

    def status_message(self) -> str:
        if self.headers["Content-Type"] == JSON:
            return str(orjson.loads(self.body)["message"])
        return str(status_pb2.Status.FromString(self.body).message)


async def post_logs(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str]
) -> Answer:
    async with http.post(
        f"{url}/v1/logs", data=body, headers=headers, skip_auto_headers=("Content-Type",)
    ) as response:
        return Answer(response.status, response.headers, await response.read())


async def stored_events(clients: Clients, settings: Settings) -> list[dict[str, Any]]:
    """Drain the queue into the table with a processor in burst mode; every stored event."""
    url = await queue_url(clients.sqs, settings.queue_name)
    await Processor(settings, clients, url).run_until_empty()
    return await scan_events(clients, settings.table_name)


async def assert_healthy_and_queue_empty(
    http: aiohttp.ClientSession, url: str, clients: Clients, settings: Settings
) -> None:
    async with http.get(f"{url}/healthz") as response:
        assert response.status == 200
    queue = await queue_url(clients.sqs, settings.queue_name)
    answer = await clients.sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0)
    assert answer.get("Messages", []) == []


async def test_spec_example_posted_as_json_is_stored_with_every_field_mapped(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    answer = await post_logs(http, ingestor_url, SPEC_EXAMPLE, {"Content-Type": JSON})

    assert answer.body == b"{}"
    assert not answer.response().HasField("partial_success")
    [event] = await stored_events(clients, settings)
    assert event["service"] == "my.service"
    assert event["level"] == "info"
    assert event["message"] == "Example log record"
    assert event["timestamp"] == "2018-12-13T14:51:00.300Z"
    assert (event["trace_id"], event["span_id"]) == (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
    )
    assert event["attributes"]["map.attribute.some.map.key"] == "some value"
    assert event["attributes"]["double.attribute"] == 637.704


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
async def test_invalid_records_get_a_partial_success_and_the_rest_is_stored(
    content_type: str,
    ingestor_url: str,
    http: aiohttp.ClientSession,
    clients: Clients,
    settings: Settings,
) -> None:
    message = request(
        record(body="kept"),
        record(body="x" * 20_000),
        record(body="from the far future", time_unix_nano=2**64 - 1),
        record(body="also kept"),
    )
    body = message.SerializeToString() if content_type == PROTOBUF else otlp_json(message)

    answer = await post_logs(
        http,
        ingestor_url,
        gzip.compress(body),
        {"Content-Type": content_type, "Content-Encoding": "gzip"},
    )

    partial = answer.response().partial_success
    assert partial.rejected_log_records == 2
    assert partial.error_message.startswith("2 of 4 log records rejected: record 1: message is")
    assert "record 2: timestamp must lie between 1970 and 2286" in partial.error_message
    assert answer.headers["Content-Type"] == content_type
    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == ["also kept", "kept"]


async def test_request_where_every_record_is_invalid_is_still_a_200_partial_success(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    body = request(record(body="x" * 20_000)).SerializeToString()

    answer = await post_logs(http, ingestor_url, body, {"Content-Type": PROTOBUF})

    assert answer.response().partial_success.rejected_log_records == 1
    await assert_healthy_and_queue_empty(http, ingestor_url, clients, settings)


async def test_empty_request_is_a_success(ingestor_url: str, http: aiohttp.ClientSession) -> None:
    answer = await post_logs(http, ingestor_url, b"", {"Content-Type": PROTOBUF})

    assert answer.status == 200
    assert answer.body == b""


MAX_BODY_BYTES = 64 * 1024
MAX_EVENTS = 50


@dataclass(frozen=True)
class Bad:
    body: bytes
    content_type: str
    status: int
    error: str
    encoding: str = "identity"


def records_body(count: int, size: int = 10) -> bytes:
    return request(*(record(body="x" * size) for _ in range(count))).SerializeToString()


BAD_PAYLOADS = [
    pytest.param(
        Bad(records_body(3)[:-7], PROTOBUF, 400, "not an OTLP protobuf"), id="truncated-protobuf"
    ),
    pytest.param(Bad(b"\x0a\xff\xff\xff\xff\x0f", PROTOBUF, 400, "protobuf"), id="bad-length"),
    pytest.param(
        Bad(b'{"resourceLogs": {"oops": 1}}', JSON, 400, "resourceLogs"), id="json-wrong-types"
    ),
    pytest.param(Bad(b'{"resourceLogs": [', JSON, 400, "not valid JSON"), id="truncated-json"),
    pytest.param(Bad(b'"logs"', JSON, 400, "JSON object"), id="json-string"),
    pytest.param(
        Bad(records_body(40, size=2048), PROTOBUF, 413, f"limit is {MAX_BODY_BYTES}"),
        id="oversized",
    ),
    pytest.param(
        Bad(gzip.compress(b"\0" * (10 * 1024 * 1024)), PROTOBUF, 413, "once inflated", "gzip"),
        id="gzip-bomb",
    ),
    pytest.param(Bad(b"not gzip", PROTOBUF, 400, "not valid gzip", "gzip"), id="invalid-gzip"),
    pytest.param(
        Bad(records_body(1), PROTOBUF, 415, "'deflate'", "deflate"), id="deflate-encoding"
    ),
    pytest.param(
        Bad(records_body(MAX_EVENTS + 1), PROTOBUF, 413, f"the limit is {MAX_EVENTS} per request"),
        id="too-many-records",
    ),
    pytest.param(
        Bad(records_body(1), "text/plain", 415, "application/x-protobuf"), id="text-plain"
    ),
    pytest.param(
        Bad(records_body(1), "application/grpc", 415, "OTLP/HTTP"), id="grpc-content-type"
    ),
]


class TestWithSmallLimits:
    @pytest.fixture
    async def settings(self, settings: Settings) -> Settings:
        return dataclasses.replace(
            settings, max_body_bytes=MAX_BODY_BYTES, max_events_per_request=MAX_EVENTS
        )

    @pytest.mark.parametrize("case", BAD_PAYLOADS)
    async def test_bad_payload_gets_the_right_4xx_with_a_status_body_and_nothing_is_queued(
        self,
        case: Bad,
        ingestor_url: str,
        http: aiohttp.ClientSession,
        clients: Clients,
        settings: Settings,
    ) -> None:
        headers = {"Content-Type": case.content_type, "Content-Encoding": case.encoding}

        answer = await post_logs(http, ingestor_url, case.body, headers)

        assert answer.status == case.status, answer.body
        assert case.error in answer.status_message()
        await assert_healthy_and_queue_empty(http, ingestor_url, clients, settings)


class TestBackpressure:
    @pytest.fixture
    async def settings(self, settings: Settings) -> Settings:
        # Less room for in-flight events than one record takes: every request is over it.
        return dataclasses.replace(settings, max_inflight_bytes=10)

    async def test_full_pipeline_answers_429_with_retry_after(
        self, ingestor_url: str, http: aiohttp.ClientSession
    ) -> None:
        answer = await post_logs(http, ingestor_url, records_body(1), {"Content-Type": PROTOBUF})

        assert answer.status == 429
        assert answer.headers["Retry-After"] == "1"
        assert "waiting for SQS" in answer.status_message()


async def test_queue_refusing_answers_503_with_retry_after(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    await clients.sqs.delete_queue(QueueUrl=await queue_url(clients.sqs, settings.queue_name))

    answer = await post_logs(http, ingestor_url, SPEC_EXAMPLE, {"Content-Type": JSON})

    assert answer.status == 503
    assert answer.headers["Retry-After"] == "2"
    assert answer.headers["Content-Type"] == JSON
    assert "SQS" in answer.status_message()


async def test_get_on_v1_logs_gets_405_that_allows_post(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{ingestor_url}/v1/logs") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"


# --- the real OpenTelemetry SDK --------------------------------------------------------------


def span_context(trace_id: int, span_id: int) -> Any:
    span = NonRecordingSpan(
        SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    )
    return trace.set_span_in_context(span)


async def test_otel_sdk_batch_exporter_records_are_stored_with_fields_mapped(
    ingestor_url: str, clients: Clients, settings: Settings
) -> None:
    resource = Resource.create({"service.name": "Checkout API", "deployment.environment": "test"})
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    exporter = OTLPLogExporter(endpoint=f"{ingestor_url}/v1/logs", compression=Compression.Gzip)
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = provider.get_logger("checkout.payments", "1.2.3")
    time_ns = 1_790_000_000_123_000_000

    logger.emit(
        timestamp=time_ns,
        severity_number=SeverityNumber.WARN,
        severity_text="WARN",
        body="card declined",
        attributes={"order.id": 42, "amount": 9.99, "retry": False},
        context=span_context(TRACE_ID, SPAN_ID),
    )
    logger.emit(severity_number=SeverityNumber.ERROR2, body={"code": "E42", "tries": [1, 2]})
    logger.emit(severity_text="debug", body=b"\x00\x01")
    # The exporter blocks on HTTP to the ingestor served by this very event loop.
    assert await asyncio.to_thread(provider.force_flush, 10_000)
    await asyncio.to_thread(provider.shutdown)

    events = {e["message"]: e for e in await stored_events(clients, settings)}
    assert set(events) == {"card declined", '{"code":"E42","tries":[1,2]}', "AAE="}
    declined = events["card declined"]
    assert declined["service"] == "checkout-api"
    assert declined["level"] == "warn"
    assert declined["timestamp"] == "2026-09-21T14:13:20.123Z"
    assert declined["trace_id"] == f"{TRACE_ID:032x}"
    assert declined["span_id"] == f"{SPAN_ID:016x}"
    assert declined["attributes"] == {
        "order.id": 42,
        "amount": 9.99,
        "retry": False,
        "otel.scope.name": "checkout.payments",
        "otel.scope.version": "1.2.3",
        "deployment.environment": "test",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": resource.attributes["telemetry.sdk.version"],
        "service.instance.id": resource.attributes["service.instance.id"],
    }
    assert events['{"code":"E42","tries":[1,2]}']["level"] == "error"
    assert "trace_id" not in events["AAE="]
    assert events["AAE="]["level"] == "debug"


KEY = "otlp-secret-key"


class TestWithApiKeys:
    @pytest.fixture
    async def settings(self, settings: Settings) -> Settings:
        return dataclasses.replace(settings, api_keys=(KEY,))

    async def test_exporter_configured_only_by_environment_variables_ships_with_the_key(
        self,
        ingestor_url: str,
        clients: Clients,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Exactly what docs/clients.md tells an OpenTelemetry user to set.
        monkeypatch.setenv("OTEL_SERVICE_NAME", "billing")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", f"{ingestor_url}/v1/logs")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_HEADERS", f"Authorization=Bearer%20{KEY}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "gzip")
        provider = LoggerProvider(shutdown_on_exit=False)
        provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))

        for n in range(25):
            provider.get_logger("app").emit(severity_number=SeverityNumber.INFO, body=f"n={n}")
        assert await asyncio.to_thread(provider.force_flush, 10_000)
        await asyncio.to_thread(provider.shutdown)

        events = await stored_events(clients, settings)
        assert sorted(e["message"] for e in events) == sorted(f"n={n}" for n in range(25))
        assert {e["service"] for e in events} == {"billing"}

    async def test_missing_key_gets_401_with_a_bearer_challenge_and_a_status_body(
        self, ingestor_url: str, http: aiohttp.ClientSession
    ) -> None:
        answer = await post_logs(http, ingestor_url, records_body(1), {"Content-Type": PROTOBUF})

        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "API key" in answer.status_message()


async def test_sdk_retry_of_an_accepted_batch_is_stored_once(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    # What an exporter does after a lost answer: the same serialized request, again.
    body = request(*(record(body=f"n={n}") for n in range(10))).SerializeToString()

    for _ in range(2):
        answer = await post_logs(http, ingestor_url, body, {"Content-Type": PROTOBUF})
        assert answer.status == 200

    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == sorted(f"n={n}" for n in range(10))


async def test_ingestor_stays_healthy_after_a_burst_of_bad_payloads(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    bodies = [records_body(2)[:cut] for cut in range(1, 40, 3)]

    answers = await asyncio.gather(
        *(post_logs(http, ingestor_url, b, {"Content-Type": PROTOBUF}) for b in bodies)
    )

    assert all(a.status in (200, 400) for a in answers)
    async with http.get(f"{ingestor_url}/healthz") as response:
        assert response.status == 200
