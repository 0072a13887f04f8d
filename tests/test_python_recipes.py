"""The Python recipes of docs/sending.md, each run as its own program against the ingestor: the
OpenTelemetry SDK with the logging bridge, zero-code `opentelemetry-instrument`, and
`LogpipeHandler` under structlog and under loguru."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from logpipe.aws.clients import Clients
from logpipe.config import Settings
from tests.test_client import stored_events

pytestmark = pytest.mark.e2e

COUNT = 50

# As in docs/sending.md ("OpenTelemetry SDKs": Python, with the SDK and the logging bridge).
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

# As in docs/sending.md ("Python: structlog"); the URL is the test's ingestor.
STRUCTLOG_APP = """
import logging
import structlog
from logpipe.client import LogpipeHandler

logging.getLogger().addHandler(LogpipeHandler("http://logpipe-ingestor:8080", service="checkout"))
logging.getLogger().setLevel(logging.INFO)
structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.filter_by_level,
        structlog.stdlib.render_to_log_kwargs,  # "event" -> message, other keys -> extra=
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)

log = structlog.get_logger("checkout").bind(user="u-7")
for n in range(COUNT):
    log.warning("card declined", order=n, amount=n / 4)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("payment failed", order=-1)
"""

# As in docs/sending.md ("Python: loguru").
LOGURU_APP = """
from loguru import logger
from logpipe.client import LogpipeHandler, loguru_sink

logger.add(loguru_sink(LogpipeHandler("http://logpipe-ingestor:8080", service="checkout")))

log = logger.bind(user="u-7")
for n in range(COUNT):
    log.warning("card declined for order {order}", order=n, amount=n / 4)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("payment failed")
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


async def run_recipe(app: str, tmp_path: Path, ingestor_url: str) -> None:
    program = tmp_path / "app.py"
    program.write_text(
        app.replace("COUNT", str(COUNT)).replace("http://logpipe-ingestor:8080", ingestor_url)
    )
    await run_python([sys.executable, str(program)], {})


def assert_structured_records(events: list[dict[str, Any]], message: str) -> None:
    """COUNT warnings with their fields as attributes, then one error with its traceback."""
    warnings = sorted(
        (e for e in events if e["level"] == "warn"), key=lambda e: e["attributes"]["order"]
    )
    assert [e["message"] for e in warnings] == [message.format(n=n) for n in range(COUNT)]
    for n, event in enumerate(warnings):
        assert event["service"] == "checkout"
        assert event["attributes"]["order"] == n
        assert event["attributes"]["amount"] == n / 4
        assert event["attributes"]["user"] == "u-7"
    [error] = [e for e in events if e["level"] == "error"]
    assert error["message"].startswith("payment failed\nTraceback (most recent call last):")
    assert error["message"].rstrip().endswith("ZeroDivisionError: division by zero")
    assert error["attributes"]["exception.type"] == "ZeroDivisionError"
    assert len(events) == COUNT + 1


async def test_structlog_renders_to_the_handler_with_its_fields_as_attributes(
    tmp_path: Path, ingestor_url: str, clients: Clients, settings: Settings
) -> None:
    await run_recipe(STRUCTLOG_APP, tmp_path, ingestor_url)

    events = await stored_events(clients, settings)
    assert_structured_records(events, "card declined")
    assert {e["attributes"]["logger.name"] for e in events} == {"checkout"}
    # The place of the call in the app, not in structlog.
    assert {e["attributes"]["code.file.path"] for e in events} == {str(tmp_path / "app.py")}


async def test_loguru_sink_keeps_the_message_clean_and_extra_as_attributes(
    tmp_path: Path, ingestor_url: str, clients: Clients, settings: Settings
) -> None:
    await run_recipe(LOGURU_APP, tmp_path, ingestor_url)

    events = await stored_events(clients, settings)
    # loguru's message alone: no "2026-… | WARNING | __main__:<module>:9 - " before it.
    assert_structured_records(events, "card declined for order {n}")
    assert {e["attributes"]["code.file.path"] for e in events} == {str(tmp_path / "app.py")}
    assert {e["attributes"]["code.function.name"] for e in events} == {"<module>"}


def test_the_docs_show_the_recipes_these_tests_run() -> None:
    root = Path(__file__).parent.parent
    sending = (root / "docs" / "sending.md").read_text()
    node = (Path(__file__).parent / "node" / "otel.js").read_text()
    assert "uvicorn --factory logpipe.asgi:ingestor" in (root / "CONTRIBUTING.md").read_text()
    for line in (
        "LoggingInstrumentor().instrument()",
        "provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))",
        "opentelemetry-instrument python app.py",
        "resource: detectResources({ detectors: [envDetector] }),",
        "processors: [new BatchLogRecordProcessor({ exporter: new OTLPLogExporter() })],",
        "Format           json",
        'encoding.codec = "json"',
    ):
        assert line in sending, line
    for app in (STRUCTLOG_APP, LOGURU_APP):
        for line in app.strip().splitlines():
            if line and "COUNT" not in line and "order=" not in line:
                assert line in sending, line
    assert "detectResources({ detectors: [envDetector] })" in node
    assert "LoggingInstrumentor().instrument()" in SDK_APP
