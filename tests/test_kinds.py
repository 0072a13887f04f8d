"""Every test says what it needs: exactly one of unit, aws, e2e, deploy (tests/support/kinds.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.support.kinds import kind_problems, slowest_first

pytestmark = pytest.mark.unit


@dataclass
class FakeItem:
    nodeid: str
    marks: list[str]
    fixturenames: list[str] = field(default_factory=list)

    def iter_markers(self) -> list[Any]:
        return [SimpleNamespace(name=name) for name in self.marks]


def items(*fakes: FakeItem) -> list[pytest.Item]:
    return cast(list[pytest.Item], list(fakes))


@pytest.mark.parametrize(
    ("marks", "fixtures", "problem"),
    [
        pytest.param(["aws"], ["aws_endpoint"], None, id="one-kind"),
        pytest.param(["unit", "parametrize", "timeout"], [], None, id="other-markers-dont-count"),
        pytest.param([], [], "t.py::x: no kind marker", id="none"),
        pytest.param(["unit", "e2e"], [], "t.py::x: unit, e2e", id="two"),
        pytest.param(["aws", "aws"], [], "t.py::x: aws, aws", id="module-and-function"),
        pytest.param(
            ["unit"], ["settings", "aws_endpoint"], "t.py::x: unit, but it uses", id="unit-uses-aws"
        ),
    ],
)
def test_a_test_needs_exactly_one_kind_and_unit_means_no_endpoint(
    marks: list[str], fixtures: list[str], problem: str | None
) -> None:
    problems = kind_problems(items(FakeItem("t.py::x", marks, fixtures)))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_this_suite_collects_with_one_kind_each(request: pytest.FixtureRequest) -> None:
    assert kind_problems(request.session.items) == []
    kinds = {m.name for m in request.node.iter_markers()} & {"unit", "aws", "e2e", "deploy"}
    assert kinds == {"unit"}


def test_the_slow_ones_move_to_the_front_in_the_given_order_the_rest_keep_theirs() -> None:
    names = ["a.py::1", "slow.py::1", "b.py::1", "slower.py::x", "slow.py::2", "c.py::1"]
    collected = items(*(FakeItem(n, ["unit"]) for n in names))
    slowest_first(collected, ("slower.py", "slow.py"))
    assert [i.nodeid for i in collected] == [
        "slower.py::x",
        "slow.py::1",
        "slow.py::2",
        "a.py::1",
        "b.py::1",
        "c.py::1",
    ]
