"""The uvicorn server every public role runs: its main loop wakes once a second, not ten
times, and at once when told to stop. Real uvicorn on a free loopback port."""

from __future__ import annotations

import asyncio

import pytest
import uvicorn
from starlette.applications import Starlette

from logpipe.dev.processes import free_port
from logpipe.web import _QuietServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.aws


async def test_the_main_loop_ticks_once_a_second_and_stops_at_once_when_told() -> None:
    config = uvicorn.Config(
        Starlette(), host="127.0.0.1", port=free_port(), lifespan="off", log_config=None
    )
    server = _QuietServer(config)
    ticks: list[int] = []
    on_tick = server.on_tick

    async def counted(counter: int) -> bool:
        ticks.append(counter)
        return await on_tick(counter)

    server.on_tick = counted  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())

    async def ticked_twice() -> bool:
        return len(ticks) >= 2

    await wait_until(ticked_twice, timeout=30)
    # Each wake-up is uvicorn's once-a-second tick (the Date header); its own loop gives
    # 1, 2, 3, ... ten times a second.
    assert all(counter % 10 == 0 for counter in ticks), ticks
    # After one more tick the loop sleeps for a minute: only the stop itself can wake it.
    server.tick_s = 60.0
    seen = len(ticks)

    async def ticked_again() -> bool:
        return len(ticks) > seen

    await wait_until(ticked_again, timeout=30)
    server.stop()
    await asyncio.wait_for(task, 30)
    assert server.started
