"""What a bench run reports: prices, costs per event, latency percentiles, the exact
read-back of the table, and the one JSON object `logpipe bench` prints."""

from __future__ import annotations

from typing import Any

from logpipe.aws.calls import stored_ids
from logpipe.aws.clients import Clients
from logpipe.dev import promtext
from logpipe.obs import metrics

# Public on-demand prices, us-east-1, as listed on 2026-11-25 (unchanged since 2024-11-01):
# SQS standard queue, per million requests after the free tier
# (https://aws.amazon.com/sqs/pricing/); each 64 KiB of a call's payload is one request.
SQS_USD_PER_MILLION_REQUESTS = 0.40
# DynamoDB on-demand, per million write request units, 1 WRU per started KB of an item
# (https://aws.amazon.com/dynamodb/pricing/on-demand/).
DYNAMODB_USD_PER_MILLION_WRITE_UNITS = 0.625


def percentile_ms(buckets: list[tuple[float, float]], q: float) -> float | None:
    seconds = metrics.histogram_quantile(buckets, q)
    return None if seconds is None else round(seconds * 1000, 1)


def cost_figures(events: int, billed_sqs: float, write_units: float) -> dict[str, float]:
    """Billed requests per event and USD per million events at the prices above."""
    usd = (
        billed_sqs * SQS_USD_PER_MILLION_REQUESTS
        + write_units * DYNAMODB_USD_PER_MILLION_WRITE_UNITS
    ) / 1e6
    return {
        "billed_sqs_requests_per_event": round(billed_sqs / events, 5),
        "write_units_per_event": round(write_units / events, 3),
        "billed_requests_per_event": round((billed_sqs + write_units) / events, 5),
        "usd_per_million_events": round(usd / events * 1e6, 4),
    }


def fired(samples: list[promtext.Sample], kills: dict[str, int]) -> dict[str, int]:
    """How often each fault fired: the roles' injection counters plus the bench's kills."""
    counts: dict[str, int] = {}
    for name, labels, value in samples:
        if name == "logpipe_faults_injected_total" and value:
            counts[labels["fault"]] = counts.get(labels["fault"], 0) + int(value)
    counts.update({f"kill-{role}": n for role, n in kills.items() if n})
    return dict(sorted(counts.items()))


async def verify(clients: Clients, table: str, acknowledged: set[str]) -> dict[str, int]:
    """Read the table back: how many acknowledged events are stored, lost, or stored twice."""
    ids = await stored_ids(clients, table)
    distinct = set(ids)
    return {
        "stored": len(distinct & acknowledged),
        "lost": len(acknowledged - distinct),
        "duplicates": len(ids) - len(distinct),
    }


def aws_requests(samples: list[promtext.Sample]) -> dict[str, int]:
    """AWS calls made, by operation (those made at least once), in name order."""
    operations: dict[str, int] = {}
    for name, labels, value in samples:
        if name == "logpipe_aws_requests_total" and value:
            operations[labels["operation"]] = operations.get(labels["operation"], 0) + int(value)
    return dict(sorted(operations.items()))


def e2e_latency_ms(samples: list[promtext.Sample]) -> tuple[float | None, float | None]:
    """End-to-end p50 and p99 in ms, from the processors' histogram."""
    e2e = promtext.buckets(samples, "logpipe_e2e_latency_seconds")
    return percentile_ms(e2e, 0.5), percentile_ms(e2e, 0.99)


def summarise(
    *,
    mode: str,
    events: int,
    acknowledged: int,
    counts: dict[str, int],
    seconds: float,
    samples: list[promtext.Sample],
    peak_rss_mb: dict[str, float | None] | None = None,
    latency_ms: tuple[float | None, float | None] | None = None,
    cpu_us_per_event: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The bench's JSON object (DESIGN.md's fields, then extra detail)."""
    if latency_ms is None:
        latency_ms = e2e_latency_ms(samples)
    billed_sqs = promtext.total(samples, "logpipe_sqs_billed_requests_total")
    write_units = promtext.total(samples, "logpipe_dynamodb_write_units_total")
    costs = cost_figures(max(counts["stored"], 1), billed_sqs, write_units)
    return {
        "events": events,
        "stored": counts["stored"],
        "lost": counts["lost"],
        "duplicates": counts["duplicates"],
        "seconds": round(seconds, 2),
        "events_per_s": round(counts["stored"] / seconds, 1) if seconds else 0.0,
        "e2e_p50_ms": latency_ms[0],
        "e2e_p99_ms": latency_ms[1],
        "aws_requests": aws_requests(samples),
        "billed_requests_per_event": costs["billed_requests_per_event"],
        "usd_per_million_events": costs["usd_per_million_events"],
        "mode": mode,
        "chaos": "",
        "cpu_us_per_event": cpu_us_per_event or {},
        "acknowledged": acknowledged,
        "billed_sqs_requests_per_event": costs["billed_sqs_requests_per_event"],
        "write_units_per_event": costs["write_units_per_event"],
        "peak_rss_mb": peak_rss_mb or {},
    }
