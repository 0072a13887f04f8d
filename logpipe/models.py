"""Events: validation, normalisation, ids, the SQS envelope and the stored item. No I/O."""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from logpipe.aliases import fold
from logpipe.errors import EventError, LogpipeError

LEVELS = {
    "trace": "trace",
    "debug": "debug",
    "info": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "fatal": "fatal",
}
MAX_MESSAGE_BYTES = 16 * 1024
MAX_EVENT_BYTES = 32 * 1024
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY_CHARS = 128
MAX_ID_CHARS = 128
MAX_TIMESTAMP_MS = 10**13  # keeps the zero-padded sort key at 13 digits (year 2286)
ENVELOPE_VERSION = 1

_SERVICE = re.compile(r"[a-z0-9._-]{1,64}")
_HEX = re.compile(r"[0-9a-f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# DynamoDB numbers: 38 significant digits, magnitude 1e-130 to below 1e126.
_DDB_MIN, _DDB_LIMIT = 1e-130, 1e126

Event = dict[str, Any]
Item = dict[str, Any]


class EnvelopeError(LogpipeError):
    """An SQS message body that is not a logpipe envelope."""


def new_id(now_ms: int) -> str:
    """A 26-character id that sorts by creation time: 48 bits of ms, 80 random bits."""
    value = (now_ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def normalise(raw: object, now_ms: int, default_service: str | None = None) -> Event:
    """Validate one input event and return it in the envelope's form (timestamps as epoch ms).

    Shippers' aliases and extra fields are folded first (`aliases.fold`); `default_service`
    stands in for a missing `service` (the request's `?service=` or `X-Logpipe-Service`).
    """
    if not isinstance(raw, dict):
        raise EventError("", "event must be a JSON object")
    raw = fold(raw, default_service)
    event: Event = {
        "id": _id(raw.get("id"), now_ms),
        "service": _service(raw.get("service")),
        "level": _level(raw.get("level")),
        "message": _message(raw.get("message")),
        "timestamp": _timestamp(raw.get("timestamp"), now_ms),
        "ingested_at": now_ms,
    }
    for name, max_chars in (("trace_id", 32), ("span_id", 16)):
        value = raw.get(name)
        if value is not None:
            event[name] = _hex(name, value, max_chars)
    attributes = raw.get("attributes")
    if attributes is not None:
        event["attributes"] = _attributes(attributes)
    return event


def encode_event(event: Event) -> bytes:
    """The event as compact JSON, refused when it is too large to store."""
    data = orjson.dumps(event)
    # SQS refuses the noncharacters U+FFFE and U+FFFF; as JSON escapes they pass unchanged.
    if b"\xef\xbf" in data:
        data = data.replace(b"\xef\xbf\xbe", b"\\ufffe").replace(b"\xef\xbf\xbf", b"\\uffff")
    if len(data) > MAX_EVENT_BYTES:
        raise EventError("", f"event is {len(data)} bytes encoded; the limit is {MAX_EVENT_BYTES}")
    return data


def _id(value: object, now_ms: int) -> str:
    if value is None:
        return new_id(now_ms)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise EventError("id", f"must be a string of 1-{MAX_ID_CHARS} characters")
    if _CONTROL.search(value):
        raise EventError("id", "must not contain control characters")
    return value


def _service(value: object) -> str:
    if value is None:
        raise EventError("service", "is required (in the event, ?service= or X-Logpipe-Service)")
    if not isinstance(value, str):
        raise EventError("service", "must be a string")
    service = value.lower()
    if not _SERVICE.fullmatch(service):
        raise EventError("service", "must be 1-64 characters of a-z 0-9 . _ -")
    return service


def _level(value: object) -> str:
    if value is None:
        return "info"
    level = LEVELS.get(value.lower()) if isinstance(value, str) else None
    if level is None:
        raise EventError(
            "level", "must be one of trace, debug, info, warn, error, fatal (or an alias)"
        )
    return level


def _message(value: object) -> str:
    if value is None:
        raise EventError("message", "is required")
    if not isinstance(value, str):
        raise EventError("message", "must be a string")
    if len(value) * 4 > MAX_MESSAGE_BYTES:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_MESSAGE_BYTES:
            raise EventError("message", f"is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
    return value


def _timestamp(value: object, now_ms: int) -> int:
    if value is None:
        return now_ms
    if isinstance(value, bool):
        raise EventError("timestamp", "must be an RFC 3339 string or epoch milliseconds")
    if isinstance(value, int | float):
        if not (isinstance(value, int) or math.isfinite(value)):
            raise EventError("timestamp", "must be a finite number of epoch milliseconds")
        ms = int(value)
    elif isinstance(value, str):
        try:
            # RFC 3339 allows a lower-case t and z, which fromisoformat does not.
            parsed = datetime.fromisoformat(value.upper())
        except ValueError:
            raise EventError("timestamp", "is not an RFC 3339 date-time") from None
        if parsed.tzinfo is None:
            raise EventError("timestamp", "needs a time zone offset (e.g. Z or +02:00)")
        ms = (parsed - EPOCH) // timedelta(milliseconds=1)
    else:
        raise EventError("timestamp", "must be an RFC 3339 string or epoch milliseconds")
    if not 0 <= ms < MAX_TIMESTAMP_MS:
        raise EventError("timestamp", "must lie between 1970 and 2286")
    return ms


def _hex(name: str, value: object, max_chars: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise EventError(name, f"must be a hex string of 1-{max_chars} characters")
    lowered = value.lower()
    if not _HEX.fullmatch(lowered):
        raise EventError(name, "must contain only hex digits")
    return lowered


def _attributes(value: object) -> dict[str, str | int | float | bool]:
    if not isinstance(value, dict):
        raise EventError("attributes", "must be a flat JSON object")
    if len(value) > MAX_ATTRIBUTES:
        raise EventError("attributes", f"has {len(value)} keys; the limit is {MAX_ATTRIBUTES}")
    for key, item in value.items():
        if not 1 <= len(key) <= MAX_ATTRIBUTE_KEY_CHARS:
            raise EventError("attributes", f"keys must be 1-{MAX_ATTRIBUTE_KEY_CHARS} characters")
        if isinstance(item, str | bool):
            continue
        if isinstance(item, int):
            if abs(item) >= 10**38:
                raise EventError(f"attributes.{key}", "integer has more than 38 digits")
        elif isinstance(item, float):
            if not math.isfinite(item) or (item != 0 and not _DDB_MIN <= abs(item) < _DDB_LIMIT):
                raise EventError(f"attributes.{key}", "number is out of range")
        else:
            raise EventError(f"attributes.{key}", "must be a string, number or boolean")
    return value


# --- SQS envelope ----------------------------------------------------------------------------

ENVELOPE_HEAD = b'{"v":1,"events":['
ENVELOPE_TAIL = b"]}"
ENVELOPE_OVERHEAD = len(ENVELOPE_HEAD) + len(ENVELOPE_TAIL)


def pack_envelope(encoded_events: list[bytes]) -> str:
    """One SQS message body holding many events encoded by `encode_event`."""
    return (ENVELOPE_HEAD + b",".join(encoded_events) + ENVELOPE_TAIL).decode("utf-8")


def envelope_size(encoded_events: list[bytes]) -> int:
    """Bytes of the envelope `pack_envelope` would build."""
    return ENVELOPE_OVERHEAD + sum(len(e) for e in encoded_events) + max(len(encoded_events) - 1, 0)


def unpack_envelope(body: str) -> list[Event]:
    """The events of one SQS message; EnvelopeError if it is not ours or is damaged."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != ENVELOPE_VERSION:
        raise EnvelopeError("body is not a version 1 logpipe envelope")
    events = doc.get("events")
    if not isinstance(events, list):
        raise EnvelopeError("envelope has no events list")
    for event in events:
        if not _looks_stored(event):
            raise EnvelopeError("envelope holds an event that is not a valid logpipe event")
    return events


def _looks_stored(event: object) -> bool:
    """Enough of the schema that `to_item` cannot fail on it (bodies may come from anyone)."""
    if not isinstance(event, dict):
        return False
    timestamp = event.get("timestamp")
    attributes = event.get("attributes", {})
    return (
        all(isinstance(event.get(name), str) for name in ("id", "service", "level", "message"))
        and bool(event["id"])
        and isinstance(timestamp, int)
        and 0 <= timestamp < MAX_TIMESTAMP_MS
        and isinstance(event.get("ingested_at", 0), int)
        and all(isinstance(event.get(name, ""), str) for name in ("trace_id", "span_id"))
        and isinstance(attributes, dict)
        and all(isinstance(v, str | int | float) for v in attributes.values())
    )


# --- DynamoDB item ---------------------------------------------------------------------------


def shard_of(event_id: str, shards: int) -> int:
    return zlib.crc32(event_id.encode("utf-8", "surrogatepass")) % shards


def item_key(event: Mapping[str, Any], shards: int) -> tuple[str, str]:
    """(pk, sk): a pure function of the event, so a redelivery overwrites the same item."""
    ts = event["timestamp"]
    hour = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%dT%H")
    pk = f"{event['service']}#{hour}#{shard_of(event['id'], shards)}"
    return pk, f"{ts:013d}#{event['id']}"


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with millisecond precision."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def to_item(event: Mapping[str, Any], shards: int, retention_days: int) -> Item:
    """The DynamoDB item (low-level attribute values) that stores one event."""
    pk, sk = item_key(event, shards)
    item: Item = {
        "pk": {"S": pk},
        "sk": {"S": sk},
        "id": {"S": event["id"]},
        "service": {"S": event["service"]},
        "level": {"S": event["level"]},
        "message": {"S": event["message"]},
        "timestamp": {"S": iso_ms(event["timestamp"])},
        "expires_at": {"N": str(event["timestamp"] // 1000 + retention_days * 86400)},
    }
    ingested_at = event.get("ingested_at")
    if isinstance(ingested_at, int):
        item["ingested_at"] = {"S": iso_ms(ingested_at)}
    for name in ("trace_id", "span_id"):
        if name in event:
            item[name] = {"S": event[name]}
    attributes = event.get("attributes")
    if attributes:
        item["attributes"] = {"M": {k: _attribute_value(v) for k, v in attributes.items()}}
    return item


def item_size(item: Mapping[str, Any]) -> int:
    """Bytes DynamoDB counts for an item: attribute names plus values (its sizing rules)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(typed: Mapping[str, Any]) -> int:
    if "S" in typed:
        return len(typed["S"].encode("utf-8", "surrogatepass"))
    if "N" in typed:
        digits = typed["N"].lstrip("-").replace(".", "").split("e")[0].split("E")[0].strip("0")
        return (len(digits) + 1) // 2 + 1
    if "M" in typed:
        return 3 + sum(len(k.encode()) + _value_size(v) + 1 for k, v in typed["M"].items())
    return 1


def write_units(item: Mapping[str, Any]) -> int:
    """Write request units to put `item`: one per started KB."""
    return max(1, -(-item_size(item) // 1024))


def _attribute_value(value: str | int | float | bool) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": repr(value)}
    return {"S": value}


def from_item(item: Mapping[str, Any]) -> Event:
    """A stored item as plain JSON-ready values (the read API's event shape)."""
    event: Event = {}
    for name, typed in item.items():
        if name in ("pk", "sk"):
            continue
        if name == "attributes":
            event[name] = {k: _plain(v) for k, v in typed["M"].items()}
        else:
            event[name] = _plain(typed)
    return event


def _plain(typed: Mapping[str, Any]) -> Any:
    if "S" in typed:
        return typed["S"]
    if "BOOL" in typed:
        return typed["BOOL"]
    if "N" in typed:
        number = typed["N"]
        return float(number) if any(c in number for c in ".eE") else int(number)
    raise ValueError(f"unexpected attribute value {typed!r}")
