"""HTTP pieces every app of logpipe shares: JSON answers, API keys, bounded bodies."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from types import FrameType
from typing import Any, ClassVar, cast

import orjson
import uvicorn
from isal import isal_zlib
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from logpipe.config import Settings, port_error
from logpipe.core.limits import Refused
from logpipe.errors import ConfigError
from logpipe.obs import metrics


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


async def read_body(
    request: Request,
    limit: int,
    hold: Callable[[int, str], None] | None = None,
    timeout: float | None = None,
) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` bytes.

    `hold(n, what)` accounts each chunk before it is kept (it raises to refuse); a body that
    has not arrived whole within `timeout` seconds is refused with 408 (one deadline for the
    whole body: a body trickled a byte at a time is cut off as one that stops).
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"body is {declared} bytes; the limit is {limit}", "too_large")
    chunks = []
    size = 0
    # The ASGI messages themselves, as Request.stream() reads them, under one deadline (not a
    # generator and a timeout block per chunk).
    receive = request.receive
    more = True
    try:
        async with asyncio.timeout(timeout):
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientDisconnect()
                more = message.get("more_body", False)
                chunk = message.get("body", b"")
                if not chunk:
                    continue
                size += len(chunk)
                if size > limit:
                    raise Refused(
                        413, f"body is larger than the limit of {limit} bytes", "too_large"
                    )
                if hold is not None:
                    hold(len(chunk), "the body")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, f"body did not arrive whole within {timeout:g} s", "timeout") from None
    return b"".join(chunks)


# The request line and headers together (431 above it).
MAX_HEADER_BYTES = 64 * 1024
# Concatenated gzip members are legal (RFC 1952) but real senders write a handful; each one
# costs a fresh inflater, so a body of thousands of empty members is refused.
MAX_GZIP_MEMBERS = 1000
# ISA-L inflates gzip about three times as fast as zlib; its stub types the error class as
# an instance.
_GZIP_ERROR = cast(type[Exception], isal_zlib.error)
GZIP_MAGIC = b"\x1f\x8b"
_INFLATE_STEP = 64 * 1024


def decode_content(
    body: bytes,
    encoding: str | None,
    limit: int,
    hold: Callable[[int, str], None] | None = None,
) -> bytes:
    """Undo Content-Encoding (identity or gzip), inflating at most `limit` bytes.

    Linear in the body whatever its members: the input is fed in steps through a memoryview,
    so the end of a member copies at most one step, never the rest of the body.
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise Refused(415, f"Content-Encoding {encoding!r} is not supported; use gzip", "encoding")
    return _gunzip(body, limit, hold)


def gzip_size_hint(body: bytes) -> int:
    """What a gzip body's last member says it inflates to (its ISIZE, RFC 1952), 0 for a body
    that is not gzip. A hint only: the sender writes it, and a wrong one is found inflating."""
    if not body.startswith(GZIP_MAGIC) or len(body) < 18:  # 10-byte header, 8-byte trailer
        return 0
    return int.from_bytes(body[-4:], "little")


def _gunzip(body: bytes, limit: int, hold: Callable[[int, str], None] | None) -> bytes:
    """Every gzip member of `body` (at most MAX_GZIP_MEMBERS), inflated and joined."""
    view = memoryview(body)
    out: list[bytes] = []
    size = 0
    pos = 0
    members = 0
    while pos < len(body):
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise Refused(400, f"gzip body has more than {MAX_GZIP_MEMBERS} members", "bad_body")
        # ISA-L, unlike zlib, waits for a whole header before it judges one: the magic
        # bytes are checked here, so a body that is not gzip is called that at once.
        head = bytes(view[pos : pos + 2])
        if head != GZIP_MAGIC[: len(head)]:
            raise Refused(400, "body is not valid gzip", "bad_body")
        inflater = isal_zlib.decompressobj(wbits=31)
        while not inflater.eof:
            if pos >= len(body):
                raise Refused(400, "gzip body is truncated", "bad_body")
            step = view[pos : pos + _INFLATE_STEP]
            try:
                data = inflater.decompress(step, limit + 1 - size)
            except _GZIP_ERROR:
                raise Refused(400, "body is not valid gzip", "bad_body") from None
            size += len(data)
            if size > limit:
                error = f"body is larger than the limit of {limit} bytes once inflated"
                raise Refused(413, error, "too_large")
            if hold is not None:
                hold(2 * len(data), "the inflated body")  # its chunks, then their join
            out.append(data)
            pos += len(step) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
    return b"".join(out)


class HotRoutes(Starlette):
    """Starlette whose hot POST paths go straight to their endpoint, past the router and the
    middleware, which add nothing to them: every other request takes the usual way.

    An endpoint that raises gets the answer ServerErrorMiddleware gives (500, "Internal
    Server Error"), and the error goes on to the server, which logs it.
    """

    def __init__(
        self, *, hot: Mapping[str, Callable[[Request], Awaitable[Response]]], **options: Any
    ) -> None:
        super().__init__(**options)
        self.hot = dict(hot)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.hot.get(scope["path"])
        if endpoint is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        try:
            response = await endpoint(Request(scope, receive))
        except Exception:
            await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
            raise
        await response(scope, receive, send)


async def prometheus(request: Request) -> Response:
    """GET /metrics: this process's Prometheus registry."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 as JSON, keeping its headers (405's Allow)."""
    assert isinstance(exc, HTTPException)
    response = error_response(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits it lacks: header block size, header time,
    connection slots that idle connections give back.

    A header block that passes `max_header_bytes` is answered 431 and the connection closed;
    headers that take longer than `read_timeout_s` to arrive get 408 and a closed connection.
    A connection past `max_connections` closes idle ones (no request in progress: keep-alive
    between requests, or never used), the longest idle first; only when none is idle does
    its request get 503 with Retry-After (as one past as many requests in progress does;
    uvicorn's own limit_concurrency answers without one). (The body's own timeout is the
    app's: see `read_body`.)

    Besides uvicorn's public hooks (the asyncio.Protocol methods, `on_headers_complete`,
    `send_400_response`), this reads `connections`, `tasks`, `cycle`, `pipeline` and
    `on_response_complete` of HttpToolsProtocol; tests/test_web_uvicorn.py fails when
    uvicorn changes them.
    """

    max_header_bytes = 64 * 1024
    read_timeout_s = 15.0
    max_connections = 1000
    # Idle connections of one server, longest idle first; and those closed to make room that
    # have not gone yet (still in `connections`). Each server gets its own (`guarded_http`).
    idle: ClassVar[dict[GuardedHttp, None]] = {}
    reclaimed: ClassVar[set[GuardedHttp]] = set()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._refusal: tuple[int, str, str] | None = None
        self._awaiting_headers = True
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()
        self._reclaim_slots()
        self.idle[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self.idle.pop(self, None)
        self.reclaimed.discard(self)
        super().connection_lost(exc)

    def _open_connections(self) -> int:
        return len(self.connections) - len(self.reclaimed)

    def _reclaim_slots(self) -> None:
        """Close idle connections, longest idle first, until this one fits under the cap."""
        while self._open_connections() > self.max_connections and self.idle:
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            self.reclaimed.add(oldest)
            metrics.requests_rejected.labels("idle_reclaimed").inc()
            oldest.transport.close()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # the next request starts now: not idle
        super().on_response_complete()
        if not (pipelined or self.transport.is_closing() or self._header_bytes):
            self.idle[self] = None  # at the end: the longest idle come first

    def data_received(self, data: bytes) -> None:
        self.idle.pop(self, None)
        if self._awaiting_headers:
            self._header_bytes += len(data)
            if self._header_timer is None:
                self._arm_header_timer()
        super().data_received(data)
        if self._awaiting_headers and self._header_bytes > self.max_header_bytes:
            self._refuse(431, "the request header block is larger than the limit", "header_size")

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        self._disarm_header_timer()
        # A block that arrived whole in one read is measured here; raising stops the parser
        # and uvicorn answers through send_400_response, which says 431 instead.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._refusal = (
                431,
                "the request header block is larger than the limit",
                "header_size",
            )
        elif (
            self._open_connections() > self.max_connections
            or len(self.tasks) >= self.max_connections
        ):
            self._refusal = (503, "the ingestor has too many connections; retry", "connections")
        if self._refusal is not None:
            raise ValueError(self._refusal[1])
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            super().send_400_response(msg)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.read_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers:
            self._refuse(408, "the request headers did not arrive in time", "timeout")

    def _refuse(self, status: int, message: str, reason: str) -> None:
        if self.transport.is_closing():
            return
        metrics.requests_rejected.labels(reason).inc()
        body = orjson.dumps({"error": message})
        phrase = HTTPStatus(status).phrase.encode()
        retry = b"retry-after: 2\r\n" if status == 503 else b""
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"%sconnection: close\r\n\r\n%s" % (status, phrase, len(body), retry, body)
        )
        self._disarm_header_timer()
        self.transport.close()


def guarded_http(
    max_header_bytes: int, read_timeout_s: float, max_connections: int
) -> type[GuardedHttp]:
    """The protocol class for uvicorn's `http=`, with these limits."""
    limits = {
        "max_header_bytes": max_header_bytes,
        "read_timeout_s": read_timeout_s,
        "max_connections": max_connections,
        "idle": {},
        "reclaimed": set(),
    }
    return type("GuardedHttp", (GuardedHttp,), limits)


class DrainGuard:
    """ASGI wrapper: a request cut off at the drain deadline gets 503 + Retry-After, not 500.

    uvicorn cancels the requests still running when its graceful-shutdown timeout ends.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if started:
                raise
            metrics.requests_rejected.labels("draining").inc()
            response = error_response(503, "the ingestor is shutting down; retry")
            response.headers["connection"] = "close"
            # The task ends here, answered; uvicorn cancelled it only to end it.
            await response(scope, receive, send)


class _CalmServer(uvicorn.Server):
    """uvicorn whose main loop wakes once a second, not ten times, and at once to stop.

    uvicorn's loop sleeps 0.1 s between looks at `should_exit`, though the one periodic task
    (the Date header) runs once a second: idle, those wake-ups were half the CPU a role spent.
    """

    tick_s = 1.0

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stopping = asyncio.Event()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._stopping.set()

    def stop(self) -> None:
        """Begin the graceful shutdown, as a signal does."""
        self.should_exit = True
        self._stopping.set()

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            # Every call is uvicorn's once-a-second tick (counter % 10 == 0).
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.tick_s)
            should_exit = await self.on_tick(counter)


class _Server(_CalmServer):
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


async def serve_app(app: Starlette, settings: Settings, admin: Starlette | None = None) -> int:
    """Serve `app` on LOGPIPE_PORT until SIGTERM, draining connections; 1 if it never started.

    `admin` (metrics, readiness) is served on LOGPIPE_METRICS_PORT for as long as `app` runs.
    """
    config = uvicorn.Config(
        DrainGuard(app),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_seconds),
        server_header=False,
        http=guarded_http(MAX_HEADER_BYTES, settings.read_timeout_s, settings.max_connections),
        # Above the load balancer's 60 s idle timeout, so it never reuses a closed connection.
        timeout_keep_alive=settings.keep_alive_s,
    )
    # Both ports are taken before anything starts: a port in use stops the role with one line.
    public = listen(settings.host, settings.port, "LOGPIPE_PORT")
    admin_socket = None
    if admin is not None:
        try:
            admin_socket = listen(settings.host, settings.metrics_port, "LOGPIPE_METRICS_PORT")
        except ConfigError:
            public.close()
            raise
    server = _Server(config)
    side: _CalmServer | None = None
    side_task: asyncio.Task[None] | None = None
    if admin is not None and admin_socket is not None:
        side = _QuietServer(
            uvicorn.Config(
                admin,
                host=settings.host,
                port=settings.metrics_port,
                log_config=None,
                access_log=False,
                lifespan="off",
                server_header=False,
                http=guarded_http(MAX_HEADER_BYTES, settings.read_timeout_s, 64),
            )
        )
        side_task = asyncio.create_task(side.serve([admin_socket]), name="admin-server")
    try:
        await server.serve([public])
    finally:
        if side is not None and side_task is not None:
            side.stop()
            await side_task
    return 0 if server.started else 1


def listen(host: str, port: int, variable: str) -> socket.socket:
    """A socket bound to host:port for uvicorn to serve (`Server.serve(sockets=...)`), as
    uvicorn binds its own; ConfigError naming `variable` when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise port_error(variable, host, port, exc) from None
    sock.set_inheritable(True)
    return sock


class _QuietServer(_CalmServer):
    """A second server in the same process: the main one owns the signals."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
