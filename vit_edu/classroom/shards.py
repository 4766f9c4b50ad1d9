"""A class larger than one machine: ``grade --shard i/n`` on each of n machines, then ``grade --merge``.

Each student belongs to one shard, decided by a hash of the folder's name alone (not by the order or the
number of folders), so a shard rerun on another machine, or after a student was added, grades the same
students; a Slurm array (``--shard $SLURM_ARRAY_TASK_ID/n``) or a Kubernetes indexed job
(``--shard $((JOB_COMPLETION_INDEX + 1))/n``) runs the parts, and the merge refuses parts that do not fit
together (another reference or other checks, a missing or repeated shard, a student in two parts:
:func:`merge_shards`). Recipe: docs/classroom.md.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .reference import _reference_path, fingerprint, load_reference
from .report import (COLUMNS, STATE_FILE, _load_state, check_outputs, format_table, read_student_csv, students_dir,
                     summary_path, write_results)

MAX_SHARDS = 100_000


def shard_of(student: str, n: int) -> int:
    """The shard (1..n) of a student folder's name: stable across machines, runs and class sizes."""
    digest = hashlib.sha256(student.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def check_shard(shard: Tuple[int, int]) -> None:
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and 1 <= n <= MAX_SHARDS and 1 <= i <= n):
        raise ValueError(f"shard must be i/n with 1 <= i <= n <= {MAX_SHARDS}, got {i}/{n}")


def parse_shard(text: str) -> Tuple[int, int]:
    """'3/8' -> (3, 8); a one-line ValueError naming the flag otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ValueError(f"--shard must be i/n (e.g. 3/8: the third of 8 parts), got {text!r}")
    shard = (int(match.group(1)), int(match.group(2)))
    try:
        check_shard(shard)
    except ValueError as err:
        raise ValueError(f"--shard: {err}") from None
    return shard


def merge_shards(parts: Sequence["str | Path"], out: "str | Path" = "grades.csv",
                 reference_dir: "str | Path | None" = None, verbose: bool = True, detail: bool = False) -> List[dict]:
    """Join the CSVs of ``grade --shard i/n --out PART`` into ``out`` and its summary (the same files one
    machine would have written). Refused, before writing, unless the parts are shards 1..n of one split,
    each complete (nothing still running), graded against the same reference as ``reference_dir`` and with the
    same checks (:func:`.reference.checks_fingerprint`: a course update between two shards changes verdicts)."""
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
    checks_of: Dict[str, Path] = {}
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
        checked = str(state.get("checks") or "unrecorded (an older vit_edu)")
        if checks_of and checked not in checks_of:
            first, earlier = next(iter(checks_of.items()))
            raise ValueError(f"{part} was graded with other checks ({checked}) than {earlier} ({first}): vit_edu's "
                             f"exercise tables, engine or judge changed between the shards; grade every shard with "
                             f"one version (--force)")
        checks_of.setdefault(checked, part)
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
        mine = read_student_csv(part)
        for row in mine:
            if owner.setdefault(row["student"], part) != part:
                raise ValueError(f"student {row['student']!r} is in {owner[row['student']]} and {part}")
            rows.append(row)
        listed = state.get("class") if isinstance(state.get("class"), list) else []  # none from an older vit_edu
        ungraded = sorted({s for s in listed if isinstance(s, str)} - {r["student"] for r in mine})
        if ungraded:  # stopped (Ctrl-C, a time limit of the batch job) before every student of the part was done
            raise ValueError(f"{part}: shard {i}/{n} has not finished ({len(ungraded)} of its students not graded "
                             f"yet: {', '.join(map(repr, ungraded[:3]))}{', ...' if len(ungraded) > 3 else ''}); "
                             f"rerun it with the same command to go on")
    assert total is not None
    missing = sorted(set(range(1, total + 1)) - set(seen))
    if missing:
        raise ValueError(f"shard(s) {', '.join(f'{i}/{total}' for i in missing)} missing: give every part's CSV")
    students = sorted(owner)
    order = {(nb.name, ex.name): k for k, (nb, ex) in enumerate((nb, ex) for nb in reference for ex in nb.exercises)}
    rows.sort(key=lambda r: (r["student"], order.get((r["notebook"], r["exercise"]), len(order))))
    check_outputs(Path(out))
    write_results(Path(out), rows, students, reference)
    if verbose:
        print(format_table(rows, students, reference, detail))
        print(f"merged {total} shards ({len(students)} students) into {out} and {summary_path(out)}")
    return rows
