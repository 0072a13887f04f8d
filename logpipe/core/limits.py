"""What one ingest request may cost: a memory budget, and counts taken before objects are built.

Pure, thread-safe code: the ingestor's decode work calls it from a worker thread.

Every figure here is an upper estimate of what CPython really allocates (measured with
tracemalloc on orjson: an empty object in an array costs 72 bytes, `{"a":1}` 192 bytes,
a string of n bytes about 50 + n), so a budget of B bytes keeps what requests hold below B.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from logpipe.errors import BodyError

MIB = 1024 * 1024
# Parsed JSON: two bytes per byte of text (strings, numbers), and 100 bytes per value (each
# value follows a `[`, a `,` or a `:`, or is a line of NDJSON).
PARSED_BYTES_PER_BYTE = 2
PARSED_BYTES_PER_VALUE = 100
# What one event costs once validated: its encoded bytes object and list slot, or its entry
# in the rejection list of the answer.
HELD_BYTES_PER_EVENT = 500
# A line of NDJSON that holds something besides white space.
_NDJSON_LINE = re.compile(rb"[^\S\r\n]*\S[^\r\n]*")


class Refused(BodyError):
    """A request refused for a limit; `label` is its reason in the metrics."""

    def __init__(self, status: int, message: str, label: str) -> None:
        super().__init__(status, message)
        self.label = label


class MemoryBudget:
    """Bytes that requests in progress may hold, all of them together and one of them alone.

    Reservations never wait: a request that does not fit is refused at once (503), so memory
    stays flat whatever arrives and however slow SQS is.
    """

    def __init__(self, limit_bytes: int, per_request_bytes: int | None = None) -> None:
        self.limit = limit_bytes
        self.per_request = per_request_bytes or limit_bytes // 2
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def reservation(self) -> Reservation:
        return Reservation(self)

    def _take(self, nbytes: int) -> bool:
        with self._lock:
            if self._used + nbytes > self.limit:
                return False
            self._used += nbytes
            return True

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes


class Reservation:
    """What one request holds of the budget; grows as it reads and decodes, shrinks after."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.held = 0

    def add(self, nbytes: int, what: str) -> None:
        """Hold `nbytes` more; Refused(413) past the one-request share, (503) when full."""
        if nbytes <= 0:
            return
        share = self._budget.per_request
        if self.held + nbytes > share:
            raise Refused(
                413, f"{what} would hold more than {share // MIB} MiB of memory", "too_large"
            )
        if not self._budget._take(nbytes):
            raise Refused(503, "the ingestor's memory budget is in use; retry later", "budget")
        self.held += nbytes

    def shrink_to(self, nbytes: int) -> None:
        """Give back all but `nbytes` (what the request still holds after decoding)."""
        if nbytes < self.held:
            self._budget._give(self.held - nbytes)
            self.held = nbytes

    def release(self) -> None:
        self.shrink_to(0)


# One translation sorts each byte of a JSON body for the counts below: a comma (1); the other
# bytes a value may follow (2: colon, bracket, newline); digits and "." (0), whose runs of 16
# mark a number a double may not hold (see `event.loads_exact`); anything else (3).
_SCAN_TABLE = bytes(
    1 if c == ord(",") else 2 if c in b":[\n" else 0 if c in b"0123456789." else 3
    for c in range(256)
)
_LONG_RUN = bytes(16)


@dataclass(frozen=True)
class JsonScan:
    """What one pass over a JSON body finds before it is parsed."""

    commas: int
    values: int  # at most this many values (`json_values_bound`)
    long_runs: bool  # a run of 16 or more digits and dots somewhere
    # When there are long runs: the translation, in which digits and dots are 0, so that the
    # parse looks at those runs without translating the body again (`event.loads_exact`).
    digit_runs: bytes | None = None


def scan_json(body: bytes) -> JsonScan:
    """Commas, the values bound and long digit runs of `body`: one translation, three looks
    (the separate counts and the digit-run translation took twice as long)."""
    sorted_bytes = body.translate(_SCAN_TABLE)
    commas = sorted_bytes.count(1)
    long_runs = _LONG_RUN in sorted_bytes
    values = commas + sorted_bytes.count(2) + 1
    return JsonScan(commas, values, long_runs, sorted_bytes if long_runs else None)


def json_values_bound(body: bytes) -> int:
    """At most how many JSON values (objects, arrays, strings, numbers) `body` can hold."""
    # The commas, colons, brackets and newlines, counted in one pass (four `count`s take two).
    return len(body) - len(body.translate(None, b",:[\n")) + 1


def parsed_json_bytes(body: bytes, values: int | None = None) -> int:
    """An upper estimate of the memory the parsed form of `body` takes (`values`: its
    `json_values_bound`, when known already)."""
    if values is None:
        values = json_values_bound(body)
    return PARSED_BYTES_PER_BYTE * len(body) + PARSED_BYTES_PER_VALUE * values


def too_many(count: int | str, cap: int, what: str = "events") -> Refused:
    return Refused(
        413, f"body holds {count} {what}; the limit is {cap} per request", "too_many_events"
    )


def count_array_items(body: bytes, cap: int, commas: int | None = None) -> int:
    """The items of a top-level JSON array, counted without building them; Refused past `cap`.

    A cheap bound first (commas, counted here unless given); only when it passes the cap are
    the items walked, one at a time with the stdlib scanner, stopping at cap + 1.
    """
    if commas is None:
        commas = body.count(b",")
    if commas < cap:
        return -1  # surely within the cap; orjson counts when it parses
    import json

    decoder = json.JSONDecoder()
    text = body.decode("utf-8", "replace")
    pos = text.index("[") + 1
    count = 0
    length = len(text)
    while True:
        while pos < length and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= length or text[pos] == "]":
            return count
        try:
            _, pos = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError):
            return count  # orjson names the error (or the nesting) when it parses
        count += 1
        if count > cap:
            raise too_many(f"more than {cap}", cap)


def count_ndjson_lines(body: bytes, cap: int) -> int:
    """The non-blank lines of an NDJSON body; Refused once they pass `cap`."""
    if body.count(b"\n") + body.count(b"\r") < cap:
        return -1
    count = 0
    for _ in _NDJSON_LINE.finditer(body):
        count += 1
        if count > cap:
            raise too_many(f"more than {cap}", cap)
    return count
