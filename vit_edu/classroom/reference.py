"""What is graded, read from the reference notebooks (the handed-out copies), and what a submission answers.

* :func:`load_reference` / :func:`load_reference_notebook`: each reference notebook's exercises (check cells
  with their points, answer cells by grade_id) and its steps in order (setup cells, answer cells, checks);
  :func:`fingerprint` names one reference, so a resumed run never mixes two;
* :func:`read_answers`, :func:`match_notebooks`: a student's answer cells (by grade_id), the student's
  notebooks (:func:`notebook_files`, subfolders included) matched to the reference's (a renamed notebook is
  recognised by its grade_ids);
* :func:`job_steps`: the steps a sandboxed child runs for one notebook (:mod:`.grading`, :mod:`.sandbox`).
"""


from __future__ import annotations

import ast
import difflib
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import nbformat

from ..checks import CHECKS
from . import sandbox
from .sandbox import one_line

DEFAULT_REFERENCE = "assignments/student"
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024  # a submitted notebook larger than this is not read (clear its outputs)
MAX_ENTRIES = 20_000  # files and folders looked at for a student's notebooks (the sandbox's file count, too)
MAX_NOTEBOOKS = 100  # notebook files read per student (11 handed out, a few copies): what the grader keeps in memory
MAX_ANSWER_CHARS = 2_000_000  # of answer code per notebook (an answer is a few kB; kept until it runs)
# JSON values per notebook, counted as its commas and brackets: each is a Python object once read (an empty {} is
# 64 bytes: 64 MB of them took 1.4 GB and 4 s to read), and a notebook of 11 exercises has a few thousand
MAX_JSON_VALUES = 2_000_000
CLEAR_OUTPUTS = "clear its outputs (jupyter nbconvert --clear-output --inplace FILE) and grade again"


def _label(name: str) -> str:
    """A file or folder name as text every output can hold: bytes that are not UTF-8 and control characters as
    \\xNN (one name, one label), so a student folder called b'bad\\xffname' is graded and reported as
    'bad\\xffname', and one whose name holds an escape code paints nothing on the teacher's terminal."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


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
    checks: List[int] = field(default_factory=list)  # the check cells' places in code_cells


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
    checks_at: List[int] = []
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
            checks_at.append(sum(c.cell_type == "code" for c in nb.cells[:index]))
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
    return RefNotebook(name, steps, exercises, answer_ids, list(dict.fromkeys(imports)), stubs, code_cells,
                       checks_at)


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


def _reference_path(reference_dir: "str | Path | None") -> Path:
    """The reference folder: the one given, else assignments/student here or in the source checkout."""
    if reference_dir is not None:
        return Path(reference_dir)
    here = Path(DEFAULT_REFERENCE)
    if here.is_dir():
        return here
    repo = Path(__file__).resolve().parents[2] / DEFAULT_REFERENCE  # vit_edu/classroom/reference.py -> repository
    return repo if repo.is_dir() else here


VERDICT_SOURCES = ("checks.py", "classroom/engine.py", "classroom/judge.py", "classroom/exercises_*.py")


def checks_fingerprint(package: Optional[Path] = None) -> str:
    """``<vit_edu's version>+<digest>`` of the code that decides a verdict: the bytes of vit_edu/checks.py and of
    the exercise tables, engine and judge in vit_edu/classroom/ (:data:`VERDICT_SOURCES`; ``package``: another
    copy of vit_edu/). A course update that changes a check changes it, so a resumed run or a merge of shards
    never mixes verdicts of two versions."""
    from .. import __version__

    package = Path(__file__).resolve().parents[1] if package is None else Path(package)
    h = hashlib.sha256()
    for pattern in VERDICT_SOURCES:
        for path in sorted(package.glob(pattern)):
            h.update(path.relative_to(package).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return f"{__version__}+{h.hexdigest()[:12]}"


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
    if data is None:  # too large: most often outputs (images, logs) that the answers do not need
        return None, f"the file is {problem}" + (f"; {CLEAR_OUTPUTS}" if "over the limit" in problem else "")
    values = data.count(b",") + data.count(b"[") + data.count(b"{")
    if values > MAX_JSON_VALUES:  # checked before reading: its objects would fill the grader's memory
        return None, f"it holds over {MAX_JSON_VALUES:,} JSON values (commas and brackets), most often outputs; " \
                     f"{CLEAR_OUTPUTS}"
    try:
        nb = json.loads(data)  # bytes: UTF-8 with or without a BOM (Notepad's), UTF-16 and UTF-32 as JSON allows
    except (ValueError, RecursionError) as err:
        return None, f"not a notebook (invalid JSON: {one_line(err, 120)})"
    if isinstance(nb, dict) and "cells" not in nb and isinstance(nb.get("nbformat"), int) and nb["nbformat"] < 4:
        nb, problem = _upgraded(nb)
        if nb is None:
            return None, problem
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None, "not a notebook (no list of cells)"
    answers = Answers()
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
        answers = Answers(_answers_by_position(nb["cells"], reference))
    elif answers:  # for the judge's hint on a NameError: what the cells the grader does not run define
        answers.elsewhere = tuple(sorted(_defined_elsewhere(nb["cells"])))
    size = sum(len(source) for sources in answers.values() for source in sources)
    if size > MAX_ANSWER_CHARS:
        return None, f"its answer cells hold {size:,} characters of code, more than the {MAX_ANSWER_CHARS:,} allowed"
    return answers, ""


def _upgraded(nb: dict) -> Tuple[Optional[dict], str]:
    """(the notebook as nbformat 4, "") of an nbformat-3 notebook (IPython 3, old Jupyter and some editors save
    it), converted by nbformat itself; (None, what to do) for one it cannot convert. Only what the grader reads
    (each code cell's input and metadata) is handed to nbformat, as a valid nbformat-3 document: its conversion
    validates first, and a student's malformed file must not flood the grader's log."""
    convert = "open it in Jupyter and save it again, which writes nbformat 4, or run `jupyter nbconvert --to " \
              "notebook --nbformat 4 FILE`, and grade again"
    worksheets = nb.get("worksheets")
    if nb["nbformat"] != 3 or not isinstance(worksheets, list):
        return None, f"an nbformat-{nb['nbformat']} notebook, which the grader does not read: {convert}"
    cells = []
    for sheet in worksheets:
        listed = sheet.get("cells") if isinstance(sheet, dict) else None
        for cell in listed if isinstance(listed, list) else []:
            if not isinstance(cell, dict) or cell.get("cell_type") != "code":
                continue  # markdown and heading cells hold no answer
            source, meta = cell.get("input", ""), cell.get("metadata")
            if isinstance(source, list) and all(isinstance(s, str) for s in source):
                source = "".join(source)
            cells.append({"cell_type": "code", "language": "python", "outputs": [],
                          "input": source if isinstance(source, str) else "",
                          "metadata": meta if isinstance(meta, dict) else {}})
    try:
        return nbformat.convert(nbformat.from_dict({"nbformat": 3, "nbformat_minor": 0, "metadata": {},
                                                    "worksheets": [{"cells": cells}]}), 4), ""
    except Exception as err:  # noqa: BLE001 - whatever nbformat makes of it, this student's file alone is refused
        return None, f"an nbformat-3 notebook nbformat cannot convert ({type(err).__name__}): {convert}"


class Answers(dict):
    """read_answers' {grade_id: [sources]}; ``elsewhere``: the names the notebook's other code cells define."""

    elsewhere: Tuple[str, ...] = ()


_DEFINES = re.compile(r"^(?:(?:async\s+)?def|class)\s+(\w+)|^(\w+)\s*(?::[^=\n]*)?=(?!=)"
                      r"|^(?:from\s+[\w.]+\s+)?import\s+\(?([\w., \t]+)", re.M)


def _defined_elsewhere(cells: list) -> set:
    """Names that the code cells which are no answer (a helper cell the student added) define at their top level:
    ``def``, ``class``, ``name =``, imports; at most 1000 (a hint, not a parse)."""
    names: set = set()
    for cell in cells:
        meta = cell.get("metadata") if isinstance(cell, dict) else None
        grader = meta.get("nbgrader") if isinstance(meta, dict) else None
        if not isinstance(cell, dict) or cell.get("cell_type") != "code" or (
                isinstance(grader, dict) and grader.get("solution") is True):
            continue
        source = cell.get("source", "")
        source = "".join(x for x in source if isinstance(x, str)) if isinstance(source, list) else source
        for match in _DEFINES.finditer(source if isinstance(source, str) else ""):
            imported = [part.split()[-1].split(".")[0] for part in (match.group(3) or "").split(",") if part.split()]
            names.update([n for n in (match.group(1), match.group(2)) if n] + imported)
            if len(names) >= 1000:
                return names
    return names


def _answers_by_position(cells: list, reference: Sequence[RefNotebook]) -> Dict[str, List[str]]:
    """The answers of a notebook without nbgrader metadata, where its code cells line up with a reference
    notebook's: at least half of its check cells found unchanged (the anchors; a check cell the student edited, e.g.
    with a comment, is aligned like any other cell), the cells between them aligned with the handed-out ones
    (:class:`difflib.SequenceMatcher`). A prediction or an experiment the student filled in, or a cell added
    elsewhere, moves no answer; cells added beside one answer (a helper cell above it) run in its place. A cell
    taken for an answer by mistake costs nothing it would not: the grader runs its own checks on it."""
    code = []
    for cell in cells:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) and all(isinstance(x, str) for x in source) else source
            code.append(source if isinstance(source, str) else "")
    for ref in reference:
        positions = {i: gid for gid, stub in ref.stubs.items() for i, src in enumerate(ref.code_cells) if src == stub}
        if not ref.stubs or len(positions) != len(ref.stubs) or len(code) > 2 * len(ref.code_cells) + 50:
            continue  # two answers with the same stub: positions are ambiguous; or too many cells to align
        blocks = difflib.SequenceMatcher(None, [c.strip() for c in ref.code_cells], [c.strip() for c in code],
                                         autojunk=False).get_opcodes()
        kept = {i for tag, i1, i2, _, _ in blocks if tag == "equal" for i in range(i1, i2)}
        if 2 * sum(i in kept for i in ref.checks) < max(1, len(ref.checks)):  # not this notebook: most anchors gone
            continue
        answers: Dict[str, List[str]] = {}
        for tag, i1, i2, j1, j2 in blocks:
            mine = [i for i in range(i1, i2) if i in positions]
            if i2 - i1 == j2 - j1:
                answers.update({positions[i]: [code[j1 + i - i1]] for i in mine})
            elif len(mine) == 1 and j2 - j1 > i2 - i1:  # the cells added here belong to the one answer
                answers[positions[mine[0]]] = code[j1 + mine[0] - i1: j2 - (i2 - 1 - mine[0])]
        if answers:
            return answers
    return {}


@dataclass
class Assignment:
    """What to grade for one student: reference notebook -> (file, answers or None, why not readable)."""

    graded: Dict[str, Tuple[Path, Optional[Dict[str, List[str]]], str]] = field(default_factory=dict)
    notes: List[Tuple[str, str]] = field(default_factory=list)  # (file name, what is wrong with it)
    lookalikes: Dict[str, str] = field(default_factory=dict)  # missing reference notebook -> a file named like it


def _worked_on(answers: Optional[Dict[str, List[str]]], ref: RefNotebook) -> int:
    """How many of ``ref``'s answer cells differ from the handed-out stub (an untouched copy scores 0); a grade_id
    carried by several cells counts when any of them differs (a stub copied above the worked answer)."""
    if not answers:
        return -1
    return sum(1 for gid in ref.answer_ids
               if any(source.strip() != ref.stubs.get(gid, "").strip() for source in answers.get(gid, [])))


def no_submission(name: str) -> bool:
    """Hidden files and folders (Jupyter's .ipynb_checkpoints) and __MACOSX, the resource forks a Mac zip adds
    (__MACOSX/._x.ipynb): nobody's work, in a student's folder or beside the students' folders."""
    return name.startswith(".") or name == "__MACOSX"


# Read as notebooks, in any case: .ipynb, and the .json or .txt a browser, an LMS or an editor adds when it saves a
# notebook as JSON or text (graded, with a note to rename the file).
NOTEBOOK_SUFFIXES = (".ipynb", ".ipynb.json", ".ipynb.txt")
EXPORTS = (".py", ".html", ".htm", ".pdf", ".md", ".tex", ".rst")  # what "Download as" or nbconvert writes


def _is_notebook(name: str) -> bool:
    return name.lower().endswith(NOTEBOOK_SUFFIXES)


def _canonical(name: str) -> str:
    """The name as the reference's: its suffix in lower case and without an added .json or .txt, so that
    ``01_patch_embedding.IPYNB`` and ``01_patch_embedding.ipynb.txt`` are ``01_patch_embedding.ipynb``."""
    lower = name.lower()
    suffix = next((x for x in NOTEBOOK_SUFFIXES if lower.endswith(x)), None)
    return name[: -len(suffix)] + ".ipynb" if suffix else name


ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".7z", ".rar")  # a zipped submission the teacher must extract


def notebook_files(student_dir: Path, suffixes: Tuple[str, ...] = NOTEBOOK_SUFFIXES,
                   wanted: Optional[Callable[[str], bool]] = None) -> List[Path]:
    """The student's notebooks: names ending in .ipynb in any case (or :data:`NOTEBOOK_SUFFIXES`), at the top of the
    folder and in its subfolders at any depth (a zipped folder extracted one level down), those at the top first.
    Hidden files and folders (Jupyter's .ipynb_checkpoints), __MACOSX and links to folders are not entered (a link
    could point anywhere); at most MAX_ENTRIES entries are looked at, so a folder of a million files costs no more
    than the sandbox would copy. ``suffixes``: other files to find (:data:`ARCHIVES`); ``wanted``: instead, the
    names (in lower case) to find."""
    found: List[Path] = []
    folders = [student_dir]
    budget = MAX_ENTRIES
    while folders and budget > 0:
        folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(itertools.islice(listing, budget))
        except OSError:
            continue  # an unreadable subfolder holds nothing we can grade
        budget -= len(entries)
        for entry in entries:
            if no_submission(entry.name):
                continue
            if wanted(entry.name.lower()) if wanted is not None else entry.name.lower().endswith(suffixes):
                found.append(Path(entry.path))
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_folder = False
            if is_folder:
                folders.append(Path(entry.path))
    return sorted(found, key=lambda q: (len(q.relative_to(student_dir).parts), q.relative_to(student_dir).parts))


def _nested(student_dir: Path, files: Sequence[Path]) -> Dict[str, List[str]]:
    """{notebook name: the subfolders holding a copy, as paths below ``student_dir``} for each notebook with copies
    in several subfolders (at any depth: sections of a year, students of a section) and none at its top."""
    where: Dict[str, set] = {}
    for p in files:
        folder = p.parent.relative_to(student_dir).as_posix()
        where.setdefault(_canonical(p.name), set()).add("" if folder == "." else folder)
    return {name: sorted(found) for name, found in where.items() if "" not in found and len(found) > 1}


def nested_students(student_dir: Path) -> Dict[str, List[str]]:
    """What makes ``student_dir`` look like a folder of students, not one student's (the grader pointed one level
    too high: class sections, an nbgrader course's submitted/): {notebook: subfolders} of the notebooks it holds
    in several subfolders and not at its top (see :func:`_nested`); {} for one student's folder."""
    return _nested(student_dir, notebook_files(student_dir))


def _lookalikes(student_dir: Path, missing: Sequence[str], seen: Sequence[Path]) -> List[Tuple[Path, str, str]]:
    """(file, reference notebook, what it is) for the files named like a missing reference notebook that are no
    notebook files: an export (``01_patch_embedding.py``, ``.html``) or a name with something after .ipynb
    (``01_patch_embedding.ipynb.bak``), so that "notebook missing" names the file and what to do."""
    stems = {name[: -len(".ipynb")].lower(): name for name in missing}
    ref_of = lambda lower: next((stems[s] for s in sorted(stems, key=len, reverse=True)  # noqa: E731
                                 if lower == s or lower.startswith(s + ".")), None)
    found = []
    for p in notebook_files(student_dir, wanted=lambda lower: ref_of(lower) is not None):
        if p in seen or p.is_symlink() or not p.is_file():
            continue
        name, lower = ref_of(p.name.lower()), p.name.lower()
        ext = os.path.splitext(lower)[1]
        found.append((p, name, f"an export of {name} ({ext}), not the notebook: the grader reads only the .ipynb "
                               f"file; hand in {name} itself" if ext in EXPORTS and ".ipynb" not in lower else
                      f"named like {name} but no notebook file name: if it is the notebook, rename it {name} and "
                      f"grade again"))
    return found[:10]


def match_notebooks(student_dir: Path, reference: Sequence[RefNotebook],
                    superseded: Optional[Dict[str, str]] = None) -> Assignment:
    """Pair a student's notebooks with the reference: by file name (its suffix in any case), else (renamed) by
    answer grade_ids; notebooks in subfolders count too (see :func:`notebook_files`).

    A reference notebook is graded at most once. When several files are its copies (the file of its name and a
    renamed one, or one in a subfolder), the one with the most answers worked on is graded (an untouched stub
    beside a renamed answer loses); on a tie one at the top of the folder, then the file of the reference's name;
    the others are reported as duplicates, files matching no reference notebook as extra; neither is graded.
    ``superseded``: {file at the top: the file handed in again later} (a Canvas download,
    :func:`resubmissions`): reported as duplicates of the later file, never graded. Also noted: copies of one
    notebook in several subfolders and none at the top (:func:`nested_students`), and, for a missing reference
    notebook, a file named like it that is no notebook file (an export, an added suffix)."""
    out = Assignment()
    by_name = {nb.name: nb for nb in reference}
    files = notebook_files(student_dir)
    for name, subs in _nested(student_dir, files).items():
        out.notes.append((_label(name), f"copies in {len(subs)} subfolders ({', '.join(map(_label, subs[:3]))}"
                          f"{', ...' if len(subs) > 3 else ''}) and none at the top, as in a folder of several "
                          f"students: if these are students, grade this folder on its own"))
    later = {p: (superseded or {}).get(p.name) for p in files if p.parent == student_dir}
    out.notes += [(_label(p.name), f"duplicate of {_label(name)}, which was handed in later (Canvas numbers a file "
                   f"handed in again -1, -2, ...; the latest is graded): not graded")
                  for p, name in later.items() if name]
    files = [p for p in files if not later.get(p)]
    if len(files) > MAX_NOTEBOOKS:  # a folder of a thousand copies must not fill the grader's memory
        out.notes.append((_label(files[MAX_NOTEBOOKS].relative_to(student_dir).as_posix()),
                          f"not read, nor the {len(files) - MAX_NOTEBOOKS - 1} after it: over {MAX_NOTEBOOKS} notebooks"))
        files = files[:MAX_NOTEBOOKS]
    out.notes += [(_label(a.relative_to(student_dir).as_posix()), "an archive, not opened: extract it into the "
                   "student's folder and grade again") for a in notebook_files(student_dir, ARCHIVES)[:10]]
    read = {p: read_answers(p, reference) for p in files}
    label = {p: _label(p.relative_to(student_dir).as_posix()) for p in files}
    candidates: Dict[str, List[Path]] = {}
    for p in files:
        answers, problem = read[p]
        overlap = sorted(((len(set(answers or ()) & set(nb.answer_ids)), nb.name) for nb in reference), reverse=True)
        best, ref_name = overlap[0] if overlap else (0, "")
        named = _canonical(p.name)
        if named in by_name and (best == 0 or set(answers or ()) & set(by_name[named].answer_ids)):
            candidates.setdefault(named, []).append(p)  # by its name, unless its answers are all another notebook's
            continue
        if answers is None:
            out.notes.append((label[p], f"not in the reference and unreadable ({problem}): not graded"))
            continue
        if best == 0:
            out.notes.append((label[p], "extra notebook: not in the reference, not graded"))
        else:
            candidates.setdefault(ref_name, []).append(p)
    for ref_name, paths in candidates.items():
        ref = by_name[ref_name]
        chosen = max(paths, key=lambda q: (read[q][0] is not None, _worked_on(read[q][0], ref),
                                           q.parent == student_dir, q.name == ref_name))
        out.graded[ref_name] = (chosen, *read[chosen])
        top = student_dir / ref_name  # the file of the reference's name at the top, if any, is one of ``paths``
        for q in paths:
            if q is chosen:
                how = [] if q.parent == student_dir else ["found in a subfolder"]
                if q.name != ref_name:
                    suffix = q.name[len(ref_name) - len(".ipynb"):]  # ".IPYNB", ".ipynb.txt" when it is one of these
                    how.append((f"its suffix is {suffix}" if len(suffix) == len(".ipynb") else
                                f"saved as {suffix}: rename it {ref_name}") if _canonical(q.name) == ref_name else
                               "its answer cells are this notebook's" if _canonical(q.name) in by_name else "renamed")
                if how and top in read:
                    how[-1] += (f"; {_label(ref_name)} {'beside it' if q.parent == student_dir else 'at the top'} "
                                + ("cannot be read" if read[top][0] is None else "has fewer answers worked on"))
                if how:
                    out.notes.append((label[q], f"graded as {ref_name} ({', '.join(how)})"))
            else:
                mine, kept = read[q][0], read[chosen][0]
                if mine is None:
                    what = "cannot be read"
                elif mine == kept:
                    what = "same answer cells"
                elif _worked_on(mine, ref) < _worked_on(kept, ref):
                    what = f"fewer answers worked on than {label[chosen]}"
                else:
                    what = f"as many answers worked on; {label[chosen]} is graded"
                out.notes.append((label[q], f"duplicate of {ref_name} ({what}): not graded"))
    missing = [nb.name for nb in reference if nb.exercises and nb.name not in out.graded]
    for p, name, what in _lookalikes(student_dir, missing, list(read)) if missing else []:
        file = _label(p.relative_to(student_dir).as_posix())
        out.notes.append((file, f"not graded: {what}"))
        out.lookalikes.setdefault(name, f"{file} is {what}")
    return out


# ============================================================================================ LMS downloads
CANVAS = re.compile(r"(?P<name>[^_]*)_(?:LATE_)?(?P<user>\d+)_(?P<submission>\d+)_(?P<file>.+)", re.S)
_RESUBMITTED = re.compile(r"-(\d+)(?=\.ipynb(?:\.json|\.txt)?$)", re.I)  # Canvas's mark on a file handed in again


def _hand_in(m: "re.Match[str]") -> Tuple[str, Tuple[int, int]]:
    """(a Canvas file's name as first handed in, its rank among the files handed in under that name): Canvas
    names a file handed in again ``<name>-1``, ``<name>-2``, ... (compared as numbers: -10 is later than -9),
    and the submission id decides between equal numbers; the highest rank is the latest."""
    again = _RESUBMITTED.search(m["file"])
    return _RESUBMITTED.sub("", m["file"]), (int(again.group(1)) if again else 0, int(m["submission"]))


def lms_download(root: Path, reference: Sequence[RefNotebook]) -> Dict[str, List[Tuple[Path, str]]]:
    """The loose files of a Canvas bulk download, all in ``root`` and named ``<lastfirst>_<userid>_<submissionid>_
    <file name>`` (``<lastfirst>_LATE_<userid>_...`` when late), grouped per student: {"<lastfirst>_<userid>":
    [(file, name to grade it under)]}. That name is the file's own, without the ``-1``, ``-2`` Canvas adds to a
    name handed in again where the rest names a reference notebook, given to the latest of the files handed in under
    that name (:func:`_hand_in`; unless another of the student's files has it). {} when no loose notebook is named
    so; ValueError listing what was found when the layout is ambiguous: such notebooks beside student folders
    holding notebooks or beside loose notebooks named otherwise, or one user id under two names."""
    loose = sorted(p for p in root.iterdir() if not no_submission(p.name) and not p.is_symlink() and p.is_file())
    canvas = {p: CANVAS.fullmatch(p.name) for p in loose if CANVAS.fullmatch(p.name)}
    if not any(_is_notebook(p.name) for p in canvas):
        return {}
    folders = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not no_submission(p.name)
               and notebook_files(p)]
    others = [p for p in loose if _is_notebook(p.name) and p not in canvas]
    names: Dict[str, set] = {}
    for m in canvas.values():
        names.setdefault(m["user"], set()).add(m["name"])
    twice = {user: sorted(n) for user, n in names.items() if len(n) > 1}

    def listed(paths: Sequence[Path]) -> str:
        return ", ".join(_label(p.name) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")

    if folders or others or twice:
        found = (f"{len(folders)} student folder(s) with notebooks ({listed(folders)})" if folders else
                 f"{len(others)} notebook(s) named otherwise ({listed(others)})" if others else
                 "; ".join(f"user id {u} named {' and '.join(map(_label, n))}" for u, n in list(twice.items())[:3]))
        raise ValueError(f"{root} mixes layouts: {len(canvas)} file(s) named as in a Canvas download "
                         f"(<lastfirst>_<userid>_<submissionid>_<file>, e.g. {_label(next(iter(canvas)).name)}) and "
                         f"{found}; expected either one folder per student ({root}/<student>/*.ipynb) or only the "
                         f"files of one Canvas download")
    references = {nb.name for nb in reference}
    groups: Dict[str, List[Tuple[Path, str]]] = {}
    latest_first = sorted(canvas.items(), key=lambda pm: (pm[1]["user"], _hand_in(pm[1])[0],
                                                           [-k for k in _hand_in(pm[1])[1]], pm[0].name))
    for path, m in latest_first:
        files = groups.setdefault(f"{m['name']}_{m['user']}", [])
        taken = {name for _, name in files}
        plain = _RESUBMITTED.sub("", m["file"])
        choices = ([plain] if _canonical(plain) in references else []) + [m["file"], f"{m['submission']}_{m['file']}"]
        files.append((path, next(c for c in choices if c not in taken and c not in (".", ".."))))
    return groups


def resubmissions(groups: Dict[str, List[Tuple[Path, str]]]) -> Dict[str, Dict[str, str]]:
    """{student: {name of a notebook handed in before: name of the latest handed in under the same name}} of
    :func:`lms_download`'s groups (see :func:`_hand_in`): only the latest is graded, as Canvas shows it."""
    out: Dict[str, Dict[str, str]] = {}
    for student, files in groups.items():
        ranked = [(_canonical(_hand_in(m)[0]), _hand_in(m)[1], name) for path, name in files
                  if (m := CANVAS.fullmatch(path.name)) is not None and _is_notebook(m["file"])]
        latest = {plain: max((r, name) for p, r, name in ranked if p == plain)[1] for plain, _, _ in ranked}
        older = {name: latest[plain] for plain, _, name in ranked if name != latest[plain]}
        if older:
            out[student] = older
    return out


def stage_lms_download(groups: Dict[str, List[Tuple[Path, str]]], into: Path) -> Dict[str, Dict[str, str]]:
    """Copy :func:`lms_download`'s files into one folder per student under ``into``; returns
    :func:`resubmissions` (what not to grade). A notebook over MAX_NOTEBOOK_BYTES is cut just past that size (it
    is refused as too large, with what to do, as in a folder); another file that large is not copied."""
    for student, files in groups.items():
        (into / student).mkdir(mode=0o700)
        for src, name in files:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
            with os.fdopen(fd, "rb") as f:
                data = f.read(MAX_NOTEBOOK_BYTES + 1)
            if len(data) <= MAX_NOTEBOOK_BYTES or _is_notebook(name):
                (into / student / name).write_bytes(data)
    return resubmissions(groups)


def submission_hash(student_dir: Path) -> str:
    """Changes when any of the student's notebooks changes (resuming regrades that student)."""
    h = hashlib.sha256()
    for p in notebook_files(student_dir):
        h.update(os.fsencode(p.relative_to(student_dir).as_posix()) + b"\0")
        data, problem = sandbox.read_untrusted(p, MAX_NOTEBOOK_BYTES)
        h.update(hashlib.sha256(data if data is not None else problem.encode()).digest())
    return h.hexdigest()[:16]


def job_steps(ref: RefNotebook, answers: Dict[str, List[str]]) -> List[dict]:
    """The reference's steps with the student's answer sources. Every cell carrying an answer's grade_id runs at
    that answer's place, in notebook order, as running the notebook top to bottom would (a copied cell: the
    later definition wins). A grade_id the reference has no answer cell for (e.g. a check cell's) runs nowhere."""
    steps = []
    for step in ref.steps:
        if step["kind"] == "answer":
            steps += [{"kind": "answer", "source": source, "label": step["label"]}
                      for source in answers.get(step["grade_id"], [])]
        else:
            steps.append(step)
    return steps
