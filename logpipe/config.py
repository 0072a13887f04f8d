"""Settings: every environment variable logpipe reads, validated once at start."""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from logpipe.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EMITTER_SERVICES = ("service-a", "service-b")
# A message of SQS is at most 1 MiB today (256 KiB before 2025); a batch is capped alike.
SQS_MAX_BYTES_LIMIT = 1024 * 1024
# Room for the largest event (32 KiB encoded) with the envelope around it.
SQS_MIN_BYTES = 64 * 1024


@dataclass(frozen=True)
class Settings:
    """Immutable configuration of one logpipe process; build it with `from_env`."""

    # An endpoint logpipe itself chose (`logpipe up`, the bench, tests): every client goes
    # there. Never taken from the environment: AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_<SERVICE>,
    # a profile's endpoint_url and AWS_IGNORE_CONFIGURED_ENDPOINT_URLS are botocore's to
    # read, as for any AWS SDK client (`aws.clients.client_args`).
    endpoint_url: str | None = None
    # AWS_REGION; None: botocore's (AWS_DEFAULT_REGION, the profile's region).
    region: str | None = None
    queue_name: str = "logpipe-events"
    dlq_name: str = "logpipe-events-dlq"
    table_name: str = "logpipe-logs"
    port: int = 8080
    metrics_port: int = 9100
    host: str = "0.0.0.0"
    api_keys: tuple[str, ...] = ()
    ingestor_url: str = "http://127.0.0.1:8080"
    retention_days: int = 30
    log_level: str = "info"
    # A partition takes about 1 MB/s of writes: two hold ~10,000 1 KB events/s of one service
    # as blocks (~200 B each), and a read asks each hour of a service twice, not eight times.
    shards: int = 2
    # Ingestor
    sqs_max_bytes: int = 262144
    linger_ms: int = 20
    send_concurrency: int = 8
    max_body_bytes: int = 5 * 1024 * 1024
    max_events_per_request: int = 10000
    max_inflight_bytes: int = 64 * 1024 * 1024
    send_attempts: int = 6
    memory_budget_mb: int = 256
    read_timeout_s: float = 15.0
    ack_timeout_s: float = 10.0
    max_connections: int = 1000
    keep_alive_s: int = 75
    # Processor
    pollers: int = 4
    write_concurrency: int = 16
    receive_wait_s: int = 20
    visibility_timeout_s: int = 60
    max_receive_count: int = 5
    write_attempts: int = 8
    max_inflight_events: int = 10000
    # How long the processor retries throttling, 5xx and network errors before a message
    # spends a receive (and so, after maxReceiveCount, reaches the DLQ).
    retry_horizon_s: float = 900.0
    # Emitter
    emitter_service: str = "service-a"
    emitter_rate: float = 20.0
    emitter_events: int = 0
    emitter_batch: int = 100
    # Every role
    drain_seconds: float = 25.0
    emf: bool = False
    emf_interval_s: float = 60.0
    queue_poll_s: float = 15.0
    # Console
    read_keys: tuple[str, ...] = ()
    query_budget: int = 48
    cursor_secret: str = ""
    # Bytes of events one /api/logs answer carries before it stops with a cursor, and the
    # reads a console serves at once before answering 429: together they bound its memory.
    max_answer_bytes: int = 4 * 1024 * 1024
    max_concurrent_reads: int = 8
    # `logpipe query`: read through this console's API (no AWS rights needed), with this key.
    console_url: str | None = None
    read_key: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read and validate every variable; raise ConfigError naming the first bad one."""
        d = cls
        for name in ENDPOINT_VARIABLES:  # botocore reads them; a bad one still fails here
            _url(env, name, None)
        return cls(
            region=env.get("AWS_REGION", "").strip() or d.region,
            queue_name=_name(env, "LOGPIPE_QUEUE_NAME", d.queue_name),
            dlq_name=_name(env, "LOGPIPE_DLQ_NAME", d.dlq_name),
            table_name=_name(env, "LOGPIPE_TABLE_NAME", d.table_name),
            port=_int(env, "LOGPIPE_PORT", d.port, 1, 65535),
            metrics_port=_int(env, "LOGPIPE_METRICS_PORT", d.metrics_port, 0, 65535),
            host=env.get("LOGPIPE_HOST") or d.host,
            api_keys=_set_keys(env, "LOGPIPE_API_KEYS"),
            ingestor_url=_url(env, "LOGPIPE_INGESTOR_URL", d.ingestor_url) or d.ingestor_url,
            retention_days=_int(env, "LOGPIPE_RETENTION_DAYS", d.retention_days, 1, 36500),
            log_level=_choice(env, "LOGPIPE_LOG_LEVEL", d.log_level, LOG_LEVELS),
            shards=_int(env, "LOGPIPE_SHARDS", d.shards, 1, 1000),
            sqs_max_bytes=_int(
                env, "LOGPIPE_SQS_MAX_BYTES", d.sqs_max_bytes, SQS_MIN_BYTES, SQS_MAX_BYTES_LIMIT
            ),
            linger_ms=_int(env, "LOGPIPE_LINGER_MS", d.linger_ms, 0, 10000),
            send_concurrency=_int(env, "LOGPIPE_SEND_CONCURRENCY", d.send_concurrency, 1, 256),
            max_body_bytes=_int(env, "LOGPIPE_MAX_BODY_BYTES", d.max_body_bytes, 1024, 1 << 30),
            max_events_per_request=_int(
                env, "LOGPIPE_MAX_EVENTS_PER_REQUEST", d.max_events_per_request, 1, 1_000_000
            ),
            max_inflight_bytes=_int(
                env,
                "LOGPIPE_MAX_INFLIGHT_BYTES",
                d.max_inflight_bytes,
                SQS_MAX_BYTES_LIMIT,
                1 << 34,
            ),
            send_attempts=_int(env, "LOGPIPE_SEND_ATTEMPTS", d.send_attempts, 1, 100),
            memory_budget_mb=_int(env, "LOGPIPE_MEMORY_BUDGET_MB", d.memory_budget_mb, 16, 65536),
            read_timeout_s=_float(env, "LOGPIPE_READ_TIMEOUT_S", d.read_timeout_s, 0.1, 3600.0),
            ack_timeout_s=_float(env, "LOGPIPE_ACK_TIMEOUT_S", d.ack_timeout_s, 0.1, 600.0),
            max_connections=_int(env, "LOGPIPE_MAX_CONNECTIONS", d.max_connections, 1, 1_000_000),
            pollers=_int(env, "LOGPIPE_POLLERS", d.pollers, 1, 64),
            write_concurrency=_int(env, "LOGPIPE_WRITE_CONCURRENCY", d.write_concurrency, 1, 256),
            receive_wait_s=_int(env, "LOGPIPE_RECEIVE_WAIT_S", d.receive_wait_s, 0, 20),
            visibility_timeout_s=_int(
                env, "LOGPIPE_VISIBILITY_TIMEOUT_S", d.visibility_timeout_s, 1, 43200
            ),
            max_receive_count=_int(env, "LOGPIPE_MAX_RECEIVE_COUNT", d.max_receive_count, 1, 1000),
            write_attempts=_int(env, "LOGPIPE_WRITE_ATTEMPTS", d.write_attempts, 1, 100),
            max_inflight_events=_int(
                env, "LOGPIPE_MAX_INFLIGHT_EVENTS", d.max_inflight_events, 100, 10_000_000
            ),
            retry_horizon_s=_float(env, "LOGPIPE_RETRY_HORIZON_S", d.retry_horizon_s, 1.0, 43200.0),
            emitter_service=_choice(
                env, "LOGPIPE_EMITTER_SERVICE", d.emitter_service, EMITTER_SERVICES
            ),
            emitter_rate=_float(env, "LOGPIPE_EMITTER_RATE", d.emitter_rate, 0.0, 1e6),
            emitter_events=_int(env, "LOGPIPE_EMITTER_EVENTS", d.emitter_events, 0, 1 << 40),
            emitter_batch=_int(env, "LOGPIPE_EMITTER_BATCH", d.emitter_batch, 1, 10000),
            drain_seconds=_float(env, "LOGPIPE_DRAIN_SECONDS", d.drain_seconds, 0.0, 3600.0),
            emf=_bool(env, "LOGPIPE_EMF", d.emf),
            emf_interval_s=_float(env, "LOGPIPE_EMF_INTERVAL_S", d.emf_interval_s, 0.1, 3600.0),
            queue_poll_s=_float(env, "LOGPIPE_QUEUE_POLL_S", d.queue_poll_s, 0.1, 3600.0),
            read_keys=_set_keys(env, "LOGPIPE_READ_KEYS"),
            query_budget=_int(env, "LOGPIPE_QUERY_BUDGET", d.query_budget, 1, 100_000),
            cursor_secret=_secret(env, "LOGPIPE_CURSOR_SECRET"),
            max_answer_bytes=_int(
                env, "LOGPIPE_MAX_ANSWER_BYTES", d.max_answer_bytes, 64 * 1024, 1 << 30
            ),
            max_concurrent_reads=_int(
                env, "LOGPIPE_MAX_CONCURRENT_READS", d.max_concurrent_reads, 1, 10_000
            ),
            console_url=_url(env, "LOGPIPE_CONSOLE_URL", d.console_url),
            read_key=_key(env, "LOGPIPE_READ_KEY"),
        )

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with these fields changed (None means 'not given'), each value checked and
        normalised exactly as its variable is by `from_env`: the same ConfigError, word for
        word (`port=99999` fails as LOGPIPE_PORT=99999 does)."""
        known = {f.name for f in fields(self)}
        given = {k: v for k, v in changes.items() if k in known and v is not None}
        env = {variable(k): _as_env_text(v) for k, v in given.items() if k not in NO_VARIABLE}
        checked = replace(
            Settings.from_env(env), endpoint_url=_url(env, variable("endpoint_url"), None)
        )
        return replace(
            self, **{k: v if k in NO_VARIABLE else getattr(checked, k) for k, v in given.items()}
        )

    @property
    def python_log_level(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level.upper()]


# The variables whose names are not LOGPIPE_ and the field's name in capitals, and the fields
# no variable sets (tests/test_config.py checks both against what `from_env` reads).
_AWS_VARIABLES = {"endpoint_url": "AWS_ENDPOINT_URL", "region": "AWS_REGION"}
# Checked by `from_env`, read by botocore (AWS_ENDPOINT_URL checks `endpoint_url` overrides).
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB")
NO_VARIABLE = frozenset({"keep_alive_s"})


def port_error(variable: str, host: str, port: int, exc: OSError) -> ConfigError:
    """The one line a role stops with when it cannot listen on a port (taken, or not allowed)."""
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"{variable}: port {port} is already in use on {host} (another process listens "
            f"there); stop it or set {variable} to a free port"
        )
    return ConfigError(f"{variable}: cannot listen on {host}:{port}: {exc.strerror or exc}")


def variable(field: str) -> str:
    """The environment variable that sets the Settings field `field`."""
    return _AWS_VARIABLES.get(field) or f"LOGPIPE_{field.upper()}"


def _as_env_text(value: Any) -> str:
    """A field's value written as its variable would hold it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer {minimum}-{maximum}, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be an integer {minimum}-{maximum}, got {raw!r}")
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number {minimum:g}-{maximum:g}, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be a number {minimum:g}-{maximum:g}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true or false), got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw == "warn":
        raw = "warning"
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if len(raw) > 80 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in raw):
        raise ConfigError(f"{name} must be 1-80 characters of A-Z a-z 0-9 - _ ., got {raw!r}")
    return raw


def _url(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _keys(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in env.get(name, "").split(",") if k.strip())
    if any(len(k) < 8 for k in keys):
        raise ConfigError(f"{name} must be comma-separated keys of at least 8 characters each")
    return keys


def _key(env: Mapping[str, str], name: str) -> str:
    """One key sent as a Bearer token: what a console's LOGPIPE_READ_KEYS can hold."""
    raw = env.get(name, "").strip()
    if raw and (len(raw) < 8 or "," in raw or not (raw.isascii() and raw.isprintable())):
        raise ConfigError(
            f"{name} must be one key of at least 8 printable ASCII characters, no comma"
        )
    return raw


def _set_keys(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Keys that fail closed: a variable that is set must hold at least one usable key."""
    keys = _keys(env, name)
    if name in env and not keys:
        raise ConfigError(
            f"{name} is set but holds no key: give comma-separated keys of at least "
            "8 characters, or unset it to run open"
        )
    return keys


def _secret(env: Mapping[str, str], name: str) -> str:
    raw = env.get(name, "")
    if name in env and len(raw.strip()) < 16:
        raise ConfigError(f"{name} must be at least 16 characters (or unset: one per process)")
    return raw.strip()
