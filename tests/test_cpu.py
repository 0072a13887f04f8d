"""CPU time per role from /proc, and the profile report: pure parts and this process."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

from logpipe.dev.cpu import CLOCK_TICKS, CpuMeter, cpu_seconds, parse_stat, summarise_folded

pytestmark = pytest.mark.unit


def test_parse_stat_reads_utime_plus_stime_after_a_command_name_with_spaces() -> None:
    fields = ["S"] + ["0"] * 10 + ["250", "50"] + ["0"] * 30
    line = "4242 (python (role) x) " + " ".join(fields)
    assert parse_stat(line) == pytest.approx(300 / CLOCK_TICKS)


def test_cpu_seconds_of_a_missing_process_is_none() -> None:
    assert cpu_seconds(2**22 + 12345) is None


def spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_meter_counts_only_the_window_and_adds_up_restarts() -> None:
    meter = CpuMeter()
    spin(0.3)  # before the window: not counted
    meter.mark("processor", os.getpid())
    spin(0.2)
    meter.take("processor")
    meter.mark("processor", os.getpid())  # "restarted"
    spin(0.2)
    meter.take("processor")
    used = meter.used["processor"]
    assert 0.3 <= used < 0.65
    assert meter.per_event_us(1000)["processor"] == pytest.approx(used * 1000, abs=0.1)


def test_meter_reports_a_role_whose_process_vanished_as_zero() -> None:
    meter = CpuMeter()
    meter.mark("ingestor", 2**22 + 12345)
    meter.take("ingestor")
    assert meter.per_event_us(10) == {"ingestor": 0.0}


def test_folded_stacks_summary_gives_inclusive_and_self_shares() -> None:
    folded = "main;handle;to_item 30\nmain;handle;send 50\nmain;poll 20\nnot a stack line\n"
    report = summarise_folded(folded)
    assert report.startswith("100 samples")
    inclusive, own = report.split("\nself:\n")
    assert " 100.0%  main" in inclusive and "  80.0%  handle" in inclusive
    assert "  50.0%  send" in own and "  30.0%  to_item" in own and "handle" not in own


def load_compare() -> object:
    path = Path(__file__).parent.parent / "bench" / "compare.py"
    spec = importlib.util.spec_from_file_location("compare", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_table_has_a_cpu_row() -> None:
    compare = load_compare()
    run = {
        "events": 10,
        "lost": 0,
        "duplicates": 0,
        "aws_requests": {"BatchWriteItem": 1},
        "cpu_us_per_event": {"ingestor": 11.5, "processor": 58.2},
    }
    ceiling = {**run, "cpu_us_per_event": {}}
    text = compare.table({"batched": run, "ceiling": ceiling})  # type: ignore[attr-defined]
    assert "| CPU µs per event ingestor / processor | 11.5 / 58.2 | - |" in text
