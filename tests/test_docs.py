"""The docs cannot rot: links and anchors resolve, the configuration table is the variables
the code reads, the quick start is what `make up` prints, every alarm has a runbook, and the
cost at rest quoted is the generated table's."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from logpipe.cli import build_parser, settings_from
from logpipe.config import Settings
from logpipe.dev.local import StackState, banner

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
# An environment variable as the code spells it: ours, botocore's, and the container's role.
VARIABLE = re.compile(r"(?:LOGPIPE|AWS)_[A-Z0-9_]*[A-Z0-9]|ROLE")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(markdown: str) -> str:
    """The text outside code blocks and code spans, where links are links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, what is not a letter,
    digit, space, hyphen or underscore dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a markdown page, duplicates numbered as GitHub numbers them."""
    found: set[str] = set()
    for match in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", FENCE.sub("", page.read_text()), re.M):
        base = slug(match[1])
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def links(page: Path) -> Iterator[str]:
    for match in LINK.finditer(prose(page.read_text())):
        target = match[1]
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not ours
            yield target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    targets = list(links(page))
    assert targets, f"{page.name} links nowhere"
    broken = []
    for target in targets:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no {resolved.relative_to(ROOT)}")
        elif anchor and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, broken


def test_slugs_follow_githubs_rules() -> None:
    assert slug("Python: the logging handler") == "python-the-logging-handler"
    assert slug("Network: the stack's own VPC or yours") == "network-the-stacks-own-vpc-or-yours"
    assert slug("`GET /api/logs`") == "get-apilogs"
    assert slug("#### `<name>-dlq-not-empty`".lstrip("# ")) == "name-dlq-not-empty"
    assert slug("Is it for you?") == "is-it-for-you"


def test_every_page_of_docs_is_linked_from_the_readme() -> None:
    readme = set(links(ROOT / "README.md"))
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, page.name
    assert "CONTRIBUTING.md" in readme


# --- the configuration table is what the code reads ---


class Reads(MutableMapping[str, str]):
    """An empty environment that remembers every name asked of it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.names.add(key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        self.names.add(str(key))
        return False

    def get(self, key: str, default: Any = None) -> Any:
        self.names.add(key)
        return default

    def __setitem__(self, key: str, value: str) -> None:
        raise NotImplementedError

    def __delitem__(self, key: str) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def variables_the_code_reads() -> set[str]:
    """What Settings.from_env asks of an environment, and every variable name spelled out in
    the package's code (the roles' switches, the local stack's AWS check, the entrypoint)."""
    env = Reads()
    Settings.from_env(env)
    names = set(env.names)
    for module in (ROOT / "logpipe").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            value = node.value if isinstance(node, ast.Constant) else None
            if isinstance(value, str) and VARIABLE.fullmatch(value):
                names.add(value)
    return names


def variables_in_the_table() -> set[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    (table,) = re.findall(
        r"^\| variable \| role\(s\) \| default \| meaning \|\n((?:\|.*\n)+)", text, re.M
    )
    names: set[str] = set()
    for row in table.splitlines()[1:]:
        first = row.split("|")[1]
        names |= {n for n in re.findall(r"`([^`]+)`", first) if VARIABLE.fullmatch(n)}
    return names


def test_every_variable_the_code_reads_is_in_the_configuration_table() -> None:
    read, documented = variables_the_code_reads(), variables_in_the_table()
    assert "LOGPIPE_PORT" in read and "AWS_REGION" in read and "ROLE" in read
    assert not read - documented, f"read but not in docs/configuration.md: {read - documented}"


def test_every_variable_in_the_configuration_table_is_read_by_the_code() -> None:
    read, documented = variables_the_code_reads(), variables_in_the_table()
    assert not documented - read, f"in docs/configuration.md, read nowhere: {documented - read}"


# --- the quick start is what `make up` prints ---


def make_up_program() -> str:
    """The program `make up` runs, as make itself would run it."""
    dry = subprocess.run(
        ["make", "-n", "-s", "up", "ARGS="], cwd=ROOT, capture_output=True, text=True, check=True
    )
    (command,) = [line for line in dry.stdout.splitlines() if line.rstrip().endswith(" up")]
    return command.split()[0]


def code_block_after(text: str, marker: str) -> str:
    after = text[text.index(marker) :]
    match = re.search(r"```[a-z]*\n(.*?)\n```", after, re.S)
    assert match, marker
    return match[1]


def test_the_quick_start_is_what_make_up_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [make_up_program(), "up"])
    args = build_parser().parse_args(["up"])
    # The endpoint and the log path differ per run: they stand for any word.
    endpoint, log_path = "http://endpoint.invalid:1", "/LOG-PATH"
    settings = settings_from({}, args).with_overrides(endpoint_url=endpoint)
    state = StackState.of(settings, pid=1, console_port=args.console_port)
    printed = banner(state, log_path)
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start") : readme.index("## Send from your app")]

    shown = code_block_after(quick, "Once everything answers it prints:")
    expected = re.escape(printed).replace(re.escape(endpoint), r"\S+")
    assert re.fullmatch(expected.replace(re.escape(log_path), r"\S+"), shown), printed

    # The session in a second terminal runs exactly the commands the banner suggests.
    session = code_block_after(quick, "In a second terminal")
    send = printed.split("send an event:\n", 1)[1].split("\nread it back:", 1)[0]
    read = printed.split("read it back:\n", 1)[1].split("\n", 1)[0]
    assert "$ " + send.removeprefix("  ") in session
    assert "$ " + read.strip() in session
    assert read.strip().startswith(".venv/bin/logpipe query")
    assert f"open {state.console}/ for the console" in quick


# --- every alarm has a runbook; the cost quoted is the generated one ---


def test_every_alarm_terraform_makes_has_a_runbook() -> None:
    monitoring = (ROOT / "terraform" / "monitoring.tf").read_text()
    names = re.findall(r'alarm_name\s*=\s*"\$\{var\.name\}-([^"]+)"', monitoring)
    assert len(names) >= 8
    operations = (ROOT / "docs" / "operations.md").read_text()
    runbooks = " ".join(re.findall(r"^#### (.+)$", operations, re.M))
    for name in names:
        pattern = re.escape(f"`<name>-{name}`").replace(re.escape("${each.key}"), "[a-z]+")
        assert re.search(pattern, runbooks), f"no runbook for <name>-{name} in operations.md"


def test_the_cost_at_rest_quoted_is_the_generated_table() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    table = deploy[deploy.index("<!-- idle_cost.py --plan -->") :]
    totals = re.search(r"^\| \*\*total\*\* \| \*\*([\d.]+)\*\* \| \*\*([\d.]+)\*\* \|", table, re.M)
    assert totals, "no total row in the generated table of docs/deploy.md"
    for page in ("README.md", "docs/figures.md"):
        text = (ROOT / page).read_text()
        quoted = re.findall(r"\*\*\$([\d.]+)\*\* a month", text) + re.findall(
            r"\*\*\$([\d.]+)\*\* at its", text
        )
        assert quoted, page
        assert set(quoted) <= {totals[1], totals[2]}, (page, quoted, totals.groups())
