"""`logpipe up` as a new user meets it: fixed ports, the banner, the curl, `query` and `dlq`
with no set-up, a clear error when a port is taken, Ctrl-C exits 0. Plus the discovery rules."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from logpipe.config import Settings
from logpipe.dev.local import STATE_FILE, StackState, attach, aws_configured, ports_problem
from logpipe.dev.processes import free_port, wait_http
from tests.support.servers import serving
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


def clean_env(home: Path) -> dict[str, str]:
    """Our environment as a new user's: no AWS settings of any kind, a HOME without ~/.aws."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(home)
    return env


@dataclass
class Up:
    process: asyncio.subprocess.Process
    banner: str
    port: int
    console_port: int
    aws_port: int
    cwd: Path
    env: dict[str, str]

    def logpipe(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "logpipe", *args],
            cwd=self.cwd,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


async def read_banner(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(60):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise AssertionError("logpipe up exited before it was ready:\n" + "".join(lines))
            lines.append(line)
            if line.startswith("demo emitters"):
                return "".join(lines)


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    env = clean_env(tmp_path)
    ports = (free_port(), free_port(), free_port())
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "logpipe", "up", "--rate", "5"),
        *("--port", str(ports[0]), "--console-port", str(ports[1]), "--aws-port", str(ports[2])),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        banner = await read_banner(process)
        yield Up(process, banner, *ports, tmp_path, env)
    finally:
        # Ctrl-C, as a person stops it: `up` stops its roles; SIGKILL would orphan them.
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(60):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_up_serves_the_readme_first_screen_and_ctrl_c_exits_zero(up: Up) -> None:
    assert f"http://localhost:{up.port}/ingest" in up.banner
    assert f"http://localhost:{up.console_port}/" in up.banner
    assert f"http://127.0.0.1:{up.aws_port}" in up.banner
    assert f"curl -X POST localhost:{up.port}/ingest" in up.banner
    assert (up.cwd / STATE_FILE).exists()

    # The curl line of the banner, as printed.
    curl = up.banner.split("send an event:\n", 1)[1].split("read it back:", 1)[0]
    body = curl.split("-d '", 1)[1].rsplit("'", 1)[0]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://localhost:{up.port}/ingest",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 202, await resp.text()

    async def queried() -> bool:
        result = up.logpipe("query", "--service", "checkout", "--json")
        assert result.returncode == 0, result.stderr
        assert "using the local stack of `logpipe up`" in result.stderr
        return any(
            orjson.loads(line)["message"] == "card declined"
            for line in result.stdout.split("\n")
            if line
        )

    await wait_until(queried, timeout=60, interval=0.5)

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{up.console_port}/api/logs?service=checkout") as resp,
    ):
        assert [e["message"] for e in (await resp.json())["events"]] == ["card declined"]

    inspect = up.logpipe("dlq", "inspect", "--json")
    assert inspect.returncode == 0, inspect.stderr
    assert "using the local stack" in inspect.stderr
    assert orjson.loads(inspect.stdout)["messages"] == 0

    up.process.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        assert await up.process.wait() == 0
    assert not (up.cwd / STATE_FILE).exists()


async def test_a_second_up_on_a_taken_port_says_which_and_exits_2(up: Up) -> None:
    result = up.logpipe(
        "up",
        *("--port", str(up.port), "--console-port", str(free_port())),
        *("--aws-port", str(free_port())),
    )
    assert result.returncode == 2
    assert f"port {up.port} for the ingestor (--port) is not free" in result.stderr


def test_without_a_running_stack_query_uses_the_settings_as_they_are(tmp_path: Path) -> None:
    settings = Settings()
    err = io.StringIO()
    assert attach(settings, {}, tmp_path, tmp_path, err) is None
    assert err.getvalue() == ""


@pytest.fixture
def state_here(tmp_path: Path) -> Iterator[StackState]:
    state = StackState(
        pid=os.getpid(),
        endpoint="http://127.0.0.1:1",
        ingestor="http://localhost:2",
        console="http://localhost:3",
        region="eu-west-1",
        queue_name="q",
        dlq_name="d",
        table_name="t",
    )
    state.write(tmp_path)
    yield state
    state.remove(tmp_path)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"AWS_ENDPOINT_URL": "http://elsewhere:4566"}, id="endpoint"),
        pytest.param({"AWS_ACCESS_KEY_ID": "AKIA..."}, id="access-key"),
        pytest.param({"AWS_PROFILE": "prod"}, id="profile"),
        pytest.param({"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"}, id="web-identity"),
        pytest.param({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/x"}, id="ecs-task-role"),
    ],
)
def test_real_aws_settings_are_never_swapped_for_the_local_stack(
    env: dict[str, str], tmp_path: Path, state_here: StackState
) -> None:
    assert attach(Settings(), env, tmp_path, tmp_path, io.StringIO()) is None


def test_an_aws_credentials_file_counts_as_aws_settings(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\n")
    assert aws_configured({}, tmp_path) == str(tmp_path / ".aws" / "credentials")


def test_a_running_stack_gives_its_endpoint_and_names_and_says_so(
    tmp_path: Path, state_here: StackState
) -> None:
    err = io.StringIO()
    settings = attach(Settings(), {"AWS_REGION": "us-east-1"}, tmp_path, tmp_path, err)
    assert settings is not None
    assert (settings.endpoint_url, settings.region, settings.table_name) == (
        "http://127.0.0.1:1",
        "eu-west-1",
        "t",
    )
    assert "using the local stack" in err.getvalue()


def test_a_state_file_left_by_a_killed_stack_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    state = StackState(int(dead.stdout), "http://127.0.0.1:1", "", "", "us-east-1", "q", "d", "t")
    state.write(tmp_path)
    assert attach(Settings(), {}, tmp_path, tmp_path, io.StringIO()) is None


def test_ports_problem_names_a_taken_port_and_a_shared_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"port {port} for a (--a) is not free" in (ports_problem({"a (--a)": port}) or "")
    free = free_port()
    assert ports_problem({"a": free, "b": free}) == f"b and a cannot share port {free}"
    assert ports_problem({"a": free_port(), "b": free_port()}) is None


async def test_waiting_for_a_role_that_exited_fails_at_once_with_its_exit_code() -> None:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(2)")
    await process.wait()
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RuntimeError, match="exited with 2"):
            await wait_http(session, f"http://127.0.0.1:{free_port()}/healthz", 60, process)
    assert time.monotonic() - started < 30  # not the 60 s the wait would allow


def test_free_ports_are_outside_the_range_outgoing_connections_take() -> None:
    lowest, highest = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(50)}
    assert all(port < lowest or port > highest for port in ports)
    assert len(ports) > 40  # chosen at random, not one port handed to every caller


async def test_serving_on_a_taken_port_raises_an_error_not_a_system_exit() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(RuntimeError, match="could not start on port"):
            async with serving(_empty_app, busy.getsockname()[1]):
                pass


async def _empty_app(scope: object, receive: object, send: object) -> None:
    pass
