"""One event: the schema, its limits, validation and normalisation, ids, the exact JSON it
is read and written as, and the checks and item-size bound of an event as an envelope
carries it to be stored. No I/O."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Required, TypedDict

import orjson

from logpipe.core.aliases import CANONICAL, LEVELS, STORED_LEVELS, fold
from logpipe.errors import EventError

MAX_MESSAGE_BYTES = 16 * 1024
MAX_EVENT_BYTES = 32 * 1024
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY_CHARS = 128
MAX_ID_CHARS = 128
MAX_TIMESTAMP_MS = 10**13  # keeps the zero-padded sort key at 13 digits (year 2286)

_SERVICE = re.compile(r"[a-z0-9._-]{1,64}")
_HEX = re.compile(r"[0-9a-f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# DynamoDB numbers: 38 significant digits, magnitude 1e-130 to below 1e126.
_DDB_MIN, _DDB_LIMIT = 1e-130, 1e126
_DDB_DIGITS = 38
_DDB_INT_LIMIT = 10**_DDB_DIGITS
# A number of 16 or more digits may not survive a float (orjson reads big integers as floats).
# A JSON number starts the text or follows ':', '[', ',' or white space, with its '-' if it
# has one, and ends before a space, ',', ']', '}' or its exponent, never before a letter,
# '_' or '"': so hex ids, digests and traceparents in strings (a '-' after a letter or digit,
# digits ending in 'e') do not send a body down the slow path.
_LONG_RUN = (
    r"(?:\A|(?<=[\s:,\[])|(?<=\A-)|(?<=[\s:,\[]-))"
    r'\d(?:\.?\d){15,}(?![0-9A-DF-Za-df-z_"])'
)
_LONG_NUMBER = re.compile(_LONG_RUN)
_LONG_BYTES = re.compile(_LONG_RUN.encode())
_INT64 = range(-(2**63), 2**64)
_INT64_MIN_ABS, _INT64_END = 2**63, 2**64
# Every ASCII digit and "." to NUL, the rest to 0x01: a body whose translation holds no run of
# 16 NULs has no number the patterns above could match, found without running them.
_DIGIT_RUNS = bytes(0 if chr(i) in "0123456789." else 1 for i in range(256))
_SIXTEEN_DIGITS = bytes(16)
_NOT_A_DIGIT = re.compile(rb"[^\x00]")
# Set on an event whose client sent an id but no timestamp: the processor then keeps the
# first timestamp assigned to that id, so a retry lands on the same key.
ASSIGNED_TIMESTAMP: Final = "assigned_timestamp"

AttributeValue = str | int | float | bool | Decimal


class Event(TypedDict, total=False):
    """A normalised event as the envelope carries it (DESIGN.md's event; timestamps in epoch
    ms). Only a type: at run time it is the plain dict `normalise` builds."""

    id: Required[str]
    service: Required[str]
    level: Required[str]
    message: Required[str]
    timestamp: Required[int]
    ingested_at: int
    trace_id: str
    span_id: str
    attributes: dict[str, AttributeValue]
    assigned_timestamp: bool


# A stored event as the read API answers it (`core.block.stored_event`): plain values.
StoredEvent = dict[str, Any]
Item = dict[str, Any]


def loads_exact(
    data: bytes | str, long_runs: bool | None = None, digit_runs: bytes | None = None
) -> Any:
    """JSON like `orjson.loads`, except that numbers orjson would round keep their digits.

    orjson reads an integer beyond 64 bits as a float; when the text holds a run of 16 or
    more digits it is read again by the standard library: integers beyond 64 bits and
    decimals a double cannot hold exactly as Decimal. orjson checks the syntax first, so
    both accept the same documents. `long_runs`: whether the text holds a run of 16 digits
    and dots, when the caller looked already (`limits.scan_json`); `digit_runs`: the bytes
    text translated so that digits and dots are 0 and nothing else is, when it has them.
    """
    return exact_document(data, orjson.loads(data), long_runs, digit_runs)


def exact_document(
    data: bytes | str,
    doc: Any,
    long_runs: bool | None = None,
    digit_runs: bytes | None = None,
) -> Any:
    """`loads_exact(data)`, given `doc = orjson.loads(data)` already: `doc` itself unless the
    text holds a number orjson may have rounded."""
    if long_runs is False:
        return doc
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if not _has_long_number(raw, digit_runs):
        return doc
    del doc  # the caller's copy aside, never two parsed copies of one body at once
    try:
        return json.loads(data, parse_float=_exact_float, parse_int=_exact_int)
    except RecursionError:
        raise orjson.JSONDecodeError("nested too deeply", "", 0) from None


def _has_long_number(raw: bytes, runs: bytes | None = None) -> bool:
    """Whether `raw` holds a number orjson may have rounded (`_LONG_BYTES`). The pattern is
    tried only on runs of 16 or more digits and dots, found in one translation of the text
    (`runs`, where digits and dots are 0, unless the caller has one): a body full of short
    numbers and ids costs no regex pass over all of it."""
    if runs is None:
        runs = raw.translate(_DIGIT_RUNS)
    at = runs.find(_SIXTEEN_DIGITS)
    while at != -1:
        start = at
        while start > 0 and runs[start - 1] == 0:
            start -= 1
        after = _NOT_A_DIGIT.search(runs, at)
        end = len(raw) if after is None else after.start()
        # The character after the run decides too (the pattern's lookahead); the one before
        # it is seen by the lookbehind whatever `start` is.
        if _LONG_BYTES.search(raw, start, min(end + 1, len(raw))):
            return True
        at = runs.find(_SIXTEEN_DIGITS, end)
    return False


def _exact_float(text: str) -> float | Decimal:
    number = float(text)
    exact = math.isfinite(number) and Decimal(repr(number)) == Decimal(text)
    return number if exact else Decimal(text)


def _exact_int(text: str) -> int | Decimal:
    integer = int(text)
    return integer if integer in _INT64 else Decimal(text)


def _exact_number(value: object) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps_exact(value: object) -> bytes:
    """`orjson.dumps` that writes Decimal numbers with their exact digits."""
    return orjson.dumps(value, default=_exact_number)


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
    if type(raw) is dict:
        fast = _plain_event(raw, now_ms)
        if fast is not None:
            return fast
    if not isinstance(raw, dict):
        raise EventError("", "event must be a JSON object")
    plain = _folded_already(raw)
    if not plain:
        raw = fold(raw, default_service)
    event: Event = {
        "id": _id(raw.get("id"), now_ms),
        "service": _service(raw.get("service")),
        "level": _level(raw.get("level")),
        "message": _message(raw.get("message")),
        "timestamp": _timestamp(raw.get("timestamp"), now_ms),
        "ingested_at": now_ms,
    }
    if raw.get("timestamp") is None and raw.get("id") is not None:
        event[ASSIGNED_TIMESTAMP] = True
    trace_id = raw.get("trace_id")
    if trace_id is not None:
        event["trace_id"] = _hex("trace_id", trace_id, 32)
    span_id = raw.get("span_id")
    if span_id is not None:
        event["span_id"] = _hex("span_id", span_id, 16)
    attributes = raw.get("attributes")
    if attributes is not None:
        event["attributes"] = attributes if plain else _attributes(attributes)
    return event


def _folded_already(raw: dict[str, Any]) -> bool:
    """True for an event `fold` and `_attributes` would leave as it is (the usual case):
    schema fields only, a service of its own, a stored level or none, and attributes of at
    most MAX_ATTRIBUTES short keys whose values need no conversion and pass every check.
    One walk of the attributes, where the general path takes two; anything else is False.
    """
    if not raw.keys() <= CANONICAL or "service" not in raw:
        return False
    level = raw.get("level")
    if level is not None and (type(level) is not str or level not in STORED_LEVELS):
        return False
    attributes = raw.get("attributes")
    return attributes is None or _plain_attributes(attributes)


def _plain_attributes(attributes: object) -> bool:
    if type(attributes) is not dict or len(attributes) > MAX_ATTRIBUTES:
        return False
    for key, item in attributes.items():
        if type(key) is not str or not 1 <= len(key) <= MAX_ATTRIBUTE_KEY_CHARS:
            return False
        kind = type(item)
        if kind is str or kind is bool:
            continue
        if kind is int:
            if not -_INT64_MIN_ABS <= item < _INT64_END:
                return False
        elif kind is not float or not _storable_float(item):
            return False
    return True


def _plain_event(raw: dict[str, Any], now_ms: int) -> Event | None:
    """The event `normalise` builds, in one pass, when every field is already in the form it
    stores and its service was seen before (the usual case); None sends it down the general
    path, which gives the same event or names the field at fault."""
    get = raw.get
    service = get("service")
    if type(service) is not str or not raw.keys() <= CANONICAL:
        return None
    stored = _KNOWN_SERVICES.get(service)
    level = get("level")
    if level is None:
        level = "info"
    message = get("message")
    if (
        stored is None
        or type(level) is not str
        or level not in STORED_LEVELS
        or type(message) is not str
        or len(message) * 4 > MAX_MESSAGE_BYTES
    ):
        return None
    when = _plain_when(get("id"), get("timestamp"), now_ms)
    if when is None:
        return None
    event_id, timestamp, assigned = when
    event: Event = {
        "id": event_id,
        "service": stored,
        "level": level,
        "message": message,
        "timestamp": timestamp,
        "ingested_at": now_ms,
    }
    if assigned:
        event[ASSIGNED_TIMESTAMP] = True
    return event if _plain_extras(get, event) else None


def _plain_when(given: object, timestamp: object, now_ms: int) -> tuple[str, int, bool] | None:
    """Id, timestamp and whether it was assigned, for a plain id and timestamp; else None."""
    if given is None:
        event_id = new_id(now_ms)
    elif type(given) is str and 1 <= len(given) <= MAX_ID_CHARS and given.isprintable():
        event_id = given
    else:
        return None
    if timestamp is None:
        return event_id, now_ms, given is not None
    if type(timestamp) is int and 0 <= timestamp < MAX_TIMESTAMP_MS:
        return event_id, timestamp, False
    return None


def _plain_extras(get: Callable[[str], Any], event: Event) -> bool:
    """Trace id, span id and attributes into `event` when they need no conversion."""
    for name, max_chars in _HEX_FIELDS:
        value = get(name)
        if value is not None:
            value = _plain_hex(value, max_chars)
            if value is None:
                return False
            event[name] = value  # type: ignore[literal-required]
    attributes = get("attributes")
    if attributes is not None:
        if not _plain_attributes(attributes):
            return False
        event["attributes"] = attributes
    return True


def _plain_hex(value: object, max_chars: int) -> str | None:
    if type(value) is not str or not 1 <= len(value) <= max_chars:
        return None
    lowered = value.lower()
    return lowered if _HEX.fullmatch(lowered) else None


def encode_event(event: Event) -> bytes:
    """The event as compact JSON, refused when it is too large to store."""
    data = orjson.dumps(event, default=_exact_number)  # dumps_exact, one call fewer an event
    if not data.isascii():
        data = sqs_safe(data)
    if len(data) > MAX_EVENT_BYTES:
        raise EventError("", f"event is {len(data)} bytes encoded; the limit is {MAX_EVENT_BYTES}")
    return data


def sqs_safe(data: bytes) -> bytes:
    """SQS refuses the noncharacters U+FFFE and U+FFFF; as JSON escapes they pass unchanged."""
    # `isascii` first: it is many times faster than the search, and most events are ASCII.
    if not data.isascii() and b"\xef\xbf" in data:
        data = data.replace(b"\xef\xbf\xbe", b"\\ufffe").replace(b"\xef\xbf\xbf", b"\\uffff")
    return data


def _id(value: object, now_ms: int) -> str:
    if value is None:
        return new_id(now_ms)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise EventError("id", f"must be a string of 1-{MAX_ID_CHARS} characters")
    # Printable text holds no control character; only other text needs the search.
    if not value.isprintable() and _CONTROL.search(value):
        raise EventError("id", "must not contain control characters")
    return value


# Services already found valid, and their stored form: a request names a few services
# thousands of times. Bounded; cleared when full (dict operations are atomic across the
# decode threads).
_KNOWN_SERVICES: dict[str, str] = {}
_KNOWN_SERVICES_MAX = 1024


def _service(value: object) -> str:
    known = _KNOWN_SERVICES.get(value) if type(value) is str else None
    if known is not None:
        return known
    if value is None:
        raise EventError("service", "is required (in the event, ?service= or X-Logpipe-Service)")
    if not isinstance(value, str):
        raise EventError("service", "must be a string")
    service = value.lower()
    if not _SERVICE.fullmatch(service):
        raise EventError("service", "must be 1-64 characters of a-z 0-9 . _ -")
    if len(_KNOWN_SERVICES) >= _KNOWN_SERVICES_MAX:
        _KNOWN_SERVICES.clear()
    _KNOWN_SERVICES[value] = service
    return service


def _level(value: object) -> str:
    if value is None:
        return "info"
    if type(value) is str and value in STORED_LEVELS:  # folded already: the usual case
        return value
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


_NUMBER_TYPES = (int, float, Decimal)
_FLAT_VALUE_TYPES = (str, bool)


def _timestamp(value: object, now_ms: int) -> int:
    if value is None:
        return now_ms
    if type(value) is int and 0 <= value < MAX_TIMESTAMP_MS:  # epoch ms, the usual case
        return value
    if isinstance(value, bool):
        raise EventError("timestamp", "must be an RFC 3339 string or epoch milliseconds")
    if isinstance(value, _NUMBER_TYPES):
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


def _attributes(value: object) -> dict[str, str | int | float | bool | Decimal]:
    if not isinstance(value, dict):
        raise EventError("attributes", "must be a flat JSON object")
    if len(value) > MAX_ATTRIBUTES:
        raise EventError("attributes", f"has {len(value)} keys; the limit is {MAX_ATTRIBUTES}")
    wide: list[str] = []
    for key, item in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_ATTRIBUTE_KEY_CHARS:
            raise EventError("attributes", f"keys must be 1-{MAX_ATTRIBUTE_KEY_CHARS} characters")
        kind = type(item)
        # Strings, booleans and 64-bit integers first, without a call: nearly every value.
        if kind is str or kind is bool or (kind is int and -_INT64_MIN_ABS <= item < _INT64_END):
            continue
        if _is_wide(key, item):
            wide.append(key)
    if wide:
        # Beyond 64 bits JSON encoders give up; as Decimal they keep every digit.
        return {**value, **{key: Decimal(value[key]) for key in wide}}
    return value


def _storable_float(value: float) -> bool:
    """Zero, or a finite float within DynamoDB's number range (NaN and infinities are not)."""
    return value == 0 or _DDB_MIN <= abs(value) < _DDB_LIMIT


def _is_wide(key: str, item: object) -> bool:
    """Check an attribute value the common cases did not cover; True for an integer beyond
    64 bits (to be kept as Decimal)."""
    if isinstance(item, _FLAT_VALUE_TYPES):
        return False
    if isinstance(item, int):
        if abs(item) >= _DDB_INT_LIMIT:
            raise EventError(f"attributes.{key}", "integer has more than 38 digits")
        return item not in _INT64
    if isinstance(item, float):
        if not _storable_float(item):
            raise EventError(f"attributes.{key}", "number is out of range")
    elif isinstance(item, Decimal):
        _check_decimal(key, item)
    else:
        raise EventError(f"attributes.{key}", "must be a string, number or boolean")
    return False


def _check_decimal(key: str, number: Decimal) -> None:
    """A DynamoDB number: at most 38 significant digits, magnitude 1e-130 to below 1e126."""
    if not number.is_finite():
        raise EventError(f"attributes.{key}", "number is out of range")
    if number.is_zero():
        return
    digits = "".join(map(str, number.as_tuple().digits)).strip("0")
    if len(digits) > _DDB_DIGITS:
        raise EventError(f"attributes.{key}", "number has more than 38 significant digits")
    if not -130 <= number.adjusted() < 126:
        raise EventError(f"attributes.{key}", "number is out of range")


def event_problem(event: object) -> str | None:
    """Why an event of an envelope can never be stored, or None: every range, type and size
    blocks and DynamoDB rely on, checked before any block is built (bodies may come from
    anyone with access to the queue)."""
    if plain_size(event, 0):  # the usual event: one walk, no encoding
        return None
    if not isinstance(event, dict):
        return "event is not a JSON object"
    try:
        _check_stored(event)
    except EventError as exc:
        return str(exc)
    return None


def _check_stored(event: dict[str, Any]) -> None:
    _check_stored_fields(event)
    _check_stored_times(event)
    if "trace_id" in event or "span_id" in event:
        _check_stored_trace(event)
    if "attributes" in event:
        _attributes(event["attributes"])
    if not isinstance(event.get(ASSIGNED_TIMESTAMP, False), bool):
        raise EventError(ASSIGNED_TIMESTAMP, "must be a boolean")
    try:
        size = len(dumps_exact(event))
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (an unknown field)
        raise EventError("", "event cannot be encoded as JSON") from None
    if size > MAX_EVENT_BYTES:
        raise EventError("", f"event is {size} bytes encoded; the limit is {MAX_EVENT_BYTES}")


def _check_stored_fields(event: dict[str, Any]) -> None:
    """id, service, level and message as `normalise` writes them."""
    if not isinstance(event.get("id"), str):
        raise EventError("id", "is required")
    _id(event["id"], 0)
    if _service(event.get("service")) != event["service"]:
        raise EventError("service", "must be lower case")
    level = event.get("level")
    if not isinstance(level, str) or level not in _STORED_LEVELS:
        raise EventError("level", "must be one of trace, debug, info, warn, error, fatal")
    _message(event.get("message"))


_STORED_MS = "must be epoch milliseconds between 1970 and 2286"


def _check_stored_times(event: dict[str, Any]) -> None:
    """timestamp (required) and ingested_at (optional) as epoch milliseconds."""
    timestamp = event.get("timestamp")
    if type(timestamp) is not int or not 0 <= timestamp < MAX_TIMESTAMP_MS:
        raise EventError("timestamp", _STORED_MS)
    ingested_at = event.get("ingested_at")
    if ingested_at is not None and (
        type(ingested_at) is not int or not 0 <= ingested_at < MAX_TIMESTAMP_MS
    ):
        raise EventError("ingested_at", _STORED_MS)


def _check_stored_trace(event: dict[str, Any]) -> None:
    """trace_id and span_id, when present, as lower-case hex."""
    for name, max_chars in (("trace_id", 32), ("span_id", 16)):
        if name in event and _hex(name, event[name], max_chars) != event[name]:
            raise EventError(name, "must be lower-case hex")


_STORED_LEVELS = frozenset(LEVELS.values())


# --- The processor's shortcut: events in the form `normalise` writes --------------------------
#
# Nearly every event of an envelope is exactly what `normalise` wrote: the schema's fields
# only, with their exact types, and flat attributes. For such an event one walk settles what
# `event_problem` would answer (None) and bounds the size of its item, so the item needs no
# encoding to count its write units. Anything else takes the general path unchanged.

# An attribute number's size in an item, at most: 20 digits (64 bits) or a float's 17
# significant digits, (digits + 1) // 2 + 1.
_NUMBER_SIZE = 11
# An event's JSON beyond 6 bytes a byte of its strings (the widest escape, \u001f, is 6 bytes
# for one): its field names with quotes, colons and commas (under 130), the quotes of its
# strings, its integers (20 characters at most), and per attribute the key's quotes, colon,
# comma and a number of at most 24 characters (a float's repr in DynamoDB's range).
_JSON_SLACK = 256 + 30 * MAX_ATTRIBUTES
# A bound no event's item reaches: its write units are counted on the item.
UNKNOWN_SIZE: Final = 1 << 40


def item_fixed_bytes(shards: int, retention_days: int) -> int:
    """The part of an event's item size (DynamoDB's sizing rules, as when each event was an
    item; kept as the bound's base) that is the same for every event: the names
    of its attributes, the key's hour, separators and shard, the timestamps, the expiry."""
    shard_digits = len(str(shards - 1))
    expires_digits = len(str((MAX_TIMESTAMP_MS - 1) // 1000 + retention_days * 86400))
    return (
        len("pk") + 1 + 13 + 1 + shard_digits  # service#YYYY-MM-DDTHH#shard, service apart
        + len("sk") + 13 + 1  # 13-digit timestamp#id, id apart
        + len("id") + len("service") + len("level") + len("message")
        + len("timestamp") + len("2024-01-01T00:00:00.000Z")
        + len("expires_at") + (expires_digits + 1) // 2 + 1
    )  # fmt: skip


def _utf8_size(text: str) -> int:
    """Bytes of `text` in UTF-8; past any event's limit when it holds a lone surrogate (which
    JSON cannot encode), so the shortcut leaves such an event to the general checks."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return MAX_EVENT_BYTES


def plain_size(event: object, fixed: int) -> int:
    """For an event in the form `normalise` writes, whose every check passes: a bound on its
    item's `item_size` (`fixed` from `item_fixed_bytes`), negative when a float was read
    (its digits may have been rounded by the decoder). 0 for any other event: the general
    path (`event_problem`) decides."""
    if type(event) is not dict:
        return 0
    event_id = event.get("id")
    service = event.get("service")
    level = event.get("level")
    message = event.get("message")
    timestamp = event.get("timestamp")
    if (
        type(event_id) is not str
        or type(service) is not str
        or type(level) is not str
        or type(message) is not str
        or type(timestamp) is not int
        or not 0 <= timestamp < MAX_TIMESTAMP_MS
        or level not in _STORED_LEVELS
        or not 1 <= len(event_id) <= MAX_ID_CHARS
        or not event_id.isprintable()
        or len(message) * 4 > MAX_MESSAGE_BYTES
    ):
        return 0
    if _KNOWN_SERVICES.get(service) != service and not _stored_service(service):
        return 0
    id_size = len(event_id) if event_id.isascii() else _utf8_size(event_id)
    # The bytes of the event's strings (its JSON is at most 6 a byte, and _JSON_SLACK), and
    # of its item: each string once, the id and service again in the key.
    text = id_size + len(service) + len(level)
    text += len(message) if message.isascii() else _utf8_size(message)
    size = fixed + text + id_size + len(service)
    # Fields beyond the five: each one found is checked and counted; any left over is
    # unknown or None, which the general path judges.
    optional = len(event) - 5
    ingested_at = event.get("ingested_at")
    if ingested_at is not None:
        if type(ingested_at) is not int or not 0 <= ingested_at < MAX_TIMESTAMP_MS:
            return 0
        size += len("ingested_at") + len("2024-01-01T00:00:00.000Z")
        optional -= 1
    attributes = _plain_attributes_size(event.get("attributes"))
    if attributes:
        text += abs(attributes)  # strings, and numbers too: more than the bound needs
        size += abs(attributes)
        optional -= 1
    if optional:
        traced = _plain_trace_size(event, optional)
        if not traced:
            return 0
        text += traced
        size += traced
    if 6 * text + _JSON_SLACK > MAX_EVENT_BYTES:
        return 0
    return -size if attributes < 0 else size


def _plain_attributes_size(attributes: object) -> int:
    """The bytes plain attributes add to an item, negative when one is a float; 0 when
    there are none or they are not plain (the general checks decide)."""
    if type(attributes) is not dict or len(attributes) > MAX_ATTRIBUTES:
        return 0
    size = len("attributes") + 3  # the name, and the map's own 3 bytes
    sign = 1
    for key, value in attributes.items():
        if type(key) is not str or not 0 < len(key) <= MAX_ATTRIBUTE_KEY_CHARS:
            return 0
        kind = type(value)
        if kind is str:
            size += len(value) if value.isascii() else _utf8_size(value)
        elif (kind is int and -_INT64_MIN_ABS <= value < _INT64_END) or kind is bool:
            size += _NUMBER_SIZE
        elif kind is float and _storable_float(value):
            size += _NUMBER_SIZE
            sign = -1
        else:
            return 0
        size += (len(key) if key.isascii() else _utf8_size(key)) + 1
    return sign * size


def _plain_trace_size(event: dict[str, Any], optional: int) -> int:
    """The bytes trace_id and span_id add to the item (at least 1), when they and
    assigned_timestamp are the `optional` fields left, and plain; else 0."""
    added = 1
    for name, max_chars in _HEX_FIELDS:
        value = event.get(name)
        if value is not None:
            if type(value) is not str or len(value) > max_chars or not _HEX.fullmatch(value):
                return 0
            added += len(name) + len(value)
            optional -= 1
    if type(event.get(ASSIGNED_TIMESTAMP)) is bool:
        optional -= 1
    return 0 if optional else added


_HEX_FIELDS = (("trace_id", 32), ("span_id", 16))


def _stored_service(service: str) -> bool:
    """A service as `normalise` writes it (lower case, 1-64 of a-z 0-9 . _ -), remembered
    with the others (`_service`)."""
    try:
        return _service(service) == service
    except EventError:
        return False
