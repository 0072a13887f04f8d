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
import socket
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
async def test_connections_past_the_cap_all_busy_get_503_with_retry_after(roles: Roles) -> None:
    await roles.start("ingestor", LOGPIPE_MAX_CONNECTIONS=10)
    port = roles.settings.port
    busy = []
    for _ in range(10):  # each in the middle of a request: its body has not come yet
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HALF_SENT)
        busy.append((reader, writer))
    try:
        answer = await attacks.raw_exchange(
            "127.0.0.1", port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 10
        )
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"retry-after: 2" in answer.lower()
    finally:
        for _, writer in busy:
            writer.close()


HALF_SENT = (
    b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n["
)


@pytest.mark.timeout(60)
async def test_at_the_cap_the_longest_idle_connections_are_closed_for_new_ones(
    roles: Roles,
) -> None:
    await roles.start("ingestor", LOGPIPE_MAX_CONNECTIONS=10)
    port = roles.settings.port
    idle = await attacks.idle_connections(f"http://127.0.0.1:{port}", 10)
    try:
        # Two new connections past the cap: one never used, one asking for /healthz.
        _, unused = await asyncio.open_connection("127.0.0.1", port)
        answer = await attacks.raw_exchange(
            "127.0.0.1", port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 10
        )
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        for reader, _ in idle[:2]:  # the longest idle made room: closed by the server
            await asyncio.wait_for(reader.read(), 10)  # returns at the end of the stream only
            assert reader.at_eof()
        unused.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reader, _ = idle[-1]  # the most recent idle one still serves
        idle[-1][1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(65536), 10)).startswith(b"HTTP/1.1 200 ")
    finally:
        unused.close()
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


# --- round 2 (issue 25): the bounds the issue asks, with the margin above -----------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(attacks.attack_otlp_long_key, id="protobuf"),
        pytest.param(attacks.attack_otlp_json_long_key, id="json"),
    ],
)
async def test_otlp_map_under_a_one_mib_key_is_answered_fast_without_building_its_keys(
    roles: Roles, attack: attacks.Attack
) -> None:
    statuses, seconds, rss, healthz = await run_attack(roles, attack)
    assert statuses == [200]
    assert seconds < 3  # measured 0.1 s; 7-13 s and 1-2.9 GB before
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(attacks.attack_otlp_wide_resource, id="protobuf-x2"),
        pytest.param(
            lambda base: attacks.concurrent_posts(
                f"{base}/v1/logs",
                [attacks.otlp_json_wide_resource(records=3_200)],
                attacks.GZIP_JSON,
            ),
            id="json",
        ),
    ],
)
async def test_otlp_resource_of_40k_attributes_over_many_records_is_merged_once(
    roles: Roles, attack: attacks.Attack
) -> None:
    statuses, seconds, rss, healthz = await run_attack(roles, attack)
    assert set(statuses) == {200}
    assert seconds < 5  # measured 1.5 s for two; 49 s before
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(120)
async def test_flood_of_small_bodies_on_200_connections_leaves_healthz_and_others_fast(
    roles: Roles,
) -> None:
    await roles.start("ingestor", LOGPIPE_API_KEYS=attacks.KEY)
    base = f"http://127.0.0.1:{roles.settings.port}"
    async with attacks.healthz_probe(base) as latencies:
        flood = await attacks.flood(base, connections=200, seconds=8)
    # Shed with 503 when its decodes wait past their turn; on an idle machine they may not.
    assert set(flood.statuses) <= {400, 503}, set(flood.statuses)
    assert max(latencies) <= MAX_HEALTHZ_S  # measured 0.15 s; 3.7 s before
    assert flood.legitimate_median_s() <= 1.0  # measured 0.29 s; 10 s before
    assert {status for status, _ in flood.legitimate} == {202}


@pytest.mark.timeout(120)
async def test_legitimate_requests_are_served_while_1001_idle_connections_are_open(
    roles: Roles,
) -> None:
    statuses, seconds, rss, healthz = await run_attack(roles, attacks.attack_idle_connections)
    assert seconds < 30
    assert statuses.count(202) >= 0.9 * len(statuses), statuses  # measured 50/50; 0/50 before
    assert rss <= MAX_RSS_MB
    assert healthz <= MAX_HEALTHZ_S


@pytest.mark.timeout(60)
async def test_body_trickled_a_byte_at_a_time_is_cut_off_at_the_read_timeout(
    roles: Roles,
) -> None:
    await roles.start("ingestor", LOGPIPE_API_KEYS=attacks.KEY, LOGPIPE_READ_TIMEOUT_S=2)
    base = f"http://127.0.0.1:{roles.settings.port}"
    answer, seconds = await attacks.trickled_body(base, interval=0.5, wait=30)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert 2 <= seconds < 6  # one deadline for the whole body; never before


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("role", "variable"),
    [
        pytest.param("ingestor", "LOGPIPE_PORT", id="ingestor-public"),
        pytest.param("ingestor", "LOGPIPE_METRICS_PORT", id="ingestor-metrics"),
        pytest.param("console", "LOGPIPE_PORT", id="console"),
        pytest.param("processor", "LOGPIPE_METRICS_PORT", id="processor"),
        pytest.param("emitter", "LOGPIPE_METRICS_PORT", id="emitter"),
    ],
)
async def test_a_role_whose_port_is_taken_stops_with_one_line_naming_it(
    roles: Roles, role: str, variable: str
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = roles.env(
        LOGPIPE_HOST="127.0.0.1",
        LOGPIPE_PORT=free_port(),
        LOGPIPE_METRICS_PORT=free_port(),
        LOGPIPE_API_KEYS=attacks.KEY,
        LOGPIPE_READ_KEYS=attacks.KEY,
        LOGPIPE_CURSOR_SECRET="a-cursor-secret-of-the-test",
    )
    env[variable] = str(port)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "logpipe",
            role,
            env=env,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        taken.close()
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert variable in lines[0] and f"port {port} is already in use" in lines[0], lines
