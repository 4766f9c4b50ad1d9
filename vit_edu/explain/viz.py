"""Plotting helpers for the notebooks: every picture they draw is also saved under figures/."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import analysis
from ..config import POOLS, to_2tuple
from ..fileio import atomic_write


def figures_dir(create: bool = True) -> Path:
    """Where save_figure writes, created on demand: $VIT_EDU_FIGURES if set (``make notebooks`` points it at the
    committed figures/); build/figures/ (untracked) when running in the repository root or its notebooks/
    folder, so Run All in JupyterLab or ``make demo`` leaves a learner's checkout clean; otherwise figures/ in
    the working directory, so a student's copy or an nbgrader autograde keeps its pictures beside it."""
    env = os.environ.get("VIT_EDU_FIGURES")
    if env:
        d = Path(env)
    else:
        root = Path(__file__).resolve().parents[2]  # vit_edu/explain/viz.py -> the repository
        cwd = Path.cwd().resolve()
        d = root / "build" / "figures" if cwd in (root, root / "notebooks") else cwd / "figures"
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig: Optional[plt.Figure], name: str, dpi: int = 100) -> Path:
    """Save ``fig`` (default: the current figure) as figures_dir()/<name>.png (a stable name); returns the path.

    ``name`` is a plain file name (no folder, ".png" optional): every figure lands in the one figures folder.
    """
    fig = fig if fig is not None else plt.gcf()
    if not isinstance(fig, plt.Figure):
        hint = " (an Axes: pass ax.figure)" if isinstance(fig, plt.Axes) else ""
        raise TypeError(f"fig must be a matplotlib Figure or None (the current figure), got {type(fig).__name__}{hint}")
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith(".") or "\\" in name:
        raise ValueError(f"name must be a plain file name such as '07_rollout' (no folder: figures go to "
                         f"{figures_dir(create=False)}), got {name!r}")
    stem, dot, ext = name.rpartition(".")
    if dot and stem and ext.lower() in fig.canvas.get_supported_filetypes() and ext.lower() != "png":
        raise ValueError(f"save_figure writes PNG files; name {name!r} asks for .{ext}: leave the extension out")
    if not name.lower().endswith(".png"):
        name += ".png"
    path = figures_dir() / name
    # through a temporary file: a run stopped while drawing leaves the previous picture, never half a PNG
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight",
                                             metadata={"Software": None}), "wb")
    return path


# ================================================================================================ pictures
# Every function below returns its Figure (no plt.show): the notebook shows it and saves it with
# save_figure. Images may be torch tensors [3, H, W] / batches [B, 3, H, W] in [0, 1] (as given by
# vit_edu.training.data.denormalize) or numpy arrays [H, W, 3] / [B, H, W, 3].

ImageLike = Union[torch.Tensor, np.ndarray]

OVERLAY_CMAP = "inferno"
MASK_COLOR = "cyan"


# How far a float image may stray outside [0, 1] and still be drawn (clipped): bilinear/bicubic resizing and
# float32 arithmetic overshoot by a little, and 1e-3 is a quarter of one 8-bit level (1/255 ~ 4e-3), so what is
# clipped cannot be seen. A normalized image (about -1..1) or one on the 0..255 scale is far outside: refused.
RANGE_TOLERANCE = 1e-3


def to_numpy_image(image: ImageLike) -> np.ndarray:
    """One image as a float numpy array [H, W, 3] (or [H, W] for grey) in [0, 1].

    Accepts [C, H, W] / [1, C, H, W] tensors or arrays, and [H, W, C] / [H, W] arrays or tensors: float images
    in [0, 1] (within RANGE_TOLERANCE, then clipped), or 8-bit images (uint8, 0..255, as PIL gives them), scaled
    to [0, 1]. Anything else is refused with what it holds, rather than drawn clipped to black and white: a
    normalized image (pass ``denormalize(x)``), floats on the 0..255 scale (``x / 255``), other integer or bool
    dtypes (their scale cannot be told).
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.bfloat16:  # NumPy has no bfloat16
            image = image.float()
        image = image.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a torch.Tensor or numpy array, got {type(image).__name__}")
    _check_pixel_values(image)
    x = image.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.transpose(x, (1, 2, 0))  # [C, H, W] -> [H, W, C]
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] != 3):
        raise ValueError(f"expected one image [3, H, W], [H, W, 3] or [H, W], got shape {tuple(image.shape)}")
    return np.clip(x, 0.0, 1.0)


def _check_pixel_values(image: np.ndarray) -> None:
    """uint8 (0..255), or floats in [0, 1] (within RANGE_TOLERANCE); any other image is drawn wrong, so refused."""
    if image.dtype == np.uint8:
        return
    if not np.issubdtype(image.dtype, np.floating):
        fix = (" (16-bit: x.astype(np.float32) / 65535)" if image.dtype == np.uint16 else
               " (8-bit values: x.astype(np.uint8))" if np.issubdtype(image.dtype, np.integer) else "")
        raise TypeError(f"image must be uint8 (0..255) or float in [0, 1], got dtype {image.dtype}: its scale cannot "
                        f"be told; convert it to floats in [0, 1]{fix}")
    if image.size == 0:
        return
    lo, hi = float(np.min(image)), float(np.max(image))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("image holds NaN or infinite values; expected floats in [0, 1]")
    if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        hint = ("a normalized image? undo the normalization: vit_edu.training.data.denormalize(x) for the course's "
                "data" if lo < -RANGE_TOLERANCE else
                "values on the 0..255 scale? pass x / 255" if hi <= 255 + RANGE_TOLERANCE else "rescale it to [0, 1]")
        raise ValueError(f"image values must lie in [0, 1] to be drawn (clipping would show them black or white), got "
                         f"values in [{lo:.4g}, {hi:.4g}]: {hint}")


def to_numpy_images(images: Union[ImageLike, Sequence[ImageLike]]) -> List[np.ndarray]:
    """A batch [B, 3, H, W] (tensor), [B, H, W, 3] (array) or a list of images -> list of [H, W, 3] arrays."""
    if isinstance(images, (list, tuple)):
        return [to_numpy_image(im) for im in images]
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return [to_numpy_image(images)]
        if images.ndim != 4:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        return [to_numpy_image(im) for im in images]
    if isinstance(images, np.ndarray):
        if images.ndim == 3 and images.shape[-1] in (1, 3):
            return [to_numpy_image(images)]
        if images.ndim != 4:
            raise ValueError(f"expected images [B, H, W, 3], got shape {tuple(images.shape)}")
        return [to_numpy_image(im) for im in images]
    raise TypeError(f"images must be a tensor, numpy array or list, got {type(images).__name__}")


def _imshow(ax: plt.Axes, image: np.ndarray, interpolation: Optional[str] = None) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation=interpolation)
    ax.set_xticks([])
    ax.set_yticks([])


def _mask_array(mask: ImageLike) -> np.ndarray:
    """A mask [H, W] (tensor or array, bool or float) as a float numpy array."""
    return mask.detach().cpu().float().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask, dtype=np.float32)


def _outline(ax: plt.Axes, mask: ImageLike) -> None:
    """Draw the object mask's border as a contour line."""
    m = _mask_array(mask)
    if m.max() > 0.5 and m.min() < 0.5:  # a contour needs both inside and outside
        ax.contour(m, levels=[0.5], colors=MASK_COLOR, linewidths=1.5)


def _overlay(ax: plt.Axes, image: np.ndarray, heat: np.ndarray, alpha: float = 0.6, cmap: str = OVERLAY_CMAP):
    """The image in grey (so its colours do not mix with the heat map), the heat map scaled to [0, 1] on top."""
    grey = image if image.ndim == 2 else image @ np.array([0.299, 0.587, 0.114])  # luminance
    _imshow(ax, grey)
    lo, hi = float(heat.min()), float(heat.max())
    heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    return ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0, vmax=1)


def _grid(n: int, ncols: int, tile: float = 1.6, extra_h: float = 0.0):
    if n < 1:
        raise ValueError("nothing to draw: got 0 images (an empty batch or list)")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile * ncols, tile * nrows + extra_h), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


def show_images(images, labels=None, class_names: Union[Sequence[str], None] = None, ncols: int = 8,
                masks=None, title: Union[str, None] = None) -> plt.Figure:
    """A grid of images with optional labels (ints or strings) and mask outlines."""
    ims = to_numpy_images(images)
    if labels is not None and len(labels) != len(ims):
        raise ValueError(f"got {len(ims)} images but {len(labels)} labels")
    if masks is not None and len(masks) != len(ims):
        raise ValueError(f"got {len(ims)} images but {len(masks)} masks")
    fig, axes = _grid(len(ims), ncols)
    for i, im in enumerate(ims):
        ax = axes.flat[i]
        _imshow(ax, im)
        if masks is not None:
            _outline(ax, masks[i])
        if labels is not None:
            lab = labels[i]
            lab = int(lab) if isinstance(lab, (torch.Tensor, np.integer)) else lab
            name = class_names[lab] if class_names is not None and isinstance(lab, int) else str(lab)
            ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _check_on_grid(image: np.ndarray, grid: Tuple[int, int], what: str) -> None:
    """A map on a gh x gw grid belongs to an image that the grid cuts into whole patches; else it is another image."""
    H, W = image.shape[:2]
    if H % grid[0] or W % grid[1]:
        raise ValueError(f"the image is {H}x{W} pixels, which a {grid[0]}x{grid[1]} grid of patches does not cut "
                         f"into whole patches: {what} belong to an image of another size (pass the image they come from)")


def _patch_grid(image: ImageLike, patch_size) -> Tuple[np.ndarray, Tuple[int, int], Tuple[int, int]]:
    """(image [H, W(, 3)], (ph, pw), (gh, gw)), or a ValueError if the patches do not tile the image."""
    im = to_numpy_image(image)
    H, W = im.shape[:2]
    ph, pw = to_2tuple(patch_size, "patch_size")
    if H % ph or W % pw:
        raise ValueError(f"image size {(H, W)} is not divisible by the patch size {(ph, pw)}")
    return im, (ph, pw), (H // ph, W // pw)


def patch_canvas(image: ImageLike, patch_size, gap: int = 1) -> np.ndarray:
    """The image's patches pulled apart on a white canvas, ``gap`` pixels between them: [H', W'(, 3)].

    The picture of "an image is worth 16x16 words": the same pixels, cut into the N tokens the model reads.
    """
    im, (ph, pw), (gh, gw) = _patch_grid(image, patch_size)
    # [H, W(, 3)] -> [gh, gw, ph, pw(, 3)]: tile (r, c) is patch number r * gw + c
    tiles = im.reshape(gh, ph, gw, pw, *im.shape[2:]).swapaxes(1, 2)
    return mosaic(tiles, gap, fill=1.0)


def show_patch_grid(image: ImageLike, patch_size: int, gap: int = 1) -> plt.Figure:
    """Left: the image with the patch grid drawn on. Right: the patches pulled apart ("16x16 words")."""
    im, (ph, pw), (gh, gw) = _patch_grid(image, patch_size)
    H, W = im.shape[:2]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8, 4.3))
    _imshow(ax0, im)
    for r in range(1, gh):
        ax0.axhline(r * ph - 0.5, color="white", linewidth=0.8)
    for c in range(1, gw):
        ax0.axvline(c * pw - 0.5, color="white", linewidth=0.8)
    ax0.set_title(f"{H}x{W} image, {ph}x{pw} patches")
    g = max(gap, round(gap * max(H, W) / 64))  # scaled so the gaps stay visible for large images
    _imshow(ax1, patch_canvas(im, (ph, pw), g))
    ax1.set_title(f"N = {gh}x{gw} = {gh * gw} patches (tokens)")
    fig.tight_layout()
    return fig


def plot_attention_heads(image: ImageLike, attentions: Sequence[torch.Tensor], grid_size, layer: int = -1,
                         index: int = 0, num_prefix_tokens: int = 1, alpha: float = 0.6,
                         pool: Optional[str] = None) -> plt.Figure:
    """The image, then the class token's attention of every head of one layer, upsampled over the image.

    ``attentions``: the list from ``model(x, return_attention=True)``; ``index`` picks the image in the batch.
    Each head's map is min-max scaled on its own (look at where, not how much). ``pool``: the model's
    ``config.pool``, as in :func:`vit_edu.explain.analysis.cls_attention_maps` ("mean": the patch tokens' mean row).
    """
    maps = analysis.cls_attention_maps(attentions, grid_size, num_prefix_tokens, pool)  # [B, L, H, gh, gw]
    L, heads = maps.shape[1], maps.shape[2]
    if isinstance(layer, bool) or not isinstance(layer, int) or not -L <= layer < L:
        raise ValueError(f"layer must be an int in 0..{L - 1} (counted from 0; -1 is the last) for {L} layers, got {layer!r}")
    layer_idx = layer % L
    im = to_numpy_image(image)
    _check_on_grid(im, maps.shape[-2:], "the attention maps")
    up = analysis.upsample_map(maps[index, layer_idx], im.shape[:2]).cpu().numpy()  # [heads, H, W]
    ncols = heads + 1
    fig, axes = plt.subplots(1, ncols, figsize=(2.0 * ncols + 0.8, 2.5), squeeze=False, layout="constrained")
    _imshow(axes[0, 0], im)
    axes[0, 0].set_title("input")
    for h in range(heads):
        mappable = _overlay(axes[0, h + 1], im, up[h], alpha)
        axes[0, h + 1].set_title(f"head {h + 1}")
    fig.colorbar(mappable, ax=axes[0, 1:].tolist(), fraction=0.02, pad=0.02, label="attention (scaled per head)")
    query = "class token" if analysis._readout(pool, num_prefix_tokens) == "cls" else "mean query"
    fig.suptitle(f"Layer {layer_idx + 1} of {L}: attention of the {query} to each patch")
    return fig


def plot_attention_layers(image: ImageLike, attentions: Sequence[torch.Tensor], grid_size, index: int = 0,
                          num_prefix_tokens: int = 1, alpha: float = 0.6, pool: Optional[str] = None) -> plt.Figure:
    """Class-token attention for every layer (rows) and head (columns), each overlaid on the image (``pool``: as in
    :func:`plot_attention_heads`)."""
    maps = analysis.cls_attention_maps(attentions, grid_size, num_prefix_tokens, pool)  # [B, L, H, gh, gw]
    L, heads = maps.shape[1], maps.shape[2]
    im = to_numpy_image(image)
    _check_on_grid(im, maps.shape[-2:], "the attention maps")
    up = analysis.upsample_map(maps[index].flatten(0, 1), im.shape[:2]).cpu().numpy().reshape(L, heads, *im.shape[:2])
    fig, axes = plt.subplots(L, heads, figsize=(1.6 * heads + 1.0, 1.6 * L + 0.5), squeeze=False, layout="constrained")
    for l in range(L):
        for h in range(heads):
            ax = axes[l, h]
            mappable = _overlay(ax, im, up[l, h], alpha)
            if l == 0:
                ax.set_title(f"head {h + 1}", fontsize=10)
            if h == 0:
                ax.set_ylabel(f"layer {l + 1}", fontsize=10)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.025, pad=0.02, label="attention (scaled per map)")
    query = "Class-token" if analysis._readout(pool, num_prefix_tokens) == "cls" else "Mean-query"
    fig.suptitle(f"{query} attention per layer and head")
    return fig


def plot_rollout(images, rollout_maps: torch.Tensor, masks=None, alpha: float = 0.6,
                 titles: Union[Sequence[str], None] = None, pool: Optional[str] = None) -> plt.Figure:
    """One column per image: the image (top) and its rollout map over it (bottom), mask outline if given.

    With masks, each column also shows the localisation ratio of :func:`analysis.attention_localization`.
    ``pool``: the model's ``config.pool``, as given to :func:`analysis.rollout_cls_map`; the title names the query
    the maps are of (None or "cls": the class token; "mean": the mean of the patch tokens, what such a head reads).
    """
    if pool is not None and pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS} (the model's config.pool) or None, got {pool!r}")
    ims = to_numpy_images(images)
    if not isinstance(rollout_maps, torch.Tensor) or rollout_maps.ndim != 3 or rollout_maps.shape[0] != len(ims):
        shape = tuple(rollout_maps.shape) if isinstance(rollout_maps, torch.Tensor) else type(rollout_maps).__name__
        raise ValueError(f"rollout_maps must have shape [{len(ims)}, gh, gw] (one per image), got {shape}")
    if not ims:
        raise ValueError("nothing to draw: got 0 images (an empty batch or list)")
    if titles is not None and len(titles) != len(ims):
        raise ValueError(f"got {len(ims)} images but {len(titles)} titles")
    if not torch.isfinite(rollout_maps).all():
        raise ValueError("rollout_maps has non-finite values (nan or inf)")
    H, W = ims[0].shape[:2]
    for im in ims:
        if im.shape[:2] != (H, W):
            raise ValueError(f"all images must have the same size, got {(H, W)} and {im.shape[:2]}")
        _check_on_grid(im, rollout_maps.shape[-2:], "the rollout maps")
    up = analysis.upsample_map(rollout_maps, (H, W)).cpu().numpy()  # [B, H, W]
    ratios = None
    if masks is not None:
        mask_t = torch.as_tensor(np.stack([_mask_array(m) for m in masks]))  # [B, H, W]
        patch = (H // rollout_maps.shape[1], W // rollout_maps.shape[2])
        ratios = analysis.attention_localization(rollout_maps, mask_t, patch)["ratio"]
    n = len(ims)
    fig, axes = plt.subplots(2, n, figsize=(2.0 * n + 1.0, 4.4), squeeze=False, layout="constrained")
    for i, im in enumerate(ims):
        _imshow(axes[0, i], im)
        mappable = _overlay(axes[1, i], im, up[i], alpha)
        if masks is not None:
            _outline(axes[0, i], masks[i])
            _outline(axes[1, i], masks[i])
        if titles is not None:
            axes[0, i].set_title(str(titles[i]), fontsize=9)
        if ratios is not None:
            axes[1, i].set_xlabel(f"ratio {float(ratios[i]):.2f}", fontsize=9)
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("rollout")
    fig.colorbar(mappable, ax=axes[1].tolist(), fraction=0.03, pad=0.02, label="rollout (scaled per image)")
    query = "the mean of the patch tokens" if pool == "mean" else "the class token"
    fig.suptitle(f"Attention rollout of {query}" + (" (ratio: mass on object / uniform)" if ratios is not None else ""))
    return fig


def plot_mean_attention_distance(distances: torch.Tensor, patch_size=None, image_size=None,
                                 title: Union[str, None] = None) -> plt.Figure:
    """Paper Fig. 7 right: mean attention distance (pixels) of every head, one column of dots per layer.

    With ``patch_size`` and ``image_size`` two reference lines are drawn: the nearest other patch (the smallest
    non-zero distance; a head that looks only at its own patch scores 0) and the mean distance under
    uniform attention over the whole image.
    """
    if not isinstance(distances, torch.Tensor) or distances.ndim != 2:
        shape = tuple(distances.shape) if isinstance(distances, torch.Tensor) else type(distances).__name__
        raise ValueError(f"distances must have shape [layers, heads] (from mean_attention_distance), got {shape}")
    fig, ax = plt.subplots(figsize=(5, 3.8))
    uniform = one_patch = None
    if patch_size is not None and image_size is not None:
        ph, pw = to_2tuple(patch_size, "patch_size")
        Hs, Ws = to_2tuple(image_size, "image_size")
        uniform = analysis.uniform_attention_distance((Hs // ph, Ws // pw), (ph, pw))
        one_patch = min(ph, pw)
    _draw_attention_distance(ax, distances, uniform, one_patch)
    ax.set_title(title or "Mean attention distance per head")
    fig.tight_layout()
    return fig


def _draw_attention_distance(ax: plt.Axes, distances: torch.Tensor, uniform: Optional[float] = None,
                             one_patch: Optional[float] = None) -> None:
    """The scatter of Fig. 7 right on ``ax``: one colour per head, layers on x; optional reference lines."""
    d = distances.detach().cpu().double().numpy()
    L, heads = d.shape
    colors = plt.cm.viridis(np.linspace(0, 0.9, heads))
    for h in range(heads):
        ax.scatter(np.arange(1, L + 1), d[:, h], s=22, color=colors[h], label=f"head {h + 1}" if heads <= 16 else None)
    if uniform is not None:
        ax.axhline(uniform, color="gray", linestyle="--", linewidth=1, label="uniform attention")
    if one_patch is not None:
        ax.axhline(one_patch, color="gray", linestyle=":", linewidth=1, label="nearest other patch")
    if uniform is not None:
        ax.set_ylim(0, max(uniform, float(d.max())) * 1.1)
    else:
        ax.set_ylim(bottom=0)
    ax.set_xticks(np.arange(1, L + 1))
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    ax.legend(fontsize=7, ncol=2 if heads > 4 else 1, loc="best")


def plot_pos_embed_similarity(sim: torch.Tensor, title: str = "Position embedding similarity",
                              vmin: Union[float, None] = None, vmax: Union[float, None] = None) -> plt.Figure:
    """Paper Fig. 7 centre: one tile per input patch (row, col); the tile is its cosine similarity with all positions.

    Drawn as one mosaic with thin gaps (fast even for 14x14 tiles), one shared colour scale: the data's
    min..max by default (the colour bar says so), or pass ``vmin=-1, vmax=1`` for the full cosine range, or
    the same ``vmin``/``vmax`` to every map that is to be compared with another.
    """
    if not isinstance(sim, torch.Tensor) or sim.ndim != 4 or sim.shape[:2] != sim.shape[2:]:
        shape = tuple(sim.shape) if isinstance(sim, torch.Tensor) else type(sim).__name__
        raise ValueError(f"sim must have shape [gh, gw, gh, gw] (from pos_embed_similarity), got {shape}")
    gh, gw = sim.shape[:2]
    side = min(7.0, 2.0 + 0.4 * max(gh, gw))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    img = draw_pos_embed_similarity(ax, sim, vmin, vmax)
    ax.set_title(title)
    own = " (this map's own min..max)" if vmin is None and vmax is None else ""
    fig.colorbar(img, ax=ax, fraction=0.046, pad=0.03, label="Cosine similarity" + own)
    return fig


def mosaic(tiles: np.ndarray, gap: int = 1, fill: float = np.nan) -> np.ndarray:
    """Tiles [R, C, h, w] (or [R, C, h, w, 3]) laid out as one image, ``gap`` pixels of ``fill`` between them.

    One image instead of R*C axes: fast to draw even for 14x14 tiles, and it fits in one panel of a figure.
    """
    R, C, h, w = tiles.shape[:4]
    out = np.full((R * (h + gap) - gap, C * (w + gap) - gap) + tiles.shape[4:], fill, dtype=np.float64)
    for r in range(R):
        for c in range(C):
            out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tiles[r, c]
    return out


def draw_pos_embed_similarity(ax: plt.Axes, sim: torch.Tensor, vmin: Optional[float] = None,
                              vmax: Optional[float] = None):
    """The mosaic of Fig. 7 centre on ``ax`` (tile (r, c) = similarity of position (r, c) with all others).

    Returns the image, for a colour bar.
    """
    s = sim.detach().cpu().double().numpy()
    gh, gw = s.shape[:2]
    gap = 1
    tiles = mosaic(s, gap)
    lo = float(np.nanmin(s)) if vmin is None else vmin
    hi = float(np.nanmax(s)) if vmax is None else vmax
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # the gaps between tiles
    img = ax.imshow(np.ma.masked_invalid(tiles), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([c * (gw + gap) + (gw - 1) / 2 for c in range(gw)], [str(c + 1) for c in range(gw)])
    ax.set_yticks([r * (gh + gap) + (gh - 1) / 2 for r in range(gh)], [str(r + 1) for r in range(gh)])
    ax.tick_params(length=0, labelsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    return img


def plot_patch_components(components: torch.Tensor, ncols: int = 7,
                          variance_ratio: Union[torch.Tensor, None] = None,
                          title: str = "Principal components of the patch-embedding filters",
                          tile: float = 1.5) -> plt.Figure:
    """Paper Fig. 7 left: one RGB tile per component [C, P, P], pixels drawn as blocks (no smoothing).

    Each tile shows its component with zero as mid-grey: ``0.5 + 0.5 * c / max|c|`` over all its channels, so
    a channel's sign and the balance between R, G and B are kept (a grey tile weighs the three channels
    alike). The sign of a principal component is arbitrary: a tile and its negative are the same component.
    Each tile is labelled ``PC k`` and, with ``variance_ratio``, the share of the variance it explains.
    ``tile``: inches per tile.
    """
    if not isinstance(components, torch.Tensor) or components.ndim != 4:
        shape = tuple(components.shape) if isinstance(components, torch.Tensor) else type(components).__name__
        raise ValueError(f"components must have shape [k, C, P, P] (from patch_embedding_components), got {shape}")
    k = components.shape[0]
    _check_variance_ratio(variance_ratio, k)
    fig, axes = _grid(k, ncols, tile=tile, extra_h=0.6)
    for i in range(k):
        _imshow(axes.flat[i], _component_tile(components[i]), interpolation="nearest")
        share = f": {100 * float(variance_ratio[i]):.1f}%" if variance_ratio is not None else ""
        axes.flat[i].set_title(f"PC {i + 1}{share}", fontsize=8)
    fig.suptitle(f"{title}\n(mid-grey = 0; the sign of a component is arbitrary)", fontsize=10)
    fig.tight_layout()
    return fig


def _check_variance_ratio(variance_ratio: Optional[torch.Tensor], k: int) -> None:
    """One explained-variance share per component drawn (from ``analysis.patch_embedding_components``)."""
    if variance_ratio is not None and len(variance_ratio) < k:
        raise ValueError(f"variance_ratio must have a share for each of the {k} components drawn, got {len(variance_ratio)}")


def _component_tile(component: torch.Tensor) -> np.ndarray:
    """One principal component [C, P, P] as an image [P, P, 3] (or [P, P] for C = 1) in [0, 1], zero at mid-grey.

    Scaled by its largest absolute value over all channels (``0.5 + 0.5 * c / max|c|``), so the relative
    weights of the channels, and their signs, survive: a min-max scaling would move zero to a different grey
    in every tile.
    """
    c = component.detach().cpu().double()
    if c.ndim != 3 or c.shape[0] not in (1, 3):
        raise ValueError(f"a component must have shape [C, P, P] with C = 1 or 3 (grey or RGB), got {tuple(c.shape)}")
    c = 0.5 + 0.5 * c / c.abs().max().clamp_min(1e-12)
    # [C, P, P] -> [P, P, C] here, where the layout is known: to_numpy_image guesses it from the shape, and a patch
    # of 3 (or 1) pixels a side reads as [H, W, C], drawn with rows and channels swapped
    c = c.permute(1, 2, 0).numpy()
    return to_numpy_image(c[..., 0] if c.shape[-1] == 1 else c)


def plot_figure7(components: torch.Tensor, sim: torch.Tensor, distances: torch.Tensor, uniform_distance: float,
                 title: Optional[str] = None, num_components: int = 8, ncols: int = 4,
                 variance_ratio: Optional[torch.Tensor] = None, one_patch: Optional[float] = None,
                 vmin: Optional[float] = None, vmax: Optional[float] = None) -> plt.Figure:
    """The three panels of the paper's Fig. 7 for one model, side by side, as the paper shows them.

    Left: the first ``num_components`` principal components of the patch-embedding filters (``components``
    [k, C, P, P] from ``analysis.patch_embedding_components``), zero at mid-grey as in
    ``plot_patch_components``, pixels drawn as blocks, ``ncols`` per row, each labelled ``PC k``; with
    ``variance_ratio`` each label and the title give the share of the variance explained. Centre: the position-embedding
    similarity mosaic (``sim`` [gh, gw, gh, gw] from ``analysis.pos_embed_similarity``; pass the same
    ``vmin``/``vmax`` when two figures are to be compared). Right: mean attention
    distance (pixels) of every head against depth (``distances`` [L, H] from
    ``analysis.mean_attention_distance``), with uniform attention's distance (``uniform_distance``, from
    ``analysis.uniform_attention_distance``) dashed and, if given, ``one_patch`` dotted.

    Why one figure: the paper reads the three together (what the first layer sees inside a patch, how
    the model knows where a patch is, how far each head looks), and drawing two models with the same
    function (trained and random init) makes the comparison a glance. The panels are drawn by the same
    code as ``plot_patch_components``, ``plot_pos_embed_similarity`` and ``plot_mean_attention_distance``.
    """
    if not isinstance(components, torch.Tensor) or components.ndim != 4:
        shape = tuple(components.shape) if isinstance(components, torch.Tensor) else type(components).__name__
        raise ValueError(f"components must have shape [k, C, P, P] (from patch_embedding_components), got {shape}")
    if not isinstance(sim, torch.Tensor) or sim.ndim != 4 or sim.shape[:2] != sim.shape[2:]:
        shape = tuple(sim.shape) if isinstance(sim, torch.Tensor) else type(sim).__name__
        raise ValueError(f"sim must have shape [gh, gw, gh, gw] (from pos_embed_similarity), got {shape}")
    if not isinstance(distances, torch.Tensor) or distances.ndim != 2:
        shape = tuple(distances.shape) if isinstance(distances, torch.Tensor) else type(distances).__name__
        raise ValueError(f"distances must have shape [layers, heads] (from mean_attention_distance), got {shape}")
    if not uniform_distance > 0:
        raise ValueError(f"uniform_distance must be > 0, got {uniform_distance}")
    k = min(num_components, components.shape[0])
    if k < 1 or ncols < 1:
        raise ValueError(f"need num_components >= 1 and ncols >= 1, got {num_components} and {ncols}")
    _check_variance_ratio(variance_ratio, k)
    ncols = min(ncols, k)
    nrows = math.ceil(k / ncols)
    tiles = [_component_tile(components[i]) for i in range(k)]
    blank = np.ones_like(tiles[0])  # white where the last row is not full
    tiles = np.stack(tiles + [blank] * (nrows * ncols - k)).reshape(nrows, ncols, *tiles[0].shape)

    fig, (ax_f, ax_s, ax_d) = plt.subplots(1, 3, figsize=(16.0, 4.8), layout="constrained",
                                           gridspec_kw={"width_ratios": [1.6, 1.1, 1.2]})
    _imshow(ax_f, mosaic(tiles, gap=1, fill=1.0), interpolation="nearest")
    h, w = tiles.shape[2:4]
    for i in range(k):  # label each tile in the white gap below it (the last row: just under the panel)
        r, c = divmod(i, ncols)
        share = f" {100 * float(variance_ratio[i]):.0f}%" if variance_ratio is not None else ""
        ax_f.text(c * (w + 1) + (w - 1) / 2, r * (h + 1) + h - 0.45, f"PC {i + 1}{share}", ha="center", va="top",
                  fontsize=8, clip_on=False)
    explained = f", {100 * float(variance_ratio[:k].sum()):.0f} % of the variance" if variance_ratio is not None else ""
    ax_f.set_title(f"Embedding filters: first {k} principal components{explained}\n"
                   "(mid-grey = 0; the sign of a component is arbitrary)", fontsize=9)
    img = draw_pos_embed_similarity(ax_s, sim, vmin, vmax)
    ax_s.set_title("Position embedding similarity", fontsize=9)
    own = " (this map's own min..max)" if vmin is None and vmax is None else ""
    fig.colorbar(img, ax=ax_s, fraction=0.046, pad=0.03, label="Cosine similarity" + own)
    _draw_attention_distance(ax_d, distances, uniform_distance, one_patch)
    ax_d.set_title("Mean attention distance per head", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def plot_history(history: Dict[str, Sequence[float]], title: Union[str, None] = None) -> plt.Figure:
    """Loss and accuracy curves side by side (and the learning rate, if logged); missing keys are skipped.

    The x axis is ``history["epoch"]`` or ``history["step"]`` when present, else 1, 2, 3, ...
    """
    if not isinstance(history, dict):
        raise TypeError(f"history must be a dict of lists, got {type(history).__name__}")
    xkey = "epoch" if "epoch" in history else ("step" if "step" in history else None)
    has_lr = len(history.get("lr", [])) > 0
    fig, axes = plt.subplots(1, 3 if has_lr else 2, figsize=(13 if has_lr else 9, 3.6))

    def xs(n: int):
        x = list(history[xkey]) if xkey else list(range(1, n + 1))
        return x[:n] if len(x) >= n else list(range(1, n + 1))

    panels = [(axes[0], "loss", "Loss"), (axes[1], "acc", "Accuracy")]
    for ax, what, label in panels:
        for split, style in (("train", "-o"), ("test", "-s")):
            ys = list(history.get(f"{split}_{what}", []))
            if ys:
                ax.plot(xs(len(ys)), ys, style, markersize=3, label=split)
        ax.set_xlabel(xkey or "epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if has_lr:
        lr = list(history["lr"])
        # lr is often logged per step while losses are per epoch: use its own index then
        x_lr = xs(len(lr)) if xkey and len(history[xkey]) == len(lr) else list(range(1, len(lr) + 1))
        axes[2].plot(x_lr, lr)
        axes[2].set_xlabel(xkey if xkey and len(history[xkey]) == len(lr) else "step")
        axes[2].set_ylabel("learning rate")
        axes[2].set_title("Learning rate")
        axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
