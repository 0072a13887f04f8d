"""What a bench run reports: prices, costs per event, latency percentiles, the exact
read-back of the table, and the one JSON object `logpipe bench` prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

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
# Storage, PITR and CloudWatch Logs below: us-east-1 on-demand list prices, unchanged since
# 2023 or earlier (not read again from the pages on 2026-12-07: check them before quoting).
# DynamoDB Standard table class storage, per GB-month (the on-demand page above; the first
# 25 GB a month are free and not counted here). DynamoDB also bills 100 bytes of overhead per
# item, not counted either: the processor counts the items' own size only.
DYNAMODB_STANDARD_USD_PER_GB_MONTH = 0.25
# Point-in-time recovery (continuous backups), per GB-month of the table's size (same page).
DYNAMODB_PITR_USD_PER_GB_MONTH = 0.20
# CloudWatch Logs, the comparison in docs/figures.md (https://aws.amazon.com/cloudwatch/pricing/):
# ingestion per GB in the Standard and Infrequent Access log classes, and storage per GB-month.
CLOUDWATCH_STANDARD_USD_PER_GB = 0.50
CLOUDWATCH_INFREQUENT_ACCESS_USD_PER_GB = 0.25
CLOUDWATCH_STORAGE_USD_PER_GB_MONTH = 0.03
# A GB here is 2**30 bytes; storage is billed by the hour, and a month is 730 hours (as in
# the AWS Pricing Calculator), so a retention of D days is D * 24 / 730 months.
GB = 2**30
HOURS_PER_MONTH = 730


def percentile_ms(buckets: list[tuple[float, float]], q: float) -> float | None:
    seconds = metrics.histogram_quantile(buckets, q)
    return None if seconds is None else round(seconds * 1000, 1)


def mean_event_bytes(events: Sequence[Mapping[str, Any]]) -> float:
    """The mean size of `events` as sent: the length of each one's JSON."""
    return sum(len(orjson.dumps(event)) for event in events) / len(events) if events else 0.0


def retention_months(retention_days: int) -> float:
    return retention_days * 24 / HOURS_PER_MONTH


def storage_usd_per_million_events(
    stored_bytes_per_event: float, retention_days: int, pitr: bool
) -> float:
    """What a million events' items cost to keep for the retention:
    bytes per event * 1e6 / GB * months * (storage price [+ PITR price])."""
    per_gb_month = DYNAMODB_STANDARD_USD_PER_GB_MONTH
    if pitr:
        per_gb_month += DYNAMODB_PITR_USD_PER_GB_MONTH
    return stored_bytes_per_event * 1e6 / GB * retention_months(retention_days) * per_gb_month


def cost_figures(
    events: int,
    billed_sqs: float,
    write_units: float,
    stored_bytes: float = 0.0,
    retention_days: int = 30,
    pitr: bool = False,
) -> dict[str, float]:
    """Billed requests and write units per event, stored bytes per event, and USD per
    million events at the prices above: SQS requests and write units, then all in (plus
    storage for the retention, and PITR when `pitr`)."""
    usd = (
        billed_sqs * SQS_USD_PER_MILLION_REQUESTS
        + write_units * DYNAMODB_USD_PER_MILLION_WRITE_UNITS
    ) / events
    storage = storage_usd_per_million_events(stored_bytes / events, retention_days, pitr)
    return {
        "billed_sqs_requests_per_event": round(billed_sqs / events, 5),
        "write_units_per_event": round(write_units / events, 3),
        "billed_requests_per_event": round((billed_sqs + write_units) / events, 5),
        "usd_per_million_events": round(usd, 4),
        "wru_per_event": round(write_units / events, 3),
        "stored_bytes_per_event": round(stored_bytes / events, 1),
        "usd_per_million_events_all_in": round(usd + storage, 4),
    }


def cloudwatch_usd_per_million_events(event_bytes: float, retention_days: int) -> dict[str, float]:
    """The same events in CloudWatch Logs, by log class: event bytes * 1e6 / GB *
    (ingestion price + storage price * months). Storage is priced on the bytes as sent, an
    upper bound: CloudWatch bills archived logs after compression."""
    gb = event_bytes * 1e6 / GB
    storage = gb * CLOUDWATCH_STORAGE_USD_PER_GB_MONTH * retention_months(retention_days)
    return {
        "standard": round(gb * CLOUDWATCH_STANDARD_USD_PER_GB + storage, 4),
        "infrequent_access": round(gb * CLOUDWATCH_INFREQUENT_ACCESS_USD_PER_GB + storage, 4),
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
    event_bytes: float = 0.0,
    retention_days: int = 30,
    pitr: bool = False,
) -> dict[str, Any]:
    """The bench's JSON object (DESIGN.md's fields, then extra detail). `event_bytes` is the
    mean size of the events driven, as sent; storage is priced for `retention_days`."""
    if latency_ms is None:
        latency_ms = e2e_latency_ms(samples)
    costs = cost_figures(
        max(counts["stored"], 1),
        billed_sqs=promtext.total(samples, "logpipe_sqs_billed_requests_total"),
        write_units=promtext.total(samples, "logpipe_dynamodb_write_units_total"),
        stored_bytes=promtext.total(samples, "logpipe_dynamodb_stored_bytes_total"),
        retention_days=retention_days,
        pitr=pitr,
    )
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
        "event_bytes": round(event_bytes, 1),
        "wru_per_event": costs["wru_per_event"],
        "stored_bytes_per_event": costs["stored_bytes_per_event"],
        "usd_per_million_events_all_in": costs["usd_per_million_events_all_in"],
        "acknowledged": acknowledged,
        "billed_sqs_requests_per_event": costs["billed_sqs_requests_per_event"],
        "write_units_per_event": costs["write_units_per_event"],
        "retention_days": retention_days,
        "pitr": pitr,
        "cloudwatch_usd_per_million_events": cloudwatch_usd_per_million_events(
            event_bytes, retention_days
        ),
        "peak_rss_mb": peak_rss_mb or {},
    }
