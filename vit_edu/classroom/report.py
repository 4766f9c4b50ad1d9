"""The grader's rows and files (:mod:`.grading`): one row per (student, notebook, exercise), written as
``grades/<student>.csv`` when a student is done, then ``grades.csv`` and ``grades_summary.csv``; the table
printed at the end; the flags the watches of :mod:`.watch` raised, for the teacher; ``grade --merge`` of the
parts a sharded class wrote (:mod:`.shards`).

Every text that came from a student's process or folder name is made one line and printable here
(:func:`_label`, :func:`_encodable`), so a CSV field or the teacher's terminal never carries an escape code.
"""


from __future__ import annotations

import csv
import hashlib
import json
import os
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..fileio import atomic_write, check_writable_file
from .reference import RefNotebook, _label
from .sandbox import one_line

COLUMNS = ["student", "notebook", "exercise", "passed", "points", "max_points", "message", "flags"]
STATE_FILE = ".grading.json"  # in the per-student folder: reference and checks fingerprints, journal, seeds


# ======================================================================================= students' names
MAX_NAME_BYTES = 120  # of grades/<student>.csv's name: its temporary twin adds ~30, and file systems allow 255


def _digest(raw: bytes) -> str:
    return hashlib.sha1(raw).hexdigest()[:8]


def _alike(label: str) -> str:
    """What a name reads as: case, Unicode's two spellings of one letter (a Mac zip writes é as e + ◌́) and its
    compatibility forms (ﬁ, fullwidth letters) aside."""
    return unicodedata.normalize("NFKC", label).casefold()


def student_labels(folders: Sequence[Path]) -> Dict[Path, str]:
    """Each student folder's name in the rows, one per folder: its printable label (:func:`.reference._label`),
    with ``~`` and a digest of the folder's own bytes where two folders would read alike (b'eve\\xff' and a folder
    literally named 'eve\\xff'; 'Ann' and 'ann' on a file system that ignores case; 'José' spelt both ways), or
    where a folder is named like another's label with its digest. The same folders give the same names in every
    run and every shard (a folder's name depends only on the folders that read alike)."""
    labels = {f: _label(f.name) for f in folders}
    named = dict(labels)
    for first in (True, False):  # then once more: 'Ann~<digest>' may be a folder's own name
        seen = Counter(_alike(label) for label in named.values())
        named = {f: label if seen[_alike(label)] == 1 or (not first and label != labels[f])
                 else f"{labels[f]}~{_digest(os.fsencode(f.name))}" for f, label in named.items()}
    return named


def student_csv(folder: Path, student: str) -> Path:
    """``folder/<student>.csv``; a name too long for a file (a 250-byte folder name, or 60 bytes that are not
    UTF-8 and read as \\xNN each) is cut and given a digest of the whole name, so it stays one student's."""
    raw = student.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_NAME_BYTES:
        return folder / f"{student}.csv"
    cut = raw[:MAX_NAME_BYTES - 9].decode("utf-8", "ignore")
    return folder / f"{cut}~{_digest(raw)}.csv"


# ============================================================================================ rows and flags
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


# ============================================================================================ files
def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    def write(f) -> None:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)

    atomic_write(path, write, "w", encoding="utf-8", newline="")


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: json.dump(data, f, indent=1, sort_keys=True), "w", encoding="utf-8")


def _load_state(path: Path) -> dict:
    """The grading journal (:data:`STATE_FILE`), {} when there is none or it is unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


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


def check_outputs(out: Path) -> None:
    """Before any grading: ``out`` and its summary can be written, and neither is a file of the teacher's that
    the grader did not write (``--out roster.csv`` replaced a class list without a word)."""
    for path, what, first in ((out, "grades file (--out)", ",".join(COLUMNS)),
                              (summary_path(out), "summary file", "student,")):
        check_writable_file(path, what)
        try:
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                line = f.readline(4096).rstrip("\r\n")
        except (FileNotFoundError, IsADirectoryError):
            continue
        if line and not line.startswith(first):
            raise ValueError(f"{what} {path} exists and is not the grader's (its first line is "
                                  f"{_encodable(line[:80])!r}); choose another --out, or move it away")


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
        path = student_csv(folder, s)
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


