"""The Prometheus metrics of every role (names from DESIGN.md; EMF drops the prefix)."""

from __future__ import annotations

import bisect
import collections
import threading
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from logpipe.config import port_error

# Labels stay bounded: past this many distinct services, the rest count as "other".
MAX_SERVICE_LABELS = 100
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1,
    1.5,
    2,
    3,
    5,
    10,
    30,
    60,
    300,
)
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_COUNT_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

events_received = Counter("logpipe_events_received_total", "Events read from request bodies.")
events_accepted = Counter("logpipe_events_accepted_total", "Events SQS accepted (answered 202).")
events_rejected = Counter("logpipe_events_rejected_total", "Events refused, by reason.", ["reason"])
sqs_messages_sent = Counter("logpipe_sqs_messages_sent_total", "SQS messages accepted by SQS.")
sqs_batches_sent = Counter("logpipe_sqs_batches_sent_total", "SendMessageBatch calls made.")
sqs_send_retries = Counter(
    "logpipe_sqs_send_retries_total", "SQS entries sent again after a failure."
)
sqs_send_seconds = Histogram(
    "logpipe_sqs_send_seconds", "SendMessageBatch call latency.", buckets=_CALL_BUCKETS
)
sqs_events_per_message = Histogram(
    "logpipe_sqs_events_per_message", "Events packed in one SQS message.", buckets=_COUNT_BUCKETS
)
requests_rejected = Counter(
    "logpipe_requests_rejected_total",
    "Ingest requests refused whole, by reason (too_large, too_many_events, budget, timeout, ...).",
    ["reason"],
)
memory_held_bytes = Gauge(
    "logpipe_ingest_memory_held_bytes", "Bytes the ingest requests in progress hold (estimated)."
)
inflight_events = Gauge("logpipe_inflight_events", "Events accepted over HTTP, not yet in SQS.")

messages_received = Counter("logpipe_messages_received_total", "SQS messages received.")
messages_redelivered = Counter(
    "logpipe_messages_redelivered_total", "SQS messages received more than once."
)
messages_deleted = Counter(
    "logpipe_messages_deleted_total", "SQS messages deleted after all their events were stored."
)
messages_retried = Counter(
    "logpipe_messages_retried_total", "SQS messages set visible again because a write failed."
)
messages_undecodable = Counter(
    "logpipe_messages_undecodable_total", "SQS messages that are not logpipe envelopes."
)
events_stored = Counter(
    "logpipe_events_stored_total", "Events written to DynamoDB.", ["service", "level"]
)
write_retries = Counter(
    "logpipe_write_retries_total", "Items written again (UnprocessedItems or a failed call)."
)
write_throttles = Counter("logpipe_write_throttles_total", "BatchWriteItem calls throttled.")
write_failures = Counter(
    "logpipe_write_failures_total", "Items given up on after every attempt (message retried)."
)
throttle_wait_seconds = Counter(
    "logpipe_throttle_wait_seconds_total",
    "Seconds writes spent backing off after DynamoDB throttling (summed over concurrent calls).",
)
events_dead_lettered = Counter(
    "logpipe_events_dead_lettered_total", "Events that can never be stored, sent to the DLQ alone."
)
write_seconds = Histogram(
    "logpipe_dynamodb_write_seconds", "BatchWriteItem call latency.", buckets=_CALL_BUCKETS
)
e2e_latency = Histogram(
    "logpipe_e2e_latency_seconds", "From ingest to stored.", buckets=_LATENCY_BUCKETS
)

queue_visible = Gauge("logpipe_queue_visible_messages", "Messages waiting in the queue.", ["queue"])
queue_inflight = Gauge(
    "logpipe_queue_inflight_messages", "Messages received and not yet deleted.", ["queue"]
)
queue_oldest_age = Gauge(
    "logpipe_queue_oldest_age_seconds", "Age of the oldest message seen in the queue.", ["queue"]
)

aws_requests = Counter(
    "logpipe_aws_requests_total", "AWS API calls made, by operation.", ["operation"]
)
sqs_billed_requests = Counter(
    "logpipe_sqs_billed_requests_total", "SQS requests as billed: one per 64 KiB of payload."
)
dynamodb_write_units = Counter(
    "logpipe_dynamodb_write_units_total", "DynamoDB write request units consumed (1 per KB)."
)
dynamodb_stored_bytes = Counter(
    "logpipe_dynamodb_stored_bytes_total", "Bytes of items written (DynamoDB's item size)."
)

console_searches = Counter(
    "logpipe_console_searches_total", "GET /api/logs answered, by outcome.", ["outcome"]
)
console_search_seconds = Histogram(
    "logpipe_console_search_seconds", "Time to answer GET /api/logs.", buckets=_CALL_BUCKETS
)

faults_injected = Counter(
    "logpipe_faults_injected_total", "Faults injected by LOGPIPE_FAULTS (chaos runs).", ["fault"]
)

emitter_events_sent = Counter(
    "logpipe_emitter_events_sent_total", "Events the emitter shipped.", ["service"]
)
emitter_events_accepted = Counter(
    "logpipe_emitter_events_accepted_total", "Events the ingestor acknowledged.", ["service"]
)

_services: set[str] = set()
_services_lock = threading.Lock()


def service_label(service: str) -> str:
    """The service as a label value, or "other" once MAX_SERVICE_LABELS are in use."""
    if service in _services:
        return service
    with _services_lock:
        if len(_services) < MAX_SERVICE_LABELS:
            _services.add(service)
            return service
    return "other"


def serve_metrics(host: str, port: int) -> tuple[int, Callable[[], None]]:
    """Serve /metrics on a background thread; return the bound port and a stop function.

    ConfigError naming LOGPIPE_METRICS_PORT when the port is taken.
    """
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise port_error("LOGPIPE_METRICS_PORT", host, port, exc) from None
    bound = int(server.server_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return bound, stop


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of cumulative (upper bound, count) buckets, interpolated as PromQL does."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_deltas(
    now: list[tuple[float, float]], before: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Cumulative buckets of the observations made between two scrapes of one histogram."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in now]


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """`histogram.observe(v)` for every value, with one update per bucket touched rather than
    per value: the same bucket counts, one lock taken per bucket for a whole batch."""
    observe_counted(histogram, [(value, 1) for value in values])


def observe_counted(histogram: Histogram, counted: list[tuple[float, int]]) -> None:
    """`histogram.observe(v)` `n` times for every (v, n): `observe_many` for values that
    repeat (the events of one request share their ingest time)."""
    if not counted:
        return
    bounds = histogram._upper_bounds
    per_bucket: collections.Counter[int] = collections.Counter()
    for value, count in counted:
        per_bucket[bisect.bisect_left(bounds, value)] += count
    histogram._sum.inc(sum(value * count for value, count in counted))
    for index, count in per_bucket.items():
        histogram._buckets[index].inc(count)
