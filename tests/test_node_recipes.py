"""The Node.js recipes of docs/sending.md, run as they are against the real ingestor.

tests/node/ holds the scripts and a lock file; its packages are installed with `npm ci` once
(skipped, with the reason, only where npm is missing).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from logpipe.aws.clients import Clients
from logpipe.config import Settings
from tests.support.shared import exclusive
from tests.test_client import stored_events

NODE_DIR = Path(__file__).parent / "node"
STAMP = NODE_DIR / "node_modules" / ".installed"
COUNT = 500

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.xdist_group("node"),
    pytest.mark.skipif(
        shutil.which("npm") is None or shutil.which("node") is None,
        reason="npm and node are not installed here",
    ),
]


@pytest.fixture(scope="module")
def node_packages() -> Path:
    """`npm ci` from the committed lock, once, unless node_modules is newer than the lock."""
    lock = NODE_DIR / "package-lock.json"
    with exclusive(NODE_DIR):  # another xdist worker may be installing the same packages
        if not STAMP.exists() or STAMP.stat().st_mtime < lock.stat().st_mtime:
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                check=True,
                timeout=300,
            )
            STAMP.touch()
    return NODE_DIR


async def run_node(script: str, *args: str, env: dict[str, str]) -> str:
    """`node script args` in tests/node, without blocking the loop that serves the ingestor."""
    process = await asyncio.create_subprocess_exec(
        "node",
        script,
        *args,
        cwd=NODE_DIR,
        env={**os.environ, "COUNT": str(COUNT), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


def otel_env(ingestor_url: str) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": "checkout",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"{ingestor_url}/v1/logs",
    }


def summary(events: list[dict[str, Any]]) -> tuple[set[str], set[str], list[str]]:
    return (
        {e["service"] for e in events},
        {e["level"] for e in events},
        sorted(e["message"] for e in events),
    )


EXPECTED_MESSAGES = sorted(f"order {n}" for n in range(COUNT))


@pytest.mark.parametrize("exporter", ["http", "proto"])
async def test_opentelemetry_js_sdk_with_the_env_detector_names_the_service(
    exporter: str,
    node_packages: Path,
    ingestor_url: str,
    clients: Clients,
    settings: Settings,
) -> None:
    await run_node("otel.js", exporter, env=otel_env(ingestor_url))
    events = await stored_events(clients, settings)
    assert summary(events) == ({"checkout"}, {"warn"}, EXPECTED_MESSAGES)
    assert {e["attributes"]["order.id"] for e in events} == set(range(COUNT))


async def test_pino_with_pino_opentelemetry_transport(
    node_packages: Path, ingestor_url: str, clients: Clients, settings: Settings
) -> None:
    await run_node("pino.js", env=otel_env(ingestor_url))
    events = await stored_events(clients, settings)
    assert summary(events) == ({"checkout"}, {"error"}, EXPECTED_MESSAGES)


async def test_winston_http_transport_stores_everything_and_warns_about_the_202(
    node_packages: Path, ingestor_url: str, clients: Clients, settings: Settings
) -> None:
    out = await run_node("winston.js", env={"LOGPIPE_URL": ingestor_url})
    answers = orjson.loads(out)["answers"]
    assert answers == ["Invalid HTTP Status Code: 202"] * (COUNT // 100)
    events = await stored_events(clients, settings)
    assert summary(events) == ({"checkout"}, {"info"}, EXPECTED_MESSAGES)
    assert {e["attributes"]["order"] for e in events} == set(range(COUNT))
