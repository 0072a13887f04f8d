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

__all__ = [
    "AsyncClient",
    "Client",
    "LogpipeHandler",
    "ShipStats",
    "Shipper",
    "new_event",
    "stamped",
]
