"""One moto server over HTTP per session (per xdist worker); fresh queue, DLQ and table for each
test. The set-up itself lives in tests/support/, shared with the measurement scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import aiohttp
import pytest

from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.dev.processes import EmbeddedAws
from logpipe.ingest.app import create_admin_app, create_app
from tests.support.aws import bootstrapped, fresh_settings, use_local_aws
from tests.support.kinds import KINDS, kind_problems, slowest_first
from tests.support.roles import Roles
from tests.support.servers import serving

use_local_aws()

# Under xdist these start first, longest first, so that no worker is left alone with a long
# test at the end; the rest follow in file order. `--dist loadgroup` hands out one test at a
# time, and would hand out the xdist_group modules (install, node) whole, but with pytest 9.2
# and xdist 3.8 it does not (pytest-xdist#1386): what they share is locked (support/shared.py)
# or per worker (tmp_path_factory).
SLOW_FIRST = (
    "tests/test_deploy.py::test_deploy_rehearsal",  # about 3 minutes
    "tests/test_bench.py",
    "tests/test_chaos.py",
    "tests/test_local.py",
    "tests/test_pipeline.py",
    "tests/test_ingest_attacks.py",
    "tests/test_robustness.py",
    "tests/test_console_browser.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test without exactly one kind marker; under xdist, start the slowest first."""
    problems = kind_problems(items)
    if problems:
        raise pytest.UsageError(
            f"every test needs exactly one of the markers {', '.join(KINDS)}:\n  "
            + "\n  ".join(problems)
        )
    if hasattr(config, "workerinput"):
        slowest_first(items, SLOW_FIRST)


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    aws = EmbeddedAws()
    yield aws.start()
    aws.stop()


@pytest.fixture
async def settings(aws_endpoint: str) -> Settings:
    """Settings for a fresh, bootstrapped queue + DLQ + table, tuned for quick tests."""
    return await bootstrapped(
        fresh_settings(
            aws_endpoint,
            linger_ms=5,
            receive_wait_s=1,
            visibility_timeout_s=5,
            pollers=2,
            drain_seconds=20,
        )
    )


@pytest.fixture
async def clients(settings: Settings) -> AsyncIterator[Clients]:
    async with AsyncExitStack() as stack:
        yield await open_clients(stack, settings, pool=20)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
async def ingestor_url(settings: Settings) -> AsyncIterator[str]:
    """A real uvicorn serving the ingestor app on a free loopback port (admin on metrics_port)."""
    app = create_app(settings)
    async with (
        serving(app, settings.port, access_log=False) as url,
        serving(create_admin_app(app), settings.metrics_port, access_log=False),
    ):
        yield url


@pytest.fixture
async def roles(settings: Settings, http: aiohttp.ClientSession) -> AsyncIterator[Roles]:
    running = Roles(settings, http)
    yield running
    await running.stop_all()
