"""Our AWS clients keep their connections open: many calls, few TCP connections.

Counted by a TCP relay in front of the endpoint. moto's own server closes every
connection after one answer, so the bench serves moto under uvicorn (keep-alive).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace

import pytest

from logpipe.aws.bootstrap import bootstrap, queue_url
from logpipe.aws.clients import open_clients
from logpipe.config import Settings
from logpipe.dev.bench import start_keepalive_moto
from logpipe.dev.processes import free_port, start_moto

pytestmark = pytest.mark.aws

CALLS = 30


class CountingRelay:
    """Relays TCP to `port` on 127.0.0.1 and counts the connections it accepts."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.connections = 0
        self.port = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[CountingRelay]:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self


Launcher = Callable[[int, int], Awaitable[asyncio.subprocess.Process]]


async def connections_for_calls(launch: Launcher, settings: Settings) -> int:
    port = free_port()
    process = await launch(port, os.open(os.devnull, os.O_WRONLY))
    try:
        async with CountingRelay(port).running() as relay:
            settings = replace(settings, endpoint_url=f"http://127.0.0.1:{relay.port}")
            async with AsyncExitStack() as stack:
                clients = await open_clients(stack, settings, pool=4)
                await bootstrap(clients, settings)
                url = await queue_url(clients.sqs, settings.queue_name)
                before = relay.connections
                for n in range(CALLS):
                    await clients.sqs.send_message_batch(
                        QueueUrl=url, Entries=[{"Id": "0", "MessageBody": f"m{n}"}]
                    )
                    await clients.dynamodb.describe_table(TableName=settings.table_name)
                return relay.connections - before
    finally:
        process.terminate()
        await process.wait()


async def keepalive(port: int, log: int) -> asyncio.subprocess.Process:
    with os.fdopen(log, "wb") as file:
        return await start_keepalive_moto(port, file)


@pytest.mark.timeout(90)
async def test_clients_reuse_connections_to_a_keep_alive_endpoint(settings: Settings) -> None:
    opened = await connections_for_calls(keepalive, settings)
    assert opened <= 2  # one per client at most, for 2 x 30 calls


@pytest.mark.timeout(90)
async def test_an_endpoint_that_closes_costs_a_connection_per_call(settings: Settings) -> None:
    opened = await connections_for_calls(start_moto, settings)
    assert opened >= CALLS * 2
