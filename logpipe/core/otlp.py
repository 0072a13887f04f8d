"""OTLP/HTTP logs: request bytes to raw events of the /ingest schema, and the answers. No I/O.

The mapping (OpenTelemetry log data model -> logpipe event):
  resource `service.name`       -> service (folded to the schema's charset; "unknown_service")
  severity_number / _text       -> level (number 1-24 first, then the text, else "info")
  body                          -> message (a string as is, bytes as base64, the rest as JSON)
  time_unix_nano                -> timestamp (observed_time_unix_nano when unset)
  trace_id / span_id            -> hex
  record > scope > resource attributes -> attributes, nested maps flattened to dotted keys;
                                   at most 64 keys of at most 128 characters, the rest counted
                                   (never built), and only the first 128 of a resource or scope
The id is a digest of the record with its resource and scope, so an exporter that sends a
batch again (after a timeout, a 429, a 503) overwrites the same items instead of doubling.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
)
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from logpipe.core.event import MAX_ATTRIBUTE_KEY_CHARS, MAX_ATTRIBUTES, MAX_EVENT_BYTES
from logpipe.core.limits import Refused, parsed_json_bytes, too_many
from logpipe.errors import BodyError, EventError

PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
JSON_TYPE = "application/json"
CONTENT_TYPES = PROTOBUF_TYPES | {JSON_TYPE}

# What a refusal of a body that is not OTLP says: logpipe's own events have their route.
TO_INGEST = "send logpipe's own JSON events (an object, an array or NDJSON) to POST /ingest"
UNKNOWN_SERVICE = "unknown_service"
DEFAULT_LEVEL = "info"
DROPPED_KEY = "otel.dropped_attributes_count"
SCOPE_NAME_KEY = "otel.scope.name"
SCOPE_VERSION_KEY = "otel.scope.version"
MAX_SERVICE_CHARS = 64
# Attributes of one resource or scope that are looked at (the OTel SDKs' default count limit).
MAX_CONTAINER_ATTRIBUTES = 128

_LEVELS_BY_NUMBER = ("trace", "debug", "info", "warn", "error", "fatal")
# Severity texts seen in the wild (OTel short names, syslog, log4j, JUL, .NET, zap).
_LEVELS_BY_TEXT = {
    "trace": "trace",
    "finest": "trace",
    "finer": "trace",
    "verbose": "trace",
    "debug": "debug",
    "fine": "debug",
    "config": "debug",
    "info": "info",
    "information": "info",
    "informational": "info",
    "notice": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "err": "error",
    "severe": "error",
    "fatal": "fatal",
    "critical": "fatal",
    "crit": "fatal",
    "alert": "fatal",
    "emerg": "fatal",
    "emergency": "fatal",
    "panic": "fatal",
}
_NOT_SERVICE = re.compile(r"[^a-z0-9._-]+")
# DynamoDB numbers: magnitude 1e-130 to below 1e126; others travel as strings.
_DDB_MIN, _DDB_LIMIT = 1e-130, 1e126

Scalar = str | int | float | bool
RawEvent = dict[str, Any]

# HTTP status -> google.rpc.Code, for the Status body of refusals (clients only log it).
_RPC_CODES = {400: 3, 401: 16, 404: 5, 405: 12, 413: 3, 415: 3, 429: 8, 503: 14}


# --- request -> events ---------------------------------------------------------------------


def parse(
    body: bytes,
    content_type: str,
    cap: int = 1_000_000,
    hold: Callable[[int, str], None] | None = None,
    dropped: dict[int, int] | None = None,
) -> list[RawEvent | EventError]:
    """The raw events of an OTLP logs request; BodyError(400) when it does not decode.

    Records and attribute work are counted (Refused(413) past `cap` or MAX_ATTRIBUTE_WORK)
    and their cost passed to `hold` before they are built; `hold` raises to refuse the
    request. `dropped`: as `to_events` fills it.
    """
    hold = hold or _no_hold
    if content_type in PROTOBUF_TYPES:
        shape = scan_protobuf(body, cap)
        hold(shape.memory_bytes(len(body)), "the decoded request")
        return to_events(decode_request(body, content_type), dropped)
    hold(parsed_json_bytes(body) + PARSED_BYTES_PER_BYTE * len(body), "the decoded request")
    doc = _json_document(body)
    records = count_json_records(doc, cap)
    hold(BYTES_PER_RECORD * records, "the decoded request")
    return to_events(_from_json(doc), dropped)


def _no_hold(nbytes: int, what: str) -> None:
    pass


# --- counting before decoding ----------------------------------------------------------------

# What one record costs in Python once decoded and mapped (event dict, attribute dict of up
# to 64 keys, digests), besides its bytes; measured well under this with tracemalloc.
BYTES_PER_RECORD = 5 * 1024
# upb's parsed form of a protobuf request, per byte of the request.
PARSED_BYTES_PER_BYTE = 3


# Attribute pairs one request may make the mapping visit: each record's own, and what it
# inherits from its scope and resource (at most MAX_ATTRIBUTES once merged). 10,000 records
# of 100 attributes each fit; a few seconds of mapping at most.
MAX_ATTRIBUTE_WORK = 2_000_000


@dataclass(frozen=True)
class Shape:
    """What an OTLP protobuf request holds, read from the wire without decoding it."""

    records: int
    containers: int  # ResourceLogs and ScopeLogs
    # each record with the resource and scope attributes it inherits, as mapping copies them
    expanded_bytes: int
    attribute_work: int = 0  # attribute pairs the mapping will visit (`MAX_ATTRIBUTE_WORK`)

    def memory_bytes(self, body_bytes: int) -> int:
        """An upper estimate of the memory decoding and mapping this request takes."""
        encoded = min(self.expanded_bytes * 2, self.records * MAX_EVENT_BYTES)
        per_record = BYTES_PER_RECORD * (self.records + self.containers)
        return PARSED_BYTES_PER_BYTE * body_bytes + per_record + encoded


def inherited_work(records: int, resource_pairs: int, scope_pairs: int) -> int:
    """The attribute pairs merging a scope's and its resource's attributes costs its records."""
    capped = min(resource_pairs, MAX_CONTAINER_ATTRIBUTES)
    capped += min(scope_pairs, MAX_CONTAINER_ATTRIBUTES)
    return capped + records * min(capped, MAX_ATTRIBUTES)


def too_much_work(work: int) -> Refused:
    return Refused(
        413,
        f"body asks for more than {MAX_ATTRIBUTE_WORK} attribute merges "
        f"(each record's attributes and those it inherits from its scope and resource)",
        "too_many_attributes",
    )


def scan_protobuf(body: bytes, cap: int) -> Shape:
    """Count the log records of an ExportLogsServiceRequest from its wire format.

    Refused(413) once the records (or the resource/scope containers) pass `cap`, or the
    attribute work passes MAX_ATTRIBUTE_WORK, before any of them is built; BodyError(400)
    when the framing is broken.
    """
    scan = _Scan(cap)
    for number, start, end in _fields(body, 0, len(body)):
        if number != 1:  # resource_logs
            continue
        scan.resource(body, start, end)
        scan.add_container()
    # Each attribute of a record takes at least two bytes: a cheap bound of the records' own
    # attributes, counted one by one only when the bound passes the limit.
    if scan.work + scan.record_bytes // 2 > MAX_ATTRIBUTE_WORK:
        scan.add_work(_record_pairs(body))
    return Shape(scan.records, scan.containers, scan.expanded, scan.work)


class _Scan:
    """The running counts of `scan_protobuf`, each refused as soon as it passes its bound."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.records = self.containers = self.expanded = self.work = self.record_bytes = 0

    def add_container(self) -> None:
        self.containers += 1
        if self.containers > self.cap:
            raise too_many(f"more than {self.cap}", self.cap, "resource and scope entries")

    def add_work(self, pairs: int) -> None:
        self.work += pairs
        if self.work > MAX_ATTRIBUTE_WORK:
            raise too_much_work(self.work)

    def resource(self, body: bytes, start: int, end: int) -> None:
        """Count the ResourceLogs in body[start:end]."""
        resource = resource_pairs = 0
        for r_number, r_start, r_end in _fields(body, start, end):
            if r_number == 1:
                pairs, skipped = _attribute_pairs(body, r_start, r_end, 1)  # .attributes
                resource += r_end - r_start - skipped
                resource_pairs += pairs
            elif r_number == 2:  # scope_logs
                self.add_container()
                self.scope(body, r_start, r_end, resource, resource_pairs)

    def scope(self, body: bytes, start: int, end: int, resource: int, resource_pairs: int) -> None:
        """Count the ScopeLogs in body[start:end], under a resource of these bytes and pairs."""
        scope = scope_pairs = record_bytes = records = 0
        for s_number, s_start, s_end in _fields(body, start, end):
            if s_number == 1:
                pairs, skipped = _attribute_pairs(body, s_start, s_end, 3)  # .attributes
                scope += s_end - s_start - skipped
                scope_pairs += pairs
            elif s_number == 2:  # log_records
                records += 1
                record_bytes += s_end - s_start
                if self.records + records > self.cap:
                    raise too_many(f"more than {self.cap}", self.cap, "log records")
        self.records += records
        self.record_bytes += record_bytes
        self.expanded += record_bytes + records * (scope + resource)
        self.add_work(inherited_work(records, resource_pairs, scope_pairs))


def _record_pairs(body: bytes) -> int:
    """The attributes (top level) of every log record of a request whose framing is sound."""
    pairs = 0
    for resource_logs in _nested(body, 0, len(body), 1):
        for scope_logs in _nested(body, *resource_logs, 2):
            for record_start, record_end in _nested(body, *scope_logs, 2):
                pairs += _count(body, record_start, record_end, 6)  # LogRecord.attributes
    return pairs


def _nested(data: bytes, start: int, end: int, number: int) -> Iterator[tuple[int, int]]:
    return ((s, e) for field, s, e in _fields(data, start, end) if field == number)


def _attribute_pairs(data: bytes, start: int, end: int, number: int) -> tuple[int, int]:
    """How many attributes (field `number`) a resource or scope holds, and the bytes of those
    past the first MAX_CONTAINER_ATTRIBUTES (which the mapping never looks at)."""
    pairs = skipped = 0
    previous_end = start
    for field, _, field_end in _fields(data, start, end):
        if field == number:
            pairs += 1
            if pairs > MAX_CONTAINER_ATTRIBUTES:
                skipped += field_end - previous_end  # with its tag and length
        previous_end = field_end
    return pairs, skipped


def _count(data: bytes, start: int, end: int, number: int) -> int:
    """How many length-delimited fields `number` data[start:end] holds."""
    return sum(1 for field, _, _ in _fields(data, start, end) if field == number)


def _fields(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field in data[pos:end]."""
    while pos < end:
        key, pos = _varint(data, pos, end)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(data, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise BodyError(400, "body is not an OTLP protobuf logs request: truncated field")
            yield key >> 3, pos, pos + length
            pos += length
        else:
            raise BodyError(400, f"body is not an OTLP protobuf logs request: wire type {wire}")
    if pos > end:
        raise BodyError(400, "body is not an OTLP protobuf logs request: truncated field")


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise BodyError(400, "body is not an OTLP protobuf logs request: bad varint")


def count_json_records(doc: dict[str, Any], cap: int) -> int:
    """The log records of a parsed OTLP JSON document; Refused(413) past `cap`, or once the
    attribute work passes MAX_ATTRIBUTE_WORK."""
    count = work = 0
    for resource_logs in _children(doc, "resourceLogs", "resource_logs"):
        resource_pairs = _json_pairs(_child(resource_logs, "resource"))
        for scope_logs in _children(resource_logs, "scopeLogs", "scope_logs"):
            scope_pairs = _json_pairs(_child(scope_logs, "scope"))
            records = 0
            for record in _children(scope_logs, "logRecords", "log_records"):
                records += 1
                if count + records > cap:
                    raise too_many(f"more than {cap}", cap, "log records")
                work += _json_pairs(record)
            count += records
            work += inherited_work(records, resource_pairs, scope_pairs)
            if work > MAX_ATTRIBUTE_WORK:
                raise too_much_work(work)
    return count


def _child(parent: dict[str, Any], name: str) -> object:
    return parent.get(name)


def _json_pairs(holder: object) -> int:
    """How many attributes a JSON resource, scope or record lists."""
    if not isinstance(holder, dict):
        return 0
    pairs = holder.get("attributes")
    return len(pairs) if isinstance(pairs, list) else 0


def decode_request(body: bytes, content_type: str) -> Any:
    """An ExportLogsServiceRequest from protobuf or OTLP JSON bytes; BodyError(400) if bad."""
    if content_type in PROTOBUF_TYPES:
        request = ExportLogsServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise BodyError(400, f"body is not an OTLP protobuf logs request: {exc}") from None
        return request
    return _from_json(_json_document(body))


def _json_document(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise BodyError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BodyError(400, f"body must be an OTLP JSON object with resourceLogs; {TO_INGEST}")
    if doc and not doc.keys() & {"resourceLogs", "resource_logs"}:
        raise BodyError(400, f"body is not an OTLP logs request (no resourceLogs); {TO_INGEST}")
    return doc


def _from_json(doc: dict[str, Any]) -> Any:
    """The request an OTLP JSON document holds, as json_format.ParseDict would build it.

    The direct builder handles what exporters send; whatever it is unsure of goes to
    ParseDict on the untouched document, so refusals and edge cases stay ParseDict's.
    """
    try:
        return build_request(doc)
    except (Unsure, ValueError, TypeError, OverflowError):
        return _parse_dict(doc)


def _parse_dict(doc: dict[str, Any]) -> Any:
    request = ExportLogsServiceRequest()
    for record in _json_records(doc):
        for key in ("traceId", "trace_id", "spanId", "span_id"):
            if key in record:
                record[key] = _hex_as_base64(key, record[key])
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise BodyError(400, f"body is not an OTLP JSON logs request: {exc}") from None
    return request


def _json_records(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The log record objects of an OTLP JSON document (either spelling of the field names)."""
    for resource_logs in _children(doc, "resourceLogs", "resource_logs"):
        for scope_logs in _children(resource_logs, "scopeLogs", "scope_logs"):
            yield from _children(scope_logs, "logRecords", "log_records")


def _children(parent: object, *names: str) -> Iterator[dict[str, Any]]:
    # A wrong type is left in place for json_format, which names it in its error.
    if not isinstance(parent, dict):
        return
    for name in names:
        children = parent.get(name)
        if isinstance(children, list):
            yield from (child for child in children if isinstance(child, dict))


def _hex_as_base64(name: str, value: object) -> object:
    """OTLP JSON carries ids as hex where proto3 JSON expects base64 (OTLP spec, JSON)."""
    if not isinstance(value, str):
        return value
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError:
        raise BodyError(400, f"{name} {value[:40]!r} is not a hex string") from None


# --- OTLP JSON -> request, without json_format -------------------------------------------
# json_format.ParseDict walks descriptors in pure Python (~65 µs per typical record); this
# builder sets the same fields through the message API. It takes each field in either
# spelling (lowerCamelCase or the proto name), skips unknown fields and nulls as ParseDict
# does with ignore_unknown_fields, and raises Unsure (or lets the message API raise
# ValueError / TypeError) for anything else: a field given twice, a value of another JSON
# type than exporters send, a field it does not handle, nesting past MAX_BUILT_DEPTH.


class Unsure(Exception):
    """The builder leaves this document to json_format.ParseDict."""


# AnyValue levels the builder follows (ParseDict allows about 47 before refusing).
MAX_BUILT_DEPTH = 20
_OTHER = -1  # a field of the message that the builder leaves to ParseDict
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_SEVERITY_NUMBERS = {
    value.name: value.number
    for value in LogRecord.DESCRIPTOR.fields_by_name["severity_number"].enum_type.values
}


def _field_table(message: Any, handled: tuple[str, ...]) -> dict[str, int]:
    """Both spellings of each field of `message` -> its index in `handled`, else _OTHER."""
    table: dict[str, int] = {}
    for field in message.DESCRIPTOR.fields:
        index = handled.index(field.name) if field.name in handled else _OTHER
        table[field.name] = table[field.json_name] = index
    return table


_REQUEST = _field_table(ExportLogsServiceRequest, ("resource_logs",))
_RESOURCE_LOGS = _field_table(ResourceLogs, ("resource", "scope_logs", "schema_url"))
_SCOPE_LOGS = _field_table(ScopeLogs, ("scope", "log_records", "schema_url"))
_RESOURCE = _field_table(Resource, ("attributes", "dropped_attributes_count"))
_SCOPE = _field_table(
    InstrumentationScope, ("name", "version", "attributes", "dropped_attributes_count")
)
_RECORD_FIELDS = (
    "time_unix_nano",
    "observed_time_unix_nano",
    "severity_number",
    "severity_text",
    "body",
    "attributes",
    "dropped_attributes_count",
    "flags",
    "trace_id",
    "span_id",
    "event_name",
)
_RECORD = _field_table(LogRecord, _RECORD_FIELDS)
_KEY_VALUE = _field_table(KeyValue, ("key", "value"))
_ANY_FIELDS = (
    "string_value",
    "bool_value",
    "int_value",
    "double_value",
    "array_value",
    "kvlist_value",
    "bytes_value",
)
_ANY = _field_table(AnyValue, _ANY_FIELDS)
_VALUES = _field_table(ArrayValue, ("values",))  # KeyValueList's one field has the same names


def build_request(doc: object) -> Any:
    """The ExportLogsServiceRequest of an OTLP JSON document; Unsure when unsure."""
    request = ExportLogsServiceRequest()
    for _, value in _fields_of(doc, _REQUEST):
        for item in _items(value):
            _resource_logs(item, request.resource_logs.add())
    return request


def _fields_of(js: object, table: dict[str, int]) -> list[tuple[int, Any]]:
    """(field index, value) of each known, non-null field of a JSON object, each field once."""
    if type(js) is not dict:
        raise Unsure
    fields = []
    seen = 0
    for key, value in js.items():
        index = table.get(key)
        if index is None:
            if key[:1] == "[":  # ParseDict's extension syntax, refused even when unknown
                raise Unsure
            continue
        bit = 1 << (index + 1)
        if index == _OTHER or seen & bit:
            raise Unsure
        seen |= bit
        if value is not None:
            fields.append((index, value))
    return fields


def _items(value: object) -> list[Any]:
    if type(value) is not list:
        raise Unsure
    return value


def _resource_logs(js: object, target: Any) -> None:
    for index, value in _fields_of(js, _RESOURCE_LOGS):
        if index == 0:
            resource = target.resource
            resource.SetInParent()
            for field, item in _fields_of(value, _RESOURCE):
                if field == 0:
                    _key_values(item, resource.attributes, 0)
                else:
                    resource.dropped_attributes_count = _integer(item)
        elif index == 1:
            for item in _items(value):
                _scope_logs(item, target.scope_logs.add())
        else:
            target.schema_url = value


def _scope_logs(js: object, target: Any) -> None:
    for index, value in _fields_of(js, _SCOPE_LOGS):
        if index == 0:
            scope = target.scope
            scope.SetInParent()
            for field, item in _fields_of(value, _SCOPE):
                if field == 0:
                    scope.name = item
                elif field == 1:
                    scope.version = item
                elif field == 2:
                    _key_values(item, scope.attributes, 0)
                else:
                    scope.dropped_attributes_count = _integer(item)
        elif index == 1:
            records = target.log_records
            for item in _items(value):
                _record(item, records.add())
        else:
            target.schema_url = value


def _record(js: object, record: Any) -> None:
    for index, value in _fields_of(js, _RECORD):
        if index == 4:
            _any_value(value, record.body, 0)
        elif index == 5:
            _key_values(value, record.attributes, 0)
        elif index == 2:
            record.severity_number = (
                _SEVERITY_NUMBERS[value] if value in _SEVERITY_NUMBERS else _enum_number(value)
            )
        elif index == 8 or index == 9:
            if type(value) is not str:
                raise Unsure
            # A bad hex id is refused by the fallback, with the same words as before.
            setattr(record, _RECORD_FIELDS[index], bytes.fromhex(value))
        elif index == 3 or index == 10:
            setattr(record, _RECORD_FIELDS[index], value)
        else:  # the integers: times, dropped_attributes_count, flags
            setattr(record, _RECORD_FIELDS[index], _integer(value))


def _key_values(js: object, target: Any, depth: int) -> None:
    for item in _items(js):
        pair = target.add()
        if type(item) is dict and len(item) == 2 and "key" in item and "value" in item:
            key = item["key"]  # the usual shape, taken without the generic walk
            if key is not None:
                pair.key = key
            value = item["value"]
            if value is not None:
                _any_value(value, pair.value, depth)
            continue
        for index, value in _fields_of(item, _KEY_VALUE):
            if index == 0:
                pair.key = value
            else:
                _any_value(value, pair.value, depth)


def _any_value(js: object, target: Any, depth: int) -> None:
    if depth > MAX_BUILT_DEPTH or type(js) is not dict:
        raise Unsure
    if len(js) != 1:  # a oneof: two fields (even with a null) are left to ParseDict
        if any(key in _ANY or key[:1] == "[" for key in js):
            raise Unsure
        target.SetInParent()
        return
    [(key, value)] = js.items()
    index = _ANY.get(key)
    if index is None or value is None:
        if key[:1] == "[":
            raise Unsure
        target.SetInParent()
    elif index == 0:
        target.string_value = value
    elif index == 2:
        target.int_value = _integer(value)
    else:
        _set_any_value(index, value, target, depth)


def _set_any_value(index: int, value: object, target: Any, depth: int) -> None:
    if index == 3:
        target.double_value = _double(value)
    elif index == 1:
        if type(value) is not bool:
            raise Unsure
        target.bool_value = value
    elif index == 6:
        target.bytes_value = _base64(value)
    elif index == 4 or index == 5:
        _nested_value(index == 4, value, target, depth + 1)
    else:
        raise Unsure


def _nested_value(is_array: bool, js: object, target: Any, depth: int) -> None:
    """An arrayValue (AnyValues) or kvlistValue (KeyValues) of the AnyValue `target`."""
    nested = target.array_value if is_array else target.kvlist_value
    nested.SetInParent()
    for _, values in _fields_of(js, _VALUES):
        if is_array:
            for item in _items(values):
                _any_value(item, nested.values.add(), depth)
        else:
            _key_values(values, nested.values, depth)


def _integer(value: object) -> int:
    """An integer field's value: a JSON integer, or a string of decimal digits (int64 style)."""
    if type(value) is int:
        return value
    if type(value) is str and value.isascii():
        digits = value[1:] if value[:1] == "-" else value
        if digits.isdigit():
            return int(value)
    raise Unsure


def _enum_number(value: object) -> int:
    if type(value) is int:
        return value
    raise Unsure


def _double(value: object) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    if type(value) is str and value in _SPECIAL_DOUBLES:
        return _SPECIAL_DOUBLES[value]
    raise Unsure


def _base64(value: object) -> bytes:
    # proto3 JSON bytes: base64, either alphabet, padding optional (as json_format reads it).
    if type(value) is not str:
        raise Unsure
    encoded = value.encode()
    return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))


def to_events(request: Any, dropped: dict[int, int] | None = None) -> list[RawEvent | EventError]:
    """One raw event (or the EventError that keeps it out) per log record, in request order.

    `dropped` receives, by record index, how many attributes the mapping left out of that
    record (keys over MAX_ATTRIBUTE_KEY_CHARS, or past MAX_ATTRIBUTES), for the answer.
    The resource's and each scope's attributes are flattened and merged once, not per record.
    """
    events: list[RawEvent | EventError] = []
    seen: Counter[str] = Counter()
    for resource_logs in request.resource_logs:
        resource = resource_logs.resource
        service, resource_attrs = _resource_attributes(resource.attributes)
        resource_digest = hashlib.blake2b(resource.SerializeToString(), digest_size=16).digest()
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            scope_attrs = _container_attributes(scope.attributes)
            for name, key in ((scope.name, SCOPE_NAME_KEY), (scope.version, SCOPE_VERSION_KEY)):
                if name:
                    scope_attrs.values[key] = name
            inherited = Attributes()
            inherited.merge(scope_attrs)
            inherited.merge(resource_attrs)
            digest = hashlib.blake2b(resource_digest, digest_size=16)
            digest.update(scope.SerializeToString())
            for record in scope_logs.log_records:
                index = len(events)
                try:
                    event, lost = to_event(record, service, inherited)
                except EventError as exc:
                    events.append(exc)
                    continue
                if lost and dropped is not None:
                    dropped[index] = lost
                record_digest = digest.copy()
                record_digest.update(record.SerializeToString())
                event["id"] = _unique(record_digest.hexdigest(), seen)
                events.append(event)
    return events


def _unique(digest: str, seen: Counter[str]) -> str:
    # Identical records in one request stay distinct, numbered in order (stable on a retry).
    seen[digest] += 1
    return digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"


def to_event(record: Any, service: str, inherited: Attributes) -> tuple[RawEvent, int]:
    """One log record as a raw event of the /ingest schema (without its id), and how many of
    its attributes were left out; `inherited`: its scope's and resource's, merged."""
    event: RawEvent = {
        "service": service,
        "level": level(int(record.severity_number), str(record.severity_text)),
        "message": message(record.body),
    }
    nanos = int(record.time_unix_nano) or int(record.observed_time_unix_nano)
    if nanos:
        event["timestamp"] = nanos // 1_000_000
    for name, value, size in (("trace_id", record.trace_id, 16), ("span_id", record.span_id, 8)):
        if any(value):  # all zero bytes is the data model's "no id"
            if len(value) != size:
                raise EventError(
                    name, f"must be {size} bytes ({2 * size} hex digits), got {len(value)}"
                )
            event[name] = bytes(value).hex()
    attributes = Attributes()
    attributes.add_pairs(record.attributes)
    if record.event_name:
        attributes.put("event.name", str(record.event_name))
    attributes.merge(inherited)
    values = attributes.finish(int(record.dropped_attributes_count))
    if values:
        event["attributes"] = values
    return event, attributes.dropped


def _resource_attributes(pairs: Any) -> tuple[str, Attributes]:
    """The service a resource names, and the rest of its attributes."""
    attributes = _container_attributes(pairs)
    return service_name(attributes.values.pop("service.name", None)), attributes


def _container_attributes(pairs: Any) -> Attributes:
    """A resource's or scope's attributes: the first MAX_CONTAINER_ATTRIBUTES, flattened."""
    attributes = Attributes(room=MAX_CONTAINER_ATTRIBUTES)
    if len(pairs) > MAX_CONTAINER_ATTRIBUTES:
        attributes.add_pairs(itertools.islice(pairs, MAX_CONTAINER_ATTRIBUTES))
        attributes.dropped += len(pairs) - MAX_CONTAINER_ATTRIBUTES
    else:
        attributes.add_pairs(pairs)
    return attributes


# --- the mapping rules ---------------------------------------------------------------------


def service_name(value: object) -> str:
    """`service.name` folded to the schema: a-z 0-9 . _ -, at most 64 characters."""
    if not isinstance(value, str):
        return UNKNOWN_SERVICE
    ascii_only = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    folded = _NOT_SERVICE.sub("-", ascii_only.lower()).strip("-")
    return folded[:MAX_SERVICE_CHARS].rstrip("-") or UNKNOWN_SERVICE


def level(severity_number: int, severity_text: str) -> str:
    """The schema level of an OTel severity: the number when in 1-24, else the text."""
    if 1 <= severity_number <= 24:
        return _LEVELS_BY_NUMBER[(severity_number - 1) // 4]
    text = severity_text.strip().lower().rstrip("1234")
    return _LEVELS_BY_TEXT.get(text, DEFAULT_LEVEL)


def message(body: Any) -> str:
    """The body as text: a string as is, bytes as base64, anything else as compact JSON."""
    kind = body.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return str(body.string_value)
    if kind == "bytes_value":
        return base64.b64encode(body.bytes_value).decode()
    try:
        return orjson.dumps(plain(body)).decode()
    except orjson.JSONEncodeError:
        raise EventError("message", "body is nested too deeply to encode as JSON") from None


def plain(value: Any) -> Any:
    """An AnyValue as a JSON-ready Python value (bytes as base64, NaN/Inf as strings)."""
    kind = value.WhichOneof("value")
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [plain(item) for item in value.array_value.values]
    if kind == "double_value":
        number = float(value.double_value)
        return number if math.isfinite(number) else str(number)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind is None:
        return None
    return getattr(value, kind)


class Attributes:
    """Flat attributes as the mapping keeps them: at most `room` keys, each at most
    MAX_ATTRIBUTE_KEY_CHARS characters. What does not fit is counted in `dropped` as the
    walk goes, and never built: a dotted key is only made once its length is known to fit.
    """

    def __init__(self, room: int = MAX_ATTRIBUTES) -> None:
        self.values: dict[str, Scalar] = {}
        self.dropped = 0
        self.room = room

    def add_pairs(self, pairs: Iterable[Any], prefix: str = "") -> None:
        """KeyValues: maps to dotted keys, arrays as JSON, empty keys and values left out."""
        values = self.values
        for pair in pairs:
            key = pair.key
            if not key:
                continue
            value = pair.value
            kind = value.WhichOneof("value")
            if kind is None:
                continue
            if len(prefix) + len(key) > MAX_ATTRIBUTE_KEY_CHARS or len(values) >= self.room:
                self.dropped += _leaves(value, kind)
                continue
            if prefix:
                key = prefix + key
            if kind == "string_value":  # the usual kind, read without _scalar
                values[key] = value.string_value
            elif kind == "kvlist_value":
                self.add_pairs(value.kvlist_value.values, f"{key}.")
            else:
                values[key] = _scalar(value, kind)

    def put(self, key: str, value: Scalar) -> None:
        if key in self.values or len(self.values) < self.room:
            self.values[key] = value
        else:
            self.dropped += 1

    def merge(self, other: Attributes) -> None:
        """`other`'s keys that are not here yet, while there is room; its drops count here."""
        self.dropped += other.dropped
        values = self.values
        for key, value in other.values.items():
            if key in values:
                continue
            if len(values) >= self.room:
                self.dropped += 1
            else:
                values[key] = value

    def finish(self, dropped_upstream: int = 0) -> dict[str, Scalar]:
        """The values, with `otel.dropped_attributes_count` (in the last of MAX_ATTRIBUTES
        slots) saying how many were lost here and upstream, when any were."""
        values = self.values
        if (self.dropped or dropped_upstream) and len(values) >= MAX_ATTRIBUTES:
            while len(values) >= MAX_ATTRIBUTES:
                values.popitem()
                self.dropped += 1
        if self.dropped or dropped_upstream:
            values[DROPPED_KEY] = self.dropped + dropped_upstream
        return values


def _leaves(value: Any, kind: str) -> int:
    """How many attributes a value left out would have become (a map: its non-empty leaves)."""
    if kind != "kvlist_value":
        return 1
    count = 0
    lists = [value.kvlist_value.values]
    while lists:
        for pair in lists.pop():
            child = pair.value
            child_kind = child.WhichOneof("value")
            if child_kind is None or not pair.key:
                continue
            if child_kind == "kvlist_value":
                lists.append(child.kvlist_value.values)
            else:
                count += 1
    return count


def _scalar(value: Any, kind: str) -> Scalar:
    if kind == "string_value":
        return str(value.string_value)
    if kind == "bool_value":
        return bool(value.bool_value)
    if kind == "int_value":
        return int(value.int_value)
    if kind == "double_value":
        number = float(value.double_value)
        storable = math.isfinite(number) and (number == 0 or _DDB_MIN <= abs(number) < _DDB_LIMIT)
        return number if storable else repr(number)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    try:
        return orjson.dumps(plain(value)).decode()
    except orjson.JSONEncodeError:
        return "[nested too deeply]"


# --- answers -------------------------------------------------------------------------------


def encode_response(rejected: int, error: str, as_json: bool) -> bytes:
    """An ExportLogsServiceResponse; `partial_success` set when records were rejected, or
    (with `rejected` 0) when `error` warns of something else (OTLP allows both)."""
    response = ExportLogsServiceResponse()
    if rejected or error:
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = error
    if as_json:
        return orjson.dumps(json_format.MessageToDict(response))
    return bytes(response.SerializeToString())


def rejection_summary(rejected: list[dict[str, Any]], total: int, shown: int = 5) -> str:
    """The partial_success error message: how many were rejected and why, first few by index."""
    reasons = "; ".join(f"record {r['index']}: {r['error']}" for r in rejected[:shown])
    more = f"; and {len(rejected) - shown} more" if len(rejected) > shown else ""
    return f"{len(rejected)} of {total} log records rejected: {reasons}{more}"


def dropped_summary(dropped: dict[int, int], total: int, shown: int = 5) -> str:
    """The partial_success warning for records stored without some of their attributes."""
    first = sorted(dropped.items())[:shown]
    counts = "; ".join(f"record {index}: {count} dropped" for index, count in first)
    more = f"; and {len(dropped) - shown} more records" if len(dropped) > shown else ""
    return (
        f"{len(dropped)} of {total} log records stored without some attributes (keys over "
        f"{MAX_ATTRIBUTE_KEY_CHARS} characters, or past {MAX_ATTRIBUTES} per record; "
        f"otel.dropped_attributes_count says how many): {counts}{more}"
    )


def encode_status(http_status: int, error: str, as_json: bool) -> bytes:
    """A google.rpc.Status body, the OTLP/HTTP answer to every 4xx and 5xx."""
    code = _RPC_CODES.get(http_status, 2)  # 2 = UNKNOWN
    if as_json:
        return orjson.dumps({"code": code, "message": error})
    return bytes(_STATUS(code=code, message=error).SerializeToString())


def _status_class() -> Any:
    """google.rpc.Status (code, message) built from its descriptor in a private pool.

    googleapis-common-protos is not a runtime dependency, and a private pool cannot clash
    with its copy when both are loaded. `details` (field 3) is never sent, so it is left out.
    """
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="logpipe/google_rpc_status.proto", package="google.rpc", syntax="proto3"
    )
    status = proto.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


_STATUS = _status_class()
