"""Waiting on a condition, never on the clock: poll until it holds or a deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def poll(
    condition: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.1
) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass first (False)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.1
) -> None:
    """Poll `condition` until it holds; fail the test when `timeout` seconds pass first."""
    if not await poll(condition, timeout, interval):
        raise AssertionError(f"condition not met within {timeout} s")
