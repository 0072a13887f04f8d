"""An ASGI app under a real uvicorn in the caller's event loop, on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

import uvicorn

from tests.support.wait import wait_until


class QuietServer(uvicorn.Server):
    """uvicorn in the test's event loop; the test, not a signal, stops it."""

    def capture_signals(self) -> Any:
        return nullcontext()


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
        raise RuntimeError("uvicorn exited during start-up")
    return bool(server.started)


async def _serve(server: uvicorn.Server, port: int) -> None:
    # uvicorn exits the process when it cannot bind; a SystemExit would escape pytest's fixture
    # bookkeeping and fail every later test that uses the fixture.
    try:
        await server.serve()
    except SystemExit as exit_:
        raise RuntimeError(f"uvicorn could not start on port {port}") from exit_


@asynccontextmanager
async def serving(app: Any, port: int, **config: Any) -> AsyncIterator[str]:
    """`app` served on 127.0.0.1:`port` until the block ends; its base URL."""
    server = QuietServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, **config)
    )
    task = asyncio.create_task(_serve(server, port))
    try:
        await wait_until(lambda: _started(server, task), timeout=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
