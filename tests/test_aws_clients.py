"""The clients go where stock botocore sends them, and refuse a damaged DynamoDB answer."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ChecksumError

from logpipe.aws.clients import (
    FALLBACK_REGION,
    _session,
    client_args,
    client_config,
    open_clients,
)
from logpipe.aws.errors import classify
from logpipe.config import Settings
from logpipe.dev.processes import role_env

pytestmark = pytest.mark.aws

# A port nothing listens on: a client sent there could not have reached moto.
NOWHERE = "http://127.0.0.1:9"
ENDPOINT_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def from_environment(settings: Settings) -> Settings:
    """The test's resources, with the endpoint left to the environment (as `from_env` does)."""
    return replace(settings, endpoint_url=Settings.from_env({}).endpoint_url)


@pytest.mark.parametrize("elsewhere", [NOWHERE, None], ids=["global-elsewhere", "global-unset"])
async def test_the_per_service_variable_sends_dynamodb_to_its_endpoint(
    settings: Settings, clean_env: pytest.MonkeyPatch, elsewhere: str | None
) -> None:
    assert settings.endpoint_url is not None
    clean_env.setenv("AWS_ENDPOINT_URL_DYNAMODB", settings.endpoint_url)
    if elsewhere is not None:
        clean_env.setenv("AWS_ENDPOINT_URL", elsewhere)
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, from_environment(settings), pool=2)
        assert clients.dynamodb.meta.endpoint_url == settings.endpoint_url
        table = await clients.dynamodb.describe_table(TableName=settings.table_name)
        assert table["Table"]["TableName"] == settings.table_name
        expected_sqs = elsewhere or "https://sqs.us-east-1.amazonaws.com"
        assert clients.sqs.meta.endpoint_url == expected_sqs


async def test_ignoring_configured_endpoints_sends_both_clients_to_aws(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", NOWHERE)
    clean_env.setenv("AWS_ENDPOINT_URL_DYNAMODB", NOWHERE)
    clean_env.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, Settings(region="eu-west-1"), pool=2)
        assert clients.dynamodb.meta.endpoint_url == "https://dynamodb.eu-west-1.amazonaws.com"
        assert clients.sqs.meta.endpoint_url == "https://sqs.eu-west-1.amazonaws.com"


async def test_an_endpoint_logpipe_chose_wins_over_the_variables(
    settings: Settings, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", NOWHERE)
    clean_env.setenv("AWS_ENDPOINT_URL_DYNAMODB", NOWHERE)
    clean_env.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, settings, pool=2)
        assert clients.dynamodb.meta.endpoint_url == settings.endpoint_url
        assert clients.sqs.meta.endpoint_url == settings.endpoint_url
        await clients.dynamodb.describe_table(TableName=settings.table_name)


def test_a_child_role_of_a_chosen_endpoint_reads_only_that_endpoint(
    settings: Settings, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL_DYNAMODB", NOWHERE)
    clean_env.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    env = role_env(settings)
    assert env["AWS_ENDPOINT_URL"] == settings.endpoint_url
    assert "AWS_ENDPOINT_URL_DYNAMODB" not in env
    assert "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS" not in env


async def test_the_profile_region_and_endpoint_are_botocores(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.write_text(
        "[profile edge]\nregion = ap-southeast-2\nservices = edge-services\n\n"
        f"[services edge-services]\ndynamodb =\n  endpoint_url = {NOWHERE}\n"
    )
    clean_env.setenv("AWS_CONFIG_FILE", str(config))
    clean_env.setenv("AWS_PROFILE", "edge")
    clean_env.delenv("AWS_REGION", raising=False)
    _session.cache_clear()  # the cached session read no profile
    try:
        settings = Settings.from_env({})
        async with AsyncExitStack() as stack:
            clients = await open_clients(stack, settings, pool=2)
            assert clients.dynamodb.meta.region_name == "ap-southeast-2"
            assert clients.dynamodb.meta.endpoint_url == NOWHERE
            assert clients.sqs.meta.endpoint_url == "https://sqs.ap-southeast-2.amazonaws.com"
    finally:
        _session.cache_clear()


async def test_without_any_region_the_clients_use_the_fallback(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    clean_env.delenv("AWS_REGION", raising=False)
    _session.cache_clear()
    try:
        async with AsyncExitStack() as stack:
            clients = await open_clients(stack, Settings.from_env({}), pool=2)
            assert clients.sqs.meta.region_name == FALLBACK_REGION
    finally:
        _session.cache_clear()


def corrupt_crc32(response_dict: dict[str, Any], **kwargs: Any) -> None:
    """A `before-parse` hook: the answer's checksum no longer matches its body."""
    headers = response_dict["headers"]
    assert "x-amz-crc32" in headers  # moto's server sends it, as DynamoDB does
    headers["x-amz-crc32"] = str((int(headers["x-amz-crc32"]) + 1) % 2**32)


def one_item(settings: Settings) -> dict[str, Any]:
    item = {"pk": {"S": "crc#1"}, "sk": {"S": "1"}, "v": {"S": "x"}}
    return {"RequestItems": {settings.table_name: [{"PutRequest": {"Item": item}}]}}


async def test_a_dynamodb_answer_with_a_wrong_crc32_is_a_retriable_error(
    settings: Settings,
) -> None:
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, settings, pool=2)
        await clients.dynamodb.batch_write_item(**one_item(settings))  # intact: accepted
        clients.dynamodb.meta.events.register_first(
            "before-parse.dynamodb.BatchWriteItem", corrupt_crc32
        )
        with pytest.raises(ChecksumError) as caught:
            await clients.dynamodb.batch_write_item(**one_item(settings))
        assert "crc32" in str(caught.value)
        assert classify(caught.value).retriable


async def test_standard_mode_with_one_attempt_would_accept_the_damaged_answer(
    settings: Settings,
) -> None:
    """Why client_config chooses legacy mode: if this fails, botocore's standard mode checks
    the checksum itself now, and the choice can be revisited."""
    config = client_config(2).merge(
        type(client_config(2))(retries={"total_max_attempts": 1, "mode": "standard"})
    )
    session = _session(settings.region)
    async with session.client("dynamodb", config=config, **client_args(settings)) as dynamodb:
        dynamodb.meta.events.register_first("before-parse.dynamodb.BatchWriteItem", corrupt_crc32)
        answer = await dynamodb.batch_write_item(**one_item(settings))
        assert answer["UnprocessedItems"] == {}
