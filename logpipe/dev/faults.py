"""Fault injection for chaos runs: LOGPIPE_FAULTS makes our AWS clients fail like AWS does.

Only the client layer knows: the hooks sit on botocore's event system and answer with the
same ClientErrors (and per-entry failures, and UnprocessedItems) that SQS and DynamoDB
return. Faults begin with a role's data path (its first receive, send or batch write): its
start-up (queue URLs, the table's shard count) is spared, whatever the call. `seed:N` makes
the faults a run injects the same every time. Without LOGPIPE_FAULTS nothing is installed.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, fields, replace
from typing import Any

from botocore.awsrequest import AWSResponse

from logpipe.errors import ConfigError
from logpipe.obs import metrics

# Where faults apply: the calls of the data path, never start-up (GetQueueUrl, bootstrap).
SQS_CALLS = frozenset(
    {
        "SendMessage",
        "SendMessageBatch",
        "ReceiveMessage",
        "DeleteMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
    }
)
DYNAMODB_CALLS = frozenset({"BatchWriteItem", "PutItem"})
# The calls that start the data path; DynamoDB faults wait for the first of them.
DATA_PATH_CALLS = SQS_CALLS | {"BatchWriteItem"}
SQS_ERRORS = (("InternalError", 500), ("ServiceUnavailable", 503), ("ThrottlingException", 400))
SPEC_HELP = (
    "kill-processor:K, kill-ingestor:K, sqs-error:P, sqs-delay:MS, ddb-throttle:P, poison:M, seed:N"
)


@dataclass(frozen=True)
class Faults:
    """A parsed fault spec, e.g. `kill-processor:3,sqs-error:0.1,ddb-throttle:0.2,poison:20`."""

    kill_processor: int = 0
    kill_ingestor: int = 0
    sqs_error: float = 0.0
    sqs_delay: int = 0
    ddb_throttle: float = 0.0
    poison: int = 0
    # The seed of the injected faults' random choices; 0: a fresh one each run.
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> Faults:
        values: dict[str, Any] = {}
        known = {f.name: f.type for f in fields(cls)}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, raw = part.partition(":")
            key = name.strip().replace("-", "_")
            if key not in known or not raw:
                raise ConfigError(f"fault {part!r} is not one of {SPEC_HELP}")
            try:
                value: float = float(raw) if known[key] == "float" else int(raw)
            except ValueError:
                raise ConfigError(f"fault {part!r} needs a number after ':'") from None
            if value < 0 or (known[key] == "float" and value > 1):
                raise ConfigError(f"fault {part!r} is out of range")
            values[key] = value
        return cls(**values)

    def __str__(self) -> str:
        return ",".join(
            f"{f.name.replace('_', '-')}:{getattr(self, f.name)}"
            for f in fields(self)
            if getattr(self, f.name)
        )

    @property
    def in_clients(self) -> Faults:
        """The part our AWS clients inject; kills and poison are the bench's doing."""
        faults = Faults(
            sqs_error=self.sqs_error, sqs_delay=self.sqs_delay, ddb_throttle=self.ddb_throttle
        )
        return faults if faults == Faults() else replace(faults, seed=self.seed)


def _error(code: str, status: int) -> tuple[AWSResponse, dict[str, Any]]:
    parsed = {
        "Error": {"Code": code, "Message": "injected by LOGPIPE_FAULTS"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return AWSResponse("", status, {}, None), parsed


class Injector:
    """botocore event handlers that make a fraction of calls fail, as the spec says."""

    def __init__(self, faults: Faults, rng: random.Random | None = None) -> None:
        self._faults = faults
        self._rng = rng or random.Random(faults.seed or None)
        # False until the role's first data-path call: start-up is spared.
        self.armed = False

    def install(self, sqs: Any, dynamodb: Any) -> None:
        sqs.meta.events.register("before-parameter-build.sqs", self._drop_entries)
        sqs.meta.events.register("before-call.sqs", self._sqs_call)
        sqs.meta.events.register("after-call.sqs", self._report_entries)
        dynamodb.meta.events.register("before-parameter-build.dynamodb", self._drop_items)
        dynamodb.meta.events.register("before-call.dynamodb", self._dynamodb_call)
        dynamodb.meta.events.register("after-call.dynamodb", self._report_items)

    def _fires(self, probability: float, fault: str) -> bool:
        if probability > 0 and self._rng.random() < probability:
            metrics.faults_injected.labels(fault).inc()
            return True
        return False

    async def _sqs_call(self, model: Any, **kwargs: Any) -> Any:
        if model.name not in SQS_CALLS:
            return None
        self.armed = True
        if self._faults.sqs_delay:
            metrics.faults_injected.labels("sqs-delay").inc()
            await asyncio.sleep(self._faults.sqs_delay / 1000)
        if self._fires(self._faults.sqs_error, "sqs-error"):
            return _error(*self._rng.choice(SQS_ERRORS))
        return None

    def _drop_entries(
        self, params: dict[str, Any], model: Any, context: dict[str, Any], **kwargs: Any
    ) -> None:
        """Per-entry failure: send only the first half; report the rest failed afterwards."""
        entries = params.get("Entries")
        if model.name not in SQS_CALLS or not entries or len(entries) < 2:
            return
        if self._fires(self._faults.sqs_error, "sqs-entry-error"):
            half = len(entries) // 2
            params["Entries"], context["logpipe_dropped"] = entries[:half], entries[half:]

    def _report_entries(
        self, parsed: dict[str, Any], context: dict[str, Any], **kwargs: Any
    ) -> None:
        for entry in context.pop("logpipe_dropped", []):
            parsed.setdefault("Failed", []).append(
                {
                    "Id": entry["Id"],
                    "Code": "InternalError",
                    "SenderFault": False,
                    "Message": "injected by LOGPIPE_FAULTS",
                }
            )

    def _drop_items(
        self, params: dict[str, Any], model: Any, context: dict[str, Any], **kwargs: Any
    ) -> None:
        """A fraction of writes fail: throttled outright, or (for a batch) half unprocessed."""
        self.armed = self.armed or model.name in DATA_PATH_CALLS
        if not self.armed or model.name not in DYNAMODB_CALLS:
            return
        if not self._rng.random() < self._faults.ddb_throttle:
            return
        batch: dict[str, list[Any]] = params.get("RequestItems", {})
        requests: list[Any] = next(iter(batch.values()), [])
        if len(requests) >= 2 and self._rng.random() < 0.5:
            metrics.faults_injected.labels("ddb-unprocessed").inc()
            [table] = params["RequestItems"]
            half = len(requests) // 2
            params["RequestItems"] = {table: requests[:half]}
            context["logpipe_unprocessed"] = (table, requests[half:])
        else:
            metrics.faults_injected.labels("ddb-throttle").inc()
            context["logpipe_throttle"] = True

    def _dynamodb_call(self, context: dict[str, Any], **kwargs: Any) -> Any:
        if context.pop("logpipe_throttle", False):
            return _error("ProvisionedThroughputExceededException", 400)
        return None

    def _report_items(self, parsed: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
        if "logpipe_unprocessed" in context:
            table, requests = context.pop("logpipe_unprocessed")
            parsed.setdefault("UnprocessedItems", {}).setdefault(table, []).extend(requests)
