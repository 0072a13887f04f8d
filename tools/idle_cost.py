#!/usr/bin/env python3
"""What the stack costs a month doing nothing, per component, from a Terraform plan.

    terraform plan -out=tfplan && terraform show -json tfplan > plan.json
    python3 tools/idle_cost.py plan.json [cheapest.json]        # stdlib only

prints a Markdown table: one column per plan, one row per component, in US dollars per
month (730 hours) at the public us-east-1 prices below. "At rest" means no traffic: tasks
run at the counts the plan gives them, nothing is ingested, the table is empty. What
traffic adds (requests, write units, GB through a NAT gateway, stored GB) is priced per
unit in docs/deploy.md, not here.

    .venv/bin/python tools/idle_cost.py --plan

makes the two plans itself (the defaults and CHEAPEST below) with the real Terraform
against moto's server, as `make deploy-rehearsal` does, and prints the table of docs/deploy.md.

Prices: us-east-1, on-demand, as published by AWS (Fargate, VPC, ELB, CloudWatch, SQS,
DynamoDB, Secrets Manager pricing pages) in 2026; check them for your region.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HOURS = 730  # a month, as AWS's pricing pages count it

# --- public us-east-1 prices, USD ---
FARGATE = {  # per vCPU-hour, per GB-hour
    "X86_64": (0.04048, 0.004445),
    "ARM64": (0.03238, 0.00356),
}
# Fargate Spot (X86_64 only) moves with spare capacity; about two thirds below on demand.
FARGATE_SPOT = (0.01334058, 0.00146489)
PUBLIC_IPV4_HOUR = 0.005  # every public IPv4 address, in use or not
NAT_GATEWAY_HOUR = 0.045  # plus 0.045 per GB processed
ALB_HOUR = 0.0225  # plus 0.008 per LCU-hour under traffic
INTERFACE_ENDPOINT_HOUR = 0.01  # per endpoint per AZ, plus 0.01 per GB
CUSTOM_METRIC_MONTH = 0.30  # CloudWatch, first 10,000 metrics
ALARM_METRIC_MONTH = 0.10  # standard resolution, per metric an alarm evaluates
DASHBOARD_MONTH = 3.00  # the first 3 dashboards of an account are free; not counted here
SECRET_MONTH = 0.40  # Secrets Manager, per secret
SQS_PER_MILLION = 0.40  # standard queue requests (the first million a month are free)
DYNAMODB_WCU_HOUR = 0.00065  # provisioned write capacity unit
DYNAMODB_RCU_HOUR = 0.00013  # provisioned read capacity unit

# Container Insights (standard) publishes custom metrics in ECS/ContainerInsights: per
# cluster, per service and per task family that have running tasks. Counted from the
# metrics AWS lists for Fargate (CPU, memory, network, storage, ephemeral storage
# utilised/reserved, and the task/deployment counts of services).
INSIGHTS_PER_CLUSTER = 12
INSIGHTS_PER_SERVICE = 15
INSIGHTS_PER_FAMILY = 10

# logpipe's EMF metrics at rest (namespace logpipe, one metric per name and dimension set,
# whatever the number of tasks): what each running role reports with no traffic. The
# ingestor: its memory and in-flight gauges, the main queue's three gauges, its
# GetQueueAttributes calls; the processor: the three gauges of each queue and its calls;
# the console reports nothing until it is asked; an emitter sends, so it is not at rest.
EMF_AT_REST = {"ingestor": 6, "processor": 7, "console": 0, "emitter": 4}

# SQS requests at rest: each processor task long-polls with 4 pollers (20 s each) and every
# ingestor and processor reads the queue's attributes every 15 s (the processor also the
# DLQ's, and peeks at it).
MINUTES = HOURS * 60
SQS_REQUESTS_PER_MINUTE = {"processor": 4 * 3 + 4 * 3, "ingestor": 4}

# The settings of the cheapest sensible stack (docs/deploy.md "What it costs at rest"): Graviton,
# one ingestor, no console service (`logpipe query` reads the table directly), the
# processor on Fargate Spot, no Container Insights, no NAT gateway.
CHEAPEST = {
    "cpu_architecture": "ARM64",
    "ingestor_count": "1",
    "console_count": "0",
    "processor_spot": "true",
    "container_insights": "false",
    "nat_gateways": "none",
}


def resources(plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every managed resource of a plan's planned values, child modules included."""
    found: list[dict[str, Any]] = []
    pending = [plan["planned_values"]["root_module"]]
    while pending:
        module = pending.pop()
        found += [r for r in module.get("resources", []) if r["mode"] == "managed"]
        pending += module.get("child_modules", [])
    return found


def module_of(address: str) -> str:
    """`module.processor.aws_ecs_service.autoscaled[0]` -> `module.processor`."""
    parts = address.split(".")
    return ".".join(parts[:-2]) if address.startswith("module.") else ""


def fargate_month(cpu_units: float, memory_mib: float, price: tuple[float, float]) -> float:
    vcpu, gb = cpu_units / 1024, memory_mib / 1024
    return (vcpu * price[0] + gb * price[1]) * HOURS


def on_spot(service: Mapping[str, Any]) -> bool:
    strategy = service.get("capacity_provider_strategy") or []
    weights = {s["capacity_provider"]: s.get("weight", 0) for s in strategy}
    return bool(weights) and weights.get("FARGATE_SPOT", 0) > 0 and not weights.get("FARGATE")


Cost = dict[str, float]
ByType = dict[str, list[dict[str, Any]]]


def components(plan: Mapping[str, Any]) -> Cost:
    """Monthly USD at rest per component of the planned stack."""
    by_type: ByType = {}
    for r in resources(plan):
        by_type.setdefault(r["type"], []).append(r)
    cost: Cost = {}
    running = tasks(plan, by_type, cost)
    network(by_type, cost)
    cloudwatch(by_type, running, cost)
    data(by_type, running, cost)
    # The secrets the stack reads (created by the operator, docs/deploy.md "Prerequisites").
    variables = plan.get("variables", {})
    secrets = [
        name
        for name, v in variables.items()
        if name.endswith("_secret_arn") and ":secretsmanager:" in str(v.get("value"))
    ]
    add(cost, "Secrets Manager secrets", len(secrets) * SECRET_MONTH)
    return cost


def add(cost: Cost, component: str, usd: float) -> None:
    cost[component] = cost.get(component, 0.0) + usd


def tasks(plan: Mapping[str, Any], by_type: ByType, cost: Cost) -> dict[str, int]:
    """Fargate and the tasks' own public addresses; the running tasks per role."""
    definitions = {
        module_of(r["address"]): r["values"] for r in by_type.get("aws_ecs_task_definition", [])
    }
    roles = module_roles(plan)
    running: dict[str, int] = {}
    for r in by_type.get("aws_ecs_service", []):
        service, module = r["values"], module_of(r["address"])
        count = service.get("desired_count") or 0
        definition = definitions[module]
        if count:
            role = roles.get(module.split("[")[0], "?")
            running[role] = running.get(role, 0) + count
        platform = (definition.get("runtime_platform") or [{}])[0]
        arch = platform.get("cpu_architecture") or "X86_64"
        spot = on_spot(service)
        price = FARGATE_SPOT if spot else FARGATE[arch]
        month = fargate_month(float(definition["cpu"]), float(definition["memory"]), price)
        add(cost, "Tasks (Fargate Spot)" if spot else f"Tasks (Fargate {arch})", count * month)
        (network,) = service.get("network_configuration") or [{}]
        if network.get("assign_public_ip"):
            add(cost, "Public IPv4 addresses", count * PUBLIC_IPV4_HOUR * HOURS)
    return running


def network(by_type: ByType, cost: Cost) -> None:
    """NAT gateways, addresses, the load balancer, interface endpoints."""
    for _ in by_type.get("aws_nat_gateway", []):
        add(cost, "NAT gateways", NAT_GATEWAY_HOUR * HOURS)
    for _ in by_type.get("aws_eip", []):
        add(cost, "Public IPv4 addresses", PUBLIC_IPV4_HOUR * HOURS)
    for r in by_type.get("aws_lb", []):
        add(cost, "Load balancer", ALB_HOUR * HOURS)
        if not r["values"].get("internal"):
            zones = len(r["values"].get("subnets") or []) or 2
            add(cost, "Public IPv4 addresses", zones * PUBLIC_IPV4_HOUR * HOURS)
    for r in by_type.get("aws_vpc_endpoint", []):
        if r["values"].get("vpc_endpoint_type") == "Interface":
            zones = len(r["values"].get("subnet_ids") or []) or 2
            add(cost, "VPC interface endpoints", zones * INTERFACE_ENDPOINT_HOUR * HOURS)


def cloudwatch(by_type: ByType, running: Mapping[str, int], cost: Cost) -> None:
    """Container Insights; EMF and log-filter metrics, alarms, dashboards."""
    for r in by_type.get("aws_ecs_cluster", []):
        settings = {s["name"]: s["value"] for s in r["values"].get("setting") or []}
        if settings.get("containerInsights") in ("enabled", "enhanced"):
            services = sum(
                1 for r in by_type.get("aws_ecs_service", []) if r["values"].get("desired_count")
            )
            metrics = INSIGHTS_PER_CLUSTER + services * (INSIGHTS_PER_SERVICE + INSIGHTS_PER_FAMILY)
            add(cost, "Container Insights", metrics * CUSTOM_METRIC_MONTH)
    metrics = sum(EMF_AT_REST.get(role, 0) for role in running)
    metrics += len(by_type.get("aws_cloudwatch_log_metric_filter", []))
    alarms = sum(
        alarm_metric_count(r["values"]) for r in by_type.get("aws_cloudwatch_metric_alarm", [])
    )
    # Each target-tracking policy makes two alarms (out and in) on its metrics.
    for r in by_type.get("aws_appautoscaling_policy", []):
        alarms += 2 * tracked_metric_count(r["values"])
    dashboards = len(by_type.get("aws_cloudwatch_dashboard", []))
    usd = metrics * CUSTOM_METRIC_MONTH + alarms * ALARM_METRIC_MONTH + dashboards * DASHBOARD_MONTH
    add(cost, "Metrics, alarms, dashboard", usd)


def data(by_type: ByType, running: Mapping[str, int], cost: Cost) -> None:
    """SQS polling at rest; provisioned table capacity (on demand bills nothing idle)."""
    requests = sum(SQS_REQUESTS_PER_MINUTE.get(role, 0) * n for role, n in running.items())
    add(cost, "SQS and DynamoDB", requests * MINUTES / 1e6 * SQS_PER_MILLION)
    for r in by_type.get("aws_dynamodb_table", []):
        table = r["values"]
        if table.get("billing_mode") == "PROVISIONED":
            units = (table.get("write_capacity") or 0) * DYNAMODB_WCU_HOUR
            units += (table.get("read_capacity") or 0) * DYNAMODB_RCU_HOUR
            add(cost, "SQS and DynamoDB", units * HOURS)


def module_roles(plan: Mapping[str, Any]) -> dict[str, str]:
    """The ROLE each service module runs, from the plan's configuration: `module.x` -> role."""
    calls = plan.get("configuration", {}).get("root_module", {}).get("module_calls", {})
    return {
        f"module.{name}": str(call["expressions"]["role"].get("constant_value", "?"))
        for name, call in calls.items()
        if "role" in call.get("expressions", {})
    }


def alarm_metric_count(alarm: Mapping[str, Any]) -> int:
    queries = alarm.get("metric_query") or []
    if not queries:
        return 1
    return sum(1 for q in queries if q.get("metric"))


def tracked_metric_count(policy: Mapping[str, Any]) -> int:
    if policy.get("policy_type") != "TargetTrackingScaling":
        return 0
    (config,) = policy["target_tracking_scaling_policy_configuration"]
    custom = config.get("customized_metric_specification") or []
    if not custom:
        return 1
    metrics = custom[0].get("metrics") or []
    return sum(1 for m in metrics if m.get("metric_stat")) or 1


ORDER = [
    "Tasks (Fargate X86_64)",
    "Tasks (Fargate ARM64)",
    "Tasks (Fargate Spot)",
    "Public IPv4 addresses",
    "NAT gateways",
    "VPC interface endpoints",
    "Load balancer",
    "Container Insights",
    "Metrics, alarms, dashboard",
    "SQS and DynamoDB",
    "Secrets Manager secrets",
]


def table(columns: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table: one row per component, one column per plan, and the total."""
    names = list(columns)
    rows = [n for n in ORDER if any(columns[c].get(n, 0) > 0.005 for c in names)]
    rows += sorted({n for c in names for n in columns[c]} - set(ORDER) - set(rows))
    lines = ["| per month, USD | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    for row in rows:
        cells = [money(columns[c].get(row, 0.0)) for c in names]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    totals = [f"**{money(sum(columns[c].values()))}**" for c in names]
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def money(usd: float) -> str:
    return "-" if usd < 0.005 else f"{usd:,.2f}"


def total(cost: Mapping[str, float]) -> float:
    return round(sum(cost.values()), 2)


def load(paths: Iterable[Path]) -> dict[str, dict[str, float]]:
    return {path.stem: components(json.loads(path.read_text())) for path in paths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plans", nargs="*", type=Path, help="`terraform show -json` of plans")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="plan the defaults and the cheapest settings against moto first (needs .venv)",
    )
    parser.add_argument("--json", action="store_true", help="the components as JSON")
    args = parser.parse_args(argv)
    if args.plan:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import deploy_rehearsal  # the venv's moto and the rehearsal's Terraform set-up

        plans = deploy_rehearsal.cost_plans({"defaults": {}, "cheapest": CHEAPEST})
        columns = {name: components(plan) for name, plan in plans.items()}
    elif args.plans:
        columns = load(args.plans)
    else:
        parser.error("give plan JSON files, or --plan")
    if args.json:
        print(json.dumps({name: {**c, "total": total(c)} for name, c in columns.items()}, indent=2))
    else:
        print(table(columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
