"""HTTP pieces every app of logpipe shares: JSON answers, API keys, bounded bodies."""

from __future__ import annotations

import asyncio
import hmac
import signal
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from logpipe.config import Settings
from logpipe.errors import BodyError


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(status: int, message: str, **extra: Any) -> Response:
    headers = None
    if status in (429, 503):
        headers = {"Retry-After": "1" if status == 429 else "2"}
    elif status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="logpipe"'}
    return json_response({"error": message, **extra}, status, headers)


def authorised(header: str | None, keys: tuple[str, ...]) -> bool:
    """True when no keys are set, or the Bearer token equals one of them (constant time)."""
    if not keys:
        return True
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyError(413, f"body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding (identity or gzip), inflating at most `limit` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise BodyError(415, f"Content-Encoding {encoding!r} is not supported; use gzip")
    out = bytearray()
    data = body
    while data:
        inflater = zlib.decompressobj(wbits=31)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error:
            raise BodyError(400, "body is not valid gzip") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise BodyError(413, f"body is larger than the limit of {limit} bytes once inflated")
        if not inflater.eof:
            raise BodyError(400, "gzip body is truncated")
        data = inflater.unused_data
    return bytes(out)


async def prometheus(request: Request) -> Response:
    """GET /metrics: this process's Prometheus registry."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 as JSON, keeping its headers (405's Allow)."""
    assert isinstance(exc, HTTPException)
    response = error_response(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


class _Server(uvicorn.Server):
    """uvicorn whose SIGTERM/SIGINT mean "drain and exit 0" (ECS), not "die by the signal"."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def serve_app(app: Starlette, settings: Settings) -> int:
    """Serve `app` on LOGPIPE_PORT until SIGTERM, draining connections; 1 if it never started."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_seconds),
        server_header=False,
    )
    server = _Server(config)
    await server.serve()
    return 0 if server.started else 1
