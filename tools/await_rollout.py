"""Wait until every ECS service runs the task definition Terraform just applied, or fail.

`aws ecs wait services-stable` also succeeds after the deployment circuit breaker rolled a
service back to its previous revision, so a failed deploy would read as a success. This
looks at what matters instead: each service's PRIMARY deployment must run the expected
task definition with rolloutState COMPLETED. A PRIMARY on another revision (a rollback, or
a deploy that replaced ours) or a FAILED rollout fails at once; anything still in progress
at the deadline fails too.

    terraform output -json task_definitions > expected.json
    python tools/await_rollout.py --cluster logpipe --expected expected.json [--restart-unchanged]

`--restart-unchanged` starts a new deployment only for the services whose task definition
did not change in this apply (their PRIMARY already runs it, completed): what a rotated
API-key secret needs. A service whose definition changed is already deploying; forcing it
again would only replace its tasks twice.

Exit status 0 when every service is done, 1 otherwise; one line per service either way.
Needs boto3 and the usual AWS settings (region, credentials, AWS_ENDPOINT_URL for tests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]

DESCRIBE_BATCH = 10  # DescribeServices takes at most ten services per call


@dataclass(frozen=True)
class Verdict:
    """Where one service stands: done, still rolling out, or failed for good."""

    service: str
    state: str  # "done" | "waiting" | "failed"
    detail: str


def judge(service: str, expected: str, description: Mapping[str, Any] | None) -> Verdict:
    """The verdict on one service from its DescribeServices entry (None: not found)."""
    if description is None or description.get("status") != "ACTIVE":
        return Verdict(service, "failed", "service not found or not ACTIVE")
    primaries = [d for d in description.get("deployments", []) if d.get("status") == "PRIMARY"]
    if len(primaries) != 1:
        return Verdict(service, "waiting", f"{len(primaries)} PRIMARY deployments")
    primary = primaries[0]
    running = primary.get("taskDefinition", "")
    if running != expected:
        return Verdict(
            service,
            "failed",
            f"PRIMARY deployment runs {running}, not {expected}: rolled back or replaced",
        )
    state = primary.get("rolloutState", "")
    counts = f"{primary.get('runningCount', 0)}/{primary.get('desiredCount', 0)} running"
    reason = primary.get("rolloutStateReason", "")
    if state == "COMPLETED":
        return Verdict(service, "done", f"{expected} COMPLETED, {counts}")
    if state == "FAILED":
        return Verdict(service, "failed", f"rollout FAILED, {counts}: {reason}")
    return Verdict(service, "waiting", f"rollout {state or 'unknown'}, {counts}")


def describe(ecs: Any, cluster: str, services: Sequence[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(services), DESCRIBE_BATCH):
        batch = list(services[start : start + DESCRIBE_BATCH])
        answer = ecs.describe_services(cluster=cluster, services=batch)
        for entry in answer["services"]:
            found[entry["serviceName"]] = entry
    return found


def restart_unchanged(ecs: Any, cluster: str, expected: Mapping[str, str]) -> list[str]:
    """Force a new deployment of each service whose apply left it as it was."""
    current = describe(ecs, cluster, list(expected))
    restarted = []
    for service, task_definition in expected.items():
        if judge(service, task_definition, current.get(service)).state == "done":
            ecs.update_service(cluster=cluster, service=service, forceNewDeployment=True)
            restarted.append(service)
    return restarted


def await_rollout(
    ecs: Any, cluster: str, expected: Mapping[str, str], timeout: float, poll: float
) -> list[Verdict]:
    """Poll until every service is done or one failed, or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        current = describe(ecs, cluster, list(expected))
        verdicts = [judge(s, td, current.get(s)) for s, td in expected.items()]
        if any(v.state == "failed" for v in verdicts) or all(v.state == "done" for v in verdicts):
            return verdicts
        if time.monotonic() >= deadline:
            return [
                Verdict(v.service, "failed", f"still not done after {timeout:.0f} s: {v.detail}")
                if v.state == "waiting"
                else v
                for v in verdicts
            ]
        time.sleep(poll)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True)
    parser.add_argument(
        "--expected",
        type=Path,
        required=True,
        help="service name -> task definition ARN (terraform output -json task_definitions)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds (default 1800)")
    parser.add_argument("--poll", type=float, default=15.0, help="seconds between looks")
    parser.add_argument("--restart-unchanged", action="store_true")
    parser.add_argument(
        "--region", default=os.environ.get("AWS_REGION"), help="default $AWS_REGION"
    )
    args = parser.parse_args(argv)

    expected: dict[str, str] = json.loads(args.expected.read_text())
    ecs = boto3.client("ecs", region_name=args.region)
    if args.restart_unchanged:
        for service in restart_unchanged(ecs, args.cluster, expected):
            print(f"{service}: task definition unchanged, new deployment forced")
    verdicts = await_rollout(ecs, args.cluster, expected, args.timeout, args.poll)
    for verdict in verdicts:
        mark = {"done": "ok", "failed": "FAILED", "waiting": "waiting"}[verdict.state]
        print(f"{mark:7} {verdict.service}: {verdict.detail}")
    failed = [v.service for v in verdicts if v.state != "done"]
    if failed:
        print(f"::error::deploy not complete for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
