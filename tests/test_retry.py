"""The retry policy and the one retry helper; the table's shard count read through throttling."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from logpipe.aws.bootstrap import SHARDS_POLICY, table_shards
from logpipe.aws.clients import open_clients
from logpipe.config import Settings
from logpipe.core.retry import RetryPolicy, retry_call, retry_entries
from logpipe.dev.faults import Faults, Injector
from logpipe.errors import EntryFailure, QueueUnavailable

pytestmark = pytest.mark.aws

# Waits of at most a millisecond: the helper's logic, not its patience, is under test.
QUICK = RetryPolicy(base=0.001, cap=0.001, attempts=4, rng=random.Random(7))
THROTTLED = EntryFailure("ThrottlingException", retriable=True, throttled=True)
REFUSED = EntryFailure("InvalidParameterValue", retriable=False)


def _classify(exc: Exception) -> EntryFailure:
    return EntryFailure(type(exc).__name__, isinstance(exc, QueueUnavailable))


# --- the policy --------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(10))
def test_delay_is_full_jitter_under_the_capped_exponential(attempt: int) -> None:
    policy = RetryPolicy(base=0.1, cap=5.0, rng=random.Random(attempt))
    delays = [policy.delay(attempt) for _ in range(300)]

    assert all(0 <= d <= min(5.0, 0.1 * 2**attempt) for d in delays)
    assert max(delays) > 0.8 * min(5.0, 0.1 * 2**attempt)  # the whole range is used
    assert len(set(delays)) > 250


def test_a_seeded_policy_waits_the_same_every_time() -> None:
    first = [RetryPolicy(rng=random.Random(42)).delay(n) for n in range(6)]
    again = [RetryPolicy(rng=random.Random(42)).delay(n) for n in range(6)]
    other = [RetryPolicy(rng=random.Random(43)).delay(n) for n in range(6)]

    assert first == again
    assert first != other


def test_a_servers_hint_is_followed_between_half_and_all_of_it_up_to_max_hint() -> None:
    policy = RetryPolicy(base=0.1, cap=5.0, max_hint=60.0, rng=random.Random(1))

    assert all(1.0 <= policy.delay(0, hint=2.0) <= 2.0 for _ in range(200))
    assert all(30.0 <= policy.delay(0, hint=86400) <= 60.0 for _ in range(200))
    # A hint shorter than the backoff does not shorten it.
    assert all(policy.delay(12, hint=0.001) <= 5.0 for _ in range(50))
    assert max(policy.delay(12, hint=0.001) for _ in range(200)) > 1.0


def test_give_up_after_the_attempts_or_at_the_deadline() -> None:
    counted = RetryPolicy(attempts=3)
    assert not counted.give_up(2, now=0.0)
    assert counted.give_up(3, now=0.0)

    horizon = RetryPolicy(attempts=None).within(10.0, now=100.0)
    assert horizon.deadline == 110.0
    assert not horizon.give_up(1000, now=109.9)
    assert horizon.give_up(1, now=110.0)


# --- the helper --------------------------------------------------------------------------------


class _Service:
    """A batch call with scripted per-entry answers: `answers[n]` for the n-th call."""

    def __init__(self, *answers: Mapping[str, EntryFailure | Exception]) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    async def __call__(self, entries: list[str]) -> list[EntryFailure | None]:
        self.calls.append(list(entries))
        answer = self.answers.pop(0) if self.answers else {}
        failures: dict[str, EntryFailure] = {}
        for entry, value in answer.items():
            if isinstance(value, Exception):
                raise value
            failures[entry] = value
        return [failures.get(e) for e in entries]


async def test_only_the_entries_that_failed_retriably_are_sent_again() -> None:
    service = _Service({"b": THROTTLED, "c": REFUSED, "d": THROTTLED}, {"d": THROTTLED}, {})

    outcome = await retry_entries(service, ["a", "b", "c", "d"], QUICK, _classify, what="T")

    assert service.calls == [["a", "b", "c", "d"], ["b", "d"], ["d"]]
    assert outcome.failed == [("c", REFUSED)]
    assert outcome.attempts == 3
    assert outcome.error is None


async def test_nothing_to_send_makes_no_call() -> None:
    service = _Service()

    outcome = await retry_entries(service, [], QUICK, _classify, what="T")

    assert service.calls == []
    assert outcome.failed == []
    assert outcome.attempts == 0


async def test_a_call_that_raises_fails_every_entry_by_its_classification() -> None:
    service = _Service({"*": QueueUnavailable("busy")}, {"*": KeyError("bug")})

    outcome = await retry_entries(service, ["a", "b"], QUICK, _classify, what="T")

    assert service.calls == [["a", "b"], ["a", "b"]]  # retriable once, then refused for good
    assert [(e, f.code, f.retriable) for e, f in outcome.failed] == [
        ("a", "KeyError", False),
        ("b", "KeyError", False),
    ]
    assert isinstance(outcome.error, KeyError)


async def test_give_up_after_the_attempts_is_logged_once_with_count_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = _Service(*[{"b": THROTTLED}] * 10)

    with caplog.at_level(logging.WARNING, logger="logpipe.core.retry"):
        outcome = await retry_entries(service, ["a", "b"], QUICK, _classify, what="SendX")

    assert len(service.calls) == 4
    assert outcome.failed == [("b", THROTTLED)]
    [record] = caplog.records
    assert "SendX: 1 of 2 entries not done after 4 attempts: ThrottlingException" in (
        record.getMessage()
    )


async def test_the_deadline_stops_retries_before_a_wait_that_would_pass_it() -> None:
    service = _Service(*[{"a": THROTTLED}] * 10)
    policy = replace(QUICK, base=30.0, cap=30.0, attempts=None, rng=random.Random(3))

    started = time.monotonic()
    outcome = await retry_entries(service, ["a"], policy.within(0.5), _classify, what="T")

    assert len(service.calls) == 1  # every possible wait (up to 30 s) is refused at once
    assert outcome.failed == [("a", THROTTLED)]
    assert time.monotonic() - started < 10


async def test_waited_hears_each_wait_with_the_entries_sent_again() -> None:
    service = _Service({"a": THROTTLED, "b": THROTTLED}, {"b": THROTTLED}, {})
    heard: list[tuple[list[str], str, float]] = []

    await retry_entries(
        service,
        ["a", "b", "c"],
        QUICK,
        _classify,
        what="T",
        waited=lambda pending, failure, delay: heard.append((pending, failure.code, delay)),
    )

    assert [(p, c) for p, c, _ in heard] == [
        (["a", "b"], "ThrottlingException"),
        (["b"], "ThrottlingException"),
    ]
    assert all(0 <= d <= 0.001 for _, _, d in heard)


async def test_retry_call_returns_after_retriable_errors_and_raises_the_last_error() -> None:
    tries: list[int] = []

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise QueueUnavailable("busy")
        return "done"

    assert await retry_call(flaky, QUICK, _classify, what="T") == "done"
    assert len(tries) == 3

    async def broken() -> str:
        raise QueueUnavailable(f"busy {len(tries)}")

    tries.clear()
    with pytest.raises(QueueUnavailable, match="busy"):
        await retry_call(broken, QUICK, _classify, what="T")


# --- the table's shard count, read at start-up through throttling ------------------------------


def _first_draws_below(p: float, throttled: int) -> int:
    """A seed whose first `throttled` draws fall under `p` and the next one does not."""
    for seed in range(1, 10_000):
        rng = random.Random(seed)
        draws = [rng.random() for _ in range(throttled + 1)]
        if all(d < p for d in draws[:throttled]) and draws[-1] >= p:
            return seed
    raise AssertionError("no such seed")


async def _shards_through(settings: Settings, faults: Faults, **policy: Any) -> int:
    def install(sqs: Any, dynamodb: Any) -> None:
        injector = Injector(faults)
        injector.armed = True  # as after a role's first data-path call
        injector.install(sqs, dynamodb)

    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, settings, pool=4, hook=install)
        return await table_shards(
            clients.dynamodb,
            settings.table_name,
            settings.shards + 1,
            replace(SHARDS_POLICY, base=0.01, **policy),
        )


async def test_the_shard_count_is_read_through_throttling_with_seeded_faults(
    settings: Settings,
) -> None:
    faults = Faults(ddb_throttle=0.5, seed=_first_draws_below(0.5, throttled=2))

    # Two throttled PutItems, then the stored count (bootstrap's) is read back.
    assert await _shards_through(settings, faults) == settings.shards
    with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
        await _shards_through(settings, faults, attempts=2)


async def test_faults_spare_start_up_until_the_data_path_begins(settings: Settings) -> None:
    injector = Injector(Faults(ddb_throttle=1.0, seed=7))
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, settings, pool=4, hook=injector.install)
        shards = await table_shards(clients.dynamodb, settings.table_name, settings.shards)
        assert shards == settings.shards
        assert not injector.armed
        with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
            await clients.dynamodb.batch_write_item(
                RequestItems={settings.table_name: [{"PutRequest": {"Item": _probe()}}]}
            )
        assert injector.armed
        with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
            await table_shards(
                clients.dynamodb,
                settings.table_name,
                settings.shards,
                replace(SHARDS_POLICY, base=0.01, attempts=3),
            )


def _probe() -> dict[str, Any]:
    return {"pk": {"S": "_probe"}, "sk": {"S": "x"}}


def test_a_fault_spec_takes_a_seed_and_hands_it_to_the_clients() -> None:
    faults = Faults.parse("ddb-throttle:0.2,seed:7")

    assert faults == Faults(ddb_throttle=0.2, seed=7)
    assert Faults.parse(str(faults)) == faults
    assert faults.in_clients.seed == 7
    assert Faults.parse("seed:7,poison:3").in_clients == Faults()  # nothing to inject
