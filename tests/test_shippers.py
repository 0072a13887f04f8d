"""The payloads that loggers and shippers send by default, posted as they are, stored as sent.

Each body below is what the tool's documentation (or its source) says it sends with the
settings named, nothing reshaped: winston's Http transport, pino's default line, Fluent Bit's
`http` output (`Format json`), Vector's `http` sink (`encoding.codec = "json"`) and the
OpenTelemetry Collector's `otlphttp` exporter (protobuf, gzip).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import (
    LogRecord,
    ResourceLogs,
    ScopeLogs,
    SeverityNumber,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from logpipe.aws.clients import Clients
from logpipe.config import Settings
from tests.test_client import stored_events

pytestmark = pytest.mark.aws

T0_MS = 1_790_000_000_123  # 2026-09-21T14:13:20.123Z
T0_ISO = "2026-09-21T14:13:20.123Z"


@dataclass(frozen=True)
class Shipped:
    """One tool's default request and what must be stored from it."""

    path: str
    body: bytes
    headers: dict[str, str]
    status: int
    stored: list[dict[str, Any]] = field(default_factory=list)


def _collector_body() -> bytes:
    def kv(key: str, value: str) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(string_value=value))

    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(
                    attributes=[kv("service.name", "billing"), kv("host.name", "h3")]
                ),
                scope_logs=[
                    ScopeLogs(
                        log_records=[
                            LogRecord(
                                time_unix_nano=T0_MS * 1_000_000,
                                severity_number=SeverityNumber.SEVERITY_NUMBER_ERROR,
                                severity_text="ERROR",
                                body=AnyValue(string_value="invoice failed"),
                                attributes=[kv("invoice", "A-1")],
                            )
                        ]
                    )
                ],
            )
        ]
    )
    return gzip.compress(request.SerializeToString())


SHIPPERS = {
    # winston + transports.Http({path: "/ingest"}) with defaultMeta {service}: the info object.
    "winston": Shipped(
        "/ingest",
        orjson.dumps(
            {
                "level": "info",
                "message": "order placed",
                "service": "checkout",
                "hostname": "h1",
                "pid": 42,
            }
        ),
        {"Content-Type": "application/json"},
        202,
        [
            {
                "service": "checkout",
                "level": "info",
                "message": "order placed",
                "attributes": {"hostname": "h1", "pid": 42},
            }
        ],
    ),
    # pino's default line; the service comes from the URL.
    "pino": Shipped(
        "/ingest?service=checkout",
        orjson.dumps(
            {"level": 50, "time": T0_MS, "pid": 42, "hostname": "h1", "msg": "card declined"}
        )
        + b"\n",
        {"Content-Type": "application/x-ndjson"},
        202,
        [
            {
                "service": "checkout",
                "level": "error",
                "message": "card declined",
                "timestamp": T0_ISO,
                "attributes": {"pid": 42, "hostname": "h1"},
            }
        ],
    ),
    # Fluent Bit `http` output, Format json: an array; json_date_key `date`, format `double`.
    "fluent-bit": Shipped(
        "/ingest",
        orjson.dumps(
            [
                {"date": T0_MS / 1000, "log": "GET /health 200"},
                {
                    "date": T0_MS / 1000,
                    "log": "disk almost full",
                    "stream": "stderr",
                    "kubernetes": {"pod_name": "web-1", "labels": {"app": "web"}},
                },
            ]
        ),
        {"Content-Type": "application/json", "X-Logpipe-Service": "web"},
        202,
        [
            {"service": "web", "level": "info", "message": "GET /health 200", "timestamp": T0_ISO},
            {
                "service": "web",
                "level": "info",
                "message": "disk almost full",
                "timestamp": T0_ISO,
                "attributes": {
                    "stream": "stderr",
                    "kubernetes.pod_name": "web-1",
                    "kubernetes.labels.app": "web",
                },
            },
        ],
    ),
    # Vector `http` sink, codec json: a JSON array of log events from a `file` source.
    "vector": Shipped(
        "/ingest?service=api",
        orjson.dumps(
            [
                {
                    "file": "/var/log/api.log",
                    "host": "h2",
                    "message": "request served",
                    "source_type": "file",
                    "timestamp": "2026-09-21T14:13:20.123456789Z",
                }
            ]
        ),
        {"Content-Type": "application/json"},
        202,
        [
            {
                "service": "api",
                "level": "info",
                "message": "request served",
                "timestamp": T0_ISO,
                "attributes": {"file": "/var/log/api.log", "host": "h2", "source_type": "file"},
            }
        ],
    ),
    # OpenTelemetry Collector `otlphttp` exporter: protobuf to /v1/logs, gzip by default.
    "otel-collector": Shipped(
        "/v1/logs",
        _collector_body(),
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        200,
        [
            {
                "service": "billing",
                "level": "error",
                "message": "invoice failed",
                "timestamp": T0_ISO,
                "attributes": {"invoice": "A-1", "host.name": "h3"},
            }
        ],
    ),
}


@pytest.mark.parametrize("name", list(SHIPPERS))
async def test_default_payload_of_each_shipper_is_stored_as_sent(
    name: str,
    ingestor_url: str,
    http: aiohttp.ClientSession,
    clients: Clients,
    settings: Settings,
) -> None:
    shipped = SHIPPERS[name]
    async with http.post(
        ingestor_url + shipped.path, data=shipped.body, headers=shipped.headers
    ) as resp:
        text = await resp.text()
        assert resp.status == shipped.status, text
    if shipped.status == 202:
        assert orjson.loads(text) == {"accepted": len(shipped.stored), "rejected": []}

    events = await stored_events(clients, settings)
    got = sorted(
        ({k: e[k] for k in want if k in e} for e, want in _pairs(events, shipped.stored)),
        key=lambda e: e["message"],
    )
    assert got == sorted(shipped.stored, key=lambda e: e["message"])


def _pairs(
    events: list[dict[str, Any]], wanted: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    by_message = {e["message"]: e for e in events}
    assert len(events) == len(wanted), events
    return [(by_message.get(w["message"], {}), w) for w in wanted]


async def test_an_event_without_a_service_anywhere_is_rejected_by_index(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    body = orjson.dumps([{"msg": "no service"}, {"msg": "named", "service": "s"}])
    async with http.post(
        f"{ingestor_url}/ingest", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        answer = await resp.json()
    assert resp.status == 202
    assert answer["accepted"] == 1
    assert answer["rejected"][0]["index"] == 0
    assert "X-Logpipe-Service" in answer["rejected"][0]["error"]


async def test_query_parameter_wins_over_the_header(
    ingestor_url: str, http: aiohttp.ClientSession, clients: Clients, settings: Settings
) -> None:
    async with http.post(
        f"{ingestor_url}/ingest?service=from-query",
        data=b'{"msg": "x"}',
        headers={"Content-Type": "application/json", "X-Logpipe-Service": "from-header"},
    ) as resp:
        assert resp.status == 202
    [event] = await stored_events(clients, settings)
    assert event["service"] == "from-query"


async def test_too_many_fields_after_flattening_is_reported_for_that_event_only(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    wide = {"msg": "wide", "labels": {f"l{n}": n for n in range(65)}}
    body = orjson.dumps([wide, {"msg": "narrow"}])
    async with http.post(
        f"{ingestor_url}/ingest?service=s", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        answer = await resp.json()
    assert resp.status == 202
    assert answer["accepted"] == 1
    assert answer["rejected"] == [
        {"index": 0, "error": answer["rejected"][0]["error"]},
    ]
    assert "more than 64 keys" in answer["rejected"][0]["error"]
