"""heap.settle leaves the start-up heap out of later collections (in a process of its own)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from logpipe.heap import YOUNG_THRESHOLD

pytestmark = pytest.mark.unit


def test_settle_freezes_the_heap_and_raises_the_young_threshold() -> None:
    code = (
        "import gc; from logpipe import heap; before = gc.get_freeze_count(); heap.settle(); "
        "print(before, gc.get_freeze_count(), gc.get_threshold()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, threshold = map(int, out.stdout.split())
    assert before == 0 and after > 1_000
    assert threshold == YOUNG_THRESHOLD
