"""One retry policy and one retry helper: exponential backoff with full jitter, per entry.

`RetryPolicy` says how long to wait before the next try and when to stop (a count of tries,
a deadline, or both); it honours a server's hint (Retry-After) where one is given.
`retry_entries` runs a batch call until every entry has passed, is refused for good, or the
policy gives up, and returns what never passed with why; `retry_call` is the same for one
call that either returns or raises. What is worth retrying is read from each failure's
`retriable` flag; `classify` turns an exception of the call into such a failure. Stdlib only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from logpipe.errors import EntryFailure

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# A batch call: the entries to send, and per entry None (passed) or why it failed.
EntryCall = Callable[[list[T]], Awaitable[Sequence[EntryFailure | None]]]
Classify = Callable[[Exception], EntryFailure]
# Hears of each wait before it: the entries about to be sent again, the failure, the seconds.
Waited = Callable[[list[T], EntryFailure, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again: full-jitter exponential backoff, within `attempts` tries in all
    (None: no count) and before `deadline` (a `time.monotonic()` instant; None: none)."""

    base: float = 0.05
    cap: float = 5.0
    attempts: int | None = 5
    deadline: float | None = None
    # A server's hint is followed up to this many seconds.
    max_hint: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Seconds before retry number `attempt` (0 for the first retry): uniform in
        [0, min(cap, base * 2**attempt)]; with a hint (Retry-After), between half of it
        (at most `max_hint`) and all of it, and never below the backoff."""
        backoff = self.rng.uniform(0, min(self.cap, self.base * 2 ** min(attempt, 64)))
        if hint is None or hint <= 0:
            return backoff
        return max(min(hint, self.max_hint) * self.rng.uniform(0.5, 1.0), backoff)

    def give_up(self, attempt: int, now: float) -> bool:
        """After `attempt` tries, whether to stop rather than try again at `now` (monotonic)."""
        if self.attempts is not None and attempt >= self.attempts:
            return True
        return self.deadline is not None and now >= self.deadline

    def within(self, seconds: float, now: float | None = None) -> RetryPolicy:
        """This policy with its deadline `seconds` from `now` (a horizon)."""
        return replace(self, deadline=(time.monotonic() if now is None else now) + seconds)


@dataclass
class Outcome(Generic[T]):
    """What `retry_entries` could not do: each entry that never passed with its last failure,
    how many tries it took, and the exception of the last try if that call raised."""

    failed: list[tuple[T, EntryFailure]]
    attempts: int
    error: Exception | None = None


async def retry_entries(
    call: EntryCall[T],
    entries: Sequence[T],
    policy: RetryPolicy,
    classify: Classify,
    *,
    what: str,
    waited: Waited[T] | None = None,
) -> Outcome[T]:
    """Send `entries` with `call`, then only the entries that failed retriably, until none is
    left or the policy gives up. A call that raises fails all its entries alike (`classify`).
    Entries refused for good are never sent again. A give-up is logged once."""
    pending = list(entries)
    refused: list[tuple[T, EntryFailure]] = []
    attempt = 0
    if not pending:
        return Outcome(refused, attempt)
    while True:
        error: Exception | None = None
        try:
            outcomes: Sequence[EntryFailure | None] = await call(pending)
        except Exception as exc:
            error = exc
            outcomes = [classify(exc)] * len(pending)
        attempt += 1
        retry = _sort(pending, outcomes, refused)
        delay = policy.delay(attempt - 1) if retry else 0.0
        if not retry or policy.give_up(attempt, time.monotonic() + delay):
            _report(what, refused + retry, len(entries), attempt)
            return Outcome(refused + retry, attempt, error)
        pending = [entry for entry, _ in retry]
        if waited is not None:
            waited(pending, retry[0][1], delay)
        await asyncio.sleep(delay)


async def retry_call(
    call: Callable[[], Awaitable[R]],
    policy: RetryPolicy,
    classify: Classify,
    *,
    what: str,
    waited: Waited[None] | None = None,
) -> R:
    """Run `call` until it returns, retrying what `classify` calls retriable as the policy
    allows; the last error propagates."""
    results: list[R] = []

    async def once(_: list[None]) -> list[EntryFailure | None]:
        results.append(await call())
        return [None]

    outcome = await retry_entries(once, [None], policy, classify, what=what, waited=waited)
    if results:
        return results[0]
    if outcome.error is None:  # `once` fails only by raising; kept for the type checker
        raise RuntimeError(f"{what} gave no result")
    raise outcome.error


def _sort(
    pending: list[T],
    outcomes: Sequence[EntryFailure | None],
    refused: list[tuple[T, EntryFailure]],
) -> list[tuple[T, EntryFailure]]:
    """The entries to try again; the ones refused for good join `refused`."""
    retry: list[tuple[T, EntryFailure]] = []
    for entry, outcome in zip(pending, outcomes, strict=True):
        if outcome is not None:
            (retry if outcome.retriable else refused).append((entry, outcome))
    return retry


def _report(what: str, failed: list[tuple[T, EntryFailure]], total: int, attempts: int) -> None:
    if not failed:
        return
    reason = failed[-1][1].code
    log.warning(
        "%s: %d of %d entries not done after %d attempts: %s",
        what,
        len(failed),
        total,
        attempts,
        reason,
        extra={"call": what, "entries": len(failed), "attempts": attempts, "reason": reason},
    )
