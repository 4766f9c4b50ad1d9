"""The exercises that measure and take apart (notebooks 07, 08, 09): cases, reference, usual mistakes.

* ``mean_attention_distance`` (07): how far a head looks, in pixels, one value per head;
* ``pos_embed_similarity`` (08): the cosine similarity of every pair of position embeddings on the grid;
* ``resize_pos_embed`` (08): the position embedding interpolated to a new grid (paper section 3.2);
* ``bottleneck`` (09): the hybrid's ResNet block (weight-standardized convs, GroupNorm, projection shortcut).

The references are differentiable torch code (the judge takes gradients through them) computed in float64
and returned in the input's dtype; they agree with :mod:`vit_edu.explain.analysis`, :func:`vit_edu.resize_pos_embed` and
:class:`vit_edu.hybrid.Bottleneck` (tests/test_exercises_look.py). :mod:`vit_edu.classroom.engine` does the rest (dtype, device, in-place edits,
gradients, parameters randomised by name).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .engine import Case, ContractError, Ctx, Exercise, Mutant, along_rows, plain_name
from .exercises_build import built_by_name, check_built_by_name


# ------------------------------------------------------------------------------ 7.2 mean attention distance
def patch_distances(grid_size: Tuple[int, int], patch_size: float, kind: str = "euclidean",
                    order: str = "row", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[N, N] distances between patch centres in pixels; patch i at row i // gw, column i % gw ("row" order)."""
    gh, gw = grid_size
    i = torch.arange(gh * gw)
    if kind == "sequence":  # along the token order, not on the grid
        return (i[:, None] - i[None, :]).abs().to(dtype) * patch_size
    rows, cols = (i // gw, i % gw) if order == "row" else (i % gh, i // gh)
    centres = torch.stack([rows, cols], dim=1).to(dtype) * patch_size + patch_size / 2  # [N, 2]
    diff = centres[:, None, :] - centres[None, :, :]  # [N, N, 2]
    if kind == "manhattan":
        return diff.abs().sum(-1)
    if kind == "squared":
        return (diff ** 2).sum(-1)
    if kind == "chebyshev":
        return diff.abs().amax(-1)
    return (diff ** 2).sum(-1).sqrt()


def mad(attn: torch.Tensor, grid_size: Tuple[int, int], patch_size: float, *, kind: str = "euclidean",
        order: str = "row", drop: str = "first", renorm: str = "rows", transpose: bool = False,
        queries: str = "mean", reduce_over: Tuple[int, ...] = (0, 2)) -> torch.Tensor:
    """Mean attention distance of one layer with switchable mistakes; the defaults give the right answer."""
    a = attn.to(torch.float64)
    dist = patch_distances(grid_size, patch_size, kind, order).to(a.device)
    if drop == "first":
        a = a[:, :, 1:, 1:]
    elif drop == "last":
        a = a[:, :, :-1, :-1]
    elif drop == "cls_at_zero":  # class token kept, as a token at distance 0 from everything
        dist = F.pad(dist, (1, 0, 1, 0))
    elif drop == "cls_key_at_zero":  # patch queries, the class token kept as a key at distance 0
        a = a[:, :, 1:, :]
        dist = F.pad(dist, (1, 0))
    elif drop == "cls_query_on_patch0":  # patch keys, the class token's row counted as a query at patch 0
        a = a[:, :, :, 1:]
        dist = torch.cat([dist[:1], dist], dim=0)
    if transpose:
        a = a.transpose(-2, -1)
    if renorm == "rows":
        a = a / a.sum(dim=-1, keepdim=True)
    elif renorm == "cols":
        a = a / a.sum(dim=-2, keepdim=True)
    per_query = (a * dist).sum(dim=-1)  # [B, heads, Q]
    if queries == "sum":
        per_query = per_query.sum(dim=2, keepdim=True)
    return per_query.mean(dim=reduce_over).to(attn.dtype)


def _mad_reference(ctx: Ctx, attn: torch.Tensor, grid_size: Tuple[int, int], patch_size: int) -> torch.Tensor:
    return mad(attn, grid_size, patch_size)


def _mad_mutants(ctx: Ctx, attn: torch.Tensor, grid_size: Tuple[int, int], patch_size: int) -> List[Mutant]:
    def m(**kw: Any) -> Any:
        return lambda: mad(attn, grid_size, patch_size, **kw)

    return [
        ("the rows are not renormalised after dropping the class token: divide each query's row of patch weights "
         "by its sum (a / a.sum(dim=-1, keepdim=True)) so it sums to 1 over the patches", m(renorm="none")),
        ("the Manhattan distance |dr| + |dc| is used; the distance is Euclidean: P * sqrt(dr^2 + dc^2)",
         m(kind="manhattan")),
        ("the distances are squared; take the square root: the Euclidean distance P * sqrt(dr^2 + dc^2)",
         m(kind="squared")),
        ("the Chebyshev distance max(|dr|, |dc|) is used; the distance is Euclidean: P * sqrt(dr^2 + dc^2)",
         m(kind="chebyshev")),
        ("the distance is |i - j| along the token sequence; the patches lie on a gh x gw grid: patch i sits at row "
         "i // gw, column i % gw, and the distance is P * sqrt(dr^2 + dc^2)", m(kind="sequence")),
        ("the distances are in patches, not in pixels: multiply by patch_size", lambda: mad(attn, grid_size, 1)),
        ("the distances are in patches and Manhattan; the contract is pixels (x patch_size) and Euclidean",
         lambda: mad(attn, grid_size, 1, kind="manhattan")),
        ("the patches are placed column by column, or grid_size is unpacked as (gw, gh) (both give these "
         "distances); grid_size is (gh, gw) and the patches are numbered row by row: patch i sits at row i // gw, "
         "column i % gw", m(order="col")),
        ("the columns are renormalised (dim=-2), or the attention matrix is transposed: the rows of attn are "
         "the queries, so renormalise each query's row over the keys (dim=-1) and weight query i's distances "
         "with row i (attn[..., i, :])", m(renorm="cols")),
        ("the class token is token 0: drop the first row and column (attn[:, :, 1:, 1:]), not the last",
         m(drop="last")),
        ("the class token is still in: it was counted as a token at distance 0; leave it out as query and as key "
         "(attn[:, :, 1:, 1:]) and renormalise the rows", m(drop="cls_at_zero", renorm="none")),
        ("the class token is still in: it was counted as a token at distance 0; leave it out as query and as key "
         "(attn[:, :, 1:, 1:]) and renormalise the rows", m(drop="cls_at_zero")),
        ("the class token is still a key (at distance 0); leave it out as a key too (attn[:, :, 1:, 1:]) and "
         "renormalise the rows", m(drop="cls_key_at_zero", renorm="none")),
        ("the class token's row is still averaged in as a query; leave it out as a query too "
         "(attn[:, :, 1:, 1:])", m(drop="cls_query_on_patch0")),
        ("the per-query distances are summed over the query patches; take the mean over the query patches "
         "and the images", m(queries="sum", reduce_over=(0, 2))),
        ("the per-query distances are summed over the images and the query patches; take the mean over both",
         lambda: mad(attn, grid_size, patch_size, reduce_over=(0, 2)) * attn.shape[0] * (attn.shape[-1] - 1)),
    ] + ([(f"the distances are those of an earlier call on this grid with patch_size={ctx.meta['earlier_patch_size']}: "
           f"a distance table kept across calls (a cache keyed by grid_size alone) must depend on patch_size too",
           lambda: mad(attn, grid_size, ctx.meta["earlier_patch_size"]))] if "earlier_patch_size" in ctx.meta else []) \
        + ([(f"the distances are those of an earlier call on the {ctx.meta['earlier_grid'][0]} x "
             f"{ctx.meta['earlier_grid'][1]} grid, which has as many patches: a distance table kept across calls "
             f"must be keyed by the grid's height and width, not by the number of tokens",
             lambda: mad(attn, ctx.meta["earlier_grid"], patch_size))] if "earlier_grid" in ctx.meta else [])


def _mad_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], attn: torch.Tensor, grid_size: Any, patch_size: Any
              ) -> Optional[str]:
    B, H = attn.shape[:2]
    if s == ():
        return ("one number per head is expected: [heads]; average over the images and the query patches, "
                "not over the heads")
    if s == (B, H):
        return "[B, heads]: average over the images too, to get one value per head: [heads]"
    if len(s) == 3 and s[:2] == (B, H):
        return "[B, heads, queries]: average over the query patches and the images: [heads]"
    return "the result is one distance per head: [heads]"


def _softmax_rows(shape: Tuple[int, ...], dtype: torch.dtype = torch.float32, cls_boost: float = 0.0) -> torch.Tensor:
    logits = 2.0 * torch.randn(shape, dtype=torch.float64)
    logits[..., 0] += cls_boost  # the class token takes a larger share: forgetting to renormalise shows
    return logits.softmax(dim=-1).to(dtype)


def _mad_cases() -> List[Case]:
    def attn(B: int, H: int, gh: int, gw: int, dtype: torch.dtype = torch.float32, boost: float = 1.0) -> torch.Tensor:
        T = 1 + gh * gw
        return _softmax_rows((B, H, T, T), dtype, boost)

    return [
        Case((attn(2, 3, 3, 4), (3, 4), 4)),
        Case((attn(1, 2, 2, 5), (2, 5), 3)),  # batch 1
        Case((attn(2, 1, 5, 3, boost=2.0), (5, 3), 5)),  # one head
        # the first case's grid with another patch size: a distance table kept from it (keyed by the grid) shows
        Case((attn(3, 4, 3, 4), (3, 4), 2), meta={"earlier_patch_size": 4}),
        # as many patches as the first case's 3 x 4 grid, laid out 2 x 6: a table keyed by the token count shows
        Case((attn(2, 2, 2, 6), (2, 6), 4), meta={"earlier_grid": (3, 4)}),
        Case((attn(2, 2, 2, 3, torch.float64), (2, 3), 4)),  # the dtype follows the input
        Case((attn(2, 2, 3, 3), (3, 3), 4), grad=True),
        Case((attn(2, 2, 3, 4), (3, 4), 4), device="meta"),  # the table on the input's device (arange(..., device=))
    ]


MEAN_ATTENTION_DISTANCE_EX = Exercise(
    name="mean_attention_distance",
    package=("vit_edu.explain.analysis.mean_attention_distance",),
    kind="function", call="mean_attention_distance(attn, grid_size, patch_size)",
    cases=_mad_cases, reference=_mad_reference, mutants=_mad_mutants, shape_hint=_mad_hint,
    grad_view=along_rows,  # a row's patches may be renormalised by 1 - its class token's share
    doc="""Check ``mean_attention_distance(attn [B, heads, 1 + gh*gw, 1 + gh*gw], (gh, gw), P) -> [heads]``.

    The class token (token 0) is left out as query and as key, each query's row is renormalised over the
    patches, the distance is the Euclidean distance between patch centres in pixels (patches row by row), and
    the expected distance of each query is averaged over the query patches and the images, as
    ``vit_edu.explain.analysis.mean_attention_distance`` does for every layer.
    """,
)


# ------------------------------------------------------------------------------ 8.1 position-embedding similarity
def pes(pos_embed: torch.Tensor, grid_size: Tuple[int, int], *, norm: str = "both", drop: str = "contract",
        layout: str = "(a b) (c d) -> a b c d", center: bool = False, absolute: bool = False,
        measure: str = "cosine") -> torch.Tensor:
    """Position-embedding similarity with switchable mistakes; the defaults give the right answer."""
    gh, gw = grid_size
    n = gh * gw
    x = pos_embed.to(torch.float64)
    if drop == "contract":
        x = x[1:] if x.shape[0] == n + 1 else x
    elif drop == "last":
        x = x[:-1] if x.shape[0] == n + 1 else x
    if x.shape[0] != n:
        raise ValueError("rows")
    if center:
        x = x - x.mean(dim=-1, keepdim=True)
    if measure == "distance":
        sim = torch.cdist(x, x)
    elif norm == "both":
        u = x / x.norm(dim=-1, keepdim=True)
        sim = u @ u.T
    elif norm == "left":
        sim = (x / x.norm(dim=-1, keepdim=True)) @ x.T
    elif norm == "right":
        sim = x @ (x / x.norm(dim=-1, keepdim=True)).T
    elif norm == "positions":
        u = x / x.norm(dim=0, keepdim=True)
        sim = u @ u.T
    else:
        sim = x @ x.T
    if absolute:
        sim = sim.abs()
    return rearrange(sim, layout, a=gh, b=gw, c=gh, d=gw).to(pos_embed.dtype)


def _pes_reference(ctx: Ctx, pos_embed: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
    return pes(pos_embed, grid_size)


def _pes_mutants(ctx: Ctx, pos_embed: torch.Tensor, grid_size: Tuple[int, int]) -> List[Mutant]:
    def m(**kw: Any) -> Any:
        return lambda: pes(pos_embed, grid_size, **kw)

    return [
        ("this is the plain dot product: the cosine similarity divides it by the lengths of both vectors "
         "(normalise every row to length 1 first)", m(norm="none")),
        ("only one of the two vectors is normalised; the cosine similarity divides by the lengths of both",
         m(norm="left")),
        ("only one of the two vectors is normalised; the cosine similarity divides by the lengths of both",
         m(norm="right")),
        ("the embeddings are normalised over the positions (dim=0); normalise each position's row over its D "
         "features (dim=-1), one unit vector for each position", m(norm="positions")),
        ("each row's mean was subtracted first (a Pearson correlation, as torch.corrcoef); the cosine "
         "similarity uses the embeddings as they are", m(center=True)),
        ("the positions are read column by column; the patches (and their rows of pos_embed) are numbered row "
         "by row: position (i, j) is row i * gw + j", m(layout="(b a) (d c) -> a b c d")),
        ("the wrong row was dropped: the class token's row is the first one (pos_embed[1:])", m(drop="last")),
        ("this is the Euclidean distance between the embeddings, not their cosine similarity", m(measure="distance")),
        ("the absolute value of the cosine was taken; keep its sign (opposite embeddings have similarity -1)",
         m(absolute=True)),
    ]


def _pes_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], pos_embed: torch.Tensor, grid_size: Tuple[int, int]
              ) -> Optional[str]:
    gh, gw = grid_size
    n = gh * gw
    if s == (n, n):
        return f"[N, N]: put the similarities on the grid, [gh, gw, gh, gw] = [{gh}, {gw}, {gh}, {gw}]"
    if s == (n + 1, n + 1) or s == (1 + n, gh, gw) or (len(s) == 4 and s[0] * s[1] == n + 1):
        return "the class token's row is still in: drop it when pos_embed has gh*gw + 1 rows"
    if s == (gw, gh, gw, gh):
        return "the grid is transposed: [gh, gw, gh, gw], gh rows of gw patches"
    if len(s) == 4 and s[0] * s[1] == n - 1:
        return ("one row too many was dropped: with exactly gh*gw rows there is no class token, keep them all; "
                "drop the first row only when there are gh*gw + 1")
    return f"the result is [gh, gw, gh, gw] = [{gh}, {gw}, {gh}, {gw}]"


def _pes_cases() -> List[Case]:
    cases = [
        Case((torch.randn(1 + 3 * 4, 8), (3, 4))),
        Case((torch.randn(2 * 5, 6), (2, 5)), label="pos_embed [10, 6] (no class token: exactly gh*gw rows), "
                                                    "grid_size=(2, 5)"),
        Case((torch.randn(1 + 4 * 4, 5), (4, 4))),
        Case((torch.randn(1 + 1 * 6, 4), (1, 6))),
        # the dtype follows the input; values far beyond float32's range (the cosine ignores the scale)
        Case((1e50 * torch.randn(1 + 2 * 3, 6, dtype=torch.float64), (2, 3)),
             label="pos_embed [7, 6] float64 with values around 1e50 (beyond float32's range), grid_size=(2, 3)"),
        Case((torch.randn(3 * 4 + 2, 8), (3, 4)), raises="ValueError",
             why="pos_embed has 14 rows but a 3x4 grid needs 12 (no class token) or 13 (with it)"),
        Case((torch.randn(3 * 4 - 1, 8), (3, 4)), raises="ValueError",
             why="pos_embed has 11 rows but a 3x4 grid needs 12 (no class token) or 13 (with it)"),
        Case((torch.randn(1 + 2 * 3, 5), (2, 3)), grad=True),
    ]
    # an embedding whose rows are far from unit length, with a common direction: the normalisations matter
    x = torch.randn(1 + 3 * 2, 6) * torch.linspace(0.2, 3.0, 7)[:, None] + 0.7
    cases.insert(1, Case((x, (3, 2))))
    return cases


POS_EMBED_SIMILARITY_EX = Exercise(
    name="pos_embed_similarity",
    package=("vit_edu.explain.analysis.pos_embed_similarity",),
    kind="function", call="pos_embed_similarity(pos_embed, grid_size)",
    cases=_pes_cases, reference=_pes_reference, mutants=_pes_mutants, shape_hint=_pes_hint,
    doc="""Check ``pos_embed_similarity(pos_embed [T, D], (gh, gw)) -> [gh, gw, gh, gw]``.

    T = 1 + gh*gw (the class token's row first, dropped) or T = gh*gw (no class token); any other T raises a
    ValueError. ``sim[i, j, k, l]`` is the cosine similarity between position (i, j) and (k, l), patches row
    by row, as ``vit_edu.explain.analysis.pos_embed_similarity``.
    """,
)


# ------------------------------------------------------------------------------ 8.2 resizing the position embedding
def rpe(pos_embed: torch.Tensor, new_grid: Tuple[int, int], old_grid: Tuple[int, int], *, mode: str = "bicubic",
        align_corners: bool = False, antialias: bool = True, read: str = "row", permute: str = "both",
        cls: str = "first", size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Resizing [1, 1 + h*w, D] -> [1, 1 + H*W, D] with switchable mistakes; the defaults give the right answer."""
    h, w = old_grid
    H, W = new_grid
    D = pos_embed.shape[-1]
    x = pos_embed.to(torch.float64)
    token, grid = x[:, :1], x[:, 1:]
    if permute in ("none", "in"):  # the (h w) d memory order read as d h w
        img = grid.reshape(1, D, h, w)
    elif read == "row":
        img = rearrange(grid, "1 (h w) d -> 1 d h w", h=h, w=w)
    else:
        img = rearrange(grid, "1 (w h) d -> 1 d h w", h=h, w=w)
    kw: Dict[str, Any] = {} if mode == "nearest" else {"align_corners": align_corners, "antialias": antialias}
    img = F.interpolate(img, size=size or (H, W), mode=mode, **kw)
    if permute in ("none", "out"):  # the d h w memory order read as (h w) d
        grid = img.reshape(1, -1, D)
    elif read == "row":
        grid = rearrange(img, "1 d h w -> 1 (h w) d")
    else:
        grid = rearrange(img, "1 d h w -> 1 (w h) d")
    if cls == "dropped":
        out = grid
    elif cls == "last":
        out = torch.cat([grid, token], dim=1)
    else:
        out = torch.cat([token, grid], dim=1)
    return out.to(pos_embed.dtype)


def _rpe_reference(ctx: Ctx, pos_embed: torch.Tensor, new_grid: Tuple[int, int], old_grid: Tuple[int, int]
                   ) -> torch.Tensor:
    return rpe(pos_embed, new_grid, old_grid)


def _rpe_mutants(ctx: Ctx, pos_embed: torch.Tensor, new_grid: Tuple[int, int], old_grid: Tuple[int, int]
                 ) -> List[Mutant]:
    def m(**kw: Any) -> Any:
        return lambda: rpe(pos_embed, new_grid, old_grid, **kw)

    H, W = new_grid
    h, w = old_grid
    return [
        ("the patch rows were reshaped straight to [1, D, h, w]; their memory order is (h w) d, so a reshape mixes "
         "features and positions. Move the feature axis first: rearrange(grid, '1 (h w) d -> 1 d h w', h=h, w=w)",
         m(permute="none")),
        ("the patch rows were reshaped straight to [1, D, h, w]; their memory order is (h w) d, so a reshape mixes "
         "features and positions. Move the feature axis first: rearrange(grid, '1 (h w) d -> 1 d h w', h=h, w=w)",
         m(permute="in")),
        ("the resized image [1, D, H, W] was reshaped straight back to [1, H*W, D]; its memory order is d h w, so a "
         "reshape mixes features and positions. Move the feature axis last: rearrange(img, '1 d h w -> 1 (h w) d')",
         m(permute="out")),
        ("the positions are read column by column; the patches are numbered row by row: "
         "'1 (h w) d -> 1 d h w' and back with '1 d h w -> 1 (h w) d'", m(read="col")),
        ("the class token's row is missing: keep pos_embed[:, :1] unchanged in front of the resized grid",
         m(cls="dropped")),
        ("the class token's row was put at the end; it stays first: torch.cat([pos_embed[:, :1], grid], dim=1)",
         m(cls="last")),
        ("bilinear interpolation was used; the contract is bicubic: F.interpolate(..., mode='bicubic', "
         "align_corners=False, antialias=True)", m(mode="bilinear")),
        ("bilinear interpolation without antialias was used; the contract is bicubic with antialias=True",
         m(mode="bilinear", antialias=False)),
        ("nearest-neighbour interpolation was used; the contract is bicubic: F.interpolate(..., mode='bicubic', "
         "align_corners=False, antialias=True)", m(mode="nearest")),
        ("align_corners=True was used; the contract (timm, vit_edu) is align_corners=False", m(align_corners=True)),
        ("align_corners=True and no antialias; the contract is align_corners=False, antialias=True",
         m(align_corners=True, antialias=False)),
        ("antialias is off; the contract (timm, vit_edu) is antialias=True, which changes the result whether the grid "
         "grows or shrinks (PyTorch's antialiased bicubic uses its own cubic kernel, and low-pass filters when "
         "shrinking): F.interpolate(..., mode='bicubic', align_corners=False, antialias=True)", m(antialias=False)),
        (f"the new grid is transposed: resize to new_grid = (H, W), H rows of W patches (size=(H, W))",
         m(size=(W, H))),
        (f"the old grid is transposed: the h*w rows are old_grid = (h, w), h rows of w patches",
         lambda: rpe(pos_embed, new_grid, (w, h))),
    ]


def _rpe_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], pos_embed: torch.Tensor, new_grid: Tuple[int, int],
              old_grid: Tuple[int, int]) -> Optional[str]:
    H, W = new_grid
    D = pos_embed.shape[-1]
    if s == (1 + H * W, D):
        return "keep the batch axis: [1, 1 + H*W, D]"
    if s == (1, H * W, D):
        return "the class token's row is missing: keep pos_embed[:, :1] in front of the resized grid"
    return f"the result is [1, 1 + H*W, D] = [1, {1 + H * W}, {D}]"


def _rpe_cases() -> List[Case]:
    def pe(h: int, w: int, D: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(1, 1 + h * w, D, dtype=dtype)

    return [
        Case((pe(3, 4, 6), (5, 7), (3, 4))),  # larger, not square
        Case((pe(6, 5, 4), (3, 4), (6, 5))),  # smaller: antialias matters
        Case((pe(4, 4, 5), (6, 6), (4, 4))),
        Case((pe(2, 3, 4), (2, 3), (2, 3))),  # the same grid: nothing changes
        Case((pe(3, 3, 4, torch.float64), (5, 4), (3, 3))),  # the dtype follows the input
        Case((pe(4, 3, 4), (2, 5), (4, 3)), grad=True),
    ]


RESIZE_POS_EMBED_EX = Exercise(
    name="resize_pos_embed",
    package=("vit_edu.pos_embed.resize_pos_embed",),
    kind="function", call="resize_pos_embed(pos_embed, new_grid, old_grid)",
    cases=_rpe_cases, reference=_rpe_reference, mutants=_rpe_mutants, shape_hint=_rpe_hint,
    doc="""Check ``resize_pos_embed(pos_embed [1, 1 + h*w, D], (H, W), (h, w)) -> [1, 1 + H*W, D]``.

    The class token's row stays first and unchanged; the h*w patch rows (row by row) are a D-channel h x w
    image resized with ``F.interpolate(..., size=(H, W), mode="bicubic", align_corners=False, antialias=True)``,
    as ``vit_edu.resize_pos_embed`` (paper section 3.2).
    """,
)


# ------------------------------------------------------------------------------------------ 9.1 bottleneck
def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding: out = ceil(in / s), the odd pixel at the bottom/right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def std_conv(x: torch.Tensor, w: torch.Tensor, stride: int, *, ws: str = "filter", pad: str = "same",
             eps: float = 1e-8) -> torch.Tensor:
    """Weight-standardized convolution (each filter to mean 0, variance 1, eps 1e-8), no bias."""
    if ws in ("filter", "unbiased"):  # unbiased: torch.std's default, every filter scaled by one constant
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=ws == "unbiased")
        w = (w - mean) / torch.sqrt(var + eps)
    elif ws == "tensor":
        var, mean = torch.var_mean(w, unbiased=False)
        w = (w - mean) / torch.sqrt(var + 1e-8)
    elif ws == "scale_only":
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = w / torch.sqrt(var + 1e-8)
    k = w.shape[-1]
    if pad == "same":
        return F.conv2d(_same_pad(x, k, stride), w, None, stride)
    return F.conv2d(x, w, None, stride, k // 2)


def _norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kind: str, eps: float = 1e-5) -> torch.Tensor:
    if kind == "group":
        return F.group_norm(x, 32, weight, bias, eps=eps)
    if kind == "layer":  # GroupNorm(1, C)
        return F.group_norm(x, 1, weight, bias, eps=1e-5)
    if kind == "instance":  # GroupNorm(C, C)
        return F.group_norm(x, x.shape[1], weight, bias, eps=1e-5)
    # BatchNorm2d in eval mode with fresh running statistics (mean 0, variance 1)
    return x / math.sqrt(1 + 1e-5) * weight[:, None, None] + bias[:, None, None]


def bottleneck(x: torch.Tensor, p: Dict[str, torch.Tensor], stride: int, *, ws: str = "filter", pad: str = "same",
               norm: str = "group", relu: Tuple[bool, bool] = (True, True), final: str = "after_sum",
               stride_at: str = "conv2", residual: bool = True, shortcut_ws: bool = True, eps: float = 1e-5,
               ws_eps: float = 1e-8) -> torch.Tensor:
    """The hybrid's bottleneck (vit_edu.hybrid.Bottleneck) with switchable mistakes; defaults = right answer."""
    def conv(h: torch.Tensor, name: str, s: int, ws_: str = ws) -> torch.Tensor:
        return std_conv(h, p[f"{name}.weight"], s, ws=ws_, pad=pad, eps=ws_eps)

    def gn(h: torch.Tensor, name: str) -> torch.Tensor:
        return _norm(h, p[f"{name}.weight"], p[f"{name}.bias"], norm, eps)

    x64 = x.to(torch.float64)
    p = {k: v.to(torch.float64) for k, v in p.items()}
    if "downsample.conv.weight" in p:
        shortcut = gn(conv(x64, "downsample.conv", stride, ws if shortcut_ws else "none"), "downsample.norm")
    else:
        shortcut = x64
    s1, s2 = (stride, 1) if stride_at == "conv1" else (1, stride)
    h = gn(conv(x64, "conv1", s1), "norm1")
    h = F.relu(h) if relu[0] else h
    h = gn(conv(h, "conv2", s2), "norm2")
    h = F.relu(h) if relu[1] else h
    h = gn(conv(h, "conv3", 1), "norm3")
    if final == "before_sum":
        h = F.relu(h)
    out = h + shortcut if residual else h
    if final == "after_sum" or not residual:
        out = F.relu(out)
    return out.to(x.dtype)


_BOTTLENECK_PARTS = {"conv1": "conv", "norm1": "norm", "conv2": "conv", "norm2": "norm", "conv3": "conv",
                     "norm3": "norm"}


def _bottleneck_params(ctx: Ctx) -> Dict[str, torch.Tensor]:
    """The student's parameters by the contract's names, after checking names and shapes (ContractError)."""
    c_in, c_out = ctx.init[0], ctx.init[1]
    stride = ctx.init[2] if len(ctx.init) > 2 else 1
    mid = c_out // 4
    want = {"conv1.weight": (mid, c_in, 1, 1), "norm1.weight": (mid,), "norm1.bias": (mid,),
            "conv2.weight": (mid, mid, 3, 3), "norm2.weight": (mid,), "norm2.bias": (mid,),
            "conv3.weight": (c_out, mid, 1, 1), "norm3.weight": (c_out,), "norm3.bias": (c_out,)}
    project = stride != 1 or c_in != c_out
    if project:
        want.update({"downsample.conv.weight": (c_out, c_in, 1, 1), "downsample.norm.weight": (c_out,),
                     "downsample.norm.bias": (c_out,)})
    names = {plain_name(n) for n in list(ctx.params) + list(ctx.aliases)}
    sig = f"Bottleneck({c_in}, {c_out}, stride={stride})"
    biases = sorted(n for n in names if n.endswith(".bias") and n.rsplit(".", 2)[-2].startswith("conv"))
    if biases:
        raise ContractError(f"the convolutions have a bias ({', '.join(biases)}); they have none: the GroupNorm "
                            f"after each one has its own shift (StdConv2dSame has no bias)")
    down = sorted(n for n in names if n.startswith("downsample."))
    if project and not down:
        raise ContractError(f"{sig} needs a projection shortcut: the stride or the channel count changes, so x "
                            f"cannot be added as it is; give it `self.downsample` with a 1x1 `conv` (stride "
                            f"{stride}, {c_in} -> {c_out}) and a `norm` (GroupNorm)")
    if not project and down:
        raise ContractError(f"{sig} keeps the shape, so the shortcut is x itself: `self.downsample` must be None "
                            f"here (it has {', '.join(down)})")
    if project and not any(n.startswith("downsample.norm.") for n in names):
        raise ContractError(f"`self.downsample` needs a GroupNorm called `norm` after its 1x1 `conv` "
                            f"(downsample.norm); it has {', '.join(down)}")
    for name, shape in want.items():
        if name not in names:
            module = name.rsplit(".", 1)[0]
            raise ContractError(f"{sig} has no parameter `{name}`; the exercise asks for `self.{module}` "
                                f"({'a weight-standardized conv' if 'conv' in module else 'nn.GroupNorm'}) with "
                                f"these names (it has: {', '.join(sorted(names)) or 'no parameters'})")
    out: Dict[str, torch.Tensor] = {}
    for name, shape in want.items():
        t = ctx.param(name)
        assert t is not None
        if tuple(t.shape) != shape:
            hint = ""
            if name.startswith(("conv1", "conv2", "norm1", "norm2")):
                hint = f"; the middle width is out_channels // 4 = {mid}"
            raise ContractError(f"`self.{name}` has shape {list(t.shape)}, expected {list(shape)} in {sig}{hint}")
        out[name] = t
    extra = sorted(n for n in names if n not in want)
    if extra:
        raise ContractError(f"{sig} has parameters the exercise does not ask for: {', '.join(extra[:6])}")
    return out


def _bottleneck_reference(ctx: Ctx, x: torch.Tensor) -> torch.Tensor:
    check_built_by_name(ctx, "stride")  # notebook 09: Bottleneck(256, 512, stride=2)
    p = _bottleneck_params(ctx)
    return bottleneck(x, p, ctx.init[2] if len(ctx.init) > 2 else 1)


def _bottleneck_unbiased(ctx: Ctx, x: torch.Tensor) -> torch.Tensor:
    """Also right: the standardization with torch.std's unbiased default (the statement does not fix it)."""
    return bottleneck(x, _bottleneck_params(ctx), ctx.init[2] if len(ctx.init) > 2 else 1, ws="unbiased")


def _bottleneck_mutants(ctx: Ctx, x: torch.Tensor) -> List[Mutant]:
    p = _bottleneck_params(ctx)
    stride = ctx.init[2] if len(ctx.init) > 2 else 1

    def m(**kw: Any) -> Any:
        return lambda: bottleneck(x, p, stride, **kw)

    return [
        ("the last ReLU comes before the residual sum; the block ends with relu(norm3(conv3(h)) + shortcut)",
         m(final="before_sum")),
        ("the ReLU after the residual sum is missing: return relu(norm3(conv3(h)) + shortcut)", m(final="none")),
        ("the ReLU after norm1 is missing (ReLU after norm1, after norm2 and after the residual sum)",
         m(relu=(False, True))),
        ("the ReLU after norm2 is missing (ReLU after norm1, after norm2 and after the residual sum)",
         m(relu=(True, False))),
        ("the stride is on the first 1x1 conv; in this block (as in timm and BiT) the 3x3 `conv2` carries the "
         "stride and conv1 has stride 1", m(stride_at="conv1")),
        ("the convolutions are not weight-standardized: standardize each filter to mean 0 and variance 1 before "
         "convolving (StdConv2dSame from vit_edu.hybrid does it)", m(ws="none")),
        ("the weights are divided by their standard deviation but not centred: weight standardization subtracts "
         "each filter's mean first", m(ws="scale_only")),
        ("the whole weight tensor is standardized at once; weight standardization works per output filter "
         "(mean and variance over in_channels x k x k of each filter)", m(ws="tensor")),
        ("the shortcut's 1x1 conv is not weight-standardized; every conv of the block is", m(shortcut_ws=False)),
        ("the weight standardization's eps is 1e-6 (timm's StdConv2dSame default); this model's is 1e-8: "
         "vit_edu's StdConv2dSame, or timm's with eps=1e-8", m(ws_eps=1e-6)),
        ("the 3x3 conv pads 1 pixel on every side, or puts the extra pixel on the top/left (the two give the same "
         "windows here); the contract is TensorFlow 'SAME' padding (with stride 2 on an even size the extra pixel "
         "goes to the bottom/right only): use StdConv2dSame", m(pad="symmetric")),
        ("the norms use 1 group (a LayerNorm over channels and space); the block uses GroupNorm with 32 groups: "
         "nn.GroupNorm(32, channels, eps=1e-5)", m(norm="layer")),
        ("the norms use one group per channel (InstanceNorm); the block uses GroupNorm with 32 groups: "
         "nn.GroupNorm(32, channels, eps=1e-5)", m(norm="instance")),
        ("the shortcut is missing: add the input (or its projection, self.downsample(x)) before the last ReLU",
         m(residual=False)),
    ] + [(f"the GroupNorm eps is {eps:g}; the block's is 1e-5 (nn.GroupNorm's default): it shows on a faint input, "
          f"whose variance is as small as eps", m(eps=eps)) for eps in (1e-6, 1e-8, 0.0, 1e-4, 1e-3, 1e-2)]


_BATCHNORM = ("the norms are BatchNorm (in eval mode); the block uses GroupNorm with 32 groups: "
              "nn.GroupNorm(32, channels, eps=1e-5)")


def _bottleneck_diagnose(ctx: Ctx, got: Any, x: torch.Tensor) -> Optional[str]:
    """BatchNorm instead of GroupNorm: nothing normalises, the values grow to thousands, and float32 round-off
    exceeds the usual tolerance; compare relative to the largest value instead."""
    if not isinstance(got, torch.Tensor) or not got.is_floating_point():
        return None
    try:
        p = _bottleneck_params(ctx)
    except ContractError:
        return None
    with torch.no_grad():
        bn = bottleneck(x, p, ctx.init[2] if len(ctx.init) > 2 else 1, norm="batch").double()
    if got.shape != bn.shape or not torch.isfinite(got).all():
        return None
    scale = float(bn.abs().max())
    if scale > 0 and float((got.double() - bn).abs().max()) <= 1e-4 * scale:
        return f"wrong output: {_BATCHNORM}"
    return None


def _bottleneck_hint(ctx: Ctx, slot: int, s: Tuple[int, ...], x: torch.Tensor) -> Optional[str]:
    c_out, stride = ctx.init[1], ctx.init[2] if len(ctx.init) > 2 else 1
    B, _, H, W = x.shape
    want = (B, c_out, math.ceil(H / stride), math.ceil(W / stride))
    if len(s) == 4 and s[2:] != want[2:]:
        return (f"the spatial size with stride {stride} and 'SAME' padding is ceil(H / stride) x ceil(W / stride) "
                f"= {want[2]} x {want[3]}")
    return f"the output is [B, out_channels, ceil(H/stride), ceil(W/stride)] = {list(want)}"


def _bottleneck_cases() -> List[Case]:
    return [
        Case((torch.randn(2, 64, 6, 5),), init=(64, 256, 1)),  # more channels: projection, stride 1
        Case((torch.randn(1, 256, 5, 6),), init=(256, 256, 1)),  # same shape: identity shortcut, batch 1
        Case((torch.randn(2, 128, 8, 6),), init=(128, 256, 2)),  # stride 2 on even sizes: 'SAME' pads bottom/right
        Case((torch.randn(1, 128, 7, 9),), init=(128, 256, 2)),  # stride 2 on odd sizes
        Case((torch.randn(2, 64, 6, 4),), init=(64, 128, 2), grad=True),
        Case((torch.randn(1, 256, 6, 6),), init=(256, 256, 2)),  # stride 2, equal channels: still a projection
        # faint input (variance 1e-6): GroupNorm's eps is then as large as the variance, so a wrong eps shows
        Case((1e-3 * torch.randn(2, 128, 4, 4),), init=(128, 128, 1),
             label="a faint image x [2, 128, 4, 4] (std 1e-3)"),
    ]


BOTTLENECK_EX = Exercise(
    name="bottleneck",
    package=("vit_edu.hybrid.Bottleneck",), loads_into="vit_edu.hybrid.Bottleneck", loads_before_call=True,
    kind="module", call="Bottleneck(in_channels, out_channels, stride)", forward="forward(x)",
    cases=_bottleneck_cases, reference=_bottleneck_reference, accept=[_bottleneck_unbiased],
    mutants=_bottleneck_mutants, shape_hint=_bottleneck_hint, diagnose=_bottleneck_diagnose,
    probe_extra=built_by_name("Bottleneck(in_channels, out_channels, stride)", "stride"),
    doc="""Check ``class Bottleneck(nn.Module)``: ``__init__(in_channels, out_channels, stride=1)``, forward x -> y.

    ``conv1`` (1x1, in -> out/4), ``norm1``, ``conv2`` (3x3, stride), ``norm2``, ``conv3`` (1x1, -> out),
    ``norm3``; ``downsample`` (None, or ``conv`` 1x1 with the stride + ``norm``) when the stride or the channel
    count changes. Weight-standardized convolutions (eps 1e-8, not timm's default 1e-6) without bias and 'SAME'
    padding, GroupNorm(32, C, eps=1e-5), ReLU after norm1, norm2 and the residual sum:
    ``vit_edu.hybrid.Bottleneck``; ``stride`` keeps its name
    (``Bottleneck(256, 512, stride=2)`` works). Every parameter gets random values and the outputs and gradients
    are compared.
    """,
)


EXERCISES: Dict[str, Exercise] = {ex.name: ex for ex in [MEAN_ATTENTION_DISTANCE_EX, POS_EMBED_SIMILARITY_EX,
                                                          RESIZE_POS_EMBED_EX, BOTTLENECK_EX]}
