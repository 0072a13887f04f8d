"""A response head sent with its body in one write (`OneWrite`) puts on the wire exactly the
bytes uvicorn's own cycle writes, in the same order, for every shape of answer; and the
ingestor's 202 over real uvicorn and a socket is one read's worth. The transport here is a
recorder of the bytes uvicorn's real `RequestResponseCycle` writes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from logpipe.dev.processes import free_port
from logpipe.web import MAX_HEADER_BYTES, OneWrite, guarded_http
from tests.support.servers import serving

pytestmark = pytest.mark.unit


class Recorder:
    """A transport that keeps what is written and closed, in order."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _cycle(transport: Any, method: str = "POST", expect_100: bool = False) -> RequestResponseCycle:
    scope: Any = {
        "type": "http",
        "method": method,
        "path": "/ingest",
        "headers": [],
        "http_version": "1.1",
    }
    cycle = RequestResponseCycle(
        scope=scope,
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[(b"date", b"Thu, 26 Nov 2026 00:00:00 GMT")],
        message_event=asyncio.Event(),
        expect_100_continue=expect_100,
        keep_alive=True,
        on_response=lambda: None,
    )
    cycle.body = bytearray(b"{}")
    cycle.more_body = False
    cycle.message_event.set()
    return cycle


def _start(status: int, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers}


def _body(body: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


JSON = (b"content-type", b"application/json")
# Each case: the request method, whether it reads its body first, the messages it sends
# (None: the app raises there), and how many writes OneWrite makes of them.
CASES: dict[str, tuple[str, bool, list[dict[str, Any] | None], int]] = {
    "a 202 with its body": (
        "POST",
        True,
        [_start(202, [JSON, (b"content-length", b"29")]), _body(b'{"accepted":10,"rejected":[]}')],
        2,  # 100 Continue, then the head with the body
    ),
    "a body in two parts": (
        "POST",
        False,
        [_start(200, [(b"content-length", b"6")]), _body(b"abc", True), _body(b"def")],
        2,
    ),
    "an empty part first": (
        "POST",
        False,
        [_start(200, [(b"content-length", b"3")]), _body(b"", True), _body(b"abc")],
        2,
    ),
    "a 204": ("POST", False, [_start(204, []), _body(b"")], 2),
    "a zero length body": (
        "POST",
        False,
        [_start(200, [(b"content-length", b"0")]), _body(b"")],
        2,
    ),
    "chunked": (
        "POST",
        False,
        [_start(200, [JSON]), _body(b"abc", True), _body(b"")],
        3,
    ),
    "HEAD": ("HEAD", False, [_start(200, [(b"content-length", b"5")]), _body(b"")], 1),
    "a close after the start": (
        "POST",
        False,
        [_start(200, [(b"content-length", b"5"), (b"connection", b"close")]), _body(b"hello")],
        1,
    ),
    "the app fails after the start": (
        "POST",
        False,
        [_start(200, [(b"content-length", b"5")]), None],
        1,
    ),
    "the app fails before the start": ("POST", False, [None], 1),
    "the app returns after the start": (
        "POST",
        False,
        [_start(200, [(b"content-length", b"5")])],
        1,
    ),
}


async def _run(transport: Any, case: str, wrap: bool) -> None:
    method, reads, messages, _ = CASES[case]
    cycle = _cycle(transport, method, expect_100=reads)
    if wrap:
        cycle.transport = OneWrite(transport, cycle)  # type: ignore[assignment]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if reads:
            assert (await receive())["body"] == b"{}"
        for message in messages:
            if message is None:
                raise RuntimeError("the app fails")
            await send(message)

    logging.getLogger("test").disabled = True
    await cycle.run_asgi(app)


@pytest.mark.parametrize("case", list(CASES))
async def test_the_wire_holds_the_same_bytes_as_uvicorns_own_cycle(case: str) -> None:
    plain, one = Recorder(), Recorder()
    await _run(plain, case, wrap=False)
    await _run(one, case, wrap=True)
    assert b"".join(one.writes) == b"".join(plain.writes)
    assert one.closed == plain.closed
    assert len(one.writes) == CASES[case][3]
    if case == "a 202 with its body":
        # The 100 Continue the client asked for goes out on its own, before the response.
        assert plain.writes[0] == one.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert len(plain.writes) == 3 and len(one.writes) == 2


async def _answer(request: Request) -> Response:
    await request.body()
    return Response(b'{"accepted":1,"rejected":[]}', 202, media_type="application/json")


async def test_answers_through_the_guarded_protocol_are_whole_on_a_kept_alive_connection() -> None:
    app = Starlette(routes=[Route("/ingest", _answer, methods=["POST"])])
    http = guarded_http(MAX_HEADER_BYTES, 15.0, 100)
    port = free_port()
    async with serving(app, port, http=http, lifespan="off"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(3):  # keep-alive: each answer on the same connection
                writer.write(
                    b"POST /ingest HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"content-length: 2\r\n\r\n{}"
                )
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 202 Accepted\r\n")
                assert b"content-length: 28\r\n" in head
                assert await asyncio.wait_for(reader.readexactly(28), 10) == (
                    b'{"accepted":1,"rejected":[]}'
                )
        finally:
            writer.close()
            await writer.wait_closed()
