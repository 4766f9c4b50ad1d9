"""The judging half of a check (:mod:`.engine` holds the exercise, its cases and the probing half).

* :func:`judge` rebuilds the cases of an exercise from the seed, computes the reference itself and compares it
  with the observations the probe recorded: values, dtype and device, inputs left untouched, the repeated calls,
  one backward pass (input and parameter gradients by name), the exercise's contract. It never calls student code,
  treats the observations as untrusted data (:func:`parse_record`; a string for a tensor is a failure,
  :class:`Malformed`, not a crash) and, when the answer is wrong, names the usual mistake that matches.
* :func:`run_check`: probe and judge in one process (a check cell); :data:`PASSED` remembers what passed.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .engine import (FORMAT, Case, CheckError, ContractError, Ctx, Exercise, Verdict, _grad_leaves, _leaves,
                     build_cases, identical, other_inputs, param_value, probe, upstream)


# ------------------------------------------------------------------------------------------------- judge
class _Fail(Exception):
    """A verdict: the message says what is wrong."""


class Malformed(Exception):
    """The observations do not have the expected layout (forged or corrupt)."""


def _get(d: Any, key: str, types: Any, optional: bool = False) -> Any:
    if not isinstance(d, dict):
        raise Malformed(f"expected a dict around {key!r}, got {type(d).__name__}")
    if key not in d or d[key] is None:
        if optional:
            return None
        raise Malformed(f"{key!r} is missing")
    v = d[key]
    if not isinstance(v, types):
        raise Malformed(f"{key!r} should be {types}, got {type(v).__name__}")
    return v


def _tensor_dict(d: Any, what: str) -> Dict[str, Optional[torch.Tensor]]:
    if isinstance(d, dict) and all(isinstance(k, str) and (v is None or isinstance(v, torch.Tensor)) for k, v in d.items()):
        return d
    raise Malformed(f"{what} should map names to tensors")


def default_label(ex: Exercise, case: Case) -> str:
    if case.label:
        return case.label

    def one(name: str, a: Any) -> str:
        if isinstance(a, torch.Tensor):
            return f"{name} {list(a.shape)}" + ("" if a.dtype == torch.float32 else f" {str(a.dtype)[6:]}")
        if isinstance(a, (list, tuple)) and a and all(isinstance(t, torch.Tensor) for t in a):
            shapes = {tuple(t.shape) for t in a}
            return f"{name}: {len(a)} tensors " + (str(list(a[0].shape)) if len(shapes) == 1 else "")
        if isinstance(a, nn.Module):
            return f"{name}: {type(a).__name__}"
        return f"{name}={a!r}"

    parts = [one(n, a) for n, a in zip(ex.arg_names(), case.args)]
    if ex.kind == "module":
        init = ", ".join(f"{n}={a!r}" for n, a in zip(ex.init_names(), case.init))
        return f"{ex.title}({init})" + (", " + ", ".join(parts) if parts else "")
    return ", ".join(parts)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


def _same(got: Any, want: Any, rtol: float, atol: float) -> bool:
    """``got`` (a parsed observation) equals ``want`` (a value the judge computed)."""
    if isinstance(want, torch.Tensor):
        return isinstance(got, torch.Tensor) and not got.is_complex() and _close(got, want.detach(), rtol, atol)
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is type(want) and got == want
    if isinstance(want, int):
        return isinstance(got, (int, float)) and float(got) == float(want)
    if isinstance(want, float):
        return isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=rtol, abs_tol=atol)
    return got == want


def parse_record(rec: Any) -> Any:
    """An output record back to a value: tensor, number, list of values, or a _Other description."""
    kind = _get(rec, "kind", str)
    if kind == "tensor":
        v = rec.get("value")
        if v is not None and not isinstance(v, torch.Tensor):
            raise Malformed("a tensor record holds no tensor")
        return _Observed(v, rec)
    if kind in ("tuple", "list"):
        return _Seq(kind, [parse_record(r) for r in _get(rec, "items", list)], int(_get(rec, "length", int)))
    if kind == "number":
        v = rec.get("value")
        if not isinstance(v, (int, float, bool)):
            raise Malformed("a number record holds no number")
        return v
    return _Other(str(rec.get("type", "?")), str(rec.get("repr", "")))


def numpy_number(rec: Any) -> str:
    """The numpy type of a number record that is no Python float (np.float32, a 0-d array), else ""."""
    numpy = isinstance(rec, dict) and rec.get("kind") == "number" and str(rec.get("type", "")).startswith("numpy ")
    return str(rec["type"]) if numpy and rec.get("float") is not True else ""


class _Observed:
    def __init__(self, value: Optional[torch.Tensor], rec: Dict[str, Any]):
        self.value, self.rec = value, rec
        self.shape = list(value.shape) if value is not None else list(rec.get("shape", []))
        self.dtype, self.device = str(rec.get("dtype", "?")), str(rec.get("device", "?"))
        self.grad_fn = bool(rec.get("grad_fn", False))


@dataclass
class _Seq:
    kind: str
    items: List[Any]
    length: int


@dataclass
class _Other:
    type: str
    repr: str


def _unwrap(v: Any) -> Any:
    """The plain value (tensor / number / list) of a parsed record, for mutant comparison and hooks."""
    return v.value if isinstance(v, _Observed) else [_unwrap(x) for x in v.items] if isinstance(v, _Seq) else v


def _describe(v: Any) -> str:
    if isinstance(v, _Observed):
        return f"a tensor of shape {v.shape}"
    if isinstance(v, _Seq):
        return f"a {v.kind} of {v.length} items"
    if isinstance(v, _Other):
        return "None" if v.type == "NoneType" else f"{v.type}"
    return f"{type(v).__name__} {v!r}"


def _as_tuple(value: Any, n: int) -> Tuple[Any, ...]:
    return (value,) if n == 1 else tuple(value)


def judge(ex: Exercise, observations: Any, seed: int = 0) -> Verdict:
    """Decide from the observations alone (no student code runs here)."""
    try:
        with torch.random.fork_rng(devices=[]):
            n = _judge(ex, observations, seed)
    except _Fail as f:
        return Verdict(False, f"{ex.check}: {f}", 0)
    except Malformed as b:
        return Verdict(False, f"{ex.check}: the observations are malformed ({b}); run the check again", 0)
    except Exception as e:  # noqa: BLE001 - untrusted observations must never crash the judge
        return Verdict(False, f"{ex.check}: could not judge the observations ({type(e).__name__}: {e})", 0)
    return Verdict(True, f"✓ {ex.check} passed ({n} cases)", n)


def _not_implemented(err: Dict[str, Any]) -> bool:
    return "NotImplementedError" in (err.get("types") or [err.get("type")])


_ON_DEVICE = ("the output and every tensor made inside must be on the input's device (a GPU, or the meta device that "
              "stands for one in the check): torch.eye, torch.arange, torch.zeros or torch.tensor without device= "
              "make it on the CPU; pass device=x.device (and dtype=x.dtype), or use x.new_zeros(...)")
_DEVICE_MISMATCH = r"expected device|at least two devices|same device(?!.*indexed tensor)"  # not: indices on the CPU
_CAUSES = [  # (pattern in a torch error message, what usually causes it)
    (r"expected scalar type|same dtype|found (Float|Double)|dtype.*(Float|Double)",
     "tensors of two dtypes meet (float64 from NumPy or from torch.tensor/zeros/eye without dtype=); make new "
     "tensors with dtype=x.dtype (or x.new_zeros)"),
    (r"view size is not compatible with input tensor's size and stride",
     "a tensor is not contiguous in memory (a transposed or permuted view: after .transpose or .permute, or q, k, "
     "v split into heads as a multi-head attention does): .view() cannot merge its axes; use .reshape() (or "
     ".contiguous().view())"),
    (r"numpy\(\) on Tensor that requires grad",
     "the computation leaves torch (.numpy()), so no gradient can flow back; stay in torch"),
    (_DEVICE_MISMATCH, _ON_DEVICE),
]


def _raised(ex: Exercise, what: str, err: Any, label: str, cause: Optional[str] = None) -> str:
    if not isinstance(err, dict):
        raise Malformed("error record")
    if _not_implemented(err) and 'missing the required "forward" function' in str(err.get("message", "")):
        return (f"{what} raised NotImplementedError: {err.get('message')}: define forward(self, x) inside the "
                f"class (indented like __init__, spelt forward)\n  inputs: {label}")
    if _not_implemented(err):
        where, entry = str(err.get("where") or ""), str(err.get("entry") or "")
        if where and entry and where.split(".")[0] != entry.split(".")[0]:  # raised outside the answer's own code
            stand_in = dict(ex.stand_ins).get(where.split(".")[0])
            return (f"not implemented yet: {what} raised NotImplementedError in {where}, which your {ex.title} calls: "
                    f"where that is an earlier exercise, it is still the stub; solve it first (its own check cell says "
                    f"what is missing) or use the package's version{f' ({stand_in})' if stand_in else ''} in its place, "
                    f"then run this check again.\n  inputs: {label}")
        return (f"not implemented yet: {what} raised NotImplementedError. Replace `raise NotImplementedError()` "
                f"with your code.\n  inputs: {label}")
    msg = str(err.get("message", ""))
    cause = cause or next((c for pattern, c in _CAUSES if re.search(pattern, msg)), None)
    hint = f"\n  likely cause: {cause}" if cause else ""
    if "leaf Variable that requires grad is being used in an in-place operation" in msg:
        hint = ("\n  likely cause: your code changes its input in place (e.g. `+=` or an `_` method); compute a "
                "new tensor instead")
    return f"{what} raised {err.get('type', 'an error')}: {msg}{hint}\n  inputs: {label}"


def _judge(ex: Exercise, obs: Any, seed: int) -> int:
    if not isinstance(obs, dict) or obs.get("exercise") != ex.name:
        raise Malformed("not observations of this exercise")
    if obs.get("format") != FORMAT or obs.get("seed") != seed:
        raise Malformed("wrong format or seed")
    info = _get(obs, "object", dict)
    if ex.kind == "module" and not info.get("is_class"):
        raise _Fail(f"pass the class itself, e.g. {ex.check}({ex.title}), not an instance or other object "
                    f"(got {info.get('type')})")
    if ex.kind == "function" and (info.get("is_class") or not info.get("callable")):
        raise _Fail(f"pass your function itself, e.g. {ex.check}({ex.title}); got {info.get('type')}")
    cases = build_cases(ex, seed)
    recs = _get(obs, "cases", list)
    if len(recs) != len(cases):
        raise Malformed(f"{len(recs)} cases recorded, {len(cases)} expected")
    for index, (case, rec) in enumerate(zip(cases, recs)):
        _judge_case(ex, case, rec, index, seed)
    return len(cases)


def _judge_case(ex: Exercise, case: Case, rec: Any, index: int, seed: int) -> None:
    label = default_label(ex, case) + (f", on the {case.device} device (a GPU's stand-in)" if case.device else "")
    names = ex.arg_names()
    what = f"{ex.title}.forward" if ex.kind == "module" else ex.title
    call = f"{what}({', '.join(names)})"
    if not isinstance(rec, dict):
        raise Malformed("case record")
    if ex.judge_case is not None:
        return _judge_own_case(ex, case, rec, index, seed, label, call)
    ctx = Ctx(ex, case, index, seed, extra=rec.get("extra") if isinstance(rec.get("extra"), dict) else {})
    ctx.extra = {**ctx.extra, "guard": rec.get("guard") if isinstance(rec.get("guard"), dict) else {}}

    if ex.kind == "module":
        init_err = rec.get("init_error")
        built = f"{ex.title}({', '.join(repr(a) for a in case.init)})"
        if case.raises is not None:  # a module refuses to be built: the contract puts the error in __init__
            if init_err is None and isinstance(rec.get("error"), dict) and not _not_implemented(rec["error"]) \
                    and case.raises in (rec["error"].get("types") or [rec["error"].get("type")]):
                raise _Fail(f"{built} should raise {case.raises} in __init__ when {case.why}; it was built, and "
                            f"only forward raised: check the arguments in __init__, so that a module that cannot "
                            f"work is never made\n  inputs: {label}")
            errs = [e for e in (init_err, rec.get("error")) if isinstance(e, dict)]
            return _expect_raise(ex, case, errs, label)
        if init_err is not None:
            raise _Fail(_raised(ex, built, init_err, label))
        mod = _get(rec, "module", dict)
        if not mod.get("is_module"):
            raise _Fail(f"{ex.title} should subclass nn.Module, got {mod.get('type')}")
        ctx.params = {k: v for k, v in _tensor_dict(_get(mod, "params", dict), "params").items() if v is not None}
        ctx.aliases = {str(k): str(v) for k, v in _get(mod, "aliases", dict).items()}
        ctx.submodules = {str(k): str(v) for k, v in _get(mod, "submodules", dict).items()}
        for name, p in ctx.params.items():  # made with the numbers the judge would draw?
            want = param_value(seed, index, name, p.shape, p.dtype) if p.is_floating_point() else p
            if not torch.equal(p, want):
                raise Malformed(f"parameter {name} does not hold the check's random values")
    elif case.raises is not None:
        return _expect_raise(ex, case, [rec["error"]] if isinstance(rec.get("error"), dict) else [], label)

    used = rec.get("forbidden_calls")
    if isinstance(used, list) and used and all(isinstance(u, str) for u in used):
        raise _Fail(f"{call} calls {', '.join(u.replace('torch.nn.functional.', 'F.') for u in used[:3])}, which "
                    f"this exercise asks you to build from elementary tensor operations (the library call does "
                    f"the very computation the exercise is about)\n  inputs: {label}")
    violation = ctx.extra["guard"].get("violation")
    if isinstance(violation, str):  # the student's code did what the exercise forbids (recorded by the guard)
        raise _Fail(f"{violation}\n  inputs: {label}")
    if case.device is not None:
        return _judge_on_device(ex, ctx, case, rec, label, call)
    if rec.get("error") is not None:
        if ex.kind == "module":  # a module without what the contract asks for: say that, not the symptom
            try:
                with torch.no_grad():
                    ex.reference(ctx, *case.args)
            except ContractError as e:
                raise _Fail(f"{e}\n  inputs: {label}") from None
            except Exception:  # noqa: BLE001 - the student's error is the message
                pass
        cause = None
        if ex.explain is not None and isinstance(rec["error"], dict):
            cause = ex.explain(ctx, str(rec["error"].get("type")), str(rec["error"].get("message")), *case.args)
        raise _Fail(_raised(ex, call, rec["error"], label, cause))

    # inputs untouched
    changed = rec.get("lists_changed")
    if isinstance(changed, list) and changed:
        name = str(changed[0])[:40]
        raise _Fail(f"your code changed the list `{name}` it was given (items removed, replaced, reordered or added: "
                    f".pop(), .reverse(), `{name}[i] = ...`); leave it as it came and work on a copy, list({name})"
                    f"\n  inputs: {label}")
    before = dict(_leaves(case.args, names))
    after = _tensor_dict(_get(rec, "after", dict), "after")
    for name, t in before.items():
        a = after.get(name)
        if not isinstance(a, torch.Tensor) or a.shape != t.shape or a.dtype != t.dtype or not torch.equal(a, t):
            raise _Fail(f"your code changed its input `{name}` in place (e.g. `+=`, `x[...] = ...` or an `_` "
                        f"method); compute a new tensor instead\n  inputs: {label}")

    if ex.kind == "module":
        moved = [str(n) for n in _get(_get(rec, "module", dict), "changed_by_forward", list, optional=True) or []]
        if moved:
            raise _Fail(f"{ex.title}.forward changes the module's own parameter {moved[0]} (an in-place .mul_, "
                        f".add_ or .copy_ on it, or .data = ...): a forward pass only reads the weights, the "
                        f"optimizer alone changes them, so every call gives another answer\n  inputs: {label}")

    got = parse_record(_get(rec, "output", dict))
    # a second eval-mode call gives the same answer
    if "output2" in rec:
        again = parse_record(_get(rec, "output2", dict))
        same = identical(_unwrap(got), _unwrap(again))
        if not same:
            mode = " in eval mode" if ex.kind == "module" else ""
            raise _Fail(f"two calls on the same input give different answers{mode}: dropout or other randomness is "
                        f"still active (nn.Dropout follows model.eval(), but F.dropout(x, p) needs "
                        f"training=self.training), or the answer depends on something kept from one call to the "
                        f"next (a counter, a cache, a list that grows)\n  inputs: {label}")
    if rec.get("first_overwritten") is True:
        raise _Fail(f"the tensor your code returned changes when it is called again (a buffer kept on self or "
                    f"outside and written into, e.g. self.out.copy_(...) or out[...] = ..., then returned): a "
                    f"caller's earlier result would change under it; return a new tensor on every call"
                    f"\n  inputs: {label}")

    if ex.python_float and numpy_number(rec["output"]):
        raise _Fail(f"{ex.title} should return a Python float, got a {numpy_number(rec['output'])}: float(x) or "
                    f"x.item() makes one\n  inputs: {label}")
    if ex.python_float and isinstance(got, int) and not isinstance(got, bool):
        raise _Fail(f"{ex.title} should return a Python float, got the int {got}: write {got}.0, or float(...)"
                    f"\n  inputs: {label}")
    if ex.diagnose is not None:
        msg = ex.diagnose(ctx, got if not isinstance(got, (_Observed, _Seq)) else _unwrap(got), *case.args)
        if msg:
            raise _Fail(f"{msg}\n  inputs: {label}")
    outs = _split_outputs(ex, got, label)
    expected = _reference(ex, ctx, case.args, label)
    _compare_outputs(ex, ctx, case, outs, expected, label)

    # dtype and device of every tensor output
    for k, (o, e) in enumerate(zip(outs, expected)):
        if isinstance(o, _Observed) and isinstance(e, torch.Tensor):
            want = str(e.dtype).replace("torch.", "")
            if o.dtype != want:
                raise _Fail(f"the {ex.outputs[k]} has dtype {o.dtype}; it should keep the input's dtype {want} "
                            f"(no .double(), .float() or torch.tensor(..., dtype=...) inside)\n  inputs: {label}")
            if o.device != str(e.device):
                raise _Fail(f"the {ex.outputs[k]} is on device {o.device}; it should be on the input's device "
                            f"{e.device}\n  inputs: {label}")

    if isinstance(rec.get("output3"), dict):
        _judge_other_inputs(ex, ctx, case, rec, outs, label)
    if case.grad:
        _judge_grad(ex, ctx, case, rec, outs, label)
    if ex.loads_into is not None and index == 0:
        _judge_state_keys(ex, case, _get(rec, "module", dict), label)
    if ex.kind == "module" and index == 0:
        _judge_uninitialised(ex, _get(rec, "module", dict), label)


def _judge_uninitialised(ex: Exercise, mod: Dict[str, Any], label: str) -> None:
    """The check gives every parameter its own numbers, so the values can be right while the module itself would
    start training from whatever memory torch.empty handed out (read as NaN while the check builds it)."""
    names = [str(n) for n in _get(mod, "uninitialised", list, optional=True) or []]
    if names:
        raise _Fail(f"the values are right with the check's numbers, but {ex.title}'s {', '.join(names[:3])} "
                    f"{'is' if len(names) == 1 else 'are'} never given a starting value: torch.empty (or "
                    f"torch.Tensor(n), new_empty) only reserves memory, so training would start from whatever "
                    f"that memory held (zeros, huge numbers or NaN); fill it, e.g. nn.init.trunc_normal_(p, std=0.02) "
                    f"or torch.zeros(...), or use nn.Linear / nn.Conv2d, which fill their own\n  inputs: {label}")


def _judge_other_inputs(ex: Exercise, ctx: Ctx, case: Case, rec: Dict[str, Any], first: List[Any], label: str) -> None:
    """Calls on other inputs of the same shapes (engine.other_inputs), then on the case's own tensors with those
    values written in, get their own answers: nothing is kept (a cache keyed by the shapes or the tensors)."""
    other = other_inputs(case.args)
    if other is None:
        raise Malformed("a call on other inputs where the case has none")
    want = _reference(ex, ctx, other, label, ctx.meta.get("accepted", ex.reference))
    for key, again, cache in [("output3", "a second call on other inputs of the same shapes (each tensor read "
                               "backwards)", "a cache keyed by the shapes, a tensor stored on self in forward"),
                              ("output4", "a call on the same tensors after their values were changed in place (as "
                               "an optimizer step changes a parameter)", "a cache keyed by the tensor: lru_cache")]:
        call = _get(rec, key, dict, optional=True)
        if call is None:
            continue
        if call.get("error") is not None:
            raise _Fail(_raised(ex, again, call["error"], label))
        got = _split_outputs(ex, parse_record(_get(call, "output", dict)), label)
        if not all(_same(_unwrap(g), w, ex.rtol, ex.atol) for g, w in zip(got, want)):
            kept = all(identical(_unwrap(g), _unwrap(f)) for g, f in zip(got, first))
            raise _Fail(f"{again} gave {'the very answer of the first call' if kept else 'a wrong answer'}: "
                        f"something is kept from an earlier call ({cache}); compute each answer from its own "
                        f"call's inputs\n  inputs: {label}")


def _judge_on_device(ex: Exercise, ctx: Ctx, case: Case, rec: Dict[str, Any], label: str, call: str) -> None:
    """Case.device: the output's shape, dtype and device (code that reads values, .item(), cannot tell there)."""
    err = rec.get("error")  # only a device mismatch fails here: other errors mean meta holds no values (.item())
    if isinstance(err, dict) and re.search(_DEVICE_MISMATCH, str(err.get("message", "")), re.I):
        raise _Fail(_raised(ex, call, err, label, _ON_DEVICE))
    outs = [] if err is not None else _split_outputs(ex, parse_record(_get(rec, "output", dict)), label)
    for o, e, what in zip(outs, _reference(ex, ctx, case.args, label), ex.outputs):
        got = f"a {o.dtype} tensor of shape {o.shape} on {o.device}" if isinstance(o, _Observed) else _describe(o)
        want = f"a {str(e.dtype)[6:]} tensor of shape {list(e.shape)} on {case.device}" if isinstance(e, torch.Tensor) else got
        if want != got:
            raise _Fail(f"`{what}` is {got}; expected {want}: {_ON_DEVICE}\n  inputs: {label}")


def _judge_state_keys(ex: Exercise, case: Case, mod: Dict[str, Any], label: str) -> None:
    """The names of the module's parameters and buffers are what the cells after the check load by."""
    where, _, name = ex.loads_into.rpartition(".")
    lazy = [str(n) for n in _get(mod, "lazy", list, optional=True) or []]
    if lazy and ex.loads_before_call:
        raise _Fail(f"the values are right, but the cells after this check load your weights into {ex.loads_into} "
                    f"right after building your module, before any call, and {lazy[0]} has no shape until the first "
                    f"call (a lazy layer such as nn.LazyLinear or nn.LazyConv2d): give every layer its sizes from the "
                    f"constructor's arguments\n  inputs: {label}")
    ref = getattr(importlib.import_module(where), name)(*case.init)
    want, got = set(ref.state_dict()), {str(k) for k in _get(mod, "state_keys", list)}
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        parts = ([f"missing {', '.join(missing[:6])}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:6])}"] if extra else [])
        raise _Fail(f"the values are right, but the cells after this check load your weights into "
                    f"{ex.loads_into} by name (load_state_dict), so the names of its parameters and buffers are part of the "
                    f"contract: {'; '.join(parts)} (a LayerNorm's are weight and bias; a buffer you do not need "
                    f"to save: register_buffer(..., persistent=False) or a plain attribute)\n  inputs: {label}")


def _judge_own_case(ex: Exercise, case: Case, rec: Dict[str, Any], index: int, seed: int, label: str,
                    call: str) -> None:
    """A case of an exercise with its own judge_case: errors and contract exceptions as usual, then its verdict."""
    if case.raises is not None:
        return _expect_raise(ex, case, [rec["error"]] if isinstance(rec.get("error"), dict) else [], label)
    if rec.get("error") is not None:
        raise _Fail(_raised(ex, call, rec["error"], label))
    assert ex.judge_case is not None
    message = ex.judge_case(Ctx(ex, case, index, seed), rec.get("custom"), *case.args)
    if message:
        raise _Fail(f"{message}\n  inputs: {label}")


def _expect_raise(ex: Exercise, case: Case, errs: List[Dict[str, Any]], label: str) -> None:
    want = case.raises
    for e in errs:
        if _not_implemented(e):
            raise _Fail(f"not implemented yet: {ex.title} raised NotImplementedError\n  inputs: {label}")
        if want in (e.get("types") or [e.get("type")]) or _scripted_raise(e, want):
            return
    if errs:
        e = errs[0]
        raise _Fail(f"should raise {want} when {case.why}; got {e.get('type')}: {e.get('message')}"
                    f"\n  inputs: {label}")
    raise _Fail(f"should raise {want} when {case.why}, but it ran without error\n  inputs: {label}")


def _scripted_raise(e: Dict[str, Any], want: str) -> bool:
    """A ``raise ValueError(...)`` inside a torch.jit.script-ed function reaches Python as torch.jit.Error, whose
    message names the original class: the answer did raise what the contract asks."""
    return "Error" in (e.get("types") or [e.get("type")]) and f"builtins.{want}: " in str(e.get("message", ""))


def _split_outputs(ex: Exercise, got: Any, label: str) -> List[Any]:
    n = len(ex.outputs)
    if n == 1:
        if isinstance(got, _Seq) and got.items and isinstance(got.items[0], _Observed):
            raise _Fail(f"the {ex.outputs[0]} should be a single torch.Tensor, got a {got.kind} of {got.length} items "
                        f"(shapes {[_describe(i) for i in got.items]})\n  inputs: {label}")
        return [got]
    if not isinstance(got, _Seq) or got.length != n:
        shape = f" of shape {got.shape}" if isinstance(got, _Observed) else ""
        raise _Fail(f"{ex.title} must return a tuple ({', '.join(ex.outputs)}), got "
                    f"{_describe(got) if not isinstance(got, _Observed) else 'a tensor'}{shape}\n  inputs: {label}")
    return got.items


def _reference(ex: Exercise, ctx: Ctx, args: Sequence[Any], label: str, fn: Optional[Callable] = None) -> List[Any]:
    fn = ex.reference if fn is None else fn
    try:
        with torch.no_grad():
            value = fn(ctx, *args)
    except ContractError as e:
        raise _Fail(f"{e}\n  inputs: {label}") from None
    except _Fail:
        raise
    except Exception as e:  # noqa: BLE001 - the student's parameters do not fit the contract
        missing = _unknown_params(ctx)
        hint = f" ({missing})" if missing else ""
        raise _Fail(f"cannot compute the reference with your module's parameters: {type(e).__name__}: {e}{hint}"
                    f"\n  inputs: {label}") from None
    if ctx.shared:
        a, b = ctx.shared[0]
        if b in ctx.used:
            raise _Fail(_shared_message(a, b))
        others = [x for x, y in ctx.shared if y == b and x != a]
        if others:
            raise _Fail(_shared_message(a, others[0]))
    return list(_as_tuple(value, len(ex.outputs)))


def _shared_message(a: str, b: str) -> str:
    ma, mb = a.rsplit(".", 1)[0], b.rsplit(".", 1)[0]
    if a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1] and ma != mb:
        return (f"`self.{ma}` and `self.{mb}` share their parameters (e.g. `self.{ma} = self.{mb}`, or one "
                f"weight assigned to both); each needs its own, created separately")
    return f"`self.{a}` and `self.{b}` are one shared parameter; each needs its own"


def _unknown_params(ctx: Ctx) -> str:
    unused = [n for n in ctx.params if n not in ctx.used and not any(ctx.aliases.get(u) == n for u in ctx.used)]
    if not unused:
        return ""
    return (f"your module has parameters the exercise's attribute names do not cover: {', '.join(unused[:6])}; "
            f"the check finds the weights by the names the exercise gives")


def _compare_outputs(ex: Exercise, ctx: Ctx, case: Case, outs: List[Any], expected: List[Any], label: str) -> None:
    order = ex.order or tuple(range(len(ex.outputs)))
    plain = [_unwrap(o) for o in outs]
    ok = [_same(p, e, ex.rtol, ex.atol) for p, e in zip(plain, expected)]
    if all(ok):
        return
    for alt in ex.accept:  # another right answer (e.g. the tanh GELU)
        try:
            alt_out = _reference(ex, ctx, case.args, label, alt)
        except _Fail:
            continue
        if all(_same(p, e, ex.rtol, ex.atol) for p, e in zip(plain, alt_out)):
            expected[:] = alt_out
            ctx.meta = {**ctx.meta, "accepted": alt}
            return
    mutants: Optional[List[Tuple[str, Any]]] = None

    def matching(slot: int) -> Optional[str]:
        nonlocal mutants
        if mutants is None:
            mutants = []
            if ex.mutants is not None:
                try:
                    with torch.no_grad():
                        mutants = list(ex.mutants(ctx, *case.args))
                except Exception:  # noqa: BLE001 - no mutant for this case
                    mutants = []
        partial = None  # a mutant that explains this output but not the others
        for msg, make in mutants:
            try:
                with torch.no_grad():
                    m = _as_tuple(make(), len(ex.outputs))
            except Exception:  # noqa: BLE001 - a mutant that cannot be built for this input does not match
                continue
            if slot < len(m) and m[slot] is not None and _same(plain[slot], m[slot], ex.rtol, ex.atol):
                if all(x is None or _same(p, x, ex.rtol, ex.atol) for p, x in zip(plain, m)):
                    return msg
                partial = partial or msg
        return partial

    for k in order:
        if ok[k]:
            continue
        o, e, what = outs[k], expected[k], ex.outputs[k]
        if isinstance(e, torch.Tensor):
            if not isinstance(o, _Observed):
                forgot = " (did you forget to return it?)" if isinstance(o, _Other) and o.type == "NoneType" else ""
                raise _Fail(f"the {what} should be a torch.Tensor, got {_describe(o)}{forgot}\n  inputs: {label}")
            if o.value is None:
                raise _Fail(f"the {what} is not a plain tensor or far too large: {o.shape}\n  inputs: {label}")
            if list(o.shape) != list(e.shape):
                name = matching(k)
                hint = f"\n  likely cause: {name}" if name else ""
                if not hint and ex.shape_hint is not None:
                    extra = ex.shape_hint(ctx, k, tuple(o.shape), *case.args)
                    hint = f"\n  hint: {extra}" if extra else ""
                raise _Fail(f"wrong {what} shape: expected {list(e.shape)}, got {list(o.shape)}{hint}\n  inputs: {label}")
            if o.value.is_complex() and not e.is_complex():
                raise _Fail(f"the {what} is complex ({o.dtype}); it should be {str(e.dtype)[6:]}\n  inputs: {label}")
            if not torch.isfinite(o.value.double()).all() and torch.isfinite(e.double()).all():
                at = [int(i) for i in (~torch.isfinite(o.value.double())).nonzero()[0]]
                raise _Fail(f"the {what} contains NaN or inf values (e.g. at {at}): a division by zero, exp() of "
                            f"a large number (a softmax written by hand overflows unless it subtracts each row's "
                            f"maximum first), the log or square root of a number <= 0, or a part of a tensor made "
                            f"with torch.empty(...) that is never written (the check reads unwritten memory as NaN)"
                            f"{_f64_note(e)}"
                            f"\n  inputs: {label}")
        name = matching(k)
        if name is not None:
            raise _Fail(f"wrong {what}: {name}\n  inputs: {label}")
        unknown = _unknown_params(ctx)
        extra = (f"\n  note: {unknown}" if unknown else "") + _f64_note(e)
        if isinstance(e, torch.Tensor):
            g, w = o.value.double(), e.double()
            diff = (g - w).abs()
            bad = ~(diff <= ex.atol + ex.rtol * w.abs())
            idx = tuple(int(i) for i in bad.nonzero()[0]) if bad.any() else ()
            raise _Fail(f"wrong {what} values (none of the usual mistakes matches): max abs diff "
                        f"{diff.max().item():.4g}; first wrong entry at index {idx}: expected {w[idx].item():.4f}, "
                        f"got {g[idx].item():.4f}{extra}\n  inputs: {label}")
        raise _Fail(f"wrong {what}: expected {e!r}, got {_describe(o)}{extra}\n  inputs: {label}")


def _f64_note(e: Any) -> str:
    if isinstance(e, torch.Tensor) and e.dtype == torch.float64:
        return ("\n  note: this case is float64; a tensor made without dtype= (torch.zeros, torch.empty, torch.eye, "
                "torch.tensor) is float32 and loses the input's precision and range: use x.new_zeros(...) or "
                "dtype=x.dtype")
    return ""


def _judge_grad(ex: Exercise, ctx: Ctx, case: Case, rec: Dict[str, Any], outs: List[Any], label: str) -> None:
    """Gradients: the reference's, for every input and every parameter the reference uses."""
    cut = ("the {what} is cut off from the autograd graph, so no gradient can flow back to the inputs and "
           "weights: is there a torch.no_grad(), .detach(), .data, .item() or .numpy() in the forward?")
    slots = ex.grad_outputs if ex.grad_outputs is not None else range(len(outs))
    for k, o in enumerate(outs):
        if k in slots and isinstance(o, _Observed) and o.value is not None and o.value.is_floating_point() \
                and not o.grad_fn:
            raise _Fail(cut.format(what=ex.outputs[k]) + f"\n  inputs: {label}")
    g = _get(rec, "grad", dict)
    if g.get("error") is not None:
        err = g["error"]
        if not isinstance(err, dict):
            raise Malformed("grad error")
        if "does not require grad" in str(err.get("message", "")) or err.get("type") == "NoGrad":
            raise _Fail(cut.format(what="output") + f"\n  inputs: {label}")
        raise _Fail(f"the backward pass through your code raised {err.get('type')}: {err.get('message')}\n  "
                    f"inputs: {label}")
    got_in = _tensor_dict(_get(g, "inputs", dict), "input gradients")
    got_par = _tensor_dict(_get(g, "params", dict), "parameter gradients")
    # the reference's gradients, on the judge's own leaves
    names = ex.arg_names()
    leaves = _grad_leaves(case.args, names)
    for _, t in leaves:
        if t.is_leaf:
            t.requires_grad_(True)
    params = {n: p.detach().clone().requires_grad_(p.is_floating_point()) for n, p in ctx.params.items()}
    ref_ctx = Ctx(ex, case, ctx.index, ctx.seed, params, ctx.aliases, ctx.submodules, ctx.extra)
    ref_ctx.meta = ctx.meta
    fn = ctx.meta.get("accepted", ex.reference)
    with torch.enable_grad():
        try:
            value = _as_tuple(fn(ref_ctx, *case.args), len(ex.outputs))
        except Exception as e:  # noqa: BLE001
            raise _Fail(f"cannot compute the reference gradients: {type(e).__name__}: {e}\n  inputs: {label}") from None
        pairs = [(v, upstream(ctx.seed, ctx.index, k, v.shape, v.dtype)) for k, v in enumerate(value)
                 if k in slots and isinstance(v, torch.Tensor) and v.requires_grad]
        if pairs:
            torch.autograd.backward([v for v, _ in pairs], [u for _, u in pairs])
    checks = [(n, t.grad, got_in.get(n, None), n in got_in, f"`{n}`") for n, t in leaves]
    if ex.kind == "module":
        used = set(ref_ctx.used)
        checks += [(n, p.grad, got_par.get(n), n in got_par, f"the parameter `self.{n}`")
                   for n, p in params.items() if n in used]
    checks = [c for c in checks if c[1] is not None and bool(c[1].abs().gt(0).any())]  # gradients that matter
    for name, want, have, _, what in sorted(checks, key=lambda c: c[2] is not None):  # missing ones first
        if have is None:
            frozen = ""
            if ex.kind == "module" and name in ctx.params and not _get(_get(rec, "module", dict), "requires_grad",
                                                                      dict).get(name, True):
                frozen = " (it has requires_grad=False)"
            raise _Fail(f"no gradient reaches {what}{frozen}: something between it and the output is detached "
                        f"(torch.no_grad(), .detach(), .data, a new tensor built from .tolist()/.item())"
                        f"\n  inputs: {label}")
        if have.shape == want.shape and ex.grad_view is not None:
            have, want = ex.grad_view(name, have), ex.grad_view(name, want)
        if have.shape != want.shape or not _grad_close(have, want):
            raise _Fail(f"wrong gradient for {what} although the output values are right: part of the computation is "
                        f"detached (.detach(), .data, torch.no_grad()) or not differentiable\n  inputs: {label}")


def _grad_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.double(), b.double()
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-5 + 1e-4 * scale))


# -------------------------------------------------------------------------------------------------- run
def run_check(ex: Exercise, obj: Any, seed: int = 0) -> None:
    """probe + judge in one process: what a student's check cell does."""
    PASSED.pop(ex.name, None)  # a failed re-check withdraws an earlier pass
    verdict = judge(ex, probe(ex, obj, seed), seed)
    if not verdict.passed:
        raise CheckError(verdict.message) from None
    PASSED[ex.name] = obj
    print(verdict.message)


# exercise name -> the object that last passed its check in this process (what vit_edu.checks.passed_or reads)
PASSED: Dict[str, Any] = {}
