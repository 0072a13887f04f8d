"""Bodies sent to the wrong route or with the wrong type get a 400 that says what to do."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from logpipe.core import otlp
from logpipe.errors import BodyError
from logpipe.ingest.app import NATIVE, parse_events
from tests.test_ingest_http import post
from tests.test_otlp import post_logs

JSON = "application/json"
NDJSON_LINES = b'{"service":"a","message":"one"}\n{"service":"a","message":"two"}\n'
OTLP_DOC = orjson.dumps(
    {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "hi"}}]}]}]}
)


def _no_hold(nbytes: int, what: str) -> None:
    pass


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"service":"checkout","message":"card declined"}', id="one-event"),
        pytest.param(b'[{"service":"checkout","message":"card declined"}]', id="array"),
        pytest.param(b'{"resourceSpans":[]}', id="traces-not-logs"),
    ],
)
def test_a_body_that_is_not_otlp_logs_is_refused_on_v1_logs_pointing_to_ingest(
    body: bytes,
) -> None:
    with pytest.raises(BodyError) as refused:
        otlp.parse(body, JSON)

    assert refused.value.status == 400
    assert "POST /ingest" in str(refused.value)


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [pytest.param(b"{}", id="empty-object"), pytest.param(b"", id="empty-body")],
)
def test_an_empty_otlp_request_is_still_an_empty_success(body: bytes) -> None:
    assert otlp.parse(body, JSON) == []


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(OTLP_DOC, id="camel-case"),
        pytest.param(b'{"resource_logs":[]}', id="proto-names"),
    ],
)
def test_an_otlp_body_on_ingest_is_refused_pointing_to_v1_logs(body: bytes) -> None:
    with pytest.raises(BodyError) as refused:
        NATIVE.parse(body, JSON, 100, _no_hold, None, {})

    assert refused.value.status == 400
    assert "POST /v1/logs" in str(refused.value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "hinted"),
    [
        pytest.param(NDJSON_LINES, True, id="ndjson-lines"),
        pytest.param(b'{"message":"one"}\r\n{"message":"two"}', True, id="crlf-lines"),
        pytest.param(b'{"message": "broken"', False, id="broken-json"),
        pytest.param(b'{"message":"one"}\nnot json', False, id="second-line-not-json"),
        pytest.param(b'{"message":"one"} {"message":"two"}', False, id="one-line"),
    ],
)
def test_ndjson_sent_as_json_is_refused_naming_the_ndjson_type(body: bytes, hinted: bool) -> None:
    with pytest.raises(BodyError) as refused:
        parse_events(body, ndjson=False)

    assert str(refused.value).startswith("body is not valid JSON")
    assert ("application/x-ndjson" in str(refused.value)) is hinted


@pytest.mark.aws
async def test_logpipe_json_posted_to_v1_logs_gets_400_not_a_silent_200(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    body = b'{"service":"checkout","message":"card declined"}'

    answer = await post_logs(http, ingestor_url, body, {"Content-Type": JSON})

    assert answer.status == 400
    assert "POST /ingest" in answer.status_message()


@pytest.mark.aws
async def test_otlp_json_posted_to_ingest_gets_400_pointing_to_v1_logs(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    status, answer = await post(http, ingestor_url, OTLP_DOC)

    assert status == 400
    assert "POST /v1/logs" in answer["error"]


@pytest.mark.aws
async def test_ndjson_posted_as_json_gets_400_naming_the_ndjson_type(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    status, answer = await post(http, ingestor_url, NDJSON_LINES)

    assert status == 400
    assert "Content-Type: application/x-ndjson" in answer["error"]


@pytest.mark.aws
async def test_otlp_trace_id_of_the_wrong_length_is_a_partial_success(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    records = [{"traceId": "abcd", "body": {"stringValue": "x"}}, {"body": {"stringValue": "y"}}]
    body = orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]})

    answer = await post_logs(http, ingestor_url, body, {"Content-Type": JSON})

    assert answer.status == 200
    partial = answer.response().partial_success
    assert partial.rejected_log_records == 1
    assert "record 0: trace_id must be 16 bytes (32 hex digits), got 2" in partial.error_message
