"""Run every student copy with the right answers of the adversarial sets in its answer cells.

A check that passes an answer promises the student that the cells after it work with that answer (they use it
through ``passed_or``). This audit holds the promise for every right answer the project knows: for each student
copy in ``assignments/student/`` and each index ``i``, every answer cell is replaced by the ``i``-th right answer
of its exercise's set (``tests/adversarial/<name>.py``, ``CORRECT``; cycling where a set is shorter), and the
notebook runs top to bottom in a fresh kernel. A run passes when no cell raises: the check cells pass and no
later cell breaks. It takes about a quarter of an hour on two cores (71 runs);
``tests/test_cascade_notebooks.py`` runs it, one test per notebook.

    python tools/cascade_audit.py [--only 04 07] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import nbformat

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "assignments" / "student"
SETS = ROOT / "tests" / "adversarial"
sys.path.insert(0, str(ROOT / "tests"))

from adversarial import load, name_of, set_files  # noqa: E402  (tests/adversarial, found through sys.path)


def _grade_id(cell) -> str:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")


def _exercise(grade_id: str) -> Optional[str]:
    """``layer_norm`` for ``layer_norm_answer`` (and ``_answer_2``); None for other cells and experiments."""
    m = re.fullmatch(r"(\w+?)_answer(?:_\d+)?", grade_id)
    return m.group(1) if m and not grade_id.startswith("experiment_") else None


def right_answers() -> Dict[str, List[Tuple[Path, int, str]]]:
    """exercise -> [(set file, index in CORRECT, the answer's name)]."""
    out: Dict[str, List[Tuple[Path, int, str]]] = {}
    for path in set_files():
        module = load(path)
        out[module.CHECK] = [(path, i, name_of(impl)) for i, impl in enumerate(module.CORRECT)]
    return out


def _object_name(exercise: str) -> str:
    from vit_edu.checks import CHECKS
    return CHECKS[exercise].title


def variants(notebook: Path, answers: Dict[str, List[Tuple[Path, int, str]]]) -> List[Dict[str, Tuple[Path, int, str]]]:
    """One mapping exercise -> right answer per run of ``notebook``: as many runs as its longest set."""
    nb = nbformat.read(notebook, as_version=4)
    names = sorted({e for e in (_exercise(_grade_id(c)) for c in nb.cells) if e})
    missing = [e for e in names if not answers.get(e)]
    if missing:
        raise KeyError(f"{notebook.name}: no right answers for {missing} in {SETS}")
    count = max((len(answers[e]) for e in names), default=0)
    return [{e: answers[e][i % len(answers[e])] for e in names} for i in range(count)]


def _answer_source(exercise: str, path: Path, index: int) -> str:
    obj = _object_name(exercise)
    return (f"import importlib.util as _util\n"
            f"_spec = _util.spec_from_file_location('adversarial_{path.stem}', {str(path)!r})\n"
            f"_set = _util.module_from_spec(_spec)\n_spec.loader.exec_module(_set)\n"
            f"{obj} = _set.CORRECT[{index}]\n")


def run(notebook: Path, chosen: Dict[str, Tuple[Path, int, str]], timeout: int = 900) -> List[str]:
    """The failures of one run of ``notebook`` with the ``chosen`` answers: '' list when every cell ran."""
    import nbclient

    nb = nbformat.read(notebook, as_version=4)
    done = set()
    for cell in nb.cells:
        exercise = _exercise(_grade_id(cell))
        if cell.cell_type != "code" or not exercise:
            continue
        path, index, _ = chosen[exercise]
        cell.source = "pass\n" if exercise in done else _answer_source(exercise, path, index)
        done.add(exercise)
    with tempfile.TemporaryDirectory() as scratch:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                         resources={"metadata": {"path": scratch}})
        client.execute()
    failures = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                first = cell.source.splitlines()[0] if cell.source else ""
                failures.append(f"cell {index} ({first[:60]}): {out.get('ename')}: {out.get('evalue', '')[:300]}")
    return failures


def audit(only: Optional[List[str]] = None, jobs: int = 1) -> List[str]:
    """Every run; the lines that report a failure (empty when every right answer ran every notebook)."""
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if "VIT_EDU_FIGURES" not in os.environ:  # the kernels' figures, never the tracked ones
        os.environ["VIT_EDU_FIGURES"] = tempfile.mkdtemp(prefix="cascade_audit_")
    answers = right_answers()
    runs = []
    for notebook in sorted(STUDENT.glob("[0-9][0-9]_*.ipynb")):
        if only and not any(notebook.name.startswith(o) for o in only):
            continue
        runs += [(notebook, chosen) for chosen in variants(notebook, answers)]
    print(f"{len(runs)} runs", flush=True)

    def one(item):
        notebook, chosen = item
        failures = run(notebook, chosen)
        label = ", ".join(f"{e}={name}" for e, (_, _, name) in sorted(chosen.items()))
        line = f"{'FAIL' if failures else 'ok  '} {notebook.name}: {label}"
        print(line + "".join(f"\n       {f}" for f in failures), flush=True)
        return [line + "".join(f"\n       {f}" for f in failures)] if failures else []

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        reports = list(pool.map(one, runs))
    return [r for rs in reports for r in rs]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="notebook name prefixes (e.g. 04 07); all by default")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks run at once (default 1)")
    args = parser.parse_args(argv)
    failed = audit(args.only, args.jobs)
    print(f"\n{len(failed)} runs failed" if failed else "\nevery run passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
