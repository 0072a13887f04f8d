"""Running a role: signals flip a stop flag, the role drains within a deadline, exit code."""

from __future__ import annotations

import asyncio
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
