"""One pass over a JSON body (`scan_json`) gives what the separate looks gave, and a body
parsed with it gives what the body parsed without it gives: tables of bodies, no I/O."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest

from logpipe.config import Settings
from logpipe.core import event as event_module
from logpipe.core.event import loads_exact
from logpipe.core.limits import (
    MemoryBudget,
    Refused,
    count_array_items,
    json_values_bound,
    parsed_json_bytes,
    scan_json,
)
from logpipe.errors import BodyError
from logpipe.ingest import app

pytestmark = pytest.mark.unit

EVENT = b'{"service":"s","message":"m","attributes":{"a":1}}'
BODIES: list[bytes] = [
    b"",
    b"[]",
    b"[1,2]",
    b'{"a":[1,\n2]}',
    b",,,::[[\n\n",
    b"[" + EVENT + b"," + EVENT + b"]",
    EVENT + b"\n" + EVENT + b"\n",
    b"[" + b'{"a":1},' * 1000 + b"{}]",
    b'[{"service":"s","message":"m","attributes":{"n":123456789012345678901}}]',
    b'[{"service":"s","message":"m","attributes":{"f":0.1000000000000000055511151231257827}}]',
    b'[{"service":"s","message":"m","attributes":{"f":1.234567890123456}}]',  # 16 digits
    b'[{"service":"s","message":"m","attributes":{"f":1.23456789012345}}]',  # 15 digits
    b'[{"service":"s","message":"1234567890123456789 in a string"}]',
    b'[{"service":"s","message":"m","attributes":{"ip":"1.2.3.4.5.6.7.8.9.0.1.2.3.4.5.6"}}]',
    b'[{"service":"s","message":"m","attributes":{"n":12345678,"m":12345678}}]',
    b'[{"service":"s","message":"caf\xc3\xa9 \xe2\x98\x83","attributes":{"\xc3\xa9":1}}]',
    b"[" * 600 + b"]" * 600,
    b"[1.0e400]",
    b"{nope",
    b"   \n\t ",
    b"\n".join([b"99999999999999999999", b"1", b"{}"]),
    # A run that is no number (a cookie), then one that is: each run is looked at.
    b'[{"service":"s","message":"_ga=GA1.2.354943443.1709679887","attributes":'
    b'{"n":123456789012345678901}}]',
    b'[{"message":"GA1.2.354943443.1709679887","n":[12345678901234567890,1]}]',
    b"12345678901234567890",
    b"[1,12345678901234567890]",
]


@pytest.mark.parametrize("body", BODIES)
def test_one_scan_finds_what_the_separate_looks_found(body: bytes) -> None:
    scan = scan_json(body)
    assert scan.commas == body.count(b",")
    assert scan.values == json_values_bound(body)
    assert scan.long_runs == (
        event_module._SIXTEEN_DIGITS in body.translate(event_module._DIGIT_RUNS)
    )
    assert parsed_json_bytes(body, scan.values) == parsed_json_bytes(body)


def _loaded(body: bytes, long_runs: bool | None, digit_runs: bytes | None = None) -> Any:
    try:
        doc = loads_exact(body, long_runs, digit_runs)
    except orjson.JSONDecodeError:
        return "invalid"
    return repr(doc)  # Decimal and float apart


@pytest.mark.parametrize("body", BODIES)
def test_loads_exact_with_the_scan_equals_loads_exact_looking_itself(body: bytes) -> None:
    expected = _loaded(body, None)
    scan = scan_json(body)
    assert _loaded(body, scan.long_runs) == expected
    # The scan's own translation serves the look for long numbers as the body's would.
    assert (scan.digit_runs is not None) == scan.long_runs
    assert _loaded(body, scan.long_runs, scan.digit_runs) == expected
    # A caller that says "there may be long runs" only costs a look.
    assert _loaded(body, True) == expected


@pytest.mark.parametrize("cap", [1, 2, 1001, 5000])
@pytest.mark.parametrize("body", BODIES)
def test_counting_items_with_the_scans_commas_is_counting_without(body: bytes, cap: int) -> None:
    if not body.lstrip().startswith(b"["):
        return
    outcomes: list[int | str] = []
    for commas in (None, scan_json(body).commas):
        try:
            outcomes.append(count_array_items(body, cap, commas))
        except Refused as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


def _parsed(body: bytes, kind: str, with_scan: bool) -> tuple[Any, int]:
    held = []
    scan = scan_json(body) if with_scan else None
    try:
        events = app._parse_native(body, kind, 1000, lambda n, what: held.append(n), scan)
    except BodyError as exc:
        return f"{exc.status} {exc}", sum(held)
    return repr(events), sum(held)


@pytest.mark.parametrize("kind", ["application/json", "application/x-ndjson"])
@pytest.mark.parametrize("body", BODIES)
def test_parsing_with_the_inline_scan_equals_parsing_without(body: bytes, kind: str) -> None:
    assert _parsed(body, kind, True) == _parsed(body, kind, False)


def test_an_inline_body_with_long_numbers_keeps_every_digit() -> None:
    body = BODIES[8]
    reservation = MemoryBudget(64 * 2**20).reservation()
    decoded = app.decode_inline(
        app.NATIVE, gzip.compress(body), "application/json", "gzip", None, Settings(), reservation
    )
    assert isinstance(decoded, app.Decoded)
    assert decoded.events()[0].count(b"123456789012345678901") == 1


def test_the_translation_kept_for_the_parse_is_held_with_the_body() -> None:
    # The worst body for it: one long run after another, so the translation is kept whole.
    digits = b"[" + b",".join([b'"' + b"1234567890" * 10 + b'"'] * 2000) + b"]"
    short = b"[" + b",".join([b'"' + b"12345-7890" * 10 + b'"'] * 2000) + b"]"
    assert scan_json(digits).digit_runs is not None and scan_json(short).digit_runs is None
    held_digits = _parsed(digits, "application/json", False)[1]
    held_short = _parsed(short, "application/json", False)[1]
    assert held_digits - held_short == len(digits)
