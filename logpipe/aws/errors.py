"""What AWS failures mean to logpipe: which codes are transient, which are throttling."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from logpipe.errors import EntryFailure, LogpipeError

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
        # An item another transaction is writing: that one ends within moments.
        "TransactionConflictException",
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


# Settings missing on this machine: asking again finds them missing again.
SETUP_ERRORS = (NoCredentialsError, PartialCredentialsError, NoRegionError)
# Asking again fails again: settings missing here, or parameters refused before sending.
NOT_RETRIABLE = (*SETUP_ERRORS, ParamValidationError)


def is_retriable(exc: BaseException) -> bool:
    """Transient: throttling, a 5xx of the service, the connection itself failing, or an
    answer that arrived damaged (ChecksumError); for logpipe's own errors, what their
    `retriable` flag says; never parameters refused before sending."""
    if isinstance(exc, LogpipeError):
        return exc.retriable
    if isinstance(exc, NOT_RETRIABLE):
        return False
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in RETRIABLE_CODES or int(status) >= 500
    return isinstance(exc, BotoCoreError | aiohttp.ClientError | asyncio.TimeoutError | OSError)


def classify(exc: Exception) -> EntryFailure:
    """A failed call as the retry helper reads it: its code, retriable or not, throttled or not."""
    code = error_code(exc)
    return EntryFailure(code, is_retriable(exc), code in THROTTLE_CODES)


# Why DynamoDB cancelled a transaction, per item: conflict and throttling pass in time.
CANCEL_RETRIABLE = frozenset(
    {"TransactionConflict", "ProvisionedThroughputExceeded", "ThrottlingError"}
)
CANCEL_THROTTLED = frozenset({"ProvisionedThroughputExceeded", "ThrottlingError"})


@dataclass(frozen=True, slots=True)
class CancelReason:
    """One item's part in a cancelled transaction: DynamoDB's code ("None" when the item was
    not at fault), the item stored under its key when its condition failed and ALL_OLD was
    asked for, and the code as the retry helper reads it."""

    code: str
    stored: dict[str, Any] | None

    @property
    def failure(self) -> EntryFailure:
        return EntryFailure(self.code, self.code in CANCEL_RETRIABLE, self.code in CANCEL_THROTTLED)


def cancellation_reasons(exc: ClientError, items: int) -> list[CancelReason] | None:
    """Per item, why a TransactWriteItems of `items` items was cancelled; None when `exc` is
    not such a cancellation (or its reasons do not match the items)."""
    if error_code(exc) != "TransactionCanceledException":
        return None
    reasons = exc.response.get("CancellationReasons")
    if not isinstance(reasons, list) or len(reasons) != items:
        return None
    return [CancelReason(str(r.get("Code", "None")), r.get("Item")) for r in reasons]


def read_failure(exc: BaseException) -> str:
    """One line for a person whose read of the table failed: what to set when credentials
    or the region are missing, else the AWS error code."""
    if isinstance(exc, SETUP_ERRORS):
        return (
            f"no AWS credentials or region here ({type(exc).__name__}): set AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION; or run it from the "
            "directory where `make up` runs"
        )
    return f"the log table could not be read ({error_code(exc)})"


NO_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
