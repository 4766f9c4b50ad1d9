"""The self-checks against the adversarial sets in tests/adversarial/ (issue 9, point 2).

Every right answer passes, every mistake is rejected (with seeds 0 and 1, as the grader draws a seed per
run), and at least 80 % of the rejections name the mistake (the message holds the set's keyword).
Run ``python benchmarks/adversarial_report.py`` for the table alone.
"""

from __future__ import annotations

import functools

import pytest
import torch

from adversarial import Result, details, evaluate, load, set_files, table
from vit_edu.checks import CHECKS

pytestmark = pytest.mark.usefixtures("single_thread")


@functools.lru_cache(maxsize=None)
def _result(name: str) -> Result:
    torch.manual_seed(0)
    return evaluate(next(p for p in set_files() if p.name == name))


def _known(name: str) -> bool:
    return load(next(p for p in set_files() if p.name == name)).CHECK in CHECKS


@pytest.mark.parametrize("name", [p.name for p in set_files()])
def test_adversarial_set(name):
    assert _known(name), f"{name}: its CHECK is not an exercise of vit_edu.checks.CHECKS"
    r = _result(name)
    assert r.correct >= 3 and r.mistakes >= 8, f"{name}: at least 3 right answers and 8 mistakes"
    assert not r.rejected and not r.accepted, details([r])


def test_every_exercise_has_its_set_and_solution():
    """An exercise added to a table is measured like the others: its adversarial set and its written solution
    (the synthetic teacher notebooks of the grader's and the assignments' tests) exist."""
    from exercise_solutions import EXERCISES as SOLUTIONS

    sets = {load(p).CHECK for p in set_files()}
    assert set(CHECKS) <= sets, f"exercises without a set in tests/adversarial/: {sorted(set(CHECKS) - sets)}"
    solved = {name for name, _ in SOLUTIONS}
    missing = sorted(set(CHECKS) - solved)
    assert not missing, f"exercises without a solution in tests/exercise_solutions.py: {missing}"


def test_adversarial_messages_name_the_mistake(capsys):
    results = [_result(p.name) for p in set_files() if _known(p.name)]
    named, total = sum(r.named for r in results), sum(r.mistakes for r in results)
    with capsys.disabled():
        print("\n" + table(results))
    assert total and named / total >= 0.8, details(results)
