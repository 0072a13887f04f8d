"""Run `logpipe bench` naive, batched and ceiling back to back; write a markdown table.

python bench/compare.py [--events 20000] [--naive-events 2000] [--out bench/results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path


def bench(*args: str) -> dict[str, object]:
    command = [sys.executable, "-m", "logpipe", "bench", *args]
    print("$", " ".join(["logpipe", "bench", *args]), file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        models = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    model = models[0] if models else cpu
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def cpu_cell(run: dict[str, object]) -> str:
    """`ingestor / processor` CPU microseconds per event, or - (the ceiling runs no roles)."""
    cpu = run.get("cpu_us_per_event") or {}
    assert isinstance(cpu, dict)
    if not cpu:
        return "-"
    return f"{cpu.get('ingestor', '-')} / {cpu.get('processor', '-')}"


def table(runs: dict[str, dict[str, object]]) -> str:
    rows = [
        ("events", "events"),
        ("events/s (end to end)", "events_per_s"),
        ("e2e p50 ms", "e2e_p50_ms"),
        ("e2e p99 ms", "e2e_p99_ms"),
        ("lost / duplicates", None),
        ("billed SQS requests per event", "billed_sqs_requests_per_event"),
        ("DynamoDB write units per event", "write_units_per_event"),
        ("USD per million events", "usd_per_million_events"),
        ("peak RSS ingestor / processor MB", None),
        ("CPU µs per event ingestor / processor", None),
        ("AWS calls", "aws_requests"),
    ]
    modes = list(runs)
    lines = ["| | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for label, key in rows:
        cells = []
        for mode in modes:
            run = runs[mode]
            if label.startswith("lost"):
                cells.append(f"{run['lost']} / {run['duplicates']}")
            elif label.startswith("peak RSS"):
                rss = run.get("peak_rss_mb") or {}
                cells.append(
                    f"{rss.get('ingestor', '-')} / {rss.get('processor', '-')}" if rss else "-"
                )
            elif label.startswith("CPU"):
                cells.append(cpu_cell(run))
            elif key == "aws_requests":
                calls = run[key]
                assert isinstance(calls, dict)
                cells.append(", ".join(f"{op} {n}" for op, n in sorted(calls.items())))
            else:
                cells.append(str(run.get(key or "", "-")))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--naive-events", type=int, default=500)
    parser.add_argument("--out", default="bench/results.md")
    args = parser.parse_args()
    runs = {
        "naive": bench("--naive", "--events", str(args.naive_events)),
        "batched": bench("--events", str(args.events)),
        "ceiling": bench("--ceiling", "--events", str(args.events)),
    }
    batched, naive, ceiling = runs["batched"], runs["naive"], runs["ceiling"]
    speedup = float(batched["events_per_s"]) / float(naive["events_per_s"])  # type: ignore[arg-type]
    share = float(batched["events_per_s"]) / float(ceiling["events_per_s"])  # type: ignore[arg-type]
    text = (
        f"# logpipe bench\n\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}, "
        f"embedded endpoint (moto, served with keep-alive).\n\n{table(runs)}\n\n"
        f"Batched is **{speedup:.0f}x** naive and **{share:.0%}** of the endpoint's ceiling.\n\n"
        f"Reproduce: `python bench/compare.py --events {args.events} "
        f"--naive-events {args.naive_events}`\n"
    )
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
