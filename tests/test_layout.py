"""The package's layers: which part of logpipe may import which, read from the source.

    asgi, __main__ -> cli (the composition root)
      -> dev (local stack, bench, faults, naive; only cli imports it)
      -> roles: ingest, process, read, emitter (never each other)
      -> aws, web -> obs -> config, lifecycle, heap -> core -> errors
    client -> core, errors only (and nothing of the server side reachable from it)

A module may import its own part and any lower layer; parts of one layer stay apart.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "logpipe"

# Lowest first. A part is a subpackage (`logpipe.core`) or a top-level module (`logpipe.cli`).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "__init__"}),
    frozenset({"core"}),
    frozenset({"config", "lifecycle", "heap", "client"}),
    frozenset({"obs"}),
    frozenset({"aws", "web"}),
    frozenset({"ingest", "process", "read", "emitter"}),
    frozenset({"dev"}),
    frozenset({"cli"}),
    frozenset({"asgi", "__main__"}),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
# Parts with a narrower rule than their layer's.
ONLY = {"client": frozenset({"core", "errors"})}
DEV_IMPORTERS = frozenset({"cli", "dev"})
# What a `pip install logpipe` (the client alone) does not have.
SERVER_ONLY = frozenset(
    {
        "aioboto3",
        "aiobotocore",
        "boto3",
        "botocore",
        "flask",
        "google",
        "moto",
        "opentelemetry",
        "prometheus_client",
        "starlette",
        "uvicorn",
        "werkzeug",
    }
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(root: Path) -> dict[str, set[str]]:
    """Every module under `root` and what it imports (anywhere in it, lazily or not)."""
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    # `from logpipe.aws import clients` imports a module; `import X` a name.
                    child = f"{base}.{alias.name}"
                    found.add(child if child in modules else base)
        graph[name] = found
    return graph


def part_of(module: str, top: str = "logpipe") -> str | None:
    """`logpipe.aws.clients` -> `aws`; `logpipe` -> `__init__`; outside the package -> None."""
    if module == top:
        return "__init__"
    if not module.startswith(top + "."):
        return None
    return module.split(".")[1]


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import that goes against the layers, as `importer -> imported: why`."""
    found = []
    for importer, imported in sorted(graph.items()):
        source = part_of(importer)
        assert source in RANK, f"{importer}: no layer for {source!r}; add it to LAYERS"
        for target_module in sorted(imported):
            target = part_of(target_module)
            if target is None or target == source:
                continue
            assert target in RANK, f"{target_module}: no layer for {target!r}; add it to LAYERS"
            edge = f"{importer} -> {target_module}"
            if target == "dev" and source not in DEV_IMPORTERS:
                found.append(f"{edge}: only cli imports dev")
            elif source in ONLY and target not in ONLY[source]:
                found.append(f"{edge}: {source} imports only {', '.join(sorted(ONLY[source]))}")
            elif RANK[target] == RANK[source]:
                found.append(f"{edge}: {source} and {target} are peers")
            elif RANK[target] > RANK[source]:
                found.append(f"{edge}: {source} is below {target}")
    return found


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Cycles between parts (a part importing itself is not one)."""
    edges: dict[str, set[str]] = {}
    for importer, imported in graph.items():
        source = part_of(importer)
        for target in map(part_of, imported):
            if source and target and target != source:
                edges.setdefault(source, set()).add(target)
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def reachable(graph: Mapping[str, Iterable[str]], start: str) -> set[str]:
    """Modules imported, directly or not, by importing `start` (its packages included)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        parents = [name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)]
        for module in [name, *parents]:
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return read_imports(PACKAGE)


def test_every_import_follows_the_layers(graph: dict[str, set[str]]) -> None:
    assert violations(graph) == []


def test_no_cycles_between_parts(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_nothing_of_the_server_side_is_reachable_from_the_client(
    graph: dict[str, set[str]],
) -> None:
    modules = reachable(graph, "logpipe.client")
    assert {part_of(m) for m in modules if part_of(m)} <= {"__init__", "client", "core", "errors"}
    third_party = {m.split(".")[0] for m in modules if part_of(m) is None}
    assert third_party & SERVER_ONLY == set()
    assert "aiohttp" in third_party  # the walk does see third-party imports


def test_only_the_cli_imports_dev(graph: dict[str, set[str]]) -> None:
    importers = {
        part_of(m) for m, imported in graph.items() if any(part_of(i) == "dev" for i in imported)
    }
    assert importers <= DEV_IMPORTERS


@pytest.mark.parametrize(
    ("importer", "imported", "why"),
    [
        pytest.param("logpipe.core.event", "logpipe.aws.clients", "below", id="core-to-aws"),
        pytest.param("logpipe.ingest.app", "logpipe.dev.naive", "only cli", id="role-to-dev"),
        pytest.param("logpipe.asgi", "logpipe.dev.faults", "only cli", id="asgi-to-dev"),
        pytest.param("logpipe.process.processor", "logpipe.read.reader", "peers", id="peers"),
        pytest.param("logpipe.client.clients", "logpipe.config", "imports only", id="client"),
        pytest.param("logpipe.obs.metrics", "logpipe.aws.clients", "below", id="obs-to-aws"),
    ],
)
def test_a_wrong_way_import_is_reported(importer: str, imported: str, why: str) -> None:
    [problem] = violations({importer: {imported, "logpipe.errors", "orjson"}})
    assert problem.startswith(f"{importer} -> {imported}: ")
    assert why in problem


def test_a_synthetic_tree_is_read_and_judged(tmp_path: Path) -> None:
    root = tmp_path / "logpipe"
    files = {
        "__init__.py": "",
        "errors.py": "",
        "core/__init__.py": "",
        "core/event.py": "import orjson\nfrom logpipe.errors import X\n",
        "aws/__init__.py": "",
        "aws/clients.py": "from logpipe.core import event\n",
        # A lazy wrong-way import inside a function still counts, as does a relative one.
        "core/keys.py": "def f():\n    from ..aws import clients\n",
        "client/__init__.py": "from logpipe.client.api import C\n",
        "client/api.py": "import starlette\nfrom logpipe.core.event import Y\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = read_imports(root)
    assert graph["logpipe.aws.clients"] == {"logpipe.core.event"}
    assert graph["logpipe.core.keys"] == {"logpipe.aws.clients"}
    assert violations(graph) == ["logpipe.core.keys -> logpipe.aws.clients: core is below aws"]
    assert cycles(graph) == [["aws", "core", "aws"]]
    assert "starlette" in reachable(graph, "logpipe.client")
