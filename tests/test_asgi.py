"""The ingestor and the console run by the uvicorn CLI itself, as a developer runs them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.dev.processes import free_port, role_env, wait_http
from tests.test_client import stored_events

pytestmark = pytest.mark.e2e


async def start_uvicorn(factory: str, port: int, env: dict[str, str]) -> asyncio.subprocess.Process:
    script = Path(sys.executable).parent / "uvicorn"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "uvicorn"]
    return await asyncio.create_subprocess_exec(
        *command,
        "--factory",
        f"logpipe.asgi:{factory}",
        *("--host", "127.0.0.1", "--port", str(port)),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.fixture
async def served(
    settings: Settings, http: aiohttp.ClientSession
) -> AsyncIterator[dict[str, tuple[str, asyncio.subprocess.Process]]]:
    env = role_env(settings, LOGPIPE_LINGER_MS=5)
    env.pop("LOGPIPE_PORT", None)
    apps = {}
    for factory in ("ingestor", "console"):
        port = free_port()
        apps[factory] = (f"http://127.0.0.1:{port}", await start_uvicorn(factory, port, env))
        await wait_http(http, f"http://127.0.0.1:{port}/healthz", timeout=60)
    yield apps
    for _, process in apps.values():
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_uvicorn_cli_runs_the_ingestor_and_console_with_their_lifespan(
    served: dict[str, tuple[str, asyncio.subprocess.Process]],
    http: aiohttp.ClientSession,
    clients: Clients,
    settings: Settings,
) -> None:
    ingestor_url, ingestor = served["ingestor"]
    body = b"\n".join(orjson.dumps({"service": "dev", "msg": f"n{n}"}) for n in range(50))
    async with http.post(
        f"{ingestor_url}/ingest", data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as resp:
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["accepted"] == 50

    # SIGTERM: uvicorn runs the lifespan's shutdown (batcher drained, clients closed), then
    # ends by the same signal, as its CLI does for any app.
    ingestor.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        assert await ingestor.wait() in (0, -signal.SIGTERM)
    assert ingestor.stderr is not None
    log = (await ingestor.stderr.read()).decode()
    assert "Application shutdown complete" in log, log

    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == sorted(f"n{n}" for n in range(50))

    console_url, _ = served["console"]
    async with http.get(f"{console_url}/api/logs?service=dev&limit=100") as resp:
        assert resp.status == 200
        assert len((await resp.json())["events"]) == 50


def test_factories_read_the_environment_once_and_refuse_bad_settings() -> None:
    from logpipe import asgi
    from logpipe.errors import ConfigError

    os.environ["LOGPIPE_QUEUE_NAME"] = "bad name!"
    try:
        with pytest.raises(ConfigError, match="LOGPIPE_QUEUE_NAME"):
            asgi.ingestor()
    finally:
        del os.environ["LOGPIPE_QUEUE_NAME"]
