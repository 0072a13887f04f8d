"""Queue depth and age, read with GetQueueAttributes on an interval (never per message)."""

from __future__ import annotations

import logging
import time
from typing import Any

from botocore.exceptions import ClientError

from logpipe.aws.errors import error_code, is_retriable
from logpipe.lifecycle import Periodic
from logpipe.obs import metrics

log = logging.getLogger(__name__)


def oldest_age_s(messages: list[dict[str, Any]], now_ms: float) -> float:
    """Seconds since the oldest of `messages` was sent (their SentTimestamp attribute)."""
    sent = [int(m.get("Attributes", {}).get("SentTimestamp", now_ms)) for m in messages]
    return max(0.0, (now_ms - min(sent)) / 1000) if sent else 0.0


class QueueMonitor(Periodic):
    """Keeps the queue gauges of the main queue and the DLQ current.

    The main queue's oldest age comes from the messages the processor receives (peeking
    would count as a receive towards maxReceiveCount); the DLQ, which nothing consumes,
    is peeked with a zero visibility timeout.
    """

    def __init__(self, sqs: Any, urls: dict[str, str], interval_s: float) -> None:
        super().__init__(interval_s)
        self._sqs = sqs
        self._urls = urls

    async def poll(self) -> None:
        for queue, url in self._urls.items():
            response = await self._sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )
            attrs = response["Attributes"]
            visible = int(attrs["ApproximateNumberOfMessages"])
            inflight = int(attrs["ApproximateNumberOfMessagesNotVisible"])
            metrics.queue_visible.labels(queue).set(visible)
            metrics.queue_inflight.labels(queue).set(inflight)
            if visible + inflight == 0:
                metrics.queue_oldest_age.labels(queue).set(0)
            elif queue == "dlq" and visible:
                metrics.queue_oldest_age.labels(queue).set(await self._peek_age(url))

    async def _peek_age(self, url: str) -> float:
        response = await self._sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
            MessageSystemAttributeNames=["SentTimestamp"],
        )
        return oldest_age_s(response.get("Messages", []), time.time() * 1000)

    async def tick(self) -> None:
        try:
            await self.poll()
        except Exception as exc:
            # The gauges are worth a warning, never the role: a denied or failing call
            # (say, no sqs:ReceiveMessage on the DLQ) is logged and tried again later.
            if not (is_retriable(exc) or isinstance(exc, ClientError)):
                raise
            log.warning("could not read queue attributes: %s", error_code(exc))
