"""Calls with logpipe's retries: backoff, whole-call retries, per-entry retries of batch calls."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from logpipe.aws.clients import Clients
from logpipe.aws.errors import error_code, is_retriable
from logpipe.errors import EntryFailure

log = logging.getLogger(__name__)


T = TypeVar("T")


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
