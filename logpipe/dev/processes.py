"""Running roles and endpoints as processes: moto embedded or on its own, each role as a child.

Used by `logpipe up` (local.py), by `logpipe bench` (bench.py) and by the tests.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import aiohttp

from logpipe.config import Settings

LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
LOWEST_LISTEN_PORT = 10000


def _lowest_ephemeral_port() -> int:
    try:
        with open(EPHEMERAL_RANGE) as numbers:
            return int(numbers.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free now, chosen below the kernel's range for outgoing connections: a
    port from that range can be taken by any connection opened before the server binds it."""
    highest = _lowest_ephemeral_port()
    for _ in range(200 if highest > LOWEST_LISTEN_PORT + 1000 else 0):
        port = random.randrange(LOWEST_LISTEN_PORT, highest)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedAws:
    """moto's server on a loopback port (a free one by default), in this process: SQS and
    DynamoDB over HTTP."""

    def __init__(self, port: int | None = None) -> None:
        from moto.server import ThreadedMotoServer

        _without_moto_stubber()
        _isolated_moto_transactions()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(
            ip_address="127.0.0.1", port=port or free_port(), verbose=False
        )
        self.url = ""

    def start(self) -> str:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self._server.stop()


def _isolated_moto_transactions() -> None:
    """moto's TransactWriteItems deep-copies the whole table once per item of the
    transaction (to roll back a cancelled one), with no lock: beside other writes it fails
    (a dict changed during the copy) or its rollback erases what they wrote, and a
    transaction of 100 puts into a table of a few thousand items takes seconds. DynamoDB
    isolates transactions and does not slow down so: here every DynamoDB write of the
    embedded server takes one lock, so a transaction runs alone, and it copies a table once."""
    from moto.dynamodb import models

    backend = models.DynamoDBBackend
    if getattr(backend, "_logpipe_isolated", False):
        return
    lock = threading.RLock()
    for name in ("put_item", "update_item", "delete_item"):
        setattr(backend, name, _holding(lock, getattr(backend, name)))
    transact = backend.transact_write_items

    @functools.wraps(transact)
    def transact_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            models.copy = _CopyOnce()  # type: ignore[attr-defined,assignment]
            try:
                return transact(self, *args, **kwargs)
            finally:
                models.copy = copy  # type: ignore[attr-defined]

    backend.transact_write_items = transact_once  # type: ignore[method-assign]
    backend._logpipe_isolated = True  # type: ignore[attr-defined]


class _CopyOnce:
    """`copy` as one moto transaction sees it: each table deep-copied once."""

    def __init__(self) -> None:
        self._copies: dict[int, Any] = {}

    def deepcopy(self, value: Any) -> Any:
        if id(value) not in self._copies:
            self._copies[id(value)] = copy.deepcopy(value)
        return self._copies[id(value)]


def _holding(lock: threading.RLock, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(*args, **kwargs)

    return locked


def _without_moto_stubber() -> None:
    """Importing moto adds its in-process mock to every botocore client made afterwards (a
    `before-send` handler). The embedded server answers over HTTP and nothing here mocks in
    process, so the handler goes: clients in this process then make their calls as they
    would against AWS."""
    from botocore.handlers import BUILTIN_HANDLERS
    from moto.core.models import botocore_stubber

    BUILTIN_HANDLERS[:] = [entry for entry in BUILTIN_HANDLERS if entry[1] is not botocore_stubber]


@dataclass
class RoleProcess:
    """One role running as `python -m logpipe <role>` in its own process."""

    role: str
    process: asyncio.subprocess.Process

    @classmethod
    async def start(
        cls, role: str, env: Mapping[str, str], *args: str, log_file: IO[bytes] | None = None
    ) -> RoleProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "logpipe",
            role,
            *args,
            env=dict(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file if log_file is not None else None,
        )
        return cls(role, process)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return int(self.process.returncode or 0)

    async def output(self) -> bytes:
        """Everything the role printed on stdout, once it has exited."""
        assert self.process.stdout is not None
        data = await self.process.stdout.read()
        await self.process.wait()
        return data


async def wait_http(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float = 30.0,
    process: asyncio.subprocess.Process | None = None,
) -> None:
    """Poll `url` until it answers 200, or raise TimeoutError; RuntimeError at once if
    `process`, the one meant to answer, has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.returncode is not None:
            raise RuntimeError(f"exited with {process.returncode} before {url} answered")
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        await asyncio.sleep(0.2)


def role_env(settings: Settings, **variables: str | int | float) -> dict[str, str]:
    """The environment of a child role: ours, pointed at the same endpoint and resources."""
    env = {k: v for k, v in os.environ.items() if k != "ROLE"}
    env.update(LOCAL_CREDENTIALS)
    if settings.endpoint_url is not None:
        # The child's botocore reads AWS_ENDPOINT_URL; nothing may send it elsewhere.
        for name in [k for k in env if k.startswith("AWS_ENDPOINT_URL_")]:
            del env[name]
        env.pop("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", None)
        env["AWS_ENDPOINT_URL"] = settings.endpoint_url
    if settings.region is not None:
        env["AWS_REGION"] = settings.region
    env.update(
        LOGPIPE_QUEUE_NAME=settings.queue_name,
        LOGPIPE_DLQ_NAME=settings.dlq_name,
        LOGPIPE_TABLE_NAME=settings.table_name,
        LOGPIPE_HOST="127.0.0.1",
    )
    env.update({k: str(v) for k, v in variables.items()})
    return env


async def start_moto(
    port: int, log: IO[bytes] | int = asyncio.subprocess.DEVNULL
) -> asyncio.subprocess.Process:
    """moto's server in a process of its own on `port`, once it answers."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
        stdout=log,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with aiohttp.ClientSession() as session:
        await wait_http(session, f"http://127.0.0.1:{port}/moto-api/", timeout=30)
    return process
