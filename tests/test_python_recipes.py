"""The README's Python OpenTelemetry recipes, each run as its own program against the ingestor:
the SDK with the logging bridge, and zero-code `opentelemetry-instrument`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from logpipe.aws.clients import Clients
from logpipe.config import Settings
from tests.test_client import stored_events

pytestmark = pytest.mark.e2e

COUNT = 50

# As in the README ("Python, with the SDK and the logging bridge").
SDK_APP = """
import logging
from opentelemetry import trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.instrumentation.logging import LoggingInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

provider = LoggerProvider()  # service.name from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
set_logger_provider(provider)
LoggingInstrumentor().instrument()  # stdlib logging -> OTLP, from here on
trace.set_tracer_provider(TracerProvider())

log = logging.getLogger("checkout")
with trace.get_tracer("checkout").start_as_current_span("pay"):
    for n in range(COUNT):
        log.warning("card declined %d", n, extra={"order": n})
"""

# Zero-code: an app that only uses `logging`, started by `opentelemetry-instrument`.
PLAIN_APP = """
import logging
for n in range(COUNT):
    logging.getLogger("checkout").error("card declined %d", n)
"""

OTEL_ENV = {
    "OTEL_SERVICE_NAME": "checkout",
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf",
}


async def run_python(command: list[str], env: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode()


async def test_python_sdk_with_the_logging_bridge(
    tmp_path: Path, ingestor_url: str, clients: Clients, settings: Settings
) -> None:
    app = tmp_path / "app.py"
    app.write_text(SDK_APP.replace("COUNT", str(COUNT)))
    env = {**OTEL_ENV, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"{ingestor_url}/v1/logs"}
    await run_python([sys.executable, str(app)], env)

    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == sorted(
        f"card declined {n}" for n in range(COUNT)
    )
    assert {(e["service"], e["level"]) for e in events} == {("checkout", "warn")}
    assert {e["attributes"]["order"] for e in events} == set(range(COUNT))
    assert len({e["trace_id"] for e in events}) == 1  # all inside the one span


async def test_python_zero_code_instrumentation(
    tmp_path: Path, ingestor_url: str, clients: Clients, settings: Settings
) -> None:
    app = tmp_path / "app.py"
    app.write_text(PLAIN_APP.replace("COUNT", str(COUNT)))
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    env = {
        **OTEL_ENV,
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"{ingestor_url}/v1/logs",
    }
    await run_python([str(instrument), sys.executable, str(app)], env)

    events = await stored_events(clients, settings)
    assert sorted(e["message"] for e in events) == sorted(
        f"card declined {n}" for n in range(COUNT)
    )
    assert {(e["service"], e["level"]) for e in events} == {("checkout", "error")}


def test_readme_shows_the_recipes_these_tests_run() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    node = (Path(__file__).parent / "node" / "otel.js").read_text()
    for line in (
        "LoggingInstrumentor().instrument()",
        "provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))",
        "opentelemetry-instrument python app.py",
        "resource: detectResources({ detectors: [envDetector] }),",
        "processors: [new BatchLogRecordProcessor({ exporter: new OTLPLogExporter() })],",
        "uvicorn --factory logpipe.asgi:ingestor",
        "Format           json",
        'encoding.codec = "json"',
    ):
        assert line in readme, line
    assert "detectResources({ detectors: [envDetector] })" in node
    assert "LoggingInstrumentor().instrument()" in SDK_APP
