"""Cached time formatting gives the strings datetime gives, for every millisecond."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from logpipe.core import timefmt
from logpipe.core.event import MAX_TIMESTAMP_MS

pytestmark = pytest.mark.unit

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def reference(ms: int, pattern: str) -> str:
    """datetime on whole milliseconds (no float seconds on the way)."""
    return (EPOCH + timedelta(milliseconds=ms)).strftime(pattern)


EDGES = [0, 1, 999, 1000, 59_999, 3_599_999, 3_600_000, 951_782_400_000, MAX_TIMESTAMP_MS - 1]
SAMPLES = EDGES + [random.Random(7).randrange(MAX_TIMESTAMP_MS) for _ in range(2000)]


@pytest.mark.parametrize("ms", SAMPLES[:40], ids=str)
def test_iso_ms_is_iso_8601_utc_with_milliseconds(ms: int) -> None:
    assert timefmt.iso_ms(ms) == reference(ms, "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_iso_ms_and_hour_agree_with_datetime_over_the_whole_range() -> None:
    for ms in SAMPLES:
        assert timefmt.iso_ms(ms) == reference(ms, "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        assert timefmt.hour(ms) == reference(ms, "%Y-%m-%dT%H")


def test_iso_ms_matches_float_based_formatting_for_todays_timestamps() -> None:
    """Keys and timestamps already stored were made with datetime.fromtimestamp(ms / 1000)."""
    start = 1_764_115_200_000  # 2025-11-26
    for ms in range(start, start + 5000, 7):
        old = datetime.fromtimestamp(ms / 1000, UTC)
        assert timefmt.iso_ms(ms) == old.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        assert timefmt.hour(ms) == old.strftime("%Y-%m-%dT%H")


def test_an_hour_changes_exactly_at_its_first_millisecond() -> None:
    boundary = 1_764_118_800_000  # 2025-11-26T01:00:00Z
    assert timefmt.hour(boundary - 1) == "2025-11-26T00"
    assert timefmt.hour(boundary) == "2025-11-26T01"
    assert timefmt.iso_ms(boundary - 1) == "2025-11-26T00:59:59.999Z"
