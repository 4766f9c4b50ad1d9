"""The exercises of notebook 06: the learning-rate schedule and one training step.

Tables like those of :mod:`.exercises_train`: cases built from the seed (a step after the end of training,
schedules without warm-up), the reference (the package's own code in :mod:`vit_edu.training.loop`), and the
usual mistakes with the message that explains each. ``train_step`` changes the model and the optimizer it
gets, so it brings its own probing and judging halves (``Exercise.probe_case`` / ``Exercise.judge_case``);
:mod:`.engine` does the rest.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .engine import Case, Ctx, Exercise, Mutant, build_cases, error_record, mix_seed, record_value
from .exercises_train import _is_none, _is_number, _randint
from .judge import Malformed, numpy_number, parse_record


# ====================================================================================== 06 lr_schedule
def _lr(step: int, total: int, warmup: int, base: float, *, from_zero: bool = False, no_warmup: bool = False,
        span: str = "decay", clamp: bool = True, shape: str = "cosine", floor: float = 0.0, warm_div: int = 0,
        warm_end: int = 0) -> float:
    """The learning rate of one step, with switchable mistakes; the defaults give the contract's schedule."""
    if step < warmup + warm_end and warmup > 0 and not no_warmup:
        return base * (step if from_zero else step + 1) / (warmup + warm_div)
    if span == "decay":
        t = (step - warmup) / (total - warmup)
    else:  # over all steps, warm-up included
        t = step / total
    if clamp:
        t = min(1.0, t)
    if shape == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * t))
    elif shape == "cosine32":  # the cosine taken in float32 (torch.cos of a float32 tensor, np.float32)
        f = 0.5 * (1.0 + float(torch.cos(torch.tensor(math.pi * t, dtype=torch.float32))))
    elif shape == "cos":
        f = math.cos(math.pi * t)
    elif shape == "no_pi":
        f = 0.5 * (1.0 + math.cos(t))
    elif shape == "no_half":
        f = 1.0 + math.cos(math.pi * t)
    elif shape == "sin":
        f = 0.5 * (1.0 + math.sin(math.pi * t))
    elif shape == "degrees":
        f = 0.5 * (1.0 + math.cos(180.0 * t))
    elif shape == "constant":
        f = 1.0
    else:
        f = 1.0 - t
    return base * (floor + (1.0 - floor) * f)


def _lr_reference(ctx: Ctx, step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    from ..training import warmup_cosine

    return base_lr * warmup_cosine(step, warmup_steps, total_steps)


def _lr_mutants(ctx: Ctx, step: int, total: int, warmup: int, base: float) -> List[Mutant]:
    def m(**kw: Any) -> Callable[[], float]:
        return lambda: _lr(step, total, warmup, base, **kw)

    return [
        ("the warm-up starts at 0: step t gets base_lr * (t + 1) / warmup_steps (use step + 1), so the first step "
         "already learns and step warmup_steps - 1 reaches base_lr", m(from_zero=True)),
        ("the warm-up divides by warmup_steps + 1; it divides by warmup_steps, base_lr * (step + 1) / warmup_steps, "
         "so that its last step (warmup_steps - 1) reaches base_lr", m(warm_div=1)),
        ("step warmup_steps is still taken as warm-up (step <= warmup_steps); the warm-up is step < warmup_steps, "
         "and step warmup_steps starts the cosine at base_lr", m(warm_end=1)),
        ("the result is the schedule's factor (between 0 and 1); multiply it by base_lr",
         lambda: _lr(step, total, warmup, 1.0)),
        ("total_steps and warmup_steps are swapped; the argument order is warmup_cosine_lr(step, total_steps, "
         "warmup_steps, base_lr) (vit_edu.training.warmup_cosine takes them in the other order)",
         lambda: _lr_swapped(step, total, warmup, base)),
        ("the cosine runs over all total_steps steps; it starts after the warm-up: "
         "t = (step - warmup_steps) / (total_steps - warmup_steps)", m(span="all")),
        ("the cosine runs over all total_steps steps and is not held at 0 after the end; it starts after the "
         "warm-up: t = (step - warmup_steps) / (total_steps - warmup_steps), at most 1", m(span="all", clamp=False)),
        ("there is no warm-up: during the first warmup_steps steps the rate rises linearly, "
         "base_lr * (step + 1) / warmup_steps", m(no_warmup=True)),
        ("there is no warm-up: during the first warmup_steps steps the rate rises linearly, "
         "base_lr * (step + 1) / warmup_steps", m(no_warmup=True, span="all")),
        ("the decay is base_lr * cos(pi t); it is base_lr * (1 + cos(pi t)) / 2, from base_lr down to 0",
         m(shape="cos")),
        ("cos(t) instead of cos(pi t): half a cosine period must span the decay, (1 + cos(pi t)) / 2",
         m(shape="no_pi")),
        ("the decay is linear; the contract is half a cosine: base_lr * (1 + cos(pi t)) / 2", m(shape="linear")),
        ("the factor 1/2 is missing: (1 + cos(pi t)) runs from 2 down to 0, so the rate starts the decay at twice "
         "base_lr; use base_lr * (1 + cos(pi t)) / 2", m(shape="no_half")),
        ("sin instead of cos: (1 + sin(pi t)) / 2 starts at half of base_lr and rises first; the decay is "
         "(1 + cos(pi t)) / 2, from base_lr down to 0", m(shape="sin")),
        ("the angle is in degrees (cos(180 t)); math.cos takes radians: cos(math.pi * t)", m(shape="degrees")),
        ("there is no decay after the warm-up: the rate stays at base_lr; it should follow half a cosine down to 0, "
         "base_lr * (1 + cos(pi t)) / 2", m(shape="constant")),
        ("after total_steps the rate must stay at 0; yours climbs back up the cosine (hold t at 1: min(1, t))",
         m(clamp=False)),
        ("the decay is one step ahead: step counts from 0, so the first decay step (step = warmup_steps) has "
         "t = 0 and the full base_lr", lambda: _lr(step + 1, total, warmup, base) if step >= warmup else
         _lr(step, total, warmup, base)),
        ("the decay divides by total_steps - warmup_steps - 1 (so that step total_steps - 1 gets 0); the contract "
         "divides by total_steps - warmup_steps: the rate reaches 0 at step total_steps",
         lambda: _lr(step, total - 1, warmup, base)),
        ("the rate should decay to 0 at the end of training, not to a floor", m(floor=0.1)),
        ("the rate should decay to 0 at the end of training, not to a floor", m(floor=0.01)),
        # last: a real mistake close to the schedule is named by its own row first
        ("the rate is right only to float32 precision: the cosine was taken in float32 (torch.cos of a float32 "
         "tensor, np.float32), whose last digits are lost near the end of the schedule; use math.cos, or a float64 "
         "tensor (the cells after the check compare your schedule with vit_edu's to 1e-12)", m(shape="cosine32")),
    ]


def _lr_swapped(step: int, total: int, warmup: int, base: float) -> float:
    """The contract's schedule called with total and warm-up the other way round."""
    total, warmup = warmup, total
    if step < warmup:
        return base * (step + 1) / warmup
    if step >= total:
        return 0.0
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _lr_diagnose(ctx: Ctx, got: Any, step: int, total_steps: int, warmup_steps: int, base_lr: float
                 ) -> Optional[str]:
    if _is_none(got):
        return "warmup_cosine_lr returned None: did you forget to `return` the learning rate?"
    if isinstance(got, torch.Tensor):
        return ("return a Python float (math.cos, or .item() at the end), not a tensor: an optimizer's param_group "
                "holds a plain number")
    if not _is_number(got):
        return f"return a Python float, got {getattr(got, 'type', type(got).__name__)}"
    return None


def _lr_cases() -> List[Case]:
    cases = []
    warm = _randint(5, 15)
    total = warm + _randint(40, 120)
    base = round([0.5, 1.0, 0.1][_randint(0, 2)] * (1 + float(torch.rand(()))), 4)
    mid = warm + _randint(2, total - warm - 2)
    for step in [0, 1, warm // 2, warm - 1, warm, warm + 1, mid, (mid + total) // 2, total - 1, total, total + 1,
                 total + 17]:
        cases.append(Case((step, total, warm, base)))
    total = _randint(20, 60)
    base = round(3e-4 * (1 + float(torch.rand(()))), 7)
    for step in [0, 1, total // 3, total - 1, total, total + 5]:
        cases.append(Case((step, total, 0, base),
                          label=f"step={step}, total_steps={total}, warmup_steps=0 (no warm-up), base_lr={base}"))
    warm = _randint(50, 150)
    total = warm + _randint(300, 900)
    for _ in range(6):
        cases.append(Case((_randint(0, total + 50), total, warm, 2e-3)))
    return cases


LR_SCHEDULE_EX = Exercise(
    name="lr_schedule",
    package=("vit_edu.training.loop.warmup_cosine",),
    kind="function", call="warmup_cosine_lr(step, total_steps, warmup_steps, base_lr)", python_float=True,
    cases=_lr_cases, reference=_lr_reference, mutants=_lr_mutants, diagnose=_lr_diagnose, rtol=1e-6, atol=1e-12,
    doc="""Check ``warmup_cosine_lr(step, total_steps, warmup_steps, base_lr) -> float``.

    base_lr * (step + 1) / warmup_steps while step < warmup_steps, then
    base_lr * (1 + cos(pi * t)) / 2 with t = min(1, (step - warmup_steps) / (total_steps - warmup_steps)):
    0 at and after total_steps. Compared with ``vit_edu.training.warmup_cosine`` (times base_lr) on three
    schedules, one without warm-up, including steps past the end.
    """,
)



# ======================================================================================== 06 train_step
# The student's train_step changes a model and an optimizer, so it cannot go through the generic call: the
# probe runs two steps itself (the model arrives in eval mode, dropout on when trained, the same random
# stream for the dropout masks as the judge's), and records the returned values, the parameters and the
# gradients after each step; the judge replays the same two steps with the reference and with the usual
# mistakes and compares.
_STEPS = 2


def _train_cases() -> List[Case]:
    from ..config import ViTConfig
    from ..vit import VisionTransformer

    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=32, depth=1,
                                      heads=2, mlp_dim=64, dropout=0.2))
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 24), torch.nn.GELU(),
                              torch.nn.Dropout(0.3), torch.nn.Linear(24, 3))
    stale = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 24), torch.nn.GELU(),
                                torch.nn.Dropout(0.3), torch.nn.Linear(24, 3))
    for p in stale.parameters():  # what an earlier cell's loss.backward() leaves: this batch's step must not use it
        p.grad = torch.randn_like(p)
    return [
        Case((vit, torch.randn(6, 3, 16, 16), torch.randint(0, 5, (6,)),
              torch.optim.SGD(vit.parameters(), lr=0.1, momentum=0.9)),
             label="a small ViT with dropout 0.2 (in eval mode), images [6, 3, 16, 16], labels [6] of 5 classes, "
                   "SGD(lr=0.1, momentum=0.9), two calls"),
        Case((mlp, torch.randn(4, 2, 6, 6), torch.randint(0, 3, (4,)),
              torch.optim.SGD(mlp.parameters(), lr=0.2, weight_decay=0.01)),
             label="an MLP with dropout 0.3 (in eval mode), images [4, 2, 6, 6], labels [4] of 3 classes, "
                   "SGD(lr=0.2, weight_decay=0.01), two calls"),
        Case((stale, torch.randn(4, 2, 6, 6), torch.randint(0, 3, (4,)), torch.optim.SGD(stale.parameters(), lr=0.2)),
             label="the same MLP arriving with gradients left from an earlier backward pass (in eval mode), "
                   "images [4, 2, 6, 6], labels [4] of 3 classes, SGD(lr=0.2), two calls"),
    ]


def _step_seed(seed: int, index: int, step: int) -> int:
    return mix_seed("train_step", seed, index, step)


def _train_probe(obj: Any, case: Case, index: int, seed: int) -> Dict[str, Any]:
    """Runs in the student's process: two calls of the student's train_step; records, decides nothing."""
    model, images, labels, optimizer = case.args
    before = (images.clone(), labels.clone())
    steps: List[Dict[str, Any]] = []
    events: List[str] = []  # what the student's step did, in order (for the message only: the verdict is replayed)
    train_forwards: List[bool] = []  # the model's calls in training mode, in order: with a graph or not

    def on_forward(module: Any, inputs: Any, output: Any) -> None:
        if module.training:  # each draws dropout masks: True for the one with a graph
            train_forwards.append(isinstance(output, torch.Tensor) and output.requires_grad)
        if isinstance(output, torch.Tensor) and output.requires_grad:
            events.append("forward")
            output.register_hook(lambda grad: events.append("backward"))
        else:
            events.append("forward without a graph")

    def watched(name: str, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "step":
                has = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
                events.append("step" if has else "step without gradients")
            else:
                events.append(name)
            return method(*args, **kwargs)
        return call

    class Calls(torch.overrides.TorchFunctionMode):  # sees loss.backward() and torch.autograd.backward alike
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            if getattr(func, "__name__", "") == "backward":
                events.append("loss.backward()")
            return func(*args, **(kwargs or {}))

    hook = model.register_forward_hook(on_forward)
    optimizer.step, optimizer.zero_grad = watched("step", optimizer.step), watched("zero_grad", optimizer.zero_grad)
    try:
        for step in range(_STEPS):
            model.eval()  # the contract: the model may arrive in evaluation mode
            rec: Dict[str, Any] = {"error": None}
            torch.manual_seed(_step_seed(seed, index, step))
            events.clear()
            train_forwards.clear()
            try:
                with torch.enable_grad(), Calls():
                    out = obj(model, images, labels, optimizer)
            except Exception as e:  # noqa: BLE001 - the student's error is an observation
                rec["error"] = error_record(e)
                steps.append(rec)
                break
            rec["events"] = list(events[:20])
            rec["train_forwards"] = list(train_forwards[:20])
            _record_step(rec, out, model)
            steps.append(rec)
    finally:
        hook.remove()
        del optimizer.step, optimizer.zero_grad  # the class's methods again
    return {"steps": steps, "images_changed": not torch.equal(images, before[0]),
            "labels_changed": not torch.equal(labels, before[1])}


def _record_step(rec: Dict[str, Any], out: Any, model: Any) -> None:
    rec["output"] = record_value(out)
    rec["training"] = bool(model.training)
    rec["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec["grads"] = {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}


def _unchanged_message(events: Any) -> str:
    """Why the parameters did not move, from the order of the student's calls (recorded in its process)."""
    seen = [e for e in events if isinstance(e, str)] if isinstance(events, list) else []
    if "forward without a graph" in seen and "forward" not in seen:
        return ("the parameters did not change and received no gradient: the logits were computed under "
                "torch.no_grad() (or the model's output was detached), so loss.backward() cannot reach the weights")
    if "loss.backward()" in seen and "forward" in seen and "backward" not in seen:
        return ("the parameters did not change and received no gradient: loss.backward() ran, but the logits were "
                "detached from the model (.detach(), .data) before the loss, so no gradient reaches the weights")
    if seen and "backward" not in seen:
        return ("the parameters did not change: loss.backward() is missing, so no gradient reaches the weights and "
                "optimizer.step() has nothing to use; call loss.backward() between the loss and optimizer.step()")
    if "backward" in seen and "step" not in seen and "step without gradients" not in seen:
        return "the parameters did not change: optimizer.step() is missing; call it once, after loss.backward()"
    if "backward" in seen and "step without gradients" in seen:
        last_backward = len(seen) - 1 - seen[::-1].index("backward")
        if "zero_grad" in seen[last_backward:]:
            return ("optimizer.zero_grad() comes between loss.backward() and optimizer.step(): it clears the gradients "
                    "the step needs; call it at the start of the step, before the forward pass")
        return ("optimizer.step() comes before loss.backward(): it then has no gradient to use; the order is "
                "zero_grad(), forward, loss, backward(), step()")
    return ("the parameters did not change: optimizer.step() is missing, or comes before loss.backward() (it "
            "then has no gradient to use); call it once, after loss.backward()")


def _replay(case: Case, seed: int, index: int, *, zero_grad: Any = True, step: bool = True, train: bool = True,
            loss: str = "ce", clip: Optional[float] = None, after: bool = False, extra: Sequence[int] = ()
            ) -> Dict[str, Any]:
    """The two steps on the judge's own copy of the case, with switchable mistakes; the defaults are right.
    ``extra[k]``: forwards in training mode before step k's own (each draws its dropout masks: an accuracy
    computed on another pass, right, but the masks of the loss's pass are then drawn later)."""
    model, images, labels, optimizer = case.args
    losses, params = [], []
    for k in range(_STEPS):
        model.train(train)
        torch.manual_seed(_step_seed(seed, index, k))
        with torch.no_grad():
            for _ in range(extra[k] if k < len(extra) else 0):
                model(images)
        with torch.enable_grad():
            if zero_grad is True:
                optimizer.zero_grad()
            logits = model(images)
            if loss == "ce":
                value = F.cross_entropy(logits, labels)
            elif loss == "sum":
                value = F.cross_entropy(logits, labels, reduction="sum")
            elif loss == "smooth":
                value = F.cross_entropy(logits, labels, label_smoothing=0.1)
            elif loss == "nll_logits":
                value = F.nll_loss(logits, labels)
            else:  # "mse": squared error between the probabilities and the one-hot labels
                value = F.mse_loss(logits.softmax(-1), F.one_hot(labels, logits.shape[-1]).to(logits.dtype))
            value.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if step:
                optimizer.step()
            if zero_grad == "after":
                optimizer.zero_grad()
            reported = F.cross_entropy(model(images), labels) if after else value
        losses.append(float(reported.item()))
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return {"losses": losses, "params": params}


_TRAIN_MUTANTS: List[Tuple[str, Dict[str, Any]]] = [
    ("gradients accumulate over the calls: clear them at the start of each step with optimizer.zero_grad() "
     "(PyTorch adds new gradients to the old ones)", dict(zero_grad=False)),
    ("the gradients are cleared after the step, not before the backward pass: a model that arrives with "
     "gradients left from an earlier backward pass adds them to this batch's; call "
     "optimizer.zero_grad() at the start of the step", dict(zero_grad="after")),
    ("the forward pass ran in evaluation mode (dropout off): call model.train() first; the model may arrive in "
     "eval mode", dict(train=False)),
    ("the loss is summed over the batch; the contract is the mean cross-entropy (F.cross_entropy's default)",
     dict(loss="sum")),
    ("the loss uses label smoothing; the contract is the plain mean cross-entropy, F.cross_entropy(logits, labels)",
     dict(loss="smooth")),
    ("F.nll_loss on raw logits: nll_loss expects log-probabilities; use F.cross_entropy(logits, labels) "
     "(or F.nll_loss(F.log_softmax(logits, -1), labels))", dict(loss="nll_logits")),
    ("the loss is not the cross-entropy (a squared error on the probabilities?): use F.cross_entropy(logits, labels)",
     dict(loss="mse")),
    ("the returned loss was computed after the update; return the loss of this batch from before "
     "optimizer.step()", dict(after=True)),
] + [(f"the gradients are clipped (to norm {c:g}); the contract asks for no clipping here (fit does it "
      f"separately)", dict(clip=c)) for c in (1.0, 0.5, 0.1)]


def _params_close(a: Any, b: Dict[str, torch.Tensor]) -> bool:
    return (isinstance(a, dict) and set(a) == set(b) and all(
        isinstance(a[n], torch.Tensor) and a[n].shape == b[n].shape
        and bool(torch.allclose(a[n].double(), b[n].double(), rtol=1e-4, atol=1e-6)) for n in b))


def _train_judge(ctx: Ctx, custom: Any, model: Any, images: torch.Tensor, labels: torch.Tensor, optimizer: Any
                 ) -> Optional[str]:
    """Runs in the judge's process on its own copy of the case; never calls student code."""
    if not isinstance(custom, dict) or not isinstance(custom.get("steps"), list) or not custom["steps"]:
        raise Malformed("train_step record")
    recs = custom["steps"]
    if custom.get("images_changed") or custom.get("labels_changed"):
        which = "images" if custom.get("images_changed") else "labels"
        return f"your code changed its input `{which}` in place; compute new tensors instead"
    for k, rec in enumerate(recs):
        if not isinstance(rec, dict):
            raise Malformed("train_step step record")
        err = rec.get("error")
        if isinstance(err, dict):
            msg, kind = str(err.get("message", "")), str(err.get("type", "an error"))
            if "NotImplementedError" in (err.get("types") or [kind]):
                return ("not implemented yet: train_step raised NotImplementedError. Replace "
                        "`raise NotImplementedError()` with your code.")
            if "does not require grad" in msg:
                return (f"loss.backward() failed ({msg}): the loss has no graph back to the weights; the logits were "
                        f"computed under torch.no_grad() or detached")
            if "has no attribute 'backward'" in msg:
                return (f"{kind}: {msg}: loss.item() gives a plain float, which has no graph; call .item() only for "
                        f"the returned value, after loss.backward()")
            return f"train_step raised {kind}: {msg} (call {k + 1})"
    if len(recs) != _STEPS:
        raise Malformed("train_step steps")
    got = [parse_record(rec["output"] if isinstance(rec.get("output"), dict) else {"kind": "other"}) for rec in recs]
    first = got[0]
    if _is_none(first):
        return "train_step returned None: return the loss of the batch, loss.item()"
    if isinstance(first, torch.Tensor) or hasattr(first, "shape"):
        return ("return loss.item() (a Python float), not the loss tensor: a tensor keeps the whole graph of the step "
                "alive, and summing them over an epoch keeps every graph")
    numpy = next((numpy_number(rec["output"]) for rec in recs if numpy_number(rec.get("output"))), "")
    if numpy:
        return f"return loss.item() (a Python float), not a {numpy}: float(loss) or loss.item() makes one"
    if not all(_is_number(g) for g in got):
        return f"train_step should return a Python float, got {getattr(first, 'type', type(first).__name__)}"
    params = [rec.get("params") for rec in recs]
    losses = [float(g) for g in got]

    def same(run: Dict[str, Any]) -> bool:
        return (all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(losses, run["losses"]))
                and all(_params_close(p, q) for p, q in zip(params, run["params"])))

    seed, index = ctx.seed, ctx.index
    want = _replay(_rebuild(ctx), seed, index)
    forwards = [rec.get("train_forwards") if isinstance(rec.get("train_forwards"), list) else [] for rec in recs]
    extra = [len(f) - 1 - f[::-1].index(True) if True in f else 0 for f in forwards]  # before the one with a graph
    if not same(want) and any(extra) and same(_replay(_rebuild(ctx), seed, index, extra=extra)):
        want = _replay(_rebuild(ctx), seed, index, extra=extra)  # right: another pass drew its masks first
    if same(want):
        if not all(rec.get("training") is True for rec in recs):
            return "leave the model in training mode after the step (model.train()), as fit expects"
        return None
    start = {n: p.detach() for n, p in _rebuild(ctx).args[0].named_parameters()}
    if all(_params_close(p, start) for p in params):
        return _unchanged_message(recs[0].get("events"))
    for message, kw in _TRAIN_MUTANTS:
        if same(_replay(_rebuild(ctx), seed, index, **kw)):
            return message
    if all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(losses, want["losses"])):
        return ("the returned losses are right but the parameters after the step are not: is the optimizer the one "
                "passed in, stepped exactly once, after one backward pass?")
    many = max((len(f) for f in forwards), default=0)
    if many > 1:
        return (f"wrong result: losses {[round(v, 4) for v in losses]}, expected "
                f"{[round(v, 4) for v in want['losses']]}; your step runs the model {many} times in training mode, "
                f"and every run draws new dropout masks: compute the logits once, use them for the loss (and for "
                f"anything else, e.g. an accuracy from logits.detach()), and run any other pass in model.eval()")
    return (f"wrong result: losses {[round(v, 4) for v in losses]}, expected {[round(v, 4) for v in want['losses']]}; "
            f"none of the usual mistakes matches (the order is: model.train(), optimizer.zero_grad(), logits, "
            f"F.cross_entropy, loss.backward(), optimizer.step(), return loss.item())")


def _rebuild(ctx: Ctx) -> Case:
    """A fresh copy of the case (the judge's replays change the model)."""
    return build_cases(ctx.exercise, ctx.seed)[ctx.index]


TRAIN_STEP_EX = Exercise(
    name="train_step",
    package=("vit_edu.training.loop.train_one_epoch",),
    kind="function", call="train_step(model, images, labels, optimizer)",
    cases=_train_cases, reference=lambda ctx, *args: None, probe_case=_train_probe, judge_case=_train_judge,
    doc="""Check ``train_step(model, images, labels, optimizer) -> float``.

    model.train(); clear the gradients; logits = model(images); mean F.cross_entropy(logits, labels);
    backward; one optimizer step; return the loss (before the step) as a Python float; images and labels
    unchanged. Two calls each on a small ViT and an MLP, both with dropout and arriving in eval mode, and on
    the MLP arriving with gradients left from an earlier backward pass, compared (losses and parameters after
    each call) with the same steps done by the reference.
    """,
)


EXERCISES: Dict[str, Exercise] = {ex.name: ex for ex in [LR_SCHEDULE_EX, TRAIN_STEP_EX]}
