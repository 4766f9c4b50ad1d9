"""Self-checks for the course exercises: call ``check_xxx(your_code)`` right after writing it.

Each check runs your function or class on several random inputs (different seeds, batch sizes, image
shapes, head counts) and compares it with the package's reference: the values, the dtype and device, one
backward pass (the gradients of the inputs and of every parameter), inputs left untouched, and every part
of the contract the exercise states (e.g. a ValueError). A hard-coded answer cannot pass: every case uses
fresh random numbers and fresh weights.

When your answer is wrong, the check does not only say "mismatch": it also computes the outputs of the
usual mistakes (forgotten 1/sqrt(d), softmax over the wrong axis, heads split as (d h), post-norm, ...)
and, if your output equals one of them, names the mistake. On success each check prints one line
``✓ check_xxx passed (N cases)`` and returns None; on failure it raises :class:`CheckError`.

A check runs in two halves: :func:`probe` (:mod:`vit_edu.classroom.engine`) runs your code and records
what it did, :func:`judge` (:mod:`vit_edu.classroom.judge`) decides from those records alone; the grader (:mod:`vit_edu.classroom.grading`)
runs them in different processes. The exercises themselves are tables in ``vit_edu/classroom/exercises_*.py``.
The checks never touch your global random state.

This module is the classroom's front door and stays at ``vit_edu.checks`` (every notebook says
``from vit_edu.checks import check_patchify``): a thin facade over :mod:`vit_edu.classroom`, which holds
the engine, the exercise tables, the grader, its sandbox and the nbgrader/handout tooling.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence

from .classroom.engine import CheckError, Exercise, Verdict
from .classroom.engine import probe as _probe
from .classroom.judge import PASSED as _PASSED
from .classroom.judge import judge as _judge
from .classroom.judge import run_check as _run
from .classroom.exercises_blocks import EXERCISES as _BLOCKS  # notebooks 04, 05, 07: assembling the model
from .classroom.exercises_build import EXERCISES as _BUILD  # notebooks 01-03: building the model's parts
from .classroom.exercises_look import EXERCISES as _LOOK  # notebooks 07-09: looking inside, the hybrid
from .classroom.exercises_loop import EXERCISES as _LOOP  # notebook 06: the schedule, a training step
from .classroom.exercises_train import EXERCISES as _TRAIN  # notebooks 00, 02, 04: counting, tables, norms

CHECKS: Dict[str, Exercise] = {**_BUILD, **_BLOCKS, **_TRAIN, **_LOOP, **_LOOK}


def probe(name: str, obj: Any, seed: int = 0) -> dict:
    """Run ``obj`` (the student's function or class) on the cases of exercise ``name``; record what it did.

    Returns plain data (tensors, numbers, strings, lists, dicts) that survives
    ``torch.save`` / ``torch.load(weights_only=True)``; decides nothing.
    """
    return _probe(_exercise(name), obj, seed)


def judge(name: str, observations: Any, seed: int = 0) -> Verdict:
    """Decide from ``observations`` (made by :func:`probe` with the same seed) without running student code."""
    return _judge(_exercise(name), observations, seed)


def _exercise(name: str) -> Exercise:
    if name not in CHECKS:
        raise KeyError(f"no exercise {name!r}; known: {', '.join(sorted(CHECKS))}")
    return CHECKS[name]


def _make(ex: Exercise) -> Callable[[Any], None]:
    """``check_<name>``: what a notebook calls; its docstring is the exercise's contract."""
    def check(obj: Any) -> None:
        _run(ex, obj)
    check.__name__ = check.__qualname__ = ex.check
    check.__module__ = __name__
    check.__doc__ = ex.doc
    return check


# One check per table entry, made here: an exercise added to a table becomes ``check_<name>`` with no other
# line (``check_patchify`` is exercises_build.PATCHIFY_EX's, and so on; ``sorted(CHECKS)`` lists them).
globals().update({ex.check: _make(ex) for ex in CHECKS.values()})


def passed_or(yours: Any, reference: Any, name: Optional[str] = None) -> Any:
    """``yours`` if it passed its check in this session, else ``reference`` (saying so in one line).

    Why: a demonstration after an exercise should use the student's own code, but a student who is stuck
    must not lose the rest of the notebook. ``name`` labels the message (default: ``yours.__name__``).
    """
    if any(obj is yours for obj in _PASSED.values()):
        return yours
    label = name or getattr(yours, "__name__", type(yours).__name__)
    ref = getattr(reference, "__qualname__", None) or getattr(reference, "__name__", None) or type(reference).__name__
    module = getattr(reference, "__module__", "") or ""
    ref = f"vit_edu's {ref}" if module.startswith("vit_edu") else ref
    print(f"\u21aa `{label}` has not passed its check yet, so this cell uses {ref} instead "
          f"(run the check cell again once yours works).")
    return reference


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (tuple, list)) or hasattr(value, "shape") and not hasattr(value, "item"):
        return str(tuple(value)) if not isinstance(value, str) else value
    return str(value)


def reveal(prediction: Any, measured: Any, *, what: str, rel_tol: Optional[float] = None,
           choices: Optional[Sequence[str]] = None) -> None:
    """Compare the learner's written prediction with the measurement, in one line; never raises.

    Why: predicting before looking is what turns a demonstration into a lesson. A number is right within
    ``rel_tol`` (exact when None); a word must be one of ``choices`` (case and spaces ignored); a shape or
    any other value must be equal.
    """
    if prediction is None or prediction is Ellipsis:
        print(f"(no prediction written) {what}: {_show(measured)}")
        return
    if choices is not None:
        norm = lambda v: " ".join(str(v).lower().split())  # noqa: E731
        allowed = [norm(c) for c in choices]
        if norm(prediction) not in allowed:
            print(f"? your prediction {prediction!r} is not one of {list(choices)}; {what}: {_show(measured)}")
            return
        right = norm(prediction) == norm(measured)
    elif isinstance(measured, (int, float)) and not isinstance(measured, bool):
        try:
            p = float(prediction)
        except (TypeError, ValueError):
            print(f"? your prediction {prediction!r} is not a number; {what}: {_show(measured)}")
            return
        tol = rel_tol if rel_tol is not None else 0.0
        right = math.isclose(p, float(measured), rel_tol=tol, abs_tol=0.0 if tol else 1e-12)
    else:
        try:
            right = tuple(prediction) == tuple(measured) if hasattr(measured, "__len__") and not isinstance(
                measured, str) else prediction == measured
        except TypeError:
            right = False
    within = f" (within {rel_tol:.0%})" if rel_tol and right and choices is None else ""
    mark = "\u2713 right" if right else "\u2717 not quite"
    print(f"{mark}{within}: you predicted {_show(prediction)}; {what}: {_show(measured)}")


__all__ = ["CheckError", "Verdict", "CHECKS", "probe", "judge", "passed_or", "reveal"] + [
    ex.check for ex in CHECKS.values()]
