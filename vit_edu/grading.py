"""Grade filled-in student notebooks by running them and reading their self-check cells.

    python -m vit_edu grade SUBMISSIONS_DIR [--out grades.csv] [--timeout 120] [--reference assignments/student]

Layout: one folder per student, holding that student's notebooks::

    submissions/
        alice/01_patch_embedding.ipynb  03_multi_head_attention.ipynb ...
        bob/01_patch_embedding.ipynb ...

Each notebook runs top to bottom in a fresh kernel (nbclient; the working directory is the notebook's
folder). An exercise is a cell that calls one of the checks (``check_patchify(...)``, see
:mod:`vit_edu.checks`), so no extra metadata is needed. The exercise passes when its check cell ran
without error and printed the check's ``✓ check_xxx passed`` line; the grader puts a fresh
``from vit_edu.checks import check_xxx`` in front of each check cell, so a redefined check does not count.

As in nbgrader, a cell that raises does not stop the notebook: every exercise is judged on its own (an
exercise whose code cell failed reports that cell's error). A kernel that dies (``os._exit``, out of
memory), ``sys.exit()``, or a time-out ends the notebook: the exercises after it fail with
``not reached: <reason>``. One broken notebook never stops the others. Exit code 0 even when students fail.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from .checks import CHECKS
from .fileio import check_writable_file, remove_stale_temp_files, temp_file_for

CHECK_NAMES = tuple(f"check_{name}" for name in CHECKS)
_CHECK_CALL = re.compile(r"^[ \t]*(check_[A-Za-z0-9_]+)[ \t]*\(", re.MULTILINE)
STOP_ERRORS = ("SystemExit", "KeyboardInterrupt")  # the student's code asked the notebook to stop
COLUMNS = ["student", "notebook", "exercise", "passed", "weight", "message"]


@dataclass
class Exercise:
    name: str  # "patchify" (a second call of the same check in one notebook: "patchify#2")
    check: str  # "check_patchify"
    cell: int  # index of the check cell


def find_exercises(nb: nbformat.NotebookNode) -> List[Exercise]:
    """The exercises of a notebook: one per known check called at the start of a line in a code cell."""
    found: List[Exercise] = []
    seen: Dict[str, int] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for check in dict.fromkeys(_CHECK_CALL.findall(cell.source)):  # unique, in order
            if check not in CHECK_NAMES:
                continue
            base = check[len("check_"):]
            seen[base] = seen.get(base, 0) + 1
            name = base if seen[base] == 1 else f"{base}#{seen[base]}"
            found.append(Exercise(name, check, index))
    return found


def _first_error(cell: nbformat.NotebookNode) -> Optional[Tuple[str, str]]:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return out.get("ename", "Error"), out.get("evalue", "")
    return None


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _one_line(text: str, limit: int = 500) -> str:
    text = " | ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_message(ename: str, evalue: str) -> str:
    if ename == "NotImplementedError":
        return "not implemented"
    if ename == "CheckError":
        return _one_line(evalue)
    return _one_line(f"{ename}: {evalue}")


def run_notebook(path: Path, timeout: float = 120, cell_timeout: Optional[float] = None,
                 kernel_name: str = "python3") -> Tuple[nbformat.NotebookNode, Dict[int, bool], Optional[str]]:
    """Execute ``path`` cell by cell; returns (executed notebook, {cell index: ran}, stop reason or None).

    ``timeout`` bounds the whole notebook (kernel start-up excluded), ``cell_timeout`` each cell.
    """
    nb = nbformat.read(path, as_version=4)
    for ex in find_exercises(nb):  # the real check, whatever the student's notebook defined before
        cell = nb.cells[ex.cell]
        cell.source = f"from vit_edu.checks import {ex.check}\n{cell.source}"
    cell_timeout = timeout if cell_timeout is None else cell_timeout
    client = NotebookClient(nb, timeout=int(max(1, cell_timeout)), kernel_name=kernel_name, allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    ran: Dict[int, bool] = {}
    reason: Optional[str] = None
    with tempfile.TemporaryDirectory(prefix="vit_edu_grade_") as figures:
        # figures drawn by a student's notebook go to a scratch folder, not the course's figures/
        env = dict(os.environ, PYTHONHASHSEED="0", VIT_EDU_FIGURES=figures, MPLBACKEND="Agg")
        index = -1
        try:
            # stderr=DEVNULL: the kernel's own start-up warnings are noise in the grading log
            with client.setup_kernel(env=env, stderr=subprocess.DEVNULL):
                deadline = time.monotonic() + timeout
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type != "code":
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        reason = f"the notebook ran out of time ({timeout:g} s) before cell {index}"
                        break
                    client.timeout = int(max(1, min(cell_timeout, remaining)))
                    client.execute_cell(cell, index)
                    ran[index] = True
                    err = _first_error(cell)
                    if err is not None and err[0] in STOP_ERRORS:
                        reason = f"cell {index} raised {err[0]} (the notebook stopped there)"
                        break
        except CellTimeoutError:
            reason = f"cell {index} timed out (limit {client.timeout} s)"
        except DeadKernelError:
            reason = f"the kernel died in cell {index}"
        except Exception as e:  # noqa: BLE001 - whatever goes wrong, grade what ran
            reason = f"{type(e).__name__} while running cell {index}: {_one_line(e, 200)}"
    return nb, ran, reason


def grade_notebook(path: Path, timeout: float = 120, expected: Optional[Sequence[Exercise]] = None,
                   cell_timeout: Optional[float] = None) -> List[Tuple[str, bool, str]]:
    """[(exercise, passed, message)] for one notebook; never raises for a bad notebook."""
    try:
        found = find_exercises(nbformat.read(path, as_version=4))
    except Exception as e:  # noqa: BLE001 - invalid JSON, not a notebook, unreadable file
        names = [ex.name for ex in expected] if expected else ["(notebook)"]
        return [(n, False, _one_line(f"could not read the notebook: {type(e).__name__}: {e}", 300)) for n in names]
    results: List[Tuple[str, bool, str]] = []
    missing = [ex.name for ex in (expected or []) if ex.name not in {f.name for f in found}]
    if found:
        nb, ran, reason = run_notebook(path, timeout, cell_timeout)
        previous = -1
        for ex in found:
            cell = nb.cells[ex.cell]
            if ex.cell not in ran:
                results.append((ex.name, False, f"not reached: {reason or 'the notebook stopped'}"))
            else:
                err = _first_error(cell)
                if err is None and f"✓ {ex.check} passed" in _stdout(cell):
                    results.append((ex.name, True, ""))
                elif err is None:
                    results.append((ex.name, False, f"the check cell ran but {ex.check} did not report a pass"))
                elif err[0] == "CheckError":
                    results.append((ex.name, False, _error_message(*err)))
                else:  # e.g. NameError because the exercise cell itself failed: report that cell's error
                    earlier = [(i, _first_error(nb.cells[i])) for i in range(previous + 1, ex.cell)
                               if nb.cells[i].cell_type == "code" and _first_error(nb.cells[i]) is not None]
                    if earlier:
                        i, (ename, evalue) = earlier[-1]
                        results.append((ex.name, False, f"cell {i} raised: {_error_message(ename, evalue)}"))
                    else:
                        results.append((ex.name, False, _error_message(*err)))
            previous = ex.cell
    results += [(name, False, "check cell missing from the notebook") for name in missing]
    return results


def _expected_from(reference_dir: Optional[Path], notebook: str) -> Optional[List[Exercise]]:
    if reference_dir is None or not (reference_dir / notebook).exists():
        return None
    try:
        return find_exercises(nbformat.read(reference_dir / notebook, as_version=4))
    except Exception:  # noqa: BLE001 - a broken reference just means: no expectations
        return None


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)  # left by a write that was killed
    fd, tmp = temp_file_for(path)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_grades(out: Path, rows: Sequence[dict], students: Sequence[str]) -> None:
    """Both CSVs (per exercise, per student) for ``students``; atomic, so a reader never sees half a file."""
    rows = [r for r in rows if r["student"] in set(students)]
    _write_csv(out, COLUMNS, [[r["student"], r["notebook"], r["exercise"], int(r["passed"]), f"{r['weight']:g}",
                               r["message"]] for r in rows])
    columns = list(dict.fromkeys((r["notebook"], r["exercise"]) for r in rows))
    table = summarize(rows, students)
    header = ["student"] + [f"{nb}:{ex}" for nb, ex in columns] + ["total", "max"]
    _write_csv(summary_path(out), header,
               [[s] + [f"{v:g}" if v is not None else "" for v in vals] + [f"{tot:g}", f"{mx:g}"]
                for s, (vals, tot, mx) in table.items()])


def summary_path(out_csv: "str | Path") -> Path:
    out = Path(out_csv)
    return out.with_name(f"{out.stem}_summary{out.suffix or '.csv'}")


def grade(submissions_dir: "str | Path", out_csv: "str | Path" = "grades.csv", timeout: float = 120,
          weights: Optional[Dict[str, float]] = None, reference_dir: "str | Path | None" = None,
          cell_timeout: Optional[float] = None, verbose: bool = True, jobs: int = 1) -> List[dict]:
    """Grade every ``<student>/*.ipynb`` under ``submissions_dir``; returns the rows written to ``out_csv``.

    Rows: student, notebook, exercise, passed (bool), weight, message. Also writes ``<out>_summary.csv``
    (one row per student: score per exercise and total) and prints a students x exercises table.
    ``weights`` maps an exercise name (e.g. "patchify") to its weight (default 1). With ``reference_dir``
    (the handed-out copies), exercises whose check cell a student deleted count as failed. ``jobs``
    notebooks run at the same time (each in its own kernel).

    Nothing is lost: ``out_csv`` is checked writable before any notebook runs, and both CSVs are rewritten
    (atomically) as soon as each student's notebooks are graded, so an interrupted grading keeps every grade
    computed so far. Refused up front (one-line error): a missing or empty ``reference_dir``, and a folder
    whose notebooks are not in per-student folders.
    """
    root = Path(submissions_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"submissions folder not found: {root}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    weights = dict(weights or {})
    ref = Path(reference_dir) if reference_dir is not None else None
    if ref is not None:
        if not ref.is_dir():
            raise (NotADirectoryError if ref.exists() else FileNotFoundError)(
                f"reference folder {ref} {'is a file' if ref.exists() else 'not found'}; expected the folder of "
                f"handed-out notebooks (e.g. assignments/student)")
        if not any(ref.glob("*.ipynb")):
            raise ValueError(f"reference folder {ref} holds no .ipynb notebooks; expected the handed-out copies "
                             f"(e.g. assignments/student)")
    out = Path(out_csv)
    check_writable_file(out, "grades file (--out)")  # now, not after grading everybody
    check_writable_file(summary_path(out), "summary file")
    students = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    tasks = [(student, nb_path) for student in students for nb_path in sorted(student.glob("*.ipynb"))]
    loose = sorted(p.name for p in root.glob("*.ipynb"))
    if loose and not tasks:
        raise ValueError(f"{root} holds notebooks directly ({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}) "
                         f"but no student folders with notebooks; expected one folder per student: "
                         f"{root}/<student>/*.ipynb")
    if students and not tasks:
        raise ValueError(f"none of the {len(students)} student folders in {root} holds a notebook; expected "
                         f"{root}/<student>/*.ipynb (notebooks in deeper folders are not looked at)")
    if loose:
        print(f"warning: ignoring {len(loose)} notebook(s) directly in {root}: only {root}/<student>/*.ipynb "
              f"are graded", file=sys.stderr)

    def run(task: Tuple[Path, Path]) -> Tuple[List[Tuple[str, bool, str]], float]:
        start = time.monotonic()
        expected = _expected_from(ref, task[1].name)
        try:
            results = grade_notebook(task[1], timeout, expected, cell_timeout)
        except Exception as e:  # noqa: BLE001 - one broken notebook never stops the others
            message = _one_line(f"grader error: {type(e).__name__}: {e}", 300)
            results = [(ex.name, False, message) for ex in expected] if expected else [("(notebook)", False, message)]
        return results, time.monotonic() - start

    rows: List[dict] = []
    left = {student: sum(1 for s, _ in tasks if s == student) for student in students}
    done: List[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # the threads only wait on their kernels
        for (student, nb_path), (results, seconds) in zip(tasks, pool.map(run, tasks)):
            for exercise, passed, message in results:
                rows.append(dict(student=student.name, notebook=nb_path.name, exercise=exercise, passed=passed,
                                 weight=weights.get(exercise.split("#")[0], 1.0), message=message))
            if verbose:
                print(f"graded {student.name}/{nb_path.name}: {sum(r[1] for r in results)}/{len(results)} "
                      f"in {seconds:.0f} s", flush=True)
            left[student] -= 1
            if left[student] == 0:  # each student's grades are on disk as soon as they are known
                done.append(student.name)
                _write_grades(out, rows, done)
    _write_grades(out, rows, [s.name for s in students])
    if verbose:
        print(format_table(rows, [s.name for s in students]))
        print(f"wrote {out} and {summary_path(out)}")
    return rows


def summarize(rows: Sequence[dict], students: Sequence[str]) -> Dict[str, Tuple[List[Optional[float]], float, float]]:
    """{student: ([score per (notebook, exercise) column or None], total, max)}; max counts every column."""
    columns = list(dict.fromkeys((r["notebook"], r["exercise"]) for r in rows))
    weight = {(r["notebook"], r["exercise"]): r["weight"] for r in rows}
    full = sum(weight[c] for c in columns)
    out = {}
    for s in students:
        mine = {(r["notebook"], r["exercise"]): r for r in rows if r["student"] == s}
        vals = [(mine[c]["weight"] if mine[c]["passed"] else 0.0) if c in mine else None for c in columns]
        out[s] = (vals, sum(v for v in vals if v), full)
    return out


def format_table(rows: Sequence[dict], students: Sequence[str]) -> str:
    """Students x exercises with ✓ / ✗ (· where the student handed in no such notebook) and total/max."""
    columns = list(dict.fromkeys((r["notebook"], r["exercise"]) for r in rows))
    names = [ex for _, ex in columns]
    table = summarize(rows, students)
    width = max([len("student")] + [len(s) for s in students])
    head = "student".ljust(width) + "  " + "  ".join(names) + "  total"
    lines = [head, "-" * len(head)]
    for s in students:
        vals, total, full = table[s]
        marks = ["·" if v is None else ("✓" if v else "✗") for v in vals]
        cells = "  ".join(m.center(len(n)) for m, n in zip(marks, names))
        lines.append(f"{s.ljust(width)}  {cells}  {total:g}/{full:g}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vit_edu grade SUBMISSIONS_DIR [--out grades.csv] [--timeout 120]``."""
    parser = argparse.ArgumentParser(
        prog="python -m vit_edu grade",
        description="Run every submissions/<student>/*.ipynb in a fresh kernel and grade its check cells.")
    parser.add_argument("submissions", help="folder with one sub-folder of notebooks per student")
    parser.add_argument("--out", default="grades.csv", help="per-exercise CSV (default: grades.csv; the per-student "
                                                            "totals go to grades_summary.csv)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per notebook (default: 120)")
    parser.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell (default: --timeout)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at the same time (default: 1)")
    parser.add_argument("--reference", default=None,
                        help="the handed-out student copies (e.g. assignments/student): a deleted check cell fails")
    parser.add_argument("--weight", action="append", default=[], metavar="EXERCISE=W",
                        help="weight of an exercise, e.g. --weight vit_forward=2 (default 1; repeatable)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    weights: Dict[str, float] = {}
    for item in args.weight:
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or name.strip() not in CHECKS or not (math.isfinite(weights[name.strip()])
                                                          and weights[name.strip()] >= 0):
            print(f"error: --weight expects EXERCISE=NUMBER (a finite number >= 0) with EXERCISE one of "
                  f"{', '.join(CHECKS)}; got {item!r}", file=sys.stderr)
            return 2
    if not Path(args.submissions).is_dir():
        print(f"error: submissions folder not found: {args.submissions}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    for flag, value in (("--timeout", args.timeout), ("--cell-timeout", args.cell_timeout)):
        if value is not None and not (math.isfinite(value) and value > 0):
            print(f"error: {flag} must be a positive number of seconds, got {value:g}", file=sys.stderr)
            return 2
    try:
        grade(args.submissions, args.out, args.timeout, weights, args.reference, args.cell_timeout, jobs=args.jobs)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError) as err:
        if os.environ.get("VIT_EDU_DEBUG"):
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
