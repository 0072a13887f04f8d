"""Settings.from_env: DESIGN.md's defaults, every variable read, bad values refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from logpipe.config import NO_VARIABLE, Settings, variable
from logpipe.errors import ConfigError

pytestmark = pytest.mark.unit

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_those_of_the_design() -> None:
    settings = Settings.from_env({})

    assert settings.queue_name == "logpipe-events"
    assert settings.dlq_name == "logpipe-events-dlq"
    assert settings.table_name == "logpipe-logs"
    assert settings.port == 8080
    assert settings.metrics_port == 9100
    assert settings.retention_days == 30
    assert settings.shards == 2
    assert settings.sqs_max_bytes == 262144
    assert settings.api_keys == ()
    assert settings.endpoint_url is None


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("AWS_REGION", "eu-west-1", "region", "eu-west-1"),
        ("LOGPIPE_QUEUE_NAME", "prod-events", "queue_name", "prod-events"),
        ("LOGPIPE_DLQ_NAME", "prod-events-dlq", "dlq_name", "prod-events-dlq"),
        ("LOGPIPE_TABLE_NAME", "prod.logs_v2", "table_name", "prod.logs_v2"),
        ("LOGPIPE_PORT", "9000", "port", 9000),
        ("LOGPIPE_PORT", " 9001 ", "port", 9001),
        ("LOGPIPE_METRICS_PORT", "9200", "metrics_port", 9200),
        ("LOGPIPE_API_KEYS", "key-one-1,key-two-22", "api_keys", ("key-one-1", "key-two-22")),
        ("LOGPIPE_API_KEYS", " key-one-1 , ,key-two-22,", "api_keys", ("key-one-1", "key-two-22")),
        ("LOGPIPE_INGESTOR_URL", "http://ingestor:8080/", "ingestor_url", "http://ingestor:8080"),
        ("LOGPIPE_RETENTION_DAYS", "7", "retention_days", 7),
        ("LOGPIPE_LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("LOGPIPE_LOG_LEVEL", "warn", "log_level", "warning"),
        ("LOGPIPE_SHARDS", "16", "shards", 16),
        ("LOGPIPE_SQS_MAX_BYTES", "1048576", "sqs_max_bytes", 1048576),
        ("LOGPIPE_LINGER_MS", "0", "linger_ms", 0),
        ("LOGPIPE_HOST", "127.0.0.1", "host", "127.0.0.1"),
        ("LOGPIPE_EMITTER_SERVICE", "service-b", "emitter_service", "service-b"),
        ("LOGPIPE_EMITTER_RATE", "2.5", "emitter_rate", 2.5),
        ("LOGPIPE_DRAIN_SECONDS", "10", "drain_seconds", 10.0),
        (
            "LOGPIPE_CONSOLE_URL",
            "https://logs.example.com/",
            "console_url",
            "https://logs.example.com",
        ),
        ("LOGPIPE_READ_KEY", " read-key-123 ", "read_key", "read-key-123"),
    ],
    ids=[
        "region",
        "queue-name",
        "dlq-name",
        "table-name",
        "port",
        "port-with-spaces",
        "metrics-port",
        "api-keys",
        "api-keys-blanks-dropped",
        "ingestor-url",
        "retention-days",
        "log-level-upper-case",
        "log-level-warn-alias",
        "shards",
        "sqs-max-bytes-1-mib",
        "linger-ms",
        "host",
        "emitter-service",
        "emitter-rate",
        "drain-seconds",
        "console-url",
        "read-key",
    ],
)
def test_each_variable_is_read(variable: str, value: str, attribute: str, expected: object) -> None:
    settings = Settings.from_env({variable: value})

    assert getattr(settings, attribute) == expected


def test_aws_region_wins_over_aws_default_region() -> None:
    settings = Settings.from_env({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"})

    assert settings.region == "eu-west-1"


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}, id="endpoint-url"),
        pytest.param({"AWS_ENDPOINT_URL_DYNAMODB": "https://vpce.example.com/"}, id="per-service"),
        pytest.param({"AWS_DEFAULT_REGION": "eu-central-1"}, id="default-region"),
    ],
)
def test_the_endpoint_and_region_variables_are_left_to_botocore(env: dict[str, str]) -> None:
    """botocore reads them itself (with the per-service URLs, the profile's endpoint and
    region, AWS_IGNORE_CONFIGURED_ENDPOINT_URLS): nothing passed explicitly overrides them."""
    settings = Settings.from_env(env)
    assert (settings.endpoint_url, settings.region) == (None, None)


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB"])
def test_a_bad_per_service_endpoint_fails_at_start_naming_it(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable} must be an http"):
        Settings.from_env({variable: "not-a-url"})


@pytest.mark.parametrize(
    "variable", ["LOGPIPE_PORT", "LOGPIPE_SHARDS", "LOGPIPE_QUEUE_NAME", "AWS_ENDPOINT_URL"]
)
def test_blank_value_means_the_default(variable: str) -> None:
    assert Settings.from_env({variable: "  "}) == Settings.from_env({})


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("LOGPIPE_PORT", "abc", "must be an integer 1-65535, got 'abc'"),
        ("LOGPIPE_PORT", "70000", "must be an integer 1-65535, got '70000'"),
        ("LOGPIPE_PORT", "0", "got '0'"),
        ("LOGPIPE_SHARDS", "0", "got '0'"),
        ("LOGPIPE_RETENTION_DAYS", "-1", "got '-1'"),
        ("LOGPIPE_LOG_LEVEL", "loud", "got 'loud'"),
        ("AWS_ENDPOINT_URL", "not-a-url", "must be an http(s) URL, got 'not-a-url'"),
        ("LOGPIPE_INGESTOR_URL", "ftp://host", "got 'ftp://host'"),
        ("LOGPIPE_SQS_MAX_BYTES", "2000000", "got '2000000'"),
        ("LOGPIPE_API_KEYS", "good-key-1,abc", "at least 8 characters"),
        ("LOGPIPE_QUEUE_NAME", "my queue", "got 'my queue'"),
        ("LOGPIPE_TABLE_NAME", "logs/prod", "got 'logs/prod'"),
        ("LOGPIPE_EMITTER_RATE", "fast", "got 'fast'"),
        ("LOGPIPE_CONSOLE_URL", "console:8081", "must be an http(s) URL, got 'console:8081'"),
        ("LOGPIPE_READ_KEY", "short", "one key of at least 8 printable ASCII characters"),
        ("LOGPIPE_READ_KEY", "key-one-1,key-two-2", "no comma"),
    ],
    ids=[
        "port-not-integer",
        "port-above-65535",
        "port-zero",
        "shards-zero",
        "retention-negative",
        "log-level-unknown",
        "endpoint-not-a-url",
        "ingestor-url-not-http",
        "sqs-max-bytes-above-1-mib",
        "api-key-3-chars",
        "queue-name-with-space",
        "table-name-with-slash",
        "emitter-rate-not-number",
        "console-url-not-a-url",
        "read-key-too-short",
        "read-key-two-keys",
    ],
)
def test_bad_value_raises_config_error_naming_the_variable(
    variable: str, value: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})

    message = str(caught.value)
    assert message.startswith(variable)
    assert fragment in message
    assert "\n" not in message


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m logpipe ARGS` with the test's environment plus `env`, no ROLE or LOGPIPE_*."""
    base = {k: v for k, v in os.environ.items() if k != "ROLE" and not k.startswith("LOGPIPE_")}
    return subprocess.run(
        [sys.executable, "-m", "logpipe", *args],
        env={**base, **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_turns_a_bad_value_into_one_stderr_line_and_exit_code_2() -> None:
    result = run_cli("processor", LOGPIPE_PORT="abc")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "LOGPIPE_PORT" in lines[0]
    assert "'abc'" in lines[0]


def test_cli_unknown_role_without_command_gives_one_line_and_exit_code_2() -> None:
    result = run_cli(ROLE="nonsense")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "ROLE" in lines[0]
    assert "'nonsense'" in lines[0]


class _Reads(dict[str, str]):
    """An empty environment that notes every variable looked up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def test_every_field_but_the_few_without_one_is_set_by_the_variable_of_its_name() -> None:
    env = _Reads()
    Settings.from_env(env)
    expected = {variable(f.name) for f in fields(Settings) if f.name not in NO_VARIABLE}
    assert env.read == expected | {"AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("port", 99999, id="port-too-big"),
        pytest.param("port", 0, id="port-zero"),
        pytest.param("metrics_port", -1, id="metrics-port-negative"),
        pytest.param("shards", 0, id="shards-zero"),
        pytest.param("emitter_rate", -1.0, id="emitter-rate-negative"),
        pytest.param("emitter_events", -5, id="emitter-events-negative"),
        pytest.param("emitter_service", "service-z", id="emitter-service-unknown"),
        pytest.param("ingestor_url", "ftp://host", id="ingestor-url-not-http"),
        pytest.param("endpoint_url", "not-a-url", id="endpoint-not-a-url"),
        pytest.param("queue_name", "my queue", id="queue-name-with-space"),
        pytest.param("log_level", "loud", id="log-level-unknown"),
        pytest.param("api_keys", ("good-key-1", "abc"), id="api-key-3-chars"),
        pytest.param("visibility_timeout_s", 0, id="visibility-timeout-zero"),
        pytest.param("emf", "maybe", id="emf-not-a-bool"),
    ],
)
def test_an_override_is_refused_with_the_message_of_its_variable(field: str, value: Any) -> None:
    """`with_overrides` checks a value exactly as `from_env` checks the variable holding it."""
    text = ",".join(value) if isinstance(value, tuple) else str(value)
    with pytest.raises(ConfigError) as from_env:
        Settings.from_env({variable(field): text})
    with pytest.raises(ConfigError) as override:
        Settings().with_overrides(**{field: value})
    assert str(override.value) == str(from_env.value)
    assert str(override.value).startswith(variable(field))


def test_an_override_is_normalised_as_its_variable_is_and_none_means_not_given() -> None:
    base = Settings.from_env({"LOGPIPE_PORT": "9000"})
    settings = base.with_overrides(
        endpoint_url="http://127.0.0.1:5000/",
        log_level="WARN",
        emf=True,
        api_keys=("key-one-1", "key-two-22"),
        visibility_timeout_s=30,
        keep_alive_s=5,
        port=None,
        not_a_field=1,
    )
    assert settings.endpoint_url == "http://127.0.0.1:5000"
    assert settings.log_level == "warning"
    assert settings.emf is True
    assert settings.api_keys == ("key-one-1", "key-two-22")
    assert (settings.visibility_timeout_s, settings.keep_alive_s, settings.port) == (30, 5, 9000)
    assert settings.with_overrides() == settings
