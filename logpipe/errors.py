"""The errors logpipe raises, and which of them are worth retrying."""

from __future__ import annotations

from dataclasses import dataclass


class LogpipeError(Exception):
    """Base of every error logpipe raises on purpose.

    `retriable` says whether trying again may succeed (retry decisions read it); `status` is
    the HTTP status an answer carries for it, where one applies.
    """

    retriable = False
    status: int | None = None


class ConfigError(LogpipeError):
    """A setting is missing or malformed; the message is the one line the user sees."""


class EventError(LogpipeError):
    """One event breaks the schema; `field` names the culprit."""

    status: int = 400

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field} {reason}" if field else reason)
        self.field = field
        self.reason = reason


class BodyError(LogpipeError):
    """A request body that cannot be read as events at all."""

    status: int

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Overloaded(LogpipeError):
    """The ingestor holds as much in-flight work as it may; the client should retry later."""

    retriable = True
    status: int = 429


class QueueUnavailable(LogpipeError):
    """SQS did not accept a batch after every retry."""

    retriable = True
    status: int = 503


@dataclass(frozen=True)
class EntryFailure:
    """One entry of a batch call that the service refused (or a whole call that failed).

    `throttled`: the service asked to slow down (the retry waits count as throttling).
    """

    code: str
    retriable: bool
    throttled: bool = False
