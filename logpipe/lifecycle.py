"""Running a role: signals flip a stop flag, the role drains within a deadline, exit code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """An event that SIGTERM or SIGINT sets, from the first moment of a role's start-up."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        yield stopping
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def run_until_signalled(
    run: Callable[[], Awaitable[None]],
    stop: Callable[[], None],
    drain_seconds: float,
    stopping: asyncio.Event,
) -> int:
    """Run `run` until it returns or `stopping` is set; then `stop` and wait up to the deadline.

    Exit code 0 when the work finished or drained in time, 1 when the deadline cut it short.
    """
    work = asyncio.ensure_future(run())
    signalled = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({work, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            log.info("stopping: finishing in-flight work (deadline %.0f s)", drain_seconds)
            stop()
            done, _ = await asyncio.wait({work}, timeout=drain_seconds)
            if not done:
                work.cancel()
                log.error("drain deadline passed; unfinished work will be redelivered")
                return 1
        work.result()
        return 0
    finally:
        signalled.cancel()


class Periodic:
    """A background task that calls `tick` every `interval_s`, with start/stop/async with."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    async def _loop(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Cancel the task; idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> Periodic:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
