"""The grader runs student notebooks and scores their check cells (issue "Classroom assignments").

Synthetic notebooks keep this fast: each is a teacher notebook with solution markers (or a variant of it),
so the same files also exercise vit_edu.assignments. The submissions are graded once per module.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nbformat
import pytest

from vit_edu import assignments, grading

import exercise_solutions

ROOT = Path(__file__).resolve().parent.parent

SETUP = """import math
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
torch.manual_seed(0)"""

EXERCISES = exercise_solutions.EXERCISES
NAMES = [name for name, _ in EXERCISES]
CALL = {"patchify": "patchify", "patch_embedding": "PatchEmbedding", "cls_and_pos": "add_cls_and_pos",
        "attention": "attention", "multi_head_attention": "MultiHeadAttention", "mlp": "MLP",
        "encoder_block": "EncoderBlock", "vit_forward": "vit_forward", "rollout": "attention_rollout"}


def check_cell(name: str) -> str:
    return f"from vit_edu.checks import check_{name}\n\ncheck_{name}({CALL[name]})"


def notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Exercises"), nbformat.v4.new_code_cell(SETUP)]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


def teacher(replace: dict | None = None, extra: dict | None = None, names=NAMES) -> nbformat.NotebookNode:
    """Solution + check cell per exercise; ``replace`` swaps a solution, ``extra`` inserts cells before one."""
    cells = []
    for name, solution in EXERCISES:
        if name not in names:
            continue
        cells += (extra or {}).get(name, [])
        cells += [(replace or {}).get(name, solution), check_cell(name)]
    return notebook(cells)


MUTANT_ATTENTION = '''def attention(q, k, v):
    weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    return weights @ v, weights'''


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("submissions")
    subs = {
        "ada_solution": teacher(),
        "bob_untouched": assignments.make_student_notebook(teacher()),
        # the last exercise is wrong (a wrong `attention` would also fail MultiHeadAttention, built on it)
        "cy_mutant": teacher(replace={"rollout": _MUTANT_ROLLOUT}),
        "dee_crash": teacher(names=NAMES[:3], extra={"cls_and_pos": ["import os\nos._exit(1)"]}),
        "eve_sysexit": teacher(names=NAMES[:3], extra={"patch_embedding": ["import sys\nsys.exit(0)"]}),
        "fay_raises": teacher(names=NAMES[:3], extra={"patch_embedding": ["raise RuntimeError('my own bug')"]},
                              replace={"cls_and_pos": "undefined_helper()\n" + dict(EXERCISES)["cls_and_pos"]}),
    }
    for student, nb in subs.items():
        (root / student).mkdir()
        nbformat.write(nb, root / student / "exercises.ipynb")
    (root / "ann_broken").mkdir()
    (root / "ann_broken" / "exercises.ipynb").write_text("{ this is not json")
    (root / "notes.txt").write_text("not a student folder")
    out = root / "grades.csv"
    rows = grading.grade(root, out, timeout=120, jobs=2)
    return rows, out


_MUTANT_ROLLOUT = '''def attention_rollout(attentions):
    result = None
    for attn in attentions:
        a = attn.mean(dim=1)  # no identity
        result = a if result is None else a @ result
    return result'''


def _by_student(rows):
    out: dict = {}
    for r in rows:
        out.setdefault(r["student"], {})[r["exercise"]] = r
    return out


def test_solution_scores_full_marks(graded):
    ada = _by_student(graded[0])["ada_solution"]
    assert list(ada) == NAMES
    assert all(r["passed"] for r in ada.values()), {k: r["message"] for k, r in ada.items() if not r["passed"]}


def test_untouched_student_copy_scores_zero(graded):
    bob = _by_student(graded[0])["bob_untouched"]
    assert list(bob) == NAMES and not any(r["passed"] for r in bob.values())
    assert all("not implemented" in r["message"] for r in bob.values())


def test_one_mutant_costs_one_exercise(graded):
    cy = _by_student(graded[0])["cy_mutant"]
    assert [n for n, r in cy.items() if not r["passed"]] == ["rollout"]
    assert "the identity is missing" in cy["rollout"]["message"]


def test_kernel_crash_scores_what_passed_before(graded):
    dee = _by_student(graded[0])["dee_crash"]
    assert dee["patchify"]["passed"] and dee["patch_embedding"]["passed"]
    assert not dee["cls_and_pos"]["passed"]
    assert dee["cls_and_pos"]["message"].startswith("not reached: the kernel died in cell")


def test_sys_exit_stops_the_notebook(graded):
    eve = _by_student(graded[0])["eve_sysexit"]
    assert eve["patchify"]["passed"]
    for name in ("patch_embedding", "cls_and_pos"):
        assert not eve[name]["passed"] and "not reached: cell" in eve[name]["message"]
        assert "SystemExit" in eve[name]["message"]


def test_a_raising_cell_does_not_stop_later_exercises(graded):
    fay = _by_student(graded[0])["fay_raises"]
    assert fay["patchify"]["passed"] and fay["patch_embedding"]["passed"]  # after the RuntimeError cell
    assert not fay["cls_and_pos"]["passed"]
    assert fay["cls_and_pos"]["message"].startswith("cell ") and "NameError" in fay["cls_and_pos"]["message"]


def test_broken_notebook_does_not_stop_the_others(graded):
    ann = _by_student(graded[0])["ann_broken"]
    assert list(ann) == ["(notebook)"] and not ann["(notebook)"]["passed"]
    assert "could not read the notebook" in ann["(notebook)"]["message"]
    assert "ada_solution" in _by_student(graded[0])


def test_csv_files(graded):
    rows, out = graded
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == grading.COLUMNS and len(written) == len(rows)
    with open(grading.summary_path(out), newline="") as f:
        summary = {r["student"]: r for r in csv.DictReader(f)}
    assert summary["ada_solution"]["total"] == "9" and summary["bob_untouched"]["total"] == "0"
    assert summary["cy_mutant"]["total"] == "8" and summary["dee_crash"]["total"] == "2"
    assert summary["ada_solution"]["max"] == summary["ann_broken"]["max"]


def test_table(graded):
    rows = graded[0]
    students = sorted({r["student"] for r in rows})
    table = grading.format_table(rows, students)
    ada = next(l for l in table.splitlines() if l.startswith("ada_solution"))
    assert ada.count("✓") == 9 and ada.endswith(" 9/10")  # 9 exercises + the broken notebook's column
    assert "✗" in next(l for l in table.splitlines() if l.startswith("cy_mutant"))


def test_timeout_scores_what_passed_before(tmp_path):
    nb = teacher(names=NAMES[:2], extra={"patch_embedding": ["import time\ntime.sleep(600)"]})
    (tmp_path / "subs" / "gus").mkdir(parents=True)
    nbformat.write(nb, tmp_path / "subs" / "gus" / "slow.ipynb")
    rows = grading.grade(tmp_path / "subs", tmp_path / "g.csv", timeout=120, cell_timeout=10, verbose=False)
    res = {r["exercise"]: r for r in rows}
    assert res["patchify"]["passed"]
    assert res["patch_embedding"]["message"].startswith("not reached: cell") and "timed out" in res["patch_embedding"]["message"]


def test_find_exercises_and_reference(tmp_path):
    nb = teacher(names=NAMES[:3])
    assert [e.name for e in grading.find_exercises(nb)] == NAMES[:3]
    no_checks = notebook(["x = 1"])
    ref = tmp_path / "ref"
    ref.mkdir()
    nbformat.write(nb, ref / "a.ipynb")
    nbformat.write(no_checks, tmp_path / "a.ipynb")
    res = grading.grade_notebook(tmp_path / "a.ipynb", expected=grading._expected_from(ref, "a.ipynb"))
    assert res == [(n, False, "check cell missing from the notebook") for n in NAMES[:3]]


def test_cli_usage_errors(tmp_path, capsys):
    assert grading.main([str(tmp_path / "missing")]) == 2
    assert "submissions folder not found" in capsys.readouterr().err
    assert grading.main([str(tmp_path), "--weight", "nope=2"]) == 2
    assert grading.main([str(tmp_path), "--jobs", "0"]) == 2
    with pytest.raises(SystemExit):
        grading.main([])
    assert grading.main([str(tmp_path), "--out", str(tmp_path / "g.csv")]) == 0  # empty folder: nothing to grade


def test_real_student_copy_scores_zero(tmp_path):
    """The generated student copy of a course notebook runs under the grader: every exercise 'not implemented'."""
    course = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
              if grading.find_exercises(nbformat.read(p, as_version=4))]
    if not course:
        pytest.skip("no course notebook with exercises yet")
    path = course[0]
    (tmp_path / "subs" / "zed").mkdir(parents=True)
    student = assignments.make_student_notebook(nbformat.read(path, as_version=4), path.name)
    nbformat.write(student, tmp_path / "subs" / "zed" / path.name)
    rows = grading.grade(tmp_path / "subs", tmp_path / "g.csv", timeout=120, verbose=False)
    assert rows and all(not r["passed"] and "not implemented" in r["message"] for r in rows), rows
