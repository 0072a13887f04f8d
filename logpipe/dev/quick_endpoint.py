"""A minimal AWS endpoint for measuring our clients' CPU per call (bench/percall.py).

moto answers the calls our roles make correctly, but it is CPU-hungry Python sharing the
machine with the client being measured, and the client's CPU per call grows with it. This
endpoint answers every JSON-protocol call with the smallest valid answer, after a fixed
latency, over HTTP/1.1 keep-alive, doing almost nothing itself:

    python -m logpipe.dev.quick_endpoint --port 5000 [--latency-ms 8]

It counts the calls and entries it answered per operation; `GET /counts` shows them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections import Counter
from typing import Any

import orjson

# Answered with one `Successful` entry per entry of the call.
ENTRY_BATCHES = frozenset(
    {"SendMessageBatch", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"}
)
# The calls whose request is read: the batch calls, to answer and count their entries.
PARSED = ENTRY_BATCHES | {"BatchWriteItem"}
COUNTS_PATH = b"/counts"
# A head longer than this is not a request of ours: the connection is closed.
MAX_HEAD_BYTES = 64 * 1024


def answer(operation: str, request: dict[str, Any]) -> dict[str, Any]:
    """The smallest valid answer to one call of `operation` with the (parsed) `request`."""
    if operation == "BatchWriteItem":
        return {"UnprocessedItems": {}}
    if operation in ENTRY_BATCHES:
        entries = request.get("Entries", [])
        return {"Successful": [_success(operation, entry) for entry in entries], "Failed": []}
    return {}


def _success(operation: str, entry: dict[str, Any]) -> dict[str, Any]:
    if operation != "SendMessageBatch":
        return {"Id": entry["Id"]}
    digest = hashlib.md5(entry["MessageBody"].encode(), usedforsecurity=False).hexdigest()
    return {"Id": entry["Id"], "MessageId": f"m-{entry['Id']}", "MD5OfMessageBody": digest}


def entries_of(operation: str, request: dict[str, Any]) -> int:
    """How many entries (items, messages) a call carries; 0 for a call of one thing."""
    if operation == "BatchWriteItem":
        return sum(len(requests) for requests in request.get("RequestItems", {}).values())
    if operation in ENTRY_BATCHES:
        return len(request.get("Entries", []))
    return 0


def response(status: str, content_type: str, data: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"x-amzn-RequestId: quick\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def parse_head(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The request target (path) and the headers, names lower-cased, of one request head."""
    request_line, *lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return (parts[1] if len(parts) > 1 else b"/"), headers


class Endpoint:
    """What the connections share: the latency and the counts."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.calls: Counter[str] = Counter()
        self.entries: Counter[str] = Counter()

    def reply(self, path: bytes, headers: dict[bytes, bytes], body: bytes) -> bytes:
        if path == COUNTS_PATH:
            counts = {"calls": dict(self.calls), "entries": dict(self.entries)}
            return response("200 OK", "application/json", orjson.dumps(counts))
        operation = headers.get(b"x-amz-target", b"").decode().rpartition(".")[2]
        request = orjson.loads(body) if operation in PARSED else {}
        self.calls[operation] += 1
        self.entries[operation] += entries_of(operation, request)
        data = orjson.dumps(answer(operation, request))
        return response("200 OK", "application/x-amz-json-1.0", data)


class Connection(asyncio.Protocol):
    """One keep-alive connection: requests read by Content-Length, answered in order."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (request := self._next_request()) is not None:
            self._send(self._endpoint.reply(*request))

    def _next_request(self) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
        """The next whole request in the buffer (taken out of it), or None."""
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES and self._transport is not None:
                self._transport.close()
            return None
        path, headers = parse_head(bytes(self._buffer[:end]))
        length = int(headers.get(b"content-length", b"0"))
        if len(self._buffer) < end + 4 + length:
            return None
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        return path, headers, body

    def _send(self, data: bytes) -> None:
        if self._endpoint.latency_s > 0:
            asyncio.get_running_loop().call_later(self._endpoint.latency_s, self._write, data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


async def serve(port: int, latency_s: float) -> None:
    endpoint = Endpoint(latency_s)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(endpoint), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.latency_ms / 1000))


if __name__ == "__main__":
    main()
