"""Real nbgrader on the course: generate_assignment, then autograde a right, an empty and a half-right submission.

    python tools/nbgrader_check.py [NOTEBOOK ...]      # default: 01_patch_embedding 03_multi_head_attention

Builds a throwaway course (``python -m vit_edu assignments --nbgrader-course``) in a temporary folder, lets
nbgrader make the student version of each notebook, fills it in three ways (every answer from the teacher
notebook; untouched stubs; only the first exercise answered), plus the handout's copy (``python -m vit_edu
handout``, no nbgrader checksums) with every answer, and stubs whose check cells were edited to print the
pass line; autogrades them and asserts the points: full marks, 0, the first exercise's points, full marks, 0
(nbgrader restores locked cells). It also asserts that every figure the notebook saves was drawn in the
autograded copy's own figures/ folder (so not over the repository's figures/).
Exits 0 with a message, without testing anything, when nbgrader is not installed next to vit_edu.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["01_patch_embedding", "03_multi_head_attention"]


def _nbgrader(course: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VIT_EDU_FIGURES"}  # the default figures folder is tested
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # nbgrader runs `alembic`
    run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                         text=True)
    if run.returncode != 0:
        raise SystemExit(f"nbgrader {' '.join(args)} failed ({run.returncode}):\n"
                         f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}")


def _fill(release: nbformat.NotebookNode, teacher: nbformat.NotebookNode, grade_ids: set) -> nbformat.NotebookNode:
    """The released notebook with the answer cells ``grade_ids`` replaced by the teacher's code (markers removed)."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in teacher.cells if "nbgrader" in c.metadata}
    for cell in release.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in grade_ids:
            cell.source = "\n".join(l for l in answers[grade_id].split("\n")
                                    if l.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))
    return release


def main(argv: list) -> int:
    try:
        import nbgrader
        from nbgrader.api import Gradebook
    except ImportError:
        print("nbgrader-check skipped: nbgrader is not installed next to vit_edu (pip install nbgrader)")
        return 0
    sys.path.insert(0, str(ROOT))
    from vit_edu.classroom import assignments, handout

    names = argv or DEFAULT
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vit_edu_nbgrader_") as tmp:
        course = Path(tmp) / "course"
        assignments.nbgrader_course(course, ROOT / "notebooks", names)
        handed_out = handout.handout(Path(tmp) / "handout", ROOT / "notebooks")  # what students get, as built
        print(f"nbgrader {nbgrader.__version__}, course in {course}")
        expected = {}
        failures: list = []
        for name in names:
            teacher_path = course / "source" / name / f"{name}.ipynb"
            teacher = nbformat.read(teacher_path, as_version=4)
            exercises = assignments.find_exercises(teacher, teacher_path.name)
            if not exercises:
                raise SystemExit(f"{name} has no exercise to grade")
            _nbgrader(course, "validate", str(teacher_path))  # the teacher's check: draws figures in source/
            _nbgrader(course, "generate_assignment", name, "--force")
            release = course / "release" / name / f"{name}.ipynb"
            leaked = sorted(p.name for p in release.parent.iterdir() if p.name != release.name)
            if leaked:
                failures.append((name, f"generate_assignment released more than the notebook: {leaked}"))
            solution = assignments.leaked_lines(teacher, nbformat.read(release, as_version=4), name)
            if solution:
                failures.append((name, f"nbgrader's release holds solution lines: {solution[:3]}"))
            all_answers = {g for ex in exercises for i, g in ex.grade_ids().items() if i != ex.check_cell}
            first = {g for i, g in exercises[0].grade_ids().items() if i != exercises[0].check_cell}
            total = sum(ex.points for ex in exercises)
            handout_copy = nbformat.read(handed_out / "notebooks" / teacher_path.name, as_version=4)
            edited = nbformat.read(release, as_version=4)  # check cells replaced by a printed pass line
            for ex in exercises:
                edited.cells[ex.check_cell].source = f"print('✓ check_{ex.check} passed (5 cases)')"
            for student, answered, points, base in (
                    ("right", all_answers, total, None), ("empty", set(), 0, None),
                    ("first_only", first, exercises[0].points, None), ("handout", all_answers, total, handout_copy),
                    ("edited", set(), 0, edited)):
                blank = base if base is not None else nbformat.read(release, as_version=4)
                nb = _fill(nbformat.reads(nbformat.writes(blank), as_version=4), teacher, answered)
                target = course / "submitted" / student / name / f"{name}.ipynb"
                target.parent.mkdir(parents=True)
                nbformat.write(nb, target)
                expected[(name, student)] = (points, total)
            _nbgrader(course, "autograde", name, "--force")
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            for (name, student), (points, total) in expected.items():
                sub = gb.find_submission(name, student)
                ok = abs(sub.score - points) < 1e-9 and abs(sub.max_score - total) < 1e-9
                print(f"  {name:32s} {student:10s} {sub.score:g} / {sub.max_score:g}  (expected {points:g} / {total:g})"
                      f"{'' if ok else '  <-- WRONG'}")
                failures += [] if ok else [(name, student)]
        for name in names:  # every figure the notebook saves must be in the autograded copy's own figures/
            teacher = nbformat.read(course / "source" / name / f"{name}.ipynb", as_version=4)
            calls = [m for c in teacher.cells for m in re.findall(r'save_figure\([^,]+,\s*"([^"]+)"', c.source)]
            saved = {m + ".png" for m in calls}
            here = {p.name for p in (course / "autograded" / "right" / name / "figures").glob("*.png")}
            print(f"  {name}: {len(saved & here)} of {len(saved)} figures in autograded/right/{name}/figures/")
            if saved - here:
                failures.append((name, f"figures not drawn next to the graded notebook: {sorted(saved - here)}"))
    if failures:
        print(f"nbgrader-check FAILED: {failures}")
        return 1
    print(f"nbgrader-check passed ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
