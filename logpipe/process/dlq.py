"""`logpipe dlq inspect` and `logpipe dlq redrive`: look at dead letters, move them back."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.calls import call_entries
from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.core.models import EnvelopeError, event_problem, loads_exact, unpack_events
from logpipe.process.processor import message_body

BATCH = 10
INSPECT_HOLD_S = 5


def diagnose(message: dict[str, Any]) -> str:
    """Why a dead letter is there, as far as its body can tell."""
    try:
        body = message_body(message)
        events = unpack_events(body)
    except EnvelopeError as exc:
        return f"undecodable: {exc}"
    reason = refusal(message, body)
    if reason is not None:
        return f"event refused: {reason}"
    problems = [p for p in map(event_problem, events) if p is not None]
    if problems:
        return f"holds {len(problems)} events that can never be stored: {problems[0]}"
    return f"decodes to {len(events)} events: storing them failed (see the processor's log)"


def refusal(message: dict[str, Any], body: str) -> str | None:
    """The reason the processor gave when it sent one event here on its own, if it did."""
    doc = loads_exact(body)
    reason = doc.get("reason") if isinstance(doc, dict) else None
    if isinstance(reason, str):
        return reason
    attribute = message.get("MessageAttributes", {}).get("reason", {}).get("StringValue")
    return attribute if isinstance(attribute, str) else None


def describe(message: dict[str, Any], now_ms: float) -> dict[str, Any]:
    attrs = message.get("Attributes", {})
    sent = int(attrs.get("SentTimestamp", now_ms))
    return {
        "message_id": message.get("MessageId"),
        "receive_count": int(attrs.get("ApproximateReceiveCount", 0)),
        "age_s": round((now_ms - sent) / 1000, 1),
        "bytes": len(message.get("Body", "").encode()),
        "why": diagnose(message),
    }


async def _receive(clients: Clients, url: str, hold_s: int) -> list[dict[str, Any]]:
    response = await clients.sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=BATCH,
        VisibilityTimeout=hold_s,
        WaitTimeSeconds=0,
        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        MessageAttributeNames=["All"],
    )
    messages: list[dict[str, Any]] = response.get("Messages", [])
    return messages


async def inspect(clients: Clients, settings: Settings, sample: int) -> dict[str, Any]:
    """The DLQ's depth, and a sample of its messages with their receive counts and a reason.

    Sampled messages are hidden for a few seconds and then visible again, untouched.
    """
    url = await queue_url(clients.sqs, settings.dlq_name)
    attrs = await clients.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < sample:
        messages = await _receive(clients, url, INSPECT_HOLD_S)
        fresh = [m for m in messages if m["MessageId"] not in seen]
        if not fresh:
            break
        now_ms = time.time() * 1000
        for message in fresh[: sample - len(seen)]:
            seen[message["MessageId"]] = describe(message, now_ms)
    return {
        "queue": settings.dlq_name,
        "messages": int(attrs["Attributes"]["ApproximateNumberOfMessages"]),
        "in_flight": int(attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"]),
        "sample": list(seen.values()),
    }


async def redrive(clients: Clients, settings: Settings, everything: bool) -> dict[str, int]:
    """Move dead letters back to the main queue; undecodable ones stay unless `everything`.

    Each message is sent to the main queue before it is deleted from the DLQ, so a crash
    in between leaves a copy in both — harmless, since storing an event twice writes the
    same item. Running it again moves whatever is left.
    """
    source = await queue_url(clients.sqs, settings.dlq_name)
    target = await queue_url(clients.sqs, settings.queue_name)
    moved = kept = 0
    kept_ids: set[str] = set()
    while True:
        messages = [
            m for m in await _receive(clients, source, 30) if m["MessageId"] not in kept_ids
        ]
        if not messages:
            return {"moved": moved, "kept": kept}
        chosen, left = _choose(messages, everything)
        kept_ids.update(m["MessageId"] for m in left)
        kept += len(left)
        if chosen:
            moved += await _move(clients, chosen, source, target)


def _choose(
    messages: list[dict[str, Any]], everything: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The messages to move back, and those to leave (undecodable ones, unless `everything`)."""
    chosen = [m for m in messages if everything or not diagnose(m).startswith("undecodable")]
    return chosen, [m for m in messages if m not in chosen]


def _resend_entry(index: int, message: dict[str, Any]) -> dict[str, Any]:
    """A SendMessageBatch entry of a dead letter's body and message attributes."""
    entry: dict[str, Any] = {"Id": str(index), "MessageBody": message["Body"]}
    if message.get("MessageAttributes"):
        entry["MessageAttributes"] = message["MessageAttributes"]
    return entry


async def _move(clients: Clients, chosen: list[dict[str, Any]], source: str, target: str) -> int:
    """Send `chosen` to the main queue, then delete from the DLQ those it took; how many."""
    entries = [_resend_entry(i, m) for i, m in enumerate(chosen)]
    failed = await call_entries(
        partial(clients.sqs.send_message_batch, QueueUrl=target), entries, 5, "SendMessageBatch"
    )
    done = [m for m, e in zip(chosen, entries, strict=True) if e not in failed]
    receipts = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)]
    if receipts:
        await call_entries(
            partial(clients.sqs.delete_message_batch, QueueUrl=source),
            receipts,
            5,
            "DeleteMessageBatch",
        )
    return len(done)


async def run(
    settings: Settings, action: str, *, sample: int = 10, everything: bool = False
) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, settings, pool=4)
        if action == "inspect":
            return await inspect(clients, settings, sample)
        return await redrive(clients, settings, everything)


def render_inspection(report: dict[str, Any]) -> str:
    """The inspect report for a person."""
    lines = [f"{report['queue']}: {report['messages']} messages ({report['in_flight']} in flight)"]
    for item in report["sample"]:
        lines.append(
            f"  {item['message_id']}  received {item['receive_count']}x  "
            f"age {item['age_s']}s  {item['bytes']} B  {item['why']}"
        )
    return "\n".join(lines)
