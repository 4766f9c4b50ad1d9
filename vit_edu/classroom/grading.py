"""Grade filled-in student notebooks; the verdict is made in the grader, from a record the sandboxed child writes.

    python -m vit_edu grade SUBMISSIONS_DIR [--out grades.csv] [--reference assignments/student] [--jobs N]
        [--timeout 60] [--cell-timeout S] [--memory-mb 2048] [--disk-mb 256] [--max-output-kb 256] [--seed N]
        [--force] [--detail] [--shard I/N]
    python -m vit_edu grade --merge PART_CSV... [--out grades.csv] [--reference ...]

Layout: one folder per student, holding that student's notebooks::

    submissions/
        alice/01_patch_embedding.ipynb  03_multi_head_attention.ipynb ...
        bob/01_patch_embedding.ipynb ...

or a Canvas bulk download, every file loose in the one folder and named
``<lastfirst>[_LATE]_<userid>_<submissionid>_<file>``: each student is then ``<lastfirst>_<userid>``, graded on a
private copy of their files (:func:`.reference.lms_download`).

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
data (``torch.load(weights_only=True)``) and decides (:func:`vit_edu.checks.judge`). The record is written in
the process the student's code runs in, so a student who reads this code can forge it; a record that does not
fit its run is flagged (:func:`record_inconsistencies`), a careful forgery is not. A child that crashes,
runs out of time or memory, or prints without end fails only its own notebook's remaining exercises, with
the reason. No IPython kernel is involved (IPython hooks, input transformers and magics do nothing).

Notebooks are matched to the reference by file name; a renamed notebook is recognised by its answer cells'
grade_ids and graded once; duplicates and extra notebooks are reported, never graded, never counted.

Results: ``grades/<student>.csv`` as soon as that student is done (next to ``--out``), then ``grades.csv``
(one row per exercise) and ``grades_summary.csv`` (one row per student, total and maximum). Running the
same command again resumes: students already graded (same reference, same notebooks) are skipped unless
``--force``; going on with grades made with other settings (limits, --seed, another version of the checks) is
refused. A student whose notebooks were running when the grader itself was killed is retried alone, and
marked and skipped if it happens again. Exit code 0 even when students fail.

This module schedules and judges; what is graded is read by :mod:`.reference`, the rows and files are
:mod:`.report`'s.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import secrets
import stat
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import checks
from .._startup import OneLineParser
from ..fileio import _pid_alive
from . import sandbox, shards
from .reference import (ARCHIVES, DEFAULT_REFERENCE, RefNotebook, _label, _reference_path, checks_fingerprint,
                        fingerprint, job_steps, lms_download, load_reference, match_notebooks, nested_students,
                        no_submission, notebook_files, stage_lms_download, submission_hash)
from .report import (COLUMNS, STATE_FILE, _csv_rows, _encodable, _load_state, _printable, _row, _text,
                     _write_combined, _write_csv, _write_json, check_outputs, exercise_flags, format_table,
                     notebook_flags, read_student_csv, student_csv, student_labels, students_dir, summary_path)
from .shards import merge_shards
from .isolation import needed_paths
from .tripwires import record_inconsistencies
from .sandbox import one_line

# ============================================================================================ judging
def _memory_note(text: str, memory_mb: int) -> str:
    if "MemoryError" in text or "can't allocate memory" in text or "not enough memory" in text:
        return f"{text} (memory limit {memory_mb} MB)"
    return text


def _unreadable_module_notes(message: str) -> List[str]:
    """What to do about a module a message says was not found in the sandbox though the grader finds it (looked
    up only where the parent package is imported already: that imports nothing): one outside Python's folders
    (an editable install, a PYTHONPATH folder) is covered in a notebook's view; one inside is unreadable."""
    for name in re.findall(r"No module named '([\w.]+)'", message):
        try:
            spec = importlib.util.find_spec(name) if name.rpartition(".")[0] in ("", *sys.modules) else None
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        where = os.path.realpath(spec.origin or next(iter(spec.submodule_search_locations or [""]), ""))
        if where and not any(where == p or where.startswith(p + os.sep) for p in needed_paths()):
            return [f"{name} is installed here in {os.path.dirname(where)}, outside Python's folders, which a notebook "
                    f"does not see: install it into Python's site-packages (pip install, without -e) and grade again"]
        return [f"{name} is installed here but the sandbox user cannot read it: let other users read it (chmod -R "
                f"o+rX on Python's folders) and grade again"]
    return []


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
    odd = record_inconsistencies(result.record, getattr(result, "previous", None), job_steps(ref, answers))
    if odd:
        common.append(f"the record does not fit the run ({'; '.join(odd[:3])}): it may have been edited from the "
                      f"answer cells, read them")
    rows = []
    for ex in ref.exercises:
        notes = []
        absent = [g for g in ex.answers if g not in answers]
        notes += [f"answer cell {g} is missing from the notebook" for g in absent]
        notes += [f"{len(answers[g])} cells carry grade_id {g}: all ran, in notebook order (the last definition "
                  f"wins)" for g in ex.answers if len(answers.get(g, [])) > 1]
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
        else:  # also a process that ended by itself (os._exit(0) in an answer cell): where it was
            where = f" (during {running})" if running else ""
            message = "not graded: " + (died or "the notebook's process ended before this check") + where
        unrun = [n for n in re.findall(r"(?:name '|^)(\w+)'? is not defined", message)
                 if n in getattr(answers, "elsewhere", ())]
        notes += [f"{unrun[0]} is defined in a cell that is no answer cell, which the grader does not run: move it "
                  f"into the answer cell"] if unrun else []
        notes += _unreadable_module_notes(message)
        message = "; ".join([m for m in [message] + notes if m])
        flags = "; ".join(common + exercise_flags(record, ex.name))
        rows.append(_row(student, ref.name, ex.name, passed, ex.points if passed else 0.0, ex.points, message, flags))
    return rows


def _failed_rows(student: str, ref: RefNotebook, message: str) -> List[dict]:
    return [_row(student, ref.name, ex.name, False, 0.0, ex.points, message) for ex in ref.exercises]


# ============================================================================================ grading
def _unreadable_by_others(paths: Sequence[Path], within: Optional[Sequence[str]] = None) -> List[str]:
    """Folders a sandbox user (no shared group, not the owner) cannot read: imports from there fail. ``within``: the
    folders a notebook's own view binds back (above them it sees covers anyone may read), None without one."""
    bad = []
    for path in paths:
        p = path.resolve()
        for folder in [p, *p.parents]:
            if within is not None and not any(folder == Path(w) or Path(w) in folder.parents for w in within):
                break
            mode = os.stat(folder).st_mode
            need = stat.S_IXOTH | (stat.S_IROTH if folder == p else 0)
            if mode & need != need:
                bad.append(str(path))
                break
    return bad


def _environment_warnings(submissions: Path, isolated: bool = False) -> List[str]:
    """What the teacher should know before grading; ``isolated``: notebooks get views of their own (namespaces)."""
    if not sandbox.privileged():
        return ["warning: not running as root, so student code runs with your user's rights (it could stop the "
                "grader or change your files); grade untrusted submissions as root in a container"]
    warnings = []
    import torch

    package = Path(__file__).resolve().parents[1]  # vit_edu/
    places = [Path(sysconfig.get_paths()["stdlib"]), Path(torch.__file__).parent, package]
    bad = _unreadable_by_others(places, needed_paths() if isolated else None)
    if bad:
        warnings.append(f"note: {', '.join(bad)} cannot be read by other users, so student code can import only the "
                        f"modules the grader preloads (torch, numpy, einops, vit_edu, the setup cells' imports and "
                        f"common standard modules)")
    if not isolated and os.stat(submissions).st_mode & (stat.S_IROTH | stat.S_IXOTH):  # else covered in its view
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
    check_outputs(out)  # now, not after grading everybody
    folder = students_dir(out)
    if folder.name == out.name:  # 'grades' (no suffix): its per-student folder would take the file's own name
        raise ValueError(f"--out {out} needs a suffix (e.g. {out.name}.csv): each student's CSV goes into a folder "
                         f"named after it without the suffix")
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"per-student grades folder {folder} is a file; expected a folder (it is named "
                                 f"after --out)")
    links = sorted(_label(p.name) for p in root.iterdir() if p.is_symlink())
    if links:  # a link to notebooks/ or to another student's folder is nobody's own work
        print(f"warning: not following {len(links)} symbolic link(s) in {root}: {', '.join(links[:3])}"
              f"{', ...' if len(links) > 3 else ''}; a student's folder must be a real folder", file=sys.stderr)
    given, lms, superseded = root, lms_download(root, reference), {}
    if lms:  # a Canvas download: one folder per student, made in a private temporary folder (gone with ``staged``)
        staged = tempfile.TemporaryDirectory(prefix="vit_edu_lms_")
        root = Path(staged.name)
        superseded = stage_lms_download(lms, root)  # {student: {file handed in before: the latest}}
        if verbose:
            print(f"{given} is a Canvas download: {len(lms)} students, each named <lastfirst>_<userid>", flush=True)
    students = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not no_submission(p.name)
                      and p.resolve() not in (folder.resolve(), reference_folder.resolve()))  # the grader's own
    if not students and not list(root.glob("*.ipynb")):  # say why, rather than "nothing left to grade"
        zipped = sorted(_label(p.name) for p in root.iterdir() if p.name.lower().endswith(ARCHIVES))
        raise ValueError(f"{root} holds no student folder; expected {root}/<student>/*.ipynb or the files of a "
                         f"Canvas download" + (f"; it holds {', '.join(zipped[:3])}: extract it there first"
                                               if zipped else ""))
    _check_level(root, students)  # of the whole class, like the labels: every shard decides alike
    label_of = student_labels(students)  # of the whole class, so that every shard names a student alike
    for s in students:
        if label_of[s] != _label(s.name):
            print(f"warning: student folders read alike; the one named {os.fsencode(s.name)!r} in bytes is "
                  f"{_printable(label_of[s], 200)} in the grades", file=sys.stderr)
    if shard is not None:
        everyone = len(students)
        students = [p for p in students if shards.shard_of(label_of[p], shard[1]) == shard[0]]
        if verbose:
            print(f"shard {shard[0]}/{shard[1]}: {len(students)} of the {everyone} students", flush=True)
    loose = sorted(p.name for p in root.glob("*.ipynb"))
    with_notebooks = [s for s in students if notebook_files(s)]
    if loose and not with_notebooks:
        raise ValueError(f"{root} holds notebooks directly ({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}) "
                         f"but no student folders with notebooks; expected one folder per student: "
                         f"{root}/<student>/*.ipynb")
    if students and not with_notebooks:
        zipped = sum(bool(notebook_files(s, ARCHIVES)) for s in students)
        raise ValueError(f"none of the {len(students)} student folders in {root} holds a notebook; expected "
                         f"{root}/<student>/*.ipynb (or in a subfolder of <student>)" + (
                             f"; {zipped} hold archives ({', '.join(ARCHIVES)}): extract them first" if zipped else ""))
    state_path = folder / STATE_FILE
    state = _load_state(state_path)
    fp = fingerprint(reference)
    if state.get("reference") not in (None, fp) and not force:
        raise ValueError(f"{folder} holds grades made against another reference (its exercises, points or setup "
                         f"cells changed); use --force to regrade everybody, or another --out")
    limits_now = {"--timeout": float(timeout), "--cell-timeout": cell_timeout, "--memory-mb": memory_mb,
                  "--max-output-kb": max_output_kb, "--disk-mb": disk_mb}
    changed = [f"{flag} {state['limits'][flag]} then, {value} now" for flag, value in limits_now.items()
               if isinstance(state.get("limits"), dict) and flag in state["limits"] and state["limits"][flag] != value]
    seeds = {v.get("seed") for v in (state.get("students") or {}).values() if isinstance(v, dict)} - {None}
    if seed is not None and seeds - {seed}:
        changed.append(f"--seed {', '.join(map(str, sorted(seeds - {seed})))} then, {seed} now")
    verdicts = checks_fingerprint()  # a course update that changed a check: kept verdicts would be another version's
    if state.get("students") and state.get("checks") != verdicts:
        changed.append(f"the checks (vit_edu's exercise tables, engine and judge) "
                       f"{state.get('checks') or 'unrecorded (an older vit_edu)'} then, {verdicts} now")
    if changed and not force:  # kept grades made under other settings would be mixed with new ones unsaid
        raise ValueError(f"{folder} holds grades made with other settings ({'; '.join(changed)}); use --force to "
                         f"regrade everybody with these, or the same settings to go on, or another --out")
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
    for s in crashed:  # the grader was killed while these ran (perhaps by a power cut): each is retried alone
        suspects[s] = suspects.get(s, 0) + 1
    if shard is not None and state.get("shard") not in (None, list(shard)) and not force:
        raise ValueError(f"{folder} holds the grades of shard {state['shard'][0]}/{state['shard'][1]}, not "
                         f"{shard[0]}/{shard[1]}; use another --out per shard")
    state.update(reference=fp, checks=verdicts, running=[], grader_pid=os.getpid(), suspects=suspects,
                 shard=list(shard) if shard is not None else None, limits=limits_now)
    state.setdefault("students", {})
    names = [label_of[s] for s in students]
    state["class"] = names  # who this --out must hold once done: a --merge refuses a part short of any of them
    seed = secrets.randbelow(2**31) if seed is None else seed

    todo: List[Path] = []
    for s, name in zip(students, names):
        files, csv = submission_hash(s), student_csv(folder, name)
        if csv.exists() and state["students"].get(name, {}).get("files") == files and not force:
            continue
        if suspects.get(name, 0) >= 2:
            message = (f"not graded: the grader itself was killed while this student's notebooks ran; delete {csv} "
                       "to try again")
            _write_csv(csv, COLUMNS, _csv_rows([r for nb in reference for r in _failed_rows(name, nb, message)]))
            state["students"][name] = {"seed": seed, "files": files, "marked": True}
            suspects.pop(name)
            print(f"warning: {_printable(name, 80)}: {message}", file=sys.stderr)
            continue
        todo.append(s)
    todo.sort(key=lambda s: (suspects.get(label_of[s], 0) == 0, label_of[s]))  # suspects first, each alone
    _write_json(state_path, state)
    if not todo:
        rows = _write_combined(out, names, reference)
        if verbose:
            print(format_table(rows, names, reference, detail))
            print(f"nothing left to grade (--force regrades everybody); wrote {out} and {summary_path(out)}")
        return rows
    limits = sandbox.Limits(timeout_s=float(timeout), cell_timeout_s=cell_timeout, memory_mb=memory_mb,
                            max_output_bytes=max_output_kb * 1024, disk_mb=disk_mb)
    preload = [m for nb in reference for m in nb.imports]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the judge's tensors are small; the cores go to the children
    package_parent = Path(__file__).resolve().parents[2]
    hide = [given, root, reference_folder, out.resolve().parent, folder, Path.cwd()]
    if (package_parent / "pyproject.toml").is_file():  # a source checkout: teacher notebooks, tests, .git
        hide.append(package_parent)
    box = sandbox.Sandbox(limits, slots=jobs, preload=preload, hide=hide)
    for warning in _environment_warnings(given, isolated=box.isolate):
        print(warning, file=sys.stderr)
    if verbose:
        print(f"grading {len(todo)} student(s) with seed {seed} (--seed {seed} repeats these checks)", flush=True)
        print(f"sandbox: each notebook runs with a {box.isolation}", flush=True)
    try:
        _grade_all(box, {label_of[s]: s for s in todo}, reference, folder, state, state_path, seed, limits, suspects,
                   out, names, verbose, superseded=superseded)
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


@dataclass
class _Task:
    student: str
    student_dir: Path
    ref: RefNotebook
    answers: Dict[str, List[str]]
    retried: bool = False
    alone: bool = False  # run with nothing else running (a suspect, or a retry after a server death)


def _prepare(s: Path, student: str, reference: Sequence[RefNotebook], alone: bool,
             superseded: Optional[Dict[str, str]] = None) -> Tuple[List[dict], List["_Task"]]:
    """(rows already decided, notebooks to run) for one student's folder; ``superseded``: its files handed in again
    later (a Canvas download), never graded."""
    match = match_notebooks(s, reference, superseded)
    rows: List[dict] = [_row(student, file, "(notebook)", False, 0.0, 0.0, note) for file, note in match.notes]
    tasks: List[_Task] = []
    for ref in reference:
        if not ref.exercises:
            continue
        if ref.name not in match.graded:
            hint = match.lookalikes.get(ref.name)  # e.g. 01_patch_embedding.ipynb.bak, or exported as .py
            rows += _failed_rows(student, ref, "notebook missing from the submission" + (f"; {hint}" if hint else ""))
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


def _copy_rows(student: str, notes: Sequence[str], rows: Sequence[dict]) -> List[dict]:
    """A note row on what of the student's folder the sandbox's copy left out (a link, a chain of folders past
    the depth copied): once per student, though the folder is copied for each notebook."""
    if not notes:
        return []
    message = "not copied into the sandbox: " + "; ".join(_label(n) for n in notes[:3]) + (
        f" (+{len(notes) - 3} more)" if len(notes) > 3 else "")
    done = any(r["notebook"] == "(folder)" for r in rows)
    return [] if done else [_row(student, "(folder)", "(notebook)", False, 0.0, 0.0, one_line(message, 500))]


def _check_level(root: Path, students: Sequence[Path]) -> None:
    """Refuse a submissions folder one level too high (class sections, an nbgrader course's submitted/): half its
    "students" or more hold copies of one notebook in several subfolders and none at their top, as a folder of
    student folders does (:func:`.reference.nested_students`). Fewer: each is warned about (and noted in its rows:
    :func:`.reference.match_notebooks`)."""
    nested = {s: found for s in students if (found := nested_students(s))}
    if not nested:
        return

    def holds(s: Path) -> str:
        name, subs = next(iter(nested[s].items()))
        return (f"{_label(s.name)} holds {_label(name)} in {len(subs)} subfolders "
                f"({', '.join(map(_label, subs[:3]))}{', ...' if len(subs) > 3 else ''})")

    def students_in(s: Path) -> Path:  # where the copies' folders are: s, or s/section1 for s/section1/<student>
        return s / os.path.commonpath(next(iter(nested[s].values())))

    if 2 * len(nested) >= sum(bool(notebook_files(s)) for s in students):
        first = next(iter(nested))
        raise ValueError(f"{root} looks one level too high for a submissions folder: "
                         f"{'; '.join(map(holds, list(nested)[:3]))}, and none at its top, as a folder of student "
                         f"folders would; expected {root}/<student>/*.ipynb: grade each such folder on its own, e.g. "
                         f"python -m vit_edu grade {students_in(first)} --out grades_{_label(first.name)}.csv (if "
                         f"{_label(first.name)} is one student, keep one copy of each notebook there)")
    for s in nested:
        print(f"warning: {holds(s)} and none at its top, as a folder of several students would: it is graded as one "
              f"student, the other copies as duplicates; if these are students, grade {students_in(s)} on its own",
              file=sys.stderr)


def _grade_all(box: sandbox.Sandbox, todo: Dict[str, Path], reference: Sequence[RefNotebook], folder: Path,
               state: dict, state_path: Path, seed: int, limits: sandbox.Limits, suspects: Dict[str, int],
               out: Path, names: Sequence[str], verbose: bool,
               superseded: Optional[Dict[str, Dict[str, str]]] = None) -> None:
    """Run every notebook of ``todo`` (student -> folder, in order) in the sandbox, judge, and write each student's
    CSV when complete. ``superseded``: per student folder name, files handed in again later (never graded)."""
    rows_of: Dict[str, List[dict]] = {}
    left: Dict[str, int] = {}
    queue: List[_Task] = []
    for student, s in todo.items():
        try:
            rows, tasks = _prepare(s, student, reference, suspects.get(student, 0) > 0, (superseded or {}).get(s.name))
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
        _write_csv(student_csv(folder, student), COLUMNS, _csv_rows(rows))
        state["students"][student] = {"seed": seed, "files": submission_hash(todo[student])}
        suspects.pop(student, None)
        save_state()
        _write_combined(out, names, reference)
        if verbose:
            got = sum(r["points"] for r in rows)
            full = sum(ex.points for nb in reference for ex in nb.exercises)
            wrote = _printable(str(student_csv(folder, student)), 200)
            print(f"{_printable(student, 80)}: {got:g}/{full:g} (wrote {wrote})", flush=True)

    for student in todo:  # students with nothing to run (no readable notebook) are done now
        if left[student] == 0:
            finish_student(student)
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
            rows_of[task.student] += rows + _copy_rows(task.student, result.copy_notes, rows_of[task.student])
            if verbose:
                got = sum(r["points"] for r in rows)
                full = sum(r["max_points"] for r in rows)
                print(f"graded {_printable(task.student, 80)}/{task.ref.name}: {got:g}/{full:g} in {result.outcome.wall_s:.1f} s"
                      + (f" ({_encodable(result.outcome.reason)})" if result.outcome.reason else ""), flush=True)
            left[task.student] -= 1
            if left[task.student] == 0:
                del students_running[task.student]
                finish_student(task.student)


# ============================================================================================ command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vit_edu grade SUBMISSIONS_DIR [options]``; exit 2 with a one-line error on bad input."""
    parser = OneLineParser(
        prog="python -m vit_edu grade",
        description="Grade submissions/<student>/*.ipynb against the reference notebooks: each notebook's answer "
                    "cells run in a sandboxed process, the checks' verdicts are made outside it.")
    parser.add_argument("submissions", nargs="?",
                        help="folder with one sub-folder of notebooks per student, or the files of a Canvas download")
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
        grading_only = [flag for flag in ("--jobs", "--timeout", "--cell-timeout", "--memory-mb", "--disk-mb",
                                          "--max-output-kb", "--seed", "--force")
                        if getattr(args, flag[2:].replace("-", "_")) != parser.get_default(flag[2:].replace("-", "_"))]
        if grading_only:  # the parts were graded with their own; taking them here would promise what is not done
            problems.append(f"--merge grades nothing: {', '.join(grading_only)} apply to grading the shards")
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
