"""OTLP/HTTP logs: request bytes to raw events of the /ingest schema, and the answers. No I/O.

The mapping (OpenTelemetry log data model -> logpipe event):
  resource `service.name`       -> service (folded to the schema's charset; "unknown_service")
  severity_number / _text       -> level (number 1-24 first, then the text, else "info")
  body                          -> message (a string as is, bytes as base64, the rest as JSON)
  time_unix_nano                -> timestamp (observed_time_unix_nano when unset)
  trace_id / span_id            -> hex
  record > scope > resource attributes -> attributes, nested maps flattened to dotted keys
The id is a digest of the record with its resource and scope, so an exporter that sends a
batch again (after a timeout, a 429, a 503) overwrites the same items instead of doubling.
"""

from __future__ import annotations

import base64
import hashlib
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

from logpipe.core.limits import parsed_json_bytes, too_many
from logpipe.core.models import MAX_ATTRIBUTE_KEY_CHARS, MAX_ATTRIBUTES, MAX_EVENT_BYTES
from logpipe.errors import BodyError, EventError

PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
JSON_TYPE = "application/json"
CONTENT_TYPES = PROTOBUF_TYPES | {JSON_TYPE}

UNKNOWN_SERVICE = "unknown_service"
DEFAULT_LEVEL = "info"
DROPPED_KEY = "otel.dropped_attributes_count"
SCOPE_NAME_KEY = "otel.scope.name"
SCOPE_VERSION_KEY = "otel.scope.version"
MAX_SERVICE_CHARS = 64

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
) -> list[RawEvent | EventError]:
    """The raw events of an OTLP logs request; BodyError(400) when it does not decode.

    Records are counted (Refused(413) past `cap`) and their cost passed to `hold` before
    they are built; `hold` raises to refuse the request.
    """
    hold = hold or _no_hold
    if content_type in PROTOBUF_TYPES:
        shape = scan_protobuf(body, cap)
        hold(shape.memory_bytes(len(body)), "the decoded request")
        return to_events(decode_request(body, content_type))
    hold(parsed_json_bytes(body) + PARSED_BYTES_PER_BYTE * len(body), "the decoded request")
    doc = _json_document(body)
    records = count_json_records(doc, cap)
    hold(BYTES_PER_RECORD * records, "the decoded request")
    return to_events(_from_json(doc))


def _no_hold(nbytes: int, what: str) -> None:
    pass


# --- counting before decoding ----------------------------------------------------------------

# What one record costs in Python once decoded and mapped (event dict, attribute dict of up
# to 64 keys, digests), besides its bytes; measured well under this with tracemalloc.
BYTES_PER_RECORD = 5 * 1024
# upb's parsed form of a protobuf request, per byte of the request.
PARSED_BYTES_PER_BYTE = 3


@dataclass(frozen=True)
class Shape:
    """What an OTLP protobuf request holds, read from the wire without decoding it."""

    records: int
    containers: int  # ResourceLogs and ScopeLogs
    expanded_bytes: int  # each record with its resource and scope, as mapping copies them

    def memory_bytes(self, body_bytes: int) -> int:
        """An upper estimate of the memory decoding and mapping this request takes."""
        encoded = min(self.expanded_bytes * 2, self.records * MAX_EVENT_BYTES)
        per_record = BYTES_PER_RECORD * (self.records + self.containers)
        return PARSED_BYTES_PER_BYTE * body_bytes + per_record + encoded


def scan_protobuf(body: bytes, cap: int) -> Shape:
    """Count the log records of an ExportLogsServiceRequest from its wire format.

    Refused(413) once the records (or the resource/scope containers) pass `cap`, before any
    of them is built; BodyError(400) when the framing is broken.
    """
    records = containers = expanded = 0
    for number, start, end in _fields(body, 0, len(body)):
        if number != 1:  # resource_logs
            continue
        records, containers, added = _scan_resource(body, start, end, cap, records, containers)
        expanded += added
        containers += 1
        if containers > cap:
            raise too_many(f"more than {cap}", cap, "resource and scope entries")
    return Shape(records, containers, expanded)


def _scan_resource(
    body: bytes, start: int, end: int, cap: int, records: int, containers: int
) -> tuple[int, int, int]:
    """The records and containers counted so far with those of the ResourceLogs in
    body[start:end], and its expanded bytes; Refused(413) once either passes `cap`."""
    expanded = resource = 0
    for r_number, r_start, r_end in _fields(body, start, end):
        if r_number == 1:
            resource += r_end - r_start
        elif r_number == 2:  # scope_logs
            containers += 1
            if containers > cap:
                raise too_many(f"more than {cap}", cap, "resource and scope entries")
            scope = 0
            record_bytes = 0
            scope_records = 0
            for s_number, s_start, s_end in _fields(body, r_start, r_end):
                if s_number == 1:
                    scope += s_end - s_start
                elif s_number == 2:  # log_records
                    scope_records += 1
                    record_bytes += s_end - s_start
                    if records + scope_records > cap:
                        raise too_many(f"more than {cap}", cap, "log records")
            records += scope_records
            expanded += record_bytes + scope_records * (scope + resource)
    return records, containers, expanded


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
    """The log records of a parsed OTLP JSON document; Refused(413) past `cap`."""
    count = 0
    for _ in _json_records(doc):
        count += 1
        if count > cap:
            raise too_many(f"more than {cap}", cap, "log records")
    return count


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
        raise BodyError(400, "body must be an OTLP JSON object with resourceLogs")
    return doc


def _from_json(doc: dict[str, Any]) -> Any:
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


def to_events(request: Any) -> list[RawEvent | EventError]:
    """One raw event (or the EventError that keeps it out) per log record, in request order."""
    events: list[RawEvent | EventError] = []
    seen: Counter[str] = Counter()
    for resource_logs in request.resource_logs:
        resource = resource_logs.resource
        resource_attrs = flatten(resource.attributes)
        service = service_name(resource_attrs.pop("service.name", None))
        resource_digest = hashlib.blake2b(resource.SerializeToString(), digest_size=16).digest()
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            scope_attrs = flatten(scope.attributes)
            if scope.name:
                scope_attrs[SCOPE_NAME_KEY] = scope.name
            if scope.version:
                scope_attrs[SCOPE_VERSION_KEY] = scope.version
            digest = hashlib.blake2b(resource_digest, digest_size=16)
            digest.update(scope.SerializeToString())
            for record in scope_logs.log_records:
                try:
                    event = to_event(record, service, scope_attrs, resource_attrs)
                except EventError as exc:
                    events.append(exc)
                    continue
                record_digest = digest.copy()
                record_digest.update(record.SerializeToString())
                event["id"] = _unique(record_digest.hexdigest(), seen)
                events.append(event)
    return events


def _unique(digest: str, seen: Counter[str]) -> str:
    # Identical records in one request stay distinct, numbered in order (stable on a retry).
    seen[digest] += 1
    return digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"


def to_event(
    record: Any, service: str, scope_attrs: dict[str, Scalar], resource_attrs: dict[str, Scalar]
) -> RawEvent:
    """One log record as a raw event of the /ingest schema (without its id)."""
    event: RawEvent = {
        "service": service,
        "level": level(int(record.severity_number), str(record.severity_text)),
        "message": message(record.body),
    }
    nanos = int(record.time_unix_nano) or int(record.observed_time_unix_nano)
    if nanos:
        event["timestamp"] = nanos // 1_000_000
    for name, value in (("trace_id", record.trace_id), ("span_id", record.span_id)):
        if any(value):  # all zero bytes is the data model's "no id"
            event[name] = bytes(value).hex()
    record_attrs = flatten(record.attributes)
    if record.event_name:
        record_attrs["event.name"] = str(record.event_name)
    attributes = merge_attributes(
        (record_attrs, scope_attrs, resource_attrs), int(record.dropped_attributes_count)
    )
    if attributes:
        event["attributes"] = attributes
    return event


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


def flatten(pairs: Iterable[Any], prefix: str = "") -> dict[str, Scalar]:
    """KeyValues as flat attributes: maps to dotted keys, arrays as JSON, empty values left out."""
    flat: dict[str, Scalar] = {}
    for pair in pairs:
        if not pair.key:
            continue
        key = f"{prefix}{pair.key}"
        kind = pair.value.WhichOneof("value")
        if kind == "kvlist_value":
            flat.update(flatten(pair.value.kvlist_value.values, f"{key}."))
        elif kind is not None:
            flat[key] = _scalar(pair.value, kind)
    return flat


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


def merge_attributes(
    sources: Iterable[dict[str, Scalar]], dropped_upstream: int = 0
) -> dict[str, Scalar]:
    """Attributes of several sources, the first winning a key, within the schema's limits.

    Keys too long for the schema are left out; past MAX_ATTRIBUTES keys the rest is left
    out too, and `otel.dropped_attributes_count` (in the last slot) says how many were lost.
    """
    merged: dict[str, Scalar] = {}
    dropped = dropped_upstream
    for source in sources:
        for key, value in source.items():
            if key in merged:
                continue
            if len(key) > MAX_ATTRIBUTE_KEY_CHARS:
                dropped += 1
                continue
            merged[key] = value
    if len(merged) > MAX_ATTRIBUTES or (dropped and len(merged) == MAX_ATTRIBUTES):
        kept = list(merged.items())[: MAX_ATTRIBUTES - 1]
        dropped += len(merged) - len(kept)
        merged = dict(kept)
    if dropped:
        merged[DROPPED_KEY] = dropped
    return merged


# --- answers -------------------------------------------------------------------------------


def encode_response(rejected: int, error: str, as_json: bool) -> bytes:
    """An ExportLogsServiceResponse; `partial_success` set when records were rejected."""
    response = ExportLogsServiceResponse()
    if rejected:
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
