"""ASGI factories for running the HTTP roles under any ASGI server, settings from the environment.

    uvicorn --factory logpipe.asgi:ingestor --port 8080 --reload
    uvicorn --factory logpipe.asgi:console --port 8081 --reload

The apps are the same as `logpipe ingestor` / `logpipe console` serve, with the same lifespan:
AWS clients opened at start-up and closed at shutdown, the batcher drained before the ingestor
exits. The server's own flags (`--host`, `--port`, `--workers`) replace LOGPIPE_PORT.
"""

from __future__ import annotations

import logging
import os

from starlette.applications import Starlette

from logpipe.cli import collaborators
from logpipe.config import Settings

log = logging.getLogger(__name__)


def ingestor() -> Starlette:
    """The public ingest app (`/ingest`, `/v1/logs`, `/healthz`), configured by the environment.

    `/metrics` and `/readyz` live on the metrics port, which only `logpipe ingestor` serves.
    """
    from logpipe.ingest import app as role

    settings = Settings.from_env(os.environ)
    if not settings.api_keys:
        log.warning("LOGPIPE_API_KEYS is not set: /ingest and /v1/logs accept events from anyone")
    return role.create_app(settings, **collaborators("ingestor", os.environ))


def console() -> Starlette:
    """The console app (`/`, `/api/logs`, `/api/services`), configured by the environment."""
    from logpipe.read import console as role

    return role.create_app(Settings.from_env(os.environ))
