"""Generated bodies and headers against the real /ingest: never a 5xx, never an unhealthy server.

CI runs a bounded number of examples; LOGPIPE_FUZZ_EXAMPLES=10000 runs a long campaign.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.aws

EXAMPLES = int(os.environ.get("LOGPIPE_FUZZ_EXAMPLES", "150"))
ALLOWED = {202, 400, 401, 413, 415, 429}
FIELDS = ("id", "service", "level", "message", "timestamp", "trace_id", "span_id", "attributes")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
events = st.fixed_dictionaries(
    {},
    optional={name: json_values | st.text(max_size=80) for name in FIELDS}
    | {
        "service": st.sampled_from(["svc", "API", "bad service", ""]),
        "level": st.sampled_from(["info", "WARNING", "loud", ""]),
    },
)


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


bodies = st.one_of(
    events.map(_json),
    st.lists(events, max_size=20).map(_json),
    json_values.map(_json),
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=20, max_value=400).map(lambda n: b'{"timestamp": ' + b"9" * n + b"}"),
    st.lists(st.one_of(events.map(_json), st.binary(max_size=40)), max_size=10).map(
        lambda lines: b"\n".join(lines)
    ),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/x-ndjson",
        "application/json; charset=utf-8",
        "text/plain",
        "",
        "application/x-protobuf",
        "multipart/form-data; boundary=x",
    ]
)
encodings = st.sampled_from(["", "gzip", "identity", "br", "gzip, deflate"])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=bodies,
    content_type=content_types,
    encoding=encodings,
    zipped=st.booleans(),
    auth=st.sampled_from([None, "Bearer x", "", "Basic abc"]),
)
async def test_ingest_never_answers_5xx_to_generated_input(
    ingestor_url: str,
    http: aiohttp.ClientSession,
    body: bytes,
    content_type: str,
    encoding: str,
    zipped: bool,
    auth: str | None,
) -> None:
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
        if zipped and encoding == "gzip":
            body = gzip.compress(body)
    if auth is not None:
        headers["Authorization"] = auth
    async with http.post(f"{ingestor_url}/ingest", data=body, headers=headers) as resp:
        answer = await resp.read()
        assert resp.status in ALLOWED, (resp.status, answer[:300])
        doc = orjson.loads(answer)
        assert "error" in doc or "accepted" in doc
    async with http.get(f"{ingestor_url}/healthz") as resp:
        assert resp.status == 200
