"""The nine exercises that build the model (notebooks 01-05 and 07): cases, reference, usual mistakes.

Each exercise is a table: the cases (shapes chosen so that every mistake changes the answer: non-square
images, batch 1, several head counts), the reference written with einops, and the mistakes students make,
each with the message that explains it. :mod:`vit_edu.classroom.engine` does the rest (dtype, device,
in-place edits, dropout left on, gradients).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .engine import SCALE_NAMES, Case, ContractError, Ctx, Exercise, Mutant

PATCHIFY = "b c (h p1) (w p2) -> b (h w) (p1 p2 c)"


# ------------------------------------------------------------------------------------------------ helpers
def linear(ctx: Ctx, name: str, n_in: int, n_out: int, hint: str = "", alt: str = ""
           ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight, bias) of the student's ``self.<name>``, an nn.Linear(n_in, n_out) by contract (bias optional)."""
    w, b = ctx.param(f"{name}.weight"), ctx.param(f"{name}.bias")
    want = f"nn.Linear({n_in}, {n_out}){hint}{alt}"
    if w is None:
        if not ctx.has_module(name):
            raise ContractError(f"{ctx.exercise.title} has no attribute `{name}`; the exercise asks for "
                                f"`self.{name}` = {want}")
        raise ContractError(f"`self.{name}` should be {want}; it has no parameter `weight`")
    if tuple(w.shape) != (n_out, n_in) or (b is not None and tuple(b.shape) != (n_out,)):
        got = f"nn.Linear({w.shape[1]}, {w.shape[0]})" if w.ndim == 2 else f"a weight of shape {list(w.shape)}"
        raise ContractError(f"`self.{name}` should be {want}, got {got}")
    return w, b


def lin(x: torch.Tensor, wb: Tuple[torch.Tensor, Optional[torch.Tensor]]) -> torch.Tensor:
    return F.linear(x, wb[0], wb[1])


# ------------------------------------------------------------------------------------------- 1 patchify
_PATCHIFY_ORDERS = [
    ("b (h w) (c p1 p2)", "the pixels of each patch are flattened in (c p1 p2) order (channels first, the order "
     "F.unfold gives); the contract is (p1 p2 c), channels last: "
     "rearrange(images, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)', p1=P, p2=P)"),
    ("b (w h) (p1 p2 c)", "the patches are numbered column by column ((w h) order); number them row by row, "
     "like reading text: 'b (h w) ...'"),
    ("b (w h) (c p1 p2)", "the patches are numbered column by column ((w h) order) AND the pixels are flattened "
     "in (c p1 p2) order; the contract is 'b (h w) (p1 p2 c)'"),
    ("b (h w) (p2 p1 c)", "rows and columns inside each patch are swapped ((p2 p1 c) order); use (p1 p2 c): "
     "first the row inside the patch, then the column, then the channel"),
    ("b (w h) (p2 p1 c)", "the image is transposed: patches numbered column by column and (p2 p1 c) inside; "
     "split H into (h p1) and W into (w p2), in that order"),
    ("b (h w) (p1 c p2)", "the pixels of each patch are flattened in (p1 c p2) order; the contract is (p1 p2 c)"),
]


def patch_orders(images: torch.Tensor, P: int) -> List[Mutant]:
    """The usual wrong ways to cut images into patches (shared by patchify and the patch embedding)."""
    B, C, H, W = images.shape
    N = (H // P) * (W // P)
    out: List[Mutant] = [(msg, lambda pat=pat: rearrange(images, f"b c (h p1) (w p2) -> {pat}", p1=P, p2=P))
                         for pat, msg in _PATCHIFY_ORDERS]
    out += [
        ("you reshaped the image tensor directly; a reshape keeps the memory order (c, h, w), so each 'patch' "
         "is a run of consecutive pixels of one channel, not a P x P square. Split H and W into (h p1) and "
         "(w p2) and move the axes before flattening (rearrange, or reshape + permute)",
         lambda: images.reshape(B, N, -1)),
        ("the image axes are split as (p1 h) and (p2 w): each 'patch' then takes every (H/P)-th pixel, a strided "
         "grid, not a P x P square; split them as (h p1) and (w p2): 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'",
         lambda: rearrange(images, "b c (p1 h) (p2 w) -> b (h w) (p1 p2 c)", p1=P, p2=P)),
        ("you moved the channels last and reshaped; that cuts image rows into pieces instead of P x P squares. "
         "Split H and W into (h p1) and (w p2) first: rearrange(images, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)')",
         lambda: images.permute(0, 2, 3, 1).reshape(B, N, -1)),
    ]
    return out


def _patchify_cases() -> List[Case]:
    shapes = [(2, 3, 8, 8, 4), (1, 3, 8, 12, 4), (3, 2, 6, 9, 3), (1, 1, 4, 6, 2), (2, 3, 16, 16, 8)]
    cases = [Case((torch.randn(B, C, H, W), P)) for B, C, H, W, P in shapes]
    cases.append(Case((torch.randn(2, 2, 6, 4, dtype=torch.float64), 2)))  # the dtype follows the input
    cases.append(Case((torch.randn(2, 3, 4, 8), 2), grad=True))
    return cases


def _patchify_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], images: torch.Tensor, P: int) -> str:
    B, C, H, W = images.shape
    N = (H // P) * (W // P)
    if len(s) == 3 and H != W and s[1] in ((H // P) ** 2, (W // P) ** 2) and s[1] != N:
        return (f"the patch grid is taken as square; a {H} x {W} image has (H/P)*(W/P) = {N} patches "
                "(h = H // P and w = W // P separately)")
    if len(s) != 3:
        return (f"flatten to 3 axes [B, N, P*P*C] = [{B}, {N}, {P * P * C}]: one row per patch, all its pixels and "
                "channels in one vector")
    return f"N = (H/P)*(W/P) = {N} patches, each with P*P*C = {P * P * C} numbers"


PATCHIFY_EX = Exercise(
    name="patchify", kind="function", call="patchify(images, patch_size)",
    cases=_patchify_cases,
    reference=lambda ctx, images, P: rearrange(images, PATCHIFY, p1=P, p2=P),
    mutants=lambda ctx, images, P: patch_orders(images, P),
    shape_hint=_patchify_hint,
    doc="""Check ``patchify(images [B, C, H, W], patch_size: int) -> [B, N, P*P*C]``.

    N = (H/P) * (W/P) patches in row-major order (left to right, then top to bottom); the P*P*C numbers of
    each patch in (p1 p2 c) order, as ``rearrange(images, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)')``.
    """,
)


# ---------------------------------------------------------------------------------- 2 patch embedding
def _patch_embedding_cases() -> List[Case]:
    cases = [Case((torch.randn(B, C, S, S),), init=(S, P, C, D))
             for S, P, C, D, B in [(8, 4, 3, 16, 2), (12, 4, 3, 8, 1), (16, 8, 2, 12, 3), (6, 2, 3, 5, 2)]]
    cases.append(Case((torch.randn(2, 2, 8, 8),), init=(8, 2, 2, 6), grad=True))
    return cases


def _basis(module: Any, case: Case, images: torch.Tensor) -> Dict[str, Any]:
    """Custom probe step: the tokens of one-hot images, one per pixel of the top-left patch, (p1 p2 c) order,
    plus a black image. They tell the judge which weight column each pixel meets (any consistent pixel
    order of a Linear patch embedding is right)."""
    S, P, C, D = case.init
    eye = torch.eye(P * P * C, dtype=images.dtype)
    patch = rearrange(eye, "n (p1 p2 c) -> n c p1 p2", p1=P, p2=P, c=C)
    batch = torch.zeros(P * P * C + 1, C, S, S, dtype=images.dtype)
    batch[1:, :, :P, :P] = patch
    out = module(batch)
    if not isinstance(out, torch.Tensor) or out.ndim != 3:
        return {}
    return {"basis": out[:, 0].detach().clone()}  # [1 + P*P*C, D]: token 0 of each image


def _pixel_order(ctx: Ctx, w: torch.Tensor) -> Optional[torch.Tensor]:
    """The permutation perm with "student's pixel perm[j] = the contract's pixel j", found from the basis
    tokens, or None when the student's embedding is not a Linear map of the patch in some fixed order."""
    basis = ctx.extra.get("basis")
    if not isinstance(basis, torch.Tensor) or basis.ndim != 2 or basis.shape[0] != w.shape[1] + 1 \
            or basis.shape[1] != w.shape[0]:
        return None
    cols = (basis[1:] - basis[:1]).double()  # [P*P*C, D]: W[:, perm[j]] for pixel j
    dist = torch.cdist(cols, w.detach().t().double())  # [pixels, columns]
    perm = dist.argmin(dim=1)
    scale = float(w.detach().abs().max())
    if len(set(perm.tolist())) != w.shape[1] or float(dist.min(dim=1).values.max()) > 1e-4 * (1 + scale):
        return None
    return perm


def _patch_proj(ctx: Ctx) -> Tuple[torch.Tensor, Optional[torch.Tensor], str, Optional[torch.Tensor]]:
    S, P, C, D = ctx.init
    want = f"nn.Conv2d({C}, {D}, kernel_size={P}, stride={P}) or nn.Linear({P * P * C}, {D})"
    w, b = ctx.param("proj.weight"), ctx.param("proj.bias")
    if w is None:
        if not ctx.has_module("proj"):
            raise ContractError(f"{ctx.exercise.title} has no attribute `proj`; the exercise asks for "
                                f"`self.proj` = {want}")
        raise ContractError(f"`self.proj` should be {want}; it has no parameter `weight`")
    if w.ndim == 4 and tuple(w.shape) == (D, C, P, P):
        return w, b, "conv", None
    if w.ndim == 2 and tuple(w.shape) == (D, P * P * C):
        return w, b, "linear", _pixel_order(ctx, w)
    got = (f"nn.Linear({w.shape[1]}, {w.shape[0]})" if w.ndim == 2 else
           f"nn.Conv2d({w.shape[1]}, {w.shape[0]}, kernel_size={tuple(w.shape[2:])})" if w.ndim == 4 else
           f"a weight of shape {list(w.shape)}")
    raise ContractError(f"`self.proj` should be {want}, got {got}")


def _patch_embedding_reference(ctx: Ctx, images: torch.Tensor) -> torch.Tensor:
    S, P, C, D = ctx.init
    w, b, kind, perm = _patch_proj(ctx)
    if kind == "conv":
        return rearrange(F.conv2d(images, w, b, stride=P), "b d h w -> b (h w) d")
    w_eff = w if perm is None else w[:, perm]  # the student's weight, columns in (p1 p2 c) order
    return F.linear(rearrange(images, PATCHIFY, p1=P, p2=P), w_eff, b)


def _patch_embedding_mutants(ctx: Ctx, images: torch.Tensor) -> List[Mutant]:
    S, P, C, D = ctx.init
    w, b, kind, perm = _patch_proj(ctx)
    B = images.shape[0]
    out: List[Mutant] = []
    if kind == "conv":
        conv = lambda **kw: F.conv2d(images, w, b, **kw)  # noqa: E731  [B, D, h, w]
        out += [
            ("the tokens are in column-major order: rearrange the Conv2d output with 'b d h w -> b (h w) d', "
             "not '(w h)'", lambda: rearrange(conv(stride=P), "b d h w -> b (w h) d")),
            ("you reshaped the Conv2d output [B, D, h, w] straight to [B, N, D], which mixes features and "
             "positions; move D last: rearrange(x, 'b d h w -> b (h w) d') or x.flatten(2).transpose(1, 2)",
             lambda: conv(stride=P).reshape(B, -1, D)),
            (f"`self.proj` should be nn.Conv2d({C}, {D}, kernel_size={P}, stride={P}): with stride 1 the windows "
             "overlap; stride = kernel_size = patch_size cuts the image into non-overlapping patches",
             lambda: rearrange(conv(stride=1), "b d h w -> b (h w) d")),
        ]
        out += [(f"`self.proj` should be nn.Conv2d({C}, {D}, kernel_size={P}, stride={P}) without padding: padding "
                 "adds a border of zeros, so the windows are no longer the image's patches",
                 lambda pad=pad: rearrange(conv(stride=P, padding=pad), "b d h w -> b (h w) d"))
                for pad in sorted({1, P // 2, P - 1})]
        out.append(("the bias of self.proj is not used (F.conv2d without bias); call self.proj(images)",
                    lambda: rearrange(F.conv2d(images, w, None, stride=P), "b d h w -> b (h w) d")))
        w_lin = rearrange(w, "d c p1 p2 -> d (p1 p2 c)")
        out += [(msg, lambda m=make: F.linear(m(), w_lin, b)) for msg, make in patch_orders(images, P)]
        return out
    weights = [w] if perm is None else [w[:, perm], w]
    for wl in weights:
        out += [(msg, lambda m=make, wl=wl: F.linear(m(), wl, b)) for msg, make in patch_orders(images, P)]
    out.append(("the bias of self.proj is not used (F.linear without bias); call self.proj(patches)",
                lambda: F.linear(rearrange(images, PATCHIFY, p1=P, p2=P), weights[0], None)))
    return out


def _patch_embedding_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], images: torch.Tensor) -> str:
    S, P, C, D = ctx.init
    B, N = images.shape[0], (S // P) ** 2
    if s == (B, D, N):
        return "got [B, D, N]: after flatten(2) also transpose(1, 2) so each token is a row"
    if len(s) == 4:
        return "the Conv2d output [B, D, h, w] still has to become [B, h*w, D]"
    return f"one D={D}-dim token per patch: [B, N, D] = [{B}, {N}, {D}]"


PATCH_EMBEDDING_EX = Exercise(
    name="patch_embedding", kind="module", call="PatchEmbedding(image_size, patch_size, in_channels, dim)",
    forward="forward(images)", cases=_patch_embedding_cases, reference=_patch_embedding_reference,
    mutants=_patch_embedding_mutants, shape_hint=_patch_embedding_hint, probe_extra=_basis,
    doc="""Check ``class PatchEmbedding(nn.Module)``: ``__init__(self, image_size, patch_size, in_channels, dim)``.

    ``self.proj`` is ``nn.Conv2d(C, D, kernel_size=P, stride=P)`` or ``nn.Linear(P*P*C, D)`` (both are
    right; a Linear may flatten the pixels of a patch in any fixed order); ``forward(images [B, C, H, W])
    -> [B, N, D]`` with the patches in row-major order.
    """,
)


# ------------------------------------------------------------------------------ 3 class token + positions
def _cls_cases() -> List[Case]:
    def case(B: int, N: int, D: int, dtype: torch.dtype = torch.float32, grad: bool = False,
             scale: float = 1.0) -> Case:
        return Case((scale * torch.randn(B, N, D, dtype=dtype), scale * torch.randn(1, 1, D, dtype=dtype),
                     scale * torch.randn(1, N + 1, D, dtype=dtype)), grad=grad)
    # float64 numbers far beyond float32's range: a float32 tensor in between shows (as inf)
    return [case(2, 4, 8), case(1, 9, 16), case(3, 1, 4), case(2, 16, 32), case(2, 3, 6, torch.float64, scale=1e60),
            case(3, 4, 8, grad=True)]


def _cls_reference(ctx: Ctx, t: torch.Tensor, c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return torch.cat([c.expand(t.shape[0], -1, -1), t], dim=1) + p


def _cls_mutants(ctx: Ctx, t: torch.Tensor, c: torch.Tensor, p: torch.Tensor) -> List[Mutant]:
    B, N, D = t.shape
    cb = c.expand(B, -1, -1)
    cat = lambda *xs: torch.cat(xs, dim=1)  # noqa: E731
    return [
        ("the position embedding is missing: add pos_embed to all N+1 tokens after prepending the class token",
         lambda: cat(cb, t)),
        ("the class token is at the end; it goes in FRONT (index 0): torch.cat([cls, tokens], dim=1)",
         lambda: cat(t, cb) + p),
        ("the class token is at the end and has no position embedding; put it in front, then add pos_embed",
         lambda: cat(t, cb)),
        ("the class token is at the end and the position embedding was added to the patch tokens only; put the "
         "class token in front, then add pos_embed", lambda: cat(t + p[:, :N], cb)),
        ("the position embedding was added to the patch tokens before prepending the class token, so the "
         "class token misses pos_embed[:, 0]; concatenate first, then add pos_embed", lambda: cat(cb, t + p[:, 1:])),
        ("the position embedding was cut to its first N rows (pos_embed[:, :N]) and added before prepending the "
         "class token; concatenate first, then add the whole pos_embed", lambda: cat(cb, t + p[:, :N])),
        ("the position embedding was cut to its first N rows (pos_embed[:, :N]) and the class token is missing; "
         "prepend cls_token, then add the whole pos_embed", lambda: t + p[:, :N]),
        ("the class token is missing: prepend cls_token (expanded to the batch: cls_token.expand(B, -1, -1)) "
         "before adding pos_embed", lambda: t + p[:, 1:]),
        ("the position embedding was added to the class token only; add it to all N+1 tokens, the patch tokens "
         "too", lambda: cat(cb + p[:, :1], t)),
        ("the class token was added to every patch token instead of prepended as a new token: "
         "torch.cat([cls, tokens], dim=1)", lambda: t + c + p[:, 1:]),
        ("the class token replaced the first patch token instead of being prepended: torch.cat([cls, tokens], dim=1)",
         lambda: cat(cb, t[:, 1:]) + p[:, :N]),
    ]


def _cls_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], t: torch.Tensor, c: torch.Tensor, p: torch.Tensor) -> str:
    B, N, D = t.shape
    if s == (1, N + 1, D) and B > 1:
        return "the batch axis is 1: expand the class token to the batch, cls_token.expand(B, -1, -1)"
    if s == (B, N, D):
        return "one token short: prepend the class token"
    return f"expected one class token plus N={N} patch tokens per image: [B, N+1, D] = [{B}, {N + 1}, {D}]"


def _cls_explain(ctx: Ctx, kind: str, message: str, t: torch.Tensor, *rest: Any) -> Optional[str]:
    if "Sizes of tensors must match except in dimension 1" in message and t.shape[0] > 1:
        return ("the class token [1, 1, D] was not expanded to the batch before torch.cat: "
                "cls_token.expand(B, -1, -1)")
    return None


CLS_AND_POS_EX = Exercise(
    name="cls_and_pos", kind="function", call="add_cls_and_pos(tokens, cls_token, pos_embed)",
    cases=_cls_cases, reference=_cls_reference, mutants=_cls_mutants, shape_hint=_cls_hint, explain=_cls_explain,
    doc="""Check ``add_cls_and_pos(tokens [B, N, D], cls_token [1, 1, D], pos_embed [1, N+1, D]) -> [B, N+1, D]``.

    The class token goes in front (index 0) of every sequence in the batch, then the position embedding
    is added to all N+1 tokens (paper eq. 1: z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos).
    """,
)


# ------------------------------------------------------------------------------------------ 4 attention
def _attention_cases() -> List[Case]:
    def case(B: int, H: int, N: int, d: int, dtype: torch.dtype = torch.float32, grad: bool = False) -> Case:
        return Case(tuple(torch.randn(B, H, N, d, dtype=dtype) for _ in range(3)), grad=grad,
                    label=f"q, k, v each {[B, H, N, d]} ([B, heads, N, d])" + ("" if dtype == torch.float32
                                                                                 else f" {str(dtype)[6:]}"))
    return [case(2, 4, 6, 8), case(1, 1, 5, 16), case(3, 2, 7, 4), case(1, 3, 4, 32),
            case(2, 2, 3, 5, torch.float64), case(2, 2, 5, 3, grad=True)]


def _attention_reference(ctx: Ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    return w @ v, w


def attention_weight_mutants(q: torch.Tensor, k: torch.Tensor) -> List[Tuple[str, Callable[[], torch.Tensor]]]:
    """Attention weights [B, h, N, N] of the usual mistakes."""
    B, H, N, d = q.shape
    logits = q @ k.transpose(-2, -1)  # [B, h, N, N]
    s = logits / math.sqrt(d)
    return [
        ("the 1/sqrt(d) scale is missing: softmax(q @ k^T / sqrt(d)) with d = q.shape[-1], the head dim",
         lambda: logits.softmax(-1)),
        ("the logits are scaled by 1/d instead of 1/sqrt(d)", lambda: (logits / d).softmax(-1)),
        ("the logits are multiplied by sqrt(d) instead of divided by it", lambda: (logits * math.sqrt(d)).softmax(-1)),
        ("the softmax is over the wrong axis (dim=-2, the queries); each row (one query) must sum to 1 over the "
         "keys: softmax(dim=-1)", lambda: s.softmax(-2)),
        ("the softmax is over the heads axis (dim=1); it must run over the keys: softmax(dim=-1)",
         lambda: s.softmax(1)),
        ("the softmax is over the batch axis (dim=0); it must run over the keys: softmax(dim=-1)",
         lambda: s.softmax(0)),
        ("the softmax is missing: the weights must be softmax(q @ k^T / sqrt(d), dim=-1)", lambda: s),
        ("the weights are transposed (k @ q^T instead of q @ k^T)", lambda: (k @ q.transpose(-2, -1) / math.sqrt(d)).softmax(-1)),
        ("the scale uses the number of tokens N (q.shape[-2]); use the head dim d = q.shape[-1]",
         lambda: (logits / math.sqrt(N)).softmax(-1)),
        ("the scale uses the number of heads (q.shape[1]); use the head dim d = q.shape[-1]",
         lambda: (logits / math.sqrt(H)).softmax(-1)),
        ("the scale uses the batch size (q.shape[0]); use the head dim d = q.shape[-1]",
         lambda: (logits / math.sqrt(B)).softmax(-1)),
        ("the logits are divided by sqrt(d) twice", lambda: (logits / d).softmax(-1)),
        ("exp() is used without normalising the rows: use softmax(dim=-1)", lambda: s.exp()),
        ("the 1/sqrt(d) scale is applied after the softmax; scale the logits before it: softmax(q @ k^T / sqrt(d))",
         lambda: logits.softmax(-1) / math.sqrt(d)),
    ]


def _attention_mutants(ctx: Ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> List[Mutant]:
    exp_out, exp_w = _attention_reference(ctx, q, k, v)
    out: List[Mutant] = [(msg, lambda m=make: (m() @ v, m())) for msg, make in attention_weight_mutants(q, k)]
    out += [
        ("out uses the transposed weights: out = weights @ v", lambda: (exp_w.transpose(-2, -1) @ v, None)),
        ("out is weights @ k; it must be weights @ v", lambda: (exp_w @ k, None)),
        ("out is weights @ q; it must be weights @ v", lambda: (exp_w @ q, None)),
        ("the weights returned are the logits q @ k^T / sqrt(d) before the softmax; return the softmax",
         lambda: (exp_out, q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))),
        ("the weights returned are the logits q @ k^T before scaling and softmax; return the softmax",
         lambda: (None, q @ k.transpose(-2, -1))),
    ]
    return out


def _attention_diagnose(ctx: Ctx, got: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    B, H, N, d = q.shape
    if isinstance(got, list) and len(got) == 2 and all(isinstance(g, torch.Tensor) for g in got) \
            and tuple(got[0].shape) == (B, H, N, N) and tuple(got[1].shape) == (B, H, N, d) and N != d:
        return ("the outputs are swapped: return (out, weights), with out [B, heads, N, d] and weights "
                "[B, heads, N, N]")
    return None


def _attention_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], *args: Any) -> str:
    return ("out must be weights @ v: [B, heads, N, d]" if slot == 0 else
            "weights must be [B, heads, N, N]: one row of N key weights per query")


ATTENTION_EX = Exercise(
    name="attention", kind="function", call="attention(q, k, v)", outputs=("out", "weights"), order=(1, 0),
    grad_outputs=(0,),  # the weights are returned to be looked at: they may come detached
    cases=_attention_cases, reference=_attention_reference, mutants=_attention_mutants,
    diagnose=_attention_diagnose, shape_hint=_attention_hint,
    doc="""Check ``attention(q, k, v) -> (out, weights)`` for q, k, v of shape [B, heads, N, d].

    weights = softmax(q k^T / sqrt(d), dim=-1) [B, heads, N, N] (each row sums to 1) and
    out = weights @ v [B, heads, N, d]. Using F.scaled_dot_product_attention for ``out`` is fine as long as
    the weights are returned too.
    """,
)


# ------------------------------------------------------------------------------- 5 multi-head attention
def mha(x: torch.Tensor, qkv: Tuple[torch.Tensor, Optional[torch.Tensor]],
        proj: Tuple[torch.Tensor, Optional[torch.Tensor]], heads: int, *, split: str = "(three h d)",
        merge: str = "(h d)", scale: Optional[float] = None, softmax_dim: int = -1, use_proj: bool = True,
        reshape_split: bool = False, reshape_merge: bool = False, unpack: str = "qkv") -> torch.Tensor:
    """Multi-head attention with switchable mistakes; the defaults give the right answer."""
    B, N, D = x.shape
    d = D // heads
    y = lin(x, qkv)  # [B, N, 3D]
    if reshape_split:  # q [B, N, D] viewed as [B, h, N, d] without moving axes
        parts = [t.reshape(B, heads, N, d) for t in y.chunk(3, dim=-1)]
    else:
        parts = list(rearrange(y, f"b n {split} -> three b h n d", three=3, h=heads))  # 3 x [B, h, N, d]
    q, k, v = (parts["qkv".index(c)] for c in unpack)
    logits = q @ k.transpose(-2, -1) * (d ** -0.5 if scale is None else scale)
    out = logits.softmax(softmax_dim) @ v  # [B, h, N, d]
    out = out.reshape(B, N, D) if reshape_merge else rearrange(out, f"b h n d -> b n {merge}")
    return lin(out, proj) if use_proj else out


def mha_weights(ctx: Ctx, D: int, prefix: str = "") -> Tuple[Any, Any]:
    qkv = linear(ctx, f"{prefix}qkv", D, 3 * D, " with output features in (three h d) order")
    proj = linear(ctx, f"{prefix}proj", D, D)
    return qkv, proj


def mha_mutants(x: torch.Tensor, qkv: Any, proj: Any, heads: int) -> List[Mutant]:
    D = x.shape[-1]
    d = D // heads

    def m(**kw: Any) -> Callable[[], torch.Tensor]:
        return lambda: mha(x, qkv, proj, heads, **kw)

    out: List[Mutant] = [
        ("the qkv features are split as (h three d); the contract (paper code, timm) stacks them as (three h d): "
         "rearrange(self.qkv(x), 'b n (three h d) -> three b h n d', three=3, h=heads)", m(split="(h three d)")),
        ("the heads are split as (d h) instead of (h d): each head must own a contiguous block of d = D/heads "
         "features: 'b n (three h d) -> three b h n d' and merge with 'b h n d -> b n (h d)'",
         m(split="(three d h)", merge="(d h)")),
        ("q, k, v are split into heads as (d h) instead of (h d): use 'b n (three h d) -> three b h n d'",
         m(split="(three d h)")),
        ("the heads are merged as (d h) instead of (h d): use rearrange(out, 'b h n d -> b n (h d)')", m(merge="(d h)")),
        ("the heads are merged with a plain reshape of [B, h, N, d] to [B, N, D]; move the head axis next to d "
         "first: rearrange(out, 'b h n d -> b n (h d)') or out.transpose(1, 2).reshape(B, N, D)", m(reshape_merge=True)),
        ("q, k, v are split into heads with a plain reshape [B, N, D] -> [B, h, N, d]; split the feature axis and "
         "then move heads forward: rearrange(q, 'b n (h d) -> b h n d', h=heads)", m(reshape_split=True)),
        ("the heads are split AND merged with plain reshapes (no transpose); use rearrange 'b n (h d) -> b h n d' "
         "and 'b h n d -> b n (h d)'", m(reshape_split=True, reshape_merge=True)),
        ("the 1/sqrt(d) scale is missing (d = D/heads, the head dim)", m(scale=1.0)),
        ("the logits are scaled by 1/d instead of 1/sqrt(d)", m(scale=1.0 / d)),
        ("the logits are multiplied by sqrt(d) instead of divided by it", m(scale=d ** 0.5)),
        ("the scale uses the model dim D; use the head dim d = D/heads: 1/sqrt(d)", m(scale=D ** -0.5)),
        ("the scale uses the number of heads; use the head dim d = D/heads: 1/sqrt(d)", m(scale=heads ** -0.5)),
        ("the softmax is over the wrong axis (dim=-2, the queries); each query's row must sum to 1 over the keys: "
         "softmax(dim=-1)", m(softmax_dim=-2)),
        ("the softmax is over the heads axis (dim=1); it must run over the keys: softmax(dim=-1)", m(softmax_dim=1)),
        ("the output projection is missing: finish with self.proj(out)", m(use_proj=False)),
        ("attention is computed as a single head over all D features; split q, k, v into `heads` heads of "
         "d = D/heads features", lambda: mha(x, qkv, proj, 1)),
    ]
    out += [
        ("the bias of self.proj is not used; call self.proj(out) (a Linear computes out @ W.T + b)",
         lambda: mha(x, qkv, (proj[0], None), heads)),
        ("the bias of self.qkv is not used; call self.qkv(x)", lambda: mha(x, (qkv[0], None), proj, heads)),
        ("self.proj.weight is used untransposed (out @ W); a Linear computes out @ W.T + b: call self.proj(out)",
         lambda: F.linear(mha(x, qkv, proj, heads, use_proj=False), proj[0].t(), proj[1])),
    ]
    for order in ("qvk", "kqv", "kvq", "vqk", "vkq"):
        out.append((f"q, k, v are unpacked in the wrong order (as {', '.join(order)}); the qkv output is "
                    f"(three h d) with q first, then k, then v: q, k, v = rearrange(...)", m(unpack=order)))
    return out


def _mha_cases() -> List[Case]:
    cases = [Case((torch.randn(B, N, D),), init=(D, H)) for D, H, B, N in
             [(32, 4, 2, 5), (24, 2, 1, 7), (16, 1, 3, 4), (48, 6, 2, 3)]]
    cases.append(Case((torch.randn(2, 3, 10),), init=(10, 3), raises="ValueError",
                      why="dim=10 is not divisible by heads=3 (the exercise asks for it)"))
    cases.append(Case((torch.randn(2, 4, 12),), init=(12, 3), grad=True))
    return cases


def _mha_reference(ctx: Ctx, x: torch.Tensor) -> torch.Tensor:
    D, H = ctx.init
    qkv, proj = mha_weights(ctx, D)
    return mha(x, qkv, proj, H)


def _mha_mutants(ctx: Ctx, x: torch.Tensor) -> List[Mutant]:
    D, H = ctx.init
    qkv, proj = mha_weights(ctx, D)
    return mha_mutants(x, qkv, proj, H)


def _same_shape_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], x: torch.Tensor) -> str:
    return f"the output has the input's shape [B, N, D] = {list(x.shape)}"


MULTI_HEAD_ATTENTION_EX = Exercise(
    name="multi_head_attention", kind="module", call="MultiHeadAttention(dim, heads)", forward="forward(x)",
    cases=_mha_cases, reference=_mha_reference, mutants=_mha_mutants, shape_hint=_same_shape_hint,
    doc="""Check ``class MultiHeadAttention(nn.Module)``: ``__init__(self, dim, heads)``, forward [B, N, D] -> [B, N, D].

    Attributes: ``self.qkv = nn.Linear(dim, 3 * dim)`` whose output features are ordered (three h d)
    (q of head 0, q of head 1, ..., then k, then v), and ``self.proj = nn.Linear(dim, dim)``; a ValueError
    when dim is not divisible by heads. Every parameter gets random values; the output and the gradients
    are compared with ``vit_edu.Attention``'s formula.
    """,
)




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


MLP_EX = Exercise(
    name="mlp", kind="module", call="MLP(dim, hidden_dim)", forward="forward(x)",
    cases=_mlp_cases, reference=_mlp_reference, accept=[_mlp_tanh], mutants=_mlp_mutants,
    shape_hint=_same_shape_hint,
    doc="""Check ``class MLP(nn.Module)``: ``__init__(self, dim, hidden_dim)``, forward [B, N, D] -> [B, N, D].

    ``self.fc1 = nn.Linear(dim, hidden_dim)``, GELU, ``self.fc2 = nn.Linear(hidden_dim, dim)`` (paper eq. 3).
    Both GELUs pass: the exact (erf) one of timm, torchvision and ``nn.GELU()``, and the tanh approximation
    (``nn.GELU(approximate="tanh")``), which is what the paper's JAX code uses.
    """,
)


# ------------------------------------------------------------------------------------- 7 encoder block
_SHIFT_NAMES = ("bias", "beta", "b", "shift")


def norm_params(ctx: Ctx, name: str, D: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight, bias) of the student's LayerNorm ``self.<name>``, nn.LayerNorm or hand-written (gamma/beta)."""
    found = ctx.with_prefix(name)
    w = next((found[n] for n in SCALE_NAMES if n in found), None)
    b = next((found[n] for n in _SHIFT_NAMES if n in found), None)
    if w is None:
        vectors = [v for v in found.values() if v is not None and tuple(v.shape) == (D,)]
        if len(vectors) == 2:  # other names: the first registered is the scale
            w, b = vectors
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


def _sub_outputs(module: Any, case: Case, x: torch.Tensor) -> Dict[str, Any]:
    """Custom probe step: the student's self.attn and self.mlp on their own, to name a mistake inside them."""
    out: Dict[str, Any] = {}
    for name in ("attn", "mlp"):
        sub = getattr(module, name, None)
        if callable(sub):
            try:
                y = sub(x)
            except Exception:  # noqa: BLE001 - another calling convention: the block is judged as a whole
                continue
            if isinstance(y, torch.Tensor) and y.shape == x.shape:
                out[name] = y.detach().clone()
    return out


def _block_diagnose(ctx: Ctx, got: Any, x: torch.Tensor) -> Optional[str]:
    """When the block is wrong, first look inside: a wrong self.attn or self.mlp is named as such."""
    try:
        bw = _BlockWeights(ctx)
    except ContractError:
        return None  # the reference step reports it
    if isinstance(got, torch.Tensor) and got.shape == x.shape and torch.allclose(got.double(), bw.block(x).double(),
                                                                                  rtol=1e-4, atol=1e-5):
        return None
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
    return None


ENCODER_BLOCK_EX = Exercise(
    name="encoder_block", kind="module", call="EncoderBlock(dim, heads, mlp_dim)", forward="forward(x)",
    cases=_block_cases, reference=_block_reference, accept=[_block_tanh], mutants=_block_mutants,
    diagnose=_block_diagnose, probe_extra=_sub_outputs, shape_hint=_same_shape_hint,
    doc="""Check ``class EncoderBlock(nn.Module)``: ``__init__(self, dim, heads, mlp_dim)``, forward [B, N, D] -> [B, N, D].

    Pre-norm, as in the paper (eqs. 2-3): ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``. Attributes:
    ``norm1``, ``norm2`` (nn.LayerNorm(dim, eps=1e-6), or hand-written with weight/bias or gamma/beta),
    ``attn`` with ``.qkv`` / ``.proj`` (as in MultiHeadAttention), ``mlp`` with ``.fc1`` / ``.fc2``. Every
    parameter gets its own random values, so shared or swapped norms show.
    """,
)


# ----------------------------------------------------------------------------------------- 8 ViT forward
_VIT_CONFIGS = [
    (dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64), 2),
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
           "    import vit_edu.classroom.exercises_build as _m\n"
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
    if norm is True:
        x = model.norm(x)
    pooled = {"cls": x[:, 0], "last": x[:, -1], "mean": x.mean(1), "mean_patches": x[:, 1:].mean(1)}[pool]
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
        ("model.norm is applied after every block; it is the final norm, once after the last block (each block "
         "has its own norms inside)", run(norm="each")),
        ("the position embedding is added after the blocks; it goes in before them: z_0 = [cls; tokens] + "
         "model.pos_embed (eq. 1)", run(pos="after")),
        ("the logits come from the mean of all tokens; ViT classifies from the class token: model.head(x[:, 0])",
         run(pool="mean")),
        ("the logits come from the mean of the patch tokens; this model classifies from the class token: "
         "model.head(x[:, 0])", run(pool="mean_patches")),
        ("the logits come from the last token x[:, -1]; the class token is x[:, 0]", run(pool="last")),
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
    name="vit_forward", kind="function", call="vit_forward(model, images)", outputs=("logits",),
    cases=_vit_cases, reference=_vit_reference, mutants=_vit_mutants, guard=_vit_guard,
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
    def case(L: int, B: int, H: int, T: int, dtype: torch.dtype = torch.float32, grad: bool = False) -> Case:
        att = [(2.0 * torch.randn(B, H, T, T, dtype=dtype)).softmax(-1) for _ in range(L)]
        return Case((att,), grad=grad, label=f"{L} attention maps of shape {[B, H, T, T]} ([B, heads, T, T])"
                    + ("" if dtype == torch.float32 else f" {str(dtype)[6:]}"))
    return [case(3, 2, 4, 5), case(2, 1, 2, 6), case(1, 1, 3, 4), case(4, 3, 1, 10), case(2, 2, 2, 3, torch.float64),
            case(3, 2, 3, 4, grad=True)]


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
    name="rollout", kind="function", call="attention_rollout(attentions)", outputs=("rollout",),
    cases=_rollout_cases, reference=_rollout_reference, mutants=_rollout_mutants,
    shape_hint=_rollout_hint,
    # attention rows are distributions: only the gradient along them is defined by the contract
    # (0.5 A + 0.5 I equals rownorm(A + I) there, but not off it)
    grad_view=lambda name, g: g - g.mean(dim=-1, keepdim=True),
    doc="""Check ``attention_rollout(attentions: list of L tensors [B, heads, T, T]) -> [B, T, T]``.

    Abnar & Zuidema (2020): per layer Â_l = rownorm(mean_heads(A_l) + I); rollout R = Â_L ... Â_2 Â_1.
    Row i of R says how much each input token flows into output token i (row 0: the class token).
    """,
)


EXERCISES: Dict[str, Exercise] = {ex.name: ex for ex in [
    PATCHIFY_EX, PATCH_EMBEDDING_EX, CLS_AND_POS_EX, ATTENTION_EX, MULTI_HEAD_ATTENTION_EX, MLP_EX,
    ENCODER_BLOCK_EX, VIT_FORWARD_EX, ROLLOUT_EX]}
