"""`logpipe query`: stored events in a terminal, read from the table or through a console.

The flags become the console API's parameters, as (name, value) pairs in which a name may
repeat (`service`, `level`, `attr.K`). Two sources answer the same pages for them:
`DirectSource` parses them as the console does and reads DynamoDB itself (AWS rights
needed); `ApiSource`, when LOGPIPE_CONSOLE_URL is set, asks that console's `GET /api/logs`
and needs only its read key (LOGPIPE_READ_KEY), no AWS settings at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any, Protocol, TextIO, TypeVar
from urllib.parse import urlencode

import aiohttp
import orjson
import yarl
from starlette.datastructures import QueryParams

from logpipe.aws.bootstrap import read_table_shards
from logpipe.aws.clients import open_clients
from logpipe.aws.errors import AWS_ERRORS, SETUP_ERRORS, read_failure
from logpipe.config import Settings
from logpipe.core.event import StoredEvent
from logpipe.core.query import (
    DEFAULT_LIMIT,
    DEFAULT_SINCE,
    LogQuery,
    QueryError,
    parse_query,
    parse_time,
)
from logpipe.core.timefmt import iso_ms
from logpipe.errors import ConfigError, LogpipeError
from logpipe.lifecycle import stop_signals
from logpipe.read.console import READ_CONCURRENCY, cursor_secret, now_ms, reader_for
from logpipe.read.reader import Page, Reader

Pairs = list[tuple[str, str]]
T = TypeVar("T")

# Where a table's message column starts: a message's further lines start there too.
MESSAGE_INDENT = " " * (24 + 2 + 5 + 2)
# How often `logpipe query --follow` asks for new events.
FOLLOW_INTERVAL_S = 1.0
# The most one answer of a console may hold: its pages stop near LOGPIPE_MAX_ANSWER_BYTES
# (4 MiB unless raised); anything far beyond is not an answer worth holding in memory.
MAX_API_ANSWER_BYTES = 64 * 1024 * 1024
# A console answers within its read deadline; connecting should take far less.
API_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
CONSOLE_HINT = "set LOGPIPE_CONSOLE_URL (and LOGPIPE_READ_KEY) to read through a console"


class SearchFailed(LogpipeError):
    """A search that cannot go on: the one line a person sees, and the command's exit code.

    `retriable` failures (the console busy or unreachable for a moment) do not end a follow.
    """

    def __init__(self, message: str, exit_code: int = 1, retriable: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.retriable = retriable


class Source(Protocol):
    """Where pages of events come from: one page for the console API's parameters."""

    async def page(self, pairs: Pairs) -> Page: ...


class DirectSource:
    """Pages read from the table with this process's own AWS rights."""

    def __init__(self, reader: Reader, secret: bytes) -> None:
        self._reader = reader
        self._secret = secret

    @staticmethod
    def parse(pairs: Pairs, secret: bytes) -> LogQuery:
        """The parsed query; SearchFailed (exit 2) for parameters the console would refuse."""
        try:
            return parse_query(QueryParams(pairs), now_ms(), secret)
        except QueryError as exc:
            raise SearchFailed(str(exc), 2) from None

    async def page(self, pairs: Pairs) -> Page:
        query = self.parse(pairs, self._secret)
        try:
            return await self._reader.read(query)
        except AWS_ERRORS as exc:
            raise SearchFailed(read_failure(exc)) from None


class ApiSource:
    """Pages of a console's `GET /api/logs`, with `read_key` as the Bearer token."""

    def __init__(self, session: aiohttp.ClientSession, url: str, read_key: str) -> None:
        self._session = session
        self._url = url
        self._headers = {"Authorization": f"Bearer {read_key}"} if read_key else {}
        self._keyed = bool(read_key)

    async def page(self, pairs: Pairs) -> Page:
        # Encoded here, as a form would be: `+` and `&` in a value arrive as themselves.
        url = yarl.URL(f"{self._url}/api/logs?{urlencode(pairs)}", encoded=True)
        try:
            async with self._session.get(url, headers=self._headers) as response:
                status = response.status
                body = await _read_bounded(response, MAX_API_ANSWER_BYTES)
        except aiohttp.ClientSSLError as exc:
            raise SearchFailed(
                f"TLS with the console at {self._url} failed ({exc.os_error}); "
                "check LOGPIPE_CONSOLE_URL and the console's certificate"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise SearchFailed(
                f"cannot reach the console at {self._url} ({_reason(exc.os_error)}); "
                "is it running, and is LOGPIPE_CONSOLE_URL right?",
                retriable=True,
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            raise SearchFailed(
                f"the console at {self._url} did not answer in full ({reason}); try again, "
                "or check LOGPIPE_CONSOLE_URL",
                retriable=True,
            ) from None
        if status == 200:
            return self._parse_page(body)
        raise self._refusal(status, body)

    def _parse_page(self, body: bytes) -> Page:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("events"), list)
            or not all(isinstance(event, dict) for event in doc["events"])
            or not isinstance(doc.get("cursor"), str | None)
        ):
            raise SearchFailed(
                f"{self._url} answered something other than a logpipe console's /api/logs; "
                "check LOGPIPE_CONSOLE_URL"
            )
        return Page(doc["events"], doc["cursor"], doc.get("complete") is not False)

    def _refusal(self, status: int, body: bytes) -> SearchFailed:
        if status == 401:
            if self._keyed:
                return SearchFailed(
                    f"the console at {self._url} refused LOGPIPE_READ_KEY (401): set it to one "
                    "of the console's LOGPIPE_READ_KEYS",
                    2,
                )
            return SearchFailed(
                f"the console at {self._url} needs a read key (401): set LOGPIPE_READ_KEY", 2
            )
        message = _error_message(body)
        if status == 400:
            return SearchFailed(message or "the console refused the search (400)", 2)
        hint = "; is LOGPIPE_CONSOLE_URL a logpipe console?" if status == 404 or not message else ""
        return SearchFailed(
            f"the console at {self._url} answered {status}"
            + (f": {message}" if message else "")
            + hint,
            retriable=status in (429, 502, 503, 504),
        )


async def _read_bounded(response: aiohttp.ClientResponse, most: int) -> bytes:
    """The body, refused past `most` bytes before more of it is held."""
    if response.content_length is not None and response.content_length > most:
        raise SearchFailed(f"the console's answer is larger than {most} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > most:
            raise SearchFailed(f"the console's answer is larger than {most} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _reason(error: OSError) -> str:
    """ "Connection refused" rather than asyncio's "Connect call failed ('127.0.0.1', 1)"."""
    if error.errno is not None and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error)


def _error_message(body: bytes) -> str:
    """The `error` of an API answer, on one line and safe for a terminal ("" if none)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    error = doc.get("error") if isinstance(doc, dict) else None
    return escape_controls(error[:500]) if isinstance(error, str) else ""


def query_pairs(args: Any) -> Pairs:
    """The console API's parameters for `logpipe query`'s flags, in the order given."""
    pairs: Pairs = [("service", service) for service in args.service or []]
    single = {"since": args.since, "until": args.until, "trace_id": args.trace_id, "q": args.grep}
    pairs += [(name, value) for name, value in single.items() if value is not None]
    pairs += [("level", level) for level in args.level or []]
    pairs += [where_pair(text) for text in args.where or []]
    if args.limit is not None:
        pairs.append(("limit", str(args.limit)))
    return pairs


def where_pair(text: str) -> tuple[str, str]:
    """`--where order_id=42` → ("attr.order_id", "42")."""
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise ConfigError(f"--where takes KEY=VALUE (an attribute and its value), got {text!r}")
    return f"attr.{key}", value


async def query_command(
    settings: Settings,
    pairs: Pairs,
    as_json: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    follow: bool = False,
) -> int:
    """`logpipe query`: events newest first, as a table or as NDJSON; with `follow`, the
    newest events oldest first, then each new one as it is stored, until SIGINT or SIGTERM.

    Each read is bounded (LOGPIPE_QUERY_BUDGET); the command follows the cursors until
    --limit events are found or the whole time range is searched.
    """
    progress = _Progress(err)
    try:
        async with AsyncExitStack() as stack:
            source = await _open_source(stack, settings, pairs)
            events, more = await _follow_cursors(source, pairs, progress)
            progress.clear()
            if follow:
                await _tail(source, pairs, events, as_json, out, err)
                return 0
    except SearchFailed as exc:
        progress.clear()
        print(f"logpipe: {exc}", file=err)
        return exc.exit_code
    _print_found(events, more, pairs, as_json, out, err)
    return 0


async def _open_source(stack: AsyncExitStack, settings: Settings, pairs: Pairs) -> Source:
    """The console's API when LOGPIPE_CONSOLE_URL is set (no AWS client is made), else the
    table; parameters are checked before AWS is asked anything."""
    if settings.console_url:
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=API_TIMEOUT))
        return ApiSource(session, settings.console_url, settings.read_key)
    secret = cursor_secret(settings)
    DirectSource.parse(pairs, secret)
    try:
        clients = await open_clients(stack, settings, pool=READ_CONCURRENCY + 4)
        shards = await read_table_shards(clients.dynamodb, settings.table_name, settings.shards)
    except AWS_ERRORS as exc:
        hint = f"; or {CONSOLE_HINT}" if isinstance(exc, SETUP_ERRORS) else ""
        raise SearchFailed(read_failure(exc) + hint) from None
    return DirectSource(reader_for(clients, settings, shards, secret), secret)


async def _follow_cursors(
    source: Source, pairs: Pairs, progress: _Progress
) -> tuple[list[StoredEvent], bool]:
    """Read page after page until --limit events are found or the whole range is searched;
    the events, and whether older ones match too."""
    wanted = int(_last(pairs, "limit") or DEFAULT_LIMIT)
    events: list[StoredEvent] = []
    request = pairs
    while True:
        page = await source.page(request)
        events.extend(page.events)
        if page.cursor is None or len(events) >= wanted or page.complete:
            return events, page.cursor is not None
        request = _with(pairs, cursor=page.cursor, limit=str(wanted - len(events)))
        if events:
            progress.show(len(events), escape_controls(str(events[-1].get("timestamp", ""))))


async def _tail(
    source: Source,
    pairs: Pairs,
    events: list[StoredEvent],
    as_json: bool,
    out: TextIO,
    err: TextIO,
) -> None:
    """Print `events` oldest first, then every event stored since, each once, every
    FOLLOW_INTERVAL_S, until SIGINT or SIGTERM."""
    newest = parse_time("since", _last(pairs, "since") or DEFAULT_SINCE, now_ms())
    with stop_signals() as stopping:
        shown: set[tuple[str, str]] = set()
        first = True
        failing = False
        while True:
            fresh = [e for e in reversed(events) if (e["timestamp"], e["id"]) not in shown]
            _print_events(fresh, as_json, out, header=first and bool(fresh))
            out.flush()
            first = first and not fresh
            newest = max([newest, *(_ms(e["timestamp"]) for e in fresh)])
            # Only the newest millisecond's events can come again (the next read starts there).
            edge = iso_ms(newest)
            shown = {key for key in shown if key[0] >= edge}
            shown.update((e["timestamp"], e["id"]) for e in fresh if e["timestamp"] >= edge)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), FOLLOW_INTERVAL_S)
            try:
                got = await _unless(stopping, _since(source, pairs, newest))
            except SearchFailed as exc:
                if not exc.retriable:
                    raise
                if not failing:
                    print(f"logpipe: {exc}; trying again", file=err, flush=True)
                failing, got = True, []
            else:
                failing = False
            if got is None or stopping.is_set():
                return
            events = got


async def _unless(stopping: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None as soon as `stopping` is set (a slow read does not hold
    Ctrl-C up)."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


async def _since(source: Source, pairs: Pairs, since_ms: int) -> list[StoredEvent]:
    """Every event stored from `since_ms` to now, newest first (all pages)."""
    window = _with(pairs, since=iso_ms(since_ms), until=iso_ms(now_ms()), limit="1000")
    events: list[StoredEvent] = []
    request = window
    while True:
        page = await source.page(request)
        events.extend(page.events)
        if page.cursor is None:
            return events
        request = _with(window, cursor=page.cursor)


def _with(pairs: Pairs, **values: str) -> Pairs:
    """`pairs` with each name of `values` given that one value instead."""
    return [(k, v) for k, v in pairs if k not in values] + list(values.items())


def _last(pairs: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in reversed(pairs) if k == name), None)


def _ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def _print_events(events: list[StoredEvent], as_json: bool, out: TextIO, header: bool) -> None:
    if as_json:
        for event in events:
            out.write(orjson.dumps(event).decode() + "\n")
    elif events:
        print(format_table(events, header=header), file=out)


def _print_found(
    events: list[StoredEvent], more: bool, pairs: Pairs, as_json: bool, out: TextIO, err: TextIO
) -> None:
    _print_events(events, as_json, out, header=True)
    if not events:
        services = [escape_controls(v) for k, v in pairs if k == "service"]
        of = f" of {', '.join(services)}" if services else ""
        print(f"logpipe: no events{of} in this time range", file=err)
    elif more:
        print(
            f"logpipe: {len(events)} newest shown; older ones match too: "
            f"raise --limit or pass --until {escape_controls(str(events[-1]['timestamp']))}",
            file=err,
        )


# C0 controls, DEL, C1 controls (ESC's 8-bit forms among them), the line and paragraph
# separators and the bidirectional overrides: none reaches a terminal as itself.
_UNSAFE = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F)]
_UNSAFE += range(0x2066, 0x206A)
_ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _UNSAFE}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def escape_controls(text: str) -> str:
    """`text` with every control character written as a visible escape (\\x1b, \\n, ...)."""
    return text.translate(_ESCAPES)


def format_table(events: list[StoredEvent], header: bool = True) -> str:
    """Events as aligned lines a person reads: time, level, message, trace id, attributes;
    a message's further lines indented under its first.

    Every field is stored as a client sent it, so every field is escaped: a log line
    cannot clear the screen, retitle the terminal or write the clipboard (a message's line
    breaks become lines of their own, every other control character an escape).
    """
    lines = [f"{'TIME':<24}  {'LEVEL':<5}  MESSAGE"] if header else []
    for event in events:
        first, *more = str(event.get("message", "")).split("\n")
        attributes = event.get("attributes") or {}
        extra = [
            f"{escape_controls(str(k))}={escape_controls(str(v))}" for k, v in attributes.items()
        ]
        if event.get("trace_id"):
            extra.insert(0, f"trace={escape_controls(str(event['trace_id']))}")
        text = escape_controls(first) + (f"  {' '.join(extra)}" if extra else "")
        timestamp = escape_controls(str(event.get("timestamp", "")))
        level = escape_controls(str(event.get("level", ""))).upper()
        lines.append(f"{timestamp:<24}  {level:<5}  {text}")
        lines.extend(MESSAGE_INDENT + escape_controls(line) for line in more)
    return "\n".join(lines)


class _Progress:
    """One line on stderr, rewritten in place, while a search follows its cursors (a tty only)."""

    def __init__(self, err: TextIO) -> None:
        self._err = err
        self._shown = err.isatty()
        self._width = 0

    def show(self, found: int, searched_to: str) -> None:
        if not self._shown:
            return
        line = f"logpipe: searching… {found} found, searched back to {searched_to}"
        self._err.write("\r" + line.ljust(self._width))
        self._err.flush()
        self._width = len(line)

    def clear(self) -> None:
        if self._shown and self._width:
            self._err.write("\r" + " " * self._width + "\r")
            self._err.flush()
