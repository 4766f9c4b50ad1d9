"""The check engine: an exercise is data (cases, a reference, named mistakes); a check runs in two halves.

* :func:`probe` runs the student's function or class on the exercise's cases and records plain
  observations (tensors, numbers, strings): the output, its dtype and device, the inputs after the call
  (in-place edits), a second eval-mode call (dropout left on), a call on other inputs of the same shapes and
  one on the same tensors with those values written in (a result kept from the first call), whether the first
  answer changed under those calls (a reused buffer) and the module's weights with it, one backward pass (input
  and parameter gradients by name), the parameters a module leaves unwritten (memory from torch.empty reads as
  NaN while the probe runs); a case on another device (``Case.device``, "meta") records only what the output
  is. It never decides anything, so it can run in the student's process.
* :func:`vit_edu.classroom.judge.judge` (:mod:`.judge`) rebuilds the same cases from the seed, computes the
  reference itself and compares. It never calls student code and treats the observations as untrusted data
  (a string where a tensor should be is a failure, not a crash). When the answer is wrong it computes the
  usual mistakes ("mutants") and names the one that matches.

Student modules get every parameter filled with fresh random numbers drawn from (seed, case, parameter
name), so that a hard-coded answer fails, every parameter matters, and two places sharing one parameter
show up (a shared module appears once in ``named_parameters``). The judge redraws them to make sure the
observations were made with those numbers.

An exercise whose object does not fit the generic call (``train_step`` changes the model and the optimizer it
gets) brings its own per-case halves: ``Exercise.probe_case`` records, ``Exercise.judge_case`` decides. They
may use the public helpers :func:`mix_seed`, :func:`error_record`, :func:`record_value`, :func:`build_cases`,
and :func:`.judge.parse_record`, and raise :class:`.judge.Malformed` on observations that do not have the
expected layout.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .watch import thread_starts

RTOL, ATOL = 1e-4, 1e-5  # float32 round-off of a different but correct order of operations stays far below this
FORMAT = 1  # version of the observation layout

Mutant = Tuple[str, Callable[[], Any]]  # (what the mistake is, how to compute its output)


class CheckError(AssertionError):
    """A self-check failed; the message says what is wrong and on which input."""

    def _render_traceback_(self) -> List[str]:
        """Jupyter shows only the diagnosis, not a traceback through the check's internals."""
        return f"CheckError: {self}".splitlines()


class ContractError(Exception):
    """Raised by a reference when the student's object does not have what the exercise asks for."""


@dataclass
class Verdict:
    passed: bool
    message: str  # the CheckError text when failed, the ✓ line when passed
    cases: int


@dataclass
class Case:
    """One input of a check; built by ``Exercise.cases`` from the seed (use torch.randn & co. freely)."""

    args: Tuple[Any, ...]  # the call's arguments (function kind) or forward's arguments (module kind)
    init: Tuple[Any, ...] = ()  # module kind: the constructor's arguments
    grad: bool = False  # also run one backward pass and compare input and parameter gradients
    raises: Optional[str] = None  # the contract asks for this exception here, e.g. "ValueError"
    why: str = ""  # with ``raises``: when, e.g. "dim=10 is not divisible by heads=3"
    label: str = ""  # how the inputs are named in messages; default: from the argument names and shapes
    meta: Dict[str, Any] = field(default_factory=dict)  # anything the reference or the mutants need
    # function kind: the probe moves the tensor arguments to this device ("meta": a GPU's stand-in, shapes only)
    # and the judge compares the output's shape, dtype and device alone; a tensor the answer makes on the CPU
    # (torch.eye(T) without device=) meets the input there and raises, as on a GPU
    device: Optional[str] = None


@dataclass
class Exercise:
    """An exercise: what the student writes, the cases, the right answer and the usual mistakes.

    ``call`` is the contract's signature, e.g. ``"patchify(images, patch_size)"`` (function kind) or
    ``"MultiHeadAttention(dim, heads)"`` (module kind, with ``forward="forward(x)"``); the argument names
    are used in messages. ``reference(ctx, *args)`` and ``mutants(ctx, *args)`` get a :class:`Ctx` (the
    case, the constructor arguments, the student's parameters by name) and the case's arguments; they are
    differentiable torch code (the judge takes gradients through the reference).
    """

    name: str  # key in CHECKS and the check's name without "check_"
    kind: str  # "function" or "module"
    call: str
    cases: Callable[[], List[Case]]
    reference: Callable[..., Any]
    mutants: Optional[Callable[..., Iterable[Mutant]]] = None
    accept: Sequence[Callable[..., Any]] = ()  # other right answers (same signature as reference)
    forward: str = "forward(x)"  # module kind: the forward's signature
    outputs: Tuple[str, ...] = ("output",)  # names of the returned values (several: a tuple is returned)
    order: Optional[Tuple[int, ...]] = None  # the order in which the outputs are compared (default 0, 1, ...)
    shape_hint: Optional[Callable[..., Optional[str]]] = None  # shape_hint(ctx, slot, got_shape, *args)
    diagnose: Optional[Callable[..., Optional[str]]] = None  # diagnose(ctx, got, *args): before the values
    probe_extra: Optional[Callable[..., Dict[str, Any]]] = None  # probe_extra(obj, case, *args) -> dict
    guard: Optional[Callable[..., ContextManager[Dict[str, Any]]]] = None  # around the student's call
    # torch functions the statement asks the student not to use (by name, e.g. "layer_norm" for F.layer_norm,
    # torch.layer_norm and nn.LayerNorm, which calls it): every torch call of the student's code is watched
    forbidden: Tuple[str, ...] = ()
    # the package's own implementation of this exercise (dotted names; a class stands for its methods): the grader
    # flags an answer whose check runs it (vit_edu.classroom.watch); () where the package has none
    package: Tuple[str, ...] = ()
    # the contract asks for a Python float: an int or a numpy scalar that is no float (np.float32, 0-d array) is named
    python_float: bool = False
    # module kind: the package class (its public name, e.g. "vit_edu.Block") the cells after the check load the student's weights into by
    # name (load_state_dict, strict), built from the case's init: its state_dict keys are part of the contract
    loads_into: Optional[str] = None
    loads_before_call: bool = False  # ... right after building it, before any call: a lazy layer has no shape yet
    stand_ins: Tuple[Tuple[str, str], ...] = ()  # (an earlier answer it calls, the package's stand-in): named on its stub
    explain: Optional[Callable[..., Optional[str]]] = None  # explain(ctx, error_type, message, *args): likely cause
    grad_outputs: Optional[Tuple[int, ...]] = None  # the outputs the backward pass starts from (default: all)
    grad_view: Optional[Callable[[str, torch.Tensor], torch.Tensor]] = None  # what of a gradient is compared
    # An exercise's own per-case probe and judge, replacing the generic call (no second call, no backward, no
    # inputs-untouched check): probe_case(obj, case, index, seed) -> plain dict, run in the student's process
    # (its exceptions are recorded as the case's error); judge_case(ctx, record, *case.args) -> the failure
    # message (without the "inputs:" line) or None, run in the judge's process on untrusted data.
    probe_case: Optional[Callable[[Any, Case, int, int], Dict[str, Any]]] = None
    judge_case: Optional[Callable[..., Optional[str]]] = None
    rtol: float = RTOL
    atol: float = ATOL
    doc: str = ""

    @property
    def check(self) -> str:
        return f"check_{self.name}"

    def arg_names(self) -> List[str]:
        return _names(self.forward if self.kind == "module" else self.call)

    def init_names(self) -> List[str]:
        return _names(self.call) if self.kind == "module" else []

    @property
    def title(self) -> str:
        return self.call.split("(")[0]


def _names(signature: str) -> List[str]:
    inside = signature[signature.find("(") + 1: signature.rfind(")")]
    return [a.strip().split("=")[0].split(":")[0].strip() for a in inside.split(",") if a.strip()]


class Ctx:
    """What a reference or a mutant may use besides the arguments: the case, the student's parameters."""

    def __init__(self, exercise: Exercise, case: Case, index: int, seed: int,
                 params: Optional[Dict[str, torch.Tensor]] = None, aliases: Optional[Dict[str, str]] = None,
                 submodules: Optional[Dict[str, str]] = None, extra: Optional[Dict[str, Any]] = None):
        self.exercise, self.case, self.index, self.seed = exercise, case, index, seed
        self.init = case.init
        self.cfg = dict(zip(exercise.init_names(), case.init))  # constructor arguments by name
        self.meta = case.meta
        self.params = params or {}
        self.aliases = aliases or {}
        self.submodules = submodules or {}  # student's sub-module name -> class name
        self.extra = extra or {}  # what probe_extra / guard recorded for this case
        self.used: List[str] = []  # parameter names the reference asked for
        self.shared: List[Tuple[str, str]] = []

    def param(self, name: str) -> Optional[torch.Tensor]:
        """The student's parameter ``name`` (e.g. "qkv.weight"), or None if there is none. A parametrized one
        (torch.nn.utils.parametrize: "conv1.parametrizations.weight.original") answers to its plain name."""
        if name not in self.params and name not in self.aliases:
            base, _, leaf = name.rpartition(".")
            original = f"{base + '.' if base else ''}parametrizations.{leaf}.original"
            name = original if original in self.params or original in self.aliases else name
        self.used.append(name)
        if name in self.params:
            return self.params[name]
        if name in self.aliases:  # the same Parameter object reachable under two names
            self.shared.append((name, self.aliases[name]))
            return self.params.get(self.aliases[name])
        return None

    def has_module(self, name: str) -> bool:
        return name in self.submodules or any(n.startswith(name + ".") for n in self.params)

    def with_prefix(self, prefix: str) -> Dict[str, torch.Tensor]:
        """Every parameter under ``prefix.`` (shared ones included), by the rest of its name."""
        out = {}
        for n in list(self.params) + list(self.aliases):
            if n.startswith(prefix + "."):
                out[n[len(prefix) + 1:]] = n
        return {k: self.param(n) for k, n in out.items()}  # type: ignore[misc]


def plain_name(name: str) -> str:
    """A parameter's name as the contract spells it: "conv1.parametrizations.weight.original" is "conv1.weight"."""
    head, sep, rest = name.partition("parametrizations.")
    if sep and (not head or head.endswith(".")) and rest.endswith(".original") and rest.count(".") == 1:
        return head + rest[: -len(".original")]
    return name


# ----------------------------------------------------------------------------------------- random numbers
def mix_seed(*parts: Any) -> int:
    """A seed made of anything printable: the same in the student's process and the judge's."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


SCALE_NAMES = ("weight", "gamma", "g", "scale", "w", "alpha")  # a norm's scale, as students name it (first wins)


def param_value(seed: int, index: int, name: str, shape: Sequence[int], dtype: torch.dtype = torch.float32
                ) -> torch.Tensor:
    """The random value every student parameter gets: a function of (seed, case, name, shape) only.

    Matrices: variance 1/fan_in (activations keep their scale); 1-D scales (LayerNorm weight, "gamma"):
    1 + N(0, 0.25); other vectors and scalars (biases, tokens): N(0, 0.25).
    """
    g = torch.Generator().manual_seed(mix_seed(seed, index, name, tuple(shape)))
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    if len(shape) >= 2:
        fan_in = max(1, math.prod(shape) // max(1, shape[0]))
        x = x / math.sqrt(fan_in)
    elif name.rsplit(".", 1)[-1] in SCALE_NAMES:
        x = 1.0 + 0.5 * x
    else:
        x = 0.5 * x
    return x.to(dtype)


def upstream(seed: int, index: int, slot: int, shape: Sequence[int], dtype: torch.dtype = torch.float32
             ) -> torch.Tensor:
    """The gradient fed into output ``slot`` for the backward pass of case ``index``."""
    g = torch.Generator().manual_seed(mix_seed("upstream", seed, index, slot, tuple(shape)))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float64).to(dtype)


def along_rows(name: str, grad: torch.Tensor) -> torch.Tensor:
    """``Exercise.grad_view`` of an input of attention rows (distributions: each sums to 1): only the gradient
    along them is defined by the contract. A row's patch part taken as 1 - its class token's share, or
    rownorm(A + I) as 0.5 A + 0.5 I, is the same function there, and differs off it."""
    return grad - grad.mean(dim=-1, keepdim=True)


@contextmanager
def _isolated(seed: int) -> Iterator[None]:
    """Seed torch for a while without disturbing the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def _uninitialised_as_nan() -> Iterator[None]:
    """While the student's code runs, memory that torch.empty (or torch.Tensor(n), new_empty) hands out unwritten
    reads as NaN, so a parameter left without a starting value, or a part of an output never written, shows the
    same way every time, whatever the memory held. The flag is torch's deterministic mode (warnings only), set
    directly: the public setter imports the compiler."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch._C._set_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch._C._set_deterministic_algorithms(was, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def build_cases(ex: Exercise, seed: int) -> List[Case]:
    """The exercise's cases for ``seed``: the same in the student's process and the judge's, whatever the
    student's session changed (default dtype or device)."""
    dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float32)
        with _isolated(mix_seed("cases", ex.name, seed)), torch.no_grad(), torch.device("cpu"):
            return list(ex.cases())
    finally:
        torch.set_default_dtype(dtype)


# ----------------------------------------------------------------------------------------------- records
_MAX_NUMEL = 4_000_000


_NOT_STUDENT = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.path.abspath(__file__)) + os.sep)


def error_record(e: BaseException) -> Dict[str, Any]:
    """An exception as plain data (its type, its classes' names for subclass tests, its message)."""
    tb, codes = e.__traceback__, []
    while tb is not None:  # the student's frames (torch's and the checks' left out): another exercise's stub?
        if not tb.tb_frame.f_code.co_filename.startswith(_NOT_STUDENT):
            codes.append(getattr(tb.tb_frame.f_code, "co_qualname", tb.tb_frame.f_code.co_name)[:200])
        tb = tb.tb_next
    return {"type": type(e).__name__, "types": [c.__name__ for c in type(e).__mro__],
            "message": _safe_str(e)[:1000], "entry": codes[0] if codes else "", "where": codes[-1] if codes else ""}


def _safe_str(x: Any) -> str:
    try:
        return str(x)
    except Exception:  # noqa: BLE001 - a student's object with a broken __str__
        return f"<{type(x).__name__}>"


def record_value(v: Any, depth: int = 0) -> Dict[str, Any]:
    """A plain, torch.load(weights_only=True)-safe description of a value the student's code returned."""
    if isinstance(v, torch.Tensor):
        t = v.detach()
        rec: Dict[str, Any] = {"kind": "tensor", "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                               "device": str(t.device), "grad_fn": v.grad_fn is not None or v.requires_grad}
        rec["value"] = t.cpu().clone().contiguous() if t.numel() <= _MAX_NUMEL and t.layout == torch.strided \
            and t.device.type != "meta" else None  # the meta device holds no values
        return rec
    if isinstance(v, (tuple, list)) and depth < 2:
        return {"kind": type(v).__name__ if type(v) in (tuple, list) else "tuple",
                "items": [record_value(x, depth + 1) for x in list(v)[:16]], "length": len(v)}
    if isinstance(v, bool):
        return {"kind": "number", "type": "bool", "value": bool(v)}
    if isinstance(v, (int, float)):
        return {"kind": "number", "type": type(v).__name__ if type(v) in (int, float) else "float",
                "value": int(v) if isinstance(v, int) else float(v)}
    if type(v).__module__ == "numpy" and hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        item = v.item()
        if isinstance(item, (int, float, bool)):
            return {"kind": "number", "type": "numpy " + type(v).__name__, "value": item, "float": isinstance(v, float)}
    try:
        text = repr(v)[:120]
    except Exception:  # noqa: BLE001
        text = ""
    return {"kind": "other", "type": type(v).__name__, "repr": text}


def identical(a: Any, b: Any) -> bool:
    """The same values to the bit (NaN where NaN was), shape and dtype; lists item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype):
            return False
        if a.is_floating_point() or a.is_complex():
            return bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
        return torch.equal(a, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _overwritten(value: Any, rec: Dict[str, Any]) -> bool:
    """Whether a tensor the student's code returned changed after it was recorded, by the later calls (a buffer
    kept on self and handed out by every call: the caller's earlier result changes under it)."""
    if isinstance(value, (tuple, list)) and rec.get("kind") in ("tuple", "list"):
        return any(_overwritten(v, r) for v, r in zip(value, rec["items"]))
    if not isinstance(value, torch.Tensor) or rec.get("kind") != "tensor" or rec.get("value") is None:
        return False
    return not identical(value.detach().cpu(), rec["value"])


def _leaves(args: Sequence[Any], names: Sequence[str]) -> List[Tuple[str, torch.Tensor]]:
    """The tensors among the arguments, with names: "x", "attentions[2]", "model.pos_embed"."""
    out: List[Tuple[str, torch.Tensor]] = []
    for name, a in zip(names, args):
        if isinstance(a, torch.Tensor):
            out.append((name, a))
        elif isinstance(a, (list, tuple)):
            out += [(f"{name}[{i}]", t) for i, t in enumerate(a) if isinstance(t, torch.Tensor)]
        elif isinstance(a, nn.Module):
            out += [(f"{name}.{n}", p) for n, p in a.named_parameters()]
            out += [(f"{name}.{n}", b) for n, b in a.named_buffers()]
    return out


def _grad_leaves(args: Sequence[Any], names: Sequence[str]) -> List[Tuple[str, torch.Tensor]]:
    return [(n, t) for n, t in _leaves(args, names) if t.is_floating_point()
            and (t.requires_grad or t.is_leaf)]


def other_inputs(args: Sequence[Any]) -> Optional[Tuple[Any, ...]]:
    """The case's arguments with every tensor read backwards (each axis of two or more entries reversed: the batch
    alone would give an answer averaged over the batch the same), lists of tensors item by item, the rest as
    given: other inputs of the same shapes, still valid ones (attention rows stay distributions), for a call that
    shows a result kept from the first call. None where nothing changes."""
    def flip(a: Any) -> Any:
        if isinstance(a, torch.Tensor) and any(n >= 2 for n in a.shape):
            return a.detach().flip([d for d, n in enumerate(a.shape) if n >= 2])
        if isinstance(a, list) and a and all(isinstance(t, torch.Tensor) for t in a):
            return [flip(t) for t in a]
        return a
    out = tuple(flip(a) for a in args)
    return out if any(o is not a for o, a in zip(out, args)) else None


def on_device(args: Sequence[Any], device: str) -> Tuple[Any, ...]:
    """The arguments with their tensors (and lists of tensors) on ``device``; ``Case.device``."""
    def move(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return a.detach().to(device)
        return [move(t) for t in a] if isinstance(a, list) else a
    return tuple(move(a) for a in args)


def _changed_in_place(target: Any, args: Sequence[Any], other: Sequence[Any]) -> Optional[Dict[str, Any]]:
    """A call on the case's own tensors with ``other``'s values written into them (as an optimizer step changes a
    parameter), put back afterwards: an answer kept by the tensors' identity (functools.lru_cache) shows."""
    pairs = [(t, n) for a, o in zip(args, other) if o is not a
             for t, n in (zip(a, o) if isinstance(a, list) else [(a, o)]) if t is not n]
    saved = [t.detach().clone() for t, _ in pairs]
    res: Dict[str, Any] = {"error": None}
    written = 0
    try:
        for t, n in pairs:
            t.copy_(n)
            written += 1
        value = _call(target, args, res)
        return res if res["error"] is not None else {"output": record_value(value)}
    except Exception:  # noqa: BLE001 - a tensor that cannot be written (an expanded view): no such call
        return None
    finally:
        for (t, _), old in zip(pairs[:written], saved):  # only those written: the others would raise again
            t.copy_(old)


def _outputs_of(value: Any, n: int) -> List[Any]:
    if n == 1:
        return [value]
    return list(value) if isinstance(value, (tuple, list)) and len(value) == n else []


# ------------------------------------------------------------------------------------------------- probe
def probe(ex: Exercise, obj: Any, seed: int = 0) -> Dict[str, Any]:
    """Run the student's ``obj`` on the exercise's cases; record what happened (decides nothing)."""
    obs: Dict[str, Any] = {"format": FORMAT, "exercise": ex.name, "seed": int(seed), "object": {
        "type": type(obj).__name__, "name": _safe_str(getattr(obj, "__name__", type(obj).__name__))[:80],
        "is_class": isinstance(obj, type), "callable": callable(obj),
        "is_module_class": isinstance(obj, type) and issubclass(obj, nn.Module),
        "is_module": isinstance(obj, nn.Module)}, "cases": []}
    usable = (isinstance(obj, type) if ex.kind == "module" else callable(obj) and not isinstance(obj, type))
    if not usable:
        return obs
    dtype = torch.get_default_dtype()  # the checks run with torch's defaults, whatever the session changed
    try:
        torch.set_default_dtype(torch.float32)
        with torch.random.fork_rng(devices=[]), torch.device("cpu"), _uninitialised_as_nan():
            for index, case in enumerate(build_cases(ex, seed)):
                obs["cases"].append(_probe_case(ex, obj, case, index, seed))
    finally:
        torch.set_default_dtype(dtype)
    return obs


class _Watch(torch.overrides.TorchFunctionMode):
    """Records which of ``names`` the code inside calls: every torch function call passes through the mode,
    however the student reached the function (F.layer_norm, an alias, nn.LayerNorm's forward,
    torch.ops.aten.layer_norm.default: names are compared without the overload). Code that Python never sees
    call by call (a torch.jit.script'ed or compiled function) still reaches the dispatcher: a dispatch mode,
    :class:`_DeepWatch`, records the kernels it runs (``native_layer_norm``) into ``deep``, which counts when the
    function mode saw nothing. A mode holds for one thread, so each thread started through ``threading`` while
    inside gets copies of both that record into the same sets."""

    def __init__(self, names: Sequence[str], seen: Optional[set] = None, live: Optional[List[bool]] = None,
                 deep: Optional[set] = None) -> None:
        super().__init__()
        self.names = set(names)
        self.seen = set() if seen is None else seen
        self.deep = set() if deep is None else deep
        self.live = [True] if live is None else live  # shared with the copies: they stop recording with it
        self._threads: Optional[ContextManager[Any]] = None
        self._dispatch: Optional["_DeepWatch"] = None

    @property
    def calls(self) -> List[str]:
        """What was called, by the names the student's code used (else the kernels that ran)."""
        return sorted(self.seen or self.deep)

    def __enter__(self) -> "_Watch":
        self.live[0] = True
        self._threads = thread_starts(self._enter_in_thread)
        self._threads.__enter__()
        try:
            self._dispatch = _DeepWatch(self)
            self._dispatch.__enter__()
            return super().__enter__()
        except BaseException:
            self._exit_inner()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._exit_inner()

    def _exit_inner(self) -> None:
        self.live[0] = False
        try:
            if self._dispatch is not None:
                self._dispatch.__exit__(None, None, None)
        finally:
            self._dispatch = None
            if self._threads is not None:
                self._threads.__exit__(None, None, None)

    def _enter_in_thread(self, frame: Any, event: str, arg: Any) -> None:
        """In a new thread: copies stay on that thread's mode stacks (they record nothing once the probe is over)."""
        copy = _Watch(self.names, self.seen, self.live, self.deep)
        _DeepWatch(copy).__enter__()
        torch.overrides.TorchFunctionMode.__enter__(copy)

    @staticmethod
    def _called(func: Any) -> Tuple[str, str]:
        """(the name to compare, the name to report): "layer_norm.default" of an aten overload is layer_norm."""
        name = getattr(func, "__name__", "")
        base = name.split(".", 1)[0] if isinstance(name, str) else ""
        if isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
            space = getattr(func, "namespace", None) or getattr(func, "_qualified_op_name", "aten::").split("::")[0]
            return base, f"torch.ops.{space}.{base}"
        return base, f"{getattr(func, '__module__', None) or 'torch'}.{base}"

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if self.live[0]:
            base, shown = self._called(func)
            if base in self.names:
                self.seen.add(shown)
            code = sys._getframe(1).f_code  # torch's own Python version of one (torch._refs.native_layer_norm)
            if code.co_name in self.names and code.co_filename.startswith(_NOT_STUDENT[0]):
                where = os.path.relpath(code.co_filename, os.path.dirname(_NOT_STUDENT[0][:-1]))[:-3]
                self.seen.add(f"{where.replace('/__init__', '').replace(os.sep, '.')}.{code.co_name}")
        return func(*args, **(kwargs or {}))


class _CopyIntoCpu(TorchDispatchMode):
    """A ``Case.device`` call: a copy of the device's values into a CPU tensor (out[h] = ... into torch.zeros(H) made
    without device=) is skipped, not refused as meta holds no values: the buffer shows as a CPU output, as on a GPU."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func is torch.ops.aten.copy_.default and args[0].device.type == "cpu" and args[1].device.type != "cpu":
            return args[0]
        return func(*args, **(kwargs or {}))


class _DeepWatch(TorchDispatchMode):
    """The dispatcher's side of a :class:`_Watch`: the aten kernels that run, whoever called them."""

    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self.watch = watch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        w = self.watch
        if w.live[0]:
            base, shown = w._called(func)
            if base in w.names:
                w.deep.add(shown)
        return func(*args, **(kwargs or {}))


def _call(fn: Callable, args: Sequence[Any], rec: Dict[str, Any], key: str = "error") -> Any:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - the student's error is an observation
        rec[key] = error_record(e)
        return None


def _probe_case(ex: Exercise, obj: Any, case: Case, index: int, seed: int) -> Dict[str, Any]:
    rec: Dict[str, Any] = {"error": None}
    args = case.args
    names = ex.arg_names()
    torch.manual_seed(mix_seed("call", seed, index))
    if ex.probe_case is not None:  # the exercise runs the student's object itself
        try:
            rec["custom"] = ex.probe_case(obj, case, index, seed)
        except Exception as e:  # noqa: BLE001 - the student's error is an observation
            rec["error"] = error_record(e)
        return rec
    target: Any = obj
    if ex.kind == "module":
        rec["init_error"] = None
        module = _call(obj, case.init, rec, "init_error")
        if rec["init_error"] is not None:
            return rec
        rec["module"] = {"is_module": isinstance(module, nn.Module), "type": type(module).__name__}
        if not isinstance(module, nn.Module):
            return rec
        target = module
        lazy = [n for n, p in module.named_parameters() if nn.parameter.is_lazy(p)]  # no shape until a call
        with torch.no_grad():
            if lazy:
                _call(module, args, rec)  # a dry run gives lazy layers (nn.LazyLinear) their shapes
                if rec["error"] is not None:
                    return rec
            uninitialised = [n for n, t in [*module.named_parameters(), *module.named_buffers()]
                             if t.is_floating_point() and n not in lazy and bool(t.isnan().any())]
            for name, p in module.named_parameters():
                if p.is_floating_point():
                    p.copy_(param_value(seed, index, name, p.shape, p.dtype))
        module.eval()
        canonical: Dict[int, str] = {}
        aliases: Dict[str, str] = {}
        for name, p in module.named_parameters(remove_duplicate=False):
            first = canonical.setdefault(id(p), name)
            if first != name:
                aliases[name] = first
        rec["module"].update(
            params={n: p.detach().clone() for n, p in module.named_parameters()}, aliases=aliases,
            requires_grad={n: bool(p.requires_grad) for n, p in module.named_parameters()},
            submodules={n: type(m).__name__ for n, m in module.named_modules() if n},
            state_keys=[str(k) for k in module.state_dict()], lazy=lazy, uninitialised=uninitialised)
    guard = ex.guard(case, *args) if ex.guard is not None else nullcontext({})
    watch = _Watch(ex.forbidden) if ex.forbidden else nullcontext()
    if case.device is not None:  # the tensors on another device: what the output is, not its values
        with guard as guarded, watch, torch.no_grad(), _CopyIntoCpu():
            out = _call(target, on_device(args, case.device), rec)
        rec.update(output=record_value(out), guard=dict(guarded or {}))
        if ex.forbidden:
            rec["forbidden_calls"] = watch.calls
        return rec
    items = {n: list(a) for n, a in zip(names, args) if isinstance(a, list)}  # a list argument keeps its items
    leaves = _grad_leaves(args, names) if case.grad else []  # taken before the call, which may replace them
    with guard as guarded, watch:
        if case.grad:
            for _, t in leaves:
                if t.is_leaf:
                    t.requires_grad_(True)
            with torch.enable_grad():
                out = _call(target, args, rec)
        else:
            with torch.no_grad():
                out = _call(target, args, rec)
        # the inputs as the first call left them (a second call could undo an edit, e.g. a list reversed twice)
        rec["after"] = {n: t.detach().clone() for n, t in _leaves(args, names)}
        rec["lists_changed"] = [n for n, a in zip(names, args) if n in items and (
            len(a) != len(items[n]) or any(x is not y for x, y in zip(a, items[n])))]
        if rec["error"] is None:
            rec["output"] = record_value(out)
            if index == 0:  # a second call: dropout left active in eval mode gives another answer
                with torch.no_grad():
                    rec["output2"] = record_value(_call(target, args, {}))
                    other = other_inputs(args)
                    if other is not None:  # a third, on other inputs: an answer kept from the first call shows
                        third: Dict[str, Any] = {"error": None}
                        value = _call(target, other, third)
                        rec["output3"] = third if third["error"] is not None else {"output": record_value(value)}
                        fourth = None if case.grad else _changed_in_place(target, args, other)
                        if fourth is not None:  # the same tensors with those values: a cache keyed by them shows
                            rec["output4"] = fourth
                rec["first_overwritten"] = _overwritten(out, rec["output"])
        if ex.kind == "module" and rec["error"] is None:  # the calls left the weights as they were?
            before = rec["module"]["params"]
            rec["module"]["changed_by_forward"] = [n for n, p in target.named_parameters()
                                                   if n in before and not torch.equal(p.detach(), before[n])]
        if case.grad and rec["error"] is None:
            rec["grad"] = _backward(ex, target, leaves, out, seed, index)
    rec["guard"] = dict(guarded or {})
    if ex.forbidden:
        rec["forbidden_calls"] = watch.calls
    if ex.probe_extra is not None and rec["error"] is None:
        try:
            with torch.no_grad():
                rec["extra"] = ex.probe_extra(target, case, *args)
        except Exception as e:  # noqa: BLE001
            rec["extra"] = {"error": error_record(e)}
    return rec


def _backward(ex: Exercise, target: Any, leaves: Sequence[Tuple[str, torch.Tensor]], out: Any, seed: int,
              index: int) -> Dict[str, Any]:
    g: Dict[str, Any] = {"error": None, "inputs": {}, "params": {}}
    outs = _outputs_of(out, len(ex.outputs))
    slots = ex.grad_outputs if ex.grad_outputs is not None else range(len(outs))
    pairs = [(o, upstream(seed, index, k, o.shape, o.dtype)) for k, o in enumerate(outs)
             if k in slots and isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]
    if not pairs:
        g["error"] = {"type": "NoGrad", "types": ["NoGrad"], "message": "no output requires grad"}
        return g
    try:
        torch.autograd.backward([o for o, _ in pairs], [u for _, u in pairs])
    except Exception as e:  # noqa: BLE001
        g["error"] = error_record(e)
        return g
    for n, t in leaves:
        g["inputs"][n] = None if t.grad is None else t.grad.detach().clone()
    if isinstance(target, nn.Module) and ex.kind == "module":
        for n, p in target.named_parameters():
            g["params"][n] = None if p.grad is None else p.grad.detach().clone()
    return g


