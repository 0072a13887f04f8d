"""The lean path of the hot calls (logpipe/aws/lean.py) is botocore's generic path, on the wire
and in what callers see: the same requests (signed the same way), the same parsed answers, the
same exceptions for the same failures, the same events.

Each comparison makes one call through a client with the lean path and the same call through
a client made the same way without it, against a local endpoint that records the requests and
answers as each test scripts it; moto's server takes the lean calls of our real clients.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiobotocore.config import AioConfig
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from logpipe.aws import lean
from logpipe.aws import serialise as aws_serialise
from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients, _session, client_config
from logpipe.aws.endpoints import memoise_endpoints
from logpipe.aws.errors import classify
from logpipe.config import Settings
from tests.support.wait import wait_until
from tests.test_aws_serialise import ITEMS, UNICODE, assert_signed_over_body, base_item

pytestmark = pytest.mark.aws

TABLE = "lean-logs"
QUEUE_PATH = "/000000000000/lean-events"
# Headers that differ between any two calls.
PER_CALL = {"x-amz-date", "authorization", "amz-sdk-invocation-id"}
# And the length: orjson writes no spaces, the standard library's json does (checked apart).
LENGTH = "content-length"


# --- a scripted local endpoint ------------------------------------------------------------


@dataclass
class Captured:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    """What the endpoint does with the next request: answer it, and how."""

    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    # "answer"; "close": answer, then close the connection; "truncate": promise more body
    # than is sent, then close; "hang": never answer.
    mode: str = "answer"


REASONS = {200: "OK", 400: "Bad Request", 500: "Internal Server Error", 503: "Unavailable"}


class ScriptedEndpoint:
    """An HTTP/1.1 keep-alive endpoint on a free loopback port that records every request and
    answers each with the next scripted `Answer` (the last one again when the script is done)."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self.script: list[Answer] = [Answer()]
        self.connections = 0
        self.closed = 0
        self.url = ""
        self._hanging = asyncio.Event()

    def answer(self, *answers: Answer) -> None:
        self.script = list(answers)

    def _next(self) -> Answer:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    async def _read(self, reader: asyncio.StreamReader) -> Captured | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        line, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = line.split(" ")
        headers: dict[str, str] = {}
        for text in filter(None, lines):
            name, _, value = text.partition(":")
            assert name.lower() not in headers, f"header {name} sent twice"
            headers[name.lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Captured(method, path, headers, body)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while (request := await self._read(reader)) is not None:
                self.requests.append(request)
                answer = self._next()
                if answer.mode == "hang":
                    await self._hanging.wait()
                    return
                length = len(answer.body) + (100 if answer.mode == "truncate" else 0)
                head = [f"HTTP/1.1 {answer.status} {REASONS[answer.status]}"]
                headers = {
                    "Content-Type": "application/x-amz-json-1.0",
                    "x-amzn-RequestId": "lean-request-id",
                    "Date": "Thu, 26 Nov 2026 12:00:00 GMT",
                    **answer.headers,
                    "Content-Length": str(length),
                }
                head += [f"{name}: {value}" for name, value in headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + answer.body)
                await writer.drain()
                if answer.mode != "answer":
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            await writer.wait_closed()
            self.closed += 1

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedEndpoint]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            try:
                yield self
            finally:
                self._hanging.set()


@pytest.fixture
async def endpoint() -> AsyncIterator[ScriptedEndpoint]:
    async with ScriptedEndpoint().running() as running:
        yield running


@dataclass
class Pair:
    """The same client twice: with the lean path (`lean`) and without it (`generic`)."""

    lean: Any
    generic: Any


async def make_client(
    stack: AsyncExitStack, service: str, url: str, lean_path: bool, read_timeout: float = 10
) -> Any:
    """A client with our serialisation and endpoint memo, as `open_clients` makes one (its
    metrics handlers aside), with or without the lean path; `read_timeout` as given."""
    config = client_config(4).merge(AioConfig(read_timeout=read_timeout, connect_timeout=5))
    client = await stack.enter_async_context(
        _session("us-east-1").client(service, endpoint_url=url, config=config)
    )
    aws_serialise.install(client)
    memoise_endpoints(client)
    if lean_path:
        lean.install(client)
    return client


@asynccontextmanager
async def pair(service: str, url: str, read_timeout: float = 10) -> AsyncIterator[Pair]:
    async with AsyncExitStack() as stack:
        # The first client a session makes resolves the credentials and has a User-Agent
        # feature code for their source that later clients have not: neither is compared.
        await make_client(stack, service, url, False)
        yield Pair(
            await make_client(stack, service, url, True, read_timeout),
            await make_client(stack, service, url, False, read_timeout),
        )


def sent_lean(client: Any) -> int:
    installed = lean.installed(client)
    assert installed is not None
    return installed.sent


# --- the hot calls --------------------------------------------------------------------------

Call = tuple[str, str, dict[str, Any]]  # service, method, parameters


def hot_calls(url: str) -> list[Call]:
    queue = f"{url}{QUEUE_PATH}"
    items = [base_item(name, body) for name, body in ITEMS.items()]
    attributes = {
        "content-encoding": {"DataType": "String", "StringValue": "gzip"},
        "count": {"DataType": "Number", "StringValue": "12345678901234567890"},
    }
    return [
        (
            "dynamodb",
            "batch_write_item",
            {"RequestItems": {TABLE: [{"PutRequest": {"Item": item}} for item in items]}},
        ),
        (
            "sqs",
            "send_message_batch",
            {
                "QueueUrl": queue,
                "Entries": [
                    {"Id": str(n), "MessageBody": f"{UNICODE} {n}", "MessageAttributes": attributes}
                    for n in range(3)
                ],
            },
        ),
        (
            "sqs",
            "receive_message",
            {
                "QueueUrl": queue,
                "MaxNumberOfMessages": 10,
                "WaitTimeSeconds": 0,
                "VisibilityTimeout": 30,
                "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
                "MessageAttributeNames": ["All"],
            },
        ),
        (
            "sqs",
            "delete_message_batch",
            {"QueueUrl": queue, "Entries": [{"Id": "0", "ReceiptHandle": "r-0/ü"}]},
        ),
        (
            "sqs",
            "change_message_visibility_batch",
            {
                "QueueUrl": queue,
                "Entries": [
                    {"Id": str(n), "ReceiptHandle": f"r-{n}", "VisibilityTimeout": n}
                    for n in range(2)
                ],
            },
        ),
    ]


CALL_IDS = [
    "BatchWriteItem",
    "SendMessageBatch",
    "ReceiveMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibilityBatch",
]


def credential_scope(authorization: str) -> tuple[str, str]:
    credential = authorization.split("Credential=")[1].split(",")[0]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0]
    return credential.split("/", 2)[2], signed  # region/service/aws4_request, names


def assert_same_wire(lean_request: Captured, generic_request: Captured) -> None:
    assert lean_request.method == generic_request.method == "POST"
    assert lean_request.path == generic_request.path
    assert lean_request.headers.keys() == generic_request.headers.keys()
    for name in lean_request.headers.keys() - PER_CALL - {LENGTH}:
        assert lean_request.headers[name] == generic_request.headers[name], name
    assert credential_scope(lean_request.headers["authorization"]) == credential_scope(
        generic_request.headers["authorization"]
    )
    assert orjson.loads(lean_request.body) == json.loads(generic_request.body)
    assert int(lean_request.headers[LENGTH]) == len(lean_request.body)


@dataclass
class Sent:
    """A captured request in the shape `assert_signed_over_body` checks."""

    method: str
    url: str
    body: bytes


@pytest.mark.parametrize("index", range(len(CALL_IDS)), ids=CALL_IDS)
async def test_the_lean_request_is_the_generic_one_on_the_wire(
    index: int, endpoint: ScriptedEndpoint
) -> None:
    service, method, params = hot_calls(endpoint.url)[index]
    async with pair(service, endpoint.url) as clients:
        await getattr(clients.generic, method)(**params)
        await getattr(clients.lean, method)(**params)
        assert sent_lean(clients.lean) == 1
    generic_request, lean_request = endpoint.requests
    assert_same_wire(lean_request, generic_request)
    # Signed over the bytes that went out, by the client's signer (SigV4, as generic).
    sent = Sent("POST", f"{endpoint.url}{lean_request.path}", lean_request.body)
    assert_signed_over_body(sent, lean_request.headers)


async def test_moto_takes_the_lean_calls(settings: Settings, clients: Clients) -> None:
    """Our real clients make the hot calls the lean way, also in a process that embeds moto's
    server (whose import adds an in-process mock handler), and moto's server takes them."""
    url = await queue_url(clients.sqs, settings.queue_name)
    before = sent_lean(clients.sqs), sent_lean(clients.dynamodb)
    sent = await clients.sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": f"m{n} {UNICODE}"} for n in range(5)]
    )
    assert len(sent["Successful"]) == 5 and not sent.get("Failed")
    by_id: dict[str, dict[str, Any]] = {}

    async def all_received() -> bool:
        answer = await clients.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
        )
        by_id.update((m["MessageId"], m) for m in answer.get("Messages", []))
        return len(by_id) >= 5

    await wait_until(all_received, timeout=20)
    received = list(by_id.values())
    assert sorted(m["Body"] for m in received) == sorted(f"m{n} {UNICODE}" for n in range(5))
    entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(received)]
    changed = await clients.sqs.change_message_visibility_batch(
        QueueUrl=url, Entries=[{**e, "VisibilityTimeout": 0} for e in entries]
    )
    assert len(changed["Successful"]) == 5
    deleted = await clients.sqs.delete_message_batch(QueueUrl=url, Entries=entries)
    assert len(deleted["Successful"]) == 5 and not deleted.get("Failed")
    items = [base_item(name, body) for name, body in ITEMS.items()]
    written = await clients.dynamodb.batch_write_item(
        RequestItems={settings.table_name: [{"PutRequest": {"Item": item}} for item in items]}
    )
    assert written["UnprocessedItems"] == {}
    stored = await clients.dynamodb.scan(TableName=settings.table_name, ConsistentRead=True)
    assert {item["sk"]["S"] for item in items} <= {item["sk"]["S"] for item in stored["Items"]}
    assert sent_lean(clients.sqs) - before[0] >= 4  # send, receive(s), change, delete
    assert sent_lean(clients.dynamodb) - before[1] == 1


# --- answers --------------------------------------------------------------------------------

EVERY_TYPE = {
    "s": {"S": UNICODE},
    "n": {"N": "12345678901234567890.5"},
    "b": {"B": base64.b64encode(b"\x00\x01\xffbinary").decode()},
    "ss": {"SS": ["a", "b"]},
    "ns": {"NS": ["1", "2.5"]},
    "bs": {"BS": [base64.b64encode(b"\x02").decode(), base64.b64encode(b"").decode()]},
    "m": {"M": {"inner": {"B": base64.b64encode(b"deep").decode()}, "t": {"BOOL": True}}},
    "l": {"L": [{"NULL": True}, {"S": "x"}, {"BOOL": False}]},
}


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


ANSWERS: dict[str, tuple[int, Answer]] = {
    # index of the hot call, the answer
    "bwi-empty": (0, Answer(body=body({"UnprocessedItems": {}}))),
    "bwi-unprocessed-every-type": (
        0,
        Answer(
            body=body(
                {
                    "UnprocessedItems": {TABLE: [{"PutRequest": {"Item": EVERY_TYPE}}]},
                    "ConsumedCapacity": [{"TableName": TABLE, "CapacityUnits": 12.5}],
                    "Unknown": "dropped by the parser",
                }
            )
        ),
    ),
    "smb-failed": (
        1,
        Answer(
            body=body(
                {
                    "Successful": [{"Id": "0", "MessageId": "m-0", "MD5OfMessageBody": "x"}],
                    "Failed": [
                        {"Id": "1", "SenderFault": False, "Code": "InternalError", "Message": "m"},
                        {"Id": "2", "SenderFault": True, "Code": "InvalidParameterValue"},
                    ],
                }
            )
        ),
    ),
    "receive-empty": (2, Answer(body=b"{}")),
    "receive-messages-with-attributes": (
        2,
        Answer(
            body=body(
                {
                    "Messages": [
                        {
                            "MessageId": f"m-{n}",
                            "ReceiptHandle": f"r-{n}",
                            "MD5OfBody": "x",
                            "Body": json.dumps({"v": 1, "events": [UNICODE, n]}),
                            "Attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": "1"},
                            "MessageAttributes": {
                                "enc": {"DataType": "String", "StringValue": "gzip"},
                                "bin": {
                                    "DataType": "Binary",
                                    "BinaryValue": base64.b64encode(b"\x00\x01").decode(),
                                },
                            },
                        }
                        for n in range(3)
                    ]
                }
            )
        ),
    ),
    "delete-failed": (
        3,
        Answer(
            body=body(
                {
                    "Successful": [],
                    "Failed": [
                        {
                            "Id": "0",
                            "SenderFault": True,
                            "Code": "ReceiptHandleIsInvalid",
                            "Message": "no",
                        }
                    ],
                }
            )
        ),
    ),
    "visibility-ok": (
        4,
        Answer(body=body({"Successful": [{"Id": "0"}, {"Id": "1"}], "Failed": []})),
    ),
    "answer-not-json": (0, Answer(body=b"<html>not json</html>")),
    "answer-nan-and-huge-integer": (
        0,
        Answer(
            body=(
                b'{"ConsumedCapacity": [{"TableName": "t", "CapacityUnits": Infinity,'
                b' "ReadCapacityUnits": 123456789012345678901234567890}]}'
            )
        ),
    ),
}

DDB_ERROR = "com.amazonaws.dynamodb.v20120810#"
ERRORS: dict[str, tuple[int, Answer]] = {
    "throttling": (
        0,
        Answer(400, body({"__type": f"{DDB_ERROR}ThrottlingException", "message": "slow down"})),
    ),
    "throughput": (
        0,
        Answer(
            400,
            body({"__type": f"{DDB_ERROR}ProvisionedThroughputExceededException", "message": "x"}),
        ),
    ),
    "validation": (
        0,
        Answer(
            400, body({"__type": "com.amazon.coral.validate#ValidationException", "message": "bad"})
        ),
    ),
    "conditional-check-with-item": (
        0,
        Answer(
            400,
            body(
                {
                    "__type": f"{DDB_ERROR}ConditionalCheckFailedException",
                    "message": "The conditional request failed",
                    "Item": EVERY_TYPE,
                }
            ),
        ),
    ),
    "sqs-query-compatible": (
        1,
        Answer(
            400,
            body({"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "no queue"}),
            {"x-amzn-query-error": "AWS.SimpleQueueService.NonExistentQueue;Sender"},
        ),
    ),
    "500-json": (0, Answer(500, body({"__type": "InternalServerError", "message": "oops"}))),
    "500-empty": (2, Answer(500, b"")),
    "503-json": (1, Answer(503, body({"__type": "ServiceUnavailable"}))),
    "503-empty": (0, Answer(503, b"")),
    "500-not-json": (3, Answer(500, b"<html><body>Internal error</body></html>")),
    "400-not-json": (4, Answer(400, b"Bad request, plainly")),
}


async def both_ways(
    clients: Pair, call: Call, endpoint: ScriptedEndpoint, answer: Answer
) -> tuple[Any, Any]:
    """What the generic and the lean call return or raise, each given `answer`."""
    _, method, params = call
    outcomes = []
    for client in (clients.generic, clients.lean):
        endpoint.answer(answer)
        try:
            outcomes.append(await getattr(client, method)(**params))
        except Exception as e:  # the exception is the outcome compared
            outcomes.append(e)
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize("name", list(ANSWERS))
async def test_the_lean_answer_is_the_generic_one(name: str, endpoint: ScriptedEndpoint) -> None:
    index, answer = ANSWERS[name]
    call = hot_calls(endpoint.url)[index]
    async with pair(call[0], endpoint.url) as clients:
        generic, fast = await both_ways(clients, call, endpoint, answer)
        assert sent_lean(clients.lean) == 1
    assert not isinstance(generic, Exception), generic
    assert fast == generic
    if name == "bwi-unprocessed-every-type":
        item = fast["UnprocessedItems"][TABLE][0]["PutRequest"]["Item"]
        assert item["b"]["B"] == b"\x00\x01\xffbinary" and item["bs"]["BS"] == [b"\x02", b""]
        assert fast["ResponseMetadata"]["MaxAttemptsReached"] is True


def assert_same_failure(generic: Any, fast: Any) -> None:
    assert isinstance(generic, Exception) and isinstance(fast, Exception)
    assert type(fast) is type(generic)
    assert str(fast) == str(generic)
    assert classify(fast) == classify(generic)
    if isinstance(generic, ClientError):
        assert isinstance(fast, ClientError) and fast.response == generic.response


@pytest.mark.parametrize("name", list(ERRORS))
async def test_the_lean_error_is_the_generic_one(name: str, endpoint: ScriptedEndpoint) -> None:
    index, answer = ERRORS[name]
    call = hot_calls(endpoint.url)[index]
    async with pair(call[0], endpoint.url) as clients:
        generic, fast = await both_ways(clients, call, endpoint, answer)
        assert sent_lean(clients.lean) == 1
    assert_same_failure(generic, fast)
    assert fast.response["ResponseMetadata"]["HTTPStatusCode"] == answer.status
    if name == "conditional-check-with-item":
        assert fast.response["Item"]["b"] == {"B": b"\x00\x01\xffbinary"}
    if name == "sqs-query-compatible":
        assert fast.response["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"


@pytest.mark.parametrize("mode", ["truncate", "hang"])
async def test_a_broken_answer_fails_as_the_generic_one(
    mode: str, endpoint: ScriptedEndpoint
) -> None:
    """Reset in the middle of an answer: ConnectionClosedError; no answer: ReadTimeoutError."""
    call = hot_calls(endpoint.url)[0]
    async with pair(call[0], endpoint.url, read_timeout=0.5) as clients:
        generic, fast = await both_ways(clients, call, endpoint, Answer(body=b"{}", mode=mode))
        assert sent_lean(clients.lean) == 1
    assert_same_failure(generic, fast)
    assert (
        type(fast).__name__
        == {"truncate": "ConnectionClosedError", "hang": "ReadTimeoutError"}[mode]
    )
    assert classify(fast).retriable


async def test_connection_refused_fails_as_the_generic_one() -> None:
    async with ScriptedEndpoint().running() as gone:
        url = gone.url
    call = hot_calls(url)[1]
    async with pair(call[0], url) as clients:
        outcomes = []
        for client in (clients.generic, clients.lean):
            with pytest.raises(Exception) as raised:
                await getattr(client, call[1])(**call[2])
            outcomes.append(raised.value)
        assert sent_lean(clients.lean) == 1
    assert_same_failure(*outcomes)
    assert type(outcomes[1]).__name__ == "EndpointConnectionError"


async def test_a_closed_idle_connection_fails_and_is_replaced_as_generic(
    endpoint: ScriptedEndpoint,
) -> None:
    """The endpoint closes its keep-alive connection after each answer, as a server closes an
    idle one. aiohttp still takes the closed connection from its pool for the next POST and
    fails it (a retriable EndpointConnectionError), then opens a new one: the same on both
    paths, since both use the client's own aiohttp session."""
    call = hot_calls(endpoint.url)[3]
    endpoint.answer(Answer(body=body({"Successful": [{"Id": "0"}]}), mode="close"))
    outcomes: dict[str, list[str]] = {}
    async with pair(call[0], endpoint.url) as clients:
        for name in ("generic", "lean"):
            client = getattr(clients, name)
            outcomes[name] = []
            for _ in range(3):
                closed, connections = endpoint.closed, endpoint.connections
                try:
                    answer = await getattr(client, call[1])(**call[2])
                    assert answer["Successful"] == [{"Id": "0"}]
                    outcomes[name].append("ok")
                except Exception as e:  # the failure is the outcome compared
                    assert classify(e).retriable
                    outcomes[name].append(type(e).__name__)

                async def settled(closed: int = closed, connections: int = connections) -> bool:
                    # A call that reached the endpoint: until its connection is closed.
                    return endpoint.connections == connections or endpoint.closed > closed

                await wait_until(settled, timeout=10)
        assert sent_lean(clients.lean) == 3
    assert outcomes["lean"] == outcomes["generic"]
    assert outcomes["lean"][0] == outcomes["lean"][-1] == "ok"


# --- events ---------------------------------------------------------------------------------

EVENTS = (
    "provide-client-params",
    "before-parameter-build",
    "before-call",
    "request-created",
    "after-call",
)


class Seen:
    """The keyword arguments each event's handler was called with, by event prefix."""

    def __init__(self, client: Any, service: str, operation: str) -> None:
        self.kwargs: dict[str, list[set[str]]] = {event: [] for event in EVENTS}
        self.request_dicts: list[dict[str, Any]] = []
        for event in EVENTS:
            client.meta.events.register(f"{event}.{service}.{operation}", self._handler(event))

    def _handler(self, event: str) -> Callable[..., None]:
        def record(**kwargs: Any) -> None:
            self.kwargs[event].append(set(kwargs))
            if event == "before-call":  # the request dict, as botocore builds it
                self.request_dicts.append(
                    {
                        key: sorted(value) if key == "headers" else value
                        for key, value in kwargs["params"].items()
                        if key not in ("body", "context")
                    }
                )

        return record


@pytest.mark.parametrize("index", range(len(CALL_IDS)), ids=CALL_IDS)
async def test_handlers_see_the_same_events(index: int, endpoint: ScriptedEndpoint) -> None:
    service, method, params = hot_calls(endpoint.url)[index]
    operation = CALL_IDS[index]
    async with pair(service, endpoint.url) as clients:
        seen = [Seen(client, service, operation) for client in (clients.generic, clients.lean)]
        for client in (clients.generic, clients.lean):
            await getattr(client, method)(**params)
        assert sent_lean(clients.lean) == 1
    generic, fast = seen
    assert fast.kwargs == generic.kwargs
    assert fast.request_dicts == generic.request_dicts
    assert all(len(calls) == 1 for calls in fast.kwargs.values())
    assert fast.kwargs["after-call"] == [
        {"http_response", "parsed", "model", "context", "event_name"}
    ]


async def test_a_before_call_answer_short_circuits_the_call(endpoint: ScriptedEndpoint) -> None:
    """As the fault injector relies on: the first answer of a `before-call` handler is the
    call's answer, and nothing is sent."""
    service, method, params = hot_calls(endpoint.url)[0]

    def throttle(**kwargs: Any) -> tuple[AWSResponse, dict[str, Any]]:
        parsed = {
            "Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return AWSResponse("", 400, {}, None), parsed

    async with pair(service, endpoint.url) as clients:
        outcomes = []
        for client in (clients.generic, clients.lean):
            client.meta.events.register("before-call.dynamodb.BatchWriteItem", throttle)
            with pytest.raises(Exception) as raised:
                await getattr(client, method)(**params)
            outcomes.append(raised.value)
        assert sent_lean(clients.lean) == 0
    assert endpoint.requests == []
    assert_same_failure(*outcomes)
    assert classify(outcomes[1]).throttled


async def test_a_handler_on_a_skipped_event_turns_the_lean_path_off(
    endpoint: ScriptedEndpoint,
) -> None:
    service, method, params = hot_calls(endpoint.url)[2]
    async with pair(service, endpoint.url) as clients:
        await getattr(clients.lean, method)(**params)
        assert sent_lean(clients.lean) == 1
        sends: list[Any] = []

        def record(request: Any, **kwargs: Any) -> None:
            sends.append(request)

        clients.lean.meta.events.register("before-send.sqs", record)
        await getattr(clients.lean, method)(**params)
        assert len(sends) == 1 and sent_lean(clients.lean) == 1  # the generic path sent it
        clients.lean.meta.events.unregister("before-send.sqs", record)
        await getattr(clients.lean, method)(**params)
        assert len(sends) == 1 and sent_lean(clients.lean) == 2  # and the lean path again
    assert len(endpoint.requests) == 3


def unusual_calls(url: str) -> dict[str, Call]:
    """Calls whose parameters the JSON serializer converts (or orjson cannot encode)."""

    def write(item: dict[str, Any]) -> Call:
        item = {"pk": {"S": "p"}, "sk": {"S": "s"}, **item}
        return (
            "dynamodb",
            "batch_write_item",
            {"RequestItems": {TABLE: [{"PutRequest": {"Item": item}}]}},
        )

    def send(attribute: dict[str, Any]) -> Call:
        entries = [
            {"Id": "0", "MessageBody": "plain"},
            {"Id": "1", "MessageBody": "with", "MessageAttributes": {"a": attribute}},
        ]
        return ("sqs", "send_message_batch", {"QueueUrl": f"{url}{QUEUE_PATH}", "Entries": entries})

    return {
        "bytes-in-a-blob": write({"b": {"B": b"\x00\x01"}}),
        "str-in-a-blob": write({"b": {"B": "text"}}),
        "str-in-a-blob-set": write({"m": {"M": {"deep": {"BS": ["text"]}}}}),
        "huge-integer": write({"n": {"N": 2**70}}),
        "str-in-a-binary-attribute": send({"DataType": "Binary", "BinaryValue": "text"}),
        "bytes-in-a-binary-attribute": send({"DataType": "Binary", "BinaryValue": b"\x01"}),
        "unknown-parameter": (
            "sqs",
            "receive_message",
            {"QueueUrl": f"{url}{QUEUE_PATH}", "Unknown": 1},
        ),
    }


UNUSUAL = list(unusual_calls(""))


@pytest.mark.parametrize("case", UNUSUAL)
async def test_what_orjson_cannot_encode_exactly_is_sent_the_generic_way(
    case: str, endpoint: ScriptedEndpoint
) -> None:
    service, method, params = unusual_calls(endpoint.url)[case]
    async with pair(service, endpoint.url) as clients:
        outcomes = []
        for client in (clients.generic, clients.lean):
            try:
                outcomes.append(await getattr(client, method)(**params))
            except Exception as e:  # botocore's serializer refuses unknown parameters
                outcomes.append(e)
        assert sent_lean(clients.lean) == 0
    if case == "unknown-parameter":
        assert_same_failure(*outcomes)
        assert endpoint.requests == []
        return
    generic_request, lean_request = endpoint.requests
    assert_same_wire(lean_request, generic_request)
    assert lean_request.body == generic_request.body  # both made by botocore's serializer
