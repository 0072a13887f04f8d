"""`logpipe bench` at small scale: it runs end to end, counts exactly, and its requests fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from logpipe.aws.clients import sqs_billed_chunks
from logpipe.dev.cpu import py_spy
from logpipe.dev.report import cost_figures
from tests.support.roles import run_bench

pytestmark = pytest.mark.e2e

FIELDS = {
    "events",
    "stored",
    "lost",
    "duplicates",
    "seconds",
    "events_per_s",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "aws_requests",
    "billed_requests_per_event",
    "usd_per_million_events",
    "mode",
    "chaos",
}


def bench(*args: str) -> dict[str, Any]:
    doc = run_bench(*args)
    assert doc.keys() >= FIELDS
    assert (doc["lost"], doc["duplicates"]) == (0, 0)
    assert doc["stored"] == doc["events"]
    return doc


def test_batched_bench_packs_events_and_batches_calls() -> None:
    # Enough events that each role uses well over one clock tick (10 ms) of CPU, the unit
    # /proc counts in: 500 events took the ingestor under one tick, read as 0.
    events = 2000
    doc = bench("--events", str(events))
    requests = doc["aws_requests"]
    assert doc["mode"] == "batched"
    assert "SendMessage" not in requests
    assert requests.get("PutItem", 0) <= 1  # the table's shard count, put once at start
    assert requests["SendMessageBatch"] <= 10  # 2000 events of ~450 bytes: a few messages
    # A block per service and hour of a message, 12 blocks a call: far fewer than 25 events.
    assert 1 <= requests["BatchWriteItem"] <= requests["SendMessageBatch"] * 10
    assert doc["peak_rss_mb"]["ingestor"] > 0 and doc["peak_rss_mb"]["processor"] > 0
    # CPU time from /proc over the run: some, and far below a second per event.
    assert doc["cpu_us_per_event"].keys() == {"ingestor", "processor"}
    assert all(0 < us < 1_000_000 for us in doc["cpu_us_per_event"].values())


@pytest.mark.skipif(py_spy() is None, reason="py-spy is not installed")
def test_profile_writes_a_report_per_role(tmp_path: Path) -> None:
    doc = bench("--events", "1000", "--profile", str(tmp_path))
    for role in ("ingestor", "processor"):
        assert (tmp_path / f"{role}.folded").stat().st_size > 0
        report = (tmp_path / f"{role}.txt").read_text()
        assert "samples" in report and "inclusive:" in report
    assert doc["cpu_us_per_event"]["processor"] > 0


def test_naive_bench_makes_one_call_per_event() -> None:
    doc = bench("--events", "300", "--naive")
    requests = doc["aws_requests"]
    assert doc["mode"] == "naive"
    assert requests["SendMessage"] == 300
    # A block of one per event (its body and summary), and the table's shard count.
    assert requests["PutItem"] == 2 * 300 + 1
    assert requests["DeleteMessage"] == 300
    assert "SendMessageBatch" not in requests and "BatchWriteItem" not in requests


def test_ceiling_bench_moves_the_same_events_with_batch_calls() -> None:
    doc = bench("--events", "500", "--ceiling")
    assert doc["mode"] == "ceiling"
    assert doc["aws_requests"]["BatchWriteItem"] >= 1


@pytest.mark.parametrize(
    ("payload", "chunks"), [(0, 1), (1, 1), (65536, 1), (65537, 2), (262144, 4)]
)
def test_sqs_bills_each_started_64_kib(payload: int, chunks: int) -> None:
    assert sqs_billed_chunks(payload) == chunks


def test_cost_is_priced_per_billed_request_and_write_unit() -> None:
    figures = cost_figures(events=1_000_000, billed_sqs=10_000, write_units=1_000_000)
    assert figures["billed_sqs_requests_per_event"] == 0.01
    assert figures["write_units_per_event"] == 1.0
    # 10,000 SQS requests at $0.40/M plus 1M write units at $0.625/M.
    assert figures["usd_per_million_events"] == pytest.approx(0.004 + 0.625)
