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

from logpipe.aws import lean
from logpipe.aws import serialise as aws_serialise
from logpipe.aws.endpoints import memoise_endpoints
from logpipe.config import Settings
from logpipe.obs import metrics

log = logging.getLogger(__name__)


SQS_BILLING_CHUNK = 64 * 1024


@dataclass
class Clients:
    """The AWS clients one process shares; open with `open_clients`."""

    sqs: Any
    dynamodb: Any


def client_config(pool: int) -> AioConfig:
    # Retries are ours (per entry, with jitter), so botocore makes exactly one attempt.
    # Every call's parameters are built by our code, not taken from users: checking them
    # against the model on each call cost a fifth of the processor's CPU, and a malformed
    # call still fails, as the service's ValidationException (not retriable).
    return AioConfig(
        parameter_validation=False,
        max_pool_connections=pool,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        tcp_keepalive=True,
    )


@functools.cache
def _session(region: str) -> aioboto3.Session:
    """One session per process and region: it loads the service models once."""
    return aioboto3.Session(region_name=region)


# Called with the new SQS and DynamoDB clients: where a bench or chaos run adds its hooks.
ClientHook = Callable[[Any, Any], None]


async def open_clients(
    stack: AsyncExitStack, settings: Settings, pool: int, hook: ClientHook | None = None
) -> Clients:
    """Open the SQS and DynamoDB clients on `stack`, sized for `pool` concurrent calls."""
    session = _session(settings.region)
    config = client_config(pool)
    sqs = await stack.enter_async_context(
        session.client("sqs", endpoint_url=settings.endpoint_url, config=config)
    )
    dynamodb = await stack.enter_async_context(
        session.client("dynamodb", endpoint_url=settings.endpoint_url, config=config)
    )
    for client in (sqs, dynamodb):
        client.meta.events.register("before-parameter-build", _count_call)
        aws_serialise.install(client)
        memoise_endpoints(client)
        lean.install(client)
    sqs.meta.events.register("after-call.sqs.ReceiveMessage", _count_received_chunks)
    if hook is not None:
        hook(sqs, dynamodb)
    return Clients(sqs=sqs, dynamodb=dynamodb)


def sqs_billed_chunks(payload_bytes: int) -> int:
    """SQS bills each started 64 KiB of a call's payload as one request."""
    return max(1, -(-payload_bytes // SQS_BILLING_CHUNK))


def _sqs_payload(params: dict[str, Any]) -> int:
    entries = params.get("Entries") or [params]
    return sum(len(str(e.get("MessageBody", "")).encode()) for e in entries)


def _count_call(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
    """Count every API call as it is made, and what SQS bills for it."""
    metrics.aws_requests.labels(model.name).inc()
    if model.service_model.service_name == "sqs":
        sends = model.name in ("SendMessage", "SendMessageBatch")
        metrics.sqs_billed_requests.inc(sqs_billed_chunks(_sqs_payload(params)) if sends else 1)


def _count_received_chunks(parsed: dict[str, Any], **kwargs: Any) -> None:
    """A receive is billed per 64 KiB returned; the call itself was counted as one already."""
    payload = sum(len(m.get("Body", "").encode()) for m in parsed.get("Messages", []))
    metrics.sqs_billed_requests.inc(sqs_billed_chunks(payload) - 1)
