"""CPU time of role processes, read from the OS, and optional py-spy profiles of them.

Used by `logpipe bench`: CPU time is what bounds throughput on real AWS, and unlike
wall-clock figures it changes little when the machine is busy with other work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# py-spy samples this often: a bench run of a few seconds gives thousands of samples a role.
SAMPLES_PER_S = 1000


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds `pid` has used so far (/proc/<pid>/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    return parse_stat(text)


def parse_stat(text: str) -> float:
    """utime + stime of one /proc/<pid>/stat line, in seconds."""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU seconds per role over a measured window, across restarts of the role's process."""

    used: dict[str, float] = field(default_factory=dict)
    _marks: dict[str, tuple[int, float]] = field(default_factory=dict)

    def mark(self, role: str, pid: int) -> None:
        """Count `role`'s CPU from now on, in process `pid`."""
        self.used.setdefault(role, 0.0)
        now = cpu_seconds(pid)
        if now is not None:
            self._marks[role] = (pid, now)

    def take(self, role: str) -> None:
        """Add what `role`'s process used since its mark (call before it exits)."""
        mark = self._marks.pop(role, None)
        if mark is None:
            return
        now = cpu_seconds(mark[0])
        if now is not None:
            self.used[role] = self.used.get(role, 0.0) + now - mark[1]

    def per_event_us(self, events: int) -> dict[str, float]:
        """Microseconds of CPU per event, per role."""
        return {role: round(s * 1e6 / max(events, 1), 1) for role, s in self.used.items()}


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy attached to role processes; on `stop`, one folded-stack file and report per role.

    Only the thread holding the GIL is sampled: a thread waiting for it, for a lock or for
    the network would otherwise count as busy wherever it waits, and the ingestor's decode
    threads wait most of the time.

    `<role>.folded` is the flame graph's input (speedscope and inferno open it as is);
    `<role>.txt` lists the functions with the largest inclusive and self shares.
    """

    def __init__(self, directory: str) -> None:
        self._dir = Path(directory)
        self._spies: dict[str, asyncio.subprocess.Process] = {}
        executable = py_spy()
        if executable is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        self._exe = executable

    async def attach(self, role: str, pid: int) -> None:
        """Start sampling `pid`; returns once py-spy says it samples (or after 10 s)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        spy = self._spies[role] = await asyncio.create_subprocess_exec(
            self._exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--function",
            "--nonblocking",
            "--gil",
            "--rate",
            str(SAMPLES_PER_S),
            "--output",
            str(self._dir / f"{role}.folded"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert spy.stderr is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(spy.stderr.readline(), 10)

    async def stop(self) -> list[str]:
        """Stop every recorder (SIGINT makes py-spy write its file); the reports written."""
        written: list[str] = []
        for role, spy in self._spies.items():
            if spy.returncode is None:
                spy.send_signal(signal.SIGINT)
            await spy.communicate()
            folded = self._dir / f"{role}.folded"
            if folded.exists():
                report = self._dir / f"{role}.txt"
                report.write_text(summarise_folded(folded.read_text()))
                written.append(str(report))
        self._spies.clear()
        return written


def summarise_folded(text: str, top: int = 40) -> str:
    """The functions with the largest inclusive and self shares of the samples."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"\n{title}:")
        for frame, count in counter.most_common(top):
            lines.append(f"{100 * count / max(total, 1):6.1f}%  {frame}")
    return "\n".join(lines) + "\n"
