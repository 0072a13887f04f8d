"""bench/percall.py and its endpoint: valid answers, requests read whole, figures for every
call asked for, and no endpoint left running."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from logpipe.dev.quick_endpoint import Connection, Endpoint, answer, entries_of

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "percall.py"


def _send_batch(*bodies: str) -> dict[str, Any]:
    entries = [{"Id": str(n), "MessageBody": body} for n, body in enumerate(bodies)]
    return {"QueueUrl": "http://q", "Entries": entries}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("operation", "call", "expected"),
    [
        ("BatchWriteItem", {"RequestItems": {"t": []}}, {"UnprocessedItems": {}}),
        (
            "DeleteMessageBatch",
            {"Entries": [{"Id": "0", "ReceiptHandle": "r"}, {"Id": "1", "ReceiptHandle": "s"}]},
            {"Successful": [{"Id": "0"}, {"Id": "1"}], "Failed": []},
        ),
        (
            "ChangeMessageVisibilityBatch",
            {"Entries": [{"Id": "7", "ReceiptHandle": "r", "VisibilityTimeout": 3}]},
            {"Successful": [{"Id": "7"}], "Failed": []},
        ),
        ("GetQueueUrl", {"QueueName": "q"}, {}),
        ("PutItem", {}, {}),
    ],
    ids=["batch-write", "delete-batch", "visibility-batch", "other-call", "empty-request"],
)
def test_endpoint_answers_each_call_with_its_minimal_valid_answer(
    operation: str, call: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert answer(operation, call) == expected


@pytest.mark.unit
def test_endpoint_accepts_every_sent_message_with_its_md5() -> None:
    reply = answer("SendMessageBatch", _send_batch("one", "twø"))
    assert reply["Failed"] == []
    assert [(s["Id"], s["MD5OfMessageBody"]) for s in reply["Successful"]] == [
        ("0", hashlib.md5(b"one").hexdigest()),
        ("1", hashlib.md5("twø".encode()).hexdigest()),
    ]
    assert all(s["MessageId"] for s in reply["Successful"])


@pytest.mark.unit
def test_endpoint_counts_the_entries_of_batch_calls() -> None:
    items: dict[str, Any] = {
        "RequestItems": {"a": [{"PutRequest": {}}] * 3, "b": [{"PutRequest": {}}] * 2}
    }
    assert entries_of("BatchWriteItem", items) == 5
    assert entries_of("SendMessageBatch", _send_batch("x", "y", "z")) == 3
    assert entries_of("GetQueueUrl", {"QueueName": "q"}) == 0


class _Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _request(operation: str, body: bytes) -> bytes:
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: DynamoDB_20120810.{operation}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _answers(data: bytes) -> list[Any]:
    """The JSON bodies of the HTTP answers in `data`, in order."""
    bodies = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        bodies.append(orjson.loads(rest[:length]))
        data = rest[length:]
    return bodies


@pytest.mark.unit
@pytest.mark.parametrize("chunk", [1, 7, 1000, 100_000], ids=lambda n: f"{n}-byte-reads")
def test_endpoint_reads_requests_by_content_length_however_they_arrive(chunk: int) -> None:
    endpoint = Endpoint(latency_s=0)
    connection, transport = Connection(endpoint), _Recording()
    connection.connection_made(transport)
    big = orjson.dumps(_send_batch("x" * 5000, "y\r\n\r\n" * 100))
    stream = (
        _request("BatchWriteItem", b'{"RequestItems":{"t":[{"PutRequest":{}}]}}')
        + _request("SendMessageBatch", big)
        + _request("DescribeTable", b"")
    )
    for start in range(0, len(stream), chunk):
        connection.data_received(stream[start : start + chunk])
    answers = _answers(bytes(transport.written))
    assert answers[0] == {"UnprocessedItems": {}}
    assert [s["Id"] for s in answers[1]["Successful"]] == ["0", "1"]
    assert answers[2:] == [{}]
    assert endpoint.calls == {"BatchWriteItem": 1, "SendMessageBatch": 1, "DescribeTable": 1}
    assert endpoint.entries == {"BatchWriteItem": 1, "SendMessageBatch": 2, "DescribeTable": 0}
    assert not transport.closed


def _running(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"quick_endpoint" in cmdline


@pytest.mark.e2e
def test_percall_measures_every_call_it_is_asked_for_and_stops_its_endpoint() -> None:
    calls, send_calls, events = 40, 10, 600
    command = [sys.executable, str(SCRIPT), "--latency-ms", "1", "--events", str(events)]
    command += ["--calls", str(calls), "--send-calls", str(send_calls), "--timeout", "240"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout)
    assert "| latency ms |" in done.stderr
    [run] = result["runs"]
    assert run["latency_ms"] == 1
    bwi, smb, handle = run["batch_write_item"], run["send_message_batch"], run["handle"]
    for figures, unit in ((bwi, "call"), (smb, "call"), (handle, "event")):
        cpu, user, system = (figures[f"{kind}_us_per_{unit}"] for kind in ("cpu", "user", "sys"))
        assert cpu > 0 and user > 0 and figures["wall_s"] > 0
        # The OS splits CPU time into user and system by ticks: a short window may see none.
        assert system >= 0
    # 25 events of one message: each of its blocks' three items (body, summary, shared
    # summary), in every call.
    assert bwi["calls"] == {"BatchWriteItem": calls}
    assert bwi["entries"]["BatchWriteItem"] % (3 * calls) == 0
    assert (smb["calls"], smb["entries"]) == (
        {"SendMessageBatch": send_calls},
        {"SendMessageBatch": send_calls * 10},
    )
    assert 20_000 <= smb["envelope_bytes"] <= 25 * 1024
    # Every event written once, in blocks (three items each) of its message, nothing deleted
    # or dead-lettered.
    assert handle["events"] == events and handle["calls"].keys() == {"BatchWriteItem"}
    assert handle["entries"]["BatchWriteItem"] % 3 == 0
    assert 1 <= handle["calls"]["BatchWriteItem"] <= handle["messages"]
    assert all(len(load) == 3 for load in result["load_average"].values())
    assert result["endpoint_pids"] and not any(map(_running, result["endpoint_pids"]))
