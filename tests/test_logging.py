"""The pipeline's own logs: one JSON object per line, the configured level, no event content."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from logpipe.aws.bootstrap import queue_url
from logpipe.aws.clients import Clients
from logpipe.cli import JsonFormatter
from logpipe.config import Settings
from logpipe.core.envelope import pack_envelope
from logpipe.core.event import encode_event, normalise
from logpipe.dev.processes import RoleProcess, wait_http
from tests.support.aws import make_event, scan_events
from tests.support.roles import Roles
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

SECRET = "card 4111-1111-1111-1111"


def _record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {
            "name": "logpipe.process.processor",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "gave up on %d items",
            "args": (3,),
        }
    )
    record.__dict__.update(extra)
    return record


def test_a_log_line_is_one_json_object_with_time_level_role_and_context() -> None:
    line = JsonFormatter("processor").format(_record(reason="Throttling", items=3))
    doc = orjson.loads(line)
    assert "\n" not in line
    assert doc["level"] == "warning"
    assert doc["role"] == "processor"
    assert doc["message"] == "gave up on 3 items"
    assert doc["context"] == {"reason": "Throttling", "items": 3}
    assert doc["time"].endswith("+00:00")


def test_a_line_without_extra_has_no_context() -> None:
    assert "context" not in orjson.loads(JsonFormatter("ingestor").format(_record()))


async def test_role_log_lines_are_json_and_respect_the_level(
    roles: Roles, clients: Clients, settings: Settings, tmp_path: Path
) -> None:
    log_path = tmp_path / "processor.log"
    url = await queue_url(clients.sqs, settings.queue_name)
    event = encode_event(normalise(make_event(1, message=SECRET), now_ms=1))
    await clients.sqs.send_message(QueueUrl=url, MessageBody=pack_envelope([event]))
    await clients.sqs.send_message(QueueUrl=url, MessageBody=f"not an envelope: {SECRET}")
    with log_path.open("wb") as log_file:
        process = await RoleProcess.start(
            "processor", roles.env(LOGPIPE_LOG_LEVEL="info"), log_file=log_file
        )
        try:

            async def stored() -> bool:
                return len(await scan_events(clients, settings.table_name)) == 1

            await wait_until(stored, timeout=30)
        finally:
            assert await process.stop() == 0
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    assert lines and all({"time", "level", "role", "message"} <= doc.keys() for doc in lines)
    assert {doc["role"] for doc in lines} == {"processor"}
    assert any(doc["level"] == "info" for doc in lines)
    assert any("undecodable" in doc["message"] for doc in lines)
    assert SECRET not in log_path.read_text()

    quiet_path = tmp_path / "quiet.log"
    with quiet_path.open("wb") as log_file:
        process = await RoleProcess.start(
            "processor", roles.env(LOGPIPE_LOG_LEVEL="error"), log_file=log_file
        )
        await wait_http(roles.session, f"http://127.0.0.1:{settings.metrics_port}/metrics")
        assert await process.stop() == 0
    assert not any(
        orjson.loads(line)["level"] in ("info", "warning")
        for line in quiet_path.read_bytes().splitlines()
    )
