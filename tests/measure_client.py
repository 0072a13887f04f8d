"""The Python client against a bad server, each case a client program run as a process of its own.

    .venv/bin/python -m tests.measure_client [--only NAME] [--before]

Prints one JSON object per case: how long the program took, what it reported (its stats,
any error, its peak RSS from getrusage) and what the server received. `--before` leaves out
the arguments the clients gained with issue 26, to measure the code as it was, e.g. with
`git archive main logpipe | tar -x -C /tmp/old && PYTHONPATH=/tmp/old ... --before`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from tests.support.hostile import (
    ASYNC_CLIENT,
    CLIENT_FLUSH,
    HANDLER_FLOOD,
    HANDLER_FLUSH,
    Hostile,
    dead_url,
    run_program,
)
from tests.support.wait import poll

# Logs one record and then idles: the record must leave on the handler's own.
ONE_RECORD = """
import logging, sys, time
from logpipe.client import LogpipeHandler
log = logging.getLogger("app")
log.addHandler(LogpipeHandler(sys.argv[1], "app"))
log.warning("only record")
print("logged", flush=True)
time.sleep(600)
"""

# '³' (a digit to str.isdigit) as UTF-8, which aiohttp reads as '³', then as Latin-1, which
# http.client reads as '³'.
UNICODE_DIGITS = ("³".encode(), "³".encode("latin-1"))
BEFORE = {", report_interval_s=1": "", ", timeout_s=timeout)": ")"}


def program(text: str, before: bool) -> str:
    for new, old in BEFORE.items():
        text = text.replace(new, old) if before else text
    return text


async def first_record_delay(before: bool) -> dict[str, Any]:
    async with Hostile("ok") as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            program(ONE_RECORD, before),
            server.url,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        await process.stdout.readline()
        logged = time.monotonic()

        async def arrived() -> bool:
            return bool(server.events)

        came = await poll(arrived, timeout=20, interval=0.01)
        delay = time.monotonic() - logged
        process.kill()
        await process.wait()
    return {"arrived": came, "seconds": round(delay, 2)}


async def client_case(mode: str, code: str, before: bool, **kw: Any) -> dict[str, Any]:
    async with Hostile(mode, **kw) as server:
        started = time.monotonic()
        try:
            result, err, rc = await run_program(
                program(code, before), server.url, 10, 5, 2, timeout=120
            )
        except TimeoutError:
            result, err, rc = None, "still running after 120 s: killed", -9
        return {
            "wall_s": round(time.monotonic() - started, 1),
            "rc": rc,
            "program": result,
            "received": len(server.events),
            "requests": server.requests,
            "streamed_mb": round(server.streamed / 1e6, 1),
            "stderr": err[-300:],
        }


async def flood(before: bool) -> dict[str, Any]:
    started = time.monotonic()
    result, err, rc = await run_program(
        program(HANDLER_FLOOD, before), dead_url(), 20_000, 31_000, timeout=300
    )
    return {
        "wall_s": round(time.monotonic() - started, 1),
        "rc": rc,
        "program": result,
        "stderr": err[-300:],
    }


CASES = {
    "first-record": lambda b: first_record_delay(b),
    "retry-after-unicode-client": lambda b: client_case(
        "retry-after", CLIENT_FLUSH, b, retry_after=UNICODE_DIGITS
    ),
    "retry-after-unicode-async": lambda b: client_case(
        "retry-after", ASYNC_CLIENT, b, retry_after=UNICODE_DIGITS
    ),
    "retry-after-unicode-handler": lambda b: client_case(
        "retry-after", HANDLER_FLUSH, b, retry_after=UNICODE_DIGITS
    ),
    "huge-body-client": lambda b: client_case("huge", CLIENT_FLUSH, b),
    "huge-body-handler": lambda b: client_case("huge", HANDLER_FLUSH, b),
    "drip-handler": lambda b: client_case("drip", HANDLER_FLUSH, b),
    "huge-body-async": lambda b: client_case("huge", ASYNC_CLIENT, b),
    "drip-client": lambda b: client_case("drip", CLIENT_FLUSH, b),
    "drip-async": lambda b: client_case("drip", ASYNC_CLIENT, b),
    "dead-endpoint-flood": lambda b: flood(b),
}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", action="append", choices=sorted(CASES))
    parser.add_argument("--before", action="store_true")
    args = parser.parse_args()
    for name in args.only or CASES:
        figures = await CASES[name](args.before)
        print(orjson.dumps({"case": name, **figures}).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
