"""`logpipe query`: a message's lines, the trace id, and `--follow` as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from logpipe.aws.clients import Clients
from logpipe.config import Settings
from logpipe.dev.processes import role_env
from logpipe.read.query_cli import MESSAGE_INDENT, format_table
from tests.support.aws import make_event
from tests.support.wait import wait_until
from tests.test_reader import store_events


@pytest.mark.unit
def test_a_multi_line_message_prints_as_indented_lines_still_escaped() -> None:
    event = {
        "timestamp": "2026-09-21T14:00:00.000Z",
        "level": "error",
        "message": 'boom\nTraceback (most recent call last):\n  File \x1b[31m"x.py"\r',
        "trace_id": "ab" * 16,
        "attributes": {"k": "v"},
    }
    lines = format_table([event]).splitlines()
    assert lines[1] == f"2026-09-21T14:00:00.000Z  ERROR  boom  trace={'ab' * 16} k=v"
    assert lines[2:] == [
        MESSAGE_INDENT + "Traceback (most recent call last):",
        MESSAGE_INDENT + '  File \\x1b[31m"x.py"\\r',
    ]


@pytest.mark.e2e
async def test_follow_prints_new_events_as_they_are_stored_and_exits_0_on_ctrl_c(
    clients: Clients, settings: Settings
) -> None:
    now = int(time.time() * 1000)
    await store_events(clients, settings, [make_event(1, timestamp=now - 60_000)])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "logpipe",
        *("query", "--service", "svc", "--since", "10m", "-f"),
        env=role_env(settings, LOGPIPE_LOG_LEVEL="warning"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    code, lines = await follow_three_events(process, clients, settings)
    assert code == 0
    messages = [line.split("  ")[2].strip() for line in lines if "event number" in line]
    assert messages == ["event number 1", "event number 2", "event number 3"]


async def follow_three_events(
    process: asyncio.subprocess.Process, clients: Clients, settings: Settings
) -> tuple[int, list[str]]:
    """Read a following `logpipe query` until it shows event 1, store events 2 and 3 in two
    messages, wait until it shows event 3, then Ctrl-C: its exit code and the lines it printed."""
    lines: list[str] = []

    async def read_lines() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            lines.append(line.decode())

    reader = asyncio.create_task(read_lines())
    try:
        await wait_until(lambda: _shown(lines, "event number 1"), timeout=30)
        later = int(time.time() * 1000)
        news = [make_event(2, timestamp=later), make_event(3, timestamp=later + 1)]
        await store_events(clients, settings, news, per_message=1)
        await wait_until(lambda: _shown(lines, "event number 3"), timeout=30)
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await reader
    return code, lines


async def _shown(lines: list[str], text: str) -> bool:
    return any(text in line for line in lines)


@pytest.mark.e2e
@pytest.mark.parametrize("command", [("query", "--service", "x"), ("export",)])
async def test_without_aws_settings_the_reading_commands_say_what_to_set(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "logpipe", *command),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 1 and out == b""
    [line] = err.decode().splitlines()
    assert line.startswith("logpipe: no AWS credentials or region here (NoCredentialsError)")
    assert "AWS_PROFILE" in line and "make up" in line
    # Only query reads through a console.
    assert ("LOGPIPE_CONSOLE_URL" in line) == (command[0] == "query")
