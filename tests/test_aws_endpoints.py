"""Endpoints answered from the per-client memo are the ones botocore resolves: the same
request on the wire and the same request context, call after call; the memo is bounded."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from botocore.context import get_context, start_as_current_context
from botocore.exceptions import ClientError

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients, _session, open_clients
from logpipe.aws.endpoints import EndpointMemo, memoise_endpoints
from logpipe.config import Settings

pytestmark = pytest.mark.aws

# Headers that differ between any two calls, whatever their requests.
PER_CALL = {"x-amz-date", "authorization", "amz-sdk-invocation-id"}
# Context entries that are objects of the client, not of the call.
OF_THE_CLIENT = {"client_config"}


class Sent:
    """Each request as signed and sent, and its request context when it was made."""

    def __init__(self, client: Any) -> None:
        self.contexts: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        client.meta.events.register_last("before-call", self._context)
        client.meta.events.register_last("before-send", self._request)

    def _context(self, context: dict[str, Any], **kwargs: Any) -> None:
        self.contexts.append({k: v for k, v in context.items() if k not in OF_THE_CLIENT})

    def _request(self, request: Any, **kwargs: Any) -> None:
        body = request.body if isinstance(request.body, bytes) else request.body.encode()
        headers = {
            k.lower(): v.decode() if isinstance(v, bytes) else v
            for k, v in request.headers.items()
            if k.lower() not in PER_CALL
        }
        headers["user-agent"] = codes_sorted(headers["user-agent"])
        self.requests.append((request.method, request.url, headers, body))


def codes_sorted(user_agent: str) -> str:
    """botocore writes the feature codes (`m/a,b`) in the order of a set: any order."""
    return " ".join(
        "m/" + ",".join(sorted(part[2:].split(","))) if part.startswith("m/") else part
        for part in user_agent.split(" ")
    )


@pytest.fixture
async def pair(settings: Settings) -> AsyncIterator[tuple[Clients, Clients]]:
    """The clients of open_clients (memoised), and the same clients resolving every call."""
    async with AsyncExitStack() as stack:
        memoised = await open_clients(stack, settings, pool=4)
        plain = await open_clients(stack, settings, pool=4)
        for client in (plain.sqs, plain.dynamodb):
            del client._resolve_endpoint_ruleset  # back to the class's method
        yield memoised, plain


def item(n: int) -> dict[str, Any]:
    return {"pk": {"S": f"svc#2026-11-26T00#{n}"}, "sk": {"S": f"0#{n}"}, "n": {"N": str(n)}}


async def hot_calls(clients: Clients, urls: list[str], tables: list[str]) -> None:
    """Every hot operation, on two queues and two tables (missing ones answer errors)."""
    for url in urls:
        for call, params in (
            (clients.sqs.receive_message, {"MaxNumberOfMessages": 10, "WaitTimeSeconds": 0}),
            (clients.sqs.send_message_batch, {"Entries": [{"Id": "0", "MessageBody": "b"}]}),
            (
                clients.sqs.delete_message_batch,
                {"Entries": [{"Id": "0", "ReceiptHandle": "gone"}]},
            ),
            (
                clients.sqs.change_message_visibility_batch,
                {"Entries": [{"Id": "0", "ReceiptHandle": "gone", "VisibilityTimeout": 0}]},
            ),
        ):
            with contextlib.suppress(ClientError):
                await call(QueueUrl=url, **params)
    for table in tables:
        with contextlib.suppress(ClientError):
            await clients.dynamodb.batch_write_item(
                RequestItems={table: [{"PutRequest": {"Item": item(n)}} for n in range(3)]}
            )
    with contextlib.suppress(ClientError):  # two tables in one call
        await clients.dynamodb.batch_write_item(
            RequestItems={t: [{"PutRequest": {"Item": item(9)}}] for t in tables}
        )


async def test_memoised_calls_send_what_resolving_every_call_sends(
    settings: Settings, pair: tuple[Clients, Clients]
) -> None:
    memoised, plain = pair
    url = await queue_url(plain.sqs, settings.queue_name)
    urls = [url, url.rsplit("/", 1)[0] + "/other-queue"]
    tables = [settings.table_name, settings.table_name + "-other"]
    sent = {
        id(clients): (Sent(clients.sqs), Sent(clients.dynamodb)) for clients in (memoised, plain)
    }
    for _ in range(3):  # the first round fills the memo, the next ones are answered from it
        for clients in (memoised, plain):
            await hot_calls(clients, urls, tables)
    for fast, slow in zip(sent[id(memoised)], sent[id(plain)], strict=True):
        assert len(fast.requests) == len(slow.requests) > 0
        assert fast.requests == slow.requests
        assert fast.contexts == slow.contexts
    # The memo answered: one resolution per distinct call, none in the later rounds.
    ddb_memo = memoised.dynamodb._resolve_endpoint_ruleset.__self__
    sqs_memo = memoised.sqs._resolve_endpoint_ruleset.__self__
    assert isinstance(ddb_memo, EndpointMemo) and isinstance(sqs_memo, EndpointMemo)
    assert ddb_memo.misses == len(ddb_memo.cache) == 3  # table one, table two, both
    assert sqs_memo.misses == len(sqs_memo.cache) == 4  # one per operation
    # And the comparison can fail: a URL from the memo that is not the endpoint's is seen.
    wrong = next(iter(ddb_memo.cache.values()))
    wrong.answer = ("http://127.0.0.1:9", *wrong.answer[1:])
    with pytest.raises(Exception):  # noqa: B017 (nothing listens there: any error will do)
        await memoised.dynamodb.batch_write_item(
            RequestItems={tables[0]: [{"PutRequest": {"Item": item(1)}}]}
        )


async def resolve(client: Any, operation: str, params: dict[str, Any]) -> tuple[Any, ...]:
    """One resolution as `_make_api_call` makes it: answer, request context, feature ids."""
    model = client._service_model.operation_model(operation)
    context = {"auth_type": model.resolved_auth_type, "client_region": "eu-west-1"}
    with start_as_current_context():
        answer = await client._resolve_endpoint_ruleset(model, params, context)
        features = get_context().features
    return answer, context, features


@pytest.mark.parametrize(
    ("service", "operation", "params"),
    [
        pytest.param("dynamodb", "BatchWriteItem", {"RequestItems": {"a": [], "b": []}}, id="ddb"),
        pytest.param("sqs", "ReceiveMessage", {"QueueUrl": "https://q/1/x"}, id="sqs"),
        # An endpoint that names auth schemes: the signing context is replayed too.
        pytest.param("s3control", "ListJobs", {"AccountId": "123456789012"}, id="auth-schemes"),
    ],
)
async def test_replayed_resolutions_equal_botocores_on_aws_endpoints(
    service: str, operation: str, params: dict[str, Any]
) -> None:
    """AWS's own endpoints (nothing is sent): the answer, context changes and feature ids."""
    session = _session("eu-west-1")
    async with (
        session.client(service, aws_access_key_id="a", aws_secret_access_key="b") as plain,
        session.client(service, aws_access_key_id="a", aws_secret_access_key="b") as client,
    ):
        memo = memoise_endpoints(client)
        assert memo is not None
        expected = await resolve(plain, operation, params)
        for _ in range(3):
            assert await resolve(client, operation, params) == expected
        assert memo.misses == 1
        if service == "s3control":
            assert expected[1]["signing"]["signing_name"] == "s3"
            other = {"AccountId": "210987654321"}
            assert await resolve(client, operation, other) == await resolve(plain, operation, other)
            assert memo.misses == 2


async def test_the_memo_is_bounded(settings: Settings) -> None:
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, settings, pool=2)
        del clients.dynamodb._resolve_endpoint_ruleset
        memo = memoise_endpoints(clients.dynamodb, limit=4)
        assert memo is not None
        plain = memo.resolve  # botocore's own
        for n in range(12):
            params: dict[str, Any] = {"RequestItems": {f"table-{n}": []}}
            model = clients.dynamodb._service_model.operation_model("BatchWriteItem")
            answer = await clients.dynamodb._resolve_endpoint_ruleset(model, params, {})
            assert answer == await plain(model, params, {})
        assert len(memo.cache) == 4
        assert memo.misses == 12
        # The first four are still answered from the memo; the others are resolved again.
        for n in (0, 3, 4):
            params = {"RequestItems": {f"table-{n}": []}}
            await clients.dynamodb._resolve_endpoint_ruleset(model, params, {})
        assert memo.misses == 13
