"""A stuck student never loses the rest of the notebook.

Every student copy, with every exercise left as its stub, runs top to bottom in a fresh kernel; the only cells
allowed to fail are the check cells (they say what is missing). Demonstrations after an exercise use the
student's code once its check has passed and the package's reference until then
(``vit_edu.checks.passed_or``), so an unsolved exercise cannot break a later cell or figure. The same holds with
one exercise left as its stub and the others solved: only checks fail, and one built on the stub says where it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "assignments" / "student"
COPIES = sorted(STUDENT.glob("[0-9][0-9]_*.ipynb"))

nbclient = pytest.importorskip("nbclient")


def _is_check(cell) -> bool:
    grader = cell.get("metadata", {}).get("nbgrader", {})
    return bool(grader.get("grade")) and not grader.get("solution")


@pytest.mark.parametrize("path", COPIES, ids=[p.stem for p in COPIES])
def test_stub_copy_runs_with_errors_only_in_check_cells(path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    # the kernel runs in a scratch folder (nothing written next to the committed copies); it imports the
    # installed package, as a student's does
    client.execute()
    failed = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors and not _is_check(cell):
            failed.append(f"cell {index}: {errors[0].get('ename')}: {errors[0].get('evalue', '')[:200]}\n"
                          f"    {cell.source.splitlines()[0] if cell.source else ''}")
    assert not failed, f"{path.name}: cells other than check cells fail when every exercise is a stub:\n" + \
        "\n".join(failed)
    checks = [c for c in nb.cells if c.cell_type == "code" and _is_check(c)]
    for cell in checks:  # and each check cell fails for the reason a student should read: not implemented
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert errors, f"{path.name}: a check cell passed on the stub: {cell.source[:80]}"
        # not an ImportError (a misspelt check) or a NameError (an answer cell that raised before defining it)
        assert errors[0].get("ename") == "CheckError" and "not implemented yet" in errors[0].get("evalue", ""), \
            f"{path.name}: a check cell fails on the stub for another reason: {errors[0].get('ename')}: " \
            f"{errors[0].get('evalue', '')[:200]}\n    {cell.source[:80]}"


def _one_left(path: Path):
    nb = nbformat.read(path, as_version=4)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id", "") for c in nb.cells]
    return sorted({i for i in ids if i.endswith("_answer") and not i.startswith("experiment_")})


ONE_LEFT = [(p, a) for p in COPIES for a in _one_left(p) if len(_one_left(p)) > 1]


@pytest.mark.parametrize("path, left", ONE_LEFT, ids=[f"{p.stem}-{a[:-len('_answer')]}" for p, a in ONE_LEFT])
def test_one_exercise_left_as_its_stub_stops_only_the_checks_that_need_it(path: Path, left: str, tmp_path: Path,
                                                                        monkeypatch) -> None:
    """A student stuck on one exercise who solved the others (the teacher's answers): only check cells fail, each
    saying what is not implemented, and the stuck exercise's own check among them. An answer built on the stub
    (EncoderBlock on MLP, MultiHeadAttention on attention) is told where the stub is."""
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    nb = nbformat.read(path, as_version=4)
    teacher = nbformat.read(ROOT / "notebooks" / path.name, as_version=4)
    right = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in teacher.cells}
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
        if cell.cell_type == "code" and grade_id.endswith("_answer") and grade_id != left \
                and not grade_id.startswith("experiment_"):
            cell.source = right[grade_id]
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    failed = {}
    for index, cell in enumerate(nb.cells):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"] \
            if cell.cell_type == "code" else []
        if errors:
            failed[index] = (cell, errors[0])
    wrong = [f"cell {i}: {e.get('ename')}: {e.get('evalue', '')[:200]}" for i, (c, e) in failed.items()
             if not _is_check(c) or e.get("ename") != "CheckError" or "not implemented yet" not in e.get("evalue", "")]
    assert not wrong, f"{path.name} with {left} left as its stub:\n" + "\n".join(wrong)
    own = left[:-len("_answer")] + "_check"
    assert any(c.metadata.get("nbgrader", {}).get("grade_id") == own for c, _ in failed.values()), \
        f"{path.name}: the check of {left} passed on its stub"
    for cell, error in failed.values():
        if cell.metadata.get("nbgrader", {}).get("grade_id") != own:
            assert "raised NotImplementedError in " in error.get("evalue", ""), error.get("evalue")
