"""A stdlib logging handler that ships records to logpipe from a background thread.

`LogpipeHandler.emit` encodes a record (cut to the schema's limits rather than refused)
into a buffer bounded in records and in bytes and never waits for the network; a daemon
thread ships a batch once it is full or its oldest record has waited `flush_interval_s`,
with the blocking shipper from `logpipe.client.shipping`.

    handler = LogpipeHandler("http://logpipe:8080", service="checkout", api_key=KEY)
    logging.getLogger().addHandler(handler)
    logging.getLogger(__name__).warning("card declined", extra={"order": 42})
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any

import orjson

from logpipe.client.shipping import (
    BATCH_BYTES,
    BATCH_EVENTS,
    TIMEOUT_S,
    ShipStats,
    _BlockingShipper,
    exact,
    take_batch,
)
from logpipe.core.event import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTES,
    MAX_EVENT_BYTES,
    MAX_MESSAGE_BYTES,
    new_id,
)

log = logging.getLogger(__name__)

TRUNCATED = "… [truncated]"
MAX_BUFFERED_BYTES = 32 * 1024 * 1024
# The attribute that marks the handler's own report of dropped records (and their count).
DROPPED = "logpipe.dropped"

Scalar = str | int | float | bool
_HEX = re.compile(r"[0-9a-fA-F]{1,32}")
_DDB_MIN, _DDB_LIMIT = 1e-130, 1e126


def _optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# The client does not need OpenTelemetry; where it is installed, records logged inside a
# span carry its trace and span ids.
_otel_trace = _optional("opentelemetry.trace")


def current_span_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the active OpenTelemetry span in this thread, else None."""
    if _otel_trace is None:
        return None
    context = _otel_trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class LogpipeHandler(logging.Handler):
    """A logging handler that ships records to logpipe from a background thread.

    `emit` never waits for the network: a record is encoded and put in a buffer bounded in
    records (`capacity`) and bytes (`max_buffered_bytes`), or dropped and counted in
    `dropped` when the buffer is full (the ingestor is down or slow); every
    `report_interval_s` with drops, one warning says how many. A daemon thread ships a
    batch when it is full or its oldest record has waited `flush_interval_s`, retrying
    with the same ids; a record is given up `give_up_after_s` after it was logged. `flush`
    and `close` (logging.shutdown calls both at interpreter exit) ship what is left, each
    waiting at most `close_timeout_s`.
    """

    def __init__(
        self,
        url: str,
        service: str,
        *,
        api_key: str | None = None,
        level: int = logging.NOTSET,
        capacity: int = 10_000,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        batch_events: int = BATCH_EVENTS,
        batch_bytes: int = BATCH_BYTES,
        flush_interval_s: float = 1.0,
        close_timeout_s: float = 5.0,
        give_up_after_s: float = 300.0,
        timeout_s: float = TIMEOUT_S,
        report_interval_s: float = 60.0,
        trace_context: bool = True,
    ) -> None:
        super().__init__(level)
        self.service = service
        self.trace_context = trace_context
        self._shipper = _BlockingShipper(url, api_key, give_up_after_s, timeout_s)
        self._capacity = capacity
        self._max_buffered_bytes = max_buffered_bytes
        self._batch_events = batch_events
        self._batch_bytes = batch_bytes
        self._flush_interval_s = flush_interval_s
        self._close_timeout_s = close_timeout_s
        self._report_interval_s = report_interval_s
        self._ready = threading.Condition(threading.Lock())
        self._buffer: deque[bytes] = deque()
        self._buffered_at: deque[float] = deque()  # when each buffered record came
        self._buffered_bytes = 0
        self._unsettled = 0
        self._flushing = 0
        self._closing = False
        self._dropped = 0
        self._unreported = 0
        self._reported_at = time.monotonic()
        self._thread = self._start_thread()
        if hasattr(os, "register_at_fork"):
            after_fork = weakref.WeakMethod(self._after_fork_in_child)
            os.register_at_fork(after_in_child=lambda: _call(after_fork))

    @property
    def dropped(self) -> int:
        """Records dropped because the buffer was full (or the handler closed)."""
        return self._dropped

    @property
    def stats(self) -> ShipStats:
        return self._shipper.stats

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self._thread and not hasattr(record, DROPPED):
            return  # the shipper's own warnings would feed the buffer they are about
        try:
            # The span is the emitting thread's: read it here, not in the shipping thread.
            span = current_span_ids() if self.trace_context else None
            data = encode_record(
                record, self.service, self.format(record), span, self.trace_context
            )
        except Exception:
            self.handleError(record)
            return
        with self._ready:
            if (
                self._closing
                or len(self._buffer) >= self._capacity
                or self._buffered_bytes + len(data) > self._max_buffered_bytes
            ):
                self._dropped += 1
                self._unreported += 1
                if self._unreported == 1:
                    self._ready.notify_all()  # the shipping thread sets its report clock
                return
            self._buffer.append(data)
            self._buffered_at.append(time.monotonic())
            self._buffered_bytes += len(data)
            self._unsettled += 1
            # The first record starts the flush interval's clock in the shipping thread.
            if len(self._buffer) == 1 or self._full():
                self._ready.notify_all()

    def flush(self) -> None:
        """Ship what is buffered; wait for the answers, at most `close_timeout_s`."""
        with self._ready:
            self._flushing += 1
            self._ready.notify_all()
            try:
                self._ready.wait_for(
                    lambda: self._unsettled == 0 or not self._thread.is_alive(),
                    self._close_timeout_s,
                )
            finally:
                self._flushing -= 1

    def close(self) -> None:
        """Ship what is left (at most `close_timeout_s`), then stop the thread. Idempotent."""
        with self._ready:
            closing, self._closing = self._closing, True
            self._ready.notify_all()
        if not closing:
            self._thread.join(self._close_timeout_s)
            if self._thread.is_alive():
                log.warning("closed with %d log records undelivered", self._unsettled)
            else:
                self._shipper.close()
        super().close()

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="logpipe-handler", daemon=True)
        thread.start()
        return thread

    def _after_fork_in_child(self) -> None:
        # A forked worker (gunicorn, multiprocessing) has no shipping thread and may hold
        # a lock the parent's thread had taken: start afresh; the parent ships its buffer.
        self._ready = threading.Condition(threading.Lock())
        self._buffer.clear()
        self._buffered_at.clear()
        self._buffered_bytes = 0
        self._unsettled = 0
        self._unreported = 0
        self._shipper.forget_connection()
        if not self._closing:
            self._thread = self._start_thread()

    def _run(self) -> None:
        while (taken := self._next_batch()) is not None:
            self._report_drops()
            batch, since = taken
            if not batch:
                continue  # woken to report drops
            try:
                self._shipper.ship_encoded(batch, since, self._pause)
            except Exception:
                # A bug here must not silence every later record: count the batch, go on.
                log.exception("could not ship %d log records", len(batch))
                self._shipper.stats.failed += len(batch)
            with self._ready:
                self._unsettled -= len(batch)
                self._ready.notify_all()
        self._report_drops(final=True)

    def _next_batch(self) -> tuple[list[bytes], float] | None:
        """The next batch and when its oldest record came, once one is due; an empty batch
        when a report of drops is due first; None once closed with nothing left."""
        with self._ready:
            while not self._due():
                if self._closing and not self._buffer:
                    return None
                if self._report_due():
                    return [], 0.0
                self._ready.wait(self._until_due())
            since = self._buffered_at[0]
            batch = take_batch(self._buffer, self._batch_events, self._batch_bytes)
            for _ in batch:
                self._buffered_at.popleft()
            self._buffered_bytes -= sum(map(len, batch))
            return batch, since

    def _full(self) -> bool:
        return len(self._buffer) >= self._batch_events or self._buffered_bytes >= self._batch_bytes

    def _due(self) -> bool:
        if not self._buffer:
            return False
        waited = time.monotonic() - self._buffered_at[0]
        return (
            self._full()
            or self._closing
            or bool(self._flushing)
            or waited >= self._flush_interval_s
        )

    def _until_due(self) -> float | None:
        """Seconds until the oldest record's interval or the next report ends; None: none."""
        now = time.monotonic()
        ends = [self._reported_at + self._report_interval_s] if self._unreported else []
        if self._buffer:
            ends.append(self._buffered_at[0] + self._flush_interval_s)
        return max(min(ends) - now, 0.0) if ends else None

    def _report_due(self) -> bool:
        return bool(
            self._unreported and time.monotonic() >= self._reported_at + self._report_interval_s
        )

    def _pause(self, seconds: float) -> None:
        """The wait between two tries of a batch, in steps that let drops be reported."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, self._report_interval_s))
            self._report_drops()

    def _report_drops(self, final: bool = False) -> None:
        """One warning with the records dropped since the last one, once an interval ends."""
        with self._ready:
            if not (self._report_due() or (final and self._unreported)):
                return
            now = time.monotonic()
            count, self._unreported = self._unreported, 0
            seconds, self._reported_at = now - self._reported_at, now
        # Outside the lock: this handler may be among the ones that hear it (and keeps it,
        # the one record of its own thread that it does, if there is room).
        log.warning(
            "dropped %d log records in the last %.0f s: the buffer was full "
            "(%d records or %d bytes); the ingestor is down or slow",
            count,
            seconds,
            self._capacity,
            self._max_buffered_bytes,
            extra={DROPPED: count},
        )


def _call(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()


_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "otelTraceID",
    "otelSpanID",
    "otelTraceSampled",
    "otelServiceName",
}


def loguru_sink(handler: logging.Handler) -> Callable[[Any], None]:
    """A loguru sink that hands each message to `handler` (a LogpipeHandler) as a stdlib
    record: loguru's own message, without the prefix of a sink's format; its `extra`
    (bound fields and keyword arguments) as attributes; its level, time, place and
    exception. Duck-typed on loguru's record: logpipe does not import loguru.

        logger.add(loguru_sink(LogpipeHandler(url, service="checkout")))
    """

    def sink(message: Any) -> None:
        entry = message.record
        exc = entry["exception"]
        record = logging.LogRecord(
            entry["name"] or "",
            entry["level"].no,
            entry["file"].path,
            entry["line"],
            entry["message"],
            None,
            (exc.type, exc.value, exc.traceback) if exc else None,
            entry["function"],
        )
        record.levelname = entry["level"].name
        record.created = entry["time"].timestamp()
        record.threadName, record.process = entry["thread"].name, entry["process"].id
        for key, value in entry["extra"].items():
            # A field named like a LogRecord's own (`name`, `msg`) must not replace it.
            setattr(record, f"extra.{key}" if key in _RECORD_FIELDS else key, value)
        if record.levelno >= handler.level:
            handler.handle(record)

    return sink


def level_of(levelno: int) -> str:
    """The schema level of a stdlib logging level (custom levels round down)."""
    for threshold, name in (
        (logging.CRITICAL, "fatal"),
        (logging.ERROR, "error"),
        (logging.WARNING, "warn"),
        (logging.INFO, "info"),
        (logging.DEBUG, "debug"),
    ):
        if levelno >= threshold:
            return name
    return "trace"


def encode_record(
    record: logging.LogRecord,
    service: str,
    message: str,
    span: tuple[str, str] | None = None,
    trace_context: bool = True,
) -> bytes:
    """A log record as an encoded event, cut to the schema's limits rather than refused.

    Trace and span ids come from `span` (the active span when the record was logged), else
    from the fields opentelemetry-instrumentation-logging sets; none when `trace_context`
    is off.
    """
    ms = int(record.created * 1000)
    event: dict[str, Any] = {
        "id": new_id(ms),
        "service": service,
        "level": level_of(record.levelno),
        "message": clip(message, MAX_MESSAGE_BYTES),
        "timestamp": ms,
        "attributes": record_attributes(record),
    }
    if span is not None:
        event["trace_id"], event["span_id"] = span
    elif trace_context:
        # Set by opentelemetry-instrumentation-logging inside a span; all zeros outside one.
        for name, field in (("trace_id", "otelTraceID"), ("span_id", "otelSpanID")):
            value = getattr(record, field, None)
            if isinstance(value, str) and _HEX.fullmatch(value) and value.strip("0"):
                event[name] = value
    data = orjson.dumps(event)
    if len(data) > MAX_EVENT_BYTES:
        event["attributes"] = {"logger.name": record.name, "logpipe.attributes_dropped": True}
        data = orjson.dumps(event)
    return exact(data)


def record_attributes(record: logging.LogRecord) -> dict[str, Scalar]:
    """Where the record came from, plus the `extra=` fields, as flat attributes."""
    attributes: dict[str, Scalar] = {
        "logger.name": record.name,
        "code.function.name": record.funcName or "",
        "code.file.path": record.pathname,
        "code.line.number": record.lineno,
        "thread.name": record.threadName or "",
        "process.pid": record.process or 0,
    }
    if record.exc_info and record.exc_info[0] is not None:
        attributes["exception.type"] = record.exc_info[0].__name__
    for key, value in vars(record).items():
        if len(attributes) >= MAX_ATTRIBUTES:
            break
        if key not in _RECORD_FIELDS and 1 <= len(key) <= MAX_ATTRIBUTE_KEY_CHARS:
            attributes[key] = _scalar(value)
    return attributes


def _scalar(value: object) -> Scalar:
    if isinstance(value, str | bool):
        return value
    if isinstance(value, int) and abs(value) < 10**38:
        return value
    if isinstance(value, float) and (value == 0 or _DDB_MIN <= abs(value) < _DDB_LIMIT):
        return value  # what DynamoDB can store as a number (NaN and Inf are not)
    if isinstance(value, dict | list | tuple):
        try:
            return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
        except (orjson.JSONEncodeError, TypeError):
            pass  # nested too deeply, or keys that are not strings
    return repr(value)


def clip(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, marked as truncated when cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    room = max_bytes - len(TRUNCATED.encode())
    return data[:room].decode("utf-8", "ignore") + TRUNCATED
