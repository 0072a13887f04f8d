"""The textbook pipeline `logpipe bench --naive` measures against, with the same promises:
one SendMessage per event on the ingest side; one message per ReceiveMessage, each event
its own block (a PutItem for its body and one for its summary) and one DeleteMessage per
message on the processing side."""

from __future__ import annotations

import asyncio
from typing import Any

from logpipe.aws.errors import error_code, is_retriable
from logpipe.config import Settings
from logpipe.core.block import block_of
from logpipe.core.envelope import EnvelopeError, pack_envelope
from logpipe.core.timefmt import hour
from logpipe.errors import QueueUnavailable
from logpipe.obs import metrics
from logpipe.process.processor import Processor, Tracker, _Write, decode_message


class OnePerEventSender:
    """The textbook producer `logpipe bench --naive` measures against: one SendMessage per
    event, same promise as the Batcher (returns once SQS holds every event)."""

    def __init__(self, sqs: Any, url: str, concurrency: int) -> None:
        self._sqs = sqs
        self._url = url
        self._slots = asyncio.Semaphore(concurrency)

    async def __aenter__(self) -> OnePerEventSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def submit(self, events: list[bytes]) -> None:
        await asyncio.gather(*(self._send(event) for event in events))

    async def _send(self, event: bytes) -> None:
        async with self._slots:
            try:
                await self._sqs.send_message(QueueUrl=self._url, MessageBody=pack_envelope([event]))
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                raise QueueUnavailable(f"SQS is unavailable: {error_code(exc)}") from None
        metrics.sqs_messages_sent.inc()


def one_per_event(sqs: Any, url: str, settings: Settings) -> OnePerEventSender:
    """The ingestor's sender in a naive run (a `logpipe.ingest.app.SenderFactory`)."""
    return OnePerEventSender(sqs, url, settings.send_concurrency)


class NaiveProcessor(Processor):
    """The textbook consumer `logpipe bench --naive` measures against: one message per
    ReceiveMessage, one block (two PutItems) per event, one DeleteMessage per message."""

    receive_messages = 1

    async def handle(self, messages: list[dict[str, Any]], delete: bool = True) -> None:
        for message in messages:
            metrics.messages_received.inc()
            try:
                events = decode_message(message)
            except EnvelopeError:
                metrics.messages_undecodable.inc()
                continue
            tracker = Tracker(message, len(events))
            for event in events:
                write = _Write(block_of(event["service"], hour(event["timestamp"]), [event]))
                write.trackers.append(tracker)
                pair = self._items(write.block)
                for item in pair:
                    await self._dynamodb.put_item(TableName=self._settings.table_name, Item=item)
                self._record_stored([write], [pair])
            if delete:
                await self._sqs.delete_message(
                    QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
                metrics.messages_deleted.inc()
