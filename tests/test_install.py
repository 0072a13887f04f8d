"""The installs, each into a fresh virtualenv from the built wheel.

- `pip install logpipe`: the client alone; nothing of the server side, no test tooling.
- `pip install logpipe[server]`: exactly requirements.lock (what the image installs); the roles
  run, against any endpoint, without moto, flask or werkzeug.

Offline-safe and quick: the wheel is built from a copy of what the Dockerfile copies, and each
venv gets `--no-deps` installs of pinned versions (the server's from requirements.lock, the
client's from the dev venv's own pins); `pip check` proves nothing is missing.
"""

from __future__ import annotations

import asyncio
import email
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from logpipe.config import Settings
from logpipe.dev.processes import RoleProcess, role_env, wait_http

ROOT = Path(__file__).resolve().parent.parent
# Never in the client's install; the server's may have the first group, never the second.
SERVER_SIDE = {"aioboto3", "aiobotocore", "botocore", "starlette", "uvicorn", "prometheus-client"}
SERVER_SIDE |= {"opentelemetry-proto", "protobuf"}
TEST_TOOLING = {"moto", "flask", "flask-cors", "werkzeug", "responses", "docker", "pytest"}

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("install"), pytest.mark.timeout(300)]


def _run(*args: str | Path, timeout: float = 180, **kwargs: Any) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _pip(python: Path, *args: str | Path) -> str:
    """The test venv's pip, installing into (or asking about) another venv's interpreter."""
    return _run(
        sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python, *args
    )


def _venv(path: Path) -> Path:
    _run(sys.executable, "-m", "venv", "--without-pip", path)
    return path / "bin" / "python"


def _installed(python: Path) -> set[str]:
    listed = json.loads(_pip(python, "list", "--format", "json"))
    return {canonicalize_name(d["name"]) for d in listed}


def _requires(metadata: email.message.Message, extra: str = "") -> set[str]:
    """The names the wheel requires, with `extra` (or none) selected."""
    names: set[str] = set()
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": extra}):
            if extra and req.marker is None:
                continue  # the base's, not the extra's
            names.add(canonicalize_name(req.name))
    return names


def _closure(names: set[str]) -> set[str]:
    """`names` and everything they need, as installed here (the dev venv holds them all)."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for line in importlib.metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return found


def _locked(lock: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from what the Dockerfile copies (never writing into the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "logpipe", src / "logpipe", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, src, timeout=240)
    [built] = out.glob("logpipe-*.whl")
    return built


@pytest.fixture(scope="module")
def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as whl:
        [name] = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(whl.read(name))


@pytest.fixture(scope="module")
def base(
    wheel: Path, metadata: email.message.Message, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    python = _venv(tmp_path_factory.mktemp("base") / "venv")
    pins = [f"{n}=={importlib.metadata.version(n)}" for n in sorted(_closure(_requires(metadata)))]
    _pip(python, "install", "--quiet", "--no-deps", wheel, *pins)
    return python


@pytest.fixture(scope="module")
def server(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = _venv(tmp_path_factory.mktemp("server") / "venv")
    _pip(python, "install", "--quiet", "--no-deps", "-r", ROOT / "requirements.lock", wheel)
    return python


def test_the_extras_build_on_each_other(metadata: email.message.Message) -> None:
    base, server = _requires(metadata), _requires(metadata, "server")
    local, dev = _requires(metadata, "local"), _requires(metadata, "dev")
    assert base == {"aiohttp", "orjson"}
    assert server <= local <= dev
    assert {"moto", "flask"} <= local - server
    assert server & TEST_TOOLING == set()


def test_the_wheel_carries_every_subpackage_and_the_console_page(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    for part in ("core", "aws", "ingest", "process", "read", "obs", "client", "dev"):
        assert f"logpipe/{part}/__init__.py" in names
    assert {"logpipe/read/static/index.html", "logpipe/read/static/console.js"} <= names


def test_the_client_installs_alone_and_imports(base: Path) -> None:
    _pip(base, "check")  # every requirement of what is installed is there
    installed = _installed(base)
    assert installed & (SERVER_SIDE | TEST_TOOLING) == set()
    print(f"base install: {len(installed)} packages")
    _run(base, "-c", "from logpipe.client import AsyncClient, Client, LogpipeHandler", cwd="/")
    # The roles are not part of it: they need the server extra.
    done = subprocess.run(
        [base, "-c", "import logpipe.process.processor"], capture_output=True, text=True, cwd="/"
    )
    assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr


def test_the_server_install_is_the_lock_and_has_no_test_tooling(server: Path) -> None:
    _pip(server, "check")
    installed = _installed(server)
    assert installed - {"logpipe"} == set(_locked(ROOT / "requirements.lock"))
    assert installed & TEST_TOOLING == set()
    print(f"server install: {len(installed)} packages")
    help_text = _run(server.parent / "logpipe", "processor", "--help", cwd="/")
    assert "usage: logpipe processor" in help_text
    roles = "logpipe.asgi, logpipe.ingest.app, logpipe.process.processor, logpipe.read.console"
    _run(server, "-c", f"import logpipe.emitter, {roles}", cwd="/")


@pytest.fixture
def server_env(server: Path, settings: Settings) -> Iterator[dict[str, str]]:
    env = role_env(settings, ROLE="processor", LOGPIPE_METRICS_PORT=settings.metrics_port)
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{server.parent}{os.pathsep}{env.get('PATH', '')}"
    yield env


async def test_a_processor_from_the_server_install_runs_against_an_endpoint(
    server: Path,
    server_env: dict[str, str],
    settings: Settings,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """ROLE=processor, as the image starts it, against moto's server as the endpoint."""
    with (tmp_path / "processor.log").open("wb") as log:
        role = RoleProcess(
            "processor",
            await asyncio.create_subprocess_exec(
                server.parent / "logpipe",
                env=server_env,
                cwd="/",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            ),
        )
        try:
            await wait_http(http, f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout=60)
        finally:
            code = await role.stop()
    assert code == 0, (tmp_path / "processor.log").read_text()
