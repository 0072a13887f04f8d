"""Each attack of tests/attacks.py against a fresh ingestor process: one JSON line per attack.

    .venv/bin/python -m tests.measure_ingest_attacks [attack ...]

Prints status counts, seconds to the last answer, the ingestor's peak RSS (VmHWM) and the
worst /healthz latency seen while the attack ran. Run from another checkout's directory (with
PYTHONPATH pointing at it) to measure that checkout's ingestor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import aiohttp
import orjson

from logpipe.dev.processes import EmbeddedAws, RoleProcess, free_port, role_env, wait_http
from tests import attacks
from tests.support.aws import bootstrapped, fresh_settings, use_local_aws
from tests.support.roles import peak_rss_mb

ATTACKS: dict[str, tuple[attacks.Attack, dict[str, str]]] = {
    "otlp-bomb": (attacks.attack_otlp_bomb, {}),
    "otlp-json-bomb-x6": (attacks.attack_otlp_json_bomb, {}),
    "otlp-json-deep": (attacks.attack_otlp_json_deep, {}),
    "gzip-members": (attacks.attack_gzip_members, {}),
    "empty-objects-x6": (attacks.attack_empty_objects, {}),
    "slow-sqs-x40": (attacks.attack_slow_queue, {"LOGPIPE_FAULTS": "sqs-delay:30000"}),
    "header-1MiB": (attacks.attack_huge_header, {}),
    "half-requests-x300": (attacks.attack_half_requests, {}),
    "public-admin-routes": (attacks.attack_public_admin_routes, {}),
    "otlp-long-key": (attacks.attack_otlp_long_key, {}),
    "otlp-json-long-key": (attacks.attack_otlp_json_long_key, {}),
    "otlp-wide-resource-x2": (attacks.attack_otlp_wide_resource, {}),
    "otlp-json-wide-resource": (attacks.attack_otlp_json_wide_resource, {}),
    "inline-flood-x200": (attacks.attack_inline_flood, {}),
    "idle-connections-x1001": (attacks.attack_idle_connections, {}),
    "trickled-body": (attacks.attack_trickled_body, {}),
}


async def measure(aws_url: str, name: str) -> attacks.Outcome:
    attack, extra = ATTACKS[name]
    settings = await bootstrapped(fresh_settings(aws_url, prefix="m"))
    env = role_env(
        settings,
        LOGPIPE_PORT=settings.port,
        LOGPIPE_METRICS_PORT=settings.metrics_port,
        LOGPIPE_API_KEYS=attacks.KEY,
        LOGPIPE_LOG_LEVEL="error",
        LOGPIPE_DRAIN_SECONDS=1,
        **extra,
    )
    base = f"http://127.0.0.1:{settings.port}"
    role = await RoleProcess.start("ingestor", env)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_http(session, f"{base}/healthz")
        outcome = attacks.Outcome(name)
        attacks.slowest_answer.clear()
        async with attacks.healthz_probe(base) as latencies:
            started = time.perf_counter()
            outcome.statuses = await attack(base)
            outcome.seconds = time.perf_counter() - started
        outcome.worst_healthz_s = max(latencies, default=0.0)
        outcome.peak_rss_mb = peak_rss_mb(role.process.pid)
        if attacks.slowest_answer:
            outcome.note = "slowest answer by status: " + ", ".join(
                f"{status} {seconds:.2f} s" for status, seconds in attacks.slowest_answer.items()
            )
        return outcome
    finally:
        role.process.kill()
        await role.process.wait()


async def keys_fail_closed() -> attacks.Outcome:
    env = {**os.environ, "LOGPIPE_API_KEYS": " , ", "LOGPIPE_PORT": str(free_port())}
    env["LOGPIPE_METRICS_PORT"] = str(free_port())
    env.setdefault("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "logpipe", "ingestor", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        status: int | str = f"exit {process.returncode}"
        note = stderr.decode().strip().splitlines()[-1][:100] if stderr.strip() else ""
    except TimeoutError:
        process.kill()
        await process.wait()
        status, note = "still running after 10 s", ""
    return attacks.Outcome("api-keys-blank", [status], time.perf_counter() - started, note=note)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("attacks", nargs="*", default=[*ATTACKS, "api-keys-blank"])
    names = parser.parse_args().attacks
    use_local_aws()
    aws = EmbeddedAws()
    url = aws.start()
    try:
        for name in names:
            outcome = await (keys_fail_closed() if name == "api-keys-blank" else measure(url, name))
            print(orjson.dumps(outcome.row()).decode(), flush=True)
    finally:
        aws.stop()


if __name__ == "__main__":
    asyncio.run(main())
