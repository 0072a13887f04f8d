"""The processor's per-event item work, made cheaper, counts what the walk over the item
counts: write units from the item's JSON length where that bounds its size."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from prometheus_client import Histogram

from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.core.models import Event, item_key, item_size, normalise, to_item, write_units
from logpipe.obs import metrics
from logpipe.process import processor as processor_module
from logpipe.process.processor import MAX_STORED_COUNTERS, Processor, Tracker, _Write

pytestmark = pytest.mark.unit

NOW_MS = 1_714_564_800_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNICODE = "Gr\u00fc\u00dfe \u6771\u4eac \U0001f680 \u2028"


def exact_units(item: dict[str, Any]) -> int:
    """Write units by walking the item (the definition)."""
    return max(1, -(-item_size(item) // 1024))


def event(message: str, **attributes: Any) -> Event:
    raw = {"service": "svc", "message": message, "timestamp": NOW_MS, "attributes": attributes}
    return normalise(raw, NOW_MS)


def items() -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {
        "every type": {
            "s": {"S": "x"},
            "n": {"N": "-12.50"},
            "big": {"N": "-12345678901234567890123456789012345678"},
            "small": {"N": "1E-130"},
            "zero": {"N": "0"},
            "t": {"BOOL": True},
            "null": {"NULL": True},
            "ss": {"SS": ["a", UNICODE]},
            "ns": {"NS": ["1", "2.5"]},
            "l": {"L": [{"S": "a"}, {"N": "1"}, {"M": {"k": {"BOOL": False}}}]},
            "m": {"M": {"a": {"S": UNICODE}, "e": {"M": {}}, UNICODE: {"N": "7"}}},
        },
        "control characters": {"message": {"S": "\x00\x01\x1f tab\t" * 60}},
        "empty": {"pk": {"S": ""}},
        "bench event": to_item(
            event("m", **{"http.status_code": 200, "duration_ms": 0, "region": "eu-west-1"}), 8, 30
        ),
        "attribute kinds": to_item(
            event(UNICODE, a="x", n=2**70, f=0.25, b=True, d=Decimal("1.5E+100"), u=UNICODE),
            8,
            30,
        ),
        "bytes (no JSON)": {"b": {"B": b"\x00\xff" * 600}, "s": {"S": "x"}},
        "lone surrogate (no JSON)": {"message": {"S": "\ud800" * 500}},
    }
    # Exactly at and past one unit and two, and around them: ASCII, 2-, 3-, 4-byte characters.
    base = item_size(to_item(event(""), 8, 30))
    for char in ("a", "\u00e9", "\u20ac", "\U0001f680"):
        width = len(char.encode())
        for target in (900, 1000, 1023, 1024, 1025, 1100, 2047, 2048, 2049):
            count, rest = divmod(target - base, width)
            item = to_item(event(char * count + "a" * rest), 8, 30)
            assert item_size(item) == target
            table[f"{char!a} to {target} bytes"] = item
    for digits in (1, 10, 38):
        table[f"numbers of {digits} digits"] = {
            f"n{i}": {"N": "9" * digits} for i in range(1200 // (digits + 6))
        }
    return table


ITEMS = items()


@pytest.mark.parametrize("name", list(ITEMS))
def test_write_units_are_the_walked_ones(name: str) -> None:
    item = ITEMS[name]
    assert write_units(item) == exact_units(item)


@pytest.mark.parametrize("name", list(ITEMS))
def test_an_items_size_never_exceeds_its_json(name: str) -> None:
    """The bound the one-unit shortcut stands on, for every item orjson can encode."""
    item = ITEMS[name]
    try:
        encoded = orjson.dumps(item)
    except orjson.JSONEncodeError:
        assert "no JSON" in name
        return
    assert item_size(item) <= len(encoded)


def test_the_table_reaches_both_sides_of_the_shortcut() -> None:
    """Items of one unit by their JSON, of one unit with longer JSON, and of two or more."""
    lengths = {}
    for name, item in ITEMS.items():
        try:
            lengths[name] = len(orjson.dumps(item))
        except orjson.JSONEncodeError:
            continue
    assert any(n <= 1024 for n in lengths.values())
    assert any(n > 1024 and exact_units(ITEMS[k]) == 1 for k, n in lengths.items())
    assert any(exact_units(ITEMS[k]) == 2 for k in lengths)
    assert {1024, 1025, 2048, 2049} <= {item_size(ITEMS[k]) for k in lengths}


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
def test_recording_a_batch_counts_what_counting_event_by_event_counts(
    limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor_module, "MAX_STORED_COUNTERS", limit)
    settings = Settings()
    processor = Processor(settings, Clients(sqs=None, dynamodb=None), "queue-url")
    shared, alone = Tracker({}, pending=3), Tracker({}, pending=3)
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
    writes = [
        _Write(e, item_key(e, 8), [shared, alone] if n < 3 else [shared])
        for n, e in enumerate(events)
    ]
    pairs = {("svc-a", "info"): 6, ("svc-a", "error"): 3, ("svc-b", "info"): 3}
    before = {p: sample(metrics.events_stored, service=p[0], level=p[1]) for p in pairs}
    units_before = sample(metrics.dynamodb_write_units)
    latency_before = buckets(metrics.e2e_latency)
    for half in (writes[:5], writes[5:]):  # two calls: the kept counters are used again
        processor._record_stored(half, units=len(half))
    for pair, count in pairs.items():
        assert sample(metrics.events_stored, service=pair[0], level=pair[1]) == before[pair] + count
    assert sample(metrics.dynamodb_write_units) == units_before + len(writes)
    added = [b - a for a, b in zip(latency_before, buckets(metrics.e2e_latency), strict=True)]
    assert added[0] == 4 and added[-1] == 8  # cumulative: 4 at 0 s, 4 more decades old
    assert added[-2] == 4
    assert shared.pending == 3 - len(writes) and alone.pending == 0
    assert len(processor._stored_counters) == min(limit, len(pairs))


def reference_key(event: dict[str, Any], shards: int) -> tuple[str, str]:
    """The key as it was first written: datetime for the hour, zero-padded timestamp."""
    ts = event["timestamp"]
    hour = (EPOCH + timedelta(milliseconds=ts)).strftime("%Y-%m-%dT%H")
    shard = zlib.crc32(event["id"].encode("utf-8", "surrogatepass")) % shards
    return f"{event['service']}#{hour}#{shard}", f"{ts:013d}#{event['id']}"


@pytest.mark.parametrize("shards", [1, 8, 16])
@pytest.mark.parametrize("ts", [0, 999, 10**12 - 1, 10**12, 1_764_115_200_000, 10**13 - 1], ids=str)
def test_item_keys_are_the_reference_ones(ts: int, shards: int) -> None:
    for event_id in ("run1-00000001", UNICODE, "\ud800lone", "x" * 128):
        stored = {"service": "svc", "id": event_id, "timestamp": ts}
        assert item_key(stored, shards) == reference_key(stored, shards)


def reference_item(event: dict[str, Any], shards: int, retention_days: int) -> dict[str, Any]:
    """The item as first written: every value typed on its own, times through datetime."""

    def iso(ms: int) -> str:
        return (EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    def typed(value: Any) -> dict[str, Any]:
        if isinstance(value, bool):
            return {"BOOL": value}
        if isinstance(value, int | float | Decimal):
            return {"N": str(value)}
        return {"S": value}

    pk, sk = reference_key(event, shards)
    item = {
        "pk": {"S": pk},
        "sk": {"S": sk},
        **{name: {"S": event[name]} for name in ("id", "service", "level", "message")},
        "timestamp": {"S": iso(event["timestamp"])},
        "expires_at": {"N": str(event["timestamp"] // 1000 + retention_days * 86400)},
    }
    if isinstance(event.get("ingested_at"), int):
        item["ingested_at"] = {"S": iso(event["ingested_at"])}
    for name in ("trace_id", "span_id"):
        if name in event:
            item[name] = {"S": event[name]}
    if event.get("attributes"):
        item["attributes"] = {"M": {k: typed(v) for k, v in event["attributes"].items()}}
    return item


ATTRIBUTES: dict[str, dict[str, Any]] = {
    "none": {},
    "strings": {"region": "eu-west-1", UNICODE: UNICODE},
    "integers": {"zero": 0, "negative": -5, "int64": 2**63 - 1, "beyond": 2**70},
    "floats": {"f": 0.25, "tiny": 1e-100, "big": 1.5e100, "negative": -0.5},
    "booleans": {"t": True, "f": False},
    "decimals": {"d": Decimal("1.5E+100"), "p": Decimal("-3.14159265358979323846")},
    "mixed": {"s": "x", "i": 1, "f": 2.5, "b": True, "d": Decimal("7E+50")},
}


@pytest.mark.parametrize("attributes", list(ATTRIBUTES))
@pytest.mark.parametrize("ts", [0, 999, 10**12 - 1, 1_764_115_200_123, 10**13 - 1], ids=str)
def test_items_are_the_reference_ones(attributes: str, ts: int) -> None:
    stored = event(UNICODE, **ATTRIBUTES[attributes])
    stored["timestamp"] = ts
    stored["ingested_at"] = max(ts - 1, 0)
    for extra in ({}, {"trace_id": "ab" * 16, "span_id": "cd" * 8}):
        complete = {**stored, **extra}
        expected = reference_item(complete, 8, 30)
        assert to_item(complete, 8, 30) == expected  # type: ignore[arg-type]
        assert to_item(complete, 8, 30, key=item_key(complete, 8)) == expected  # type: ignore[arg-type]
    del stored["ingested_at"]
    assert to_item(stored, 8, 30) == reference_item(dict(stored), 8, 30)


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
