"""Hostile clients against a real ingestor process: every attack answered fast, memory flat.

Each test starts `logpipe ingestor` as a child process, runs one attack of tests/attacks.py
while /healthz is timed on a connection of its own, then reads the child's peak RSS (VmHWM).
The bounds are generous (the machine running the tests is shared); the measured figures are
in the closing note of the change and from `python -m tests.measure_ingest_attacks`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import aiohttp
import orjson
import pytest

from logpipe.config import Settings
from logpipe.dev import promtext
from logpipe.dev.processes import free_port
from tests import attacks
from tests.support.aws import make_event
from tests.support.roles import Roles, peak_rss_mb
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

MAX_RSS_MB = 300
MAX_HEALTHZ_S = 1.5  # the issue asks 0.5 s; measured figures are far below, the margin is for CI
MAX_ANSWER_S = 10.0  # the issue asks 3 s; same margin


async def run_attack(
    roles: Roles, attack: attacks.Attack, **env: str | int | float
) -> tuple[list[Any], float, float, float]:
    """(statuses, seconds, peak RSS in MB, worst /healthz seconds) of one attack."""
    process = await roles.start("ingestor", LOGPIPE_API_KEYS=attacks.KEY, **env)
    base = f"http://127.0.0.1:{roles.settings.port}"
    async with attacks.healthz_probe(base) as latencies:
        started = time.perf_counter()
        statuses = await attack(base)
        seconds = time.perf_counter() - started
    rss = peak_rss_mb(process.process.pid)
    return statuses, seconds, rss, max(latencies)


@pytest.mark.timeout(120)
async def test_otlp_bomb_of_empty_records_is_refused_before_they_are_built(roles: Roles) -> None:
    statuses, seconds, rss, healthz = await run_attack(roles, attacks.attack_otlp_bomb)
    assert statuses == [413]
    assert seconds < MAX_ANSWER_S
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(120)
async def test_six_otlp_json_bodies_of_empty_records_are_refused_before_they_are_parsed(
    roles: Roles,
) -> None:
    statuses, seconds, rss, healthz = await run_attack(roles, attacks.attack_otlp_json_bomb)
    assert statuses == [413] * 6
    assert seconds < MAX_ANSWER_S
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(120)
async def test_otlp_json_nested_past_any_depth_is_refused_with_400(roles: Roles) -> None:
    statuses, seconds, rss, healthz = await run_attack(roles, attacks.attack_otlp_json_deep)
    assert statuses == [400]
    assert seconds < MAX_ANSWER_S
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(120)
async def test_body_of_empty_gzip_members_is_refused_in_linear_time(roles: Roles) -> None:
    statuses, seconds, rss, healthz = await run_attack(roles, attacks.attack_gzip_members)
    assert statuses == [400]
    assert seconds < MAX_ANSWER_S
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(120)
async def test_six_arrays_of_empty_objects_are_refused_without_parsing_them(roles: Roles) -> None:
    statuses, seconds, rss, healthz = await run_attack(roles, attacks.attack_empty_objects)
    assert statuses == [413] * 6
    assert seconds < MAX_ANSWER_S
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(120)
async def test_slow_sqs_and_forty_big_requests_are_answered_fast_within_the_memory_budget(
    roles: Roles,
) -> None:
    """SQS at 30 s a call: what does not fit is refused at once, the rest at the ack timeout."""
    statuses, seconds, rss, healthz = await run_attack(
        roles,
        attacks.attack_slow_queue,
        LOGPIPE_FAULTS="sqs-delay:30000",
        LOGPIPE_MEMORY_BUDGET_MB=64,
        LOGPIPE_ACK_TIMEOUT_S=2,
    )
    assert len(statuses) == 40
    assert set(statuses) <= {429, 503}, statuses
    assert seconds < MAX_ANSWER_S + 2, attacks.slowest_answer
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(60)
async def test_one_mib_request_header_gets_431_and_a_closed_connection(roles: Roles) -> None:
    statuses, seconds, rss, healthz = await run_attack(roles, attacks.attack_huge_header)
    assert statuses == [431]
    assert seconds < MAX_ANSWER_S
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(120)
async def test_half_sent_requests_are_closed_after_the_read_timeout(roles: Roles) -> None:
    async def attack(base: str) -> list[Any]:
        return await attacks.attack_half_requests(base, connections=300, wait=20)

    statuses, seconds, rss, healthz = await run_attack(roles, attack, LOGPIPE_READ_TIMEOUT_S=2)
    assert statuses == ["closed"] * 300
    assert seconds < 20
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(60)
async def test_body_that_stops_arriving_gets_408(roles: Roles) -> None:
    await roles.start("ingestor", LOGPIPE_READ_TIMEOUT_S=1)
    request = (
        b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n[{"
    )
    started = time.perf_counter()
    answer = await attacks.raw_exchange("127.0.0.1", roles.settings.port, request, 20)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert time.perf_counter() - started < 15


@pytest.mark.timeout(60)
async def test_connections_past_the_cap_get_503_with_retry_after(roles: Roles) -> None:
    await roles.start("ingestor", LOGPIPE_MAX_CONNECTIONS=10)
    port = roles.settings.port
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
    try:
        answer = await attacks.raw_exchange(
            "127.0.0.1", port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 10
        )
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"retry-after: 2" in answer.lower()
    finally:
        for _, writer in idle:
            writer.close()


@pytest.mark.timeout(60)
async def test_blank_api_keys_stop_the_ingestor_with_one_line() -> None:
    env = {**os.environ, "LOGPIPE_API_KEYS": " , ", "LOGPIPE_PORT": str(free_port())}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "logpipe",
        "ingestor",
        env=env,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "LOGPIPE_API_KEYS" in lines[0], lines


@pytest.mark.timeout(60)
async def test_public_port_serves_only_ingest_and_healthz(
    roles: Roles, http: aiohttp.ClientSession
) -> None:
    await roles.start("ingestor")
    public = f"http://127.0.0.1:{roles.settings.port}"
    admin = f"http://127.0.0.1:{roles.ingestor_metrics_port}"
    for path in ("/metrics", "/readyz", "/"):
        async with http.get(f"{public}{path}") as response:
            assert response.status == 404, path
    for path in ("/metrics", "/readyz"):
        async with http.get(f"{admin}{path}") as response:
            assert response.status == 200, path


@pytest.mark.timeout(90)
async def test_request_cut_off_at_the_drain_deadline_gets_503_with_retry_after(
    roles: Roles, http: aiohttp.ClientSession, settings: Settings
) -> None:
    role = await roles.start(
        "ingestor", LOGPIPE_FAULTS="sqs-delay:8000", LOGPIPE_DRAIN_SECONDS=1, LOGPIPE_LINGER_MS=0
    )
    public = f"http://127.0.0.1:{settings.port}"
    admin = f"http://127.0.0.1:{roles.ingestor_metrics_port}/metrics"

    async def send() -> tuple[int, str | None]:
        body = orjson.dumps(make_event(1))
        headers = {"Content-Type": "application/json"}
        async with http.post(f"{public}/ingest", data=body, headers=headers) as response:
            return response.status, response.headers.get("Retry-After")

    pending = asyncio.create_task(send())

    async def waiting_for_sqs() -> bool:
        samples = await promtext.scrape(http, admin)
        return promtext.total(samples, "logpipe_inflight_events") > 0

    await wait_until(waiting_for_sqs, timeout=20)
    role.process.send_signal(signal.SIGTERM)
    status, retry_after = await asyncio.wait_for(pending, 30)
    assert (status, retry_after) == (503, "2")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [65 * 1024, 200 * 1024])
async def test_header_block_over_64_kib_gets_431_however_it_arrives(
    roles: Roles, size: int
) -> None:
    await roles.start("ingestor")
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * size + b"\r\n\r\n"
    answer = await attacks.raw_exchange("127.0.0.1", roles.settings.port, request, 10)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    small = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 60_000 + b"\r\n\r\n"
    answer = await attacks.raw_exchange("127.0.0.1", roles.settings.port, small, 10)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
