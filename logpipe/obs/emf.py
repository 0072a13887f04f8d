"""CloudWatch Embedded Metric Format: the Prometheus metrics as one JSON line per interval.

On ECS the awslogs driver ships stdout to CloudWatch Logs, which turns these lines into
metrics in the `logpipe` namespace — no PutMetricData calls, no agent.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry

from logpipe.lifecycle import Periodic
from logpipe.obs.metrics import bucket_deltas, histogram_quantile

NAMESPACE = "logpipe"
PREFIX = "logpipe_"
# Labels that become CloudWatch dimensions; every other label is summed away.
DIMENSION_LABELS = {"service": "Service", "queue": "Queue"}

Group = tuple[str, str] | None  # (dimension, value), or None for the role's own document


@dataclass
class Snapshot:
    """The values of logpipe's metrics at one moment, grouped by dimension."""

    counters: dict[Group, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    gauges: dict[Group, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    histograms: dict[Group, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(dict)
    )


def _group(labels: dict[str, str]) -> Group:
    for label, dimension in DIMENSION_LABELS.items():
        if label in labels:
            return dimension, labels[label]
    return None


def take_snapshot(registry: CollectorRegistry = REGISTRY) -> Snapshot:
    """Read every `logpipe_` metric of the registry."""
    snapshot = Snapshot()
    for family in registry.collect():
        if not family.name.startswith(PREFIX):
            continue
        name = family.name[len(PREFIX) :]
        for sample in family.samples:
            group = _group(sample.labels)
            if family.type == "counter" and sample.name.endswith("_total"):
                values = snapshot.counters[group]
                values[f"{name}_total"] = values.get(f"{name}_total", 0.0) + sample.value
            elif family.type == "gauge":
                values = snapshot.gauges[group]
                values[name] = values.get(name, 0.0) + sample.value
            elif family.type == "histogram":
                stats = snapshot.histograms[group].setdefault(name, {"buckets": {}, "sum": 0.0})
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    stats["buckets"][bound] = stats["buckets"].get(bound, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    stats["sum"] += sample.value
    return snapshot


def _unit(name: str) -> str:
    if "seconds" in name:
        return "Seconds"
    if name.endswith("_bytes"):
        return "Bytes"
    return "Count"


def _histogram_values(
    name: str, now: dict[str, Any], before: dict[str, Any] | None
) -> dict[str, float]:
    buckets = sorted(now["buckets"].items())
    earlier = sorted(before["buckets"].items()) if before else []
    window = bucket_deltas(buckets, earlier)
    count = window[-1][1] if window else 0.0
    if count <= 0:
        return {}
    values = {
        f"{name}_count": count,
        name: (now["sum"] - (before["sum"] if before else 0.0)) / count,
    }
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        quantile = histogram_quantile(window, q)
        if quantile is not None:
            values[f"{name}_{label}"] = quantile
    return values


def documents(
    role: str, now: Snapshot, before: Snapshot, timestamp_ms: int
) -> list[dict[str, Any]]:
    """EMF documents for one interval: counters as deltas, gauges as they are, latency stats."""
    groups = set(now.counters) | set(now.gauges) | set(now.histograms)
    docs = []
    for group in sorted(groups, key=lambda g: ("",) if g is None else g):
        values: dict[str, float] = {}
        for name, value in now.counters.get(group, {}).items():
            if value > 0:
                values[name] = value - before.counters.get(group, {}).get(name, 0.0)
        values.update(now.gauges.get(group, {}))
        for name, stats in now.histograms.get(group, {}).items():
            values.update(
                _histogram_values(name, stats, before.histograms.get(group, {}).get(name))
            )
        if not values:
            continue
        dimensions = ["Role"] if group is None else ["Role", group[0]]
        doc: dict[str, Any] = {
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [
                    {
                        "Namespace": NAMESPACE,
                        "Dimensions": [dimensions],
                        "Metrics": [{"Name": n, "Unit": _unit(n)} for n in sorted(values)][:100],
                    }
                ],
            },
            "Role": role,
        }
        if group is not None:
            doc[group[0]] = group[1]
        doc.update(values)
        docs.append(doc)
    return docs


class EmfReporter(Periodic):
    """Writes the role's EMF lines every `interval_s`, and once more when stopped."""

    def __init__(
        self, role: str, interval_s: float, write: Callable[[str], Any] | None = None
    ) -> None:
        super().__init__(interval_s)
        self._role = role
        self._write = write or _stdout
        self._before = Snapshot()
        self._started = False

    def report(self) -> None:
        now = take_snapshot()
        for doc in documents(self._role, now, self._before, int(time.time() * 1000)):
            self._write(orjson.dumps(doc).decode())
        self._before = now

    async def tick(self) -> None:
        # The first tick comes at start: there is nothing to report yet.
        if self._started:
            self.report()
        self._started = True

    async def stop(self) -> None:
        running = self._task is not None
        await super().stop()
        if running:
            self.report()


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
