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

A check runs in two halves (:mod:`vit_edu.classroom.engine`): :func:`probe` runs your code and records
what it did, :func:`judge` decides from those records alone; the grader (:mod:`vit_edu.classroom.grading`)
runs them in different processes. The exercises themselves are tables in ``vit_edu/classroom/exercises_*.py``.
The checks never touch your global random state.

This module is the classroom's front door and stays at ``vit_edu.checks`` (every notebook says
``from vit_edu.checks import check_patchify``): a thin facade over :mod:`vit_edu.classroom`, which holds
the engine, the exercise tables, the grader, its sandbox and the nbgrader/handout tooling.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from .classroom.engine import CheckError, Exercise, Verdict
from .classroom.engine import judge as _judge
from .classroom.engine import probe as _probe
from .classroom.engine import run_check as _run
from .classroom.exercises_build import EXERCISES as _BUILD  # notebooks 01-05, 07: building the model
from .classroom.exercises_look import EXERCISES as _LOOK  # notebooks 07-09: looking inside, the hybrid
from .classroom.exercises_train import EXERCISES as _TRAIN  # notebooks 00, 02, 04, 06: counting, norms, training

CHECKS: Dict[str, Exercise] = {**_BUILD, **_TRAIN, **_LOOK}


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


def _make(name: str) -> Callable[[Any], None]:
    def check(obj: Any) -> None:
        _run(CHECKS[name], obj)
    check.__name__ = check.__qualname__ = f"check_{name}"
    check.__doc__ = CHECKS[name].doc
    return check


check_patchify = _make("patchify")  # 01
check_patch_embedding = _make("patch_embedding")  # 01
check_param_count = _make("param_count")  # 00
check_cls_and_pos = _make("cls_and_pos")  # 02
check_sincos_2d = _make("sincos_2d")  # 02
check_attention = _make("attention")  # 03
check_multi_head_attention = _make("multi_head_attention")  # 03
check_layer_norm = _make("layer_norm")  # 04
check_mlp = _make("mlp")  # 04
check_encoder_block = _make("encoder_block")  # 04
check_vit_forward = _make("vit_forward")  # 05
check_lr_schedule = _make("lr_schedule")  # 06
check_train_step = _make("train_step")  # 06
check_rollout = _make("rollout")  # 07
check_mean_attention_distance = _make("mean_attention_distance")  # 07
check_pos_embed_similarity = _make("pos_embed_similarity")  # 08
check_resize_pos_embed = _make("resize_pos_embed")  # 08
check_bottleneck = _make("bottleneck")  # 09

__all__ = ["CheckError", "Verdict", "CHECKS", "probe", "judge"] + [f"check_{name}" for name in CHECKS]
assert all(name in globals() for name in __all__), "every exercise in CHECKS needs its check_<name> above"
