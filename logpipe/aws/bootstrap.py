"""Create the queues and the table, and read the table's own settings (its shard count)."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import orjson
from botocore.exceptions import ClientError

from logpipe.aws.clients import Clients, open_clients
from logpipe.aws.errors import NO_QUEUE_CODES, classify, error_code
from logpipe.config import Settings
from logpipe.core.block import FORMAT
from logpipe.core.retry import RetryPolicy, retry_call
from logpipe.errors import ConfigError

log = logging.getLogger(__name__)


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
# Throttling or a 5xx at start-up is waited out like anywhere else: 8 tries, up to ~6 s.
SHARDS_POLICY = RetryPolicy(base=0.05, cap=5.0, attempts=8)


async def table_shards(
    dynamodb: Any, table: str, proposed: int, policy: RetryPolicy = SHARDS_POLICY
) -> int:
    """The shard count of `table`: the first value ever written wins, forever.

    Keys depend on it, so it belongs to the table, not to one process's configuration. The
    first writer (bootstrap, or the first processor on a table made elsewhere) stores
    `proposed`; everyone after reads the stored value back from the refused conditional put
    (PutItem only: the processor may not GetItem). Retriable failures are retried as
    `policy` says; the last one propagates.
    """
    put = partial(_put_shards, dynamodb, table, proposed)
    return await retry_call(put, policy, classify, what="PutItem (shard count)")


async def _put_shards(dynamodb: Any, table: str, proposed: int) -> int:
    try:
        await dynamodb.put_item(
            TableName=table,
            Item={**CONFIG_KEY, "shards": {"N": str(proposed)}, "format": {"S": FORMAT}},
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        stored_item = exc.response["Item"]
        check_format(stored_item, table)
        stored = int(stored_item["shards"]["N"])
        if stored != proposed:
            log.warning(
                "LOGPIPE_SHARDS is %d but table %s was made with %d shards: using %d",
                proposed,
                table,
                stored,
                stored,
            )
        return stored
    log.info("table %s: shard count %d stored, format %s", table, proposed, FORMAT)
    return proposed


def check_format(config: dict[str, Any], table: str) -> None:
    """ConfigError unless the table's config item says it stores this version's format."""
    stored = config.get("format", {}).get("S", "items (one per event)")
    if stored != FORMAT:
        raise ConfigError(
            f"table {table} stores events as {stored}, this logpipe writes {FORMAT}: "
            "set LOGPIPE_TABLE_NAME to a new table (logpipe bootstrap creates it), or run "
            "the logpipe version that wrote it"
        )


async def read_table_shards(dynamodb: Any, table: str, default: int) -> int:
    """The stored shard count of `table` (GetItem, for readers), or `default` if none is;
    ConfigError when the table holds another storage format."""
    response = await dynamodb.get_item(TableName=table, Key=CONFIG_KEY, ConsistentRead=True)
    item = response.get("Item")
    if not item:
        return default
    check_format(item, table)
    return int(item["shards"]["N"])


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
