"""Composition at the root: cli picks the parts, flags are checked as variables are."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from logpipe import cli
from logpipe.config import Settings
from logpipe.dev.faults import Faults
from logpipe.dev.naive import NaiveProcessor, one_per_event
from logpipe.dev.switches import Switches
from logpipe.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            ["ingestor", "--port", "99999"],
            "logpipe: --port must be an integer 1-65535, got '99999'",
            id="port-too-big",
        ),
        pytest.param(
            ["console", "--port", "0"],
            "logpipe: --port must be an integer 1-65535, got '0'",
            id="port-zero",
        ),
        pytest.param(
            ["emitter", "--rate", "-1"],
            "logpipe: --rate must be a number 0-1e+06, got '-1'",
            id="negative-rate",
        ),
        pytest.param(
            ["emitter", "--events", "-5"],
            "logpipe: --events must be an integer 0-1099511627776, got '-5'",
            id="negative-events",
        ),
        pytest.param(
            ["up", "--port", "99999"],
            "logpipe: --port must be an integer 1-65535, got '99999'",
            id="up-port-too-big",
        ),
        pytest.param(
            ["ingestor", "--port", "abc"],
            "logpipe: --port must be an integer 1-65535, got 'abc'",
            id="port-not-a-number",
        ),
        pytest.param(
            ["emitter", "--service", "service-z"],
            "logpipe: --service must be one of service-a, service-b, got 'service-z'",
            id="unknown-service",
        ),
    ],
)
def test_a_bad_flag_is_refused_like_its_variable_in_one_line_with_exit_code_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [expected]


# One bad value per flag of cli.FLAG_VARIABLES, and a command that takes the flag.
BAD_FLAG_VALUES = {
    "port": ("ingestor", "99999"),
    "emitter_service": ("emitter", "service-z"),
    "emitter_rate": ("emitter", "fast"),
    "emitter_events": ("emitter", "-5"),
    "ingestor_url": ("emitter", "ftp://x"),
}


def test_every_flag_that_stands_for_a_variable_has_a_bad_value_below() -> None:
    assert BAD_FLAG_VALUES.keys() == cli.FLAG_VARIABLES.keys()


@pytest.mark.parametrize("dest", sorted(BAD_FLAG_VALUES))
def test_a_bad_flag_gets_the_line_its_variable_gets_with_the_flag_named(
    dest: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flag, variable = cli.FLAG_VARIABLES[dest]
    command, value = BAD_FLAG_VALUES[dest]
    monkeypatch.delenv("ROLE", raising=False)
    monkeypatch.setenv(variable, value)
    assert cli.main([command]) == 2
    [by_variable] = capsys.readouterr().err.splitlines()
    monkeypatch.delenv(variable)
    assert cli.main([command, flag, value]) == 2
    [by_flag] = capsys.readouterr().err.splitlines()
    assert by_variable.startswith(f"logpipe: {variable} must be ")
    assert by_flag == by_variable.replace(variable, flag, 1)


def test_a_bad_url_flag_is_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["emitter", "--url", "ftp://x"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("logpipe: --url ")


def test_flags_override_the_environment() -> None:
    args = cli.build_parser().parse_args(["emitter", "--rate", "5", "--service", "service-b"])
    env = {"LOGPIPE_EMITTER_RATE": "1", "LOGPIPE_PORT": "9000"}
    settings = cli.settings_from(env, args)
    assert (settings.emitter_rate, settings.emitter_service, settings.port) == (
        5.0,
        "service-b",
        9000,
    )


def test_production_settings_know_nothing_of_bench_or_chaos_switches() -> None:
    names = {f.name for f in dataclasses.fields(Settings)}
    assert not names & {"naive", "faults"}


def test_without_the_switches_the_roles_get_their_own_parts_and_dev_is_not_imported() -> None:
    code = (
        "import sys; from logpipe import cli; "
        "assert cli.collaborators('ingestor', {}) == {}; "
        "assert cli.collaborators('processor', {'LOGPIPE_NAIVE': ' '}) == {}; "
        "print(sorted(m for m in sys.modules if m.startswith('logpipe.dev')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_naive_swaps_the_sender_and_the_processor() -> None:
    env = {"LOGPIPE_NAIVE": "1"}
    assert cli.collaborators("ingestor", env) == {"sender": one_per_event}
    assert cli.collaborators("processor", env) == {"processor_cls": NaiveProcessor}
    assert cli.collaborators("console", env) == {}


def test_faults_add_a_client_hook_only_for_what_the_clients_inject() -> None:
    parts = cli.collaborators("processor", {"LOGPIPE_FAULTS": "ddb-throttle:0.5"})
    assert set(parts) == {"client_hook"}
    assert callable(parts["client_hook"])
    # Kills and poison are the bench's doing: nothing to install in the clients.
    assert Switches(faults=Faults(kill_processor=2, poison=3)).client_hook() is None
    assert cli.collaborators("ingestor", {"LOGPIPE_FAULTS": "kill-ingestor:1"}) == {}


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        pytest.param({"LOGPIPE_NAIVE": "maybe"}, "LOGPIPE_NAIVE must be 1 or 0", id="naive"),
        pytest.param({"LOGPIPE_FAULTS": "explode:1"}, "LOGPIPE_FAULTS: fault", id="faults"),
    ],
)
def test_a_bad_switch_is_refused_naming_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        cli.collaborators("ingestor", env)
