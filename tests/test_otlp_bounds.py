"""OTLP mapping bounded while it walks: long keys, attributes past 64, wide resources and
scopes, the attribute work counted from the wire, and trace/span ids of the wrong length."""

from __future__ import annotations

import gzip
import time
import tracemalloc
from typing import Any

import orjson
import pytest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

from logpipe.core import otlp
from logpipe.core.event import MAX_ATTRIBUTES
from logpipe.core.limits import Refused
from logpipe.ingest.app import validate
from tests import attacks
from tests.test_otlp import key_values, mapped, record, request

pytestmark = pytest.mark.unit

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
DROPPED = otlp.DROPPED_KEY


@pytest.mark.parametrize(
    ("attributes", "kept", "dropped"),
    [
        pytest.param({"k" * 128: 1}, {"k" * 128: 1}, 0, id="key-of-128-kept"),
        pytest.param({"k" * 129: 1, "short": 2}, {"short": 2}, 1, id="key-of-129-dropped"),
        pytest.param(
            {"k" * 129: {"a": 1, "b": {"c": 2, "d": 3}, "e": None}},
            {},
            3,
            id="map-under-a-long-key-counts-its-leaves",
        ),
        pytest.param({"k" * 129: {}}, {}, 0, id="empty-map-under-a-long-key-is-no-loss"),
        pytest.param(
            {"a" * 100: {"b" * 28: 1, "c" * 27: 2}},
            {"a" * 100 + "." + "c" * 27: 2},
            1,
            id="child-whose-dotted-key-passes-128",
        ),
        pytest.param(
            {f"a{n:02d}": n for n in range(MAX_ATTRIBUTES)},
            {f"a{n:02d}": n for n in range(MAX_ATTRIBUTES)},
            0,
            id="exactly-64-all-kept",
        ),
        pytest.param(
            {"m": {f"c{n:02d}": n for n in range(MAX_ATTRIBUTES + 1)}},
            {f"m.c{n:02d}": n for n in range(MAX_ATTRIBUTES - 1)},
            2,
            id="65-leaves-of-one-map-keep-63-and-the-count",
        ),
    ],
)
def test_record_attributes_are_bounded_as_they_are_walked(
    attributes: dict[str, object], kept: dict[str, object], dropped: int
) -> None:
    event = mapped(record(attributes=attributes))

    expected = {**kept, DROPPED: dropped} if dropped else kept
    assert event.get("attributes", {}) == expected


def test_children_of_a_long_key_are_never_built() -> None:
    body = gzip.decompress(attacks.otlp_long_key_kvlist(key_bytes=1024 * 1024, children=1500))
    held: list[int] = []
    dropped: dict[int, int] = {}

    tracemalloc.start()
    try:
        [event] = otlp.parse(body, PROTOBUF, hold=lambda n, what: held.append(n), dropped=dropped)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert isinstance(event, dict)
    assert event["attributes"] == {DROPPED: 1500}
    assert dropped == {0: 1500}
    # Built naively, the children's keys alone are 1,500 copies of 1 MiB.
    assert peak <= sum(held) <= 16 * 1024 * 1024


def test_resource_and_scope_attributes_past_128_are_left_out_and_counted() -> None:
    resource = {"service.name": "s", **{f"r{n:03d}": n for n in range(199)}}
    scope = InstrumentationScope(attributes=key_values({f"s{n:03d}": n for n in range(130)}))
    dropped: dict[int, int] = {}

    [event] = otlp.to_events(request(record(), resource=resource, scope=scope), dropped)

    assert isinstance(event, dict)
    attributes = event["attributes"]
    assert list(attributes)[:63] == [f"s{n:03d}" for n in range(63)]
    # Looked at: 128 of each; 2 + 72 left past 128, 65 + 127 past the 64 keys of a record.
    assert attributes[DROPPED] == dropped[0] == 2 + 72 + 65 + 127


def test_record_attributes_win_over_inherited_ones_at_the_64_key_bound() -> None:
    resource = {"service.name": "s", **{f"r{n:02d}": n for n in range(64)}}

    event = mapped(record(attributes={"r00": "record", "own": 1}), resource=resource)

    attributes = event["attributes"]
    assert len(attributes) == MAX_ATTRIBUTES
    assert attributes["r00"] == "record"
    assert attributes["own"] == 1
    assert attributes[DROPPED] == 65 - 63  # r00 to r63 and "own"; 63 slots and the count


def test_a_wide_resource_is_merged_once_not_per_record() -> None:
    body = gzip.decompress(attacks.otlp_wide_resource(attributes=40_000, records=3_200))
    dropped: dict[int, int] = {}

    started = time.process_time()
    events = otlp.parse(body, PROTOBUF, cap=10_000, dropped=dropped)
    seconds = time.process_time() - started

    assert len(events) == 3_200
    assert set(dropped.values()) == {40_000 - 63}
    assert seconds < 5  # merged per record, as before: 48 s on the same machine


@pytest.mark.parametrize(
    ("make", "content_type"),
    [
        pytest.param(attacks.otlp_wide_resource, PROTOBUF, id="protobuf"),
        pytest.param(attacks.otlp_json_wide_resource, JSON, id="json"),
    ],
)
def test_attribute_work_past_the_bound_is_refused_before_mapping(
    make: Any, content_type: str
) -> None:
    # 128 inherited attributes (64 once merged) for each of 40,000 records: 2.56 million.
    body = gzip.decompress(make(attributes=128, records=40_000))
    held: list[int] = []

    with pytest.raises(Refused) as refused:
        otlp.parse(body, content_type, cap=1_000_000, hold=lambda n, what: held.append(n))

    assert refused.value.status == 413
    assert refused.value.label == "too_many_attributes"
    if content_type == PROTOBUF:
        assert held == []  # counted from the wire, before the request is decoded


def test_records_own_attributes_count_in_the_work_bound() -> None:
    pairs = [{"key": f"a{n}", "value": {"intValue": n}} for n in range(1000)]
    doc = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": pairs}] * 2001}]}]}

    with pytest.raises(Refused):
        otlp.count_json_records(doc, cap=10_000)
    protobuf = otlp.build_request(doc).SerializeToString()
    with pytest.raises(Refused):
        otlp.scan_protobuf(protobuf, cap=10_000)


def test_dropped_attributes_are_told_per_record_in_partial_success() -> None:
    summary = otlp.dropped_summary({0: 1500, 3: 2}, total=4)

    assert summary.startswith("2 of 4 log records stored without some attributes")
    assert "record 0: 1500 dropped; record 3: 2 dropped" in summary
    answer = otlp.encode_response(0, summary, as_json=True)
    assert orjson.loads(answer) == {"partialSuccess": {"errorMessage": summary}}


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        pytest.param({"trace_id": bytes.fromhex("abcd")}, "trace_id must be 16 bytes", id="2"),
        pytest.param({"trace_id": bytes(range(1, 18))}, "trace_id must be 16 bytes", id="17"),
        pytest.param({"trace_id": bytes(range(1, 9))}, "trace_id must be 16 bytes", id="8"),
        pytest.param({"span_id": bytes(range(1, 5))}, "span_id must be 8 bytes", id="span-4"),
        pytest.param({"span_id": bytes(range(1, 17))}, "span_id must be 8 bytes", id="span-16"),
    ],
)
def test_ids_of_the_wrong_length_reject_only_their_record(
    fields: dict[str, Any], error: str
) -> None:
    events = otlp.to_events(request(record(**fields), record()))

    accepted, rejected = validate(events, now_ms=1_790_000_000_000)

    assert len(accepted) == 1
    assert [r["index"] for r in rejected] == [0]
    assert rejected[0]["error"].startswith(error)


def test_otlp_json_trace_id_abcd_is_rejected_not_stored() -> None:
    doc = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "abcd"}, {}]}]}]}

    events = otlp.parse(orjson.dumps(doc), JSON)

    assert isinstance(events[0], Exception)
    assert str(events[0]).startswith("trace_id must be 16 bytes (32 hex digits), got 2")
    assert isinstance(events[1], dict)
