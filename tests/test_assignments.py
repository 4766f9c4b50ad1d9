"""Student copies, nbgrader metadata and the handout: solution regions become stubs, nothing of a solution
leaks, every exercise's answer and check cells carry the metadata nbgrader grades by."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from vit_edu.__main__ import main as cli_main
from vit_edu.classroom import assignments, handout
from vit_edu.classroom.assignments import add_nbgrader_metadata, find_exercises, make_student_notebook
from vit_edu.explain import viz

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


SETUP = "import torch\nfrom einops import rearrange"
STATEMENT = "**Exercise 1 (2 points): `patchify`**\n\nCut images into patches, row by row."
CHECK = "from vit_edu.checks import check_patchify\ncheck_patchify(patchify)"


def _course_nb(solution: str = SOLVED, statement: str = STATEMENT, check: str = CHECK,
               extra=()) -> nbformat.NotebookNode:
    """A teacher notebook as the course writes them: title, setup cell, statement, answer, check, demo."""
    nb = _nb(SETUP, solution, check, "print(patchify(torch.zeros(1, 3, 4, 4), 2).shape)", *extra,
             markdown="# 01 · Patches")
    nb.cells.insert(2, nbformat.v4.new_markdown_cell(statement))
    nb.cells[1].metadata["tags"] = ["setup"]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
    return nb


def test_generate_check_and_cli(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    nbformat.write(_course_nb(), src / "01_a.ipynb")
    nbformat.write(_nb("print(1)"), src / "02_no_exercise.ipynb")
    written = assignments.generate(src, out)
    assert [p.name for p in written] == ["01_a.ipynb", "02_no_exercise.ipynb"]
    assert "NotImplementedError" in nbformat.read(out / "01_a.ipynb", as_version=4).cells[3].source
    assert nbformat.read(out / "02_no_exercise.ipynb", as_version=4).cells[1].source == "print(1)"
    assert assignments.main(["--src", str(src), "--out", str(out), "--check"]) == 1  # no metadata in src yet
    assert "01_a.ipynb, cell 3: nbgrader metadata missing" in capsys.readouterr().out
    assert assignments.main(["--src", str(src), "--out", str(out)]) == 0
    assert "rewrote 1 teacher notebook(s)" in capsys.readouterr().out
    assert assignments.main(["--src", str(src), "--out", str(out), "--check"]) == 0

    nbformat.write(add_nbgrader_metadata(_course_nb(SOLVED.replace("Cut images", "Cut the images"))),
                   src / "01_a.ipynb")  # the source changed
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

    nbformat.write(_course_nb(statement="**Exercise 1: `patchify`**"), src / "01_a.ipynb")
    capsys.readouterr()
    assert assignments.main(["--src", str(src), "--out", str(out)]) == 2  # a clear error, nothing half-written
    assert "error: 01_a.ipynb, cell 2: 'Exercise 1' states no points" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ nbgrader metadata
ANSWER_META = {"solution": True, "grade": False, "locked": False, "grade_id": "patchify_answer", "schema_version": 3}
CHECK_META = {"grade": True, "solution": False, "locked": True, "points": 2, "grade_id": "patchify_check",
              "schema_version": 3}


def test_metadata_from_markers_and_statement():
    nb = add_nbgrader_metadata(_course_nb(), "01_a.ipynb")
    assert nb.cells[3].metadata["nbgrader"] == ANSWER_META
    assert nb.cells[4].metadata["nbgrader"] == CHECK_META
    assert [i for i, c in enumerate(nb.cells) if "nbgrader" in c.metadata] == [3, 4]
    assert nb.cells[1].metadata["tags"] == ["setup"]
    assert add_nbgrader_metadata(nb, "01_a.ipynb") == nb  # idempotent
    assert assignments.metadata_problems(nb, "01_a.ipynb") == []
    (ex,) = find_exercises(nb, "01_a.ipynb")
    assert (ex.key, ex.check, ex.number, ex.points, ex.title, ex.statement, ex.answers, ex.check_cell) == (
        "patchify", "patchify", "1", 2, "`patchify`", 2, (3,), 4)


def test_student_copy_keeps_metadata_and_locks_the_check():
    student = make_student_notebook(add_nbgrader_metadata(_course_nb()), "01_a.ipynb")
    assert student.cells[3].metadata["nbgrader"] == ANSWER_META and student.cells[3].metadata["deletable"] is False
    assert student.cells[4].metadata["nbgrader"] == CHECK_META
    assert student.cells[4].metadata["editable"] is False and student.cells[4].metadata["deletable"] is False
    assert student.cells[1].metadata == {"tags": ["setup"]}  # the set-up cell stays editable and tagged
    assert "editable" not in student.cells[5].metadata
    nbformat.validate(student)


def test_metadata_is_stale_when_an_exercise_changes():
    nb = add_nbgrader_metadata(_course_nb())
    changed = _course_nb(statement=STATEMENT.replace("(2 points)", "(3 points)"))
    changed.cells[3].metadata["nbgrader"] = nb.cells[3].metadata["nbgrader"]
    changed.cells[4].metadata["nbgrader"] = nb.cells[4].metadata["nbgrader"]
    changed.cells[5].metadata["nbgrader"] = dict(ANSWER_META, grade_id="leftover")
    problems = assignments.metadata_problems(changed, "x.ipynb")
    assert len(problems) == 2, problems
    assert problems[0].startswith("x.ipynb, cell 4: nbgrader metadata out of date (expected {")
    assert problems[1].startswith("x.ipynb, cell 5: nbgrader metadata not an exercise cell (expected None")
    assert add_nbgrader_metadata(changed).cells[4].metadata["nbgrader"]["points"] == 3
    assert "nbgrader" not in add_nbgrader_metadata(changed).cells[5].metadata


def test_same_check_twice_and_several_answer_cells():
    helper = "def helper(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION"
    second = [nbformat.v4.new_markdown_cell("## Exercise 1.2 (1.5 points): patchify again"),
              nbformat.v4.new_code_cell(helper), nbformat.v4.new_code_cell(SOLVED), nbformat.v4.new_code_cell(CHECK)]
    nb = _course_nb()
    nb.cells += second
    exercises = find_exercises(nb, "x.ipynb")
    assert [(e.key, e.number, e.points, e.answers) for e in exercises] == [
        ("patchify", "1", 2, (3,)), ("patchify_2", "1.2", 1.5, (7, 8))]
    meta = add_nbgrader_metadata(nb).cells
    assert [meta[i].metadata["nbgrader"]["grade_id"] for i in (7, 8, 9)] == [
        "patchify_2_answer", "patchify_2_answer_2", "patchify_2_check"]
    assert meta[9].metadata["nbgrader"]["points"] == 1.5


def _with(cells) -> nbformat.NotebookNode:
    nb = _nb(markdown="# T")
    nb.cells = [nbformat.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbformat.v4.new_code_cell(c)
                for c in cells]
    return nb


@pytest.mark.parametrize("cells, message", [
    (["md:**Exercise 1: `patchify`**", SOLVED, CHECK], r"x.ipynb, cell 0: 'Exercise 1' states no points"),
    (["md:**Exercise 1 (0 points): p**", SOLVED, CHECK], r"cell 0: 'Exercise 1' is worth 0 points"),
    (["md:**Exercise 1 (2 points): p**\n\n**Exercise 1 (3 points): p**", SOLVED, CHECK],
     r"cell 0: 'Exercise 1' states different points \(2 and 3\)"),
    (["md:**Exercise 1 (2 points): p**\n**Exercise 2 (2 points): q**", SOLVED, CHECK], r"cell 0: states several"),
    (["md:Some text", SOLVED, CHECK], r"x.ipynb, cell 1: answer cell without an exercise statement"),
    (["md:**Exercise 1 (2 points): p**", SOLVED, "x = 1"], r"cell 1: answer cell without a check cell"),
    (["md:**Exercise 1 (2 points): p**", CHECK], r"cell 1: check_patchify\(...\) has no answer cell"),
    (["md:**Exercise 1 (2 points): p**", SOLVED, CHECK, CHECK], r"cell 3: check_patchify\(...\) has no answer"),
    (["md:**Exercise 1 (2 points): p**", SOLVED + "\ncheck_patchify(patchify)"], r"cell 1: a solution region and"),
    (["md:**Exercise 1 (2 points): p**", SOLVED, "check_patchify(f)\ncheck_mlp(g)"], r"cell 2: 2 check calls"),
    (["md:**Exercise 1 (2 points): p**", SOLVED, CHECK, "md:**Exercise 1 (1 point): q**", SOLVED, CHECK],
     r"cell 3: 'Exercise 1' is stated twice"),
    (["md:Why?\n### BEGIN SOLUTION\nbecause\n### END SOLUTION"], r"cell 0: a solution region in a markdown cell"),
])
def test_broken_exercise_layouts_raise_naming_the_cell(cells, message):
    with pytest.raises(ValueError, match=message):
        find_exercises(_with(cells), "x.ipynb")


def test_write_metadata_changes_only_metadata_and_is_idempotent(tmp_path):
    nbformat.write(_course_nb(), tmp_path / "01_a.ipynb")
    nbformat.write(_nb("print(1)"), tmp_path / "02_b.ipynb")
    before = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.ipynb")}
    assert [p.name for p in assignments.write_metadata(tmp_path)] == ["01_a.ipynb"]
    after = json.loads((tmp_path / "01_a.ipynb").read_text())
    assert after["cells"][4]["metadata"]["nbgrader"] == CHECK_META
    for cell in after["cells"]:
        cell["metadata"].pop("nbgrader", None)
    assert after == before["01_a.ipynb"]  # nothing but the nbgrader entries changed
    text = (tmp_path / "01_a.ipynb").read_text()
    assert assignments.write_metadata(tmp_path) == []  # second run: nothing to do
    assert (tmp_path / "01_a.ipynb").read_text() == text


def test_nbgrader_course_layout(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_course_nb(), src / "01_a.ipynb")
    nbformat.write(_nb("print(1)"), src / "02_b.ipynb")
    course = tmp_path / "course"
    assert assignments.main(["--src", str(src), "--nbgrader-course", str(course), "--notebooks", "01_a"]) == 0
    assert sorted(str(p.relative_to(course)) for p in course.rglob("*") if p.is_file()) == [
        "nbgrader_config.py", "source/01_a/01_a.ipynb"]
    config = (course / "nbgrader_config.py").read_text()
    assert "c.Execute.timeout = 900" in config and 'c.CourseDirectory.course_id = "vit_edu"' in config
    compile(config, "nbgrader_config.py", "exec")
    nb = nbformat.read(course / "source/01_a/01_a.ipynb", as_version=4)
    assert nb.cells[4].metadata["nbgrader"] == CHECK_META and "BEGIN SOLUTION" in nb.cells[3].source
    assert assignments.main(["--src", str(src), "--nbgrader-course", str(course), "--notebooks", "nope"]) == 2
    assert "no notebook nope" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--check", "--nbgrader-course", "{course}"], "--check writes nothing and --nbgrader-course writes"),
    (["--notebooks", "01_a"], "--notebooks picks the notebooks of --nbgrader-course"),
])
def test_options_that_would_be_ignored_are_refused_and_nothing_is_written(tmp_path, capsys, argv, message):
    """--check with --nbgrader-course wrote the course (--check: 'write nothing'); --notebooks without it wrote
    every student copy."""
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_course_nb(), src / "01_a.ipynb")
    before = (src / "01_a.ipynb").read_bytes()
    argv = [a.format(course=tmp_path / "course") for a in argv]
    with pytest.raises(SystemExit) as stop:
        assignments.main(["--src", str(src), "--out", str(tmp_path / "out"), *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "course").exists() and not (tmp_path / "out").exists()
    assert (src / "01_a.ipynb").read_bytes() == before


_leaks = assignments.leaked_lines


COURSE = sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("path", COURSE, ids=[p.name for p in COURSE])
def test_course_notebooks_make_clean_student_copies(path):
    source = nbformat.read(path, as_version=4)
    student = make_student_notebook(source, path.name)
    text = nbformat.writes(student)
    assert assignments.BEGIN not in text and assignments.END not in text
    assert _leaks(source, student, path.name) == []
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
    def regions(experiment: bool) -> int:
        return sum(l.strip() == assignments.BEGIN for c in source.cells if c.cell_type == "code"
                   and c.metadata.get("nbgrader", {}).get("grade_id", "").startswith(assignments.EXPERIMENT_PREFIX) == experiment
                   for l in c.source.split("\n"))
    # a checked exercise's region raises until solved; an open experiment's region becomes a comment that runs
    assert text.count("raise NotImplementedError()") >= regions(False)
    assert text.count(assignments.EXPERIMENT_STUB[0]) >= regions(True)


def test_committed_student_copies_are_up_to_date():
    """assignments/student/ is what `python -m vit_edu assignments` makes from notebooks/ right now."""
    if not COMMITTED.is_dir():
        pytest.skip("assignments/student/ not generated yet (run: python -m vit_edu assignments)")
    assert assignments.stale(NOTEBOOKS, COMMITTED) == []
    for path in sorted(COMMITTED.glob("*.ipynb")):
        student = nbformat.read(path, as_version=4)
        assert _leaks(nbformat.read(NOTEBOOKS / path.name, as_version=4), student, path.name) == []
        assert "BEGIN SOLUTION" not in path.read_text()


# ------------------------------------------------------------------------------------------ the course itself
ALLOWED_KEYS = {"schema_version", "grade", "locked", "solution", "task", "grade_id", "points", "checksum", "cell_type"}


def _stated_points(nb: nbformat.NotebookNode, check_cell: int) -> float:
    """P of the nearest "Exercise N (P point(s))" above a check cell, read independently of the module."""
    for cell in reversed(nb.cells[:check_cell]):
        m = re.search(r"Exercise\s+[\d.]+\s*\((\d+(?:\.\d+)?)\s+points?\)", cell.source)
        if cell.cell_type == "markdown" and m:
            return float(m.group(1))
    raise AssertionError(f"no points statement above cell {check_cell}")


@pytest.mark.parametrize("path", COURSE, ids=[p.name for p in COURSE])
def test_course_nbgrader_metadata_is_valid_and_current(path):
    """What nbgrader autograde and the grader read: answer cells, graded check cells with the stated points."""
    import vit_edu.checks as checks

    nb = nbformat.read(path, as_version=4)
    assert assignments.metadata_problems(nb, path.name) == []  # = the committed file is what the writer makes
    every = {i: c.metadata["nbgrader"] for i, c in enumerate(nb.cells) if "nbgrader" in c.metadata}
    for index, meta in every.items():  # nbgrader's schema v3, spelled out
        assert set(meta) <= ALLOWED_KEYS and {"schema_version", "grade", "locked", "solution"} <= set(meta)
        assert meta["schema_version"] == 3 and re.fullmatch(r"[A-Za-z0-9_\-]+", meta["grade_id"])
    ids = [m["grade_id"] for m in every.values()]
    assert len(ids) == len(set(ids)), f"duplicate grade ids in {path.name}: {ids}"
    # open experiments: code cells the student fills (never run by the grader), one markdown answer graded by hand
    experiment = {i: m for i, m in every.items() if m["grade_id"].startswith(assignments.EXPERIMENT_PREFIX)}
    for i, meta in experiment.items():
        cell = nb.cells[i]
        assert meta["solution"] is True and meta["locked"] is False and assignments.BEGIN in cell.source
        if cell.cell_type == "markdown":  # the written answer: manually graded, with its rubric
            assert meta["grade"] is True and meta["points"] > 0 and meta["grade_id"].endswith("_answer")
            rubric = cell.metadata["vit_edu"]["rubric"]
            assert sum(item["points"] for item in rubric) == meta["points"]
        else:
            assert cell.cell_type == "code" and meta["grade"] is False
    graded = {i: m for i, m in every.items() if i not in experiment}
    assert all(nb.cells[i].cell_type == "code" for i in graded)
    answers = [i for i, m in graded.items() if m["solution"]]
    checks_cells = [i for i, m in graded.items() if m["grade"]]
    assert answers == [i for i, c in enumerate(nb.cells)
                       if c.cell_type == "code" and assignments.BEGIN in c.source and i not in experiment]
    for i in answers:
        assert graded[i] == {"solution": True, "grade": False, "locked": False, "schema_version": 3,
                             "grade_id": graded[i]["grade_id"]}
        following = [j for j in checks_cells if j > i]
        assert following, f"{path.name}: answer cell {i} has no check cell after it"
    for j in checks_cells:
        meta = graded[j]
        name = re.search(r"^check_(\w+)\(", nb.cells[j].source, re.M).group(1)
        assert meta["grade_id"].startswith(name) and meta["grade_id"].endswith("_check")
        assert meta["locked"] is True and meta["solution"] is False and meta["points"] > 0
        assert meta["points"] == _stated_points(nb, j), f"{path.name}, cell {j}"
        assert name in checks.CHECKS, f"{path.name}, cell {j}: check_{name} is not in vit_edu.checks.CHECKS"


def test_course_has_an_exercise_in_every_notebook():
    exercises = assignments.course_exercises(NOTEBOOKS)
    assert len(exercises) >= 16, f"{len(exercises)} exercises"
    # notebook 10 measures the paper's lesson from a stored sweep and a rerun; it asks a prediction, no exercise
    assert {nb for nb, _ in exercises} == {p.name for p in COURSE if not p.name.startswith("10_")}


# ------------------------------------------------------------------------------------------ handout
HANDOUT_TOP = {".vit_edu_handout", "Makefile", "README.md", "notebooks", "pyproject.toml", "requirements.txt",
               "vit_edu"}


def _assert_handout(out: Path, src: Path) -> None:
    assert {p.name for p in out.iterdir()} - {"docs"} == HANDOUT_TOP
    _assert_pointers_resolve(out)
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == sorted(p.name for p in src.glob("*.ipynb"))
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert not [f for f in files if "exercise_solutions" in f or f.startswith("tests/") or "__pycache__" in f]
    assert (out / "vit_edu" / "checks.py").is_file() and (out / "vit_edu" / "assets").is_dir()
    for path in (out / "notebooks").iterdir():
        text = path.read_text()
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        teacher = nbformat.read(src / path.name, as_version=4)
        assert assignments.leaked_lines(teacher, nbformat.reads(text, as_version=4), path.name) == []
    readme = (out / "README.md").read_text()
    assert "pip install -r requirements.txt -e ." in readme and "jupyter lab notebooks/" in readme
    assert "check_" in readme and "YOUR CODE HERE" in readme


def test_handout_of_a_small_course(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_course_nb(), src / "01_a.ipynb")
    nbformat.write(_nb("print(1)"), src / "02_b.ipynb")
    out = tmp_path / "handout"
    assert cli_main(["handout", str(out), "--src", str(src)]) == 0
    assert f"wrote the handout to {out}: 2 student notebooks (2 points)" in capsys.readouterr().out
    _assert_handout(out, src)
    student = nbformat.read(out / "notebooks" / "01_a.ipynb", as_version=4)
    assert student.cells[4].metadata["nbgrader"] == CHECK_META and "NotImplementedError" in student.cells[3].source
    readme = (out / "README.md").read_text()
    assert "| 01_a.ipynb | 1: `patchify` | 2 |" in readme and "Total: 2 points." in readme
    assert "notebooks/01_a.ipynb" in (out / "Makefile").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".handout")]  # no temporary folder left

    (out / "notebooks" / "01_a.ipynb").write_text("edited")
    assert cli_main(["handout", str(out), "--src", str(src)]) == 2  # not empty: refused, untouched
    assert "is not empty" in capsys.readouterr().err and (out / "notebooks" / "01_a.ipynb").read_text() == "edited"
    assert cli_main(["handout", str(out), "--src", str(src), "--force"]) == 0  # a previous handout: replaced
    _assert_handout(out, src)

    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert cli_main(["handout", str(other), "--src", str(src), "--force"]) == 2
    assert "not a handout made by this command" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    assert cli_main(["handout", str(ROOT / "vit_edu" / "h"), "--src", str(src)]) == 2
    assert not (ROOT / "vit_edu" / "h").exists()


def _assert_pointers_resolve(out: Path) -> None:
    """Every relative link and every docs/ or figures/ path a handout notebook names exists in the handout."""
    import re as _re
    for path in (out / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "markdown":
                continue
            for target in _re.findall(r"\]\(([^)\s#]+)", cell.source):
                if "://" in target or target.startswith("mailto:"):
                    continue
                assert (path.parent / target).exists(), f"{path.name}: link {target} leads nowhere in the handout"
            for named in _re.findall(r"(?<![\w/.])((?:docs|figures|benchmarks|tools|tests)/[\w./-]+\.\w+)",
                                     cell.source):
                assert (out / named).exists(), f"{path.name}: names {named}, which the handout does not hold"


def test_handout_carries_the_docs_its_notebooks_cite(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_nb("print(1)", markdown="How the recipe was found: docs/training.md."), src / "01_a.ipynb")
    out = handout.handout(tmp_path / "handout", src)
    assert (out / "docs" / "training.md").read_bytes() == (ROOT / "docs" / "training.md").read_bytes()
    _assert_pointers_resolve(out)
    nbformat.write(_nb("print(1)", markdown="See docs/nowhere.md."), src / "01_a.ipynb")
    with pytest.raises(FileNotFoundError, match="docs/nowhere.md"):
        handout.handout(tmp_path / "handout2", src)


def test_handout_refuses_a_cited_doc_that_holds_an_answer(tmp_path):
    line = next(l for l in (ROOT / "docs" / "training.md").read_text().split("\n") if l.startswith("# "))
    nb = _course_nb(f"def patchify(images, patch_size):\n    ### BEGIN SOLUTION\n    {line}\n    return images\n"
                    f"    ### END SOLUTION")  # the answer holds a line of the doc the notebook cites
    nb.cells[2].source += "\n\nHow the recipe was found: docs/training.md."
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(nb, src / "01_a.ipynb")
    with pytest.raises(ValueError, match=r"docs/training.md, line \d+: .* is a solution line of 01_a.ipynb"):
        handout.handout(tmp_path / "handout", src)
    assert not (tmp_path / "handout").exists()


def test_handout_carries_only_the_package_files_git_tracks(tmp_path, monkeypatch, capsys):
    """A teacher's untracked scratch in vit_edu/ (their own answers, say) stays home, and `handout` names it (a
    module not committed yet would be missing from the handout's package)."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    (repo / "vit_edu" / "assets").mkdir(parents=True)
    for name in ("pyproject.toml", "requirements.txt", "vit_edu/__init__.py", "vit_edu/assets/w.bin"):
        (repo / name).write_text("x = 1\n")
    for args in (["init", "-q"], ["add", "."]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    (repo / "vit_edu" / "my_answers.py").write_text("SECRET = 1\n")  # not added to git
    monkeypatch.setattr(handout, "PACKAGE_DIR", repo / "vit_edu")
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_nb("print(1)"), src / "01_a.ipynb")
    out = handout.handout(tmp_path / "handout", src)
    assert sorted(p.relative_to(out / "vit_edu").as_posix() for p in (out / "vit_edu").rglob("*") if p.is_file()) \
        == ["__init__.py", "assets/w.bin"]
    assert handout.untracked_modules() == ["vit_edu/my_answers.py"]  # named by `handout`: a module not committed yet
    assert handout.handout_main([str(tmp_path / "again"), "--src", str(src)]) == 0
    assert "warning: vit_edu/my_answers.py not tracked by git, so not in the handout" in capsys.readouterr().err


def test_handout_of_the_course_imports_on_its_own(tmp_path):
    """The real course: every notebook, no solution line, and the handout's own vit_edu is the one imported."""
    out = tmp_path / "handout"
    handout.handout(out, NOTEBOOKS)
    _assert_handout(out, NOTEBOOKS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.pop("VIT_EDU_FIGURES", None)  # as on a student's machine
    code = ("import vit_edu, vit_edu.checks; from vit_edu.explain import viz; print(vit_edu.__file__); "
            "print(viz.figures_dir(create=False)); print(' '.join(vit_edu.checks.CHECKS))")
    run = subprocess.run([sys.executable, "-c", code], cwd=out / "notebooks", env=dict(env, PYTHONPATH=str(out)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    where, figures, checks = run.stdout.split("\n", 2)
    assert Path(where).resolve() == (out / "vit_edu" / "__init__.py").resolve()
    figures = Path(figures).resolve().relative_to(out.resolve()).as_posix()  # the README says where figures go
    assert f"Figures the notebooks draw go to `{figures}/`" in (out / "README.md").read_text()
    missing = {ex.check for _, ex in assignments.course_exercises(NOTEBOOKS)} - set(checks.split())
    assert not missing, f"checks the notebooks call but the handout's vit_edu.checks lacks: {sorted(missing)}"


def test_handout_warns_when_the_grader_s_default_reference_is_older(tmp_path, capsys, monkeypatch):
    """A teacher edits a notebook (a point more for patchify) and runs `make handout` without `assignments`: the
    students get 3 points in their README and notebooks, `grade` still reads 2 from assignments/student. The
    handout says so; an up-to-date copy is not named."""
    reference = tmp_path / "student"
    shutil.copytree(ROOT / "assignments" / "student", reference)
    stale = reference / "01_patch_embedding.ipynb"
    stale.write_text(stale.read_text(encoding="utf-8").replace('"points": 2', '"points": 3', 1), encoding="utf-8")
    monkeypatch.setattr(handout, "DEFAULT_OUT", str(reference))  # the repository's root / an absolute path
    assert cli_main(["handout", str(tmp_path / "out"), "--src", str(NOTEBOOKS)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs from this handout in 01_patch_embedding.ipynb (points" in err[0], err
    assert "run python -m vit_edu assignments before grading" in err[0]


# ------------------------------------------------------------------------------------------ figures folder
def test_figures_go_next_to_the_notebook_or_to_build_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("VIT_EDU_FIGURES", raising=False)
    monkeypatch.chdir(tmp_path)  # a student's copy or nbgrader's autograded/<student>/<assignment>/
    assert viz.figures_dir() == tmp_path.resolve() / "figures" and (tmp_path / "figures").is_dir()
    for where in (ROOT, NOTEBOOKS):  # JupyterLab on the course, make demo: untracked, the checkout stays clean
        monkeypatch.chdir(where)
        assert viz.figures_dir(create=False) == ROOT / "build" / "figures"
        assert (ROOT / "build") .name in (ROOT / ".gitignore").read_text().split("/\n")
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path / "env"))
    assert viz.figures_dir() == tmp_path / "env"


# ------------------------------------------------------------------------------------------ a teacher's own edits
def _run_assignments(tmp_path, nb, capsys):
    """`python -m vit_edu assignments` on one teacher notebook: (exit status, stderr, teacher file unchanged?)."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    nbformat.write(nb, src / "01_a.ipynb")
    before = (src / "01_a.ipynb").read_bytes()
    capsys.readouterr()
    rc = assignments.main(["--src", str(src), "--out", str(out)])
    return rc, capsys.readouterr().err, (src / "01_a.ipynb").read_bytes() == before and not out.exists()


SECRET_DEMO = "print(1)\n{b}\nSECRET = 42\n{e}"  # a demonstration cell: no check follows it


@pytest.mark.parametrize("begin, end, line", [
    ("## BEGIN SOLUTION", "## END SOLUTION", 2),
    ("###BEGIN SOLUTION", "###END SOLUTION", 2),
    ("### BEGIN SOLUTION", "### END SOLUTION  # done", 4),
    ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS", 2),
])
def test_misspelt_markers_are_refused_naming_the_line(tmp_path, capsys, begin, end, line):
    """nbgrader reads any line holding 'BEGIN SOLUTION' as a marker; the course refused none of these and copied
    SECRET to the students as it stood."""
    nb = _course_nb(extra=[SECRET_DEMO.format(b=begin, e=end)])
    rc, err, untouched = _run_assignments(tmp_path, nb, capsys)
    assert rc == 2 and untouched, err
    assert f"01_a.ipynb, cell 6, line {line}: " in err and "is not a marker of this course" in err


def test_a_solution_region_in_a_raw_cell_is_refused(tmp_path, capsys):
    nb = _course_nb()
    nb.cells.append(nbformat.v4.new_raw_cell("### BEGIN SOLUTION\nSECRET = 42\n### END SOLUTION"))
    rc, err, untouched = _run_assignments(tmp_path, nb, capsys)
    assert rc == 2 and untouched and "01_a.ipynb, cell 6: a solution region in a raw cell" in err


def test_solution_text_in_cell_metadata_is_refused(tmp_path, capsys):
    nb = _course_nb()
    nb.cells[3].metadata["teacher_note"] = "p = patch_size"  # a solution line outside the cell's source
    rc, err, untouched = _run_assignments(tmp_path, nb, capsys)
    assert rc == 2 and untouched and "01_a.ipynb, cell 3: the student copy still holds a solution line" in err
    assert assignments.leaked_lines(nb, make_student_notebook(nb)) == ["p = patch_size"]


def test_student_copy_drops_widget_state_and_the_answers_attachments():
    nb = _nb("x = 1", markdown="![fig](attachment:figure.png)\n### BEGIN SOLUTION\n![](attachment:answer.png)\n"
                               "### END SOLUTION")
    nb.cells[0].attachments = {"figure.png": {"image/png": "AAAA"}, "answer.png": {"image/png": "BBBB"}}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"w": {"value": "0.93"}}}}
    student = make_student_notebook(nb)
    assert list(student.cells[0].attachments) == ["figure.png"] and "widgets" not in student.metadata
    nbformat.validate(student)


@pytest.mark.parametrize("answer, message", [
    ("### BEGIN SOLUTION\ndef patchify(images, patch_size):\n    return images\n### END SOLUTION",
     "a solution region outside a function body"),
    ("class Patches:\n    ### BEGIN SOLUTION\n    size = 4\n    ### END SOLUTION",
     "a solution region outside a function body"),
    ("def patchify(images, patch_size):\n    return (\n        ### BEGIN SOLUTION\n        images\n"
     "        ### END SOLUTION\n    )", "the student copy of this answer cell is not valid Python"),
    (SOLVED + "\nexample = patchify(torch.zeros(1, 3, 4, 4), 2)", "patchify(...) is called when the cell runs"),
])
def test_an_answer_stub_that_would_break_later_cells_is_refused(tmp_path, capsys, answer, message):
    """A stub raising when the cell runs (not when called) leaves `patchify` undefined: every later cell fails."""
    rc, err, untouched = _run_assignments(tmp_path, _course_nb(answer), capsys)
    assert rc == 2 and untouched and "01_a.ipynb, cell 3" in err and message in err


def test_an_answer_cell_with_magics_is_not_judged_as_python():
    nb = _course_nb("%config InlineBackend.figure_format = 'png'\n" + SOLVED)
    assert [ex.key for ex in find_exercises(nb, "01_a.ipynb")] == ["patchify"]


def test_an_unknown_check_is_refused(tmp_path, capsys):
    nb = _course_nb(check="from vit_edu.checks import check_patchfy\ncheck_patchfy(patchify)")
    rc, err, untouched = _run_assignments(tmp_path, nb, capsys)
    assert rc == 2 and untouched
    assert "01_a.ipynb, cell 4: check_patchfy(...) is not a check of vit_edu.checks; did you mean check_patchify?" \
        in err


def test_nothing_is_written_when_the_student_copies_cannot_be(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_course_nb(), src / "01_a.ipynb")
    before = (src / "01_a.ipynb").read_bytes()
    (tmp_path / "out").write_text("a file, not a folder")
    assert assignments.main(["--src", str(src), "--out", str(tmp_path / "out")]) != 0
    assert (src / "01_a.ipynb").read_bytes() == before  # the teacher notebook did not get its metadata either
    # an experiment's unpaired marker is found before the teacher notebooks change too
    nb = _course_nb(extra=["### BEGIN SOLUTION\nprint('run')"])
    nb.cells[6:6] = [nbformat.v4.new_markdown_cell("**Experiment 1.A (1 point, graded by hand): run**\n\n"
                                                   "- (1 point) runs")]
    nb.cells.append(nbformat.v4.new_markdown_cell("### BEGIN SOLUTION\nit ran\n### END SOLUTION"))
    (tmp_path / "b").mkdir()
    rc, err, untouched = _run_assignments(tmp_path / "b", nb, capsys)
    assert rc == 2 and untouched and "01_a.ipynb, cell 7: '### BEGIN SOLUTION' at line 1 has no matching" in err


def test_nbgrader_course_writes_nothing_when_a_notebook_is_broken(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_course_nb(), src / "01_a.ipynb")
    nbformat.write(_course_nb(statement="**Exercise 1: `patchify`**"), src / "02_b.ipynb")
    course = tmp_path / "course"
    assert assignments.main(["--src", str(src), "--nbgrader-course", str(course)]) == 2
    assert "02_b.ipynb, cell 2: 'Exercise 1' states no points" in capsys.readouterr().err
    assert not course.exists()


def test_a_grade_id_renamed_by_hand_is_named_when_replaced(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    nb = add_nbgrader_metadata(_course_nb())
    nb.cells[4].metadata["nbgrader"]["grade_id"] = "my_patchify_test"
    nb.cells[5].metadata["nbgrader"] = dict(ANSWER_META, grade_id="old_answer")  # a demonstration cell now
    nbformat.write(nb, src / "01_a.ipynb")
    assert assignments.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "note: 01_a.ipynb, cell 4: grade_id 'my_patchify_test' becomes 'patchify_check'" in out
    assert "note: 01_a.ipynb, cell 5: grade_id 'old_answer' is removed (not an exercise cell)" in out
    assert nbformat.read(src / "01_a.ipynb", as_version=4).cells[4].metadata["nbgrader"] == CHECK_META
    assert assignments.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 0
    assert "note:" not in capsys.readouterr().out  # a second run: nothing to say


@pytest.mark.parametrize("text", ["{not json", "[]", "{}", '{"cells": 5}'])
def test_a_file_that_is_no_notebook_is_named(tmp_path, capsys, text):
    src = tmp_path / "src"
    src.mkdir()
    (src / "01_a.ipynb").write_text(text)
    assert assignments.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 2
    assert "error: 01_a.ipynb: not a readable notebook (" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_source_folder_without_notebooks_keeps_the_copies(tmp_path, capsys):
    """A wrong --src used to mirror an empty folder: every student copy in --out was deleted."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    nbformat.write(_course_nb(), src / "01_a.ipynb")
    assert assignments.main(["--src", str(src), "--out", str(out)]) == 0
    (tmp_path / "empty").mkdir()
    assert assignments.main(["--src", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert f"no notebooks in {tmp_path / 'empty'}" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["01_a.ipynb"]


def test_handout_readme_table_keeps_a_title_with_a_bar_in_one_cell():
    (ex,) = find_exercises(_course_nb(statement="**Exercise 1 (2 points): `x | y`**"), "01_a.ipynb")
    assert "| 01_a.ipynb | 1: `x \\| y` | 2 |" in handout.student_readme([("01_a.ipynb", ex)], ["01_a.ipynb"])


# ------------------------------------------------------------------------------------------ a careless teacher
@pytest.mark.parametrize("points", ["two points", "2,5 points", "1 pt"])
def test_points_not_written_in_digits_are_named_as_written(tmp_path, capsys, points):
    nb = _course_nb(statement=f"**Exercise 1 ({points}): `patchify`**\n\nCut images into patches.")
    rc, err, unchanged = _run_assignments(tmp_path, nb, capsys)
    assert rc == 2 and unchanged
    assert f"01_a.ipynb, cell 2: 'Exercise 1' states its points as '({points})'; expected '(P points)'" in err


def test_a_check_cell_before_its_answer_cell_says_so(tmp_path, capsys):
    nb = _course_nb()
    nb.cells[3], nb.cells[4] = nb.cells[4], nb.cells[3]  # the check cell, then the answer cell
    rc, err, unchanged = _run_assignments(tmp_path, nb, capsys)
    assert rc == 2 and unchanged
    assert "01_a.ipynb, cell 3: check_patchify(...) has no answer cell" in err
    assert "the answer cell 4 comes after it: put the check cell after its answer cell" in err


def test_a_notebook_saved_with_a_byte_order_mark_or_as_utf16_is_read(tmp_path, capsys):
    """Notepad's UTF-8 with a byte-order mark, and UTF-16, are JSON as the grader reads it: the same copy."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    text = nbformat.writes(_course_nb())
    (src / "01_a.ipynb").write_text(text, encoding="utf-8")
    (src / "02_b.ipynb").write_bytes(text.encode("utf-8-sig"))
    (src / "03_c.ipynb").write_bytes(text.encode("utf-16"))
    assert assignments.main(["--src", str(src), "--out", str(out)]) == 0, capsys.readouterr().err
    copies = {p.read_text(encoding="utf-8") for p in out.glob("*.ipynb")}
    assert len(copies) == 1 and "raise NotImplementedError()" in copies.pop()


def test_a_notebook_that_is_not_utf8_is_named_and_nothing_is_written(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    nbformat.write(_course_nb(), src / "01_a.ipynb")
    before = (src / "01_a.ipynb").read_bytes()
    (src / "02_b.ipynb").write_bytes(nbformat.writes(_nb("print('café')")).encode("latin-1"))
    assert assignments.main(["--src", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: 02_b.ipynb: not UTF-8 text (byte 0xe9 at offset" in err and "saved as UTF-8" in err
    assert (src / "01_a.ipynb").read_bytes() == before and not out.exists()


def test_handout_places_are_judged_where_they_land(tmp_path, capsys):
    """'..' and links are followed before the handout's place is judged: a link into the notebooks is refused,
    a path that only passes through them is not, and the repository reached through '..' is named."""
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_course_nb(), src / "01_a.ipynb")
    (tmp_path / "link").symlink_to(src)
    assert cli_main(["handout", str(tmp_path / "link" / "hx"), "--src", str(src)]) == 2
    assert f"(that is {src / 'hx'}) is inside {src}" in capsys.readouterr().err
    assert not (src / "hx").exists()
    assert cli_main(["handout", str(src / ".." / "hand out é"), "--src", str(src)]) == 0, capsys.readouterr().err
    assert (tmp_path / "hand out é" / "notebooks" / "01_a.ipynb").is_file()
    assert cli_main(["handout", str(ROOT / "vit_edu" / ".."), "--src", str(src), "--force"]) == 2
    assert f"(that is {ROOT}) holds the repository" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["src", "."])
def test_student_copies_never_go_over_the_teacher_notebooks(tmp_path, capsys, where):
    """--out equal to --src (or a folder holding it) used to replace the teacher notebooks by the student copies."""
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_course_nb(), src / "01_a.ipynb")
    before = (src / "01_a.ipynb").read_bytes()
    out = tmp_path / where
    assert assignments.main(["--src", str(src), "--out", str(out)]) == 2
    verb = "is" if where == "src" else "holds"
    assert f"student copies folder (--out) {out} {verb} the teacher notebooks folder (--src) {src}" in \
        capsys.readouterr().err
    assert (src / "01_a.ipynb").read_bytes() == before and sorted(tmp_path.iterdir()) == [src]
    with pytest.raises(ValueError, match="would replace the teacher notebooks"):
        assignments.generate(src, out)
