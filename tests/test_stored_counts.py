"""What the processor counts as it stores blocks: events per service and level, latency,
write units and bytes, and its messages' pending events."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from prometheus_client import Histogram

from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.core.block import block_of, item_bytes, write_units
from logpipe.core.event import Event, normalise
from logpipe.core.timefmt import hour
from logpipe.obs import metrics
from logpipe.process import processor as processor_module
from logpipe.process.processor import MAX_STORED_COUNTERS, Processor, Tracker, _Write

pytestmark = pytest.mark.unit

NOW_MS = 1_714_564_800_000


def event(message: str) -> Event:
    return normalise({"service": "svc", "message": message, "timestamp": NOW_MS}, NOW_MS)


def sample(metric: Any, **labels: str) -> float:
    """A metric's current value from the registry (a counter's total or histogram's count)."""
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(("_total", "_count")) and s.labels == labels:
                return float(s.value)
    return 0.0


def buckets(histogram: Any) -> list[float]:
    return [s.value for f in histogram.collect() for s in f.samples if s.name.endswith("_bucket")]


@pytest.mark.parametrize("limit", [MAX_STORED_COUNTERS, 1], ids=["counters-kept", "past-bound"])
def test_recording_stored_blocks_counts_each_event_once(
    limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor_module, "MAX_STORED_COUNTERS", limit)
    processor = Processor(Settings(), Clients(sqs=None, dynamodb=None), "queue-url")
    shared, alone = Tracker({}, pending=12), Tracker({}, pending=3)
    events = []
    for n, (service, level) in enumerate(
        [("svc-a", "info"), ("svc-a", "error"), ("svc-b", "info"), ("svc-a", "info")] * 3
    ):
        stored = event(f"m{n}")
        stored["service"], stored["level"] = service, level
        if n % 3 == 0:
            stored["ingested_at"] = 0  # decades ago: the last bucket
        elif n % 3 == 1:
            stored["ingested_at"] = 10**13 - 1  # ahead of the clock: counted as 0 s
        else:
            stored.pop("ingested_at", None)  # not counted
        events.append(stored)
    # Blocks of one, two and three events; the first is waited for by two messages.
    writes = [
        _Write(block_of(e[0]["service"], hour(NOW_MS), e), trackers)
        for e, trackers in [
            (events[0:1], [shared, alone]),
            (events[1:3], [shared]),
            (events[3:6], [shared]),
            (events[6:12], [shared]),
        ]
    ]
    # Counted under the service's label: "other" once the process has seen too many
    # services (earlier tests in this process may have).
    pairs: Counter[tuple[str, str]] = Counter()
    for (service, level), count in {
        ("svc-a", "info"): 6,
        ("svc-a", "error"): 3,
        ("svc-b", "info"): 3,
    }.items():
        pairs[metrics.service_label(service), level] += count
    before = {p: sample(metrics.events_stored, service=p[0], level=p[1]) for p in pairs}
    units_before = sample(metrics.dynamodb_write_units)
    bytes_before = sample(metrics.dynamodb_stored_bytes)
    latency_before = buckets(metrics.e2e_latency)
    items = [processor._items(w.block) for w in writes]
    sizes = [item_bytes(item) for pair in items for item in pair]

    for half in (slice(0, 2), slice(2, 4)):  # two calls: the kept counters are used again
        processor._record_stored(writes[half], items[half])

    for pair, count in pairs.items():
        assert sample(metrics.events_stored, service=pair[0], level=pair[1]) == before[pair] + count
    assert sample(metrics.dynamodb_write_units) == units_before + sum(map(write_units, sizes))
    assert sample(metrics.dynamodb_stored_bytes) == bytes_before + sum(sizes)
    added = [b - a for a, b in zip(latency_before, buckets(metrics.e2e_latency), strict=True)]
    assert added[0] == 4 and added[-1] == 8  # cumulative: 4 at 0 s, 4 more decades old
    assert shared.pending == 0 and alone.pending == 2
    assert len(processor._stored_counters) == min(limit, 3)


def test_counted_observations_are_the_one_by_one_ones() -> None:
    """`observe_counted` (per distinct value) adds what `observe_many` adds for the values."""
    values = [0.0, 0.004, 0.004, 0.3, 0.3, 0.3, 7.0, 10**6, 2.5]
    counted = [(0.0, 1), (0.004, 2), (0.3, 3), (7.0, 1), (10**6, 1), (2.5, 1)]
    one_by_one = Histogram("by_one_seconds", "t", registry=None)
    by_value = Histogram("by_value_seconds", "t", registry=None)
    metrics.observe_many(one_by_one, values)
    metrics.observe_counted(by_value, counted)
    metrics.observe_counted(by_value, [])
    assert buckets(by_value) == buckets(one_by_one)
    assert sum(b > 0 for b in buckets(by_value)) >= 4  # the values fall into several buckets
    total = [
        s.value
        for h in (one_by_one, by_value)
        for f in h.collect()
        for s in f.samples
        if s.name.endswith("_sum")
    ]
    assert total[1] == pytest.approx(total[0]) and total[0] > 10**6
