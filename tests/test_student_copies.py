"""A stuck student never loses the rest of the notebook.

Every student copy, with every exercise left as its stub, runs top to bottom in a fresh kernel; the only cells
allowed to fail are the check cells (they say what is missing). Demonstrations after an exercise use the
student's code once its check has passed and the package's reference until then
(``vit_edu.checks.passed_or``), so an unsolved exercise cannot break a later cell or figure.
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
