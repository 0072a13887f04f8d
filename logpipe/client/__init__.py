"""The Python client: `Client` (blocking), `AsyncClient` (asyncio) and `LogpipeHandler`.

Needs only orjson and aiohttp (`pip install logpipe`); imports nothing of the server side.
"""

from logpipe.client.clients import (
    AsyncClient,
    Client,
    LogpipeHandler,
    Shipper,
    ShipStats,
    new_event,
    stamped,
)
from logpipe.client.handler import loguru_sink

__all__ = [
    "AsyncClient",
    "Client",
    "LogpipeHandler",
    "ShipStats",
    "Shipper",
    "loguru_sink",
    "new_event",
    "stamped",
]
