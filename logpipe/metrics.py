"""The Prometheus metrics of every role (names from DESIGN.md; EMF drops the prefix)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import aiohttp
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

# Labels stay bounded: past this many distinct services, the rest count as "other".
MAX_SERVICE_LABELS = 100
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

events_received = Counter("logpipe_events_received_total", "Events read from request bodies.")
events_accepted = Counter("logpipe_events_accepted_total", "Events SQS accepted (answered 202).")
events_rejected = Counter("logpipe_events_rejected_total", "Events refused, by reason.", ["reason"])
sqs_messages_sent = Counter("logpipe_sqs_messages_sent_total", "SQS messages accepted by SQS.")
sqs_batches_sent = Counter("logpipe_sqs_batches_sent_total", "SendMessageBatch calls made.")
sqs_send_retries = Counter(
    "logpipe_sqs_send_retries_total", "SQS entries sent again after a failure."
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
e2e_latency = Histogram(
    "logpipe_e2e_latency_seconds", "From ingest to stored.", buckets=_LATENCY_BUCKETS
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
    """Serve /metrics on a background thread; return the bound port and a stop function."""
    server, thread = start_http_server(port, addr=host)
    bound = int(server.server_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return bound, stop


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Read a /metrics page: each sample name with its values summed over labels."""
    async with session.get(url) as resp:
        text = await resp.text()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals
