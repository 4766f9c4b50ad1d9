"""The five exercises that build the model's parts (notebooks 01-03): cases, reference, usual mistakes.

Each exercise is a table: the cases (shapes chosen so that every mistake changes the answer: non-square
images, batch 1, several head counts), the reference written with einops, and the mistakes students make,
each with the message that explains it. :mod:`vit_edu.classroom.engine` does the rest (dtype, device,
in-place edits, dropout left on, gradients). The exercises that assemble the model (notebooks 04, 05, 07)
are in :mod:`.exercises_blocks`, which reuses the helpers here (``linear``, ``mha``, ...).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .engine import Case, ContractError, Ctx, Exercise, Mutant, _names

PATCHIFY = "b c (h p1) (w p2) -> b (h w) (p1 p2 c)"


# ---------------------------------------------------------------------- constructor arguments given by name
def built_by_name(call: str, *keywords: str) -> Callable[..., Dict[str, Any]]:
    """A ``probe_extra``: the student's class built again as the cells after the check build it, with ``keywords``
    (the last constructor arguments of ``call``) passed by name, e.g. ``MultiHeadAttention(64, heads=4)``; records
    the TypeError that names one of them (an argument renamed, e.g. ``num_heads``)."""
    params = _names(call)

    def probe(module: Any, case: Case, *args: Any) -> Dict[str, Any]:
        given = list(zip(params, case.init))
        kw = {n: v for n, v in given if n in keywords}
        if not kw:
            return {}
        try:
            type(module)(*[v for n, v in given if n not in kw], **kw)
        except TypeError as e:
            if any(repr(n) in str(e) for n in kw):
                return {"by_name": f"{type(e).__name__}: {e}"}
        return {}
    return probe


def check_built_by_name(ctx: Ctx, *keywords: str) -> None:
    """The judge's half of :func:`built_by_name`: a ContractError naming the argument the cells pass by name."""
    error = ctx.extra.get("by_name")
    if not isinstance(error, str):
        return
    given = list(zip(ctx.exercise.init_names(), ctx.init))
    shown = ", ".join(f"{n}={v!r}" if n in keywords else repr(v) for n, v in given)
    raise ContractError(f"the cells after this check build your class with {' and '.join(keywords)} given by name, "
                        f"as in {ctx.exercise.title}({shown}), and that fails ({error[:200]}): keep the "
                        f"exercise's argument names, {ctx.exercise.call}")


# ------------------------------------------------------------------------------------------------ helpers
def linear(ctx: Ctx, name: str, n_in: int, n_out: int, hint: str = "", alt: str = ""
           ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight, bias) of the student's ``self.<name>``, an nn.Linear(n_in, n_out) with its bias by contract."""
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
    if b is None:
        raise ContractError(_NO_BIAS.format(name=name, want=f"nn.Linear({n_in}, {n_out})"))
    return w, b


_NO_BIAS = "`self.{name}` should be {want} with a bias (bias=True, the default), as the contract asks; it has none"


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
    # earlier image sizes again with another patch size or channel count: a result kept from an earlier call
    # (an index table cached by the image size alone) shows
    again = "; the image size of an earlier case with another {}: is something kept from one call to the next?"
    cases.append(Case((torch.randn(1, 3, 8, 8), 2), label="images [1, 3, 8, 8], patch_size=2" + again.format(
        "patch size")))
    cases.append(Case((torch.randn(2, 1, 8, 12), 4), label="images [2, 1, 8, 12], patch_size=4" + again.format(
        "channel count")))
    cases.append(Case((torch.randn(2, 3, 8, 12), 4), device="meta"))  # on its device: a buffer made without device=
    return cases


def _patchify_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], images: torch.Tensor, P: int) -> str:
    B, C, H, W = images.shape
    N = (H // P) * (W // P)
    if len(s) == 3 and H != W and s[1] in ((H // P) ** 2, (W // P) ** 2) and s[1] != N:
        return (f"the patch grid is taken as square; a {H} x {W} image has (H/P)*(W/P) = {N} patches "
                "(h = H // P and w = W // P separately)")
    if len(s) == 3 and (s[1], s[2]) == (P * P, N * C) and N != P * P:
        return ("the grid and the patch sizes are swapped: P*P patches of (H/P)*(W/P)*C numbers; in the einops "
                "pattern p1=P and p2=P give the patch size, h and w are the grid")
    if len(s) != 3:
        return (f"flatten to 3 axes [B, N, P*P*C] = [{B}, {N}, {P * P * C}]: one row per patch, all its pixels and "
                "channels in one vector")
    return f"N = (H/P)*(W/P) = {N} patches, each with P*P*C = {P * P * C} numbers"


PATCHIFY_EX = Exercise(
    name="patchify",
    package=("vit_edu.patch_embed.patchify",),
    kind="function", call="patchify(images, patch_size)",
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
    if b is None:
        raise ContractError(_NO_BIAS.format(name="proj", want=want))
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
    name="patch_embedding",
    stand_ins=(("patchify", "vit_edu.patchify"),),
    package=("vit_edu.patch_embed.PatchEmbedBase", "vit_edu.patch_embed.PatchEmbed",
             "vit_edu.patch_embed.LinearPatchEmbed"),
    kind="module", call="PatchEmbedding(image_size, patch_size, in_channels, dim)",
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
    name="cls_and_pos",
    package=("vit_edu.vit.VisionTransformer.embed",),
    kind="function", call="add_cls_and_pos(tokens, cls_token, pos_embed)",
    cases=_cls_cases, reference=_cls_reference, mutants=_cls_mutants, shape_hint=_cls_hint, explain=_cls_explain,
    doc="""Check ``add_cls_and_pos(tokens [B, N, D], cls_token [1, 1, D], pos_embed [1, N+1, D]) -> [B, N+1, D]``.

    The class token goes in front (index 0) of every sequence in the batch, then the position embedding
    is added to all N+1 tokens (paper eq. 1: z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos).
    """,
)


# ------------------------------------------------------------------------------------------ 4 attention
def _attention_cases() -> List[Case]:
    def case(B: int, H: int, N: int, d: int, dtype: torch.dtype = torch.float32, grad: bool = False,
             split: bool = False, scale: float = 1.0) -> Case:
        # split: q, k, v as a multi-head attention makes them, [B, N, H, d] with the heads moved forward (a
        # transposed view, not contiguous in memory: .view(B * H, N, d) fails on it, .reshape works)
        make = (lambda: torch.randn(B, N, H, d, dtype=dtype).transpose(1, 2)) if split else \
            (lambda: torch.randn(B, H, N, d, dtype=dtype))
        q, k, v = (make() for _ in range(3))
        return Case((q * scale, k * scale, v), grad=grad,
                    label=f"q, k, v each {[B, H, N, d]} ([B, heads, N, d])" + ("" if dtype == torch.float32
                                                                                 else f" {str(dtype)[6:]}")
                    + (", heads split from the features (not contiguous in memory)" if split else "")
                    + (f", q and k times {scale:g}: scores far above 100, whose exp() overflows float32"
                       if scale != 1 else ""))
    return [case(2, 4, 6, 8), case(1, 1, 5, 16), case(3, 2, 7, 4), case(2, 3, 4, 32, split=True),
            case(2, 2, 3, 5, torch.float64), case(2, 2, 5, 3, grad=True), case(2, 2, 6, 4, scale=30.0),
            Case(tuple(torch.randn(2, 2, 4, 8) for _ in range(3)), device="meta")]  # the input's device


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
        ("the weights are returned transposed (keys as rows); row i is query i's attention over the keys, summing "
         "to 1: return the softmax itself", lambda: (exp_out, exp_w.transpose(-2, -1))),
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
    name="attention",
    package=("vit_edu.attention.attention_with_weights", "vit_edu.attention.scaled_dot_product_attention"),
    kind="function", call="attention(q, k, v)", outputs=("out", "weights"), order=(1, 0),
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
        (f"the number of heads and the head size are swapped: {D // heads} heads of {heads} features instead of "
         f"{heads} heads of d = D/heads = {d} (e.g. rearrange(..., d=heads) where the pattern needs h=heads)",
         lambda: mha(x, qkv, proj, D // heads)),
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


def call_alone(module: Any, name: str, x: torch.Tensor, n_out: int) -> Tuple[Optional[torch.Tensor], Optional[str]]:
    """``module.<name>(x)`` on its own, as a later notebook cell calls a part: (its output, None) when it maps x to
    ``[..., n_out]``, else (None, what happened), for the judge to show."""
    sub = getattr(module, name, None)
    if not callable(sub):
        return None, f"self.{name} is missing or cannot be called"
    try:
        y = sub(x)
    except Exception as e:  # noqa: BLE001 - recorded for the judge
        return None, f"self.{name}(x) raised {type(e).__name__}: {str(e)[:160]}"
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (*x.shape[:-1], n_out):
        got = f"a tensor of shape {list(y.shape)}" if isinstance(y, torch.Tensor) else f"a {type(y).__name__}"
        return None, f"self.{name}(x) returned {got}"
    return y, None


_MHA_BY_NAME = built_by_name("MultiHeadAttention(dim, heads)", "heads")


def _mha_extra(module: Any, case: Case, x: torch.Tensor) -> Dict[str, Any]:
    """Custom probe step: built with heads= by name, and self.qkv and self.proj called on their own, as notebook 03's
    later cells do (``msa.qkv(tokens)``)."""
    out = _MHA_BY_NAME(module, case, x)
    D = case.init[0]
    problems = [call_alone(module, name, x, n_out)[1] for name, n_out in (("qkv", 3 * D), ("proj", D))]
    return {**out, "alone": next(p for p in problems if p)} if any(problems) else out


def _mha_reference(ctx: Ctx, x: torch.Tensor) -> torch.Tensor:
    check_built_by_name(ctx, "heads")  # notebook 03: MultiHeadAttention(64, heads=4)
    if isinstance(ctx.extra.get("alone"), str):
        raise ContractError(f"the cells after this check call self.qkv and self.proj on their own (notebook 03: "
                            f"msa.qkv(tokens)), and {ctx.extra['alone']}: make each a layer, nn.Linear(dim, 3 * dim) "
                            f"and nn.Linear(dim, dim)")
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
    name="multi_head_attention",
    stand_ins=(("attention", "vit_edu.attention_with_weights"),),
    package=("vit_edu.attention.Attention",), loads_into="vit_edu.Attention",
    kind="module", call="MultiHeadAttention(dim, heads)", forward="forward(x)",
    cases=_mha_cases, reference=_mha_reference, mutants=_mha_mutants, shape_hint=_same_shape_hint,
    probe_extra=_mha_extra,
    doc="""Check ``class MultiHeadAttention(nn.Module)``: ``__init__(self, dim, heads)``, forward [B, N, D] -> [B, N, D].

    Attributes: ``self.qkv = nn.Linear(dim, 3 * dim)`` whose output features are ordered (three h d)
    (q of head 0, q of head 1, ..., then k, then v), and ``self.proj = nn.Linear(dim, dim)``; a ValueError
    when dim is not divisible by heads; ``heads`` keeps its name (``MultiHeadAttention(64, heads=4)`` works);
    ``self.qkv(x)`` and ``self.proj(x)`` work on their own (notebook 03 calls them); nothing else in its
    state_dict, which is loaded into ``vit_edu.Attention`` by name (a buffer: ``persistent=False``).
    Every parameter gets random values; the output and the gradients are compared with ``vit_edu.Attention``'s
    formula.
    """,
)


EXERCISES: Dict[str, Exercise] = {ex.name: ex for ex in [
    PATCHIFY_EX, PATCH_EMBEDDING_EX, CLS_AND_POS_EX, ATTENTION_EX, MULTI_HEAD_ATTENTION_EX]}
