"""What a test needs, one marker each: unit, aws, e2e or deploy (pyproject.toml describes them)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

KINDS = ("unit", "aws", "e2e", "deploy")


def kind_problems(items: Iterable[pytest.Item]) -> list[str]:
    """One line per test that has not exactly one kind, or is `unit` yet uses the endpoint."""
    problems = []
    for item in items:
        kinds = [mark.name for mark in item.iter_markers() if mark.name in KINDS]
        if len(kinds) != 1:
            problems.append(f"{item.nodeid}: {', '.join(kinds) or 'no kind marker'}")
        elif kinds == ["unit"] and "aws_endpoint" in getattr(item, "fixturenames", ()):
            problems.append(f"{item.nodeid}: unit, but it uses the AWS endpoint")
    return problems


def slowest_first(items: list[pytest.Item], slow: tuple[str, ...]) -> None:
    """Move the tests whose node id starts with an entry of `slow` to the front, in its order."""

    def rank(item: pytest.Item) -> int:
        for position, prefix in enumerate(slow):
            if item.nodeid.startswith(prefix):
                return position
        return len(slow)

    items.sort(key=rank)
