"""What shippers send, folded into logpipe's field names before validation. No I/O.

winston, pino, Fluent Bit, Vector and friends each name the same things differently
(`msg`, `log`; `time`, `ts`, `@timestamp`, `date`; `severity`, `lvl`, `status`; pino's
numeric levels) and add fields of their own (`hostname`, `pid`, `source_type`). `fold` maps
such an event onto the schema: aliases become the canonical field, level names and numbers
become one of the six levels, and every other top-level field is kept as an attribute
(nested objects flattened with dots, lists as JSON text). `event.normalise` validates the
result, so the schema's limits still apply to what was folded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import orjson

from logpipe.errors import EventError

CANONICAL = frozenset(
    ("id", "service", "level", "message", "timestamp", "trace_id", "span_id", "attributes")
)
# First present alias wins; the canonical name always wins over its aliases.
MESSAGE_ALIASES = ("msg", "log")
TIMESTAMP_ALIASES = ("time", "ts", "@timestamp", "date")
LEVEL_ALIASES = ("severity", "lvl", "status")
MAX_ATTRIBUTES = 64
MAX_KEY_CHARS = 128
# A number below this is epoch seconds (up to year 5138), at or above it epoch milliseconds
# (from March 1973): shippers send seconds with a fraction, JavaScript loggers milliseconds.
SECONDS_BELOW = 10**11

# The schema's own level names, as stored (core.event validates against these).
LEVELS = {
    "trace": "trace",
    "debug": "debug",
    "info": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "fatal": "fatal",
}
STORED_LEVELS = frozenset(LEVELS.values())
LEVEL_NAMES = {
    **LEVELS,
    # winston's npm levels
    "silly": "trace",
    "verbose": "debug",
    "http": "debug",
    # syslog (RFC 5424) names
    "emerg": "fatal",
    "alert": "fatal",
    "crit": "fatal",
    "critical": "fatal",
    "err": "error",
    "notice": "info",
    "informational": "info",
}
# pino: trace 10, debug 20, info 30, warn 40, error 50, fatal 60 (custom levels in between
# fall to the level below them).
_PINO = ("trace", "debug", "info", "warn", "error", "fatal")


def fold(raw: Mapping[str, Any], default_service: str | None = None) -> dict[str, Any]:
    """`raw` with aliases resolved and unknown fields moved under `attributes`.

    `default_service` (from `?service=` or `X-Logpipe-Service`) is used when the event names
    none. Values the schema would refuse are left as they are for validation to report,
    except that an alias whose value is no level (`"status": 200`) stays an attribute.
    """
    if raw.keys() <= CANONICAL:
        return _fold_canonical(raw, default_service)
    event = {name: raw[name] for name in CANONICAL if name in raw}
    consumed = set(event)
    if "service" not in event and default_service:
        event["service"] = default_service
    if "message" not in event:
        _take_first(raw, MESSAGE_ALIASES, event, "message", consumed)
    if "timestamp" not in event:
        name = _take_first(raw, TIMESTAMP_ALIASES, event, "timestamp", consumed)
        if name is not None:
            event["timestamp"] = alias_timestamp(event["timestamp"])
    if "level" in event:
        event["level"] = level_of(event["level"]) or event["level"]
    else:
        _take_level(raw, event, consumed)
    attributes = event.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        return event  # validation says what is wrong with `attributes`
    extra = {k: v for k, v in raw.items() if k not in consumed}
    if extra or attributes:
        flat = flatten_all(attributes or {}, extra)
        if flat or attributes is not None:
            event["attributes"] = flat
    return event


def _fold_canonical(raw: Mapping[str, Any], default_service: str | None) -> dict[str, Any]:
    """What `fold` gives for an event of schema fields only (the usual case), without the
    alias and extra-field passes: the level folded, nested attributes flattened."""
    event = dict(raw)
    if "service" not in event and default_service:
        event["service"] = default_service
    level = event.get("level")
    # A level already in its stored form (the usual case) is kept without folding.
    if level is not None and (type(level) is not str or level not in STORED_LEVELS):
        event["level"] = level_of(level) or level
    attributes = event.get("attributes")
    if (
        attributes
        and isinstance(attributes, dict)
        and (len(attributes) > MAX_ATTRIBUTES or not _already_flat(attributes))
    ):
        event["attributes"] = flatten_all(attributes, {})
    return event


def _take_first(
    raw: Mapping[str, Any],
    names: tuple[str, ...],
    event: dict[str, Any],
    to: str,
    consumed: set[str],
) -> str | None:
    for name in names:
        if raw.get(name) is not None:
            event[to] = raw[name]
            consumed.add(name)
            return name
    return None


def _take_level(raw: Mapping[str, Any], event: dict[str, Any], consumed: set[str]) -> None:
    """The first alias whose value is a level; one whose value is none stays an attribute."""
    for name in LEVEL_ALIASES:
        level = level_of(raw.get(name))
        if level is not None:
            event["level"] = level
            consumed.add(name)
            return


def level_of(value: object) -> str | None:
    """One of the six levels for a level name (any case) or a pino number; else None."""
    if isinstance(value, str):
        return LEVEL_NAMES.get(value.strip().lower())
    if isinstance(value, int | float) and not isinstance(value, bool) and 10 <= value <= 60:
        return _PINO[int(value) // 10 - 1]
    return None


def alias_timestamp(value: object) -> object:
    """Epoch seconds (with a fraction) or milliseconds as epoch ms; anything else unchanged."""
    if isinstance(value, Decimal) and value.is_finite():  # a number with many digits
        return round(value * 1000) if abs(value) < SECONDS_BELOW else int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if abs(value) < SECONDS_BELOW:
        return round(value * 1000)
    return int(value)


def flatten_all(explicit: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes from the event's `attributes` (winning a clash) and its other fields.

    Stops as soon as there are more than MAX_ATTRIBUTES keys, before building the rest.
    """
    if not extra and len(explicit) <= MAX_ATTRIBUTES and _already_flat(explicit):
        return dict(explicit)  # what the walk below builds, without walking
    flat: dict[str, Any] = {}
    for source in (explicit, extra):
        for key, value in _leaves(source, ""):
            if key in flat and source is extra:
                continue
            flat[key] = value
            if len(flat) > MAX_ATTRIBUTES:
                raise EventError(
                    "attributes",
                    f"has more than {MAX_ATTRIBUTES} keys once other fields are added and "
                    f"nested objects flattened; the limit is {MAX_ATTRIBUTES}",
                )
    return flat


# Values `_leaves` yields as they are: a flat object of these under short text keys is its
# own flattening (the usual shape of `attributes`).
_FLAT_TYPES = frozenset((str, int, float, bool, Decimal))


def _already_flat(obj: Mapping[str, Any]) -> bool:
    for key, value in obj.items():
        if type(key) is not str or len(key) > MAX_KEY_CHARS or type(value) not in _FLAT_TYPES:
            return False
    return True


def _leaves(obj: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if len(name) > MAX_KEY_CHARS:
            # Checked while descending, so deep nesting ends here rather than in recursion.
            raise EventError("attributes", f"keys must be 1-{MAX_KEY_CHARS} characters")
        if isinstance(value, dict):
            if value:
                yield from _leaves(value, f"{name}.")
        elif isinstance(value, list):
            yield name, _json_text(value)
        elif value is not None:
            yield name, value


def _json_text(value: list[Any]) -> str:
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        raise EventError("attributes", "holds a list that cannot be encoded as JSON") from None
