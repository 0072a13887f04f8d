"""Deploy rehearsal: the real Terraform applied to moto's server, then the real roles.

`make deploy-rehearsal` proves that terraform/ and the code agree, without an AWS account:

1. moto's server starts on a free loopback port, with a secret in its Secrets Manager for
   every `*_secret_arn` variable (what docs/deploy.md asks an operator to create).
2. terraform/ is copied beside an override file that points the AWS provider's endpoints
   at moto and keeps the state local, then `terraform init` (provider from the mirror, as in
   tools/terraform-validate.sh) and `terraform apply` with `embedded_endpoint = true`, which
   leaves out only what moto cannot take (autoscaling, the DLQ's redrive-allow policy).
   Terraform signs with the access key DEPLOY_KEY; moto records its calls during apply and
   a refreshing `terraform plan`, and each must be an action the deploy role of
   docs/iam/deploy.json allows.
3. The checks of the deploy workflow run against the applied stack: every ECS service's
   PRIMARY deployment runs the task definition of `terraform output task_definitions`.
4. Each role starts as its container would: the image's entrypoint (`logpipe`) with exactly
   the environment of its applied task definition, secrets resolved from Secrets Manager
   as the ECS agent does (with the execution role's identity). Only what the platform
   provides changes: each task has its own address on AWS, so here the ports move to free
   loopback ports; the task role becomes credentials named after it plus AWS_ENDPOINT_URL;
   the emitters' ingest URL (the load balancer) becomes a loopback stand-in that applies
   the applied ingest listener: its rules forward, its default action answers.
5. The health check of each task definition passes; every path the listener forwards
   reaches the ingestor; /metrics and /readyz answer on the metrics port only.
6. Both emitters send through the listener until each has had events accepted, stop and
   report their counts; the processor stores them; the console (with a read key) must
   return every accepted event, counted.
7. moto recorded every request: each role's calls (by its credentials) must be allowed by
   that role's applied IAM policy, and a task without a task role makes none.
8. `terraform destroy` deletes the stack; its recorded calls too must be actions the deploy
   role of docs/iam/deploy.json allows.
9. The existing-network mode: a VPC with public and private subnets is made in moto first
   (as its owner would), and terraform/ applied into it (vpc_id, public_subnet_ids,
   private_subnet_ids) in a workspace of its own must create no VPC, subnet, route, NAT
   gateway or endpoint, put the tasks in the private subnets and the load balancer in the
   public ones; then it is destroyed, both held to the deploy role of docs/iam.

On a busy machine moto is now and then slow enough that the provider's SDK sends a call
again, or a provider wait runs out: `converge` runs apply or destroy again then (GONE,
SLOW below); any other failure fails at once.

Exit 0 when all of it holds; otherwise the first failure, with the roles' logs.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3  # type: ignore[import-untyped]
from aiohttp import web

from logpipe.dev.processes import LOCAL_CREDENTIALS, free_port, start_moto

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
MIRROR = os.environ.get("LOGPIPE_TF_PLUGIN_MIRROR", "/opt/tf-plugins")
EVENTS_PER_EMITTER = 200  # accepted events each emitter sends before it is stopped
DEADLINE_S = 120.0  # for each wait below
TERRAFORM_TIMEOUT_S = 480  # apply takes 100-150 s here
NO_ROLE = "no-task-role-"  # access key prefix of tasks without a task role
# Batch calls are authorised as their single-entry action.
IAM_ACTION = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}

# Signing names that are not the service's IAM prefix.
IAM_PREFIX = {"monitoring": "cloudwatch"}
# Terraform's own credentials: the access key id names the deploy role of docs/deploy.md.
DEPLOY_KEY = "logpipe-deploy"

# Tried by the provider's account-ID lookup, which goes on to sts:GetCallerIdentity when
# it is denied (as it is for a role's session): the deploy role need not allow it.
OPTIONAL_ACTIONS = {"iam:GetUser"}

# The services moto serves that the stack uses, by the provider's endpoint names.
ENDPOINTS = [
    *("applicationautoscaling", "cloudwatch", "dynamodb", "ec2", "ecr", "ecs", "elbv2"),
    *("events", "iam", "logs", "secretsmanager", "sns", "sqs", "ssm", "sts"),
]


class RehearsalError(Exception):
    """A step of the rehearsal found the stack and the code disagreeing."""


def step(message: str) -> None:
    print(f"rehearsal: {message}", flush=True)


# --- Terraform against moto ---


def override(endpoint: str) -> str:
    endpoints = "\n".join(f'    {name} = "{endpoint}"' for name in ENDPOINTS)
    return f"""# Written by tools/deploy_rehearsal.py: moto's server instead of AWS, local state.
terraform {{
  backend "local" {{}}
}}

provider "aws" {{
  region                      = "{REGION}"
  access_key                  = "{DEPLOY_KEY}"
  secret_key                  = "{LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true

  endpoints {{
{endpoints}
  }}
}}
"""


def terraform(work: Path, *args: str, capture: bool = False) -> str:
    rc = work / "terraformrc"
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(rc),
        "TF_DATA_DIR": str(work / "tf-data"),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
    }
    command = ["terraform", f"-chdir={work / 'terraform'}", *args]
    # A session of its own: on a timeout the provider plugin goes with terraform.
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TERRAFORM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise RehearsalError(
            f"terraform {args[0]} still running after {TERRAFORM_TIMEOUT_S} s (an API moto "
            f"lacks, retried?):\n{stdout[-3000:]}{stderr[-3000:]}"
        ) from None
    if process.returncode != 0:
        raise RehearsalError(f"terraform {args[0]} failed:\n{stdout[-4000:]}{stderr}")
    return stdout if capture else ""


# What a busy machine makes of moto now and then. The provider's SDK sends a request again
# when moto was slow to answer the first, which moto had carried out: the second finds the
# object gone (DeleteTable's ResourceNotFoundException, a revoked security-group rule's
# InvalidPermission.NotFound). Or one of the provider's waits runs out. Terraform refreshes
# its state before it acts, so the same command run again converges: a destroy finds the
# table gone and forgets it. Anything else fails the rehearsal at once.
GONE = ("ResourceNotFoundException", "NotFound", "NoSuchEntity")
SLOW = (
    "timeout while waiting",
    "context deadline exceeded",
    "connection reset by peer",
    "send request failed",
    "i/o timeout",
)
ATTEMPTS = 3


def converge(work: Path, args: tuple[str, ...], retry_on: tuple[str, ...]) -> None:
    """Run a terraform command, again (up to ATTEMPTS) after a failure named in `retry_on`."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            terraform(work, *args)
            return
        except RehearsalError as exc:
            reason = next((marker for marker in retry_on if marker in str(exc)), None)
            if reason is None or attempt == ATTEMPTS:
                raise
            step(f"terraform {args[0]}: {reason} (attempt {attempt} of {ATTEMPTS}); again")


def destroy(work: Path, variables: Mapping[str, str]) -> None:
    args = ("destroy", "-auto-approve", "-no-color", "-parallelism=20", *var_args(variables))
    converge(work, args, GONE + SLOW)


# Now and then (seen once on a busy machine) the provider's SDK sends an
# AuthorizeSecurityGroupEgress a second time after moto carried out the first and moto
# answers InvalidPermission.Duplicate: the rule exists and terraform's state lacks it. What
# was applied is destroyed and applied again, once.
DUPLICATE_RULE = "InvalidPermission.Duplicate"


def prepare(work: Path, endpoint: str, source: Path = ROOT / "terraform") -> None:
    """terraform/ copied into `work`, pointed at moto, initialised from the local mirror."""
    shutil.copytree(source, work / "terraform", ignore=shutil.ignore_patterns(".terraform*"))
    shutil.copy(source / ".terraform.lock.hcl", work / "terraform")
    (work / "terraform" / "rehearsal_override.tf").write_text(override(endpoint))
    (work / "terraformrc").write_text(
        f'provider_installation {{\n  filesystem_mirror {{\n    path = "{MIRROR}"\n  }}\n}}\n'
    )
    terraform(work, "init", "-lockfile=readonly", "-no-color")


def apply(work: Path, variables: Mapping[str, str]) -> dict[str, Any]:
    """Apply the prepared terraform/ to moto; the state as `terraform show -json` prints it."""
    started = time.monotonic()
    args = ("apply", "-auto-approve", "-no-color", "-parallelism=20", *var_args(variables))
    converge(work, args, SLOW)
    state: dict[str, Any] = json.loads(terraform(work, "show", "-json", capture=True))
    count = len(list(resources(state)))
    step(f"terraform apply: {count} resources in {time.monotonic() - started:.0f} s")
    return state


def var_args(variables: Mapping[str, str]) -> list[str]:
    return [f"-var={name}={value}" for name, value in variables.items()]


def resources(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every managed resource of the applied state, child modules included."""
    found: list[dict[str, Any]] = []
    pending = [state["values"]["root_module"]]
    while pending:
        module = pending.pop()
        found += [r for r in module.get("resources", []) if r["mode"] == "managed"]
        pending += module.get("child_modules", [])
    return found


def outputs(state: Mapping[str, Any]) -> dict[str, Any]:
    return {name: o["value"] for name, o in state["values"]["outputs"].items()}


# --- what each task would run with ---


@dataclass
class Task:
    """One applied task definition's container, as ECS would start it."""

    service: str
    family: str
    environment: dict[str, str]
    secrets: dict[str, str]  # name -> valueFrom
    ports: list[int]
    health_check: list[str]
    task_role: str | None  # role name; None: the task calls no AWS API
    execution_role: str
    env: dict[str, str] = field(default_factory=dict)  # what the process here gets

    @property
    def role(self) -> str:
        return self.environment["ROLE"]


def tasks(state: Mapping[str, Any]) -> dict[str, Task]:
    """The applied task definitions by service name (outputs.task_definitions)."""
    by_arn = {
        r["values"]["arn"]: r["values"]
        for r in resources(state)
        if r["type"] == "aws_ecs_task_definition"
    }
    found = {}
    for service, arn in outputs(state)["task_definitions"].items():
        definition = by_arn[arn]
        (container,) = json.loads(definition["container_definitions"])
        found[service] = Task(
            service=service,
            family=definition["family"],
            environment={e["name"]: e["value"] for e in container.get("environment", [])},
            secrets={s["name"]: s["valueFrom"] for s in container.get("secrets", [])},
            ports=[p["containerPort"] for p in container.get("portMappings", [])],
            health_check=container["healthCheck"]["command"],
            task_role=role_name(definition.get("task_role_arn")),
            execution_role=str(role_name(definition["execution_role_arn"])),
        )
    return found


def role_name(arn: str | None) -> str | None:
    return arn.rsplit("/", 1)[-1] if arn else None


def identity(role: str | None, service: str) -> dict[str, str]:
    """Credentials whose access key id names the IAM role they stand for.

    moto accepts any key; the recorded requests then say which role made each call, and
    check_permissions holds every call to that role's applied policy.
    """
    key = role if role else f"{NO_ROLE}{service}"
    return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": "rehearsal"}


def secret_value(endpoint: str, value_from: str, execution_role: str) -> str:
    """A secret's value the way the ECS agent resolves `valueFrom`: as the execution role."""
    credentials = identity(execution_role, "")
    client = boto3.client(
        "secretsmanager",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    )
    return str(client.get_secret_value(SecretId=value_from)["SecretString"])


def platform_env(task: Task, endpoint: str, ingest_url: str, ingestor: str) -> dict[str, str]:
    """The task's environment plus only what ECS and the load balancer provide on AWS."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **task.environment}
    for name, value_from in task.secrets.items():
        env[name] = secret_value(endpoint, value_from, task.execution_role)
    # The task role's credentials, as ECS hands them to the container.
    env.update(identity(task.task_role, task.service))
    env.update(AWS_ENDPOINT_URL=endpoint, LOGPIPE_HOST="127.0.0.1")
    # awsvpc: every task has its own address, so the same ports cannot all be one host's.
    env["LOGPIPE_PORT"] = str(free_port())
    env["LOGPIPE_METRICS_PORT"] = str(free_port())
    if "LOGPIPE_INGESTOR_URL" in env:
        if env["LOGPIPE_INGESTOR_URL"] != ingest_url:
            raise RehearsalError(f"{task.service}: ingest URL is not the stack's {ingest_url}")
        env["LOGPIPE_INGESTOR_URL"] = ingestor
    return env


def check_task_contract(stack: dict[str, Task], state: Mapping[str, Any]) -> None:
    """What the platform relies on: ports, target group, health check, secrets' origin."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in resources(state):
        by_type.setdefault(r["type"], []).append(r["values"])
    groups = {g["name"].rsplit("-", 1)[-1]: g for g in by_type["aws_lb_target_group"]}
    for task in stack.values():
        if task.role in ("ingestor", "console"):
            port = int(task.environment["LOGPIPE_PORT"])
            if task.ports != [port] or groups[task.role]["port"] != port:
                raise RehearsalError(f"{task.service}: container, target group, app ports differ")
            if groups[task.role]["health_check"][0]["path"] != "/healthz":
                raise RehearsalError(f"{task.service}: target group checks another path")
        elif task.ports:
            raise RehearsalError(f"{task.service}: {task.role} should publish no port")
        for name, value_from in task.secrets.items():
            if name in task.environment:
                raise RehearsalError(f"{task.service}: {name} also in plain environment")
            if not value_from.startswith("arn:aws:secretsmanager:"):
                raise RehearsalError(f"{task.service}: {name} comes from {value_from}")


# --- the roles on loopback ---


@dataclass
class Running:
    task: Task
    process: asyncio.subprocess.Process
    log: Path


async def start(task: Task, logs: Path) -> Running:
    """The image's entrypoint, `logpipe` with ROLE from the environment."""
    log = logs / f"{task.service}.log"
    entrypoint = Path(sys.executable).parent / "logpipe"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            str(entrypoint),
            env=task.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=sink,
        )
    return Running(task, process, log)


async def stop(running: Running, timeout: float = 40.0) -> bytes:
    """SIGTERM, as ECS stops a task; its stdout once it exited."""
    process = running.process
    if process.returncode is None:
        process.terminate()
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
    if process.returncode != 0:
        raise RehearsalError(f"{running.task.service} exited {process.returncode} on SIGTERM")
    return out


async def poll(what: str, check: Any, deadline_s: float = DEADLINE_S) -> Any:
    """Call the async `check` until it returns something truthy, or fail after the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RehearsalError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.25)


async def status(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    try:
        async with session.request(kwargs.pop("method", "GET"), url, **kwargs) as response:
            await response.read()
            return response.status
    except aiohttp.ClientError:
        return 0


async def metric(session: aiohttp.ClientSession, port: int, name: str) -> float:
    """The sum of a Prometheus counter's samples on a role's metrics port."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def healthy(task: Task) -> bool:
    """The task definition's health check command, run with the task's environment."""
    kind, *command = task.health_check
    assert kind == "CMD", task.health_check
    if command[0] == "python":
        command[0] = sys.executable
    result = subprocess.run(command, env=task.env, capture_output=True, timeout=30, check=False)
    return result.returncode == 0


async def stored(session: aiohttp.ClientSession, console: Task, service: str) -> int:
    """Events of `service` the console returns, every page followed."""
    url = f"http://127.0.0.1:{console.env['LOGPIPE_PORT']}/api/logs"
    headers = {}
    read_keys = console.env.get("LOGPIPE_READ_KEYS", "")
    if read_keys:
        headers["Authorization"] = f"Bearer {read_keys.split(',')[0].strip()}"
    count, cursor = 0, None
    while True:
        params = {"service": service, "since": "1h", "limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        async with session.get(url, params=params, headers=headers) as response:
            if response.status != 200:
                raise RehearsalError(f"console answered {response.status}: {await response.text()}")
            page = await response.json()
        count += len(page["events"])
        cursor = page.get("cursor")
        if not cursor:
            return count


async def pipeline(
    stack: dict[str, Task], state: Mapping[str, Any], logs: Path, front: FrontDoor, door: str
) -> None:
    by_role: dict[str, list[Task]] = {}
    for task in stack.values():
        by_role.setdefault(task.role, []).append(task)
    (ingestor,), (processor,), (console,) = (
        by_role["ingestor"],
        by_role["processor"],
        by_role["console"],
    )
    emitters = by_role["emitter"]
    running: list[Running] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            for task in (ingestor, processor, console):
                running.append(await start(task, logs))
            public = f"http://127.0.0.1:{ingestor.env['LOGPIPE_PORT']}"
            for task in (ingestor, console):
                port = task.env["LOGPIPE_PORT"]
                await poll(
                    f"{task.service} /healthz",
                    lambda p=port: _ok(session, f"http://127.0.0.1:{p}/healthz"),
                )
            for task in (ingestor, processor, console):
                if not healthy(task):
                    raise RehearsalError(
                        f"{task.service}: its task definition's health check fails"
                    )
            step("ingestor, processor and console up; health checks of their task definitions pass")
            check_listener_paths(state)
            for path in listener_paths(state):
                method = "GET" if path == "/healthz" else "POST"
                code = await status(session, door + path, method=method, data=b"{}")
                if code in (0, 404):
                    raise RehearsalError(f"the load balancer forwards {path}; the ingestor: {code}")
            paths = ", ".join(listener_paths(state))
            step(f"every path the listener forwards reaches the ingestor: {paths}")
            # What stays inside the VPC answers on the metrics port, which no listener reaches.
            private = f"http://127.0.0.1:{ingestor.env['LOGPIPE_METRICS_PORT']}"
            for path in ("/metrics", "/readyz"):
                if path in listener_paths(state) or await status(session, private + path) != 200:
                    raise RehearsalError(f"{path}: forwarded, or not on the metrics port")
                if await status(session, public + path) != 404:
                    raise RehearsalError(f"{path} is served on the public port too")
                if await status(session, door + path) != 404:
                    raise RehearsalError(f"the load balancer does not answer 404 for {path}")
            step("/metrics and /readyz answer on the metrics port only, which no listener reaches")

            senders = []
            for task in emitters:
                senders.append(await start(task, logs))
            running += senders
            for sender in senders:
                metrics_port = int(sender.task.env["LOGPIPE_METRICS_PORT"])
                await poll(
                    f"{sender.task.service} to have {EVENTS_PER_EMITTER} events accepted",
                    lambda p=metrics_port: _at_least(session, p, EVENTS_PER_EMITTER),
                )
            accepted = {}
            for sender in senders:
                summary = json.loads((await stop(sender)).decode().strip().splitlines()[-1])
                accepted[summary["service"]] = summary["accepted"]
                if summary["failed"]:
                    raise RehearsalError(f"{sender.task.service}: {summary}")
            step(f"emitters stopped; accepted by the ingestor: {accepted}")
            step(f"load balancer rules: forwarded {front.forwarded}, answered 404 {front.refused}")
            if not front.forwarded.get("/ingest"):
                raise RehearsalError("the emitters' events did not pass the load balancer's rules")
            for service, count in accepted.items():
                await poll(
                    f"{count} {service} events through the console",
                    lambda s=service, c=count: _equal(session, console, s, c),
                )
            step(f"the console returns every accepted event: {accepted}")
        finally:
            for proc in running:
                if proc.process.returncode is None:
                    try:
                        await stop(proc)
                    except RehearsalError as error:
                        step(str(error))


async def _ok(session: aiohttp.ClientSession, url: str) -> bool:
    return await status(session, url) == 200


async def _at_least(session: aiohttp.ClientSession, port: int, count: int) -> bool:
    return await metric(session, port, "logpipe_emitter_events_accepted_total") >= count


async def _equal(session: aiohttp.ClientSession, console: Task, service: str, count: int) -> bool:
    found = await stored(session, console, service)
    if found > count:
        raise RehearsalError(f"{found} {service} events stored, {count} accepted: duplicates")
    return found == count


def listener_paths(state: Mapping[str, Any]) -> list[str]:
    rules = [r["values"] for r in resources(state) if r["type"] == "aws_lb_listener_rule"]
    return [
        path
        for rule in rules
        for condition in rule["condition"]
        for pattern in condition.get("path_pattern", [])
        for path in pattern["values"]
    ]


HOP_BY_HOP = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}


class FrontDoor:
    """The applied ingest listener on loopback: what its rules match goes to the ingestor,
    anything else gets the listener's own fixed response, as the load balancer does."""

    def __init__(self, state: Mapping[str, Any], target: str) -> None:
        listeners = [r["values"] for r in resources(state) if r["type"] == "aws_lb_listener"]
        (listener,) = [entry for entry in listeners if entry["port"] in (80, 443)]
        (default,) = listener["default_action"]
        if default["type"] != "fixed-response":
            raise RehearsalError(f"the ingest listener's default action is {default['type']}")
        (self._fixed,) = default["fixed_response"]
        rules = [r["values"] for r in resources(state) if r["type"] == "aws_lb_listener_rule"]
        self.patterns = [
            path
            for rule in rules
            if rule["listener_arn"] == listener["arn"]
            for condition in rule["condition"]
            for pattern in condition.get("path_pattern", [])
            for path in pattern["values"]
        ]
        self._target = target
        self.forwarded: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        if not any(fnmatch.fnmatchcase(path, pattern) for pattern in self.patterns):
            self.refused[path] = self.refused.get(path, 0) + 1
            return web.Response(
                status=int(self._fixed["status_code"]),
                body=self._fixed.get("message_body", ""),
                content_type=self._fixed["content_type"],
            )
        self.forwarded[path] = self.forwarded.get(path, 0) + 1
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self._target + request.rel_url.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            kept.pop("Content-Encoding", None)  # aiohttp has decoded the body
            return web.Response(status=answer.status, body=body, headers=kept)


def check_listener_paths(state: Mapping[str, Any]) -> None:
    listeners = [r["values"] for r in resources(state) if r["type"] == "aws_lb_listener"]
    ingest = [entry for entry in listeners if entry["port"] in (80, 443)]
    for listener in ingest:
        (action,) = listener["default_action"]
        if action["type"] not in ("fixed-response", "redirect"):
            raise RehearsalError(f"port {listener['port']} forwards by default: {action['type']}")


# --- every AWS call a role made, held to its applied IAM policy ---


@dataclass(frozen=True)
class Call:
    principal: str  # the access key id: a role name, or NO_ROLE + service
    action: str  # IAM form, e.g. sqs:SendMessage
    resource: str  # ARN


def _recorded(recording: str) -> Iterator[dict[str, Any]]:
    """Every record of moto's recorder file. Its threads write one JSON document a line,
    but two requests answered at once can land on one line without a newline between."""
    decoder = json.JSONDecoder()
    for line in recording.splitlines():
        at = 0
        while at < len(line):
            entry, at = decoder.raw_decode(line, at)
            yield entry
            while at < len(line) and line[at].isspace():
                at += 1


def requests(recording: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The recorded signed requests as (access key id, IAM action, parameters)."""
    found = []
    for entry in _recorded(recording):
        headers = {k.lower(): v for k, v in entry["headers"].items()}
        authorization = headers.get("authorization", "")
        if "Credential=" not in authorization:
            continue
        key, _, _, service, _ = authorization.split("Credential=")[1].split(",")[0].split("/")
        body = entry["body"] or ""
        raw = base64.b64decode(body) if entry["body_encoded"] else body.encode()
        target = headers.get("x-amz-target", "")
        url = urllib.parse.urlsplit(entry.get("url", ""))
        params: dict[str, Any]
        if target:
            operation, params = target.split(".")[-1], json.loads(raw or b"{}")
        elif "/operation/" in url.path:  # Smithy RPC v2 (CBOR): the operation is in the path
            operation, params = url.path.rsplit("/", 1)[-1], {}
        else:
            text = raw.decode(errors="replace") if raw else url.query
            query = {k: v[0] for k, v in urllib.parse.parse_qs(text).items()}
            operation, params = query.get("Action", "?"), query
        prefix = IAM_PREFIX.get(service, service)
        found.append((key, f"{prefix}:{IAM_ACTION.get(operation, operation)}", params))
    return found


def calls(recording: str, arns: Mapping[str, str]) -> list[Call]:
    """The recorded requests as (principal, IAM action, resource ARN)."""
    return [
        Call(key, action, arns.get(name, name))
        for key, action, params in requests(recording)
        for name in named_resources(params)
    ]


def named_resources(params: Mapping[str, Any]) -> list[str]:
    """The queue, table or secret a request names (by name, URL or ARN)."""
    if "QueueUrl" in params:
        return [str(params["QueueUrl"]).rstrip("/").rsplit("/", 1)[-1]]
    if "QueueName" in params:
        return [str(params["QueueName"])]
    if "TableName" in params:
        return [str(params["TableName"])]
    if "RequestItems" in params:
        return [str(table) for table in params["RequestItems"]]
    if "SecretId" in params:
        return [str(params["SecretId"])]
    return ["*"]


def allowed(policy: Mapping[str, Any], action: str, resource: str) -> bool:
    statements = policy["Statement"]
    for statement in statements if isinstance(statements, list) else [statements]:
        actions = statement.get("Action", [])
        resources = statement.get("Resource", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        if statement.get("Effect") != "Allow":
            continue
        if any(fnmatch.fnmatchcase(action, a) for a in actions) and any(
            fnmatch.fnmatchcase(resource, r) for r in resources
        ):
            return True
    return False


def check_permissions(recording: str, state: Mapping[str, Any]) -> dict[str, int]:
    """Every call each role made is allowed by that role's applied policies; counts."""
    arns = {
        r["values"]["name"]: r["values"]["arn"]
        for r in resources(state)
        if r["type"] in ("aws_sqs_queue", "aws_dynamodb_table")
    }
    policies: dict[str, list[dict[str, Any]]] = {}
    for r in resources(state):
        if r["type"] == "aws_iam_role_policy":
            policies.setdefault(r["values"]["role"], []).append(json.loads(r["values"]["policy"]))
    made = calls(recording, arns)
    if not made:
        raise RehearsalError("no AWS call recorded: the recorder did not run")
    counts: dict[str, int] = {}
    for call in made:
        counts[call.principal] = counts.get(call.principal, 0) + 1
        if call.principal.startswith(NO_ROLE):
            raise RehearsalError(f"{call.principal[len(NO_ROLE) :]} has no task role: {call}")
        granted = policies.get(call.principal, [])
        if not any(allowed(policy, call.action, call.resource) for policy in granted):
            raise RehearsalError(
                f"{call.principal} is not allowed {call.action} on {call.resource}"
            )
    return counts


def iam_policy(name: str) -> dict[str, Any]:
    """A policy of docs/iam, as an operator pastes it into IAM (placeholders left in)."""
    policy: dict[str, Any] = json.loads((ROOT / "docs" / "iam" / f"{name}.json").read_text())
    return policy


def deploy_policy() -> dict[str, Any]:
    """The deploy role's policy: the one that creates roles under the boundary."""
    policy = iam_policy("deploy")
    assert any(s.get("Sid") == "RolesUnderTheBoundary" for s in policy["Statement"])
    return policy


def plan_policy() -> dict[str, Any]:
    """The policy of the read-only role that plans pull requests."""
    policy = iam_policy("plan")
    assert any(s.get("Sid") == "PlanReads" for s in policy["Statement"])
    return policy


def check_deploy_actions(
    recording: str, policy: Mapping[str, Any], what: str, role: str = "deploy role"
) -> list[str]:
    """Every action Terraform (DEPLOY_KEY) made is allowed by an Allow statement of `policy`
    (actions only: the conditions and ARNs are AWS's to check); the actions, sorted."""
    made = sorted({a for key, a, _ in requests(recording) if key == DEPLOY_KEY} - OPTIONAL_ACTIONS)
    if not made:
        raise RehearsalError(f"no call by terraform recorded during {what}")
    statements = policy["Statement"]
    granted = [
        pattern
        for statement in (statements if isinstance(statements, list) else [statements])
        if statement.get("Effect") == "Allow"
        for pattern in (
            [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        )
    ]
    missing = [a for a in made if not any(fnmatch.fnmatchcase(a, g) for g in granted)]
    if missing:
        raise RehearsalError(
            f"terraform {what} made calls the {role} does not allow: {missing} (docs/iam)"
        )
    return made


# --- the rehearsal ---


def create_secrets(endpoint: str) -> dict[str, str]:
    """A fresh secret for every `<what>_secret_arn` variable of terraform/ (the ingest API
    keys, the console's read keys, its cursor secret, ...): variable name -> ARN."""
    client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name=REGION)
    text = "\n".join(path.read_text() for path in sorted((ROOT / "terraform").glob("*.tf")))
    return {
        name: client.create_secret(
            Name=f"logpipe/{name.removesuffix('_secret_arn')}",
            SecretString=os.urandom(24).hex(),
        )["ARN"]
        for name in re.findall(r'^variable "(\w+_secret_arn)"', text, re.M)
    }


async def moto_api(endpoint: str, path: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            "GET" if path.startswith("recorder/download") else "POST",
            f"{endpoint}/moto-api/{path}",
        ) as response,
    ):
        response.raise_for_status()
        return await response.text()


def rollout(endpoint: str, state: Mapping[str, Any]) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    import await_rollout

    ecs = boto3.client("ecs", endpoint_url=endpoint, region_name=REGION)
    out = outputs(state)
    verdicts = await_rollout.await_rollout(
        ecs, out["cluster_name"], out["task_definitions"], timeout=30, poll=0.5
    )
    failed = [v for v in verdicts if v.state != "done"]
    if failed:
        raise RehearsalError(f"rollout check: {failed}")
    step(f"rollout check: {len(verdicts)} services run their applied task definitions")


async def recorded_apply(work: Path, endpoint: str, variables: Mapping[str, str]) -> dict[str, Any]:
    """`apply`, with moto recording every request of the apply that succeeds."""
    await moto_api(endpoint, "recorder/start-recording")
    try:
        return apply(work, variables)
    except RehearsalError as exc:
        if DUPLICATE_RULE not in str(exc):
            raise
    step(f"terraform apply: moto answered {DUPLICATE_RULE}; destroying, applying again")
    await moto_api(endpoint, "recorder/stop-recording")
    destroy(work, variables)
    await moto_api(endpoint, "recorder/reset-recording")
    await moto_api(endpoint, "recorder/start-recording")
    return apply(work, variables)


async def rehearse(work: Path) -> None:
    port = free_port()
    os.environ.update(LOCAL_CREDENTIALS)  # the boto3 clients here; never a real account
    os.environ["MOTO_ECS_SERVICE_RUNNING"] = "1"  # moto reports one task running per service
    # Every request after start-recording, to hold each role's calls to its policy.
    os.environ["MOTO_RECORDER_FILEPATH"] = str(work / "moto-recording.jsonl")
    moto = await start_moto(port, log=(work / "moto.log").open("wb"))
    endpoint = f"http://127.0.0.1:{port}"
    try:
        variables = {
            **create_secrets(endpoint),
            "region": REGION,
            "image_tag": "rehearsal",
            "embedded_endpoint": "true",
            "allow_plain_http": "true",
            "deletion_protection": "false",
            "ingestor_count": "1",
            "console_count": "1",
            "demo_emitters": "true",
            "emitter_a_count": "1",
            "emitter_b_count": "1",
            # The network with the most in it: private subnets, a NAT gateway per AZ, the
            # SQS interface endpoint. The existing-network mode is rehearsed after it.
            "nat_gateways": "per_az",
            "sqs_endpoint": "true",
        }
        # Terraform's own calls (its key is DEPLOY_KEY) are held to docs/iam's deploy role.
        policy = deploy_policy()
        prepare(work, endpoint)
        state = await recorded_apply(work, endpoint, variables)
        await moto_api(endpoint, "recorder/stop-recording")
        made = check_deploy_actions(
            await moto_api(endpoint, "recorder/download-recording"), policy, "apply"
        )
        step(
            f"terraform apply made {len(made)} actions, all allowed by the deploy role "
            "(docs/iam/deploy.json)"
        )
        await moto_api(endpoint, "recorder/reset-recording")
        # A refreshing plan, as the pull requests' read-only plan role runs it.
        await moto_api(endpoint, "recorder/start-recording")
        started = time.monotonic()
        terraform(work, "plan", "-lock=false", "-no-color", *var_args(variables))
        await moto_api(endpoint, "recorder/stop-recording")
        recording = await moto_api(endpoint, "recorder/download-recording")
        check_deploy_actions(recording, policy, "plan")
        made = check_deploy_actions(recording, plan_policy(), "plan", "plan role")
        step(
            f"terraform plan (refresh) in {time.monotonic() - started:.0f} s: {len(made)} "
            "actions, all allowed by the plan role and deploy role (docs/iam/plan.json, "
            f"deploy.json): {' '.join(made)}"
        )
        await moto_api(endpoint, "recorder/reset-recording")
        rollout(endpoint, state)
        await moto_api(endpoint, "recorder/start-recording")
        stack = tasks(state)
        check_task_contract(stack, state)
        out = outputs(state)
        (ingestor,) = [t for t in stack.values() if t.role == "ingestor"]
        ingestor.env = platform_env(ingestor, endpoint, out["ingest_url"], "")
        # The emitters send to the load balancer: here, its applied rules on loopback.
        front = FrontDoor(state, f"http://127.0.0.1:{ingestor.env['LOGPIPE_PORT']}")
        door = await front.start()
        for task in stack.values():
            if task is not ingestor:
                task.env = platform_env(task, endpoint, out["ingest_url"], door)
        step(
            "roles: "
            + ", ".join(
                f"{t.service} (ROLE={t.role}, {len(t.environment)} variables)"
                for t in stack.values()
            )
        )
        try:
            await pipeline(stack, state, work, front, door)
        finally:
            await front.stop()
        await moto_api(endpoint, "recorder/stop-recording")
        counts = check_permissions(await moto_api(endpoint, "recorder/download-recording"), state)
        step(f"every AWS call is allowed by its role's applied policy: {counts}")
        await moto_api(endpoint, "recorder/reset-recording")
        await moto_api(endpoint, "recorder/start-recording")
        started = time.monotonic()
        destroy(work, variables)
        await moto_api(endpoint, "recorder/stop-recording")
        made = check_deploy_actions(
            await moto_api(endpoint, "recorder/download-recording"), policy, "destroy"
        )
        step(
            f"terraform destroy in {time.monotonic() - started:.0f} s: {len(made)} actions, all "
            f"allowed by the deploy role (docs/iam/deploy.json): {' '.join(made)}"
        )
        await moto_api(endpoint, "recorder/reset-recording")
        await rehearse_existing_network(work, endpoint, variables, policy)
    finally:
        moto.terminate()
        await moto.wait()


# What the stack must not create in a network it was given.
NETWORK_TYPES = {
    "aws_vpc",
    "aws_subnet",
    "aws_internet_gateway",
    "aws_nat_gateway",
    "aws_eip",
    "aws_route_table",
    "aws_route_table_association",
    "aws_vpc_endpoint",
    "aws_flow_log",
    "aws_default_security_group",
}


def existing_network(endpoint: str) -> dict[str, str]:
    """A VPC with two public and two private subnets, made as its owner would (not by
    Terraform): the variables that hand it to the stack."""
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:2]
    subnets: dict[str, list[str]] = {"public": [], "private": []}
    for offset, kind in ((0, "public"), (10, "private")):
        for index, zone in enumerate(zones):
            subnet = ec2.create_subnet(
                VpcId=vpc, CidrBlock=f"10.77.{offset + index}.0/24", AvailabilityZone=zone
            )
            subnets[kind].append(subnet["Subnet"]["SubnetId"])
    return {
        "vpc_id": vpc,
        "public_subnet_ids": json.dumps(subnets["public"]),
        "private_subnet_ids": json.dumps(subnets["private"]),
    }


def check_existing_network(state: Mapping[str, Any], network: Mapping[str, str]) -> int:
    """The stack applied into `network` created none of it and put everything in it."""
    applied = resources(state)
    created = sorted({r["type"] for r in applied} & NETWORK_TYPES)
    if created:
        raise RehearsalError(f"with vpc_id the stack still created {created}")
    private = set(json.loads(network["private_subnet_ids"]))
    public = set(json.loads(network["public_subnet_ids"]))
    services = [r["values"] for r in applied if r["type"] == "aws_ecs_service"]
    for service in services:
        (config,) = service["network_configuration"]
        if set(config["subnets"]) != private or config["assign_public_ip"]:
            raise RehearsalError(f"{service['name']} is not in the private subnets: {config}")
    (lb,) = [r["values"] for r in applied if r["type"] == "aws_lb"]
    if set(lb["subnets"]) != public:
        raise RehearsalError(f"the load balancer is not in the public subnets: {lb['subnets']}")
    groups = [r["values"] for r in applied if r["type"] == "aws_security_group"]
    if any(g["vpc_id"] != network["vpc_id"] for g in groups):
        raise RehearsalError("a security group is outside the given VPC")
    return len(applied)


async def rehearse_existing_network(
    work: Path, endpoint: str, variables: Mapping[str, str], policy: Mapping[str, Any]
) -> None:
    """The same terraform/ applied into a VPC and subnets made beforehand (vpc_id,
    public_subnet_ids, private_subnet_ids), in a workspace of its own; then destroyed."""
    network = existing_network(endpoint)
    given = {
        **{k: v for k, v in variables.items() if k not in ("nat_gateways", "sqs_endpoint")},
        **network,
    }
    terraform(work, "workspace", "new", "-no-color", "existing-network")
    state = await recorded_apply(work, endpoint, given)
    await moto_api(endpoint, "recorder/stop-recording")
    made = check_deploy_actions(
        await moto_api(endpoint, "recorder/download-recording"), policy, "apply"
    )
    count = check_existing_network(state, network)
    rollout(endpoint, state)
    step(
        f"existing network {network['vpc_id']}: terraform apply made {len(made)} actions, all "
        f"allowed by the deploy role (docs/iam/deploy.json); {count} resources, no VPC, subnet, "
        "NAT gateway, route or endpoint among them; tasks in the private subnets, the load "
        "balancer in the public ones"
    )
    await moto_api(endpoint, "recorder/reset-recording")
    await moto_api(endpoint, "recorder/start-recording")
    destroy(work, given)
    await moto_api(endpoint, "recorder/stop-recording")
    made = check_deploy_actions(
        await moto_api(endpoint, "recorder/download-recording"), policy, "destroy"
    )
    step(f"existing network: terraform destroy made {len(made)} actions, all allowed too")


def cost_plans(
    settings: Mapping[str, Mapping[str, str]], source: Path = ROOT / "terraform"
) -> dict[str, dict[str, Any]]:
    """`terraform show -json` of a plan of a new stack per named set of variables, made
    against moto (it answers the data sources; nothing is applied), for tools/idle_cost.py."""
    plans = asyncio.run(_plans(settings, source))
    failed = {name: plan for name, plan in plans.items() if isinstance(plan, str)}
    if failed:
        raise RehearsalError(f"terraform plan failed: {failed}")
    return {name: plan for name, plan in plans.items() if not isinstance(plan, str)}


def plans(
    settings: Mapping[str, Mapping[str, str]], source: Path = ROOT / "terraform"
) -> dict[str, dict[str, Any] | str]:
    """Like cost_plans, but a plan Terraform refuses (a variable's validation) is its error
    text instead: what the tests of the variables' behaviour read."""
    return asyncio.run(_plans(settings, source))


async def _plans(
    settings: Mapping[str, Mapping[str, str]], source: Path
) -> dict[str, dict[str, Any] | str]:
    work = Path(tempfile.mkdtemp(prefix="logpipe-cost-"))
    os.environ.update(LOCAL_CREDENTIALS)
    port = free_port()
    moto = await start_moto(port, log=(work / "moto.log").open("wb"))
    endpoint = f"http://127.0.0.1:{port}"
    try:
        base = {
            **create_secrets(endpoint),
            "region": REGION,
            "image_tag": "v0.0.0",
            "allow_plain_http": "true",
        }
        prepare(work, endpoint, source)
        made: dict[str, dict[str, Any] | str] = {}
        for name, variables in settings.items():
            plan = work / f"{name}.tfplan"
            args = var_args({**base, **variables})
            try:
                terraform(work, "plan", "-lock=false", "-no-color", f"-out={plan}", *args)
            except RehearsalError as error:
                made[name] = str(error)
                continue
            made[name] = json.loads(terraform(work, "show", "-json", str(plan), capture=True))
        return made
    finally:
        moto.terminate()
        await moto.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    started = time.monotonic()
    if shutil.which("terraform") is None or not Path(MIRROR).is_dir():
        print(f"rehearsal skipped: needs terraform on PATH and the provider mirror {MIRROR}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="logpipe-rehearsal-"))
    try:
        asyncio.run(rehearse(work))
    except RehearsalError as error:
        print(f"rehearsal FAILED: {error}", file=sys.stderr)
        for log in sorted(work.glob("*.log")):
            print(f"--- {log.name} (last lines)", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
        print(f"(work directory kept: {work})", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    step(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
