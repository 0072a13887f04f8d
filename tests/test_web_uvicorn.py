"""What logpipe.web takes from uvicorn beyond its documented surface: these fail loudly when an
upgrade of uvicorn changes it, before the connection limits stop working quietly."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Iterator

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from logpipe.core.limits import Refused
from logpipe.ingest.app import Turns
from logpipe.web import GuardedHttp, guarded_http

pytestmark = pytest.mark.unit


async def _app(scope: object, receive: object, send: object) -> None:
    pass


@pytest.fixture
def protocol() -> Iterator[GuardedHttp]:
    loop = asyncio.new_event_loop()
    config = uvicorn.Config(_app, http=guarded_http(1024, 1.0, 2), lifespan="off")
    config.load()
    try:
        yield guarded_http(1024, 1.0, 2)(
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )
    finally:
        loop.close()


def test_uvicorn_protocol_still_has_the_state_guarded_http_reads(protocol: GuardedHttp) -> None:
    assert protocol.connections is protocol.server_state.connections
    assert protocol.tasks is protocol.server_state.tasks
    assert isinstance(protocol.pipeline, deque)
    assert protocol.cycle is None


@pytest.mark.parametrize(
    "method",
    [
        "connection_made",
        "connection_lost",
        "data_received",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
        "send_400_response",
    ],
)
def test_uvicorn_protocol_still_has_the_hooks_guarded_http_overrides(method: str) -> None:
    assert callable(getattr(HttpToolsProtocol, method))
    assert method in vars(GuardedHttp)


def test_uvicorn_server_still_serves_sockets_it_is_given() -> None:
    assert "sockets" in inspect.signature(uvicorn.Server.serve).parameters


def test_each_server_has_its_own_idle_connections() -> None:
    first, second = guarded_http(1024, 1.0, 2), guarded_http(1024, 1.0, 2)

    assert first.idle is not second.idle
    assert first.reclaimed is not second.reclaimed


async def test_a_turn_not_given_within_its_wait_is_refused_with_503() -> None:
    turns = Turns(1, 0.05, "busy")
    async with turns.turn():
        with pytest.raises(Refused) as refused:
            async with turns.turn():
                pass
    assert refused.value.status == 503
    async with turns.turn():  # given back
        pass


async def test_turns_on_their_own_pass_run_at_most_slots_per_pass_of_the_loop() -> None:
    turns = Turns(2, 5.0, "busy", own_pass=True)
    passes: list[int] = []
    loop_pass = 0

    async def count_passes() -> None:
        nonlocal loop_pass
        while True:
            loop_pass += 1
            await asyncio.sleep(0)

    async def work() -> None:
        async with turns.turn():
            passes.append(loop_pass)

    counter = asyncio.create_task(count_passes())
    await asyncio.gather(*(work() for _ in range(10)))
    counter.cancel()

    assert len(passes) == 10
    assert max(passes.count(n) for n in set(passes)) <= 2
