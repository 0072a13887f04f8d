"""The AWS edge: one aioboto3 session per process, the clients, and what each call costs."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig

from logpipe.aws import serialise as aws_serialise
from logpipe.config import Settings
from logpipe.obs import metrics

log = logging.getLogger(__name__)


SQS_BILLING_CHUNK = 64 * 1024
# Where neither AWS_REGION nor botocore (AWS_DEFAULT_REGION, the profile) names a region.
FALLBACK_REGION = "us-east-1"


@dataclass
class Clients:
    """The AWS clients one process shares; open with `open_clients`."""

    sqs: Any
    dynamodb: Any


def client_config(pool: int) -> AioConfig:
    # Retries are ours (per entry, with jitter), so botocore makes exactly one attempt. In
    # that one attempt only botocore's legacy mode checks DynamoDB's x-amz-crc32: standard
    # mode merely retries on a mismatch, so with no attempt left it returns the damaged
    # answer; legacy raises ChecksumError (retriable for us). With one attempt the two modes
    # differ in nothing else (tests/test_aws_clients.py corrupts the header to hold this).
    # Every call's parameters are built by our code, not taken from users: checking them
    # against the model on each call cost a fifth of the processor's CPU, and a malformed
    # call still fails, as the service's ValidationException (not retriable).
    return AioConfig(
        parameter_validation=False,
        max_pool_connections=pool,
        retries={"total_max_attempts": 1, "mode": "legacy"},
        connect_timeout=5,
        read_timeout=30,
        tcp_keepalive=True,
    )


@functools.cache
def _session(region: str | None) -> aioboto3.Session:
    """One session per process and region: it loads the service models once."""
    return aioboto3.Session(region_name=region)


def client_args(settings: Settings) -> dict[str, Any]:
    """Where a client goes, as stock botocore decides it unless our code chose an endpoint.

    `settings.endpoint_url` is set only by logpipe itself (the local stack, the bench,
    tests): then every client goes there. Otherwise nothing is passed and botocore reads
    AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_SQS / _DYNAMODB, the profile's endpoint_url and
    AWS_IGNORE_CONFIGURED_ENDPOINT_URLS itself, as any AWS SDK client would. The region is
    AWS_REGION's, else botocore's (AWS_DEFAULT_REGION, the profile's), else FALLBACK_REGION.
    """
    region = settings.region or _session(None).region_name or FALLBACK_REGION
    args: dict[str, Any] = {"region_name": region}
    if settings.endpoint_url is not None:
        args["endpoint_url"] = settings.endpoint_url
    return args


# Called with the new SQS and DynamoDB clients: where a bench or chaos run adds its hooks.
ClientHook = Callable[[Any, Any], None]


async def open_clients(
    stack: AsyncExitStack, settings: Settings, pool: int, hook: ClientHook | None = None
) -> Clients:
    """Open the SQS and DynamoDB clients on `stack`, sized for `pool` concurrent calls."""
    session = _session(settings.region)
    config = client_config(pool)
    args = client_args(settings)
    sqs = await stack.enter_async_context(session.client("sqs", config=config, **args))
    dynamodb = await stack.enter_async_context(session.client("dynamodb", config=config, **args))
    for client in (sqs, dynamodb):
        client.meta.events.register("before-parameter-build", _count_call)
        aws_serialise.install(client)
    sqs.meta.events.register("after-call.sqs.ReceiveMessage", _count_received_chunks)
    if hook is not None:
        hook(sqs, dynamodb)
    return Clients(sqs=sqs, dynamodb=dynamodb)


def sqs_billed_chunks(payload_bytes: int) -> int:
    """SQS bills each started 64 KiB of a call's payload as one request."""
    return max(1, -(-payload_bytes // SQS_BILLING_CHUNK))


def utf8_length(text: str) -> int:
    """Bytes of `text` in UTF-8; a lone surrogate (which SQS refuses) counts 3, never raises."""
    return len(text.encode("utf-8", "surrogatepass"))


def _sqs_payload(params: dict[str, Any]) -> int:
    entries = params.get("Entries") or [params]
    return sum(utf8_length(str(e.get("MessageBody", ""))) for e in entries)


def _count_call(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
    """Count every API call as it is made, and what SQS bills for it."""
    metrics.aws_requests.labels(model.name).inc()
    if model.service_model.service_name == "sqs":
        sends = model.name in ("SendMessage", "SendMessageBatch")
        metrics.sqs_billed_requests.inc(sqs_billed_chunks(_sqs_payload(params)) if sends else 1)


def _count_received_chunks(parsed: dict[str, Any], **kwargs: Any) -> None:
    """A receive is billed per 64 KiB returned; the call itself was counted as one already."""
    payload = sum(utf8_length(m.get("Body", "")) for m in parsed.get("Messages", []))
    metrics.sqs_billed_requests.inc(sqs_billed_chunks(payload) - 1)
