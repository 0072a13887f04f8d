"""What AWS failures mean to logpipe: which codes are transient, which are throttling."""

from __future__ import annotations

import asyncio

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

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
    """Transient: throttling, a 5xx of the service, the connection itself failing, or an
    answer that arrived damaged (ChecksumError); for logpipe's own errors, what their
    `retriable` flag says; never parameters refused before sending."""
    if isinstance(exc, LogpipeError):
        return exc.retriable
    if isinstance(exc, ParamValidationError):  # the same parameters would fail again
        return False
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in RETRIABLE_CODES or int(status) >= 500
    return isinstance(exc, BotoCoreError | aiohttp.ClientError | asyncio.TimeoutError | OSError)


def classify(exc: Exception) -> EntryFailure:
    """A failed call as the retry helper reads it: its code, retriable or not, throttled or not."""
    code = error_code(exc)
    return EntryFailure(code, is_retriable(exc), code in THROTTLE_CODES)


NO_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
