"""Metrics move as they should, stay bounded, and reach CloudWatch as valid EMF lines."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients
from logpipe.aws.monitor import QueueMonitor
from logpipe.config import Settings
from logpipe.core.envelope import pack_envelope
from logpipe.core.event import encode_event, normalise
from logpipe.dev import promtext
from logpipe.dev.processes import RoleProcess
from logpipe.obs import metrics
from logpipe.obs.emf import EmfReporter, Snapshot, documents, take_snapshot
from logpipe.process.processor import Processor
from tests.support.aws import make_event, queue_counts
from tests.support.roles import Roles
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

INF = float("inf")


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        ([(1.0, 0.0), (2.0, 10.0), (INF, 10.0)], 0.5, 1.5),
        ([(1.0, 10.0), (2.0, 10.0), (INF, 10.0)], 0.99, 0.99),
        ([(1.0, 0.0), (2.0, 0.0), (INF, 4.0)], 0.5, 2.0),
        ([(1.0, 0.0), (INF, 0.0)], 0.5, None),
        ([], 0.5, None),
    ],
    ids=["middle-of-a-bucket", "first-bucket", "beyond-the-last-bound", "no-samples", "empty"],
)
def test_histogram_quantile_interpolates_like_promql(
    buckets: list[tuple[float, float]], q: float, expected: float | None
) -> None:
    assert metrics.histogram_quantile(buckets, q) == pytest.approx(expected)


def _value(samples: list[promtext.Sample], name: str, **labels: str) -> float:
    return promtext.total(samples, name, **labels)


async def test_metrics_count_a_real_run_exactly(
    ingestor_url: str, clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    before = await promtext.scrape(http, f"http://127.0.0.1:{settings.metrics_port}/metrics")
    events = [make_event(n, service="metered", level="warn") for n in range(40)]
    events += [{"level": "info", "message": "no service"}] * 3
    async with http.post(f"{ingestor_url}/ingest", json=events) as resp:
        assert resp.status == 202
    url = await queue_url(clients.sqs, settings.queue_name)
    await Processor(settings, clients, url).run_until_empty()

    after = await promtext.scrape(http, f"http://127.0.0.1:{settings.metrics_port}/metrics")

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("logpipe_events_received_total") == 43
    assert delta("logpipe_events_accepted_total") == 40
    assert delta("logpipe_events_rejected_total", reason="service") == 3
    assert delta("logpipe_sqs_messages_sent_total") >= 1
    assert delta("logpipe_sqs_events_per_message_sum") == 40
    assert delta("logpipe_sqs_send_seconds_count") == delta("logpipe_sqs_batches_sent_total")
    assert delta("logpipe_events_stored_total", service="metered", level="warn") == 40
    assert delta("logpipe_messages_deleted_total") == delta("logpipe_sqs_messages_sent_total")
    assert delta("logpipe_e2e_latency_seconds_count") == 40
    # One message of one service and hour: one block, its body and summary in one call.
    assert delta("logpipe_dynamodb_write_seconds_count") == 1
    assert _value(after, "logpipe_inflight_events") == 0


async def test_service_label_stays_bounded_when_a_thousand_services_post(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    events = [
        encode_event(normalise(make_event(n, service=f"svc-{n}"), now_ms=1)) for n in range(1000)
    ]
    for start in range(0, 1000, 200):
        await clients.sqs.send_message(
            QueueUrl=url, MessageBody=pack_envelope(events[start : start + 200])
        )
    await Processor(settings, clients, url).run_until_empty()

    services = {
        labels["service"]
        for family in metrics.events_stored.collect()
        for _, labels, _ in [(s.name, s.labels, s.value) for s in family.samples]
    }
    assert len(services) <= metrics.MAX_SERVICE_LABELS + 1
    assert "other" in services


async def test_queue_depth_gauge_follows_a_queue_filled_while_nothing_consumes(
    clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    dlq = await queue_url(clients.sqs, settings.dlq_name)
    monitor = QueueMonitor(clients.sqs, {"main": url, "dlq": dlq}, interval_s=0.1)
    await monitor.poll()
    assert metrics.queue_visible.labels("main")._value.get() == 0
    for n in range(7):
        await clients.sqs.send_message(QueueUrl=url, MessageBody=f"m{n}")
    await clients.sqs.send_message(QueueUrl=dlq, MessageBody="dead")

    async with monitor:

        async def filled() -> bool:
            return (
                metrics.queue_visible.labels("main")._value.get() == 7
                and metrics.queue_visible.labels("dlq")._value.get() == 1
            )

        await wait_until(filled, timeout=10)
    assert metrics.queue_oldest_age.labels("dlq")._value.get() >= 0


# --- EMF ---------------------------------------------------------------------------------


def assert_valid_emf(doc: dict[str, Any]) -> None:
    """The required structure of the CloudWatch embedded metric format specification."""
    aws = doc["_aws"]
    assert isinstance(aws["Timestamp"], int) and aws["Timestamp"] > 1_600_000_000_000
    assert isinstance(aws["CloudWatchMetrics"], list) and aws["CloudWatchMetrics"]
    for directive in aws["CloudWatchMetrics"]:
        assert set(directive) <= {"Namespace", "Dimensions", "Metrics"}
        assert isinstance(directive["Namespace"], str) and 1 <= len(directive["Namespace"]) <= 255
        for dimension_set in directive["Dimensions"]:
            assert 1 <= len(dimension_set) <= 30
            for dimension in dimension_set:
                assert isinstance(doc[dimension], str)  # every dimension is a root string member
        assert 1 <= len(directive["Metrics"]) <= 100
        for metric in directive["Metrics"]:
            assert set(metric) <= {"Name", "Unit", "StorageResolution"}
            value = doc[metric["Name"]]  # every metric is a root member
            assert isinstance(value, int | float) and not isinstance(value, bool)
            assert metric["Unit"] in {"Seconds", "Count", "Bytes", "None"}


def test_emf_counters_are_deltas_and_latency_is_statistics() -> None:
    before = Snapshot()
    before.counters[None]["events_accepted_total"] = 100.0
    before.histograms[None]["e2e_latency_seconds"] = {
        "buckets": {0.1: 10.0, 1.0: 10.0, INF: 10.0},
        "sum": 0.5,
    }
    now = Snapshot()
    now.counters[None]["events_accepted_total"] = 130.0
    now.counters[("Service", "api")]["events_stored_total"] = 12.0
    now.gauges[("Queue", "dlq")]["queue_visible_messages"] = 3.0
    now.histograms[None]["e2e_latency_seconds"] = {
        "buckets": {0.1: 10.0, 1.0: 30.0, INF: 30.0},
        "sum": 10.5,
    }

    docs = documents("processor", now, before, timestamp_ms=1_800_000_000_000)

    for doc in docs:
        assert_valid_emf(doc)
    role, dlq, service = docs
    assert role["Role"] == "processor"
    assert role["events_accepted_total"] == 30
    assert role["e2e_latency_seconds_count"] == 20
    assert role["e2e_latency_seconds"] == pytest.approx(0.5)  # (10.5 - 0.5) / 20
    assert 0.1 < role["e2e_latency_seconds_p50"] <= 1.0
    assert dlq["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Role", "Queue"]]
    assert (dlq["Queue"], dlq["queue_visible_messages"]) == ("dlq", 3.0)
    assert (service["Service"], service["events_stored_total"]) == ("api", 12.0)
    assert service["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "logpipe"


async def test_emf_reporter_writes_valid_lines_of_this_process() -> None:
    lines: list[str] = []
    metrics.events_received.inc(5)
    reporter = EmfReporter("ingestor", interval_s=0.05, write=lines.append)
    async with reporter:
        await wait_until(lambda: _have(lines, 2), timeout=5)
        metrics.events_received.inc(7)
    docs = [orjson.loads(line) for line in lines]
    for doc in docs:
        assert_valid_emf(doc)
    received = [
        d["events_received_total"] for d in docs if d.get("Service") is None and "Queue" not in d
    ]
    assert received[0] >= 5
    assert sum(received[1:]) == 7  # later lines carry only what happened since


async def _have(lines: list[str], count: int) -> bool:
    return len(lines) >= count


async def test_processor_with_emf_writes_valid_lines_on_stdout(
    roles: Roles, clients: Clients, settings: Settings
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    events = [encode_event(normalise(make_event(n), now_ms=1)) for n in range(30)]
    await clients.sqs.send_message(QueueUrl=url, MessageBody=pack_envelope(events))
    process = await RoleProcess.start(
        "processor", roles.env(LOGPIPE_EMF=1, LOGPIPE_EMF_INTERVAL_S=0.2)
    )
    try:
        lines: list[dict[str, Any]] = []
        assert process.process.stdout is not None

        async def stored_reported() -> bool:
            line = await asyncio.wait_for(process.process.stdout.readline(), 10)  # type: ignore[union-attr]
            lines.append(orjson.loads(line))
            return sum(d.get("events_stored_total", 0) for d in lines) >= 30

        await wait_until(stored_reported, timeout=30, interval=0)
    finally:
        assert await process.stop() == 0
    for doc in lines:
        assert_valid_emf(doc)
        assert doc["Role"] == "processor"
    assert sum(d.get("events_stored_total", 0) for d in lines if d.get("Service") == "svc") == 30


def test_snapshot_reads_only_logpipe_metrics() -> None:
    snapshot = take_snapshot()
    names = {n for group in snapshot.counters.values() for n in group}
    assert names and all(
        not n.startswith("logpipe_") and not n.startswith("process_") for n in names
    )


async def test_ingestor_queue_gauge_follows_the_backlog_while_no_processor_runs(
    roles: Roles, clients: Clients, settings: Settings, http: aiohttp.ClientSession
) -> None:
    await roles.start("ingestor", LOGPIPE_QUEUE_POLL_S=0.2, LOGPIPE_LINGER_MS=0)
    ingest = f"http://127.0.0.1:{settings.port}"
    url = await queue_url(clients.sqs, settings.queue_name)

    async def gauge_matches_sqs() -> bool:
        visible, _ = await queue_counts(clients, url)
        samples = await promtext.scrape(
            http, f"http://127.0.0.1:{roles.ingestor_metrics_port}/metrics"
        )
        gauge = promtext.total(samples, "logpipe_queue_visible_messages", queue="main")
        return visible > 0 and gauge == visible

    for batch in range(5):
        async with http.post(f"{ingest}/ingest", json=[make_event(batch)]) as resp:
            assert resp.status == 202
        await wait_until(gauge_matches_sqs, timeout=10)


def test_observe_many_gives_the_samples_of_one_observe_per_value() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    bounds = (0.005, 0.01, 0.1, 1.0, 10.0)
    values = [0.0, 0.005, 0.0051, 0.01, 0.5, 0.5, 1.0, 9.99, 10.0, 10.01, 3600.0, 0.25]
    one, many = CollectorRegistry(), CollectorRegistry()
    each = Histogram("lat_seconds", "x", buckets=bounds, registry=one)
    batch = Histogram("lat_seconds", "x", buckets=bounds, registry=many)
    for value in values:
        each.observe(value)
    metrics.observe_many(batch, values)
    metrics.observe_many(batch, [])

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, round(s.value, 9))
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples(many) == samples(one)
    assert ("lat_seconds_bucket", {"le": "+Inf"}, float(len(values))) in samples(many)
