"""The processor's robustness and the stability of keys, measured with real role processes.

    .venv/bin/python -m tests.measure_robustness [--only NAME] [--throttle-s 100]

Each measurement starts from a fresh queue, DLQ and table on an in-process moto server, runs
the roles as subprocesses and prints one JSON object: what was sent, what was stored, what
reached the DLQ, whether the processor survived.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson

from logpipe.aws.bootstrap import bootstrap, queue_url
from logpipe.aws.clients import Clients, open_clients
from logpipe.dev.processes import EmbeddedAws, RoleProcess
from tests.support.aws import fresh_settings, queue_counts, scan_events, use_local_aws
from tests.support.roles import Roles
from tests.support.wait import poll

use_local_aws()


def event(n: int, **fields: Any) -> dict[str, Any]:
    base = {
        "id": f"ev-{n:08d}",
        "service": "svc",
        "level": "info",
        "message": f"event {n}",
        "timestamp": 1_790_000_000_000 + n,
        "ingested_at": 1_790_000_000_000,
    }
    return {**base, **fields}


def envelope(events: list[dict[str, Any]]) -> str:
    return orjson.dumps({"v": 1, "events": events}).decode()


class Run:
    """One measurement's resources and roles."""

    def __init__(self, endpoint: str, stack: AsyncExitStack, **overrides: Any) -> None:
        self.settings = fresh_settings(endpoint, prefix="m", receive_wait_s=1, **overrides)
        self.stack = stack

    async def start(self) -> None:
        self.clients: Clients = await open_clients(self.stack, self.settings, pool=10)
        await bootstrap(self.clients, self.settings)
        self.url = await queue_url(self.clients.sqs, self.settings.queue_name)
        self.dlq = await queue_url(self.clients.sqs, self.settings.dlq_name)
        self.http = await self.stack.enter_async_context(aiohttp.ClientSession())
        self.roles = Roles(self.settings, self.http, log_level="error")

    async def role(self, role: str, **env: str | int | float) -> RoleProcess:
        return await self.roles.start(role, **env)

    async def stop_all(self) -> None:
        await self.roles.stop_all(timeout=40)

    async def depth(self, url: str) -> tuple[int, int]:
        return await queue_counts(self.clients, url)

    async def items(self) -> list[dict[str, Any]]:
        return await scan_events(self.clients, self.settings.table_name)

    async def dlq_bodies(self) -> list[dict[str, Any]]:
        response = await self.clients.sqs.receive_message(
            QueueUrl=self.dlq,
            MaxNumberOfMessages=10,
            VisibilityTimeout=1,
            MessageAttributeNames=["All"],
        )
        return [
            {"body": m["Body"][:200], "attributes": m.get("MessageAttributes", {})}
            for m in response.get("Messages", [])
        ]

    async def send(self, body: str) -> None:
        await self.clients.sqs.send_message(QueueUrl=self.url, MessageBody=body)

    async def drained(self) -> bool:
        return await self.depth(self.url) == (0, 0)


async def bad_event(endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        run = Run(endpoint, stack, visibility_timeout_s=3)
        await run.start()
        body = envelope([event(0), event(1, ingested_at=1), event(2)])
        await run.send(body.replace('"ingested_at":1}', f'"ingested_at":{10**20}}}'))
        for m in range(5):
            await run.send(envelope([event(100 + m * 10 + n) for n in range(10)]))
        processor = await run.role("processor")
        await poll(run.drained, 60, interval=0.5)
        ids = {i["id"]["S"] for i in await run.items()}
        result = {
            "finding": "bad-event",
            "siblings_stored": len(ids & {"ev-00000000", "ev-00000002"}),
            "others_stored": len({i for i in ids if i >= "ev-00000100"}),
            "main_queue": await run.depth(run.url),
            "dlq": await run.depth(run.dlq),
            "dlq_sample": await run.dlq_bodies(),
            "processor_exit_code": processor.process.returncode,
        }
        await run.stop_all()
        return result


async def throttling(endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        run = Run(endpoint, stack, visibility_timeout_s=5)
        await run.start()
        for m in range(10):
            await run.send(envelope([event(m * 10 + n) for n in range(10)]))
        throttled = await run.role(
            "processor", LOGPIPE_FAULTS="ddb-throttle:1.0", LOGPIPE_DRAIN_SECONDS=10
        )
        await asyncio.sleep(args.throttle_s)
        code = await throttled.stop(timeout=40)
        await run.role("processor")
        await poll(run.drained, 60, interval=0.5)
        result = {
            "finding": "throttling",
            "throttle_window_s": args.throttle_s,
            "throttled_processor_exit": code,
            "stored": len(await run.items()),
            "dlq": await run.depth(run.dlq),
            "main_queue": await run.depth(run.url),
        }
        await run.stop_all()
        return result


async def client_retry(endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        run = Run(endpoint, stack)
        await run.start()
        await run.role("ingestor")
        await run.role("processor")
        ingest = f"http://127.0.0.1:{run.settings.port}/ingest"
        no_ts = [
            {"id": f"r-{n}", "service": "svc", "level": "info", "message": "m"} for n in range(50)
        ]
        for attempt in range(2):
            async with run.http.post(ingest, json=no_ts) as resp:
                assert resp.status == 202, await resp.text()
            if not attempt:
                await asyncio.sleep(1.5)
        otlp = {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "otel"}}]
                    },
                    "scopeLogs": [{"logRecords": [{"body": {"stringValue": "no time fields"}}]}],
                }
            ]
        }
        for attempt in range(2):
            async with run.http.post(
                f"http://127.0.0.1:{run.settings.port}/v1/logs", json=otlp
            ) as resp:
                assert resp.status == 200, await resp.text()
            if not attempt:
                await asyncio.sleep(1.5)
        number = {
            "id": "big",
            "service": "nums",
            "level": "info",
            "message": "m",
            "timestamp": 1_790_000_000_000,
            "attributes": {"n": 123456789012345678901234},
        }
        async with run.http.post(
            ingest,
            data=b'{"id":"big","service":"nums","level":"info","message":"m",'
            b'"timestamp":1790000000000,"attributes":{"n":123456789012345678901234,'
            b'"d":0.12345678901234567891}}',
            headers={"Content-Type": "application/json"},
        ) as resp:
            accepted = resp.status
        del number
        await asyncio.sleep(3)
        await poll(run.drained, 30, interval=0.5)
        items = await run.items()
        big = [i for i in items if i["id"]["S"] == "big"]
        result = {
            "finding": "client-retry",
            "id_without_timestamp_posted_twice_50_events": sum(
                i["service"]["S"] == "svc" for i in items
            ),
            "otlp_record_without_time_sent_twice": sum(i["service"]["S"] == "otel" for i in items),
            "big_number_status": accepted,
            "big_number_stored": big[0]["attributes"]["M"] if big else None,
        }
        await run.stop_all()
        return result


async def shards_change(endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        run = Run(endpoint, stack)
        await run.start()
        body = envelope([event(n) for n in range(40)])
        await run.send(body)
        first = await run.role("processor", LOGPIPE_SHARDS=8)
        await poll(run.drained, 30, interval=0.5)
        await first.stop()
        await asyncio.sleep(2)  # a long poll the stop abandoned must not take the next message
        await run.send(body)
        await run.role("processor", LOGPIPE_SHARDS=4)
        await poll(run.drained, 30, interval=0.5)
        items = await run.items()
        result = {
            "finding": "shards-change",
            "events": 40,
            "items": len(items),
            "partitions": sorted({i["pk"]["S"] for i in items}),
        }
        await run.stop_all()
        return result


async def heartbeat(endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        run = Run(endpoint, stack, visibility_timeout_s=1)
        await run.start()
        await run.send(envelope([event(0)]))
        for m in range(2):
            await run.send(
                envelope([event(1000 + m * 1500 + n, message="x" * 40) for n in range(1500)])
            )
        await run.role("processor", LOGPIPE_POLLERS=2, LOGPIPE_WRITE_CONCURRENCY=1)
        await poll(run.drained, 60, interval=0.5)
        async with run.http.get(f"http://127.0.0.1:{run.settings.metrics_port}/metrics") as resp:
            text = await resp.text()
        redelivered = [
            line
            for line in text.splitlines()
            if line.startswith("logpipe_messages_redelivered_total")
        ]
        result = {
            "finding": "heartbeat",
            "stored": len(await run.items()),
            "redelivered": redelivered,
        }
        await run.stop_all()
        return result


async def sigterm(endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        run = Run(endpoint, stack, visibility_timeout_s=60)
        await run.start()
        processor = await run.role("processor", LOGPIPE_RECEIVE_WAIT_S=20, LOGPIPE_POLLERS=2)
        await asyncio.sleep(2)  # both receivers in a long poll
        processor.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for m in range(2):
            await run.send(envelope([event(m * 10 + n) for n in range(10)]))
        code = await asyncio.wait_for(processor.process.wait(), 40)
        result = {
            "finding": "sigterm",
            "exit_code": code,
            "exit_s": round(time.monotonic() - started, 1),
            "stored": len(await run.items()),
            "queue_after_exit_visible_inflight": await run.depth(run.url),
        }
        await run.stop_all()
        return result


MEASUREMENTS = {
    "bad-event": bad_event,
    "throttling": throttling,
    "client-retry": client_retry,
    "shards-change": shards_change,
    "heartbeat": heartbeat,
    "sigterm": sigterm,
}


async def main(args: argparse.Namespace) -> None:
    aws = EmbeddedAws()
    endpoint = aws.start()
    try:
        for name, measure in MEASUREMENTS.items():
            if args.only and name not in args.only:
                continue
            print(orjson.dumps(await measure(endpoint, args)).decode(), flush=True)
    finally:
        aws.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--throttle-s", type=float, default=100.0)
    asyncio.run(main(parser.parse_args()))
