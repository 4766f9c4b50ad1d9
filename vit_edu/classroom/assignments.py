"""Student copies of the course notebooks and their nbgrader metadata (the student handout: :mod:`.handout`).

The teacher notebooks (notebooks/) mark the code a student writes with whole-line markers (nbgrader's
convention)::

    def patchify(images, patch_size):
        ### BEGIN SOLUTION
        return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)
        ### END SOLUTION

becomes, in the student copy::

    def patchify(images, patch_size):
        # YOUR CODE HERE
        raise NotImplementedError()

An exercise is three cells: a markdown statement ``**Exercise N (P points): title**``, the answer cell (with
the markers), then a check cell calling ``check_<name>(...)``. From these the nbgrader cell metadata is
derived (answer cell: "Autograded answer"; check cell: "Autograder tests" worth P points, locked), so
``nbgrader generate_assignment`` / ``nbgrader autograde`` and ``python -m vit_edu grade`` read the same
exercise list. The metadata is written into the teacher notebooks and kept in the student copies; outputs
and execution counts are cleared in the student copies. Every notebook is copied (with or without exercises)
so the numbering of the course stays the same.

    python -m vit_edu assignments [--src notebooks] [--out assignments/student] [--check]
    python -m vit_edu assignments --nbgrader-course COURSE_DIR [--notebooks 01_patch_embedding ...]
    python -m vit_edu handout OUT_DIR [--force]
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nbformat

from .._startup import OneLineParser
from ..fileio import (atomic_write, build_folder, check_space, check_writable_dir, error_line,
                      exit_status, folder_bytes)
from .solutions import (BEGIN, END, NEAR_MARKER_RE, STUB, TEXT_STUB, _check_stub, _has_region, _leaks,  # noqa: F401
                        _strip_solution, leaked_lines, secret_lines, solution_lines)

DEFAULT_SRC = "notebooks"
DEFAULT_OUT = "assignments/student"
SCHEMA_VERSION = 3  # nbgrader's cell metadata schema (nbgrader 0.6 to 0.9)
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # vit_edu/ (this file is vit_edu/classroom/assignments.py)

# "**Exercise 2.1 (1 point): `add_cls_and_pos`**", also as a heading ("## 5. Exercise 7 (3 points): ...").
STATEMENT_RE = re.compile(r"^[#>*\s\d.]*Exercise\s+(\d+(?:\.\d+)*)(?![\d.]*\w)(.*)$", re.M)
POINTS_RE = re.compile(r"^\s*\((\d+(?:\.\d+)?)\s+points?\)\s*:?\s*(.*)$")
POINTS_WRITTEN_RE = re.compile(r"\s*\(([^)]*\bp(?:oin)?ts?\b[^)]*)\)")  # "(two points)", "(2,5 points)", "(1 pt)"
CHECK_CALL_RE = re.compile(r"^\s*check_([A-Za-z0-9_]+)\s*\(", re.M)
# "**Experiment 6.A (3 points, graded by hand): cls token vs mean pooling**": an open experiment, graded by hand.
EXPERIMENT_RE = re.compile(r"^[#>*\s\d.]*Experiment\s+(\d+(?:\.\w+)*)\s*\((\d+(?:\.\d+)?)\s+points?,\s*graded by "
                           r"hand\)\s*:?\s*(.*)$", re.M)
RUBRIC_RE = re.compile(r"^\s*[-*]\s*\((\d+(?:\.\d+)?)\s+points?\)\s*(.+)$", re.M)  # "- (1 point) criterion"
EXPERIMENT_STUB = ("# YOUR CODE HERE (your experiment; graded by hand with the written answer below)",)
EXPERIMENT_PREFIX = "experiment_"  # grade_ids of experiment cells; `grade` never runs them


def has_exercises(nb: nbformat.NotebookNode) -> bool:
    return any(cell.cell_type == "code" and _has_region(cell.source) for cell in nb.cells)


# ================================================================================================ exercises
@dataclass(frozen=True)
class Exercise:
    """One exercise of a notebook as found from its cells (indices into ``nb.cells``)."""

    key: str                  # grade_id stem: the check name without "check_" (+ "_2", ... if reused)
    check: str                # the check's name without "check_", a key of vit_edu.checks.CHECKS
    number: str               # N of "Exercise N" ("3", "2.1")
    title: str                # what follows "(P points):" in the statement
    points: float             # P
    statement: int            # the markdown cell stating it
    answers: Tuple[int, ...]  # the answer cells (### BEGIN SOLUTION), usually one
    check_cell: int           # the cell calling check_<check>(...)

    def grade_ids(self) -> Dict[int, str]:
        """{cell index: nbgrader grade_id} of the exercise's answer and check cells."""
        ids = {a: f"{self.key}_answer" + (f"_{k + 1}" if k else "") for k, a in enumerate(self.answers)}
        ids[self.check_cell] = f"{self.key}_check"
        return ids


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _statement(nb: nbformat.NotebookNode, name: str, first_answer: int, after: int) -> Tuple[int, str, float, str]:
    """(cell, N, P, title) of the nearest exercise statement between cell ``after`` and ``first_answer``."""
    for j in range(first_answer - 1, after, -1):
        cell = nb.cells[j]
        if cell.cell_type != "markdown":
            continue
        found = STATEMENT_RE.findall(cell.source)
        if not found:
            continue
        numbers = sorted({n for n, _ in found})
        if len(numbers) > 1:
            listed = ", ".join(f"Exercise {n}" for n in numbers)
            raise ValueError(f"{name}, cell {j}: states several exercises ({listed}); write one statement cell "
                             f"'**Exercise N (P points): title**' per exercise")
        stated = [(m.group(1), m.group(2)) for _, rest in found if (m := POINTS_RE.match(rest))]
        n = numbers[0]
        written = [m.group(1).strip() for _, rest in found if (m := POINTS_WRITTEN_RE.match(rest))]
        if not stated and written:
            raise ValueError(f"{name}, cell {j}: 'Exercise {n}' states its points as '({written[0]})'; expected "
                             f"'(P points)' with P in digits, e.g. '(2 points)' or '(2.5 points)'")
        if not stated:
            raise ValueError(f"{name}, cell {j}: 'Exercise {n}' states no points; expected "
                             f"'**Exercise {n} (P points): title**' (e.g. '**Exercise {n} (2 points): ...**')")
        values = sorted({_number(p) for p, _ in stated})
        if len(values) > 1:
            raise ValueError(f"{name}, cell {j}: 'Exercise {n}' states different points "
                             f"({' and '.join(map(str, values))}); state them once")
        if values[0] <= 0:
            raise ValueError(f"{name}, cell {j}: 'Exercise {n}' is worth {values[0]} points; expected more than 0")
        title = stated[0][1].strip().rstrip("*").strip()
        return j, n, values[0], title
    between = f"cells {after + 1}-{first_answer - 1}" if first_answer - 1 > after + 1 else "the cells before it"
    raise ValueError(f"{name}, cell {first_answer}: answer cell without an exercise statement above it; expected a "
                     f"markdown cell '**Exercise N (P points): title**' in {between}")


@dataclass(frozen=True)
class Experiment:
    """An open experiment: a statement with a rubric, the teacher's code and the teacher's written answer
    (both inside solution regions), graded by hand (nbgrader: "Manually graded answer")."""

    key: str                   # grade_id stem, "experiment_6_a"
    number: str                # "6.A"
    title: str
    points: float
    statement: int             # the markdown cell stating it
    code: Tuple[int, ...]      # code cells with a solution region (the learner's experiment)
    answer: int                # the markdown cell with a solution region (the written answer)
    rubric: Tuple[Tuple[float, str], ...]  # (points, criterion), summing to ``points``

    def grade_ids(self) -> Dict[int, str]:
        ids = {c: f"{self.key}_code" + (f"_{k + 1}" if k else "") for k, c in enumerate(self.code)}
        ids[self.answer] = f"{self.key}_answer"
        return ids


def _experiment_spans(nb: nbformat.NotebookNode) -> List[Tuple[int, int, "re.Match[str]"]]:
    """(statement cell, end cell exclusive, match): an experiment runs to the next heading or statement."""
    starts = [(i, m) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
              and (m := EXPERIMENT_RE.search(c.source))]
    spans = []
    for i, m in starts:
        end = len(nb.cells)
        for j in range(i + 1, len(nb.cells)):
            c = nb.cells[j]
            if c.cell_type == "markdown" and (re.search(r"^#{1,3}\s(?!(BEGIN|END) SOLUTION)", c.source, re.M) or STATEMENT_RE.search(c.source)
                                              or EXPERIMENT_RE.search(c.source)):
                end = j
                break
        spans.append((i, end, m))
    return spans


def find_experiments(nb: nbformat.NotebookNode, name: str = "<notebook>") -> List[Experiment]:
    """The open experiments of ``nb``; ValueError naming the cell when one is incomplete (no written answer,
    a rubric that does not add up to the points, a check call inside it)."""
    found = []
    for start, end, m in _experiment_spans(nb):
        number, points, title = m.group(1), _number(m.group(2)), m.group(3).strip().rstrip("*").strip()
        where = f"{name}, cell {start}"
        rubric = tuple((_number(p), c.strip()) for p, c in RUBRIC_RE.findall(nb.cells[start].source))
        if not rubric:
            raise ValueError(f"{where}: 'Experiment {number}' has no rubric; expected lines '- (P points) criterion' "
                             f"in its statement")
        if abs(sum(p for p, _ in rubric) - points) > 1e-9:
            raise ValueError(f"{where}: the rubric of 'Experiment {number}' adds up to {sum(p for p, _ in rubric):g} "
                             f"points, the statement says {points:g}")
        code = tuple(j for j in range(start + 1, end) if nb.cells[j].cell_type == "code"
                     and _has_region(nb.cells[j].source))
        answers = [j for j in range(start + 1, end) if nb.cells[j].cell_type == "markdown"
                   and _has_region(nb.cells[j].source)]
        if len(answers) != 1:
            raise ValueError(f"{where}: 'Experiment {number}' needs exactly one markdown cell with a solution region "
                             f"(the written answer) before the next heading, found {len(answers)}")
        for j in range(start + 1, end):
            if nb.cells[j].cell_type == "code" and CHECK_CALL_RE.search(nb.cells[j].source):
                raise ValueError(f"{name}, cell {j}: a check call inside 'Experiment {number}' (experiments are "
                                 f"graded by hand; put exercises under their own heading)")
        key = EXPERIMENT_PREFIX + re.sub(r"\W+", "_", number).strip("_").lower()
        found.append(Experiment(key, number, title, points, start, code, answers[0], rubric))
    return found


def _experiment_cells(nb: nbformat.NotebookNode) -> set:
    return {j for start, end, _ in _experiment_spans(nb) for j in range(start + 1, end)}


def _check_known(check: str, where: str) -> None:
    from ..checks import CHECKS  # made from the exercise tables

    if check not in CHECKS:
        near = difflib.get_close_matches(check, CHECKS, n=1)
        hint = f"did you mean check_{near[0]}? " if near else ""
        raise ValueError(f"{where}: check_{check}(...) is not a check of vit_edu.checks; {hint}expected one of "
                         f"vit_edu.checks.CHECKS (in the student copy it would fail with an ImportError)")


def find_exercises(nb: nbformat.NotebookNode, name: str = "<notebook>") -> List[Exercise]:
    """The exercises of ``nb`` in order; ValueError naming the notebook and cell when the layout is broken
    (an answer without a check cell, a check without an answer, a statement without points, ...)."""
    exercises: List[Exercise] = []
    pending: List[int] = []  # answer cells since the last check cell
    last_check = -1
    uses: Dict[str, int] = {}
    in_experiment = _experiment_cells(nb)
    for i, cell in enumerate(nb.cells):
        where = f"{name}, cell {i}"
        _strip_solution(cell.source, where)  # unpaired or misspelt markers: a clear error here already
        if i in in_experiment:
            continue  # find_experiments reads these
        if cell.cell_type != "code" and _has_region(cell.source):
            raise ValueError(f"{where}: a solution region in a {cell.cell_type} cell (a written answer) cannot be "
                             f"autograded; ask for code followed by a check cell")
        if cell.cell_type != "code":
            continue
        calls = CHECK_CALL_RE.findall(cell.source)
        if _has_region(cell.source):
            if calls:
                raise ValueError(f"{where}: a solution region and a call of check_{calls[0]}(...) in one cell; "
                                 f"the check goes in its own cell after the answer cell")
            _check_stub(cell.source, where)
            pending.append(i)
            continue
        if not calls:
            continue
        if len(calls) > 1:
            raise ValueError(f"{where}: {len(calls)} check calls ({', '.join('check_' + c for c in calls)}); "
                             f"one check per cell")
        check = calls[0]
        _check_known(check, where)
        if not pending:
            since = f"since the check cell {last_check}" if last_check >= 0 else "above it"
            later = next((j for j in range(i + 1, len(nb.cells)) if nb.cells[j].cell_type == "code"
                          and _has_region(nb.cells[j].source)), None)
            order = f"; the answer cell {later} comes after it: put the check cell after its answer cell" \
                if later is not None else ""
            raise ValueError(f"{where}: check_{check}(...) has no answer cell (a code cell with '{BEGIN}') {since}"
                             f"{order}")
        statement, number, points, title = _statement(nb, name, pending[0], last_check)
        uses[check] = uses.get(check, 0) + 1
        key = check if uses[check] == 1 else f"{check}_{uses[check]}"
        exercises.append(Exercise(key, check, number, title, points, statement, tuple(pending), i))
        pending, last_check = [], i
    if pending:
        raise ValueError(f"{name}, cell {pending[0]}: answer cell without a check cell after it "
                         f"(expected a cell 'check_<name>(...)')")
    seen: Dict[str, int] = {}
    for ex in exercises:
        if ex.number in seen:
            raise ValueError(f"{name}, cell {ex.statement}: 'Exercise {ex.number}' is stated twice "
                             f"(also cell {seen[ex.number]})")
        seen[ex.number] = ex.statement
    ids = [g for ex in exercises for g in ex.grade_ids().values()]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{name}: duplicate grade ids {sorted({g for g in ids if ids.count(g) > 1})}")
    return exercises


# ================================================================================================ nbgrader
def expected_metadata(nb: nbformat.NotebookNode, name: str = "<notebook>") -> Dict[int, dict]:
    """{cell index: nbgrader metadata} for the exercise cells of ``nb``; every other cell has none."""
    meta: Dict[int, dict] = {}
    for ex in find_exercises(nb, name):
        for index, grade_id in ex.grade_ids().items():
            if index == ex.check_cell:
                meta[index] = {"grade": True, "grade_id": grade_id, "locked": True, "points": ex.points,
                               "schema_version": SCHEMA_VERSION, "solution": False}
            else:
                meta[index] = {"grade": False, "grade_id": grade_id, "locked": False,
                               "schema_version": SCHEMA_VERSION, "solution": True}
    for exp in find_experiments(nb, name):
        for index, grade_id in exp.grade_ids().items():
            if index == exp.answer:  # nbgrader's "Manually graded answer"
                meta[index] = {"grade": True, "grade_id": grade_id, "locked": False, "points": exp.points,
                               "schema_version": SCHEMA_VERSION, "solution": True}
            else:
                meta[index] = {"grade": False, "grade_id": grade_id, "locked": False,
                               "schema_version": SCHEMA_VERSION, "solution": True}
    return meta


def expected_rubrics(nb: nbformat.NotebookNode, name: str = "<notebook>") -> Dict[int, list]:
    """{answer cell: rubric} of the open experiments, stored as ``metadata.vit_edu.rubric`` for the grader."""
    return {exp.answer: [{"points": p, "criterion": c} for p, c in exp.rubric] for exp in find_experiments(nb, name)}


def add_nbgrader_metadata(nb: nbformat.NotebookNode, name: str = "<notebook>") -> nbformat.NotebookNode:
    """A copy of ``nb`` whose exercise cells carry their nbgrader metadata and no other cell carries any."""
    expected = expected_metadata(nb, name)
    rubrics = expected_rubrics(nb, name)
    out = copy.deepcopy(nb)
    for index, cell in enumerate(out.cells):
        if index in expected:
            cell.metadata["nbgrader"] = copy.deepcopy(expected[index])
        else:
            cell.metadata.pop("nbgrader", None)
        if index in rubrics:
            cell.metadata["vit_edu"] = {"rubric": copy.deepcopy(rubrics[index])}
        else:
            cell.metadata.pop("vit_edu", None)
    return out


def metadata_problems(nb: nbformat.NotebookNode, name: str = "<notebook>") -> List[str]:
    """Cells whose nbgrader metadata differs from what the markers and statements give (empty: current)."""
    expected = expected_metadata(nb, name)
    rubrics = expected_rubrics(nb, name)
    problems = []
    for index, cell in enumerate(nb.cells):
        have, want = cell.metadata.get("nbgrader"), expected.get(index)
        if have != want:
            what = "missing" if have is None else ("not an exercise cell" if want is None else "out of date")
            problems.append(f"{name}, cell {index}: nbgrader metadata {what} "
                            f"(expected {want}, got {have})")
        have_rubric = (cell.metadata.get("vit_edu") or {}).get("rubric")
        if have_rubric != rubrics.get(index):
            problems.append(f"{name}, cell {index}: rubric metadata out of date "
                            f"(expected {rubrics.get(index)}, got {have_rubric})")
    return problems


def renamed_grade_ids(nb: nbformat.NotebookNode, name: str = "<notebook>") -> List[str]:
    """One line per cell whose grade_id the next write replaces (set by hand, or the layout changed)."""
    expected = expected_metadata(nb, name)
    notes = []
    for index, cell in enumerate(nb.cells):
        have = (cell.metadata.get("nbgrader") or {}).get("grade_id")
        want = expected.get(index, {}).get("grade_id")
        if have is not None and have != want:
            what = f"becomes {want!r}" if want else "is removed (not an exercise cell)"
            notes.append(f"{name}, cell {index}: grade_id {have!r} {what}: grade ids come from the check names and "
                         f"the layout; nbgrader's gradebook sees a new cell")
    return notes


def _text(nb: nbformat.NotebookNode) -> str:
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def write_metadata(src_dir: "str | Path" = DEFAULT_SRC) -> List[Path]:
    """Write the nbgrader metadata into every notebook of ``src_dir`` whose metadata is not current (only
    the cells' ``nbgrader`` entries change); returns the rewritten paths. Idempotent."""
    updates = []  # all notebooks first: a broken one stops the run before anything is written
    for path in _sources(Path(src_dir)):
        nb = _read(path)
        _student_text(nb, path.name)  # its student copy can be made (no solution left in it)
        if metadata_problems(nb, path.name):
            updates.append((path, _text(add_nbgrader_metadata(nb, path.name))))
    for path, text in updates:
        _write_atomic(path, text)
    return [path for path, _ in updates]


# ================================================================================================ student copies
def make_student_notebook(nb: nbformat.NotebookNode, name: str = "<notebook>") -> nbformat.NotebookNode:
    """A copy of ``nb`` with every solution region replaced by the stub, outputs and counts cleared.

    Cell metadata is kept (nbgrader's, the "setup" tags); as nbgrader's LockCells does, answer cells become
    non-deletable and check cells non-deletable and read-only. ``name`` only labels error messages
    (e.g. unpaired markers: ValueError naming the notebook and cell).
    """
    if not isinstance(nb, nbformat.NotebookNode):
        raise TypeError(f"make_student_notebook expects an nbformat NotebookNode, got {type(nb).__name__}")
    student = copy.deepcopy(nb)
    student.metadata.pop("widgets", None)  # the teacher's widget state: outputs, as nbconvert's clear-output does
    for index, cell in enumerate(student.cells):
        grader = cell.metadata.get("nbgrader", {})
        if grader.get("solution"):
            cell.metadata["deletable"] = False
        elif grader.get("grade") or grader.get("locked"):
            cell.metadata["deletable"] = False
            cell.metadata["editable"] = False
        if cell.cell_type != "code":  # a written answer, as nbgrader does
            cell.source = _strip_solution(cell.source, f"{name}, cell {index}", TEXT_STUB)[0]
            for key in list(cell.get("attachments", {})):  # a picture the removed answer showed goes with it
                if f"attachment:{key}" not in cell.source:
                    del cell.attachments[key]
            continue
        experiment = str(grader.get("grade_id", "")).startswith(EXPERIMENT_PREFIX)
        cell.source = _strip_solution(cell.source, f"{name}, cell {index}",
                                      EXPERIMENT_STUB if experiment else STUB)[0]
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)  # run timestamps from the teacher's machine
    return student


def _render(path: Path) -> str:
    return _student_text(_read(path), path.name)


def _student_text(nb: nbformat.NotebookNode, name: str) -> str:
    """The student copy of teacher notebook ``nb`` as written; ValueError naming the cell if any solution text is
    left in it (a source, an output, metadata, an attachment, the notebook's metadata)."""
    student = make_student_notebook(add_nbgrader_metadata(nb, name), name)
    leaks = _leaks(nb, student, name)
    if leaks:
        where, line = leaks[0]
        raise ValueError(f"{name}, {where}: the student copy still holds a solution line ({line.strip()[:80]!r}, "
                         f"{len(leaks)} in all); expected every solution inside '{BEGIN}' / '{END}' and none in "
                         f"metadata or attachments")
    text = _text(student)
    if NEAR_MARKER_RE.search(text):  # a marker left in metadata, say
        raise ValueError(f"{name}: the student copy still holds {NEAR_MARKER_RE.search(text).group(0)!r}; expected "
                         f"none (a marker outside a cell's source?)")
    return text


def _write_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), "w", encoding="utf-8")


def _sources(src_dir: Path) -> List[Path]:
    """The teacher notebooks of ``src_dir``; an error for a folder without any (the copies would all go)."""
    if not src_dir.is_dir():
        raise FileNotFoundError(f"source folder not found: {src_dir}")
    paths = sorted(p for p in src_dir.glob("*.ipynb") if not p.name.startswith("."))
    if not paths:
        raise FileNotFoundError(f"no notebooks in {src_dir}; expected the teacher notebooks (*.ipynb), e.g. "
                                f"--src {DEFAULT_SRC}")
    return paths


def _read(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path``; a ValueError naming it when it is not one (or not UTF-8, UTF-16 or UTF-32)."""
    data = path.read_bytes()
    try:  # UTF-8, with or without a byte-order mark (Notepad's), or UTF-16/32: what JSON allows, as the grader reads
        text = data.decode(json.detect_encoding(data))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path.name}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); expected a "
                         f"Jupyter notebook saved as UTF-8, as Jupyter saves it") from e
    try:
        return nbformat.reads(text, as_version=4)
    except (ValueError, TypeError, AttributeError, KeyError, nbformat.ValidationError) as e:
        first = (str(e).splitlines() or [""])[0][:120]
        raise ValueError(f"{path.name}: not a readable notebook ({type(e).__name__}: {first}); expected a Jupyter "
                         f"notebook file (nbformat 4)") from e


def render_all(src_dir: "str | Path" = DEFAULT_SRC) -> Dict[str, str]:
    """{file name: student notebook JSON} for every notebook in ``src_dir``, in memory."""
    return {p.name: _render(p) for p in _sources(Path(src_dir))}


def _check_apart(src_dir: "str | Path", out_dir: "str | Path") -> None:
    """Refuse a --out that is the --src folder or holds it: the copies would replace the teacher notebooks."""
    src, out = Path(os.path.realpath(src_dir)), Path(os.path.realpath(out_dir))
    if out == src or out in src.parents:
        raise ValueError(f"student copies folder (--out) {out_dir} {'is' if out == src else 'holds'} the teacher "
                         f"notebooks folder (--src) {src_dir}: the student copies would replace the teacher notebooks "
                         f"and their answers; expected a folder apart from it (default: {DEFAULT_OUT})")


def generate(src_dir: "str | Path" = DEFAULT_SRC, out_dir: "str | Path" = DEFAULT_OUT) -> List[Path]:
    """Write the student copy of every notebook in ``src_dir`` to ``out_dir``; returns the written paths.

    ``out_dir`` then mirrors ``src_dir`` (copies whose source is gone are dropped, other files kept). It is
    built beside and renamed into place: a failure (a full disk, Ctrl-C) leaves the previous copies whole.
    """
    out = Path(out_dir)
    _check_apart(src_dir, out)
    rendered = render_all(src_dir)
    check_writable_dir(out, "student copies folder (--out)")
    keep = [p for p in out.iterdir() if p.suffix != ".ipynb"] if out.is_dir() else []
    need = sum(len(t.encode("utf-8")) for t in rendered.values()) + sum(folder_bytes(p) if p.is_dir() else
                                                                         p.stat().st_size for p in keep)
    check_space([(out, need, "student copies folder (--out)")])

    def build(tmp: Path) -> None:
        for p in keep:
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        for name, text in rendered.items():
            _write_atomic(tmp / name, text)

    build_folder(out, build)
    return [out / name for name in rendered]


def stale(src_dir: "str | Path" = DEFAULT_SRC, out_dir: "str | Path" = DEFAULT_OUT) -> List[str]:
    """What differs between the committed files and a fresh generation (empty list: up to date): the teacher
    notebooks' nbgrader metadata and the student copies."""
    out = Path(out_dir)
    problems = []
    for path in _sources(Path(src_dir)):
        problems += metadata_problems(_read(path), path.name)
    rendered = render_all(src_dir)
    for name, text in rendered.items():
        path = out / name
        if not path.exists():
            problems.append(f"missing: {path}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"out of date: {path}")
    if out.is_dir():
        problems += [f"no source notebook: {p}" for p in sorted(out.glob("*.ipynb")) if p.name not in rendered]
    return problems


def course_exercises(src_dir: "str | Path" = DEFAULT_SRC) -> List[Tuple[str, Exercise]]:
    """(notebook file name, exercise) for every exercise of the course, in order."""
    found = []
    for path in _sources(Path(src_dir)):
        found += [(path.name, ex) for ex in find_exercises(_read(path), path.name)]
    return found


# ================================================================================================ nbgrader course
NBGRADER_CONFIG = '''\
# nbgrader configuration of the vit_edu course (written by: python -m vit_edu assignments --nbgrader-course).
# Run every nbgrader command from this folder, with nbgrader installed next to vit_edu (same environment).
c = get_config()  # noqa: F821 (nbgrader defines get_config)

c.CourseDirectory.course_id = "vit_edu"
# One assignment per notebook: source/<notebook>/<notebook>.ipynb, e.g. source/01_patch_embedding/.

# Notebook 06 trains a model in a cell (one to a few minutes on a busy CPU); nbgrader's default is 30 s a cell.
# Execute is nbgrader's subclass of ExecutePreprocessor: c.ExecutePreprocessor.timeout works too, Execute wins.
c.Execute.timeout = 900

# The course's markers and stub, which are nbgrader's defaults, spelled out.
c.ClearSolutions.begin_solution_delimeter = "BEGIN SOLUTION"
c.ClearSolutions.end_solution_delimeter = "END SOLUTION"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}
c.ClearSolutions.enforce_metadata = True  # the notebooks carry the metadata: answer cells and graded check cells

# Figures: vit_edu.explain.viz.save_figure writes into figures/ next to the notebook being run
# (autograded/<student>/<assignment>/figures/), never into the repository's figures/.
# Set VIT_EDU_FIGURES in the environment of `nbgrader autograde` to put them elsewhere.
# `nbgrader validate source/<a>/<a>.ipynb` draws them into source/<a>/figures/: figures/ is not copied between
# nbgrader's folders, so generate_assignment never releases the teacher's pictures (nbgrader's own list + figures).
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "figures"]
'''


def nbgrader_course(course_dir: "str | Path", src_dir: "str | Path" = DEFAULT_SRC,
                    notebooks: Optional[Sequence[str]] = None) -> List[Path]:
    """Lay out an nbgrader course: ``nbgrader_config.py`` (kept if present) and one assignment per notebook,
    ``source/<stem>/<stem>.ipynb`` (the teacher notebook with its nbgrader metadata, rewritten each time).
    ``notebooks`` picks some by stem or file name. Returns the written paths."""
    course = Path(course_dir)
    paths = _sources(Path(src_dir))
    if notebooks:
        wanted = {Path(n).stem for n in notebooks}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            raise FileNotFoundError(f"no notebook {', '.join(sorted(unknown))} in {src_dir} "
                                    f"(have: {', '.join(p.stem for p in paths)})")
        paths = [p for p in paths if p.stem in wanted]
    texts = {}  # every notebook first: a broken one stops the run before anything is written
    for path in paths:
        nb = _read(path)
        _student_text(nb, path.name)
        texts[course / "source" / path.stem / path.name] = _text(add_nbgrader_metadata(nb, path.name))
    check_writable_dir(course, "nbgrader course folder")
    config = course / "nbgrader_config.py"
    if not config.exists():
        texts = {config: NBGRADER_CONFIG, **texts}
    for target, text in texts.items():
        _write_atomic(target, text)
    return list(texts)


def _points(value: float) -> str:
    return f"{value:g}"


# ================================================================================================ command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vit_edu assignments [--src notebooks] [--out assignments/student] [--check]``."""
    parser = OneLineParser(
        prog="python -m vit_edu assignments",
        description="Write the nbgrader metadata of the teacher notebooks (from the solution markers, the check "
                    "cells and the '**Exercise N (P points): ...**' statements) and make the student copies: "
                    "solution regions become '# YOUR CODE HERE / raise NotImplementedError()', outputs cleared.")
    parser.add_argument("--src", default=DEFAULT_SRC, help=f"teacher notebooks (default: {DEFAULT_SRC})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where the student copies go (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the metadata in --src or the student copies in --out are "
                             "out of date")
    parser.add_argument("--nbgrader-course", metavar="COURSE_DIR", default=None,
                        help="instead, lay out an nbgrader course there: nbgrader_config.py and "
                             "source/<notebook>/<notebook>.ipynb")
    parser.add_argument("--notebooks", nargs="+", default=None, metavar="NAME",
                        help="with --nbgrader-course: only these notebooks (e.g. 01_patch_embedding)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.nbgrader_course and args.check:  # --check promises to write nothing; the course would be written
        parser.error("--check writes nothing and --nbgrader-course writes a course folder: give one of them")
    if args.notebooks and not args.nbgrader_course:  # else every notebook's copy would be written, unsaid
        parser.error("--notebooks picks the notebooks of --nbgrader-course; the student copies are always all made")
    try:
        if args.nbgrader_course:
            written = nbgrader_course(args.nbgrader_course, args.src, args.notebooks)
            print(f"wrote {len(written)} file(s) under {args.nbgrader_course}; then, from that folder: "
                  f"nbgrader generate_assignment <notebook>, nbgrader autograde <notebook>")
            return 0
        if args.check:
            problems = stale(args.src, args.out)
            if problems:
                print(f"{args.src} metadata or student notebooks in {args.out} are stale ({len(problems)} problem(s)); "
                      f"regenerate with: python -m vit_edu assignments --src {args.src} --out {args.out}")
                for p in problems:
                    print(f"  {p}")
                return 1
            print(f"nbgrader metadata in {args.src} and student notebooks in {args.out} are up to date")
            return 0
        _check_apart(args.src, args.out)  # before the notebooks change
        check_writable_dir(Path(args.out), "student copies folder (--out)")
        notes = [n for p in _sources(Path(args.src)) for n in renamed_grade_ids(_read(p), p.name)]
        changed = write_metadata(args.src)
        paths = generate(args.src, args.out)
        exercises = course_exercises(args.src)
    except (OSError, ValueError) as e:  # OSError: also an unwritable or full --out, found up front
        print(f"vit_edu assignments: error: {error_line(e)}", file=sys.stderr)
        return exit_status(e)
    n_ex = sum(has_exercises(_read(Path(args.src) / p.name)) for p in paths)
    print(f"nbgrader metadata: {len(exercises)} exercises, {_points(sum(ex.points for _, ex in exercises))} points; "
          f"rewrote {len(changed)} teacher notebook(s)")
    print(f"wrote {len(paths)} student notebooks ({n_ex} with exercises) to {args.out}")
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
