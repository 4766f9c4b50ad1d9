"""Grade filled-in student notebooks; the verdict is made where no student code runs.

    python -m vit_edu grade SUBMISSIONS_DIR [--out grades.csv] [--reference assignments/student] [--jobs N]
        [--timeout 60] [--cell-timeout S] [--memory-mb 2048] [--disk-mb 256] [--max-output-kb 256] [--seed N]
        [--force] [--detail] [--shard I/N]
    python -m vit_edu grade --merge PART_CSV... [--out grades.csv] [--reference ...]

Layout: one folder per student, holding that student's notebooks::

    submissions/
        alice/01_patch_embedding.ipynb  03_multi_head_attention.ipynb ...
        bob/01_patch_embedding.ipynb ...

What is graded comes from the reference notebooks only (the handed-out copies, ``assignments/student``):
their nbgrader metadata names the exercises (check cells: ``"grade": true``, ``"points"``, grade_id
``<name>_check``, containing ``check_<name>(<object>)``), the answer cells (``"solution": true``, grade_id
``<name>_answer``) and the setup cells (tag ``setup``). The total and the maximum are the reference's
points. From a submission, only the answer cells (matched by grade_id) are taken; its check cells, its other
cells and its metadata are never used, so editing or removing a check cell changes nothing.

For each (student, notebook), a child process (:mod:`vit_edu.classroom.sandbox`: own uid as root, limits on
time, memory, output, a scratch copy of the student's folder) runs the reference's setup cells and the
student's answer cells in order, and at each check cell records what the student's object does
(:func:`vit_edu.checks.probe`, with a seed drawn for this grading run). This process reads those records as
data (``torch.load(weights_only=True)``) and decides (:func:`vit_edu.checks.judge`). A child that crashes,
runs out of time or memory, or prints without end fails only its own notebook's remaining exercises, with
the reason. No IPython kernel is involved (IPython hooks, input transformers and magics do nothing).

Notebooks are matched to the reference by file name; a renamed notebook is recognised by its answer cells'
grade_ids and graded once; duplicates and extra notebooks are reported, never graded, never counted.

Results: ``grades/<student>.csv`` as soon as that student is done (next to ``--out``), then ``grades.csv``
(one row per exercise) and ``grades_summary.csv`` (one row per student, total and maximum). Running the
same command again resumes: students already graded (same reference, same notebooks) are skipped unless
``--force``. A student whose notebooks were running when the grader itself was killed is retried alone,
and marked and skipped if it happens again. Exit code 0 even when students fail.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
import os
import secrets
import stat
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import nbformat

from .. import checks
from ..checks import CHECKS
from .._startup import OneLineParser
from ..fileio import _pid_alive, atomic_write, check_writable_file
from . import sandbox, shards
from .sandbox import one_line

COLUMNS = ["student", "notebook", "exercise", "passed", "points", "max_points", "message", "flags"]
DEFAULT_REFERENCE = "assignments/student"
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024  # a submitted notebook larger than this is not read (clear its outputs)
STATE_FILE = ".grading.json"  # in the per-student folder: reference fingerprint, journal, seeds


# ============================================================================================ the reference
@dataclass(frozen=True)
class RefExercise:
    notebook: str
    name: str  # grade_id stem: "patchify" (or "patchify_2" for a second use of a check in one notebook)
    check: str  # key of vit_edu.checks.CHECKS
    points: float
    expr: str  # what the check cell hands to the check, e.g. "patchify"
    answers: Tuple[str, ...]  # grade_ids of its answer cells (the answer cells since the previous check cell)


@dataclass
class RefNotebook:
    name: str
    steps: List[dict]  # what the sandbox runs, in order (answer steps are filled in per submission)
    exercises: List[RefExercise]
    answer_ids: List[str]
    imports: List[str]  # modules the setup cells import (preloaded in the sandbox server)
    stubs: Dict[str, str] = field(default_factory=dict)  # answer grade_id -> the handed-out stub's source
    code_cells: List[str] = field(default_factory=list)  # every code cell's source, in order


def _check_call(source: str, where: str) -> Tuple[str, str]:
    """(check name, argument source) of the one ``check_<name>(<object>)`` call in a reference check cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError(f"{where}: the check cell is not valid Python ({err.msg}, line {err.lineno})") from None
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id.startswith("check_")]
    if len(calls) != 1 or len(calls[0].args) != 1 or calls[0].keywords:
        raise ValueError(f"{where}: a graded cell must call exactly one check with one argument, "
                         f"check_<name>(<object>); got {len(calls)} check call(s)")
    name = calls[0].func.id[len("check_"):]
    if name not in CHECKS:
        raise ValueError(f"{where}: calls check_{name}, which vit_edu.checks does not define "
                         f"(known: {', '.join(CHECKS)})")
    return name, ast.get_source_segment(source, calls[0].args[0]) or ""


def _imports(source: str) -> List[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found: List[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]  # submodules, if any
    return found


def load_reference_notebook(path: Path) -> RefNotebook:
    """The exercises, points and steps of one reference notebook; ValueError naming the cell when they cannot
    be read from its nbgrader metadata."""
    name = path.name
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 - invalid JSON, not a notebook
        raise ValueError(f"reference notebook {path} cannot be read: {type(err).__name__}: {one_line(err, 200)}") from None
    steps: List[dict] = []
    exercises: List[RefExercise] = []
    answer_ids: List[str] = []
    imports: List[str] = []
    pending: List[str] = []
    stubs: Dict[str, str] = {}
    code_cells: List[str] = [c.source for c in nb.cells if c.cell_type == "code"]
    for index, cell in enumerate(nb.cells):
        where = f"reference {name}, cell {index}"
        meta = cell.get("metadata", {})
        grader = meta.get("nbgrader") or {}
        if cell.cell_type != "code":
            continue
        if "setup" in (meta.get("tags") or []):
            steps.append({"kind": "setup", "source": cell.source, "label": f"setup cell {index}"})
            imports += _imports(cell.source)
            continue
        if str(grader.get("grade_id", "")).startswith("experiment_"):
            continue  # an open experiment's code: graded by hand, never run here
        if grader.get("solution"):
            grade_id = grader.get("grade_id")
            if not isinstance(grade_id, str) or not grade_id:
                raise ValueError(f"{where}: an answer cell (nbgrader solution) without a grade_id")
            if grade_id in answer_ids:
                raise ValueError(f"{where}: grade_id {grade_id!r} is used by two answer cells")
            if grader.get("grade"):
                raise ValueError(f"{where}: a manually graded answer cell ({grade_id!r}); this grader only "
                                 f"grades check cells")
            answer_ids.append(grade_id)
            stubs[grade_id] = cell.source
            pending.append(grade_id)
            steps.append({"kind": "answer", "grade_id": grade_id, "label": f"answer cell {grade_id}"})
            continue
        if grader.get("grade"):
            check, expr = _check_call(cell.source, where)
            grade_id = str(grader.get("grade_id") or f"{check}_check")
            ex_name = grade_id[: -len("_check")] if grade_id.endswith("_check") else grade_id
            try:
                points = float(grader.get("points", 0))
            except (TypeError, ValueError):
                points = float("nan")
            if not (math.isfinite(points) and points >= 0):
                raise ValueError(f"{where}: points must be a number >= 0, got {grader.get('points')!r}")
            if any(e.name == ex_name for e in exercises):
                raise ValueError(f"{where}: two check cells with grade_id {grade_id!r}")
            exercises.append(RefExercise(name, ex_name, check, points, expr, tuple(pending)))
            pending = []
            steps.append({"kind": "check", "name": ex_name, "check": check, "expr": expr,
                          "label": f"check cell {grade_id}"})
        elif "check_" in cell.source:
            try:
                _check_call(cell.source, where)
            except ValueError:
                continue  # not a check call (e.g. a comment mentioning one)
            raise ValueError(f"{where}: a check cell without nbgrader metadata; regenerate the reference with "
                             f"`python -m vit_edu assignments` (it writes the metadata from the exercise statements)")
    return RefNotebook(name, steps, exercises, answer_ids, list(dict.fromkeys(imports)), stubs, code_cells)


def load_reference(reference_dir: "str | Path") -> List[RefNotebook]:
    """Every notebook of the reference folder (those without exercises included: they are no extras)."""
    ref = Path(reference_dir)
    if not ref.is_dir():
        raise (NotADirectoryError if ref.exists() else FileNotFoundError)(
            f"reference folder {ref} {'is a file' if ref.exists() else 'not found'}; expected the folder of "
            f"handed-out notebooks (e.g. {DEFAULT_REFERENCE})")
    paths = sorted(ref.glob("*.ipynb"))
    if not paths:
        raise ValueError(f"reference folder {ref} holds no .ipynb notebooks; expected the handed-out copies "
                         f"(e.g. {DEFAULT_REFERENCE})")
    notebooks = [load_reference_notebook(p) for p in paths]
    if not any(nb.exercises for nb in notebooks):
        raise ValueError(f"reference folder {ref} holds no graded check cells (nbgrader \"grade\": true); regenerate "
                         f"it with `python -m vit_edu assignments`")
    return notebooks


def fingerprint(reference: Sequence[RefNotebook]) -> str:
    """Changes when the exercises, points, checked objects or setup cells of the reference change."""
    data = [(nb.name, [s.get("source", s.get("grade_id", s.get("name"))) for s in nb.steps],
             [(e.name, e.check, e.points, e.expr, e.answers) for e in nb.exercises]) for nb in reference]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


# ============================================================================================ submissions
def read_answers(path: Path, reference: Sequence[RefNotebook] = ()) -> Tuple[Optional[Dict[str, List[str]]], str]:
    """({grade_id: [sources of the code cells marked nbgrader solution with that id]}, "") of a submitted
    notebook, read as untrusted JSON; (None, why) when it cannot be read. A notebook with no nbgrader metadata
    left (an editor dropped it) whose code cells line up with one of ``reference`` (same number, every cell that
    is not an answer unchanged) gets its answers by position."""
    if path.is_symlink():
        return None, "a link, not a notebook file"
    data, problem = sandbox.read_untrusted(path, MAX_NOTEBOOK_BYTES)
    if data is None:
        return None, f"the file is {problem}"
    try:
        nb = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        return None, f"not a notebook (invalid JSON: {one_line(err, 120)})"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None, "not a notebook (no list of cells)"
    answers: Dict[str, List[str]] = {}
    for cell in nb["cells"]:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata")
        grader = meta.get("nbgrader") if isinstance(meta, dict) else None
        if not isinstance(grader, dict) or grader.get("solution") is not True:
            continue
        grade_id, source = grader.get("grade_id"), cell.get("source", "")
        if isinstance(source, list) and all(isinstance(s, str) for s in source):
            source = "".join(source)
        if isinstance(grade_id, str) and isinstance(source, str):
            answers.setdefault(grade_id, []).append(source)
    if not answers and reference:
        return _answers_by_position(nb["cells"], reference), ""
    return answers, ""


def _answers_by_position(cells: list, reference: Sequence[RefNotebook]) -> Dict[str, List[str]]:
    """The answers of a notebook without nbgrader metadata, where its code cells line up with a reference
    notebook's: the same count, and every cell that is not an answer the same source as handed out."""
    code = []
    for cell in cells:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) and all(isinstance(x, str) for x in source) else source
            code.append(source if isinstance(source, str) else "")
    for ref in reference:
        if not ref.stubs or len(code) != len(ref.code_cells):
            continue
        positions = {i: gid for gid, stub in ref.stubs.items() for i, src in enumerate(ref.code_cells) if src == stub}
        if len(positions) != len(ref.stubs):
            continue  # two answers with the same stub: positions are ambiguous
        if all(i in positions or code[i].strip() == ref.code_cells[i].strip() for i in range(len(code))):
            return {gid: [code[i]] for i, gid in positions.items()}
    return {}


@dataclass
class Assignment:
    """What to grade for one student: reference notebook -> (file, answers or None, why not readable)."""

    graded: Dict[str, Tuple[Path, Optional[Dict[str, List[str]]], str]] = field(default_factory=dict)
    notes: List[Tuple[str, str]] = field(default_factory=list)  # (file name, what is wrong with it)


def _worked_on(answers: Optional[Dict[str, List[str]]], ref: RefNotebook) -> int:
    """How many of ``ref``'s answer cells differ from the handed-out stub (an untouched copy scores 0)."""
    if not answers:
        return -1
    return sum(1 for gid in ref.answer_ids if gid in answers and answers[gid][0].strip() != ref.stubs.get(gid, "").strip())


def match_notebooks(student_dir: Path, reference: Sequence[RefNotebook]) -> Assignment:
    """Pair a student's notebooks with the reference: by file name, else (renamed) by answer grade_ids.

    A reference notebook is graded at most once. When several files are its copies (the file of its name and a
    renamed one), the one with the most answers worked on is graded (an untouched stub beside a renamed answer
    loses), the file of the reference's name on a tie; the others are reported as duplicates, files matching no
    reference notebook as extra; neither is graded."""
    out = Assignment()
    by_name = {nb.name: nb for nb in reference}
    files = sorted(p for p in student_dir.glob("*.ipynb"))
    read = {p.name: read_answers(p, reference) for p in files}
    label = {p.name: _label(p.name) for p in files}
    candidates: Dict[str, List[Path]] = {}
    for p in files:
        answers, problem = read[p.name]
        if p.name in by_name:
            candidates.setdefault(p.name, []).append(p)
            continue
        if answers is None:
            out.notes.append((label[p.name], f"not in the reference and unreadable ({problem}): not graded"))
            continue
        overlap = sorted(((len(set(answers) & set(nb.answer_ids)), nb.name) for nb in reference), reverse=True)
        best, ref_name = overlap[0] if overlap else (0, "")
        if best == 0:
            out.notes.append((label[p.name], "extra notebook: not in the reference, not graded"))
        else:
            candidates.setdefault(ref_name, []).append(p)
    for ref_name, paths in candidates.items():
        ref = by_name[ref_name]
        chosen = max(paths, key=lambda q: (read[q.name][0] is not None, _worked_on(read[q.name][0], ref),
                                           q.name == ref_name))
        out.graded[ref_name] = (chosen, *read[chosen.name])
        for q in paths:
            if q is chosen:
                if q.name != ref_name:
                    why = ("renamed" if len(paths) == 1 else
                           f"renamed; {_label(ref_name)} beside it " + ("cannot be read" if read[ref_name][0] is None
                                                                       else "has fewer answers worked on")
                           if ref_name in read else "renamed")
                    out.notes.append((label[q.name], f"graded as {ref_name} ({why})"))
            else:
                mine, kept = read[q.name][0], read[chosen.name][0]
                if mine is None:
                    what = "cannot be read"
                elif mine == kept:
                    what = "same answer cells"
                elif _worked_on(mine, ref) < _worked_on(kept, ref):
                    what = f"fewer answers worked on than {label[chosen.name]}"
                else:
                    what = f"as many answers worked on; {label[chosen.name]} is graded"
                out.notes.append((label[q.name], f"duplicate of {ref_name} ({what}): not graded"))
    return out


def submission_hash(student_dir: Path) -> str:
    """Changes when any of the student's notebooks changes (resuming regrades that student)."""
    h = hashlib.sha256()
    for p in sorted(student_dir.glob("*.ipynb")):
        h.update(os.fsencode(p.name) + b"\0")
        data, problem = sandbox.read_untrusted(p, MAX_NOTEBOOK_BYTES)
        h.update(hashlib.sha256(data if data is not None else problem.encode()).digest())
    return h.hexdigest()[:16]


# ============================================================================================ judging
def _label(name: str) -> str:
    """A file or folder name as text every output can hold: bytes that are not UTF-8 and control characters as
    \\xNN (one name, one label), so a student folder called b'bad\\xffname' is graded and reported as
    'bad\\xffname', and one whose name holds an escape code paints nothing on the teacher's terminal."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


def _encodable(text: str) -> str:
    """``text`` as a CSV field and a terminal may show it: lone surrogates (no UTF-8 file accepts them) and
    control characters (ANSI/OSC escapes that would paint a fake green line or retitle the window) as '?'."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else "?" for c in text)


def _row(student: str, notebook: str, exercise: str, passed: bool, points: float, max_points: float,
         message: str, flags: str = "") -> dict:
    return dict(student=_encodable(student), notebook=_encodable(notebook), exercise=_encodable(exercise),
                passed=bool(passed), points=float(points), max_points=float(max_points), message=_encodable(message),
                flags=_encodable(flags))


def _strings(x: Any, limit: int = 20) -> List[str]:
    """A list of strings from the child's record (untrusted): anything else dropped, each one line."""
    return [_text(v, 200) for v in x[:limit] if isinstance(v, str)] if isinstance(x, list) else []


def notebook_flags(record: dict) -> List[str]:
    """What the watches of :mod:`.watch` noted for the whole notebook, as lines for the teacher."""
    flags = []
    outside = _strings(record.get("outside"))
    if outside:
        flags.append(f"touched files outside its folder: {', '.join(outside[:3])}"
                     + (f" (+{len(outside) - 3} more)" if len(outside) > 3 else ""))
    replaced = _strings(record.get("replaced"))
    if replaced:
        flags.append(f"replaced code the checks run: {', '.join(replaced[:3])}")
    return flags


def exercise_flags(record: dict, name: str) -> List[str]:
    package = record.get("package") if isinstance(record.get("package"), dict) else {}
    flags = []
    calls = _strings(package.get(name))
    if calls:
        flags.append(f"ran vit_edu's own implementation of this exercise: {', '.join(calls[:3])}")
    if name in _strings(record.get("unwatched"), 100):
        flags.append("switched off the grader's watch (sys.setprofile) during its check")
    return flags


def _text(x: Any, limit: int = 300) -> str:
    """A string that came from the student's process: one line, bounded."""
    return one_line(x if isinstance(x, str) else "", limit)


def _memory_note(text: str, memory_mb: int) -> str:
    if "MemoryError" in text or "can't allocate memory" in text or "not enough memory" in text:
        return f"{text} (memory limit {memory_mb} MB)"
    return text


def judge_notebook(student: str, ref: RefNotebook, answers: Dict[str, List[str]], result: "sandbox.Result",
                   seed: int, limits: sandbox.Limits) -> List[dict]:
    """One row per exercise of ``ref``, decided here from the child's record (which is untrusted data)."""
    record = result.record if isinstance(result.record, dict) else {}
    observed = record.get("exercises") if isinstance(record.get("exercises"), dict) else {}
    missing = record.get("missing") if isinstance(record.get("missing"), dict) else {}
    cells = [c for c in record.get("cells", []) if isinstance(c, dict)] if isinstance(record.get("cells"), list) else []
    cell_errors = {c["label"]: _text(c.get("error")) for c in cells if isinstance(c.get("label"), str) and c.get("error")}
    stopped, running = _text(record.get("stopped")), _text(record.get("running"))
    died = result.outcome.reason or (f"no record of the run ({result.record_problem})" if result.record is None else "")
    common = notebook_flags(record)
    rows = []
    for ex in ref.exercises:
        notes = []
        absent = [g for g in ex.answers if g not in answers]
        notes += [f"answer cell {g} is missing from the notebook" for g in absent]
        notes += [f"{len(answers[g])} cells carry grade_id {g}: the first was used" for g in ex.answers
                  if len(answers.get(g, [])) > 1]
        errors = [f"answer cell {g} raised {_memory_note(cell_errors[f'answer cell {g}'], limits.memory_mb)}"
                  for g in ex.answers if f"answer cell {g}" in cell_errors]
        passed, message = False, ""
        if ex.name in observed:
            try:
                verdict = checks.judge(ex.check, observed[ex.name], seed)
                passed, message = bool(verdict.passed), ("" if verdict.passed else one_line(verdict.message, 500))
            except Exception as err:  # noqa: BLE001 - a bug of the judge must not stop the class
                message = f"grader error while judging: {type(err).__name__}: {one_line(err, 200)}"
            if not passed and errors:
                message += " (" + "; ".join(errors) + ")"
        elif ex.name in missing:
            if errors:
                message = "; ".join(errors)
            elif absent and len(absent) == len(ex.answers):
                message = f"{ex.expr} is not defined (no answer cell to run)"
            elif stopped:
                message = f"not reached: {stopped}"
            else:
                message = _memory_note(f"{ex.expr}: {_text(missing[ex.name])}", limits.memory_mb)
        elif died:
            where = f" (during {running})" if running else ""
            message = f"not graded: {died}{where}"
        else:
            message = "not graded: the notebook's process ended before this check"
        message = "; ".join([m for m in [message] + notes if m])
        flags = "; ".join(common + exercise_flags(record, ex.name))
        rows.append(_row(student, ref.name, ex.name, passed, ex.points if passed else 0.0, ex.points, message, flags))
    return rows


def _failed_rows(student: str, ref: RefNotebook, message: str) -> List[dict]:
    return [_row(student, ref.name, ex.name, False, 0.0, ex.points, message) for ex in ref.exercises]


def job_steps(ref: RefNotebook, answers: Dict[str, List[str]]) -> List[dict]:
    """The reference's steps with the student's answer sources (the first cell of each grade_id)."""
    steps = []
    for step in ref.steps:
        if step["kind"] == "answer":
            sources = answers.get(step["grade_id"])
            if sources:
                steps.append({"kind": "answer", "source": sources[0], "label": step["label"]})
        else:
            steps.append(step)
    return steps


# ============================================================================================ files
def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    def write(f) -> None:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)

    atomic_write(path, write, "w", encoding="utf-8", newline="")


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: json.dump(data, f, indent=1, sort_keys=True), "w", encoding="utf-8")


def _cell_text(text: str) -> str:
    """A CSV field a spreadsheet will not read as a formula (a student names the files and writes the errors):
    a leading ' is added before = + - @ tab CR, and before ' itself, so :func:`_cell_value` can take it off."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r", "'") else text


def _cell_value(text: str) -> str:
    """Undo :func:`_cell_text`: the name or message as it was (a student '-ann' is '-ann' again, not 0 points)."""
    return text[1:] if text[:1] == "'" else text


def _csv_rows(rows: Sequence[dict]) -> List[List[object]]:
    return [[_cell_text(r["student"]), _cell_text(r["notebook"]), _cell_text(r["exercise"]), int(r["passed"]),
             f"{r['points']:g}", f"{r['max_points']:g}", _cell_text(r["message"]), _cell_text(r["flags"])] for r in rows]


def read_student_csv(path: Path) -> List[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [_row(_cell_value(r["student"]), _cell_value(r["notebook"]), _cell_value(r["exercise"]),
                     r["passed"] == "1", float(r["points"]), float(r["max_points"]), _cell_value(r["message"]),
                     _cell_value(r.get("flags") or ""))
                for r in csv.DictReader(f)]


def summary_path(out_csv: "str | Path") -> Path:
    out = Path(out_csv)
    return out.with_name(f"{out.stem}_summary{out.suffix or '.csv'}")


def students_dir(out_csv: "str | Path") -> Path:
    """Where each student's CSV goes as soon as that student is done: ``grades/`` for ``grades.csv``."""
    out = Path(out_csv)
    return out.with_name(out.stem)


def summarize(rows: Sequence[dict], students: Sequence[str], reference: Sequence[RefNotebook]
              ) -> Dict[str, Tuple[List[Optional[float]], float, float, List[str]]]:
    """{student: ([points per reference exercise, None if not graded], total, maximum, notes)}.

    The columns and the maximum are the reference's; rows of notebooks outside it (extra, duplicate) only
    add notes."""
    columns = [(nb.name, ex.name) for nb in reference for ex in nb.exercises]
    full = sum(ex.points for nb in reference for ex in nb.exercises)
    out = {}
    for s in students:
        mine = {(r["notebook"], r["exercise"]): r for r in rows if r["student"] == s}
        vals = [mine[c]["points"] if c in mine else None for c in columns]
        notes = [f"{r['notebook']}: {r['message']}" for r in rows if r["student"] == s and r["exercise"] == "(notebook)"]
        out[s] = (vals, sum(v for v in vals if v), full, notes)
    return out


def flags_of(rows: Sequence[dict], student: str) -> List[str]:
    """The distinct flags of one student's rows, as 'notebook: flag' (the summary's flags column)."""
    seen: Dict[str, None] = {}
    for r in rows:
        if r["student"] == student and r.get("flags"):
            for flag in r["flags"].split("; "):
                seen[f"{r['notebook']}: {flag}"] = None
    return list(seen)


def _write_combined(out: Path, students: Sequence[str], reference: Sequence[RefNotebook]) -> List[dict]:
    folder = students_dir(out)
    rows: List[dict] = []
    done = []
    for s in students:
        path = folder / f"{s}.csv"
        if path.exists():
            rows += read_student_csv(path)
            done.append(s)
    write_results(out, rows, done, reference)
    return rows


def write_results(out: Path, rows: Sequence[dict], done: Sequence[str], reference: Sequence[RefNotebook]) -> None:
    """``out`` (one row per exercise) and its summary (one row per student of ``done``), each atomically."""
    _write_csv(out, COLUMNS, _csv_rows(rows))
    header = ["student"] + [f"{nb.name}:{ex.name}" for nb in reference for ex in nb.exercises] + ["total", "max", "notes", "flags"]
    table = summarize(rows, done, reference)
    _write_csv(summary_path(out), header,
               [[_cell_text(s)] + ["" if v is None else f"{v:g}" for v in vals]
                + [f"{tot:g}", f"{mx:g}", _cell_text(" | ".join(notes)), _cell_text(" | ".join(flags_of(rows, s)))]
                for s, (vals, tot, mx, notes) in table.items()])


def _printable(text: str, limit: int = 24) -> str:
    """A folder name as the terminal may show it: control and escape characters as '?', at most ``limit`` wide."""
    clean = _encodable(text)
    return clean if len(clean) <= limit else clean[:limit - 1] + "…"


def format_table(rows: Sequence[dict], students: Sequence[str], reference: Sequence[RefNotebook],
                 detail: bool = False) -> str:
    """Points per notebook and total/max for each student (fits a terminal: 10 notebooks in under 100 columns);
    ``detail``: one ✓ / ✗ column per exercise instead (· where nothing was graded). The CSVs hold both."""
    table = summarize(rows, students, reference)
    shown = {s: _printable(s) for s in students}
    width = max([len("student")] + [len(v) for v in shown.values()])
    if detail:
        names = [ex.name for nb in reference for ex in nb.exercises]
        passed = {(r["student"], r["notebook"], r["exercise"]): r["passed"] for r in rows}
        keys = [(nb.name, ex.name) for nb in reference for ex in nb.exercises]
        head = "student".ljust(width) + "  " + "  ".join(names) + "  total"
        lines = [head, "-" * len(head)]
        for s in students:
            _, total, full, _ = table[s]
            marks = ["·" if (s, *k) not in passed else ("✓" if passed[(s, *k)] else "✗") for k in keys]
            cells = "  ".join(m.center(len(n)) for m, n in zip(marks, names))
            lines.append(f"{shown[s].ljust(width)}  {cells}  {total:g}/{full:g}{_flag_mark(rows, s)}")
        return "\n".join(lines + _flag_note(rows, students))
    books = [nb for nb in reference if nb.exercises]
    labels = [nb.name.split("_", 1)[0][:5] for nb in books]  # "01_patch_embedding" -> "01"
    offset = {nb.name: sum(len(b.exercises) for b in reference[:i]) for i, nb in enumerate(reference)}
    cells_of = {}
    for s in students:
        vals, total, full, _ = table[s]
        cells = []
        for nb in books:
            mine = vals[offset[nb.name]:offset[nb.name] + len(nb.exercises)]
            got, most = sum(v for v in mine if v), sum(ex.points for ex in nb.exercises)
            cells.append("·" if all(v is None for v in mine) else f"{got:g}/{most:g}")
        cells_of[s] = (cells, f"{total:g}/{full:g}")
    col = [max([len(label)] + [len(cells_of[s][0][i]) for s in students]) for i, label in enumerate(labels)]
    head = "student".ljust(width) + "  " + " ".join(l.rjust(w) for l, w in zip(labels, col)) + "  total"
    lines = [head, "-" * len(head)]
    for s in students:
        cells, total = cells_of[s]
        lines.append(f"{shown[s].ljust(width)}  " + " ".join(c.rjust(w) for c, w in zip(cells, col)) + f"  {total}"
                     + _flag_mark(rows, s))
    lines.append("(points per notebook; --detail shows every exercise, the CSVs hold each one with its message)")
    return "\n".join(lines + _flag_note(rows, students))


def _flag_mark(rows: Sequence[dict], student: str) -> str:
    return "  !" if any(r["student"] == student and r.get("flags") for r in rows) else ""


def _flag_note(rows: Sequence[dict], students: Sequence[str]) -> List[str]:
    flagged = [s for s in students if _flag_mark(rows, s)]
    if not flagged:
        return []
    return [f"! {len(flagged)} student(s) flagged for you to look at (files outside their folder, vit_edu's own "
            f"implementation, replaced checks): the flags column of the CSVs says what"]


# ============================================================================================ grading
def _unreadable_by_others(paths: Sequence[Path]) -> List[str]:
    """Folders a sandbox user (no shared group, not the owner) cannot read: imports from there fail."""
    bad = []
    for path in paths:
        p = path.resolve()
        for folder in [p, *p.parents]:
            mode = os.stat(folder).st_mode
            need = stat.S_IXOTH | (stat.S_IROTH if folder == p else 0)
            if mode & need != need:
                bad.append(str(path))
                break
    return bad


def _environment_warnings(submissions: Path) -> List[str]:
    if not sandbox.privileged():
        return ["warning: not running as root, so student code runs with your user's rights (it could stop the "
                "grader or change your files); grade untrusted submissions as root in a container"]
    warnings = []
    import torch

    package = Path(__file__).resolve().parents[1]  # vit_edu/
    places = [Path(sysconfig.get_paths()["stdlib"]), Path(torch.__file__).parent, package]
    bad = _unreadable_by_others(places)
    if bad:
        warnings.append(f"note: {', '.join(bad)} cannot be read by other users, so student code can import only the "
                        f"modules the grader preloads (torch, numpy, einops, vit_edu, the setup cells' imports and "
                        f"common standard modules)")
    if os.stat(submissions).st_mode & (stat.S_IROTH | stat.S_IXOTH):
        warnings.append(f"note: other users can read {submissions}; `chmod 700 {submissions}` keeps one student's "
                        f"code from reading another's notebooks while it runs")
    return warnings


def _default_jobs() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def grade(submissions_dir: "str | Path", out_csv: "str | Path" = "grades.csv", timeout: float = 60,
          reference_dir: "str | Path | None" = None, cell_timeout: Optional[float] = None, verbose: bool = True,
          jobs: Optional[int] = None, memory_mb: int = 2048, max_output_kb: int = 256, seed: Optional[int] = None,
          force: bool = False, detail: bool = False, shard: Optional[Tuple[int, int]] = None,
          disk_mb: int = 256) -> List[dict]:
    """Grade every ``<student>/*.ipynb`` under ``submissions_dir`` against the reference; returns the rows of
    ``out_csv`` (student, notebook, exercise, passed, points, max_points, message).

    ``reference_dir``: the handed-out notebooks with nbgrader metadata (default ``assignments/student``).
    ``timeout``: wall-clock seconds per notebook (the child is killed); ``cell_timeout``: a soft limit per
    cell and per check (an exception in the student's code). ``memory_mb``: memory the student's code may
    allocate per notebook; ``max_output_kb``: printed output kept per notebook; ``disk_mb``: what it may write
    into its folder (where it has a file system of its own). ``seed``: the probes' seed
    (random, printed, when None). ``jobs``: notebooks run at the same time (default: the CPU cores, at most 8).
    ``shard``: (i, n) grades only the students of part i of n (:func:`.shards.shard_of`, stable by name), for
    a batch scheduler; :func:`merge_shards` joins the parts' CSVs.
    Refused up front (one-line error): bad submissions layout, bad reference, unwritable output.
    """
    root = Path(submissions_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"submissions folder not found: {root}")
    if not sys.platform.startswith("linux"):
        raise ValueError(f"the grader needs Linux (sandboxed processes with Linux resource limits), this is "
                         f"{sys.platform}; run it in a Linux container")
    jobs = _default_jobs() if jobs is None else jobs
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if cell_timeout is not None and not (math.isfinite(cell_timeout) and cell_timeout > 0):
        raise ValueError(f"cell_timeout must be a positive number of seconds, got {cell_timeout!r}")
    if not (isinstance(memory_mb, int) and memory_mb >= 64):
        raise ValueError(f"memory_mb must be an int >= 64, got {memory_mb!r}")
    if not (isinstance(disk_mb, int) and not isinstance(disk_mb, bool) and disk_mb >= 1):
        raise ValueError(f"disk_mb must be an int >= 1, got {disk_mb!r}")
    if not (isinstance(max_output_kb, int) and max_output_kb >= 0):
        raise ValueError(f"max_output_kb must be an int >= 0, got {max_output_kb!r}")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**63):
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    if shard is not None:
        shards.check_shard(shard)
    reference_folder = _reference_path(reference_dir)
    reference = load_reference(reference_folder)
    if verbose:
        n_ex = sum(len(nb.exercises) for nb in reference)
        points = sum(ex.points for nb in reference for ex in nb.exercises)
        print(f"reference: {reference_folder.resolve()} ({len(reference)} notebooks, {n_ex} exercises, "
              f"{points:g} points)", flush=True)
    out = Path(out_csv)
    check_writable_file(out, "grades file (--out)")  # now, not after grading everybody
    check_writable_file(summary_path(out), "summary file")
    folder = students_dir(out)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"per-student grades folder {folder} is a file; expected a folder (it is named "
                                 f"after --out)")
    links = sorted(_label(p.name) for p in root.iterdir() if p.is_symlink())
    if links:  # a link to notebooks/ or to another student's folder is nobody's own work
        print(f"warning: not following {len(links)} symbolic link(s) in {root}: {', '.join(links[:3])}"
              f"{', ...' if len(links) > 3 else ''}; a student's folder must be a real folder", file=sys.stderr)
    students = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    if shard is not None:
        everyone = len(students)
        students = [p for p in students if shards.shard_of(_label(p.name), shard[1]) == shard[0]]
        if verbose:
            print(f"shard {shard[0]}/{shard[1]}: {len(students)} of the {everyone} students", flush=True)
    loose = sorted(p.name for p in root.glob("*.ipynb"))
    with_notebooks = [s for s in students if any(s.glob("*.ipynb"))]
    if loose and not with_notebooks:
        raise ValueError(f"{root} holds notebooks directly ({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}) "
                         f"but no student folders with notebooks; expected one folder per student: "
                         f"{root}/<student>/*.ipynb")
    if students and not with_notebooks:
        raise ValueError(f"none of the {len(students)} student folders in {root} holds a notebook; expected "
                         f"{root}/<student>/*.ipynb (notebooks in deeper folders are not looked at)")
    state_path = folder / STATE_FILE
    state = _load_state(state_path)
    fp = fingerprint(reference)
    if state.get("reference") not in (None, fp) and not force:
        raise ValueError(f"{folder} holds grades made against another reference (its exercises, points or setup "
                         f"cells changed); use --force to regrade everybody, or another --out")
    if state.get("grader_pid") not in (None, os.getpid()) and state.get("running") and \
            _pid_alive(int(state["grader_pid"])):
        raise ValueError(f"another grading into {folder} is running (pid {state['grader_pid']}); wait for it or "
                         f"use another --out")
    if loose:
        print(f"warning: ignoring {len(loose)} notebook(s) directly in {root}: only {root}/<student>/*.ipynb "
              f"are graded", file=sys.stderr)
    if force:
        state = {}
    suspects: Dict[str, int] = {k: int(v) for k, v in (state.get("suspects") or {}).items()}
    crashed = list(state.get("running") or [])
    for s in crashed:  # the grader was killed while these ran
        suspects[s] = suspects.get(s, 0) + (2 if len(crashed) == 1 else 1)
    if shard is not None and state.get("shard") not in (None, list(shard)) and not force:
        raise ValueError(f"{folder} holds the grades of shard {state['shard'][0]}/{state['shard'][1]}, not "
                         f"{shard[0]}/{shard[1]}; use another --out per shard")
    state.update(reference=fp, running=[], grader_pid=os.getpid(), suspects=suspects,
                 shard=list(shard) if shard is not None else None)
    state.setdefault("students", {})
    names = [_label(s.name) for s in students]
    seed = secrets.randbelow(2**31) if seed is None else seed

    todo: List[Path] = []
    hashes = {_label(s.name): submission_hash(s) for s in students}
    for s in students:
        done = (folder / f"{_label(s.name)}.csv").exists() and state["students"].get(_label(s.name), {}).get("files") == hashes[_label(s.name)]
        if done and not force:
            continue
        if suspects.get(_label(s.name), 0) >= 2:
            message = ("not graded: the grader itself was killed while this student's notebooks ran; delete "
                       f"{folder / (_label(s.name) + '.csv')} to try again")
            rows = [r for nb in reference for r in _failed_rows(_label(s.name), nb, message)]
            _write_csv(folder / f"{_label(s.name)}.csv", COLUMNS, _csv_rows(rows))
            state["students"][_label(s.name)] = {"seed": seed, "files": hashes[_label(s.name)], "marked": True}
            suspects.pop(_label(s.name))
            print(f"warning: {_printable(_label(s.name), 80)}: {message}", file=sys.stderr)
            continue
        todo.append(s)
    todo.sort(key=lambda s: (suspects.get(_label(s.name), 0) == 0, _label(s.name)))  # suspects first, each alone
    _write_json(state_path, state)
    if not todo:
        rows = _write_combined(out, names, reference)
        if verbose:
            print(format_table(rows, names, reference, detail))
            print(f"nothing left to grade (--force regrades everybody); wrote {out} and {summary_path(out)}")
        return rows
    for warning in _environment_warnings(root):
        print(warning, file=sys.stderr)
    if verbose:
        print(f"grading {len(todo)} student(s) with seed {seed} (--seed {seed} repeats these checks)", flush=True)
    limits = sandbox.Limits(timeout_s=float(timeout), cell_timeout_s=cell_timeout, memory_mb=memory_mb,
                            max_output_bytes=max_output_kb * 1024, disk_mb=disk_mb)
    preload = [m for nb in reference for m in nb.imports]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the judge's tensors are small; the cores go to the children
    package_parent = Path(__file__).resolve().parents[2]
    hide = [root, reference_folder, out.resolve().parent, folder, Path.cwd()]
    if (package_parent / "pyproject.toml").is_file():  # a source checkout: teacher notebooks, tests, .git
        hide.append(package_parent)
    box = sandbox.Sandbox(limits, slots=jobs, preload=preload, hide=hide)
    if verbose:
        print(f"sandbox: each notebook runs with a {box.isolation}", flush=True)
    try:
        _grade_all(box, todo, reference, folder, state, state_path, seed, limits, suspects, out, names, verbose)
    finally:
        box.close()
        torch.set_num_threads(threads)
        state["running"] = []  # an interruption (Ctrl-C, an error here) is nobody's fault
        _write_json(state_path, state)
    rows = _write_combined(out, names, reference)
    if verbose:
        print(format_table(rows, names, reference, detail))
        print(f"wrote {out}, {summary_path(out)} and {folder}/<student>.csv")
    return rows


def _reference_path(reference_dir: "str | Path | None") -> Path:
    if reference_dir is not None:
        return Path(reference_dir)
    here = Path(DEFAULT_REFERENCE)
    if here.is_dir():
        return here
    repo = Path(__file__).resolve().parents[2] / DEFAULT_REFERENCE  # vit_edu/classroom/grading.py -> repository
    return repo if repo.is_dir() else here


def _load_state(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


@dataclass
class _Task:
    student: str
    student_dir: Path
    ref: RefNotebook
    answers: Dict[str, List[str]]
    retried: bool = False
    alone: bool = False  # run with nothing else running (a suspect, or a retry after a server death)


def _prepare(s: Path, student: str, reference: Sequence[RefNotebook], alone: bool) -> Tuple[List[dict], List["_Task"]]:
    """(rows already decided, notebooks to run) for one student's folder."""
    match = match_notebooks(s, reference)
    rows: List[dict] = [_row(student, file, "(notebook)", False, 0.0, 0.0, note) for file, note in match.notes]
    tasks: List[_Task] = []
    for ref in reference:
        if not ref.exercises:
            continue
        if ref.name not in match.graded:
            rows += _failed_rows(student, ref, "notebook missing from the submission")
            continue
        path, answers, problem = match.graded[ref.name]
        if answers is None:
            rows += _failed_rows(student, ref, f"could not read {_label(path.name)}: {problem}")
        elif not any(g in answers for g in ref.answer_ids):
            rows += _failed_rows(student, ref, f"{_label(path.name)} holds none of the answer cells (grade_ids "
                                               f"{', '.join(ref.answer_ids)})")
        else:
            tasks.append(_Task(student, s, ref, answers, alone=alone))
    return rows, tasks


def _grader_failed(student: str, reference: Sequence[RefNotebook], what: str, err: BaseException,
                   only: Optional[RefNotebook] = None) -> List[dict]:
    """Rows for a submission (or one notebook of it) the grader itself failed on: 0 points, the reason said,
    so the teacher sees it and the rest of the class is graded."""
    message = f"not graded: the grader {what} ({type(err).__name__}: {one_line(str(err), 200)}); please report it"
    return [r for nb in ([only] if only is not None else reference) for r in _failed_rows(student, nb, message)]


def _grade_all(box: sandbox.Sandbox, todo: Sequence[Path], reference: Sequence[RefNotebook], folder: Path,
               state: dict, state_path: Path, seed: int, limits: sandbox.Limits, suspects: Dict[str, int],
               out: Path, names: Sequence[str], verbose: bool) -> None:
    """Run every notebook of ``todo`` in the sandbox, judge, and write each student's CSV when complete."""
    rows_of: Dict[str, List[dict]] = {}
    left: Dict[str, int] = {}
    queue: List[_Task] = []
    for s in todo:
        student = _label(s.name)
        try:
            rows, tasks = _prepare(s, student, reference, suspects.get(student, 0) > 0)
        except Exception as err:  # noqa: BLE001 - one submission the grader cannot read must not stop the class
            rows, tasks = _grader_failed(student, reference, "could not read this submission", err), []
        queue += tasks
        rows_of[student] = rows
        left[student] = len(tasks)
    running: Dict[str, _Task] = {}
    students_running: Dict[str, int] = {}
    counter = 0

    def save_state() -> None:
        state["running"] = sorted(students_running)
        state["suspects"] = suspects
        _write_json(state_path, state)

    order = {(nb.name, ex.name): i for i, (nb, ex) in enumerate((nb, ex) for nb in reference for ex in nb.exercises)}

    def finish_student(student: str) -> None:
        rows = sorted(rows_of.pop(student), key=lambda r: order.get((r["notebook"], r["exercise"]), len(order)))
        _write_csv(folder / f"{student}.csv", COLUMNS, _csv_rows(rows))
        state["students"][student] = {"seed": seed, "files": submission_hash(Path(
            next(s for s in todo if _label(s.name) == student)))}
        suspects.pop(student, None)
        save_state()
        _write_combined(out, names, reference)
        if verbose:
            got = sum(r["points"] for r in rows)
            full = sum(ex.points for nb in reference for ex in nb.exercises)
            print(f"{_printable(student, 80)}: {got:g}/{full:g} (wrote {_printable(str(folder / (student + '.csv')), 200)})",
                  flush=True)

    for s in todo:  # students with nothing to run (no readable notebook) are done now
        if left[_label(s.name)] == 0:
            finish_student(_label(s.name))
    while queue or running:
        started = False
        while queue and box.free():
            task = queue[0]
            if (task.alone and running) or any(t.alone for t in running.values()):
                break
            queue.pop(0)
            counter += 1
            key = f"{counter}"
            running[key] = task
            if task.student not in students_running:
                students_running[task.student] = 0
                save_state()
            students_running[task.student] += 1
            try:
                box.start(key, task.student_dir, job_steps(task.ref, task.answers), seed)
            except sandbox.SandboxError:
                raise  # the sandbox itself is broken: nobody can be graded
            except Exception as err:  # noqa: BLE001 - e.g. a path too long for the scratch copy
                running.pop(key)
                students_running[task.student] -= 1
                rows_of[task.student] += _grader_failed(task.student, reference, "could not start this notebook",
                                                        err, task.ref)
                left[task.student] -= 1
                if left[task.student] == 0:
                    del students_running[task.student]
                    finish_student(task.student)
                continue
            started = True
        for result in box.wait(0.0 if started else 0.05):
            task = running.pop(result.key)
            students_running[task.student] -= 1
            if result.server_died and not task.retried:
                task.retried, task.alone = True, True  # alone: if it kills the server again, it is the one
                queue.insert(0, task)
                if verbose:
                    print(f"{_printable(task.student, 80)}/{task.ref.name}: the sandbox server died; running it again alone",
                          flush=True)
                continue
            try:
                rows = judge_notebook(task.student, task.ref, task.answers, result, seed, limits)
            except Exception as err:  # noqa: BLE001 - a record the judge cannot handle costs that notebook only
                rows = _grader_failed(task.student, reference, "could not judge this notebook", err, task.ref)
            rows_of[task.student] += rows
            if verbose:
                got = sum(r["points"] for r in rows)
                full = sum(r["max_points"] for r in rows)
                print(f"graded {_printable(task.student, 80)}/{task.ref.name}: {got:g}/{full:g} in {result.outcome.wall_s:.1f} s"
                      + (f" ({_encodable(result.outcome.reason)})" if result.outcome.reason else ""), flush=True)
            left[task.student] -= 1
            if left[task.student] == 0:
                del students_running[task.student]
                finish_student(task.student)


# ============================================================================================ shards
def merge_shards(parts: Sequence["str | Path"], out: "str | Path" = "grades.csv",
          reference_dir: "str | Path | None" = None, verbose: bool = True, detail: bool = False) -> List[dict]:
    """Join the CSVs of ``grade --shard i/n --out PART`` into ``out`` and its summary (the same files one
    machine would have written). Refused, before writing, unless the parts are shards 1..n of one split,
    each complete (nothing still running), graded against the same reference as ``reference_dir``."""
    summaries = {summary_path(p).resolve() for p in map(Path, parts)}
    parts = [p for p in parts if Path(p).resolve() not in summaries]  # grades_*.csv matches the summaries too
    if not parts:
        raise ValueError("--merge needs the grades CSV of every shard (e.g. grades_*.csv)")
    reference_folder = _reference_path(reference_dir)
    reference = load_reference(reference_folder)
    fp = fingerprint(reference)
    seen: Dict[int, Path] = {}
    total: Optional[int] = None
    rows: List[dict] = []
    owner: Dict[str, Path] = {}
    out_path = Path(out).resolve()
    for part in map(Path, parts):
        if part.resolve() == out_path:
            raise ValueError(f"--out {out} is one of the parts; write the merged grades elsewhere")
        if not part.is_file():
            raise FileNotFoundError(f"part not found: {part} (expected the --out CSV of one shard)")
        state = _load_state(students_dir(part) / STATE_FILE)
        shard = state.get("shard")
        if not (isinstance(shard, list) and len(shard) == 2 and all(isinstance(v, int) for v in shard)):
            raise ValueError(f"{part} was not graded with --shard i/n (no shard in "
                             f"{students_dir(part) / STATE_FILE})")
        i, n = shard
        if state.get("reference") != fp:
            raise ValueError(f"{part} was graded against another reference than {reference_folder} (its exercises, "
                             f"points or setup cells differ); pass the shards' --reference")
        if state.get("running"):
            raise ValueError(f"{part}: shard {i}/{n} has not finished (students still marked running); rerun it")
        if total is not None and n != total:
            raise ValueError(f"{part} is shard {i}/{n} but an earlier part is of /{total}: the parts come from "
                             f"different splits")
        total = n
        if i in seen:
            raise ValueError(f"shard {i}/{n} given twice: {seen[i]} and {part}")
        seen[i] = part
        with open(part, newline="", encoding="utf-8") as f:
            header = f.readline().strip().split(",")
        if header[: len(COLUMNS) - 1] != COLUMNS[:-1]:
            raise ValueError(f"{part} is not a grades CSV (its header is {','.join(header)[:120]!r})")
        for row in read_student_csv(part):
            if owner.setdefault(row["student"], part) != part:
                raise ValueError(f"student {row['student']!r} is in {owner[row['student']]} and {part}")
            rows.append(row)
    assert total is not None
    missing = sorted(set(range(1, total + 1)) - set(seen))
    if missing:
        raise ValueError(f"shard(s) {', '.join(f'{i}/{total}' for i in missing)} missing: give every part's CSV")
    students = sorted(owner)
    order = {(nb.name, ex.name): k for k, (nb, ex) in enumerate((nb, ex) for nb in reference for ex in nb.exercises)}
    rows.sort(key=lambda r: (r["student"], order.get((r["notebook"], r["exercise"]), len(order))))
    check_writable_file(Path(out), "grades file (--out)")
    write_results(Path(out), rows, students, reference)
    if verbose:
        print(format_table(rows, students, reference, detail))
        print(f"merged {total} shards ({len(students)} students) into {out} and {summary_path(out)}")
    return rows


# ============================================================================================ command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vit_edu grade SUBMISSIONS_DIR [options]``; exit 2 with a one-line error on bad input."""
    parser = OneLineParser(
        prog="python -m vit_edu grade",
        description="Grade submissions/<student>/*.ipynb against the reference notebooks: each notebook's answer "
                    "cells run in a sandboxed process, the checks' verdicts are made outside it.")
    parser.add_argument("submissions", nargs="?", help="folder with one sub-folder of notebooks per student")
    parser.add_argument("--out", default="grades.csv",
                        help="per-exercise CSV (default: grades.csv); totals go to grades_summary.csv and each "
                             "student's rows to grades/<student>.csv as soon as that student is done")
    parser.add_argument("--reference", default=None,
                        help=f"the handed-out notebooks with nbgrader metadata, which define the exercises and "
                             f"points (default: {DEFAULT_REFERENCE})")
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks graded at the same time (default: the CPU cores, at most 8)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per notebook (default: 60)")
    parser.add_argument("--cell-timeout", type=float, default=None,
                        help="seconds per answer cell and per check, an error in that cell (default: none)")
    parser.add_argument("--memory-mb", type=int, default=2048,
                        help="memory the student's code may allocate per notebook, in MB (default: 2048)")
    parser.add_argument("--disk-mb", type=int, default=256,
                        help="what the student's code may write into its folder per notebook, in MB (default: 256)")
    parser.add_argument("--max-output-kb", type=int, default=256,
                        help="printed output kept per notebook, in KB (default: 256)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the checks' random cases (default: a new one, printed)")
    parser.add_argument("--force", action="store_true",
                        help="regrade everybody (default: resume, skipping students already graded)")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="grade only part I of N of the students (stable by name; one part per machine of a "
                             "batch job, each with its own --out), then join the parts with --merge")
    parser.add_argument("--merge", nargs="+", default=None, metavar="PART_CSV",
                        help="join the --out CSVs of every shard into --out (no grading); instead of SUBMISSIONS")
    parser.add_argument("--detail", action="store_true",
                        help="print one column per exercise (default: points per notebook, under 100 columns)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    problems = []
    shard = None
    if args.merge is not None:
        if args.submissions is not None or args.shard is not None:
            problems.append("--merge joins finished shards: give it the parts' CSVs, without SUBMISSIONS or --shard")
    elif args.submissions is None:
        problems.append("the submissions folder is missing (python -m vit_edu grade SUBMISSIONS_DIR ...)")
    elif not Path(args.submissions).is_dir():
        problems.append(f"submissions folder not found: {args.submissions}")
    if args.jobs is not None and args.jobs < 1:
        problems.append(f"--jobs must be at least 1, got {args.jobs}")
    for flag, value in (("--timeout", args.timeout), ("--cell-timeout", args.cell_timeout)):
        if value is not None and not (math.isfinite(value) and value > 0):
            problems.append(f"{flag} must be a positive number of seconds, got {value:g}")
    if args.memory_mb < 64:
        problems.append(f"--memory-mb must be at least 64, got {args.memory_mb}")
    if args.disk_mb < 1:
        problems.append(f"--disk-mb must be at least 1, got {args.disk_mb}")
    if args.max_output_kb < 0:
        problems.append(f"--max-output-kb must be at least 0, got {args.max_output_kb}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        problems.append(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.shard is not None:
        try:
            shard = shards.parse_shard(args.shard)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return 2
    try:
        if args.merge is not None:
            merge_shards(args.merge, args.out, args.reference, detail=args.detail)
        else:
            grade(args.submissions, args.out, args.timeout, args.reference, args.cell_timeout, jobs=args.jobs,
                  memory_mb=args.memory_mb, max_output_kb=args.max_output_kb, seed=args.seed, force=args.force,
                  detail=args.detail, shard=shard, disk_mb=args.disk_mb)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError,
            sandbox.SandboxError) as err:
        if os.environ.get("VIT_EDU_DEBUG"):
            raise
        print(f"error: {one_line(err, 500)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
