"""docs/classroom.md's recipe for a new exercise, followed as written on a copy of the package and one notebook.

The page's table entry goes into the copy's exercise table for notebook 05, its three cells into a copy of
notebooks/05_full_model.ipynb; then ``python -m vit_edu assignments`` and ``handout`` run on the copy (with the
copy first on PYTHONPATH), and the new exercise must be a check that passes the right answer and names the
mistake, a stub in the student copy, an exercise of the grader's reference and a row of the handout's README.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from vit_edu.classroom.assignments import find_exercises

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "05_full_model.ipynb"
TABLE = "exercises_blocks.py"  # the table of notebooks 04, 05 and 07


def _page_blocks() -> list:
    """(language, text) of each fenced block of the page's section 'An exercise, whole'."""
    page = (ROOT / "docs" / "classroom.md").read_text(encoding="utf-8")
    section = page.split("### An exercise, whole", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(\w*)\n(.*?)^```", section, re.S | re.M)


def _add_to_table(table: Path, entry: str, name: str) -> None:
    """The entry above the line that builds the table's EXERCISES, and its name added to that line's list."""
    text = table.read_text(encoding="utf-8")
    m = re.search(r"^EXERCISES\b.*?\[(.*?)\]\}", text, re.S | re.M)
    assert m, f"{table.name}: no 'EXERCISES = {{ex.name: ex for ex in [...]}}' line to add the exercise to"
    table.write_text(text[:m.start()] + entry + "\n\n" + text[m.start():m.end(1)] + f", {name}" + text[m.end(1):],
                     encoding="utf-8")


CHECKS_SCRIPT = '''
import json, sys
import nbformat, vit_edu
from vit_edu.checks import CheckError, check_mean_pool
from vit_edu.classroom.handout import handout
from vit_edu.classroom.reference import load_reference

scope = {}
exec(sys.argv[1], scope)  # the page's answer cell
check_mean_pool(scope["mean_pool"])
try:
    check_mean_pool(lambda tokens: tokens.mean(dim=1))
    mistake = None
except CheckError as e:
    mistake = str(e)
student = nbformat.read("assignments/student/05_full_model.ipynb", as_version=4)
stub = [(c.source, c.metadata.get("nbgrader")) for c in student.cells if "def mean_pool" in c.source]
graded = [(r.name, e.name, e.points, list(e.answers)) for r in load_reference("assignments/student")
          for e in r.exercises if e.check == "mean_pool"]
readme = (handout(sys.argv[2]) / "README.md").read_text(encoding="utf-8")
print(json.dumps({"package": vit_edu.__file__, "mistake": mistake, "stub": stub, "graded": graded,
                  "rows": [line for line in readme.splitlines() if "mean_pool" in line]}))
'''


def test_the_recipe_for_a_new_exercise_works_end_to_end(tmp_path):
    blocks = _page_blocks()

    def shown(what: str, lang: str, test) -> str:
        found = [text for language, text in blocks if language == lang and test(text)]
        assert found, f"docs/classroom.md, 'An exercise, whole': no ```{lang} block with {what}"
        return found[0]

    entry = shown("the table entry", "python", lambda text: "Exercise(" in text)
    statement = shown("the statement cell", "markdown", lambda text: "**Exercise" in text)
    answer = shown("the answer cell", "python", lambda text: "### BEGIN SOLUTION" in text)
    check = shown("the check cell", "python", lambda text: text.startswith("from vit_edu.checks import check_"))

    course = tmp_path / "course"
    shutil.copytree(ROOT / "vit_edu", course / "vit_edu", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt", "docs", "figures"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, course / name)
    _add_to_table(course / "vit_edu" / "classroom" / TABLE, entry, "MEAN_POOL_EX")

    teacher = nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4)
    before = find_exercises(teacher, NOTEBOOK)
    at = next(i for i, c in enumerate(teacher.cells) if c.cell_type == "markdown" and c.source.startswith("## 4."))
    teacher.cells[at:at] = [nbformat.v4.new_markdown_cell(statement.strip()), nbformat.v4.new_code_cell(answer.strip()),
                            nbformat.v4.new_code_cell(check.strip())]
    (course / "notebooks").mkdir()
    nbformat.write(teacher, course / "notebooks" / NOTEBOOK)

    env = {**os.environ, "PYTHONPATH": str(course)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=course, env=env, capture_output=True, text=True,
                              timeout=300)

    made = run("-m", "vit_edu", "assignments")
    assert made.returncode == 0, made.stderr[-2000:]
    points = sum(ex.points for ex in before) + 1
    assert f"nbgrader metadata: {len(before) + 1} exercises, {points:g} points" in made.stdout, made.stdout
    assert run("-m", "vit_edu", "assignments", "--check").returncode == 0

    done = run("-c", CHECKS_SCRIPT, answer, str(tmp_path / "hand out"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "check_mean_pool passed" in done.stdout
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(course)  # the copy ran, not the repository's package
    assert found["mistake"] and "the class token is averaged in too" in found["mistake"]
    (source, meta), = found["stub"]
    assert "raise NotImplementedError()" in source and "tokens[:, 1:]" not in source
    assert meta["grade_id"] == "mean_pool_answer" and meta["solution"] is True
    assert found["graded"] == [[NOTEBOOK, "mean_pool", 1, ["mean_pool_answer"]]]
    assert found["rows"] == [f"| {NOTEBOOK} | 5.2: `mean_pool(tokens)` | 1 |"]
