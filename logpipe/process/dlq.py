"""`logpipe dlq inspect` and `logpipe dlq redrive`: look at dead letters, move them back."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.calls import call_entries
from logpipe.aws.clients import Clients, open_clients
from logpipe.config import Settings
from logpipe.core.envelope import EnvelopeError, message_body, unpack_events
from logpipe.core.event import event_problem, loads_exact

BATCH = 10
INSPECT_HOLD_S = 5
# A redrive hides the letters it leaves this long while it runs (then shows them at once),
# and waits this long for letters on a receive (a short poll may miss some).
REDRIVE_HOLD_S = 300
REDRIVE_WAIT_S = 1
# What a redrive reports: the letters of its snapshot, those it moved and those it left (by
# why), and those sent to the DLQ after it began (not its to move).
REDRIVE_REPORT = ("snapshot", "moved", "kept", "refused", "undecodable", "failed", "arrived")


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


async def _receive(
    clients: Clients, url: str, hold_s: int, wait_s: int = 0
) -> list[dict[str, Any]]:
    response = await clients.sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=BATCH,
        VisibilityTimeout=hold_s,
        WaitTimeSeconds=wait_s,
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


async def redrive(
    clients: Clients,
    settings: Settings,
    everything: bool,
    clock: Callable[[], float] = time.time,
) -> dict[str, int]:
    """Move back to the main queue the dead letters the DLQ held when the redrive began.

    Permanent refusals (an event the processor sent here alone, with its `reason`) and
    undecodable messages stay unless `everything`: back in the main queue they would only be
    dead-lettered again. The redrive works on a snapshot: a letter sent to the DLQ after it
    began is left untouched, so a moved letter that a running processor refuses again (a new
    message) is never moved a second time, and the redrive ends. It stops once it has handled
    as many letters as the DLQ held at the start, or when no letter it has not seen is left;
    what it left (hidden while it ran) is visible again when it returns.

    Each message is sent to the main queue before it is deleted from the DLQ, so a crash
    in between leaves a copy in both — harmless, since storing an event twice writes the
    same item. Running it again moves whatever is left.
    """
    source = await queue_url(clients.sqs, settings.dlq_name)
    target = await queue_url(clients.sqs, settings.queue_name)
    began_ms = clock() * 1000
    report = dict.fromkeys(REDRIVE_REPORT, 0)
    report["snapshot"] = await _depth(clients, source)
    seen: set[str] = set()
    left: list[dict[str, Any]] = []
    try:
        while report["moved"] + report["kept"] < report["snapshot"]:
            received = await _receive(clients, source, REDRIVE_HOLD_S, REDRIVE_WAIT_S)
            fresh = [m for m in received if m["MessageId"] not in seen]
            if not fresh:
                break
            seen.update(m["MessageId"] for m in fresh)
            chosen = []
            for message in fresh:
                kind = "arrived" if _sent_ms(message) >= began_ms else letter_kind(message)
                if kind == "decodable" or (everything and kind != "arrived"):
                    chosen.append(message)
                else:
                    report[kind] += 1
                    left.append(message)
            unmoved = await _move(clients, chosen, source, target) if chosen else []
            report["moved"] += len(chosen) - len(unmoved)
            report["failed"] += len(unmoved)
            left += unmoved
            report["kept"] = report["refused"] + report["undecodable"] + report["failed"]
    finally:
        await _release(clients, source, left)
    return report


def letter_kind(message: dict[str, Any]) -> str:
    """'undecodable', 'refused' (one event the processor sent here alone with its reason,
    which can never be stored) or 'decodable' (a message whose storing failed)."""
    try:
        body = message_body(message)
        unpack_events(body)
    except EnvelopeError:
        return "undecodable"
    return "refused" if refusal(message, body) is not None else "decodable"


def _sent_ms(message: dict[str, Any]) -> float:
    return float(message.get("Attributes", {}).get("SentTimestamp", 0))


async def _depth(clients: Clients, url: str) -> int:
    """The messages of a queue, visible or in flight."""
    response = await clients.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attrs = response["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


async def _release(clients: Clients, url: str, messages: list[dict[str, Any]]) -> None:
    """Make `messages` (received, not moved) visible again at once."""
    for start in range(0, len(messages), BATCH):
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(messages[start : start + BATCH])
        ]
        await call_entries(
            partial(clients.sqs.change_message_visibility_batch, QueueUrl=url),
            entries,
            5,
            "ChangeMessageVisibilityBatch",
        )


def _resend_entry(index: int, message: dict[str, Any]) -> dict[str, Any]:
    """A SendMessageBatch entry of a dead letter's body and message attributes."""
    entry: dict[str, Any] = {"Id": str(index), "MessageBody": message["Body"]}
    if message.get("MessageAttributes"):
        entry["MessageAttributes"] = message["MessageAttributes"]
    return entry


async def _move(
    clients: Clients, chosen: list[dict[str, Any]], source: str, target: str
) -> list[dict[str, Any]]:
    """Send `chosen` to the main queue, then delete from the DLQ those it took; those it did
    not take."""
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
    return [m for m, e in zip(chosen, entries, strict=True) if e in failed]


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


def render_redrive(report: dict[str, int], settings: Settings) -> str:
    """The redrive report for a person: what moved, what stayed and why."""
    lines = [
        f"moved {report['moved']} of the {report['snapshot']} dead letters of "
        f"{settings.dlq_name} back to {settings.queue_name}"
    ]
    why = {
        "refused": "events the processor refused (--all moves them; it refuses them again "
        "unless it has changed)",
        "undecodable": "undecodable messages (--all moves them)",
        "failed": "messages SQS did not take (run it again)",
        "arrived": "dead letters that arrived while it ran (not its to move)",
    }
    lines += [f"left {report[kind]} {text}" for kind, text in why.items() if report[kind]]
    return "\n".join(lines)
