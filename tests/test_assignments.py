"""Student copies: solution regions become stubs, nothing of a solution leaks (issue "Classroom assignments")."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from vit_edu import assignments
from vit_edu.assignments import make_student_notebook

from exercise_solutions import EXERCISES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
COMMITTED = ROOT / "assignments" / "student"


def _nb(*sources: str, markdown: str = "# Title") -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(markdown)] + [nbformat.v4.new_code_cell(s) for s in sources]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
    return nb


SOLVED = '''def patchify(images, patch_size):
    "Cut images into patches."
    ### BEGIN SOLUTION
    p = patch_size
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
    ### END SOLUTION'''

CLASS = dict(EXERCISES)["mlp"]


def test_region_becomes_stub_at_marker_indentation():
    nb = _nb(SOLVED, CLASS, "x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION\nprint(x)")
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="hello\n")]
    nb.cells[1].execution_count = 3
    student = make_student_notebook(nb)
    assert student.cells[1].source == ('def patchify(images, patch_size):\n    "Cut images into patches."\n'
                                       "    # YOUR CODE HERE\n    raise NotImplementedError()")
    assert student.cells[2].source == (
        "class MLP(nn.Module):\n    def __init__(self, dim, hidden_dim):\n        super().__init__()\n"
        "        # YOUR CODE HERE\n        raise NotImplementedError()\n\n    def forward(self, x):\n"
        "        # YOUR CODE HERE\n        raise NotImplementedError()")
    assert student.cells[3].source == "x = 1\n# YOUR CODE HERE\nraise NotImplementedError()\nprint(x)"
    assert all(c.outputs == [] and c.execution_count is None for c in student.cells if c.cell_type == "code")
    assert student.cells[0].source == "# Title"
    assert nb.cells[1].outputs and "BEGIN SOLUTION" in nb.cells[1].source  # the source notebook is untouched
    nbformat.validate(student)


def test_markdown_answer_region_becomes_text_stub():
    nb = _nb("x = 1", markdown="Why?\n### BEGIN SOLUTION\nBecause softmax saturates.\n### END SOLUTION")
    assert make_student_notebook(nb).cells[0].source == "Why?\nYOUR ANSWER HERE"


def test_student_stub_raises_not_implemented():
    student = make_student_notebook(_nb(SOLVED))
    scope: dict = {}
    exec(student.cells[1].source, scope)  # the stub is valid Python and fails the right way
    with pytest.raises(NotImplementedError):
        scope["patchify"](None, 4)


@pytest.mark.parametrize("source, message", [
    ("### BEGIN SOLUTION\nx = 1", r"demo.ipynb, cell 1: '### BEGIN SOLUTION' at line 1 has no matching"),
    ("x = 1\n### END SOLUTION", r"demo.ipynb, cell 1: '### END SOLUTION' at line 2 without a matching"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n### END SOLUTION", r"cell 1: nested"),
])
def test_unpaired_markers_raise(source, message):
    with pytest.raises(ValueError, match=message):
        make_student_notebook(_nb(source), "demo.ipynb")


def test_wrong_type_raises():
    with pytest.raises(TypeError, match="NotebookNode"):
        make_student_notebook({"cells": []})


def test_generate_check_and_cli(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    nbformat.write(_nb(SOLVED), src / "01_a.ipynb")
    nbformat.write(_nb("print(1)"), src / "02_no_exercise.ipynb")
    written = assignments.generate(src, out)
    assert [p.name for p in written] == ["01_a.ipynb", "02_no_exercise.ipynb"]
    assert "NotImplementedError" in nbformat.read(out / "01_a.ipynb", as_version=4).cells[1].source
    assert nbformat.read(out / "02_no_exercise.ipynb", as_version=4).cells[1].source == "print(1)"
    assert assignments.main(["--src", str(src), "--out", str(out), "--check"]) == 0

    nbformat.write(_nb(SOLVED.replace("Cut images", "Cut the images")), src / "01_a.ipynb")  # the source changed
    (out / "99_orphan.ipynb").write_text((out / "02_no_exercise.ipynb").read_text())
    capsys.readouterr()
    assert assignments.main(["--src", str(src), "--out", str(out), "--check"]) == 1
    text = capsys.readouterr().out
    assert "stale" in text and "out of date" in text and "01_a.ipynb" in text and "no source notebook" in text

    assert assignments.main(["--src", str(src), "--out", str(out)]) == 0
    assert "wrote 2 student notebooks (1 with exercises)" in capsys.readouterr().out
    assert not (out / "99_orphan.ipynb").exists()
    assert assignments.main(["--src", str(src), "--out", str(out), "--check"]) == 0
    assert assignments.main(["--src", str(tmp_path / "missing"), "--out", str(out)]) == 2


def _leaks(source_nb: nbformat.NotebookNode, student_nb: nbformat.NotebookNode, name: str) -> list:
    """Solution lines that show up in the student copy (unless the source also has them outside regions)."""
    solution = {l.strip() for l in assignments.solution_lines(source_nb, name) if l.strip()}
    outside = {l.strip() for c in make_student_notebook(source_nb, name).cells for l in c.source.split("\n")}
    secret = solution - outside
    return [l for c in student_nb.cells for l in c.source.split("\n") if l.strip() in secret]


COURSE = sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("path", COURSE, ids=[p.name for p in COURSE])
def test_course_notebooks_make_clean_student_copies(path):
    source = nbformat.read(path, as_version=4)
    student = make_student_notebook(source, path.name)
    text = nbformat.writes(student)
    assert assignments.BEGIN not in text and assignments.END not in text
    assert _leaks(source, student, path.name) == []
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
    n_regions = sum(l.strip() == assignments.BEGIN for c in source.cells if c.cell_type == "code" for l in c.source.split("\n"))
    assert text.count("raise NotImplementedError()") >= n_regions


def test_committed_student_copies_are_up_to_date():
    """assignments/student/ is what `python -m vit_edu assignments` makes from notebooks/ right now."""
    if not COMMITTED.is_dir():
        pytest.skip("assignments/student/ not generated yet (run: python -m vit_edu assignments)")
    assert assignments.stale(NOTEBOOKS, COMMITTED) == []
    for path in sorted(COMMITTED.glob("*.ipynb")):
        student = nbformat.read(path, as_version=4)
        assert _leaks(nbformat.read(NOTEBOOKS / path.name, as_version=4), student, path.name) == []
        assert "BEGIN SOLUTION" not in path.read_text()
