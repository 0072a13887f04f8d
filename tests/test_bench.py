"""`logpipe bench` at small scale: it runs end to end, counts exactly, and its requests fit;
the events it drives look like real ones, and its prices add up."""

from __future__ import annotations

import re
import statistics
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from logpipe.aws.clients import sqs_billed_chunks
from logpipe.cli import build_parser
from logpipe.core.event import MAX_EVENT_BYTES, encode_event, normalise
from logpipe.dev.cpu import py_spy
from logpipe.dev.events import make_events
from logpipe.dev.report import GB, cloudwatch_usd_per_million_events, cost_figures
from tests.support.roles import run_bench

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
    "cpu_us_per_event",
    "event_bytes",
    "wru_per_event",
    "stored_bytes_per_event",
    "usd_per_million_events_all_in",
}
COST_FIELDS = (
    "event_bytes",
    "wru_per_event",
    "stored_bytes_per_event",
    "usd_per_million_events",
    "usd_per_million_events_all_in",
)


NOW_MS = 1_796_000_000_000
SIZES = [pytest.param(200, id="200B"), pytest.param(1024, id="1KB"), pytest.param(4096, id="4KB")]


def sizes(events: list[dict[str, Any]]) -> list[int]:
    return [len(orjson.dumps(event)) for event in events]


@pytest.mark.unit
@pytest.mark.parametrize("target", SIZES)
def test_bench_events_are_within_a_tenth_of_the_size_asked_for(target: int) -> None:
    lengths = sizes(make_events("r1", 2000, NOW_MS, target))
    assert all(0.9 * target <= n <= 1.1 * target for n in lengths)
    assert statistics.mean(lengths) == pytest.approx(target, rel=0.02)
    assert len(set(lengths)) > 20  # sizes vary as real ones do


@pytest.mark.unit
def test_bench_events_have_distinct_random_ids_that_name_the_run() -> None:
    events = make_events("r1", 20_000, NOW_MS, 200)
    ids = [event["id"] for event in events]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"r1-[0-9a-f]{24}", event_id) for event_id in ids)
    assert ids != sorted(ids)  # random, not a counter


@pytest.mark.unit
@pytest.mark.parametrize("target", SIZES)
def test_bench_events_compress_like_real_logs_not_like_a_repeated_filler(target: int) -> None:
    # One SQS message's worth: a block of 250 events, zlib level 1 (as fast as zstd's).
    # Repeated filler compressed 20-68x; random bytes would not compress at all.
    events = make_events("r1", 250, NOW_MS, target)
    data = b"\n".join(orjson.dumps(event) for event in events)
    assert 2 < len(data) / len(zlib.compress(data, 1)) < 8


@pytest.mark.unit
def test_bench_event_attributes_have_the_cardinality_of_real_ones() -> None:
    events = make_events("r1", 5000, NOW_MS, 1024)
    attributes = [event.get("attributes", {}) for event in events]
    assert statistics.median(map(len, attributes)) >= 12

    def distinct(name: str) -> int:
        return len({a[name] for a in attributes if name in a})

    assert distinct("http.method") <= 5
    assert 15 <= distinct("http.route") <= 25
    assert distinct("cloud.region") <= 5
    assert 2000 < distinct("user.id") <= 10_000
    assert distinct("request_id") == sum("request_id" in a for a in attributes) > 4000
    statuses = Counter(a["http.status_code"] for a in attributes if "http.status_code" in a)
    assert statuses.most_common(1)[0][0] == 200 and len(statuses) > 5
    assert all(isinstance(a["duration_ms"], float) for a in attributes if "duration_ms" in a)


@pytest.mark.unit
def test_bench_event_messages_vary_and_some_carry_a_stack_trace() -> None:
    events = make_events("r1", 5000, NOW_MS, 1024)
    messages = [event["message"] for event in events]
    assert len(set(messages)) > 0.95 * len(messages)
    assert any("\nTraceback (most recent call last):\n" in message for message in messages)
    traced = [event for event in events if "trace_id" in event]
    assert len(traced) > 0.8 * len(events)
    assert all(re.fullmatch(r"[0-9a-f]{32}", event["trace_id"]) for event in traced)
    assert all(re.fullmatch(r"[0-9a-f]{16}", event["span_id"]) for event in traced)
    assert len({event["trace_id"] for event in traced}) == len(traced)


@pytest.mark.unit
def test_bench_events_are_the_same_for_the_same_seed() -> None:
    assert make_events("r1", 100, NOW_MS, 1024) == make_events("r1", 100, NOW_MS, 1024)
    seeded = make_events("r1", 100, NOW_MS, 1024, seed=7)
    assert make_events("r1", 100, NOW_MS, 1024, seed=7) == seeded
    assert make_events("r1", 100, NOW_MS, 1024, seed=8) != seeded
    # Another run with the same seed: the same events under that run's ids.
    again = make_events("r2", 100, NOW_MS, 1024, seed=7)
    assert [e["id"].split("-")[1] for e in again] == [e["id"].split("-")[1] for e in seeded]
    assert [{**e, "id": ""} for e in again] == [{**e, "id": ""} for e in seeded]


@pytest.mark.unit
@pytest.mark.parametrize("target", [*SIZES, pytest.param(16384, id="16KB")])
def test_bench_events_are_valid_events_as_they_are(target: int) -> None:
    for event in make_events("r1", 300, NOW_MS, target):
        normalised = normalise(event, NOW_MS)
        assert {k: normalised[k] for k in event} == event  # type: ignore[literal-required]
        assert len(encode_event(normalised)) < MAX_EVENT_BYTES


@pytest.mark.unit
@pytest.mark.parametrize("given", ["199", "16385", "1k"])
def test_bench_refuses_an_event_size_it_cannot_make(given: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench", "--event-bytes", given])
    assert exit_.value.code == 2
    with pytest.raises(ValueError, match="event_bytes"):
        make_events("r1", 1, NOW_MS, int(given) if given.isdigit() else 0)


def bench(*args: str) -> dict[str, Any]:
    doc = run_bench(*args)
    assert doc.keys() >= FIELDS
    assert (doc["lost"], doc["duplicates"]) == (0, 0)
    assert doc["stored"] == doc["events"]
    # True of any storage: something is written and kept for every event, and keeping it
    # for the retention costs more than writing it alone.
    assert all(type(doc[name]) is float for name in COST_FIELDS)
    assert doc["event_bytes"] > 0 and doc["wru_per_event"] > 0
    assert doc["stored_bytes_per_event"] > 0
    assert doc["usd_per_million_events_all_in"] > doc["usd_per_million_events"] > 0
    return doc


@pytest.mark.e2e
def test_batched_bench_packs_events_and_batches_calls() -> None:
    # Enough events that each role uses well over one clock tick (10 ms) of CPU, the unit
    # /proc counts in: 500 events took the ingestor under one tick, read as 0.
    events = 2000
    doc = bench("--events", str(events), "--event-bytes", "450")
    requests = doc["aws_requests"]
    assert doc["mode"] == "batched"
    assert doc["event_bytes"] == pytest.approx(450, rel=0.02)
    assert "SendMessage" not in requests
    assert requests.get("PutItem", 0) <= 1  # the table's shard count, put once at start
    assert requests["SendMessageBatch"] <= 10  # 2000 events of ~450 bytes: a few messages
    # A block per service and hour of a message, 8 blocks a call: far fewer than 25 events.
    assert 1 <= requests["BatchWriteItem"] <= requests["SendMessageBatch"] * 10
    assert doc["peak_rss_mb"]["ingestor"] > 0 and doc["peak_rss_mb"]["processor"] > 0
    # CPU time from /proc over the run: some, and far below a second per event.
    assert doc["cpu_us_per_event"].keys() == {"ingestor", "processor"}
    assert all(0 < us < 1_000_000 for us in doc["cpu_us_per_event"].values())


@pytest.mark.e2e
@pytest.mark.skipif(py_spy() is None, reason="py-spy is not installed")
def test_profile_writes_a_report_per_role(tmp_path: Path) -> None:
    doc = bench("--events", "1000", "--profile", str(tmp_path))
    for role in ("ingestor", "processor"):
        assert (tmp_path / f"{role}.folded").stat().st_size > 0
        report = (tmp_path / f"{role}.txt").read_text()
        assert "samples" in report and "inclusive:" in report
    assert doc["cpu_us_per_event"]["processor"] > 0


@pytest.mark.e2e
def test_naive_bench_makes_one_call_per_event() -> None:
    doc = bench("--events", "300", "--naive")
    requests = doc["aws_requests"]
    assert doc["mode"] == "naive"
    assert requests["SendMessage"] == 300
    # Each message handled: a block of its one event (its body, its summary and the summary
    # every service shares), then its delete; plus the table's shard count. On a busy
    # machine a message can outlive its visibility and be handled twice: as many deletes.
    handled = requests["DeleteMessage"]
    assert 300 <= handled <= 310
    assert requests["PutItem"] == 3 * handled + 1
    assert "SendMessageBatch" not in requests and "BatchWriteItem" not in requests


@pytest.mark.e2e
def test_ceiling_bench_moves_the_same_events_with_batch_calls() -> None:
    doc = bench("--events", "500", "--ceiling")
    assert doc["mode"] == "ceiling"
    assert doc["aws_requests"]["BatchWriteItem"] >= 1


@pytest.mark.unit
@pytest.mark.parametrize(
    ("payload", "chunks"), [(0, 1), (1, 1), (65536, 1), (65537, 2), (262144, 4)]
)
def test_sqs_bills_each_started_64_kib(payload: int, chunks: int) -> None:
    assert sqs_billed_chunks(payload) == chunks


@pytest.mark.unit
def test_cost_is_priced_per_billed_request_and_write_unit() -> None:
    figures = cost_figures(events=1_000_000, billed_sqs=10_000, write_units=1_000_000)
    assert figures["billed_sqs_requests_per_event"] == 0.01
    assert figures["write_units_per_event"] == 1.0
    # 10,000 SQS requests at $0.40/M plus 1M write units at $0.625/M.
    assert figures["usd_per_million_events"] == pytest.approx(0.004 + 0.625)


@pytest.mark.unit
def test_all_in_cost_adds_storage_for_the_retention() -> None:
    # A million events of 1 GB in all, one write unit each, kept 30 days (720 of a billing
    # month's 730 hours).
    figures = cost_figures(
        events=1_000_000, billed_sqs=0, write_units=1_000_000, stored_bytes=GB, retention_days=30
    )
    assert figures["wru_per_event"] == 1.0
    assert figures["stored_bytes_per_event"] == round(GB / 1e6, 1)
    assert figures["usd_per_million_events"] == 0.625
    assert figures["usd_per_million_events_all_in"] == pytest.approx(
        0.625 + 0.25 * 720 / 730, abs=1e-4
    )


@pytest.mark.unit
def test_all_in_cost_adds_point_in_time_recovery_when_enabled() -> None:
    plain, pitr = (
        cost_figures(1_000_000, 0, 0, stored_bytes=GB, retention_days=30, pitr=pitr)
        for pitr in (False, True)
    )
    assert plain["usd_per_million_events_all_in"] == pytest.approx(0.25 * 720 / 730, abs=1e-4)
    assert pitr["usd_per_million_events_all_in"] == pytest.approx(0.45 * 720 / 730, abs=1e-4)


@pytest.mark.unit
def test_cloudwatch_price_is_ingestion_plus_storage_for_the_retention() -> None:
    # A GB of events in all: ingested, then kept 30 days (720 of a month's 730 hours).
    prices = cloudwatch_usd_per_million_events(event_bytes=GB / 1e6, retention_days=30)
    storage = 0.03 * 720 / 730
    assert prices["standard"] == pytest.approx(0.50 + storage, abs=1e-4)
    assert prices["infrequent_access"] == pytest.approx(0.25 + storage, abs=1e-4)
