"""The four exercises that assemble the model (notebooks 04, 05 and 07): cases, reference, usual mistakes.

Tables like those of :mod:`.exercises_build` (the five exercises of notebooks 01-03, whose helpers these
reuse: ``linear``, ``mha``, ...): the MLP, the encoder block, the whole forward pass of a ViT (the model's own
forward methods are refused while the student's code runs) and attention rollout.
:mod:`vit_edu.classroom.engine` does the rest (dtype, device, in-place edits, dropout left on, gradients).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .engine import SCALE_NAMES, Case, ContractError, Ctx, Exercise, Mutant, along_rows
from .exercises_build import (_cls_explain, _same_shape_hint, call_alone, lin, linear, mha, mha_mutants,
                              mha_weights)


# ----------------------------------------------------------------------------------------------- 6 MLP
def _mlp_cases() -> List[Case]:
    # x large enough that GELU, its tanh approximation, QuickGELU and ReLU all differ
    cases = [Case((3.0 * torch.randn(B, N, D),), init=(D, Hd)) for D, Hd, B, N in
             [(16, 64, 2, 5), (8, 32, 1, 3), (32, 48, 3, 1)]]
    cases.append(Case((3.0 * torch.randn(2, 3, 8),), init=(8, 16), grad=True))
    return cases


def _mlp_weights(ctx: Ctx, prefix: str = "") -> Tuple[Any, Any]:
    D, Hd = (ctx.cfg["dim"], ctx.cfg["hidden_dim"]) if "hidden_dim" in ctx.cfg else (ctx.cfg["dim"], ctx.cfg["mlp_dim"])
    return linear(ctx, f"{prefix}fc1", D, Hd), linear(ctx, f"{prefix}fc2", Hd, D)


def mlp(x: torch.Tensor, fc1: Any, fc2: Any, act: Callable[[torch.Tensor], torch.Tensor] = F.gelu) -> torch.Tensor:
    return lin(act(lin(x, fc1)), fc2)


def mlp_mutants(x: torch.Tensor, fc1: Any, fc2: Any) -> List[Mutant]:
    def m(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: mlp(x, fc1, fc2, act)
    return [
        ("ReLU is used instead of GELU: nn.GELU()", m(F.relu)),
        ("the activation is missing: fc1 -> GELU -> fc2 (without it the two Linears collapse into one)",
         m(lambda t: t)),
        ("SiLU/Swish is used instead of GELU: nn.GELU()", m(F.silu)),
        ("the sigmoid approximation of GELU (x * sigmoid(1.702 x), 'QuickGELU') is used; use nn.GELU() (exact) or "
         "nn.GELU(approximate='tanh')", m(lambda t: t * torch.sigmoid(1.702 * t))),
        ("tanh is used instead of GELU: nn.GELU()", m(torch.tanh)),
        ("sigmoid is used instead of GELU: nn.GELU()", m(torch.sigmoid)),
        ("GELU is applied after fc2 as well; the MLP is fc1 -> GELU -> fc2", lambda: F.gelu(mlp(x, fc1, fc2))),
        ("GELU is applied after fc2 instead of between fc1 and fc2: fc1 -> GELU -> fc2",
         lambda: F.gelu(lin(lin(x, fc1), fc2))),
        ("the MLP adds its input (a residual); the residual belongs to the encoder block, not the MLP",
         lambda: x + mlp(x, fc1, fc2)),
        ("the MLP adds its input (a residual); the residual belongs to the encoder block, not the MLP",
         lambda: x + mlp(x, fc1, fc2, lambda t: F.gelu(t, approximate="tanh"))),
        ("the bias of fc2 is missing: nn.Linear(hidden_dim, dim) with its bias",
         lambda: lin(F.gelu(lin(x, fc1)), (fc2[0], None))),
    ]


def _mlp_reference(ctx: Ctx, x: torch.Tensor) -> torch.Tensor:
    fc1, fc2 = _mlp_weights(ctx)
    return mlp(x, fc1, fc2)


def _mlp_tanh(ctx: Ctx, x: torch.Tensor) -> torch.Tensor:
    """The paper's JAX code uses the tanh approximation of GELU (flax's default): also right."""
    fc1, fc2 = _mlp_weights(ctx)
    return mlp(x, fc1, fc2, lambda t: F.gelu(t, approximate="tanh"))


def _mlp_mutants(ctx: Ctx, x: torch.Tensor) -> List[Mutant]:
    fc1, fc2 = _mlp_weights(ctx)
    return mlp_mutants(x, fc1, fc2)


def extra_params_message(ctx: Ctx, got: Any, outputs: Callable[[], List[torch.Tensor]], known: Callable[[str], bool],
                         what: str) -> Optional[str]:
    """Wrong values from a module with parameters the contract does not have (a LayerNorm inside the MLP, timm's
    LayerScale in a block), matching neither the answer nor a usual mistake (``outputs``): name those parameters."""
    extra = sorted(n for n in ctx.params if not known(n))
    if not extra or not isinstance(got, torch.Tensor):
        return None
    for r in outputs():
        if isinstance(r, torch.Tensor) and got.shape == r.shape and torch.allclose(got.double(), r.double(),
                                                                                  rtol=1e-4, atol=1e-5):
            return None
    return f"wrong output values, and {what} has parameters the contract's does not: {', '.join(extra[:4])}"


def _mutant_outputs(mutants: List[Mutant]) -> List[Any]:
    out = []
    for _, make in mutants:
        try:
            out.append(make())
        except Exception:  # noqa: BLE001 - a mutant that does not apply to this case
            continue
    return out


def _mlp_diagnose(ctx: Ctx, got: Any, x: torch.Tensor) -> Optional[str]:
    try:
        message = extra_params_message(
            ctx, got, lambda: [_mlp_reference(ctx, x), _mlp_tanh(ctx, x)] + _mutant_outputs(_mlp_mutants(ctx, x)),
            lambda n: n.split(".")[0] in ("fc1", "fc2"), "your MLP")
    except Exception:  # noqa: BLE001 - fc1 / fc2 do not fit the contract: the reference step reports it
        return None
    return message and (f"{message}; the MLP is fc1 -> GELU -> fc2 and nothing else (no norm or scale inside; the "
                        f"LayerNorm in front of it and the residual belong to the encoder block)")


MLP_EX = Exercise(
    name="mlp",
    package=("vit_edu.block.Mlp",), loads_into="vit_edu.Mlp", loads_before_call=True,
    kind="module", call="MLP(dim, hidden_dim)", forward="forward(x)",
    cases=_mlp_cases, reference=_mlp_reference, accept=[_mlp_tanh], mutants=_mlp_mutants,
    diagnose=_mlp_diagnose, shape_hint=_same_shape_hint,
    doc="""Check ``class MLP(nn.Module)``: ``__init__(self, dim, hidden_dim)``, forward [B, N, D] -> [B, N, D].

    ``self.fc1 = nn.Linear(dim, hidden_dim)``, GELU, ``self.fc2 = nn.Linear(hidden_dim, dim)`` (paper eq. 3).
    Both GELUs pass: the exact (erf) one of timm, torchvision and ``nn.GELU()``, and the tanh approximation
    (``nn.GELU(approximate="tanh")``), which is what the paper's JAX code uses. Both layers get their sizes in
    ``__init__`` (no lazy layer): the next cell loads the weights into ``vit_edu.Mlp`` before any call.
    """,
)


# ------------------------------------------------------------------------------------- 7 encoder block
_SHIFT_NAMES = ("bias", "beta", "b", "shift")


def norm_params(ctx: Ctx, name: str, D: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight, bias) of the student's LayerNorm ``self.<name>``, nn.LayerNorm or hand-written (gamma/beta)."""
    found = ctx.with_prefix(name)
    w = next((found[n] for n in SCALE_NAMES if n in found), None)
    b = next((found[n] for n in _SHIFT_NAMES if n in found), None)
    vectors = [v for v in found.values() if v is not None and tuple(v.shape) == (D,)]
    if len(vectors) == 2:  # a name outside the lists: the other vector; two such names: the first registered scales
        if w is None and b is None:
            w, b = vectors
        elif w is None:
            w = vectors[1] if vectors[0] is b else vectors[0]
        elif b is None:
            b = vectors[1] if vectors[0] is w else vectors[0]
    if w is None:
        others = [n for n, p in ctx.params.items() if "." not in n and tuple(p.shape) == (D,)]
        if others:
            raise ContractError(f"`self.{name}` has no weight and bias of its own (the block has {', '.join(others)} "
                                f"instead: one weight and bias shared by both norms?); each norm needs its own, not "
                                f"shared: self.{name} = nn.LayerNorm(dim, eps=1e-6)")
        if not ctx.has_module(name):
            raise ContractError(f"{ctx.exercise.title} has no attribute `{name}`; the exercise asks for "
                                f"`self.{name}` = nn.LayerNorm(dim, eps=1e-6)")
        raise ContractError(f"`self.{name}` has no weight and bias of its own; a LayerNorm has both: "
                            f"nn.LayerNorm(dim, eps=1e-6)")
    if tuple(w.shape) != (D,) or (b is not None and tuple(b.shape) != (D,)):
        raise ContractError(f"`self.{name}` should be nn.LayerNorm({D}, eps=1e-6), got a weight of shape "
                            f"{list(w.shape)}")
    if b is None:
        raise ContractError(f"`self.{name}` has no bias (beta) of its own; the contract's LayerNorm has a weight and a "
                            f"bias: nn.LayerNorm(dim, eps=1e-6), not bias=False")
    return w, b


def layer_norm(x: torch.Tensor, wb: Tuple[torch.Tensor, Optional[torch.Tensor]], eps: float = 1e-6,
               unbiased: bool = False, eps_outside: bool = False) -> torch.Tensor:
    if not unbiased and not eps_outside:
        return F.layer_norm(x, x.shape[-1:], wb[0], wb[1], eps)
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=unbiased)
    y = (x - mean) / (var.sqrt() + eps if eps_outside else (var + eps).sqrt())
    return y * wb[0] + (0 if wb[1] is None else wb[1])


class _BlockWeights:
    def __init__(self, ctx: Ctx):
        D, H, M = ctx.init
        self.D, self.H = D, H
        self.n1, self.n2 = norm_params(ctx, "norm1", D), norm_params(ctx, "norm2", D)
        self.qkv, self.proj = mha_weights(ctx, D, "attn.")
        self.fc1, self.fc2 = linear(ctx, "mlp.fc1", D, M), linear(ctx, "mlp.fc2", M, D)

    def attn(self, t: torch.Tensor, **kw: Any) -> torch.Tensor:
        return mha(t, self.qkv, self.proj, self.H, **kw)

    def mlp(self, t: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor] = F.gelu) -> torch.Tensor:
        return mlp(t, self.fc1, self.fc2, act)

    def block(self, x: torch.Tensor, n1: Any = None, n2: Any = None, res_a: bool = True, res_b: bool = True,
              act: Callable[[torch.Tensor], torch.Tensor] = F.gelu, **ln: Any) -> torch.Tensor:
        n1, n2 = n1 or self.n1, n2 or self.n2
        h = self.attn(layer_norm(x, n1, **ln)) + (x if res_a else 0)
        return self.mlp(layer_norm(h, n2, **ln), act) + (h if res_b else 0)


def _block_cases() -> List[Case]:
    cases = [Case((torch.randn(B, N, D),), init=(D, H, M)) for D, H, M, B, N in
             [(32, 4, 64, 2, 5), (16, 2, 32, 1, 3), (24, 3, 48, 2, 6)]]
    # tokens of a small size: the LayerNorm's eps (1e-6) matters, so eps=1e-5 or eps outside the root shows
    cases.append(Case((1e-3 * torch.randn(2, 4, 16),), init=(16, 4, 32)))
    cases.append(Case((torch.randn(2, 3, 8),), init=(8, 2, 16), grad=True))
    return cases


def _block_reference(ctx: Ctx, x: torch.Tensor) -> torch.Tensor:
    return _BlockWeights(ctx).block(x)


def _block_tanh(ctx: Ctx, x: torch.Tensor) -> torch.Tensor:
    return _BlockWeights(ctx).block(x, act=lambda t: F.gelu(t, approximate="tanh"))


def _block_mutants(ctx: Ctx, x: torch.Tensor) -> List[Mutant]:
    bw = _BlockWeights(ctx)
    n1, n2 = bw.n1, bw.n2
    ln = layer_norm
    attn, mlp_ = bw.attn, bw.mlp

    def post() -> torch.Tensor:
        h = ln(x + attn(x), n1)
        return ln(h + mlp_(h), n2)

    def post_inner() -> torch.Tensor:  # x + LN(attn(x)): norm on the branch output
        h = x + ln(attn(x), n1)
        return h + ln(mlp_(h), n2)

    def normed_residual() -> torch.Tensor:
        y = ln(x, n1)
        h = y + attn(y)
        z = ln(h, n2)
        return z + mlp_(z)

    def parallel() -> torch.Tensor:
        h = x + attn(ln(x, n1))
        return h + mlp_(ln(x, n2))

    def mlp_residual_of_input() -> torch.Tensor:  # h computed, but x added back after the MLP
        return x + mlp_(ln(x + attn(ln(x, n1)), n2))

    def no_norm() -> torch.Tensor:
        h = x + attn(x)
        return h + mlp_(h)

    def final_norm() -> torch.Tensor:
        return ln(bw.block(x), n2)

    def mlp_first() -> torch.Tensor:
        h = x + mlp_(ln(x, n2))
        return h + attn(ln(h, n1))

    return [
        ("the attention residual is missing: x = x + self.attn(self.norm1(x))", lambda: bw.block(x, res_a=False)),
        ("the MLP residual is missing: x = x + self.mlp(self.norm2(x))", lambda: bw.block(x, res_b=False)),
        ("both residual connections are missing: x = x + attn(norm1(x)); x = x + mlp(norm2(x))",
         lambda: bw.block(x, res_a=False, res_b=False)),
        ("this is post-norm (x = norm(x + sublayer(x)), the original Transformer); ViT is pre-norm: "
         "x = x + self.attn(self.norm1(x)); x = x + self.mlp(self.norm2(x))", post),
        ("the LayerNorm is applied to the sublayer output (x + norm(attn(x))); ViT normalises the sublayer INPUT: "
         "x = x + self.attn(self.norm1(x))", post_inner),
        ("the residual adds the normalised input; add the block input itself: x = x + self.attn(self.norm1(x)), "
         "not norm1(x) + attn(norm1(x))", normed_residual),
        ("norm1 and norm2 are swapped: norm1 goes before attention, norm2 before the MLP",
         lambda: bw.block(x, n1=n2, n2=n1)),
        ("norm1 is used for both sublayers; the MLP branch needs its own self.norm2", lambda: bw.block(x, n2=n1)),
        ("norm2 is used for both sublayers; the attention branch needs self.norm1", lambda: bw.block(x, n1=n2)),
        ("the LayerNorms are missing: x = x + self.attn(self.norm1(x)); x = x + self.mlp(self.norm2(x))", no_norm),
        ("the MLP reads the block input x instead of the attention output: h = x + attn(norm1(x)); "
         "out = h + mlp(norm2(h))", parallel),
        ("the MLP's residual adds the block input x instead of h = x + attn(norm1(x)), so the attention's output "
         "is lost: h = x + self.attn(self.norm1(x)); return h + self.mlp(self.norm2(h))", mlp_residual_of_input),
        ("the MLP runs before the attention; ViT's block is attention first, then the MLP", mlp_first),
        ("a LayerNorm is applied to the block's output; the pre-norm block ends with the MLP residual "
         "(the model's final norm comes after the last block)", final_norm),
        ("the hand-written LayerNorm uses the unbiased variance (x.var() divides by D-1); LayerNorm divides by D: "
         "x.var(dim=-1, unbiased=False, keepdim=True)", lambda: bw.block(x, unbiased=True)),
        ("the hand-written LayerNorm uses the unbiased variance (x.var() divides by D-1); LayerNorm divides by D: "
         "x.var(dim=-1, unbiased=False, keepdim=True)", lambda: bw.block(x, unbiased=True, eps_outside=True)),
        ("the LayerNorm's eps is 1e-5 (PyTorch's default); ViT (paper code, timm, torchvision) uses "
         "nn.LayerNorm(dim, eps=1e-6)", lambda: bw.block(x, eps=1e-5)),
        ("the hand-written LayerNorm adds eps outside the square root; LayerNorm divides by sqrt(var + eps)",
         lambda: bw.block(x, eps_outside=True)),
        ("ReLU is used instead of GELU in the MLP", lambda: bw.block(x, act=F.relu)),
        ("the MLP has no activation: fc1 -> GELU -> fc2", lambda: bw.block(x, act=lambda t: t)),
    ]


_PARTS = ("norm1", "attn", "norm2", "mlp")


def _sub_outputs(module: Any, case: Case, x: torch.Tensor) -> Dict[str, Any]:
    """Custom probe step: the student's parts on their own, to name a mistake inside self.attn or self.mlp, and
    what each part does with the tokens (notebook 04 builds a post-norm block from them: self.attn(x) + x)."""
    out: Dict[str, Any] = {"parts": {}}
    for name in _PARTS:
        y, problem = call_alone(module, name, x, x.shape[-1])  # another calling convention: recorded, judged whole
        if problem:
            out["parts"][name] = problem
        else:
            out[name] = y.detach().clone()
    return out


def _norm_message(ctx: Ctx, bw: "_BlockWeights", x: torch.Tensor, named_only: bool = False) -> Optional[str]:
    """self.norm1 and self.norm2 on their own (recorded by the probe): a wrong eps in one of them, which faint tokens
    show, is named with the norm it is in (norm2's input inside the block is not faint, so only this shows it)."""
    for name, wb in (("norm1", bw.n1), ("norm2", bw.n2)):
        have = ctx.extra.get(name)
        if not isinstance(have, torch.Tensor) or have.shape != x.shape:
            continue
        if torch.allclose(have.double(), layer_norm(x, wb).double(), rtol=1e-4, atol=1e-5):
            continue
        for why, kw in (("has eps=1e-5 (PyTorch's default); ViT uses nn.LayerNorm(dim, eps=1e-6)", dict(eps=1e-5)),
                        ("adds eps outside the square root; LayerNorm divides by sqrt(var + eps)",
                         dict(eps_outside=True))):
            if torch.allclose(have.double(), layer_norm(x, wb, **kw).double(), rtol=1e-4, atol=1e-5):
                return f"self.{name} {why}"
        if not named_only:
            return f"wrong self.{name}(x) values on its own: it should be nn.LayerNorm(dim, eps=1e-6)"
    return None


def _parts_message(ctx: Ctx, x: torch.Tensor) -> Optional[str]:
    parts = ctx.extra.get("parts")
    if not isinstance(parts, dict):
        return None
    for name in _PARTS:
        problem = parts.get(name)
        if isinstance(problem, str):
            return (f"the block's output is right, but {problem}; the cells after this check call "
                    f"norm1, attn, norm2 and mlp on their own (a post-norm block made of your parts: "
                    f"norm1(x + attn(x))), so each takes the tokens [B, N, D] = {list(x.shape)} and returns a tensor "
                    f"of that shape (keep anything else, such as the attention weights, out of what forward returns)")
    return None


def _block_diagnose(ctx: Ctx, got: Any, x: torch.Tensor) -> Optional[str]:
    """When the block is wrong, first look inside: a wrong self.attn or self.mlp is named as such. When it is right,
    its parts must work on their own too (:func:`_parts_message`)."""
    try:
        bw = _BlockWeights(ctx)
    except ContractError:
        return None  # the reference step reports it
    if isinstance(got, torch.Tensor) and got.shape == x.shape and any(
            torch.allclose(got.double(), right.double(), rtol=1e-4, atol=1e-5)
            for right in (bw.block(x), bw.block(x, act=lambda t: F.gelu(t, approximate="tanh")))):
        return _parts_message(ctx, x) or _norm_message(ctx, bw, x)
    norm = _norm_message(ctx, bw, x, named_only=True)
    if norm is not None:
        return norm
    subs = [("attn", bw.attn(x), [(m, f) for m, f in mha_mutants(x, bw.qkv, bw.proj, bw.H)], []),
            ("mlp", bw.mlp(x), mlp_mutants(x, bw.fc1, bw.fc2), [bw.mlp(x, lambda t: F.gelu(t, approximate="tanh"))])]
    for name, want, mutants, accepted in subs:
        have = ctx.extra.get(name)
        if not isinstance(have, torch.Tensor) or have.shape != want.shape:
            continue
        if any(torch.allclose(have.double(), w.double(), rtol=1e-4, atol=1e-5) for w in [want] + accepted):
            continue
        for msg, make in mutants:
            try:
                if torch.allclose(have.double(), make().double(), rtol=1e-4, atol=1e-5):
                    return f"wrong self.{name}(x): {msg}"
            except Exception:  # noqa: BLE001
                continue
        return f"wrong self.{name}(x) values: check your {'attention' if name == 'attn' else 'MLP'} on its own first"
    extra = extra_params_message(ctx, got, lambda: _mutant_outputs(_block_mutants(ctx, x)),
                                 lambda n: n.split(".")[0] in _PARTS, "your block")
    return extra and (f"{extra}; the block is x = x + attn(norm1(x)); x = x + mlp(norm2(x)) and nothing else (no "
                      f"LayerScale or extra norm: every parameter lives in norm1, attn, norm2 or mlp)")


ENCODER_BLOCK_EX = Exercise(
    name="encoder_block",
    stand_ins=(("MLP", "vit_edu.Mlp"),),
    package=("vit_edu.block.Block",), loads_into="vit_edu.Block", loads_before_call=True,
    kind="module", call="EncoderBlock(dim, heads, mlp_dim)", forward="forward(x)",
    cases=_block_cases, reference=_block_reference, accept=[_block_tanh], mutants=_block_mutants,
    diagnose=_block_diagnose, probe_extra=_sub_outputs, shape_hint=_same_shape_hint,
    doc="""Check ``class EncoderBlock(nn.Module)``: ``__init__(self, dim, heads, mlp_dim)``, forward [B, N, D] -> [B, N, D].

    Pre-norm, as in the paper (eqs. 2-3): ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``. Attributes:
    ``norm1``, ``norm2`` (nn.LayerNorm(dim, eps=1e-6), or hand-written with its parameters named weight and
    bias: the block's state_dict is loaded into ``vit_edu.Block`` by name, so gamma/beta do not load),
    ``attn`` with ``.qkv`` / ``.proj`` (as in MultiHeadAttention), ``mlp`` with ``.fc1`` / ``.fc2``; each of the four
    maps the tokens [B, N, D] to a tensor [B, N, D] on its own. Every parameter gets its own random values, so
    shared or swapped norms show.
    """,
)


# ----------------------------------------------------------------------------------------- 8 ViT forward
_VIT_CONFIGS = [  # the first with dropout (the model arrives in eval mode: an answer that switches it on shows)
    (dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64, dropout=0.1), 2),
    (dict(image_size=(8, 16), patch_size=4, num_classes=3, dim=24, depth=3, heads=2, mlp_dim=32,
          patch_embed="linear"), 1),
    (dict(image_size=8, patch_size=2, in_channels=1, num_classes=4, dim=16, depth=1, heads=1, mlp_dim=16,
          fused_attn=False), 3),
    (dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2, heads=2, mlp_dim=16), 2),
]


def _vit_model(cfg: Dict[str, Any]) -> Any:
    from ..config import ViTConfig
    from ..vit import VisionTransformer
    model = VisionTransformer(ViTConfig(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # every piece must matter, so nothing stays near 0 or 1
            if name in ("cls_token", "pos_embed"):
                p.copy_(torch.randn_like(p))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)  # variance 1/fan_in
    return model


def _vit_cases() -> List[Case]:
    cases = []
    for k, (cfg, B) in enumerate(_VIT_CONFIGS):
        model = _vit_model(cfg)
        c = model.config
        H, W = c.image_size if isinstance(c.image_size, tuple) else (c.image_size, c.image_size)
        images = torch.randn(B, c.in_channels, H, W)
        label = (f"ViT(image_size={c.image_size}, patch_size={c.patch_size}, dim={c.dim}, depth={c.depth}, "
                 f"heads={c.heads}, num_classes={c.num_classes}), images {list(images.shape)}")
        cases.append(Case((model, images), label=label, grad=k == len(_VIT_CONFIGS) - 1))
    # a faint residual stream (embeddings and every block's output x 1e-3): the final norm's eps (1e-6) matters,
    # so a LayerNorm written again with another eps shows
    model, images = _vit_model(_VIT_CONFIGS[0][0]), torch.randn(cases[0].args[1].shape)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("patch_embed.", "cls_token", "pos_embed")) or ".proj." in name or ".fc2." in name:
                p.mul_(1e-3)
    cases.append(Case((model, images), label=cases[0].label + "; embeddings and block outputs x 1e-3 (faint "
                      "tokens: the final norm's eps matters)"))
    return cases


_FORBIDDEN = {"forward": "model(...)", "forward_features": "model.forward_features(...)",
              "embed": "model.embed(...)", "forward_head": "model.forward_head(...)", "pool": "model.pool(...)"}

_GUARD_LOG: List[str] = []  # names of the forbidden methods called during a vit_forward probe
_GUARD_MESSAGE = ("vit_forward called {what}; the exercise is to build the forward pass yourself from "
                  "model.patch_embed, model.cls_token, model.pos_embed, model.blocks, model.norm and model.head")


def _blocked_code(name: str, what: str) -> Any:
    """The code of a method that logs the call and refuses it; swapped into the function object itself, so
    that ``type(model).forward(model, x)``, a bound method kept from before, or ``super()`` are refused too."""
    src = ("def blocked(self, *args, **kwargs):\n"
           "    import vit_edu.classroom.exercises_blocks as _m\n"
           f"    _m._GUARD_LOG.append({name!r})\n"
           f"    raise RuntimeError({_GUARD_MESSAGE.format(what=what)!r})\n")
    namespace: Dict[str, Any] = {}
    exec(src, namespace)  # noqa: S102 - fixed source, no input from outside
    return namespace["blocked"].__code__


@contextmanager
def _vit_guard(case: Case, model: Any, images: torch.Tensor) -> Iterator[Dict[str, Any]]:
    """Custom probe step: the model's own forward methods are refused while the student's code runs."""
    from ..vit import VisionTransformer
    record: Dict[str, Any] = {}
    saved = []
    _GUARD_LOG.clear()
    for name, what in _FORBIDDEN.items():
        fn = getattr(VisionTransformer, name)
        if not fn.__code__.co_freevars:
            saved.append((fn, fn.__code__))
            fn.__code__ = _blocked_code(name, what)
    try:
        yield record
    finally:
        for fn, code in saved:
            fn.__code__ = code
        called = list(dict.fromkeys(_GUARD_LOG))
        _GUARD_LOG.clear()
        if called:
            record["violation"] = _GUARD_MESSAGE.format(what=_FORBIDDEN[called[0]])


def _vit_reference(ctx: Ctx, model: Any, images: torch.Tensor) -> torch.Tensor:
    return model(images)


def _vit_run(model: Any, images: torch.Tensor, cls: str = "front", pos: str = "all", norm: Any = True,
             pool: str = "cls", blocks: Optional[Sequence[int]] = None) -> torch.Tensor:
    t = model.patch_embed(images)  # [B, N, D]
    B, N = t.shape[:2]
    c = model.cls_token.expand(B, -1, -1)
    p = model.pos_embed
    if cls == "front":
        x = torch.cat([c, t], 1) + (p if pos == "all" else 0)
        if norm == "also_first":
            x = model.norm(x)
        if pos == "before_cls":
            x = torch.cat([c, t + p[:, 1:]], 1)
        elif pos == "first":
            x = torch.cat([c, t + p[:, :N]], 1)
    elif cls == "end":
        x = torch.cat([t, c], 1) + (p if pos == "all" else 0)
    else:  # no class token
        x = t + (p[:, 1:] if pos == "all" else p[:, :N] if pos == "first" else 0)
    if pos == "after":
        x = torch.cat([c, t], 1)
    for i in (range(len(model.blocks)) if blocks is None else blocks):
        x = model.blocks[i](x)
        if norm == "each":
            x = model.norm(x)
    if pos == "after":
        x = x + p
    if norm in (True, "also_first"):
        x = model.norm(x)
    elif isinstance(norm, float):  # the final norm written again with another eps
        x = F.layer_norm(x, x.shape[-1:], model.norm.weight, model.norm.bias, norm)
    pooled = {"cls": x[:, 0], "last": x[:, -1], "mean": x.mean(1), "mean_patches": x[:, 1:].mean(1),
              "first_patch": x[:, 1]}[pool]
    return model.head(pooled)


def _vit_mutants(ctx: Ctx, model: Any, images: torch.Tensor) -> List[Mutant]:
    def run(**kw: Any) -> Callable[[], torch.Tensor]:
        return lambda: _vit_run(model, images, **kw)

    L = len(model.blocks)
    return [
        ("the class token is missing: prepend model.cls_token (expanded to the batch) before adding "
         "model.pos_embed, and classify from it", run(cls="none")),
        ("the class token is missing (and pos_embed was cut to N rows, pos_embed[:, :N]): prepend model.cls_token "
         "before adding model.pos_embed", run(cls="none", pos="first")),
        ("the position embedding is missing: x = torch.cat([cls, tokens], dim=1) + model.pos_embed", run(pos="none")),
        ("the class token is appended at the end; it goes in front (index 0)", run(cls="end")),
        ("the class token is appended at the end; it goes in front (index 0), and the head reads x[:, 0]",
         run(cls="end", pool="last")),
        ("the position embedding was added before prepending the class token (the class token misses "
         "pos_embed[:, 0]); concatenate first, then add model.pos_embed", run(pos="before_cls")),
        ("pos_embed[:, :N] was added to the patch tokens: the position embedding has N+1 rows, row 0 for the class "
         "token; concatenate first, then add the whole model.pos_embed", run(pos="first")),
        ("the final LayerNorm model.norm is missing (paper eq. 4: y = LN(z_L^0))", run(norm=False)),
        ("the final LayerNorm is written again with eps=1e-5 (PyTorch's default); model.norm has eps=1e-6: "
         "call model.norm(x)", run(norm=1e-5)),
        ("model.norm is applied after every block; it is the final norm, once after the last block (each block "
         "has its own norms inside)", run(norm="each")),
        ("the position embedding is added after the blocks; it goes in before them: z_0 = [cls; tokens] + "
         "model.pos_embed (eq. 1)", run(pos="after")),
        ("the logits come from the mean of all tokens; ViT classifies from the class token: model.head(x[:, 0])",
         run(pool="mean")),
        ("the logits come from the mean of the patch tokens; this model classifies from the class token: "
         "model.head(x[:, 0])", run(pool="mean_patches")),
        ("the logits come from the last token x[:, -1]; the class token is x[:, 0]", run(pool="last")),
        ("the logits come from x[:, 1], the first patch token; the class token is x[:, 0] (index 0, in front)",
         run(pool="first_patch")),
        ("model.norm is also applied to the embeddings before the blocks; it is the final norm only (each block "
         "normalises its own input with norm1 and norm2)", run(norm="also_first")),
        ("the final LayerNorm is missing and the logits come from the mean of the tokens; use "
         "model.head(model.norm(x)[:, 0])", run(norm=False, pool="mean")),
        ("only the first block is applied; run them all: for blk in model.blocks: x = blk(x)", run(blocks=[0])),
        ("only the last block is applied; run them all: for blk in model.blocks: x = blk(x)", run(blocks=[L - 1])),
        ("the blocks are skipped: for blk in model.blocks: x = blk(x)", run(blocks=[])),
        ("the blocks run in reverse order", run(blocks=list(reversed(range(L))))),
        ("the last block is skipped (range(len(model.blocks) - 1)); run them all", run(blocks=list(range(L - 1)))),
        ("the first block runs twice", run(blocks=[0] + list(range(L)))),
    ]


VIT_FORWARD_EX = Exercise(
    name="vit_forward",
    package=("vit_edu.vit.VisionTransformer.forward", "vit_edu.vit.VisionTransformer.forward_features",
             "vit_edu.vit.VisionTransformer.forward_head", "vit_edu.vit.VisionTransformer.pool"),
    kind="function", call="vit_forward(model, images)", outputs=("logits",),
    cases=_vit_cases, reference=_vit_reference, mutants=_vit_mutants, guard=_vit_guard,
    explain=lambda ctx, kind, message, model, images: _cls_explain(ctx, kind, message, images),
    shape_hint=lambda ctx, slot, s, model, images: "one row of num_classes logits per image: model.head(x[:, 0])",
    doc="""Check ``vit_forward(model: vit_edu.VisionTransformer, images [B, C, H, W]) -> logits [B, num_classes]``.

    Built from the model's pieces (paper eqs. 1-4): tokens = model.patch_embed(images); prepend
    model.cls_token; add model.pos_embed; run every block of model.blocks; model.norm; model.head on the
    class token. The model's own forward methods (``model(...)``, ``model.forward_features`` and friends)
    are refused during the check. All parameters are random so that every piece matters.
    """,
)


# -------------------------------------------------------------------------------------- 9 attention rollout
def _rollout_reference(ctx: Ctx, att: Sequence[torch.Tensor]) -> torch.Tensor:
    """The package's rollout, kept differentiable (imported here: vit_edu.explain also loads matplotlib)."""
    from ..explain.analysis import attention_rollout

    return attention_rollout(att, differentiable=True)


def rollout_variant(att: Sequence[torch.Tensor], fuse: str = "mean", identity: str = "eye", renorm: str = "rows",
                    order: str = "last_left") -> torch.Tensor:
    """The usual mistakes of Abnar & Zuidema's (2020) rollout, one switch each, for the mutants only (the
    reference is :func:`vit_edu.explain.analysis.attention_rollout`). The defaults are the right answer,
    Â_l = rownorm(mean_heads(A_l) + I), R = Â_L ... Â_2 Â_1, so each mutant changes one thing."""
    result: Optional[torch.Tensor] = None
    for attn in att:
        a = {"mean": lambda: attn.mean(1), "max": lambda: attn.amax(1), "min": lambda: attn.amin(1),
             "sum": lambda: attn.sum(1), "first": lambda: attn[:, 0], "keep": lambda: attn}[fuse]()
        T = a.shape[-1]
        eye = torch.eye(T, dtype=a.dtype)
        if identity == "eye":
            a = a + eye
        elif identity == "ones":
            a = a + torch.ones(T, T, dtype=a.dtype)
        if renorm == "rows":
            a = a / a.sum(dim=-1, keepdim=True)
        elif renorm == "cols":
            a = a / a.sum(dim=-2, keepdim=True)
        elif renorm == "total":
            a = a / a.sum(dim=(-2, -1), keepdim=True)
        if result is None:
            result = a
        elif order == "last_left":
            result = a @ result
        elif order == "first_left":
            result = result @ a
        elif order == "sum":
            result = result + a
        else:  # elementwise
            result = result * a
    assert result is not None
    return result


def _rollout_cases() -> List[Case]:
    def case(L: int, B: int, H: int, T: int, dtype: torch.dtype = torch.float32, grad: bool = False,
             device: Optional[str] = None) -> Case:
        att = [(2.0 * torch.randn(B, H, T, T, dtype=dtype)).softmax(-1) for _ in range(L)]
        return Case((att,), grad=grad, device=device, label=f"{L} attention maps of shape {[B, H, T, T]} "
                    f"([B, heads, T, T])" + ("" if dtype == torch.float32 else f" {str(dtype)[6:]}"))
    return [case(3, 2, 4, 5), case(2, 1, 2, 6), case(1, 1, 3, 4), case(4, 3, 1, 10), case(2, 2, 2, 3, torch.float64),
            case(3, 2, 3, 4, grad=True), case(2, 2, 3, 5, device="meta")]  # the input's device: torch.eye(T, device=)


def _rollout_mutants(ctx: Ctx, att: Sequence[torch.Tensor]) -> List[Mutant]:
    def v(**kw: Any) -> Callable[[], torch.Tensor]:
        return lambda: rollout_variant(att, **kw)

    return [
        ("the identity is missing: add torch.eye(T) to each head-averaged attention matrix (the residual "
         "connection), then renormalise the rows", v(identity="none")),
        ("a matrix of ones is added instead of the identity: the residual connection is torch.eye(T)",
         v(identity="ones")),
        ("the rows are not renormalised after adding the identity (each row now sums to 2): add torch.eye(T) "
         "first, then divide each row by its sum so it sums to 1", v(renorm="none")),
        ("the columns are normalised instead of the rows: a / a.sum(dim=-1, keepdim=True)", v(renorm="cols")),
        ("the whole matrix is normalised instead of each row: a / a.sum(dim=-1, keepdim=True)", v(renorm="total")),
        ("the layers are multiplied in the wrong order (Â_1 Â_2 ... Â_L); the rollout is R = Â_L ... Â_2 Â_1: "
         "result = a @ result", v(order="first_left")),
        ("the heads are not averaged: the max over heads was taken; use attn.mean(dim=1)", v(fuse="max")),
        ("the heads are not averaged: the min over heads was taken; use attn.mean(dim=1)", v(fuse="min")),
        ("only the first head is used; average the heads: attn.mean(dim=1)", v(fuse="first")),
        ("the heads are summed, not averaged: use attn.mean(dim=1)", v(fuse="sum")),
        ("the heads are summed, not averaged, and the rows not renormalised: use attn.mean(dim=1), + I, renormalise",
         v(fuse="sum", renorm="none")),
        ("each head is rolled out separately and averaged at the end; average the heads in every layer first",
         lambda: rollout_variant(att, fuse="keep").mean(1)),
        ("only the last layer is used; multiply all layers: R = Â_L ... Â_1", lambda: rollout_variant(att[-1:])),
        ("only the first layer is used; multiply all layers: R = Â_L ... Â_1", lambda: rollout_variant(att[:1])),
        ("the first layer is skipped; multiply all layers: R = Â_L ... Â_1", lambda: rollout_variant(att[1:])),
        ("the layers are added instead of multiplied: R = Â_L ... Â_1", v(order="sum")),
        ("the layers are multiplied elementwise (*) instead of as matrices (@)", v(order="elementwise")),
    ]


def _rollout_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], att: Sequence[torch.Tensor]) -> str:
    B, H, T, _ = att[0].shape
    if s == (B, H, T, T):
        return "the heads axis is still there: average over heads (attn.mean(dim=1)) in every layer"
    if s == (H, T, T) and H != B:
        return "the batch axis is gone: the mean was taken over dim 0 (the batch); average the heads, dim=1"
    return "the rollout is one T x T matrix per image: [B, T, T]"


ROLLOUT_EX = Exercise(
    name="rollout",
    package=("vit_edu.explain.analysis.attention_rollout", "vit_edu.explain.analysis.rollout_cls_map"),
    kind="function", call="attention_rollout(attentions)", outputs=("rollout",),
    cases=_rollout_cases, reference=_rollout_reference, mutants=_rollout_mutants,
    shape_hint=_rollout_hint,
    grad_view=along_rows,  # 0.5 A + 0.5 I equals rownorm(A + I) on attention rows, but not off them
    doc="""Check ``attention_rollout(attentions: list of L tensors [B, heads, T, T]) -> [B, T, T]``.

    Abnar & Zuidema (2020): per layer Â_l = rownorm(mean_heads(A_l) + I); rollout R = Â_L ... Â_2 Â_1.
    Row i of R says how much each input token flows into output token i (row 0: the class token).
    """,
)


EXERCISES: Dict[str, Exercise] = {ex.name: ex for ex in [MLP_EX, ENCODER_BLOCK_EX, VIT_FORWARD_EX, ROLLOUT_EX]}
