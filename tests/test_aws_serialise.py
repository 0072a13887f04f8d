"""The orjson bodies of BatchWriteItem and SendMessageBatch are the requests botocore's
generic serializer makes: same parsed JSON, same headers, signed over the bytes sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ParamValidationError
from botocore.parsers import create_parser
from prometheus_client import REGISTRY

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients, _session, client_args, client_config, open_clients
from logpipe.aws.errors import classify
from logpipe.aws.serialise import encode_body, parse_messages
from logpipe.config import Settings
from logpipe.dev.processes import LOCAL_CREDENTIALS

pytestmark = pytest.mark.aws

# Headers that differ between any two calls, whatever their bodies.
PER_CALL = {"x-amz-date", "authorization", "amz-sdk-invocation-id", "content-length"}

UNICODE = 'Grüße, 東京 🚀 \u2028 \x01 tab\t quote" backslash\\ \ufffe end'
BIG_N = "-12345678901234567890123456789012345678"

ITEMS: dict[str, dict[str, Any]] = {
    "strings": {"message": {"S": "plain ascii"}, "empty_map": {"M": {}}},
    "unicode": {"message": {"S": UNICODE}, UNICODE[:5]: {"S": "key with unicode"}},
    "numbers": {
        "big": {"N": BIG_N},
        "small": {"N": "1E-130"},
        "decimal": {"N": "3.14159265358979323846264338327950288"},
        "zero": {"N": "0"},
    },
    "every_type": {
        "s": {"S": "x"},
        "n": {"N": "42"},
        "t": {"BOOL": True},
        "f": {"BOOL": False},
        "null": {"NULL": True},
        "ss": {"SS": ["a", "b", UNICODE]},
        "ns": {"NS": ["1", "2.5", BIG_N]},
        "l": {"L": [{"S": "a"}, {"N": "1"}, {"M": {"deep": {"L": [{"BOOL": True}]}}}]},
        "m": {"M": {"http.status_code": {"N": "200"}, "region": {"S": "eu-west-1"}}},
    },
    "large": {"message": {"S": "y" * 16384}, "attributes": {"M": {"k": {"S": "v" * 4000}}}},
}


def base_item(name: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"pk": {"S": f"svc#2026-11-26T00#{name}"}, "sk": {"S": f"0#{name}"}, **body}


class Capture:
    """The requests a client sends (after signing), by a `before-send` handler."""

    def __init__(self, client: Any) -> None:
        self.requests: list[Any] = []
        client.meta.events.register("before-send", self._record)

    def _record(self, request: Any, **kwargs: Any) -> None:
        self.requests.append(request)

    def last(self) -> tuple[bytes, dict[str, str], Any]:
        request = self.requests[-1]
        body = request.body if isinstance(request.body, bytes) else request.body.encode()
        headers = {
            k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
        }
        return body, headers, request


@pytest.fixture
async def generic(settings: Settings) -> AsyncIterator[Clients]:
    """Clients as botocore makes them, without the orjson handlers."""
    session = _session(settings.region)
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                session.client(name, config=client_config(4), **client_args(settings))
            )
            for name in ("sqs", "dynamodb")
        ]
        yield Clients(sqs=clients[0], dynamodb=clients[1])


def assert_same_request(fast: tuple[bytes, dict[str, str], Any], slow: Any) -> None:
    fast_body, fast_headers, fast_request = fast
    slow_body, slow_headers, _ = slow
    assert orjson.loads(fast_body) == json.loads(slow_body)
    assert fast_headers.keys() == slow_headers.keys()
    for name in fast_headers.keys() - PER_CALL:
        assert fast_headers[name] == slow_headers[name], name
    assert int(fast_headers["content-length"]) == len(fast_body)
    assert_signed_over_body(fast_request, fast_headers)


def assert_signed_over_body(request: Any, headers: dict[str, str]) -> None:
    """Recompute SigV4 over the bytes sent: the signature botocore put on them matches."""
    authorization = headers["authorization"]
    service = authorization.split("/")[3]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    copy = AWSRequest(method=request.method, url=request.url, data=request.body)
    for name in signed:
        if name in headers:
            copy.headers[name] = headers[name]
    copy.context["timestamp"] = headers["x-amz-date"]
    credentials = Credentials(
        LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"], LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    )
    signer = SigV4Auth(credentials, service, "us-east-1")
    string_to_sign = signer.string_to_sign(copy, signer.canonical_request(copy))
    assert authorization.endswith("Signature=" + signer.signature(string_to_sign, copy))


@pytest.mark.parametrize("name", list(ITEMS))
async def test_batch_write_item_body_is_the_generic_one(
    name: str, settings: Settings, clients: Clients, generic: Clients
) -> None:
    item = base_item(name, ITEMS[name])
    params = {"RequestItems": {settings.table_name: [{"PutRequest": {"Item": item}}]}}
    fast, slow = Capture(clients.dynamodb), Capture(generic.dynamodb)
    await clients.dynamodb.batch_write_item(**params)
    await generic.dynamodb.batch_write_item(**params)
    assert_same_request(fast.last(), slow.last())
    # The fast path really ran: the body is orjson's bytes, not json.dumps's.
    assert fast.last()[0] == orjson.dumps(params)
    stored = await clients.dynamodb.get_item(
        TableName=settings.table_name, Key={"pk": item["pk"], "sk": item["sk"]}
    )
    assert stored["Item"] == item


async def test_a_batch_of_25_items_is_the_generic_one(
    settings: Settings, clients: Clients, generic: Clients
) -> None:
    items = [base_item(f"{name}-{n}", ITEMS[name]) for n in range(5) for name in ITEMS]
    params = {"RequestItems": {settings.table_name: [{"PutRequest": {"Item": i}} for i in items]}}
    fast, slow = Capture(clients.dynamodb), Capture(generic.dynamodb)
    response = await clients.dynamodb.batch_write_item(**params)
    await generic.dynamodb.batch_write_item(**params)
    assert response["UnprocessedItems"] == {}
    assert_same_request(fast.last(), slow.last())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("plain", id="ascii"),
        pytest.param(UNICODE.replace("\x01", "").replace("\ufffe", ""), id="unicode"),
        pytest.param('{"v":1,"events":[' + "z" * 200_000 + "]}", id="200-kib"),
    ],
)
async def test_send_message_batch_body_is_the_generic_one(
    body: str, settings: Settings, clients: Clients, generic: Clients
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    entries = [
        {
            "Id": "0",
            "MessageBody": body,
            "MessageAttributes": {"content-encoding": {"DataType": "String", "StringValue": "x"}},
        }
    ]
    fast, slow = Capture(clients.sqs), Capture(generic.sqs)
    response = await clients.sqs.send_message_batch(QueueUrl=url, Entries=entries)
    await generic.sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert [s["Id"] for s in response["Successful"]] == ["0"]
    assert_same_request(fast.last(), slow.last())
    assert fast.last()[0] == orjson.dumps({"QueueUrl": url, "Entries": entries})
    received = await clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    assert {m["Body"] for m in received["Messages"]} == {body}


async def test_what_orjson_cannot_encode_takes_the_generic_path(
    settings: Settings, clients: Clients, generic: Clients
) -> None:
    item = base_item("binary", {"b": {"B": b"\x00\xffbytes"}, "bs": {"BS": [b"a", b"b"]}})
    params = {"RequestItems": {settings.table_name: [{"PutRequest": {"Item": item}}]}}
    fast, slow = Capture(clients.dynamodb), Capture(generic.dynamodb)
    await clients.dynamodb.batch_write_item(**params)
    await generic.dynamodb.batch_write_item(**params)
    assert fast.last()[0] == slow.last()[0]  # byte for byte: botocore's own serializer
    stored = await clients.dynamodb.get_item(
        TableName=settings.table_name, Key={"pk": item["pk"], "sk": item["sk"]}
    )
    assert stored["Item"]["b"] == {"B": b"\x00\xffbytes"}


BINARY = bytes(range(256)) * 3


async def test_binary_values_in_b_are_written_by_orjson_as_the_generic_body(
    settings: Settings, clients: Clients, generic: Clients
) -> None:
    items = [
        base_item("block", {"z": {"B": BINARY}, "n": {"N": "3"}}),
        base_item("empty", {"z": {"B": b""}, "filter": {"B": b"\x00"}}),
        base_item("nested", {"m": {"M": {"b": {"B": b"\xff"}, "l": {"L": [{"B": b"x"}]}}}}),
    ]
    params = {"RequestItems": {settings.table_name: [{"PutRequest": {"Item": i}} for i in items]}}
    fast, slow = Capture(clients.dynamodb), Capture(generic.dynamodb)
    await clients.dynamodb.batch_write_item(**params)
    await generic.dynamodb.batch_write_item(**params)
    assert_same_request(fast.last(), slow.last())
    assert fast.last()[0] != slow.last()[0]  # orjson's bytes, not json.dumps's
    for item in items:
        stored = await clients.dynamodb.get_item(
            TableName=settings.table_name, Key={"pk": item["pk"], "sk": item["sk"]}
        )
        assert stored["Item"] == item


def _batch_of(value: dict[str, Any]) -> dict[str, Any]:
    return {"RequestItems": {"t": [{"PutRequest": {"Item": {"pk": {"S": "k"}, "v": value}}}]}}


@pytest.mark.parametrize(
    ("value", "orjson_writes"),
    [
        pytest.param({"B": b"ok"}, True, id="b-bytes"),
        pytest.param({"M": {"x": {"L": [{"B": b"ok"}]}}}, True, id="b-nested"),
        pytest.param({"B": "text"}, False, id="b-text"),
        pytest.param({"B": bytearray(b"ok")}, False, id="b-bytearray"),
        pytest.param({"BS": [b"a"]}, False, id="bs"),
        pytest.param({"S": b"bytes"}, False, id="bytes-in-s"),
        pytest.param({"B": b"ok", "S": b"bytes"}, False, id="bytes-beside-b"),
    ],
)
async def test_only_bytes_in_b_values_take_the_orjson_path(
    value: Any, orjson_writes: bool, clients: Clients
) -> None:
    model = clients.dynamodb.meta.service_model.operation_model("BatchWriteItem")
    assert (encode_body(_batch_of(value), model) is not None) is orjson_writes


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"RequestItems": {"t": [{"b": b"bytes"}]}}, id="bytes"),
        pytest.param({"Entries": [{"MessageBody": "\ud800"}]}, id="lone-surrogate"),
        pytest.param({"Entries": [{"n": 2**64}]}, id="beyond-64-bits"),
        pytest.param({"QueueUrl": None, "Entries": []}, id="none"),
    ],
)
def test_encode_body_declines_what_the_json_protocol_encodes_otherwise(
    params: dict[str, Any],
) -> None:
    assert encode_body(params) is None


async def test_clients_without_the_handlers_still_send_botocores_body(settings: Settings) -> None:
    """The handlers are installed by open_clients: a check that the comparison can fail."""
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, settings, pool=2)
        capture = Capture(clients.dynamodb)
        item = base_item("unicode-check", ITEMS["unicode"])
        params = {"RequestItems": {settings.table_name: [{"PutRequest": {"Item": item}}]}}
        await clients.dynamodb.batch_write_item(**params)
        assert UNICODE[:5].encode() in capture.last()[0]  # raw UTF-8: orjson's, not json's


class RawAnswers:
    """The undecoded answers a client receives, by a `before-parse` handler."""

    def __init__(self, client: Any, last: bool = False) -> None:
        self.answers: list[tuple[Any, dict[str, Any]]] = []
        register = client.meta.events.register_last if last else client.meta.events.register_first
        register("before-parse", self._record)

    def _record(self, operation_model: Any, response_dict: dict[str, Any], **kwargs: Any) -> None:
        self.answers.append((operation_model, dict(response_dict)))


def parse_both_ways(model: Any, answer: dict[str, Any]) -> tuple[Any, Any, bool]:
    """botocore's parse of `answer`, ours, and whether ours took the orjson path."""
    parser = create_parser("json")
    generic = parser.parse(dict(answer), model.output_shape)
    fast_answer, custom = dict(answer), dict[str, Any]()
    parse_messages(model, fast_answer, custom)
    fast = parser.parse(fast_answer, model.output_shape)
    fast.update(custom)
    return generic, fast, bool(custom)


@pytest.mark.parametrize(
    ("body", "attributes"),
    [
        pytest.param("plain", {}, id="plain"),
        pytest.param(
            UNICODE.replace("\x01", "").replace("\ufffe", ""),
            {"content-encoding": {"DataType": "String", "StringValue": "gzip"}},
            id="unicode-and-attributes",
        ),
        pytest.param('{"v":1,"events":[' + '"\\u00e9",' * 20_000 + "1]}", {}, id="json-in-json"),
    ],
)
async def test_received_messages_parse_as_botocore_parses_them(
    body: str, attributes: dict[str, Any], settings: Settings, generic: Clients
) -> None:
    url = await queue_url(generic.sqs, settings.queue_name)
    for n in range(3):
        await generic.sqs.send_message(
            QueueUrl=url, MessageBody=f"{body}{n}", MessageAttributes=attributes
        )
    raw = RawAnswers(generic.sqs)
    received = await generic.sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        MessageAttributeNames=["All"],
    )
    assert len(received["Messages"]) == 3
    model, answer = raw.answers[-1]
    generic_parse, fast_parse, fast_path = parse_both_ways(model, answer)
    assert fast_path
    assert fast_parse == generic_parse
    assert [m["Body"] for m in fast_parse["Messages"]] == [f"{body}{n}" for n in range(3)]


async def test_binary_attributes_and_errors_take_the_generic_parser(
    settings: Settings, generic: Clients
) -> None:
    url = await queue_url(generic.sqs, settings.queue_name)
    binary = {"blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"}}
    await generic.sqs.send_message(QueueUrl=url, MessageBody="b", MessageAttributes=binary)
    raw = RawAnswers(generic.sqs)
    await generic.sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])
    model, answer = raw.answers[-1]
    generic_parse, fast_parse, fast_path = parse_both_ways(model, answer)
    assert not fast_path and fast_parse == generic_parse
    assert generic_parse["Messages"][0]["MessageAttributes"]["blob"]["BinaryValue"] == b"\x00\x01"
    with pytest.raises(ClientError):
        await generic.sqs.receive_message(QueueUrl=url + "-missing")
    model, answer = raw.answers[-1]
    assert answer["status_code"] >= 400
    assert parse_both_ways(model, answer)[2] is False


async def test_the_processor_clients_receive_through_the_orjson_parser(
    settings: Settings, clients: Clients
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    await clients.sqs.send_message(QueueUrl=url, MessageBody=UNICODE[:20])
    after_ours = RawAnswers(clients.sqs, last=True)
    received = await clients.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
    assert received["Messages"][0]["Body"] == UNICODE[:20]
    assert after_ours.answers[-1][1]["body"] == b"{}"  # botocore's parser had nothing to walk
    assert received["ResponseMetadata"]["HTTPStatusCode"] == 200


async def test_every_hot_call_sends_botocores_user_agent(
    settings: Settings, clients: Clients, generic: Clients
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    fast, slow = Capture(clients.sqs), Capture(generic.sqs)
    for client in (clients.sqs, generic.sqs):
        for _ in range(2):  # the second call takes the cached string
            await client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            await client.delete_message_batch(
                QueueUrl=url, Entries=[{"Id": "0", "ReceiptHandle": "gone"}]
            )
    sent = [r.headers["User-Agent"] for r in fast.requests]
    assert len(sent) == 4
    assert sent == [r.headers["User-Agent"] for r in slow.requests]


@pytest.mark.parametrize(
    ("entry", "report"),
    [
        pytest.param(
            {"Id": "0", "MessageBody": "b", "MessageGroupID": "g"},
            'Unknown parameter in input.Entries[0]: "MessageGroupID"',
            id="entry-key",
        ),
        pytest.param(
            {
                "Id": "0",
                "MessageBody": "b",
                "MessageAttributes": {"a": {"DataType": "String", "Value": "x"}},
            },
            'Unknown parameter in input.Entries[0].MessageAttributes.a: "Value"',
            id="attribute-key",
        ),
        pytest.param(
            {"Id": "0", "MessageBody": "b", "DelaySeconds": float("nan")},
            "input.Entries[0].DelaySeconds: nan is not a finite number",
            id="nan",
        ),
        pytest.param(
            {"Id": "0", "MessageBody": "b", "DelaySeconds": float("-inf")},
            "is not a finite number",
            id="infinity",
        ),
    ],
)
async def test_what_orjson_would_send_wrongly_is_refused_before_sending(
    entry: dict[str, Any], report: str, settings: Settings, clients: Clients
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    capture = Capture(clients.sqs)
    with pytest.raises(ParamValidationError) as caught:
        await clients.sqs.send_message_batch(QueueUrl=url, Entries=[entry])
    assert report in str(caught.value)
    assert capture.requests == []  # nothing sent
    assert not classify(caught.value).retriable


async def test_an_unknown_top_level_key_is_refused_on_the_orjson_path(
    settings: Settings, clients: Clients
) -> None:
    item = base_item("unknown", ITEMS["strings"])
    params = {"RequestItems": {settings.table_name: [{"PutRequest": {"Item": item}}]}}
    with pytest.raises(ParamValidationError, match='"ReturnEverything"'):
        await clients.dynamodb.batch_write_item(**params, ReturnEverything="yes")
    with pytest.raises(ParamValidationError, match='"Itme"'):
        await clients.dynamodb.batch_write_item(
            RequestItems={settings.table_name: [{"PutRequest": {"Itme": item}}]}
        )


async def test_null_inside_a_message_body_is_sent_as_it_is(
    settings: Settings, clients: Clients
) -> None:
    """The null check looks at the body's bytes first: escaped JSON holding null is text."""
    url = await queue_url(clients.sqs, settings.queue_name)
    body = '{"v":1,"events":[{"trace_id":null}],"x":[null,null]}'
    capture = Capture(clients.sqs)
    response = await clients.sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": "0", "MessageBody": body}]
    )
    assert [s["Id"] for s in response["Successful"]] == ["0"]
    assert capture.last()[0] == orjson.dumps(
        {"QueueUrl": url, "Entries": [{"Id": "0", "MessageBody": body}]}
    )


def billed() -> float:
    return REGISTRY.get_sample_value("logpipe_sqs_billed_requests_total") or 0.0


async def test_a_lone_surrogate_is_counted_and_encoded_as_botocore_encodes_it(
    settings: Settings, clients: Clients, generic: Clients
) -> None:
    url = await queue_url(clients.sqs, settings.queue_name)
    entries = [{"Id": "0", "MessageBody": "before \ud800 after"}]
    fast, slow = Capture(clients.sqs), Capture(generic.sqs)
    before = billed()
    outcomes = []
    for client in (clients.sqs, generic.sqs):
        try:  # SQS refuses such a body; what matters is what was sent, and that it was
            outcomes.append(await client.send_message_batch(QueueUrl=url, Entries=entries))
        except ClientError as e:
            outcomes.append(e.response["Error"]["Code"])
    assert billed() == before + 1  # counted, no exception
    assert fast.last()[0] == slow.last()[0]  # byte for byte: botocore's own serializer
    assert b"\\ud800" in fast.last()[0]
    assert type(outcomes[0]) is type(outcomes[1])
