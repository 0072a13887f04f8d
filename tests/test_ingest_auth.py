"""POST /ingest when LOGPIPE_API_KEYS is set: a Bearer key is required, probes stay open."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
import pytest

from logpipe.aws.clients import Clients
from logpipe.config import Settings
from tests.support.aws import make_event
from tests.support.wait import wait_until

pytestmark = pytest.mark.aws

KEYS = ("secret-key-1", "secret-key-2")


@pytest.fixture
async def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, api_keys=KEYS)


async def post(
    http: aiohttp.ClientSession, url: str, headers: Mapping[str, str]
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    async with http.post(
        f"{url}/ingest", data=orjson.dumps(make_event(0)), headers=headers
    ) as response:
        assert response.content_type == "application/json"
        return response, await response.json()


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-authorization"),
        pytest.param({"Authorization": "Bearer not-the-key"}, id="wrong-key"),
        pytest.param({"Authorization": "Bearer secret-key-1x"}, id="key-with-extra-char"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
        pytest.param({"Authorization": "Basic secret-key-1"}, id="basic-scheme"),
        pytest.param({"Authorization": "secret-key-1"}, id="no-scheme"),
    ],
)
async def test_missing_or_wrong_key_gets_401_with_a_bearer_challenge(
    headers: dict[str, str], ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    response, body = await post(http, ingestor_url, {"Content-Type": "application/json", **headers})

    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "API key" in body["error"]
    async with http.get(f"{ingestor_url}/healthz") as health:
        assert health.status == 200


async def test_key_is_checked_before_the_body_is_judged(
    ingestor_url: str, http: aiohttp.ClientSession
) -> None:
    response, _ = await post(
        http, ingestor_url, {"Content-Type": "text/plain", "Authorization": "Bearer nope-nope"}
    )

    assert response.status == 401


@pytest.mark.parametrize("key", KEYS)
async def test_any_configured_key_is_accepted_and_the_event_reaches_sqs(
    key: str,
    ingestor_url: str,
    http: aiohttp.ClientSession,
    clients: Clients,
    settings: Settings,
) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    response, body = await post(http, ingestor_url, headers)

    assert (response.status, body) == (202, {"accepted": 1, "rejected": []})
    url = (await clients.sqs.get_queue_url(QueueName=settings.queue_name))["QueueUrl"]
    received: list[str] = []

    async def arrived() -> bool:
        answer = await clients.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
        for message in answer.get("Messages", []):
            received.extend(e["id"] for e in orjson.loads(message["Body"])["events"])
        return bool(received)

    await wait_until(arrived, timeout=10)
    assert received == ["ev-00000000"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_without_a_key(
    path: str, ingestor_url: str, http: aiohttp.ClientSession, settings: Settings
) -> None:
    base = ingestor_url if path == "/healthz" else f"http://127.0.0.1:{settings.metrics_port}"
    async with http.get(f"{base}{path}") as response:
        assert response.status == 200
