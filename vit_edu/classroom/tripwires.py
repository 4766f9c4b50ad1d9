"""Where a child's record does not fit the run that wrote it: trip-wires for a record edited from the answer cells.

The answer cells share the child's process with the probe, so they can reach the record; the grader reads it as
data (:mod:`vit_edu.classroom.grading`) and flags a record that contradicts its own run. A careful forgery passes
(docs/classroom.md, *What it cannot see*): these catch the careless one.
"""

from __future__ import annotations

from typing import Any, List, Optional

from .report import _text


def _labels(cells: Any) -> Optional[List[Any]]:
    if not isinstance(cells, list):
        return None
    return [c.get("label") if isinstance(c, dict) else None for c in cells]


def _names(x: Any) -> set:
    return {k for k in x if isinstance(k, (str, int))} if isinstance(x, (dict, list)) else set()


def record_inconsistencies(record: Any, previous: Any, steps: List[dict]) -> List[str]:
    """Where the child's record does not fit the run that wrote it: trip-wires for a record edited from the
    answer cells (they share the child's process, so they can reach the record; see docs/classroom.md). Each
    one holds for every record the child writes by itself, killed or not:

    * no exercise is both observed and failed at its check (a forged observation over a check that raised, e.g.
      a NameError because the answer was never defined);
    * the record's number says at which step it was written (one at the start of each step, one at the end),
      and what it says was running, which cells ran and which checks have results fit that step;
    * the other slot is the record one step earlier, and what it held (cells, results, files noted outside,
      replaced code, calls of the package) is all still there.

    A student who reads the grader's code can write a record that passes all of them: these catch the careless
    forgery only, and the answer cells are what to read."""
    if not isinstance(record, dict):
        return []
    why: List[str] = []
    observed = record.get("exercises") if isinstance(record.get("exercises"), dict) else {}
    missing = record.get("missing") if isinstance(record.get("missing"), dict) else {}
    both = sorted(str(n) for n in set(observed) & set(missing))
    if both:
        why.append(f"observations for {', '.join(both[:3])} although {'its check' if len(both) == 1 else 'their checks'} "
                   f"failed")
    seq = record.get("seq")
    if type(seq) is not int or not 1 <= seq <= len(steps) + 1:
        why.append(f"record number {_text(repr(seq), 40)} for a run of {len(steps)} steps")
    else:
        done = steps[:seq - 1]
        running = steps[seq - 1]["label"] if seq <= len(steps) else None
        if record.get("running") != running:
            why.append(f"says {_text(record.get('running'), 60) or 'nothing'} was running at step {seq}")
        if _labels(record.get("cells")) != [s["label"] for s in done if s["kind"] in ("setup", "answer")]:
            why.append("its list of cells run is not the notebook's")
        early = sorted(str(n) for n in (set(observed) | set(missing))
                       - {s["name"] for s in done if s["kind"] == "check"})
        if early:
            why.append(f"results for {', '.join(early[:3])} before its check ran")
    if isinstance(previous, dict):
        if type(seq) is int and previous.get("seq") != seq - 1:
            why.append("its two record slots are not one step apart")
        lost = [key for key in ("exercises", "missing", "package", "outside", "replaced", "unwatched")
                if not _names(previous.get(key)) <= _names(record.get(key))]
        old_cells, cells = _labels(previous.get("cells")), _labels(record.get("cells"))
        if old_cells is not None and (cells is None or cells[:len(old_cells)] != old_cells):
            lost.append("cells")
        if lost:
            why.append(f"lost {', '.join(lost)} from one step to the next")
    return why
