"""A read query: its parameters, time window, hour buckets and cursor. Pure functions, no I/O.

The filters: `service` (repeatable, or absent: every service), `level` (repeatable),
`trace_id`, `attr.K=V` (repeatable, all must hold), `q` (case-insensitive substring).
Which partitions a search reads follows from its services (`LogQuery.partition`): one
service, its own; none or several, the one every service shares.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol, runtime_checkable

import orjson

from logpipe.core.aliases import LEVELS
from logpipe.core.block import SHARED
from logpipe.core.event import EPOCH, MAX_ATTRIBUTE_KEY_CHARS, MAX_TIMESTAMP_MS, Event
from logpipe.errors import LogpipeError

DEFAULT_SINCE = "15m"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Any 31-day window touches at most 31 * 24 + 1 hour buckets (partial hours at both ends).
MAX_HOURS = 31 * 24 + 1
MAX_Q_CHARS = 1024
# Every text is bounded before anything converts it (a 5,000-digit number is a 400, not a 500).
MAX_TIME_CHARS = 64
MAX_CURSOR_CHARS = 1024
HOUR_MS = 3_600_000
CURSOR_VERSION = 3
# A search across services names at most this many (absent: every one, no bound).
MAX_SERVICES = 50
MAX_ATTR_FILTERS = 10
MAX_ATTR_VALUE_CHARS = 256
MAX_TRACE_ID_CHARS = 32
ATTR_PREFIX = "attr."
CURSOR_MAC_BYTES = 16

_SERVICE = re.compile(r"[a-z0-9._-]{1,64}")
_TRACE_ID = re.compile(r"[0-9a-f]{1,32}")
_DURATION = re.compile(r"(?:[0-9]{1,12}[smhdw])+")
_DURATION_PART = re.compile(r"([0-9]{1,12})([smhdw])")
_LIMIT = re.compile(r"[0-9]{1,7}")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": HOUR_MS, "d": 24 * HOUR_MS, "w": 7 * 24 * HOUR_MS}
# A position is the sort key a page ended on (`ms#id`), or a bare `ms` where a page stopped
# at a boundary: either way the next page continues strictly below it.
_POSITION = re.compile(r"[0-9]{13}(?:#.+)?", re.DOTALL)


class QueryError(LogpipeError):
    """A read query the caller got wrong; the message says what to change (HTTP 400)."""


@runtime_checkable
class MultiParams(Protocol):
    """Parameters of which a name may repeat (Starlette's QueryParams has this shape)."""

    def get(self, key: str, /) -> str | None: ...

    def getlist(self, key: str, /) -> list[str]: ...

    def __iter__(self) -> Iterator[str]: ...


Params = MultiParams | Mapping[str, str]


@dataclass(frozen=True)
class LogQuery:
    """One page of a search: services, window [since_ms, until_ms], filters, page size.

    `services` empty means every service. `levels` (any of them), `trace_id`, `attrs`
    (every one) and `q` filter the events. `position` is the sort key the previous page
    ended on; this page continues below it. `fingerprint` ties a cursor to the parameters
    it was made for.
    """

    services: tuple[str, ...]
    since_ms: int
    until_ms: int
    levels: tuple[str, ...] = ()
    q: str | None = None
    limit: int = DEFAULT_LIMIT
    position: str | None = None
    fingerprint: str = ""
    trace_id: str | None = None
    attrs: tuple[tuple[str, str], ...] = ()

    @property
    def service(self) -> str:
        """The services searched, as text for messages."""
        return ", ".join(self.services) if self.services else "any service"

    @property
    def partition(self) -> str:
        """The first part of the partition keys to read: the one service's own, or the
        partition every service shares."""
        return self.services[0] if len(self.services) == 1 else SHARED

    @property
    def selective(self) -> bool:
        """Whether events are filtered by more than their summaries tell (text, trace,
        attributes): a block's event count then says little of its matches."""
        return bool(self.q or self.trace_id or self.attrs)

    def matches(self, event: Event) -> bool:
        """Whether a stored event passes every filter but the window."""
        if self.services and event["service"] not in self.services:
            return False
        if self.levels and event["level"] not in self.levels:
            return False
        if self.trace_id is not None and event.get("trace_id") != self.trace_id:
            return False
        if self.attrs:
            attributes = event.get("attributes") or {}
            for name, value in self.attrs:
                if name not in attributes or attribute_text(attributes[name]) != value:
                    return False
        return not self.q or self.q.casefold() in event["message"].casefold()


def attribute_text(value: object) -> str:
    """A stored attribute value as `attr.K=V` compares it: a string as it is, any other as
    its JSON text (`true`, `42`, `1.5`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return str(value)
    return orjson.dumps(value).decode()


def values(params: Params, key: str) -> list[str]:
    """Every value given for `key` (a plain mapping holds at most one)."""
    if isinstance(params, MultiParams):
        return params.getlist(key)
    value = params.get(key)
    return [] if value is None else [value]


def parse_query(params: Params, now_ms: int, secret: bytes) -> LogQuery:
    """Validate the API's parameters (service, since, until, level, q, trace_id, attr.K,
    limit, cursor); `service`, `level` and `attr.K` may repeat.

    `secret` signs cursors: only a cursor this process (or one sharing its
    LOGPIPE_CURSOR_SECRET) made for the same parameters is followed.
    """
    services = parse_services(values(params, "service"))
    since_raw = _bounded("since", params.get("since") or DEFAULT_SINCE, MAX_TIME_CHARS)
    until_raw = _bounded("until", params.get("until") or "now", MAX_TIME_CHARS)
    levels = tuple(sorted({lvl for v in values(params, "level") if (lvl := _level(v))}))
    q = params.get("q") or None
    if q is not None and len(q) > MAX_Q_CHARS:
        raise QueryError(f"q must be at most {MAX_Q_CHARS} characters")
    trace_id = _trace_id(params.get("trace_id"))
    attrs = _attrs(params)
    limit = _limit(params.get("limit"))
    since_ms = parse_time("since", since_raw, now_ms)
    until_ms = parse_time("until", until_raw, now_ms)
    if since_ms > until_ms:
        raise QueryError(f"since ({since_raw}) must not be after until ({until_raw})")
    fingerprint = query_fingerprint(
        services, since_raw, until_raw, levels, q, trace_id=trace_id, attrs=attrs
    )
    position = None
    cursor = params.get("cursor")
    if cursor:
        # The cursor pins the window its first page resolved, so a relative `since`
        # does not slide between pages (no gaps, no repeats).
        since_ms, position = decode_cursor(cursor, fingerprint, secret)
        until_ms = min(until_ms, position_until(position))
        if since_ms > until_ms:
            raise QueryError(CURSOR_OUTSIDE)
    hours = hour_count(since_ms, until_ms)
    if hours > MAX_HOURS:
        raise QueryError(
            f"the time range spans {hours} hour buckets; the limit is {MAX_HOURS} (31 days): "
            "narrow since/until"
        )
    return LogQuery(
        services, since_ms, until_ms, levels, q, limit, position, fingerprint, trace_id, attrs
    )


def parse_time(name: str, value: str, now_ms: int) -> int:
    """Epoch ms of 'now', a duration back from now (15m, 6h, 2d, 1h30m) or RFC 3339."""
    text = value.strip()
    if text.lower() == "now":
        return now_ms
    if _DURATION.fullmatch(text):
        back = sum(int(n) * _UNIT_MS[unit] for n, unit in _DURATION_PART.findall(text))
        return max(now_ms - back, 0)
    if len(text) > MAX_TIME_CHARS:
        raise QueryError(f"{name} must be at most {MAX_TIME_CHARS} characters")
    try:
        # RFC 3339 allows a lower-case t and z, which fromisoformat does not.
        parsed = datetime.fromisoformat(text.upper())
    except ValueError:
        raise QueryError(
            f"{name} must be a duration back from now (15m, 6h, 2d) or an RFC 3339 time, "
            f"got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        raise QueryError(f"{name} needs a time zone offset (e.g. Z or +02:00), got {value!r}")
    ms = (parsed - EPOCH) // timedelta(milliseconds=1)
    return min(max(ms, 0), MAX_TIMESTAMP_MS - 1)


def hour_bucket(ms: int) -> str:
    """The hour part of a partition key (`YYYY-MM-DDTHH`, UTC) for epoch ms."""
    return datetime.fromtimestamp(ms // HOUR_MS * 3600, UTC).strftime("%Y-%m-%dT%H")


def hour_count(since_ms: int, until_ms: int) -> int:
    return until_ms // HOUR_MS - since_ms // HOUR_MS + 1


def hour_starts(since_ms: int, until_ms: int) -> list[int]:
    """The start (epoch ms) of every hour the window [since_ms, until_ms] touches, newest first."""
    first, last = since_ms // HOUR_MS, until_ms // HOUR_MS
    return [h * HOUR_MS for h in range(last, first - 1, -1)]


def hour_buckets(since_ms: int, until_ms: int) -> list[str]:
    """Every hour bucket the window [since_ms, until_ms] touches, newest first."""
    return [hour_bucket(start) for start in hour_starts(since_ms, until_ms)]


def partition_keys(service: str, hour: str, shards: int) -> list[str]:
    return [f"{service}#{hour}#{shard}" for shard in range(shards)]


def position_until(position: str) -> int:
    """The newest millisecond a page continuing below `position` may still return."""
    ms = int(position[:13])
    return ms if len(position) > 13 else ms - 1


def query_fingerprint(
    services: tuple[str, ...],
    since: str,
    until: str,
    levels: tuple[str, ...],
    q: str | None,
    *,
    trace_id: str | None = None,
    attrs: tuple[tuple[str, str], ...] = (),
) -> str:
    """A short digest of the parameters that decide which events match (not the page size);
    repeated values count as a set, in any order."""
    doc = orjson.dumps(
        [sorted(services), since, until, sorted(levels), q, trace_id, sorted(map(list, attrs))]
    )
    return hashlib.sha256(doc).hexdigest()[:16]


CURSOR_MALFORMED = "cursor is malformed; use the cursor of the previous answer"
CURSOR_FOREIGN = (
    "cursor is not one this console made (edited, truncated, or signed with another "
    "LOGPIPE_CURSOR_SECRET); use the cursor of the previous answer"
)
CURSOR_OUTSIDE = "cursor points outside the search's time range; drop the cursor"


def encode_cursor(fingerprint: str, since_ms: int, position: str, secret: bytes) -> str:
    """Opaque and signed: where the next page starts, for the query with this fingerprint."""
    doc = {"v": CURSOR_VERSION, "f": fingerprint, "s": since_ms, "p": position}
    body = base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")
    return f"{body}.{_mac(body, secret)}"


def decode_cursor(cursor: str, fingerprint: str, secret: bytes) -> tuple[int, str]:
    """(since_ms, position) of a cursor made by `encode_cursor` for the same parameters."""
    if len(cursor) > MAX_CURSOR_CHARS or cursor.count(".") != 1:
        raise QueryError(CURSOR_MALFORMED)
    body, mac = cursor.split(".")
    # The signature is checked before anything in the cursor is decoded or believed.
    if not hmac.compare_digest(mac.encode(), _mac(body, secret).encode()):
        raise QueryError(CURSOR_FOREIGN)
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError):
        raise QueryError(CURSOR_MALFORMED) from None
    if (
        not isinstance(doc, dict)
        or doc.get("v") != CURSOR_VERSION
        or not isinstance(doc.get("s"), int)
        or not isinstance(doc.get("p"), str)
        or not _POSITION.fullmatch(doc["p"])
        or not 0 <= doc["s"] <= position_until(doc["p"])
    ):
        raise QueryError(CURSOR_MALFORMED)
    if doc.get("f") != fingerprint:
        raise QueryError(
            "cursor belongs to a search with other parameters; "
            "repeat service, since, until, level, q, trace_id and attr.* unchanged, "
            "or drop the cursor"
        )
    return doc["s"], doc["p"]


def _mac(body: str, secret: bytes) -> str:
    digest = hmac.new(secret, body.encode(), hashlib.sha256).digest()[:CURSOR_MAC_BYTES]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _bounded(name: str, value: str, most: int) -> str:
    if len(value) > most:
        raise QueryError(f"{name} must be at most {most} characters")
    return value


def parse_service(value: str | None) -> str:
    if not value:
        raise QueryError("service is required")
    service = value.strip().lower()
    if not _SERVICE.fullmatch(service):
        raise QueryError(f"service must be 1-64 characters of a-z 0-9 . _ -, got {value[:80]!r}")
    return service


def parse_services(given: Iterable[str]) -> tuple[str, ...]:
    """The services named (an empty value names none), each once, sorted; at most
    MAX_SERVICES. None named: every service."""
    named = [v for v in given if v]
    if len(named) > MAX_SERVICES:
        raise QueryError(
            f"at most {MAX_SERVICES} services may be named, got {len(named)}; "
            "name none to search every service"
        )
    return tuple(sorted({parse_service(v) for v in named}))


def _trace_id(value: str | None) -> str | None:
    if not value:
        return None
    trace_id = value.strip().lower()
    if not _TRACE_ID.fullmatch(trace_id):
        raise QueryError(f"trace_id must be 1-{MAX_TRACE_ID_CHARS} hex digits, got {value[:40]!r}")
    return trace_id


def _attrs(params: Params) -> tuple[tuple[str, str], ...]:
    """The `attr.K=V` filters, each (K, V) once, sorted."""
    found: set[tuple[str, str]] = set()
    for key in params:
        if not key.startswith(ATTR_PREFIX):
            continue
        name = key[len(ATTR_PREFIX) :]
        if not 1 <= len(name) <= MAX_ATTRIBUTE_KEY_CHARS:
            raise QueryError(
                f"attribute names are 1-{MAX_ATTRIBUTE_KEY_CHARS} characters: "
                f"attr.<name>=<value>, got {key[:40]!r}"
            )
        for value in values(params, key):
            if len(value) > MAX_ATTR_VALUE_CHARS:
                raise QueryError(f"{key[:40]} must be at most {MAX_ATTR_VALUE_CHARS} characters")
            found.add((name, value))
            if len(found) > MAX_ATTR_FILTERS:
                raise QueryError(f"at most {MAX_ATTR_FILTERS} attr.* filters may be given")
    return tuple(sorted(found))


def _level(value: str | None) -> str | None:
    if not value:
        return None
    level = LEVELS.get(value.strip().lower())
    if level is None:
        raise QueryError(
            f"level must be one of trace, debug, info, warn, error, fatal, got {value[:20]!r}"
        )
    return level


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not _LIMIT.fullmatch(value.strip()) or not 1 <= int(value) <= MAX_LIMIT:
        raise QueryError(f"limit must be an integer 1-{MAX_LIMIT}, got {value[:20]!r}")
    return int(value)
