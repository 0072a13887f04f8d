"""The AWS edge: one aioboto3 session per process, clients, error classes, bootstrap."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import aioboto3
import aiohttp
import orjson
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from logpipe.aws import serialise as aws_serialise
from logpipe.config import Settings
from logpipe.errors import ConfigError, EntryFailure
from logpipe.obs import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

SQS_BILLING_CHUNK = 64 * 1024

RETRIABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "RequestThrottled",
        "InternalServerError",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "KMS.ThrottlingException",
        "AWS.SimpleQueueService.InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "RequestThrottled",
    }
)


# What an AWS call raises when the service or the way to it fails.
AWS_ERRORS = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError, or the exception's class name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


def is_retriable(exc: BaseException) -> bool:
    """Transient: throttling, a 5xx of the service, or the connection itself failing."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in RETRIABLE_CODES or int(status) >= 500
    return isinstance(exc, BotoCoreError | aiohttp.ClientError | asyncio.TimeoutError | OSError)


def backoff_delay(attempt: int, base: float = 0.05, cap: float = 5.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 64))))


async def with_retries(
    call: Callable[[], Awaitable[T]],
    attempts: int,
    what: str,
    *,
    until: float | None = None,
    cap: float = 5.0,
    waited: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run `call`, retrying retriable errors with backoff; the last error propagates.

    With `until` (a `time.monotonic()` deadline) retries go on until the deadline instead of
    for `attempts`; `waited(error, seconds)` hears of each wait.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            delay = backoff_delay(attempt, cap=cap)
            last = attempt == attempts - 1 if until is None else time.monotonic() + delay > until
            if not is_retriable(exc) or last:
                log.warning("%s failed after %d attempts: %s", what, attempt + 1, error_code(exc))
                raise
            if waited is not None:
                waited(exc, delay)
            await asyncio.sleep(delay)
            attempt += 1


async def call_entries(
    call: Callable[..., Awaitable[dict[str, Any]]],
    entries: list[dict[str, Any]],
    attempts: int,
    what: str,
) -> list[dict[str, Any]]:
    """A batch call (Entries=...) retried as a whole and per failed entry; what never passed.

    An entry SQS failed with SenderFault is not sent again: it cannot pass.
    """
    pending = entries
    reason = "no attempt"
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(backoff_delay(attempt - 1))
        try:
            response = await call(Entries=pending)
        except Exception as exc:
            reason = error_code(exc)
            if not is_retriable(exc):
                break
            continue
        failed = {f["Id"]: f for f in response.get("Failed", [])}
        if not failed:
            return []
        reason = next(iter(failed.values()))["Code"]
        if any(f.get("SenderFault") for f in failed.values()):
            log.warning("%s: SQS refused %d entries: %s", what, len(failed), reason)
            return [e for e in pending if e["Id"] in failed]
        pending = [e for e in pending if e["Id"] in failed]
    log.warning("%s failed for %d entries after retries: %s", what, len(pending), reason)
    return pending


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


NO_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


async def queue_url(sqs: Any, name: str) -> str:
    """The URL of queue `name`; ConfigError when it does not exist."""
    try:
        response = await sqs.get_queue_url(QueueName=name)
    except ClientError as exc:
        if error_code(exc) in NO_QUEUE_CODES:
            raise ConfigError(f"queue {name!r} does not exist; run 'logpipe bootstrap'") from None
        raise
    return str(response["QueueUrl"])


async def bootstrap_endpoint(settings: Settings) -> dict[str, str]:
    """`logpipe bootstrap`: open clients, create the resources, close."""
    async with AsyncExitStack() as stack:
        return await bootstrap(await open_clients(stack, settings, pool=4), settings)


async def bootstrap(clients: Clients, settings: Settings) -> dict[str, str]:
    """Create (or bring up to date) the DLQ, the queue with its redrive policy, and the table."""
    dlq_url = await _ensure_queue(
        clients.sqs, settings.dlq_name, {"MessageRetentionPeriod": "1209600"}
    )
    attrs = await clients.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    redrive = {
        "deadLetterTargetArn": attrs["Attributes"]["QueueArn"],
        "maxReceiveCount": str(settings.max_receive_count),
    }
    main_url = await _ensure_queue(
        clients.sqs,
        settings.queue_name,
        {
            "VisibilityTimeout": str(settings.visibility_timeout_s),
            "MessageRetentionPeriod": "345600",
            "RedrivePolicy": orjson.dumps(redrive).decode(),
        },
    )
    await _ensure_table(clients.dynamodb, settings.table_name)
    await table_shards(clients.dynamodb, settings.table_name, settings.shards)
    return {"queue_url": main_url, "dlq_url": dlq_url, "table": settings.table_name}


# The table's own settings live in one item; no '#' in its key, so no event can share it.
CONFIG_KEY = {"pk": {"S": "_config"}, "sk": {"S": "shards"}}


async def table_shards(dynamodb: Any, table: str, proposed: int) -> int:
    """The shard count of `table`: the first value ever written wins, forever.

    Keys depend on it, so it belongs to the table, not to one process's configuration. The
    first writer (bootstrap, or the first processor on a table made elsewhere) stores
    `proposed`; everyone after reads the stored value back from the refused conditional put
    (PutItem only: the processor may not GetItem).
    """
    try:
        await dynamodb.put_item(
            TableName=table,
            Item={**CONFIG_KEY, "shards": {"N": str(proposed)}},
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        stored = int(exc.response["Item"]["shards"]["N"])
        if stored != proposed:
            log.warning(
                "LOGPIPE_SHARDS is %d but table %s was made with %d shards: using %d",
                proposed,
                table,
                stored,
                stored,
            )
        return stored
    log.info("table %s: shard count %d stored", table, proposed)
    return proposed


async def read_table_shards(dynamodb: Any, table: str, default: int) -> int:
    """The stored shard count of `table` (GetItem, for readers), or `default` if none is."""
    response = await dynamodb.get_item(TableName=table, Key=CONFIG_KEY, ConsistentRead=True)
    item = response.get("Item")
    return int(item["shards"]["N"]) if item else default


async def _ensure_queue(sqs: Any, name: str, attributes: dict[str, str]) -> str:
    try:
        url = await queue_url(sqs, name)
    except ConfigError:
        response = await sqs.create_queue(QueueName=name, Attributes=attributes)
        log.info("created queue %s", name)
        return str(response["QueueUrl"])
    await sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


async def _ensure_table(dynamodb: Any, name: str) -> None:
    try:
        await dynamodb.create_table(
            TableName=name,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        log.info("created table %s", name)
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":
            raise
    waiter = dynamodb.get_waiter("table_exists")
    await waiter.wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ttl = await dynamodb.describe_time_to_live(TableName=name)
    if ttl["TimeToLiveDescription"].get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        await dynamodb.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
        )


async def send_message_batch(sqs: Any, url: str, bodies: list[str]) -> list[EntryFailure | None]:
    """One SendMessageBatch; per body, None when SQS accepted it or the entry's failure."""
    response = await sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)]
    )
    outcomes: list[EntryFailure | None] = [None] * len(bodies)
    for failed in response.get("Failed", []):
        # SenderFault marks an entry SQS will never take; anything else may pass next time.
        outcomes[int(failed["Id"])] = EntryFailure(failed["Code"], not failed.get("SenderFault"))
    return outcomes


async def stored_ids(clients: Clients, table: str) -> list[str]:
    """The id of every event in the table (a paginated scan; the services registry left out)."""
    ids: list[str] = []
    kwargs: dict[str, Any] = {
        "TableName": table,
        "ProjectionExpression": "id",
        "FilterExpression": "attribute_exists(id)",
    }
    while True:
        page = await clients.dynamodb.scan(**kwargs)
        ids.extend(item["id"]["S"] for item in page["Items"])
        if "LastEvaluatedKey" not in page:
            return ids
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
