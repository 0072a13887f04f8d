"""A read query: its parameters, time window, hour buckets and cursor. Pure functions, no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from logpipe.core.aliases import LEVELS
from logpipe.core.models import EPOCH, MAX_TIMESTAMP_MS
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
CURSOR_VERSION = 2
CURSOR_MAC_BYTES = 16

_SERVICE = re.compile(r"[a-z0-9._-]{1,64}")
_DURATION = re.compile(r"(?:[0-9]{1,12}[smhdw])+")
_DURATION_PART = re.compile(r"([0-9]{1,12})([smhdw])")
_LIMIT = re.compile(r"[0-9]{1,7}")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": HOUR_MS, "d": 24 * HOUR_MS, "w": 7 * 24 * HOUR_MS}
# A position is the sort key a page ended on (`ms#id`), or a bare `ms` where a page stopped
# at a boundary: either way the next page continues strictly below it.
_POSITION = re.compile(r"[0-9]{13}(?:#.+)?", re.DOTALL)


class QueryError(LogpipeError):
    """A read query the caller got wrong; the message says what to change (HTTP 400)."""


@dataclass(frozen=True)
class LogQuery:
    """One page of a search: service, window [since_ms, until_ms], filters, page size.

    `position` is the sort key the previous page ended on; this page continues below it.
    `fingerprint` ties a cursor to the parameters it was made for.
    """

    service: str
    since_ms: int
    until_ms: int
    level: str | None = None
    q: str | None = None
    limit: int = DEFAULT_LIMIT
    position: str | None = None
    fingerprint: str = ""


def parse_query(params: Mapping[str, str], now_ms: int, secret: bytes) -> LogQuery:
    """Validate the API's parameters (service, since, until, level, q, limit, cursor).

    `secret` signs cursors: only a cursor this process (or one sharing its
    LOGPIPE_CURSOR_SECRET) made for the same parameters is followed.
    """
    service = parse_service(params.get("service"))
    since_raw = _bounded("since", params.get("since") or DEFAULT_SINCE, MAX_TIME_CHARS)
    until_raw = _bounded("until", params.get("until") or "now", MAX_TIME_CHARS)
    level = _level(params.get("level"))
    q = params.get("q") or None
    if q is not None and len(q) > MAX_Q_CHARS:
        raise QueryError(f"q must be at most {MAX_Q_CHARS} characters")
    limit = _limit(params.get("limit"))
    since_ms = parse_time("since", since_raw, now_ms)
    until_ms = parse_time("until", until_raw, now_ms)
    if since_ms > until_ms:
        raise QueryError(f"since ({since_raw}) must not be after until ({until_raw})")
    fingerprint = query_fingerprint(service, since_raw, until_raw, level, q)
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
    return LogQuery(service, since_ms, until_ms, level, q, limit, position, fingerprint)


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
    service: str, since: str, until: str, level: str | None, q: str | None
) -> str:
    """A short digest of the parameters that decide which events match (not the page size)."""
    doc = orjson.dumps([service, since, until, level, q])
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
            "repeat service, since, until, level and q unchanged, or drop the cursor"
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
