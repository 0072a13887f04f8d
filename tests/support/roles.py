"""Roles as real subprocesses (`python -m logpipe ROLE`) against a test's resources."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import aiohttp
import orjson

from logpipe.config import Settings
from logpipe.dev import bench
from logpipe.dev.processes import RoleProcess, free_port, role_env, wait_http


class Roles:
    """The roles one test or measurement started; each awaited until it serves HTTP."""

    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, log_level: str = "warning"
    ) -> None:
        self.settings = settings
        self.session = session
        self.log_level = log_level
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
            "LOGPIPE_LOG_LEVEL": self.log_level,
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
        # A loaded machine may take long to start a process; one that stops (a port taken
        # since it was chosen) fails the wait at once, its one line on stderr.
        url = f"http://127.0.0.1:{port}{path}"
        await wait_http(self.session, url, timeout=90, process=process.process)
        return process

    async def stop_all(self, timeout: float = 30) -> None:
        for process in self.running:
            await process.stop(timeout=timeout)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process: the most resident memory it ever had, in MB."""
    peak = bench.peak_rss_mb(pid)
    if peak is None:
        raise RuntimeError(f"no VmHWM for pid {pid}")
    return peak


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
