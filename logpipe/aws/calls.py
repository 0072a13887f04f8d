"""Calls with logpipe's retries: whole-call retries, per-entry retries of batch calls.

Both go through the one retry helper (`logpipe.core.retry`) with the one classification of
AWS failures (`logpipe.aws.errors.classify`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from logpipe.aws.clients import Clients
from logpipe.aws.errors import classify
from logpipe.core.block import BODY_PREFIX, SUMMARY_PREFIX, decode_body, first_copies, is_shared
from logpipe.core.envelope import MessageBody
from logpipe.core.event import Event
from logpipe.core.retry import RetryPolicy, retry_call, retry_entries
from logpipe.errors import EntryFailure

T = TypeVar("T")

# Whole AWS calls and entry-level batch calls: 50 ms doubling, at most 5 s apart.
CALL_POLICY = RetryPolicy(base=0.05, cap=5.0)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    attempts: int,
    what: str,
    *,
    until: float | None = None,
    cap: float = 5.0,
) -> T:
    """Run `call`, retrying retriable errors with backoff; the last error propagates.

    With `until` (a `time.monotonic()` deadline) retries go on until the deadline instead of
    for `attempts`.
    """
    policy = RetryPolicy(
        base=CALL_POLICY.base,
        cap=cap,
        attempts=attempts if until is None else None,
        deadline=until,
        rng=CALL_POLICY.rng,
    )
    return await retry_call(call, policy, classify, what=what)


async def call_entries(
    call: Callable[..., Awaitable[dict[str, Any]]],
    entries: list[dict[str, Any]],
    attempts: int,
    what: str,
) -> list[dict[str, Any]]:
    """A batch call (Entries=...) retried as a whole and per failed entry; what never passed.

    An entry SQS failed with SenderFault is not sent again: it cannot pass.
    """

    async def send(pending: list[dict[str, Any]]) -> list[EntryFailure | None]:
        response = await call(Entries=pending)
        return entry_outcomes(pending, response.get("Failed", []))

    policy = RetryPolicy(base=CALL_POLICY.base, cap=CALL_POLICY.cap, attempts=attempts)
    outcome = await retry_entries(send, entries, policy, classify, what=what)
    return [entry for entry, _ in outcome.failed]


def _entry(entry_id: str, body: MessageBody) -> dict[str, Any]:
    if body.gzipped:
        return {"Id": entry_id, "MessageBody": body.text, "MessageAttributes": body.attributes}
    return {"Id": entry_id, "MessageBody": body.text}


def entry_outcomes(
    entries: Sequence[dict[str, Any]], failed: list[dict[str, Any]]
) -> list[EntryFailure | None]:
    """Per entry of an SQS batch call, None when it passed or its failure; SenderFault marks
    an entry SQS will never take, anything else may pass next time."""
    failures = {f["Id"]: EntryFailure(f["Code"], not f.get("SenderFault")) for f in failed}
    return [failures.get(entry["Id"]) for entry in entries]


async def send_message_batch(
    sqs: Any, url: str, bodies: list[MessageBody]
) -> list[EntryFailure | None]:
    """One SendMessageBatch; per body, None when SQS accepted it or the entry's failure."""
    entries = [_entry(str(n), body) for n, body in enumerate(bodies)]
    response = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
    return entry_outcomes(entries, response.get("Failed", []))


async def stored_events(clients: Clients, table: str) -> list[Event]:
    """Every stored event once (`first_copies`), from a paginated scan of the blocks whose
    body and own summary are both written (what reads of one service find): for tests,
    `logpipe up` and the bench, which count what a table holds. The shared partition's
    copies of the summaries are passed over: they hold no events."""
    bodies: dict[tuple[str, str], list[Event]] = {}
    summarised: set[tuple[str, str]] = set()
    kwargs: dict[str, Any] = {
        "TableName": table,
        "ConsistentRead": True,
        "FilterExpression": "begins_with(sk, :body) OR begins_with(sk, :summary)",
        "ExpressionAttributeValues": {
            ":body": {"S": BODY_PREFIX},
            ":summary": {"S": SUMMARY_PREFIX},
        },
    }
    while True:
        # moto's server now and then answers a scan that runs beside writes with a 500.
        page = await with_retries(partial(clients.dynamodb.scan, **kwargs), 5, "Scan")
        for item in page["Items"]:
            pk, sk = item["pk"]["S"], item["sk"]["S"]
            if is_shared(pk):
                continue
            if sk.startswith(BODY_PREFIX):
                bodies[pk, sk.removeprefix(BODY_PREFIX)] = decode_body(item)
            else:
                summarised.add((pk, sk.rsplit("#", 1)[1]))
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return first_copies(e for key, events in bodies.items() if key in summarised for e in events)


async def stored_ids(clients: Clients, table: str) -> list[str]:
    """The id of every stored event, once per event (`stored_events`)."""
    return [event["id"] for event in await stored_events(clients, table)]
