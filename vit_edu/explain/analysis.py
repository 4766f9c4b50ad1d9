"""Numbers behind the pictures: attention rollout, attention distance, position-embedding similarity.

Every plot in the course (:mod:`vit_edu.explain.viz`) draws something computed here, so a notebook can say
"the map is well localised" *and* print how well (a ratio, a correlation), and a test can check it.

Conventions (as produced by ``VisionTransformer(..., return_attention=True)``):

* ``attentions`` is a list of ``depth`` tensors ``[B, heads, T, T]``, one per encoder layer, with rows =
  queries and columns = keys; every row sums to 1 (softmax output).
* Tokens are ``num_prefix_tokens`` prefix tokens (the class token; 0 for a mean-pool model without one)
  followed by ``gh * gw`` patch tokens in row-major grid order, so ``T = num_prefix_tokens + gh * gw``.

Only torch; all functions work on CPU tensors and are batched where that is natural.
"""

from __future__ import annotations

import numbers
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import POOLS, to_2tuple
from ..models import check_has_values

Size2 = Union[int, Tuple[int, int]]

HEAD_FUSIONS = ("mean", "max", "min")

__all__ = [
    "attention_rollout", "cls_attention_maps", "rollout_cls_map", "upsample_map", "mean_attention_distance",
    "patch_centers", "pos_embed_similarity", "grid_distances", "similarity_distance_correlation",
    "rankdata", "patch_embedding_components", "attention_localization", "filter_smoothness",
    "attention_distance_summary", "uniform_attention_distance", "what_the_model_learned", "object_patches",
]


# ------------------------------------------------------------------------------------------------ checks
def _stack_attentions(attentions: Sequence[torch.Tensor], detach: bool = True) -> torch.Tensor:
    """Validate a list of per-layer attention tensors [B, H, T, T] and stack them to [L, B, H, T, T]
    (detached unless ``detach=False``)."""
    if isinstance(attentions, torch.Tensor):
        raise TypeError(
            "attentions must be a list of per-layer tensors [B, heads, T, T] (as returned by "
            f"model(x, return_attention=True)), got a single tensor of shape {tuple(attentions.shape)}; "
            "wrap it in a list: [attn]"
        )
    if not isinstance(attentions, (list, tuple)) or len(attentions) == 0:
        raise TypeError(f"attentions must be a non-empty list of tensors [B, heads, T, T], got {attentions!r:.80}")
    first = attentions[0]
    for i, a in enumerate(attentions):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"attentions[{i}] must be a torch.Tensor [B, heads, T, T], got {type(a).__name__}")
        if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attentions[{i}] must have shape [B, heads, T, T], got {tuple(a.shape)}")
        if a.shape != first.shape:
            raise ValueError(
                f"all layers must have the same attention shape; attentions[0] is {tuple(first.shape)} "
                f"but attentions[{i}] is {tuple(a.shape)}"
            )
        if not torch.is_floating_point(a):
            raise TypeError(f"attentions[{i}] must be floating point, got dtype {a.dtype}")
        _check_probabilities(a.detach(), f"attentions[{i}]")
    return torch.stack([a.detach() if detach else a for a in attentions])  # [L, B, H, T, T]


def _check_probabilities(a: torch.Tensor, name: str) -> None:
    """Attention rows are softmax outputs: finite, non-negative, each summing to 1 (within 0.02, for bfloat16).
    Scores before the softmax, or NaN from a diverged model, would otherwise give a plausible-looking map."""
    if a.numel() == 0:
        return
    if not torch.isfinite(a).all():
        raise ValueError(f"{name} has non-finite values (nan or inf); attention must be softmax probabilities")
    row_sums = a.sum(dim=-1, dtype=torch.float64)
    tol = 0.02  # loose: bfloat16 rounds each weight by up to 0.4 %; scores or a forgotten division are far off
    if a.min() < 0 or (row_sums - 1).abs().max() > tol:
        raise ValueError(
            f"{name} must hold attention probabilities (every row >= 0 and summing to 1, a softmax output), "
            f"got values in [{float(a.min()):.3g}, {float(a.max()):.3g}] and row sums in "
            f"[{float(row_sums.min()):.3g}, {float(row_sums.max()):.3g}]; scores before the softmax?"
        )


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has non-finite values (nan or inf)")


def _check_model(model: object) -> None:
    """A vit_edu VisionTransformer whose weights are all finite, or a clear error before any forward pass: a
    diverged model's NaN would show as NaN attention, or only in its logits (argmax: "predicted class 0")."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config") or not hasattr(model, "patch_embed"):
        raise TypeError(f"model must be a vit_edu VisionTransformer (with .config and .patch_embed), "
                        f"got {type(model).__name__}")
    check_has_values(model, "explaining the model")  # no meta tensors, no NaN (it would show as NaN attention)


def _check_tokens(num_tokens: int, grid_size: Size2, num_prefix_tokens: int) -> Tuple[int, int]:
    """T must equal prefix + gh * gw; returns the grid as a pair."""
    gh, gw = to_2tuple(grid_size, "grid_size")
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0 (1 with a class token, 0 without), got {num_prefix_tokens!r}")
    expected = num_prefix_tokens + gh * gw
    if num_tokens != expected:
        raise ValueError(
            f"attention has T={num_tokens} tokens but num_prefix_tokens={num_prefix_tokens} + grid "
            f"{gh}x{gw} = {expected}; check grid_size and num_prefix_tokens (0 for a model without class token)"
        )
    return gh, gw


# ------------------------------------------------------------------------------------------------ rollout
def attention_rollout(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    add_identity: bool = True,
    discard_ratio: float = 0.0,
    differentiable: bool = False,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much each output token draws on each input token.

    Per layer the heads are fused (mean, or max/min as in popular re-implementations), the residual
    connection is modelled by adding the identity, and rows are re-normalised to sum to 1:

        Â_l = normalize_rows(fuse_heads(A_l) + I)      (= 0.5 A_l + 0.5 I for the mean of softmax rows)
        R   = Â_L @ ... @ Â_2 @ Â_1                    (multiply from the first layer to the last)

    ``discard_ratio`` in [0, 1): before adding the identity, zero the smallest ``discard_ratio`` fraction
    of each *row* of the fused attention (per-row, so no row is ever emptied); this sharpens the map.
    The result stays row-stochastic. [L x (B, H, T, T)] -> [B, T, T], in the attentions' dtype.

    The result is detached (ready to plot) unless ``differentiable``: then gradients flow back to the
    attentions (the classroom's check of exercise 7.1 uses this function as its reference and takes
    gradients through it).
    """
    stacked = _stack_attentions(attentions, detach=not differentiable)  # [L, B, H, T, T]
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, numbers.Real):
        raise TypeError(f"discard_ratio must be a number in [0, 1), got {type(discard_ratio).__name__} "
                        f"{discard_ratio!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    L, B, H, T, _ = stacked.shape
    stacked = stacked.to(torch.float64)  # long products of small numbers: keep precision
    eye = torch.eye(T, dtype=stacked.dtype, device=stacked.device)  # a GPU model's attention stays there
    rollout = eye.expand(B, T, T)
    for layer in range(L):  # first layer first
        if head_fusion == "mean":
            a = stacked[layer].mean(dim=1)  # [B, T, T]
        elif head_fusion == "max":
            a = stacked[layer].amax(dim=1)
        else:
            a = stacked[layer].amin(dim=1)
        n_drop = int(discard_ratio * T)
        if n_drop > 0:
            smallest = a.topk(n_drop, dim=-1, largest=False).indices  # [B, T, n_drop]
            a = a.scatter(-1, smallest, 0.0)
        if add_identity:
            a = a + eye
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # rows sum to 1 again
        rollout = a @ rollout  # [B, T, T]: the new layer multiplies from the left
    return rollout.to(attentions[0].dtype)


def _readout(pool, num_prefix_tokens: int) -> str:
    """The query whose row a map shows: "cls" (the class token's) or "mean" (the mean of the patch tokens')."""
    if pool is None:
        return "cls" if num_prefix_tokens > 0 else "mean"
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS} (the model's config.pool) or None, got {pool!r}")
    if pool == "cls" and num_prefix_tokens == 0:
        raise ValueError("pool='cls' reads the class token's row, but num_prefix_tokens=0 says there is no class "
                         "token; use pool='mean' (or None) for a model without one")
    return pool


def _query_row(matrix: torch.Tensor, num_prefix_tokens: int, pool: str) -> torch.Tensor:
    """[..., T, T] -> [..., N] over the patch keys: the class token's row (pool="cls"), or the mean of the patch
    tokens' rows (pool="mean": what a mean-pooling head averages; a class token's row is left out)."""
    if pool == "cls":
        return matrix[..., 0, num_prefix_tokens:]
    return matrix[..., num_prefix_tokens:, num_prefix_tokens:].mean(dim=-2)


def cls_attention_maps(attentions: Sequence[torch.Tensor], grid_size: Size2, num_prefix_tokens: int = 1,
                       pool: Union[str, None] = None) -> torch.Tensor:
    """Raw attention of the class token (query row 0) to every patch, per layer and head, on the patch grid.

    Prefix keys are dropped and *not* renormalised, so a map shows the share of the class token's
    attention that goes to each patch (the rest went to prefix tokens). ``pool`` is the model's
    ``config.pool``: with "mean" the head reads the mean of the patch tokens, not the class token (which
    such a model may still have), so the map is the mean of the patch tokens' rows instead, over the patch
    keys; None: "cls" with a class token, "mean" without (``num_prefix_tokens=0``). -> [B, L, H, gh, gw].
    """
    stacked = _stack_attentions(attentions)  # [L, B, H, T, T]
    gh, gw = _check_tokens(stacked.shape[-1], grid_size, num_prefix_tokens)
    row = _query_row(stacked, num_prefix_tokens, _readout(pool, num_prefix_tokens))  # [L, B, H, N]
    return rearrange(row, "l b h (gh gw) -> b l h gh gw", gh=gh, gw=gw)


def rollout_cls_map(
    attentions: Sequence[torch.Tensor],
    grid_size: Size2,
    num_prefix_tokens: int = 1,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    pool: Union[str, None] = None,
) -> torch.Tensor:
    """Rollout of the class token over the patches, renormalised to sum to 1 over the patches: [B, gh, gw].

    ``pool`` is the model's ``config.pool``. With "mean" the classifier sees the mean of the patch tokens'
    outputs, so the map is the mean of their rollout rows, whether or not the model has a class token (its row
    is not what the head reads); None: "cls" with a class token, "mean" without (``num_prefix_tokens=0``).
    """
    readout = _readout(pool, num_prefix_tokens)
    rollout = attention_rollout(attentions, head_fusion=head_fusion, discard_ratio=discard_ratio)  # [B, T, T]
    gh, gw = _check_tokens(rollout.shape[-1], grid_size, num_prefix_tokens)
    row = _query_row(rollout, num_prefix_tokens, readout)  # [B, N]
    row = row / row.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return rearrange(row, "b (gh gw) -> b gh gw", gh=gh, gw=gw)


def upsample_map(attention_map: torch.Tensor, image_size: Size2, mode: str = "bilinear") -> torch.Tensor:
    """Stretch a patch-grid map [B, gh, gw] (or [gh, gw]) to image pixels [B, H, W] for overlays.

    ``mode="bilinear"`` (default, ``align_corners=False``) gives smooth overlays; ``"nearest"`` keeps
    one flat block per patch, which is the honest picture of what the model actually resolves.
    Values are interpolated, not renormalised (bilinear keeps the mean, not the sum).
    """
    if not isinstance(attention_map, torch.Tensor) or attention_map.ndim not in (2, 3):
        shape = tuple(attention_map.shape) if isinstance(attention_map, torch.Tensor) else type(attention_map).__name__
        raise ValueError(f"upsample_map expects a map [B, gh, gw] or [gh, gw], got {shape}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    H, W = to_2tuple(image_size, "image_size")
    squeeze = attention_map.ndim == 2
    x = attention_map.detach().float()
    x = x[None, None] if squeeze else x[:, None]  # [B, 1, gh, gw]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    x = F.interpolate(x, size=(H, W), mode=mode, **kwargs)[:, 0]  # [B, H, W]
    return x[0] if squeeze else x


# ------------------------------------------------------------------------------------ attention distance
def patch_centers(grid_size: Size2, patch_size: Size2) -> torch.Tensor:
    """Pixel coordinates (row, col) of the patch centres, row-major: [gh * gw, 2]."""
    gh, gw = to_2tuple(grid_size, "grid_size")
    ph, pw = to_2tuple(patch_size, "patch_size")
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    return torch.stack([(rows.flatten() + 0.5) * ph, (cols.flatten() + 0.5) * pw], dim=1)  # [N, 2]


def mean_attention_distance(
    attentions: Sequence[torch.Tensor],
    grid_size: Size2,
    patch_size: Size2,
    num_prefix_tokens: int = 1,
    query_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean attention distance in pixels per layer and head: [L, H] (paper Fig. 7 right, Fig. 11).

    For each query patch: sum over key patches of attention weight x distance between the two patch
    centres; then the average over query patches and images. It is the "receptive field size" of a head:
    small = local (like a convolution), large = global. Prefix tokens are dropped from queries and keys
    and each query's weights over the patches are renormalised to sum to 1 (a query that attends only to
    prefix tokens, with weight sum below 1e-12, contributes 0).

    ``query_mask`` [B, gh, gw] or [B, N] (bool or non-negative weights) averages over the chosen query
    patches only, e.g. those on the object (``object_patches``) or those on the background: who asks
    matters, since the paper's average over all queries is dominated by whatever covers most of the image.
    Returned in the attentions' dtype, or float32 for half-precision attention.
    """
    stacked = _stack_attentions(attentions).to(torch.float64)  # [L, B, H, T, T]
    gh, gw = _check_tokens(stacked.shape[-1], grid_size, num_prefix_tokens)
    if stacked.shape[1] == 0:
        raise ValueError("mean_attention_distance needs attention of at least one image, got an empty batch (B=0)")
    centers = patch_centers(grid_size, patch_size).to(stacked.device)  # [N, 2]
    dist = torch.cdist(centers, centers)  # [N, N] Euclidean, pixels
    a = stacked[..., num_prefix_tokens:, num_prefix_tokens:]  # [L, B, H, N, N] patch -> patch
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    per_query = (a * dist).sum(dim=-1)  # [L, B, H, N]
    # float32 at least: in bfloat16 (3 significant digits) the heads of a layer would tie at the same distance
    out_dtype = torch.promote_types(attentions[0].dtype, torch.float32)
    if query_mask is None:
        return per_query.mean(dim=(1, 3)).to(out_dtype)  # [L, H]
    B, N = per_query.shape[1], per_query.shape[-1]
    if not isinstance(query_mask, torch.Tensor) or tuple(query_mask.shape) not in ((B, N), (B, gh, gw)):
        shape = tuple(query_mask.shape) if isinstance(query_mask, torch.Tensor) else type(query_mask).__name__
        raise ValueError(f"query_mask must have shape [{B}, {N}] or [{B}, {gh}, {gw}] (one weight per query patch), got {shape}")
    w = query_mask.detach().reshape(B, N).to(per_query.device, torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
        raise ValueError("query_mask must be finite, non-negative and select at least one query patch")
    w = rearrange(w, "b n -> 1 b 1 n")
    return ((per_query * w).sum(dim=(1, 3)) / w.sum(dim=(1, 3))).to(out_dtype)  # [L, H]


# ------------------------------------------------------------------------------------- position embedding
def pos_embed_similarity(pos_embed: torch.Tensor, grid_size: Size2, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Cosine similarity between the position embeddings of every pair of patches: [gh, gw, gh, gw].

    ``sim[i, j, k, l]`` compares position (i, j) with position (k, l) (paper Fig. 7 centre shows
    ``sim[i, j]`` as one small image per (i, j)). Accepts the model's table [1, T, D] or a plain [N, D];
    the first ``num_prefix_tokens`` rows are dropped when there are ``num_prefix_tokens + gh*gw`` rows,
    and none when there are exactly ``gh*gw``.
    """
    gh, gw = to_2tuple(grid_size, "grid_size")
    if not isinstance(pos_embed, torch.Tensor):
        raise TypeError(f"pos_embed must be a torch.Tensor [1, T, D] or [N, D], got {type(pos_embed).__name__}")
    x = pos_embed.detach()
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"pos_embed must have shape [1, T, D] or [N, D], got {tuple(pos_embed.shape)}")
    n = gh * gw
    if x.shape[0] == n + num_prefix_tokens:
        x = x[num_prefix_tokens:]
    elif x.shape[0] != n:
        raise ValueError(
            f"pos_embed has {x.shape[0]} rows; expected {n} (grid {gh}x{gw}) or {n + num_prefix_tokens} "
            f"(with {num_prefix_tokens} prefix tokens)"
        )
    _check_finite(x, "pos_embed")
    zero = (x == 0).all(dim=-1)
    if zero.any():  # a cosine with a zero vector is undefined (F.normalize would give 0, a blank picture)
        raise ValueError(f"pos_embed has {int(zero.sum())} all-zero row(s) of {x.shape[0]} (first: patch "
                         f"{int(zero.nonzero()[0])}); an untrained zero-initialised table has no similarity to show")
    x = F.normalize(x.to(torch.float64), dim=-1)  # unit rows: dot product = cosine
    sim = x @ x.T  # [N, N]
    out = rearrange(sim, "(a b) (c d) -> a b c d", a=gh, b=gw, c=gh, d=gw)
    return out.to(torch.float64 if pos_embed.dtype == torch.float64 else torch.float32)  # float64 in, float64 out


def grid_distances(grid_size: Size2) -> torch.Tensor:
    """Euclidean distance between grid positions, in patches: [gh * gw, gh * gw] (row-major)."""
    centers = patch_centers(grid_size, 1)
    return torch.cdist(centers, centers)


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties get the average of their ranks (scipy's ``rankdata`` 'average');
    all ``nan`` if there is a ``nan``, as scipy's default."""
    if x.ndim != 1:
        raise ValueError(f"rankdata expects a 1-D tensor, got shape {tuple(x.shape)}")
    if torch.is_floating_point(x) and x.isnan().any():  # as scipy: a nan has no rank, and then neither has the rest
        return torch.full(x.shape, float("nan"), dtype=torch.float64)
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).to(torch.float64)  # rank of the last copy of each distinct value
    average_rank = last_rank - (counts.to(torch.float64) - 1) / 2  # mean of first..last
    return average_rank[inverse]


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm()).item()
    return float("nan") if denom == 0 else float((x * y).sum().item() / denom)


def similarity_distance_correlation(sim: torch.Tensor) -> Dict[str, float]:
    """Does similarity fall with distance? Correlate cosine similarity with grid distance over all pairs i != j.

    Returns ``{"spearman": rho, "pearson": r, "num_pairs": n}``. Clearly negative (e.g. < -0.5) means the
    embedding encodes 2-D position like the paper's learned one; about 0 means no spatial structure
    (random init). Spearman = Pearson of the ranks, ties averaged.
    """
    if not isinstance(sim, torch.Tensor) or sim.ndim != 4 or sim.shape[:2] != sim.shape[2:]:
        shape = tuple(sim.shape) if isinstance(sim, torch.Tensor) else type(sim).__name__
        raise ValueError(f"sim must have shape [gh, gw, gh, gw] (from pos_embed_similarity), got {shape}")
    _check_finite(sim.detach(), "sim")
    gh, gw = sim.shape[:2]
    s = rearrange(sim.detach().to(torch.float64), "a b c d -> (a b) (c d)")  # [N, N]
    d = grid_distances((gh, gw))  # [N, N]
    off_diagonal = ~torch.eye(gh * gw, dtype=torch.bool)
    s, d = s[off_diagonal], d[off_diagonal]
    if s.numel() < 2:
        raise ValueError(f"need a grid with at least 2 positions, got {gh}x{gw}")
    return {
        "spearman": _pearson(rankdata(s), rankdata(d)),
        "pearson": _pearson(s, d),
        "num_pairs": int(s.numel()),
    }


# -------------------------------------------------------------------------------- patch-embedding filters
def patch_embedding_components(
    proj_weight: Union[torch.Tensor, nn.Module],
    num_components: int = 28,
    patch_size: Union[Size2, None] = None,
    in_channels: int = 3,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Principal components of the patch-projection filters (paper Fig. 7 left): ([k, C, P, P], [k]).

    The D filters are treated as D samples of P*P*C-dim vectors: centre them, take the SVD, and return
    the top ``num_components`` right-singular vectors reshaped to images [C, P, P] plus their explained
    variance ratios. Accepts a Conv2d weight [D, C, P, P], a Linear weight [D, P*P*C] whose features are
    in the ``(p1 p2 c)`` order of ``patchify`` (``patch_size`` inferred for square patches if None), or the
    ``nn.Conv2d`` / ``nn.Linear`` module itself. Signs are fixed so each component's largest entry is positive.
    """
    w = proj_weight.weight if isinstance(proj_weight, (nn.Conv2d, nn.Linear)) else proj_weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"proj_weight must be a tensor or nn.Conv2d / nn.Linear, got {type(proj_weight).__name__}")
    w = w.detach().to(torch.float64)
    if w.ndim == 4:
        D, C, ph, pw = w.shape
        flat = rearrange(w, "d c p1 p2 -> d (c p1 p2)")
        to_images = lambda v: rearrange(v, "k (c p1 p2) -> k c p1 p2", c=C, p1=ph, p2=pw)  # noqa: E731
    elif w.ndim == 2:
        D, features = w.shape
        C = in_channels
        if patch_size is None:
            side = int(round((features / C) ** 0.5))
            if side * side * C != features:
                raise ValueError(f"cannot infer a square patch from {features} features and {C} channels; pass patch_size")
            ph = pw = side
        else:
            ph, pw = to_2tuple(patch_size, "patch_size")
        if ph * pw * C != features:
            raise ValueError(f"Linear weight has {features} input features, expected P*P*C = {ph}*{pw}*{C} = {ph * pw * C}")
        flat = w
        to_images = lambda v: rearrange(v, "k (p1 p2 c) -> k c p1 p2", c=C, p1=ph, p2=pw)  # noqa: E731
    else:
        raise ValueError(f"proj_weight must be a Conv2d weight [D, C, P, P] or a Linear weight [D, P*P*C], got {tuple(w.shape)}")
    max_k = min(flat.shape[0] - 1, flat.shape[1])  # centring the D filters leaves at most D - 1 directions
    if isinstance(num_components, bool) or not isinstance(num_components, int) or not 1 <= num_components <= max_k:
        raise ValueError(f"num_components must be an int in 1..{max_k} (min of D-1={flat.shape[0] - 1} and "
                         f"P*P*C={flat.shape[1]}), got {num_components!r}")
    centered = flat - flat.mean(dim=0, keepdim=True)  # [D, F]
    _, s, vh = torch.linalg.svd(centered, full_matrices=False)  # vh: [min(D, F), F]
    components = vh[:num_components]  # [k, F], unit vectors
    biggest = components.abs().argmax(dim=1, keepdim=True)
    components = components * components.gather(1, biggest).sign()  # deterministic sign
    variance = s ** 2
    ratio = variance[:num_components] / variance.sum().clamp_min(1e-300)
    return to_images(components).float(), ratio.float()


def filter_smoothness(components: torch.Tensor) -> float:
    """How smooth the filters are in space: the correlation between horizontally and vertically adjacent pixels.

    Input: filters or principal components [k, C, P, P] (e.g. from ``patch_embedding_components``). For each
    filter and channel, every pair of neighbouring pixels (a, b) is one sample; the result is the Pearson
    correlation of a with b over all pairs, after removing each filter-channel's mean. Independent random
    weights give about 0; the smooth, low-frequency filters of a trained patch embedding (the paper's Fig. 7
    left: blobs, ramps, stripes) give clearly positive values; a checkerboard gives -1.
    """
    if not isinstance(components, torch.Tensor) or components.ndim != 4 or components.shape[-1] < 2 or components.shape[-2] < 2:
        shape = tuple(components.shape) if isinstance(components, torch.Tensor) else type(components).__name__
        raise ValueError(f"components must have shape [k, C, P, P] with P >= 2, got {shape}")
    x = components.detach().to(torch.float64)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    a = torch.cat([x[..., :, :-1].flatten(), x[..., :-1, :].flatten()])  # left / upper pixel of each pair
    b = torch.cat([x[..., :, 1:].flatten(), x[..., 1:, :].flatten()])  # its right / lower neighbour
    denom = torch.sqrt((a * a).sum() * (b * b).sum()).item()
    return float("nan") if denom == 0 else float((a * b).sum().item() / denom)


def attention_distance_summary(distances: torch.Tensor, uniform_distance: float) -> Dict[str, object]:
    """Read the paper's Fig. 7 (right) off a [L, H] table of mean attention distances.

    Returns the table relative to uniform attention (``ratio`` [L, H]; 1 = no preference for near or far
    patches), the most local head of the first layer (``first_layer_min``), the mean over heads per layer
    (``layer_mean`` [L]) and whether that mean rises from the first layer to the last (``rising``).
    """
    if not isinstance(distances, torch.Tensor) or distances.ndim != 2 or distances.numel() == 0:
        shape = tuple(distances.shape) if isinstance(distances, torch.Tensor) else type(distances).__name__
        raise ValueError(f"distances must be a non-empty [layers, heads] tensor (from mean_attention_distance), got {shape}")
    _check_finite(distances.detach(), "distances")
    if isinstance(uniform_distance, bool) or not isinstance(uniform_distance, numbers.Real):
        raise TypeError(f"uniform_distance must be a number > 0 (from uniform_attention_distance), got "
                        f"{type(uniform_distance).__name__} {uniform_distance!r}")
    if not uniform_distance > 0:
        raise ValueError(f"uniform_distance must be > 0, got {uniform_distance}")
    ratio = distances.detach().to(torch.float64) / uniform_distance
    layer_mean = ratio.mean(dim=1)
    return {"ratio": ratio.float(), "first_layer_min": float(ratio[0].min()), "layer_mean": layer_mean.float(),
            "rising": bool(layer_mean[-1] > layer_mean[0])}


def uniform_attention_distance(grid_size: Size2, patch_size: Size2) -> float:
    """Mean attention distance (pixels) of a head that attends to every patch equally: the yardstick for "local"."""
    centers = patch_centers(grid_size, patch_size)
    return float(torch.cdist(centers, centers).mean())


def what_the_model_learned(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                           num_components: int = 8) -> Dict[str, object]:
    """The measurements of the paper's Fig. 7 and of the course's claims, for one plain ViT with a class token.

    ``images`` [B, C, H, W] (normalized, as the model was trained) with their object ``masks`` [B, H, W].
    Returns ``spearman`` (cosine similarity of the position embeddings vs grid distance, Fig. 7 centre),
    ``distance`` (``attention_distance_summary``: Fig. 7 right, relative to uniform attention),
    ``localization`` (mean mass of the class token's attention rollout on the object over the object's
    share of patches; for a ``pool="mean"`` model the rollout of the mean of the patch tokens, which its head
    reads), ``smoothness`` of the top ``num_components`` principal components of the patch
    filters and the ``variance_top`` they explain (Fig. 7 left; ``nan`` for a hybrid, whose projection sees CNN
    features, as ``spearman`` is without a position embedding). Distances are in input pixels and the grid is
    the images' own, so a hybrid and a model with ``dynamic_img_size`` (images of another size) work too.
    """
    _check_model(model)
    config, embed = model.config, model.patch_embed
    patch = tuple(embed.patch_size)  # one token's patch in input pixels (the hybrid's: backbone stride x P)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty batch [B, C, H, W], got {shape}")
    if torch.is_floating_point(images):  # the model refuses integer images itself, naming the fix
        _check_finite(images.detach(), "images")  # else its attention is NaN, and the message blames the attention
    B, _, H, W = images.shape
    if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (B, H, W):
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must have shape {(B, H, W)} (one per image, the images' size), got {shape}")
    grid = (H // patch[0], W // patch[1])  # the images' grid: another size than the table's with dynamic_img_size
    prefix = 1 if config.class_token else 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, attentions = model(images, return_attention=True)
    finally:
        model.train(was_training)
    distances = mean_attention_distance(attentions, grid, patch, prefix)
    out: Dict[str, object] = {
        "distance": attention_distance_summary(distances, uniform_attention_distance(grid, patch)),
        "localization": attention_localization(rollout_cls_map(attentions, grid, prefix, pool=config.pool), masks,
                                               patch)["mean"],
    }
    pos = getattr(model, "pos_embed", None)
    out["spearman"] = (similarity_distance_correlation(pos_embed_similarity(pos, embed.grid_size, prefix))["spearman"]
                       if isinstance(pos, torch.Tensor) else float("nan"))
    if config.hybrid_layers is not None:  # the projection's filters see CNN features, not image pixels
        out["smoothness"] = out["variance_top"] = float("nan")
        return out
    components, ratio = patch_embedding_components(embed.proj, num_components=num_components,
                                                   patch_size=config.patch_size, in_channels=config.in_channels)
    out["smoothness"] = filter_smoothness(components)
    out["variance_top"] = float(ratio.sum())
    return out


# ------------------------------------------------------------------------------------------- localisation
def object_patches(masks: torch.Tensor, patch_size: Size2) -> torch.Tensor:
    """Which patches show the object: bool [B, gh, gw] from pixel masks [B, H, W] (H = gh * P).

    A patch counts if at least 50 % of its pixels are inside the mask (mask > 0.5); if no patch of an
    image qualifies (a tiny object), every patch that overlaps the mask at all counts.
    """
    ph, pw = to_2tuple(patch_size, "patch_size")
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3 or masks.shape[1] % ph or masks.shape[2] % pw:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must have shape [B, H, W] with H, W multiples of the patch size {(ph, pw)}, got {shape}")
    _check_finite(masks.detach(), "masks")  # a nan pixel would count as background, silently
    if masks.dtype != torch.bool and masks.numel():  # a mask of -1/1 or 0..255 would be read wrong, silently
        lo, hi = float(masks.detach().min()), float(masks.detach().max())
        if lo < 0 or hi > 1:
            hint = " (a 0..255 mask? pass mask > 127)" if hi <= 255 and lo >= 0 else ""
            raise ValueError(f"masks must be bool, or numbers in [0, 1] (1 = object), got values in [{lo:g}, {hi:g}]"
                             f"{hint}")
    inside = (masks.detach().to(torch.float64) > 0.5).to(torch.float64)  # [B, H, W]
    coverage = F.avg_pool2d(inside[:, None], kernel_size=(ph, pw))[:, 0]  # [B, gh, gw] pixel share per patch
    obj = coverage >= 0.5
    none_qualify = ~obj.flatten(1).any(dim=1)  # [B]
    return torch.where(none_qualify[:, None, None], coverage > 0, obj)


def attention_localization(attention_map: torch.Tensor, masks: torch.Tensor, patch_size: Size2) -> Dict[str, object]:
    """How much more of a map's mass sits on the object than a uniform map would put there.

    A patch counts as *object* if at least 50 % of its pixels are inside the mask (mask > 0.5); if no
    patch of an image qualifies (tiny object), every patch that overlaps the mask at all counts. Then

        ratio = (map mass on object patches / total mass) / (object patches / all patches)

    1.0 = no better than uniform, 1 / object share = all mass on the object. An image with an empty
    mask gets ``nan`` and is left out of the mean and median.
    Inputs: map [B, gh, gw] (non-negative), masks [B, H, W] (bool or float in [0, 1]) with H = gh * P.
    Returns ``{"ratio": [B], "mean": float, "median": float, "object_share": [B], "mass_on_object": [B]}``.
    """
    if not isinstance(attention_map, torch.Tensor) or attention_map.ndim != 3:
        shape = tuple(attention_map.shape) if isinstance(attention_map, torch.Tensor) else type(attention_map).__name__
        raise ValueError(f"attention_map must have shape [B, gh, gw], got {shape}")
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must have shape [B, H, W], got {shape}")
    ph, pw = to_2tuple(patch_size, "patch_size")
    B, gh, gw = attention_map.shape
    expected = (B, gh * ph, gw * pw)
    if tuple(masks.shape) != expected:
        raise ValueError(f"masks must have shape {expected} (map {tuple(attention_map.shape)} x patch {(ph, pw)}), got {tuple(masks.shape)}")
    m = attention_map.detach().to(torch.float64)
    _check_finite(m, "attention_map")
    if (m < 0).any():
        raise ValueError("attention_map must be non-negative")
    empty = (m.flatten(1).sum(dim=1) <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_map of image(s) {empty} sums to 0: no attention to place on the object")
    obj = object_patches(masks, (ph, pw)).to(m.device, torch.float64)  # [B, gh, gw], beside a GPU model's map
    object_share = obj.flatten(1).mean(dim=1)  # [B]
    mass_on_object = (m * obj).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp_min(1e-300)  # [B]
    ratio = torch.where(object_share > 0, mass_on_object / object_share.clamp_min(1e-300), torch.full_like(object_share, float("nan")))
    valid = ratio[~ratio.isnan()]
    mean = float(valid.mean()) if valid.numel() else float("nan")
    median = float(valid.quantile(0.5)) if valid.numel() else float("nan")
    return {
        "ratio": ratio.float(),
        "mean": mean,
        "median": median,
        "object_share": object_share.float(),
        "mass_on_object": mass_on_object.float(),
    }
