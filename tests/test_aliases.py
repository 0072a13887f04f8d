"""How shippers' field names and values fold into the schema: tables of cases, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from logpipe.core.aliases import MAX_ATTRIBUTES, alias_timestamp, flatten_all, fold, level_of
from logpipe.core.event import normalise
from logpipe.errors import EventError

pytestmark = pytest.mark.unit

NOW = 1_790_000_000_000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({"level": "info"}, "info", id="schema-name"),
        pytest.param({"level": "WARNING"}, "warn", id="any-case"),
        pytest.param({"level": 10}, "trace", id="pino-10"),
        pytest.param({"level": 20}, "debug", id="pino-20"),
        pytest.param({"level": 30}, "info", id="pino-30"),
        pytest.param({"level": 40}, "warn", id="pino-40"),
        pytest.param({"level": 50}, "error", id="pino-50"),
        pytest.param({"level": 60}, "fatal", id="pino-60"),
        pytest.param({"level": 35}, "info", id="pino-custom-level-falls-to-the-one-below"),
        pytest.param({"level": "silly"}, "trace", id="winston-silly"),
        pytest.param({"level": "verbose"}, "debug", id="winston-verbose"),
        pytest.param({"level": "http"}, "debug", id="winston-http"),
        pytest.param({"level": "emerg"}, "fatal", id="syslog-emerg"),
        pytest.param({"level": "alert"}, "fatal", id="syslog-alert"),
        pytest.param({"level": "crit"}, "fatal", id="syslog-crit"),
        pytest.param({"level": "err"}, "error", id="syslog-err"),
        pytest.param({"level": "notice"}, "info", id="syslog-notice"),
        pytest.param({"level": "warning"}, "warn", id="syslog-warning"),
        pytest.param({"severity": "ERROR"}, "error", id="severity-field"),
        pytest.param({"lvl": "debug"}, "debug", id="lvl-field"),
        pytest.param({"status": "warn"}, "warn", id="status-field"),
        pytest.param({"severity": "error", "lvl": "debug"}, "error", id="first-alias-wins"),
        pytest.param({"level": "fatal", "severity": "debug"}, "fatal", id="level-wins"),
        pytest.param({}, "info", id="no-level-is-info"),
        pytest.param({"status": 200}, "info", id="http-status-is-no-level"),
    ],
)
def test_level_names_numbers_and_fields_fold_to_the_six_levels(
    raw: dict[str, Any], expected: str
) -> None:
    event = normalise({"service": "s", "message": "m", **raw}, NOW)
    assert event["level"] == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("loud", id="unknown-name"),
        pytest.param(70, id="number-above-pino"),
        pytest.param(5, id="number-below-pino"),
        pytest.param(True, id="boolean"),
    ],
)
def test_a_level_field_that_is_no_level_refuses_the_event(value: object) -> None:
    with pytest.raises(EventError, match="level"):
        normalise({"service": "s", "message": "m", "level": value}, NOW)


def test_an_alias_that_is_no_level_stays_an_attribute() -> None:
    event = normalise({"service": "s", "message": "m", "status": 200, "severity": "x"}, NOW)
    assert event["level"] == "info"
    assert event["attributes"] == {"status": 200, "severity": "x"}


@pytest.mark.parametrize(
    ("raw", "message", "attributes"),
    [
        pytest.param({"msg": "a"}, "a", None, id="msg"),
        pytest.param({"log": "a"}, "a", None, id="log"),
        pytest.param({"msg": "a", "log": "b"}, "a", {"log": "b"}, id="msg-before-log"),
        pytest.param({"message": "a", "msg": "b"}, "a", {"msg": "b"}, id="message-wins"),
    ],
)
def test_message_aliases(raw: dict[str, Any], message: str, attributes: Any) -> None:
    event = normalise({"service": "s", **raw}, NOW)
    assert event["message"] == message
    assert event.get("attributes") == attributes


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        pytest.param(1732590000.123, 1732590000123, id="epoch-seconds-with-fraction"),
        pytest.param(1732590000, 1732590000000, id="epoch-seconds"),
        pytest.param(1732590000123, 1732590000123, id="epoch-ms"),
        pytest.param(1732590000123.9, 1732590000123, id="epoch-ms-with-fraction"),
        pytest.param("2024-11-26T03:00:00.123Z", 1732590000123, id="rfc3339"),
        pytest.param("2024-11-26T04:00:00.123456789+01:00", 1732590000123, id="rfc3339-nanos"),
    ],
)
@pytest.mark.parametrize("field", ["time", "ts", "@timestamp", "date"])
def test_timestamp_aliases_take_seconds_milliseconds_and_rfc3339(
    field: str, value: object, ms: int
) -> None:
    event = normalise({"service": "s", "message": "m", field: value}, NOW)
    assert event["timestamp"] == ms
    assert "attributes" not in event


def test_timestamp_wins_over_its_aliases_which_stay_attributes() -> None:
    raw = {"service": "s", "message": "m", "timestamp": 1732590000123, "date": 1.5}
    event = normalise(raw, NOW)
    assert event["timestamp"] == 1732590000123
    assert event["attributes"] == {"date": 1.5}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(float("inf"), float("inf"), id="infinity-left-for-validation"),
        pytest.param("yesterday", "yesterday", id="text-left-for-validation"),
        pytest.param(True, True, id="boolean-left-for-validation"),
        pytest.param(-1.5, -1500, id="negative-seconds"),
    ],
)
def test_alias_timestamp_converts_only_finite_numbers(value: object, expected: object) -> None:
    assert alias_timestamp(value) == expected


def test_an_unparsable_alias_timestamp_refuses_the_event() -> None:
    with pytest.raises(EventError, match="timestamp"):
        normalise({"service": "s", "message": "m", "time": "yesterday"}, NOW)


@pytest.mark.parametrize(
    ("raw", "attributes"),
    [
        pytest.param({"hostname": "h1", "pid": 42}, {"hostname": "h1", "pid": 42}, id="flat"),
        pytest.param(
            {"kubernetes": {"pod_name": "p", "labels": {"app": "web"}}},
            {"kubernetes.pod_name": "p", "kubernetes.labels.app": "web"},
            id="nested-objects-dotted",
        ),
        pytest.param({"tags": ["a", 1]}, {"tags": '["a",1]'}, id="list-as-json"),
        pytest.param({"gone": None, "empty": {}}, None, id="nulls-and-empty-objects-left-out"),
        pytest.param(
            {"host": "extra", "attributes": {"host": "explicit", "n": 1}},
            {"host": "explicit", "n": 1},
            id="attributes-win-a-clash",
        ),
        pytest.param(
            {"attributes": {"http": {"method": "GET"}}},
            {"http.method": "GET"},
            id="attributes-flattened-too",
        ),
    ],
)
def test_other_fields_are_kept_as_flat_attributes(raw: dict[str, Any], attributes: Any) -> None:
    event = normalise({"service": "s", "message": "m", **raw}, NOW)
    assert event.get("attributes") == attributes


def test_64_attributes_after_flattening_pass_and_65_refuse_the_event() -> None:
    fields = {f"k{n}": n for n in range(MAX_ATTRIBUTES - 1)}
    event = normalise({"service": "s", "message": "m", **fields, "x": {"y": 1}}, NOW)
    assert len(event["attributes"]) == MAX_ATTRIBUTES
    with pytest.raises(EventError, match="more than 64 keys"):
        normalise({"service": "s", "message": "m", **fields, "x": {"y": 1, "z": 2}}, NOW)


def test_flattening_stops_counting_past_the_limit_before_building_the_rest() -> None:
    huge = {f"k{n}": n for n in range(100_000)}
    with pytest.raises(EventError, match="more than 64 keys"):
        flatten_all({}, huge)


def test_deep_nesting_is_refused_by_key_length_not_recursion() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(900):
        deep = {"a": deep}
    with pytest.raises(EventError, match="keys must be"):
        normalise({"service": "s", "message": "m", "deep": deep}, NOW)


@pytest.mark.parametrize(
    ("raw", "default", "service"),
    [
        pytest.param({"service": "Event"}, "query", "event", id="event-wins"),
        pytest.param({}, "from-request", "from-request", id="default-from-request"),
    ],
)
def test_service_comes_from_the_event_else_the_request(
    raw: dict[str, Any], default: str, service: str
) -> None:
    assert normalise({"message": "m", **raw}, NOW, default)["service"] == service


def test_no_service_anywhere_is_refused_with_where_to_put_it() -> None:
    with pytest.raises(EventError, match=r"\?service= or X-Logpipe-Service"):
        normalise({"message": "m"}, NOW)


def test_fold_of_a_canonical_event_changes_nothing() -> None:
    raw = {
        "id": "x",
        "service": "s",
        "level": "error",
        "message": "m",
        "timestamp": 1,
        "trace_id": "ab",
        "span_id": "cd",
        "attributes": {"a": 1},
    }
    assert fold(raw) == raw


def test_level_of_ignores_booleans_and_strips_blanks() -> None:
    assert level_of(True) is None
    assert level_of(" Err ") == "error"


# An extra field that holds null adds nothing, but sends `fold` down its general path: the
# fast path for events of schema fields only must give exactly what that path gives.
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"service": "s", "message": "m"}, id="minimal"),
        pytest.param({"message": "m"}, id="no-service"),
        pytest.param({"level": "WARNING", "message": "m"}, id="level-alias-value"),
        pytest.param({"level": 30, "message": "m"}, id="pino-number"),
        pytest.param({"level": "loud", "message": "m"}, id="no-level"),
        pytest.param({"attributes": {"a": 1, "b": "x", "c": True}}, id="flat-attributes"),
        pytest.param({"attributes": {"a": {"b": {"c": 1}}, "d": [1, 2]}}, id="nested-attributes"),
        pytest.param({"attributes": {"a": None, "b": {}}}, id="null-and-empty-values"),
        pytest.param({"attributes": {}}, id="empty-attributes"),
        pytest.param({"attributes": None}, id="null-attributes"),
        pytest.param({"attributes": [1, 2]}, id="attributes-not-an-object"),
        pytest.param({"attributes": {"k" * 129: 1}}, id="key-too-long"),
        pytest.param({"attributes": {f"k{i}": i for i in range(65)}}, id="too-many-keys"),
        pytest.param(
            {"id": "x", "timestamp": "2026-01-01T00:00:00Z", "trace_id": "AB", "span_id": 1},
            id="other-schema-fields",
        ),
    ],
)
@pytest.mark.parametrize("default_service", [None, "from-url"])
def test_fold_of_schema_fields_only_equals_the_general_path(
    raw: dict[str, Any], default_service: str | None
) -> None:
    def folded(event: dict[str, Any]) -> dict[str, Any] | str:
        try:
            return fold(event, default_service)
        except EventError as exc:
            return str(exc)

    assert folded(raw) == folded({**raw, "unused": None})
