"""Simulated services: service-a (an HTTP API) and service-b (a job worker)."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from contextlib import AsyncExitStack
from dataclasses import asdict
from typing import Any

import aiohttp
import orjson

from logpipe.client import Shipper, ShipStats
from logpipe.config import Settings
from logpipe.core.event import new_id
from logpipe.lifecycle import run_until_signalled, stop_signals
from logpipe.obs import metrics
from logpipe.obs.emf import EmfReporter
from logpipe.obs.metrics import serve_metrics

log = logging.getLogger(__name__)

SHIP_CONCURRENCY = 4

_ROUTES = (
    ("GET", "/api/orders", 0.30),
    ("GET", "/api/orders/{id}", 0.25),
    ("POST", "/api/orders", 0.10),
    ("GET", "/api/users/{id}", 0.15),
    ("PUT", "/api/users/{id}", 0.05),
    ("GET", "/api/search", 0.10),
    ("DELETE", "/api/orders/{id}", 0.05),
)
_STATUSES = (
    (200, 0.80),
    (201, 0.04),
    (304, 0.04),
    (400, 0.03),
    (401, 0.02),
    (404, 0.04),
    (429, 0.01),
    (500, 0.015),
    (503, 0.005),
)
_JOBS = ("send-email", "resize-image", "generate-report", "sync-inventory", "charge-card")
_FAILURES = (
    "TimeoutError: upstream did not answer in 30s",
    "ConnectionResetError: peer reset",
    "ValueError: invalid payload",
    "KeyError: 'customer_id'",
)


def _pick(choices: tuple[tuple[Any, float], ...]) -> Any:
    values, weights = zip(*choices, strict=True)
    return random.choices(values, weights)[0]


def _trace() -> dict[str, str]:
    return {"trace_id": secrets.token_hex(16), "span_id": secrets.token_hex(8)}


def service_a_event(now_ms: int) -> dict[str, Any]:
    """One access-log line of an HTTP API: route, status, latency, trace ids."""
    method, route = _pick(tuple(((m, r), w) for m, r, w in _ROUTES))
    status = _pick(_STATUSES)
    duration_ms = round(random.lognormvariate(3.0, 0.8), 1) * (8 if status >= 500 else 1)
    level = "error" if status >= 500 else "warn" if status >= 400 else "info"
    if level == "info" and random.random() < 0.1:
        level = "debug"
    path = route.replace("{id}", str(random.randint(1, 99999)))
    return {
        "id": new_id(now_ms),
        "service": "service-a",
        "level": level,
        "timestamp": now_ms,
        "message": f"{method} {path} {status} {duration_ms}ms",
        **_trace(),
        "attributes": {
            "http.method": method,
            "http.route": route,
            "http.status_code": status,
            "duration_ms": duration_ms,
            "client.address": f"10.0.{random.randint(0, 255)}.{random.randint(1, 254)}",
        },
    }


def service_b_event(now_ms: int) -> dict[str, Any]:
    """One line of a background worker: jobs starting, finishing, retrying, failing."""
    job = random.choice(_JOBS)
    job_id = f"job-{random.randint(1, 10**7)}"
    attempt = 1
    roll = random.random()
    attributes: dict[str, Any] = {"job.type": job, "job.id": job_id, "queue": "default"}
    if roll < 0.25:
        level, message = "debug", f"picked up {job} {job_id}"
    elif roll < 0.85:
        duration_ms = round(random.lognormvariate(5.5, 0.9), 1)
        level, message = "info", f"finished {job} {job_id} in {duration_ms}ms"
        attributes["duration_ms"] = duration_ms
    elif roll < 0.95:
        attempt = random.randint(2, 5)
        level, message = "warn", f"retrying {job} {job_id} (attempt {attempt}): upstream timeout"
    elif roll < 0.999:
        attempt = 5
        level, message = "error", f"gave up on {job} {job_id}: {random.choice(_FAILURES)}"
    else:
        level, message = "fatal", "worker lost its database connection; exiting"
    attributes["attempt"] = attempt
    return {
        "id": new_id(now_ms),
        "service": "service-b",
        "level": level,
        "timestamp": now_ms,
        "message": message,
        **_trace(),
        "attributes": attributes,
    }


GENERATORS = {"service-a": service_a_event, "service-b": service_b_event}


class Emitter:
    """Generates one simulated service's events at a rate and ships them in batches."""

    def __init__(self, settings: Settings, shipper: Shipper) -> None:
        self._settings = settings
        self._shipper = shipper
        self._generate = GENERATORS[settings.emitter_service]
        self._stopping = asyncio.Event()

    @property
    def stats(self) -> ShipStats:
        return self._shipper.stats

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Emit until stopped or `emitter_events` are shipped; wait for in-flight batches."""
        rate, limit, batch = (
            self._settings.emitter_rate,
            self._settings.emitter_events,
            self._settings.emitter_batch,
        )
        slots = asyncio.Semaphore(SHIP_CONCURRENCY)
        tasks: set[asyncio.Task[None]] = set()
        label = self._settings.emitter_service
        started = time.monotonic()
        made = 0
        while not self._stopping.is_set() and (limit == 0 or made < limit):
            size = batch if rate <= 0 else max(1, min(batch, int(rate / 10)))
            if limit:
                size = min(size, limit - made)
            if rate > 0:
                ahead = started + made / rate - time.monotonic()
                if ahead > 0:
                    try:
                        await asyncio.wait_for(self._stopping.wait(), ahead)
                        break
                    except TimeoutError:
                        pass
            now_ms = int(time.time() * 1000)
            events = [self._generate(now_ms) for _ in range(size)]
            made += size
            await slots.acquire()
            task = asyncio.create_task(self._ship(events, label))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: slots.release())
        if tasks:
            await asyncio.gather(*tasks)

    async def _ship(self, events: list[dict[str, Any]], label: str) -> None:
        accepted = await self._shipper.ship(events)
        metrics.emitter_events_sent.labels(label).inc(len(events))
        metrics.emitter_events_accepted.labels(label).inc(accepted)


def summary(service: str, stats: ShipStats) -> bytes:
    return orjson.dumps({"service": service, **asdict(stats)})


async def serve(settings: Settings) -> int:
    """The emitter role: ship simulated events until stopped or done; summary on stdout."""
    api_key = settings.api_keys[0] if settings.api_keys else None
    timeout = aiohttp.ClientTimeout(total=30)
    with stop_signals() as stopping:
        port, stop_metrics = serve_metrics(settings.host, settings.metrics_port)
        try:
            async with AsyncExitStack() as stack:
                if settings.emf:
                    await stack.enter_async_context(EmfReporter("emitter", settings.emf_interval_s))
                session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
                emitter = Emitter(settings, Shipper(session, settings.ingestor_url, api_key))
                log.info(
                    "emitting %s at %s events/s to %s; metrics on port %d",
                    settings.emitter_service,
                    settings.emitter_rate or "max",
                    settings.ingestor_url,
                    port,
                )
                code = await run_until_signalled(
                    emitter.run, emitter.stop, settings.drain_seconds, stopping
                )
        finally:
            stop_metrics()
    print(summary(settings.emitter_service, emitter.stats).decode(), flush=True)
    return code
