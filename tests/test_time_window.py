"""Every accepted event lives its whole retention: the ingestor refuses, for that event, one
older than the retention (it would expire at once) or more than two hours ahead."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest

from logpipe.config import Settings
from logpipe.ingest.app import MAX_AHEAD_MS, create_app, validate
from tests.support.servers import serving

NOW = 1_790_000_000_000
DAY = 86_400_000


@pytest.mark.unit
@pytest.mark.parametrize(
    ("timestamp", "error"),
    [
        (NOW, None),
        (NOW - 30 * DAY + 1, None),
        (NOW - 30 * DAY - 1, "timestamp is older than the retention (30 days): it would expire"),
        (0, "timestamp is older than the retention (30 days): it would expire"),
        (NOW + MAX_AHEAD_MS, None),
        (NOW + MAX_AHEAD_MS + 1, "timestamp is more than 2 hours in the future"),
    ],
    ids=["now", "just-inside", "just-past", "epoch", "2h-ahead", "past-2h-ahead"],
)
def test_the_window_is_the_retention_back_and_two_hours_ahead(
    timestamp: int, error: str | None
) -> None:
    raw = {"service": "svc", "message": "m", "timestamp": timestamp}
    accepted, rejected = validate([raw], NOW, retention_days=30)
    if error is None:
        assert (len(accepted), rejected) == (1, [])
    else:
        assert (accepted, rejected) == ([], [{"index": 0, "error": error}])


@pytest.mark.unit
def test_without_a_retention_any_timestamp_is_taken() -> None:
    accepted, rejected = validate([{"service": "s", "message": "m", "timestamp": 0}], NOW)
    assert (len(accepted), rejected) == (1, [])


@pytest.mark.aws
@pytest.mark.parametrize("route", ["/ingest", "/v1/logs"])
async def test_the_ingestor_lists_events_outside_the_window_and_keeps_the_rest(
    settings: Settings, http: aiohttp.ClientSession, route: str
) -> None:
    settings = replace(settings, retention_days=30)
    now = int(time.time() * 1000)
    # (OTLP's time 0 means "not set": the record takes its time of ingest.)
    times = [now, now - 31 * DAY, now + 3 * 3_600_000, now - 400 * DAY]
    async with (
        serving(create_app(settings), settings.port, access_log=False) as url,
        http.post(f"{url}{route}", json=_body(route, times)) as response,
    ):
        status, answer = response.status, await response.json()

    if route == "/ingest":
        assert status == 202
        assert answer["accepted"] == 1
        assert [r["index"] for r in answer["rejected"]] == [1, 2, 3]
    else:
        assert status == 200
        assert int(answer["partialSuccess"]["rejectedLogRecords"]) == 3
        assert "retention" in answer["partialSuccess"]["errorMessage"]


def _body(route: str, times: list[int]) -> Any:
    if route == "/ingest":
        return [{"service": "svc", "message": f"m{n}", "timestamp": t} for n, t in enumerate(times)]
    records = [
        {"timeUnixNano": str(t * 1_000_000), "body": {"stringValue": f"m{n}"}}
        for n, t in enumerate(times)
    ]
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]}
    return orjson.loads(
        orjson.dumps(
            {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": records}]}]}
        )
    )
