"""Every right answer the project knows runs its whole notebook.

A check that passes an answer promises that the cells after it work with that answer. For each student copy, each
right answer of the adversarial sets (``tests/adversarial/<name>.py``, ``CORRECT``) goes into its answer cell, and
the notebook runs top to bottom in a fresh kernel without an error in any cell (``tools/cascade_audit.py``, which
prints the same table: ``python tools/cascade_audit.py``). Lazy layers whose weights a later cell loads before a
call, a ``qkv`` that cannot be called on its own, GELU's tanh form and E[x^2] - E[x]^2 in float32 broke later
cells of notebooks 03 and 04 before the checks or the cells were made to agree.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cascade_audit", ROOT / "tools" / "cascade_audit.py")
audit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(audit)

COPIES = sorted(p for p in audit.STUDENT.glob("[0-9][0-9]_*.ipynb")
                if any(audit._exercise(audit._grade_id(c)) for c in audit.nbformat.read(p, as_version=4).cells))


@pytest.mark.parametrize("path", COPIES, ids=[p.stem for p in COPIES])
def test_every_right_answer_runs_its_whole_notebook(path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    failed = audit.audit(only=[path.name], jobs=2)
    assert not failed, "\n".join(failed)
