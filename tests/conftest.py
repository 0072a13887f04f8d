"""One moto server over HTTP for the session; fresh queue, DLQ and table for each test."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson
import pytest
import uvicorn

from logpipe.aws.bootstrap import bootstrap
from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.dev.processes import (
    LOCAL_CREDENTIALS,
    EmbeddedAws,
    RoleProcess,
    free_port,
    role_env,
    wait_http,
)
from logpipe.ingest.app import create_admin_app, create_app

os.environ.update(LOCAL_CREDENTIALS)
os.environ["AWS_REGION"] = "us-east-1"
os.environ.pop("AWS_ENDPOINT_URL", None)


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    aws = EmbeddedAws()
    yield aws.start()
    aws.stop()


@pytest.fixture
async def settings(aws_endpoint: str) -> Settings:
    """Settings for a fresh, bootstrapped queue + DLQ + table, tuned for quick tests."""
    name = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(
        endpoint_url=aws_endpoint,
        queue_name=f"{name}-events",
        dlq_name=f"{name}-dlq",
        table_name=f"{name}-logs",
        host="127.0.0.1",
        port=free_port(),
        metrics_port=free_port(),
        linger_ms=5,
        receive_wait_s=1,
        visibility_timeout_s=5,
        pollers=2,
        drain_seconds=20,
    )
    async with AsyncExitStack() as stack:
        await bootstrap(await open_clients(stack, settings, pool=4), settings)
    return settings


@pytest.fixture
async def clients(settings: Settings) -> AsyncIterator[Clients]:
    async with AsyncExitStack() as stack:
        yield await open_clients(stack, settings, pool=20)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


class _QuietServer(uvicorn.Server):
    """uvicorn in the test's event loop; the test, not a signal, stops it."""

    def capture_signals(self) -> Any:
        from contextlib import nullcontext

        return nullcontext()


@pytest.fixture
async def ingestor_url(settings: Settings) -> AsyncIterator[str]:
    """A real uvicorn serving the ingestor app on a free loopback port (admin on metrics_port)."""
    app = create_app(settings)
    servers = []
    for asgi, port in ((app, settings.port), (create_admin_app(app), settings.metrics_port)):
        config = uvicorn.Config(
            asgi, host="127.0.0.1", port=port, log_config=None, access_log=False
        )
        server = _QuietServer(config)
        task = asyncio.create_task(server.serve())
        await wait_until(lambda: _started(server, task), timeout=15)  # noqa: B023
        servers.append((server, task))
    yield f"http://127.0.0.1:{settings.port}"
    for server, task in reversed(servers):
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
        raise RuntimeError("uvicorn exited during start-up")
    return bool(server.started)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.1
) -> None:
    """Poll `condition` until it holds; fail the test when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def scan_items(clients: Clients, table: str) -> list[dict[str, Any]]:
    """Every stored event of the table (consistent read), across pages."""
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "TableName": table,
        "ConsistentRead": True,
        "FilterExpression": "attribute_exists(id)",  # events only, not the services registry
    }
    while True:
        page = await clients.dynamodb.scan(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


async def queue_counts(clients: Clients, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    response = await clients.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attrs = response["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


def make_event(n: int, service: str = "svc", **fields: Any) -> dict[str, Any]:
    """A valid event with a client id, so a test can tell exactly which ones were stored."""
    return {
        "id": f"ev-{n:08d}",
        "service": service,
        "level": "info",
        "message": f"event number {n}",
        "timestamp": 1_790_000_000_000 + n,
        **fields,
    }


class Roles:
    """Roles of one test running as real subprocesses against the test's resources."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session
        self.running: list[RoleProcess] = []
        # The ingestor's /metrics and /readyz, apart from the processor's metrics port.
        self.ingestor_metrics_port = free_port()

    def env(self, **extra: str | int | float) -> dict[str, str]:
        s = self.settings
        variables: dict[str, str | int | float] = {
            "LOGPIPE_PORT": s.port,
            "LOGPIPE_METRICS_PORT": s.metrics_port,
            "LOGPIPE_RECEIVE_WAIT_S": s.receive_wait_s,
            "LOGPIPE_POLLERS": s.pollers,
            "LOGPIPE_LINGER_MS": s.linger_ms,
            "LOGPIPE_LOG_LEVEL": "warning",
        }
        return role_env(s, **{**variables, **extra})

    async def start(self, role: str, **extra: str | int | float) -> RoleProcess:
        """Start `role` and wait until it serves HTTP (its API or its metrics)."""
        if role == "ingestor":
            extra = {"LOGPIPE_METRICS_PORT": self.ingestor_metrics_port, **extra}
        process = await RoleProcess.start(role, self.env(**extra))
        self.running.append(process)
        port = self.settings.port if role == "ingestor" else self.settings.metrics_port
        path = "/healthz" if role == "ingestor" else "/metrics"
        await wait_http(self.session, f"http://127.0.0.1:{port}{path}", timeout=30)
        return process

    async def stop_all(self) -> None:
        for process in self.running:
            await process.stop(timeout=30)


@pytest.fixture
async def roles(settings: Settings, http: aiohttp.ClientSession) -> AsyncIterator[Roles]:
    running = Roles(settings, http)
    yield running
    await running.stop_all()


def run_bench(*args: str) -> dict[str, Any]:
    """`logpipe bench ARGS` in a subprocess (its own moto server); its one JSON object."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "logpipe", "bench", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    doc: dict[str, Any] = orjson.loads(lines[0])
    return doc
