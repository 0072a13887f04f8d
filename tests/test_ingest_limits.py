"""The ingest limits as plain functions: budget, counts before parsing, linear gzip, OTLP scan."""

from __future__ import annotations

import gzip
import time
from typing import Any

import aiohttp
import orjson
import pytest

from logpipe.config import Settings
from logpipe.core import otlp
from logpipe.core.limits import (
    MemoryBudget,
    Refused,
    count_array_items,
    count_ndjson_lines,
    json_values_bound,
    parsed_json_bytes,
)
from logpipe.dev import promtext
from logpipe.errors import BodyError
from logpipe.ingest import app
from logpipe.web import MAX_GZIP_MEMBERS, decode_content
from tests import attacks
from tests.support.aws import TEST_RETENTION_DAYS, make_event

pytestmark = pytest.mark.aws


def test_budget_refuses_503_when_full_and_gives_back_on_release() -> None:
    budget = MemoryBudget(1000, per_request_bytes=800)
    first, second = budget.reservation(), budget.reservation()
    first.add(700, "body")
    with pytest.raises(Refused) as refused:
        second.add(400, "body")
    assert (refused.value.status, refused.value.label) == (503, "budget")
    first.shrink_to(100)
    second.add(400, "body")
    assert budget.used == 500
    first.release()
    second.release()
    assert budget.used == 0


def test_budget_refuses_413_past_one_request_share() -> None:
    reservation = MemoryBudget(1000, per_request_bytes=300).reservation()
    with pytest.raises(Refused) as refused:
        reservation.add(301, "the parsed body")
    assert (refused.value.status, refused.value.label) == (413, "too_large")


@pytest.mark.parametrize(
    ("body", "cap", "expected"),
    [
        # -1: fewer commas than the cap, so surely within it; nothing is walked.
        pytest.param(b"[" + b"{}," * 9 + b"{}]", 10, -1, id="cheap-bound-within-cap"),
        pytest.param(b'[{"a":1,"b":[1,2,3]},{"c":"x,y"}]', 2, 2, id="commas-inside-items"),
        pytest.param(b" [ {} ,\n {} ,{} ] ", 2, None, id="white-space-past-the-cap"),
        pytest.param(b"[1,2,3,}", 3, 3, id="broken-left-to-the-parser"),
        pytest.param(b"[" * 5000 + b"]" * 5000 + b",1" * 5, 3, 0, id="too-deep-left-to-the-parser"),
    ],
)
def test_array_items_are_counted_up_to_the_cap(body: bytes, cap: int, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(Refused):
            count_array_items(body, cap)
    else:
        assert count_array_items(body, cap) == expected


def test_array_past_the_cap_is_refused_after_cap_plus_one_items() -> None:
    body = b"[" + b"{}," * 1_000_000 + b"{}]"
    started = time.perf_counter()
    with pytest.raises(Refused) as refused:
        count_array_items(body, cap=100)
    assert (refused.value.status, refused.value.label) == (413, "too_many_events")
    assert time.perf_counter() - started < 2


def test_ndjson_counts_only_non_blank_lines() -> None:
    body = b"{}\n\n  \r\n{}\r\n" * 10
    assert count_ndjson_lines(body, cap=20) == 20
    with pytest.raises(Refused):
        count_ndjson_lines(body, cap=19)


def test_parsed_estimate_covers_what_orjson_builds() -> None:
    import tracemalloc

    for body in (b"[" + b"{}," * 50_000 + b"{}]", b"[" + b'{"a":1},' * 50_000 + b"{}]"):
        tracemalloc.start()
        parsed = orjson.loads(body)
        used, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert used <= parsed_json_bytes(body), (used, parsed_json_bytes(body))
        del parsed


def test_many_gzip_members_are_refused_in_linear_time() -> None:
    body = attacks.empty_gzip_members()
    started = time.perf_counter()
    with pytest.raises(Refused) as refused:
        decode_content(body, "gzip", 5 * 1024 * 1024)
    assert refused.value.status == 400
    assert time.perf_counter() - started < 2


def test_gzip_members_up_to_the_cap_are_all_inflated() -> None:
    members = [gzip.compress(b"x" * n) for n in range(MAX_GZIP_MEMBERS)]
    body = decode_content(b"".join(members), "gzip", 1 << 30)
    assert body == b"".join(b"x" * n for n in range(MAX_GZIP_MEMBERS))


def test_inflated_bytes_are_held_as_they_grow() -> None:
    held: list[int] = []
    decode_content(gzip.compress(b"y" * 300_000), "gzip", 1 << 20, lambda n, w: held.append(n))
    assert sum(held) >= 300_000


def test_otlp_records_are_counted_from_the_wire_and_refused_past_the_cap() -> None:
    body = attacks.otlp_empty_records(2_000_000)
    started = time.perf_counter()
    with pytest.raises(Refused) as refused:
        otlp.scan_protobuf(body, cap=10_000)
    assert (refused.value.status, refused.value.label) == (413, "too_many_events")
    assert time.perf_counter() - started < 2
    assert otlp.scan_protobuf(attacks.otlp_empty_records(50), cap=50).records == 50


def test_otlp_expansion_counts_resource_bytes_once_per_record() -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    attribute = resource_logs.resource.attributes.add()
    attribute.key = "big"
    attribute.value.string_value = "v" * 10_000
    scope_logs = resource_logs.scope_logs.add()
    for _ in range(100):
        scope_logs.log_records.add().body.string_value = "m"
    shape = otlp.scan_protobuf(request.SerializeToString(), cap=1000)
    assert shape.records == 100
    assert shape.expanded_bytes >= 100 * 10_000


def test_broken_otlp_framing_is_400() -> None:
    with pytest.raises(BodyError) as error:
        otlp.scan_protobuf(b"\x0a\xff\xff\xff\x0f", cap=10)
    assert error.value.status == 400


async def test_budget_is_given_back_after_accepted_refused_and_broken_requests(
    ingestor_url: str, http: aiohttp.ClientSession, settings: Settings
) -> None:
    headers = {"Content-Type": "application/json"}
    bodies = [
        orjson.dumps([make_event(n) for n in range(50)]),  # 202
        b"[" + b"{}," * 20_000 + b"{}]",  # 413, too many events
        b"[{]",  # 400
    ]
    statuses = []
    for body in bodies:
        async with http.post(f"{ingestor_url}/ingest", data=body, headers=headers) as response:
            statuses.append(response.status)
    assert statuses == [202, 413, 400]
    admin = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    samples = await promtext.scrape(http, admin)
    assert promtext.total(samples, "logpipe_ingest_memory_held_bytes") == 0
    assert promtext.total(samples, "logpipe_requests_rejected_total", reason="too_many_events") >= 1


@pytest.mark.parametrize(
    "body", [b"", b"[1,2]", b'{"a":[1,\n2]}', b",,,::[[\n\n", b"[" + b'{"a":1},' * 1000 + b"{}]"]
)
def test_json_values_bound_counts_commas_colons_brackets_and_newlines(body: bytes) -> None:
    expected = sum(body.count(c) for c in (b",", b":", b"[", b"\n")) + 1
    assert json_values_bound(body) == expected


def _decode_args(
    body: bytes, encoding: str | None
) -> tuple[app.Protocol, bytes, str, str | None, str | None, Settings]:
    settings = Settings(retention_days=TEST_RETENTION_DAYS)  # make_event's fixed dates
    return (app.NATIVE, body, "application/json", encoding, "from-url", settings)


def test_a_small_json_body_is_decoded_inline_with_the_answer_a_worker_gives() -> None:
    events: list[Any] = [make_event(n, attributes={"n": n}) for n in range(98)]
    events += [{"message": "no service anywhere", "service": 5}, "not an object"]
    raw = gzip.compress(orjson.dumps(events))
    reservation = MemoryBudget(64 * 2**20).reservation()
    inline = app.decode_inline(*_decode_args(raw, "gzip"), reservation)
    worker = app.decode(*_decode_args(raw, "gzip"), MemoryBudget(64 * 2**20).reservation().add)
    assert isinstance(inline, app.Decoded)
    assert inline.total == worker.total == 100
    assert inline.rejected == worker.rejected and len(inline.rejected) == 2
    # ingested_at and the ids made at ingest are the only fields that may differ.
    assert [orjson.loads(e)["id"] for e in inline.events()] == [
        orjson.loads(e)["id"] for e in worker.events()
    ]
    assert reservation.held > 0


def test_bodies_past_the_inline_bounds_are_left_for_a_worker() -> None:
    big = orjson.dumps([make_event(n) for n in range(1000)])
    assert len(big) > app.INLINE_BYTES
    budget = MemoryBudget(64 * 2**20)
    reservation = budget.reservation()
    # Too large as sent: untouched.
    assert app.decode_inline(*_decode_args(big, None), reservation) == (big, None)
    # Inflates past the bound: handed over as sent, and the inflated bytes held given back.
    packed = gzip.compress(big)
    assert len(packed) <= app.INLINE_BYTES
    assert app.decode_inline(*_decode_args(packed, "gzip"), reservation) == (packed, "gzip")
    assert reservation.held == 0 and budget.used == 0
    # Says it inflates past the bound (its gzip trailer): handed over without inflating, even
    # when that is not true.
    small = gzip.compress(orjson.dumps([make_event(1)]))
    claims_big = small[:-4] + (app.INLINE_BYTES + 1).to_bytes(4, "little")
    assert isinstance(app.decode_inline(*_decode_args(small, "gzip"), reservation), app.Decoded)
    reservation.release()
    assert app.decode_inline(*_decode_args(claims_big, "gzip"), reservation) == (
        claims_big,
        "gzip",
    )
    assert reservation.held == 0 and budget.used == 0
    # Small, but with more separators than the bound: handed over inflated, still held.
    many = b"[" + b"1," * (app.INLINE_SEPARATORS + 1) + b"1]"
    left = app.decode_inline(*_decode_args(gzip.compress(many), "gzip"), reservation)
    assert left == (many, None)
    assert reservation.held >= len(many)
    # OTLP bodies always go to a worker.
    otlp_body = b"{}"
    args = (
        app.OTLP,
        otlp_body,
        "application/json",
        None,
        None,
        Settings(retention_days=TEST_RETENTION_DAYS),
    )
    assert app.decode_inline(*args, reservation) == (otlp_body, None)
