"""An interactive attention explorer for a trained ViT: pick an image and a patch, see what it attends to.

    from vit_edu.explain import explore
    explore(model, images)             # in JupyterLab: widgets; elsewhere: one static figure

Three layers, so each can be tested on its own:

* :class:`ExplorerData` (no widgets, no plotting): the model's attention for an image, computed once and
  cached, and for a :class:`Selection` (image, query patch, layer, head) the arrays to draw, a :class:`View`.
  Every number comes from :mod:`vit_edu.explain.analysis`.
* :class:`ExplorerFigure`: one matplotlib figure drawn once; a new selection only swaps the arrays in its
  artists, so an update is cheap. Without widgets this figure is the static fallback.
* :func:`explore`: the ipywidgets front end (sliders always; clicking a patch where ipympl is installed),
  or the static figure where no live Jupyter frontend can show widgets (nbval, nbconvert, a console).
"""

from __future__ import annotations

import html
import io
import json
import os
import sys
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image
from torch import nn

from . import analysis

__all__ = ["Selection", "View", "ExplorerData", "ExplorerFigure", "Explorer", "explore", "live_frontend", "load_image"]

STATIC_ENV = "VIT_EDU_STATIC"  # 1: always the static figure; 0: always widgets (if ipywidgets imports)
COURSE_MEAN = COURSE_STD = (0.5, 0.5, 0.5)  # the course data's normalization (vit_edu.training.data.MEAN, STD)


# ================================================================================================ logic
@dataclass(frozen=True)
class Selection:
    """What the learner picked; every field counts from 0 (figures and sliders show layer and head from 1)."""
    image: int = 0
    row: int = 0
    col: int = 0
    layer: int = 0
    head: int = 0


@dataclass
class View:
    """Everything one picture of the explorer shows, as plain arrays (maps on the patch grid [gh, gw])."""
    selection: Selection
    image: np.ndarray            # [H, W, 3] in [0, 1]
    patch_map: np.ndarray        # [gh, gw] the query patch's attention to every patch (layer, head)
    cls_share: float             # the part of that attention row that goes to the class token
    head_maps: np.ndarray        # [heads, gh, gw] the same for every head of the layer
    rollout: np.ndarray          # [gh, gw] rollout of what the head reads: the class token, or the mean of the
                                 # patch tokens for a pool="mean" model (sums to 1)
    pos_similarity: Optional[np.ndarray]  # [gh, gw] cosine similarity of the patch's E_pos to all; None without one
    distances: np.ndarray        # [layers, heads] mean attention distance (pixels) on this image
    uniform_distance: float      # the same for uniform attention: the yardstick
    caption: str                 # "image 3: square, predicted square"

    @property
    def highlight(self) -> Tuple[int, int, float]:
        """The head the distance plot marks: (layer, head, its distance in pixels)."""
        s = self.selection
        return s.layer, s.head, float(self.distances[s.layer, s.head])


@dataclass
class _Cached:
    attention: torch.Tensor      # [L, heads, T, T] for one image
    rollout: np.ndarray          # [gh, gw]
    distances: np.ndarray        # [L, heads]
    predicted: Optional[int]     # None for a model without a classifier head (num_classes=0)


def _check_index(name: str, value: object, size: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int in 0..{size - 1} ({what}), got {type(value).__name__} {value!r}")
    if not 0 <= int(value) < size:
        raise ValueError(f"{name} must be in 0..{size - 1} ({what}; counted from 0), got {value}")
    return int(value)


class ExplorerData:
    """The explorer's state without any widget: selection -> :class:`View`.

    ``images`` [B, C, H, W] as the model takes them (normalized with ``mean``/``std``, the course's by default);
    ``display`` [B, 3, H, W] in [0, 1] to draw (default: the images de-normalized). The attention of an image
    is computed on first use and kept (at most ``cache_size`` images); ``forward_calls`` counts the passes.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, display: Optional[torch.Tensor] = None,
                 labels: Optional[Sequence[int]] = None, class_names: Optional[Sequence[str]] = None,
                 mean: Sequence[float] = COURSE_MEAN, std: Sequence[float] = COURSE_STD, cache_size: int = 64):
        analysis._check_model(model)  # a vit_edu model with finite weights
        config, embed = model.config, model.patch_embed
        self.model = model
        self.grid: Tuple[int, int] = tuple(embed.grid_size)
        self.patch: Tuple[int, int] = tuple(embed.patch_size)  # input pixels per patch
        self.image_size: Tuple[int, int] = (self.grid[0] * self.patch[0], self.grid[1] * self.patch[1])
        self.channels = int(config.in_channels)
        self.layers, self.heads = int(config.depth), int(config.heads)
        self.prefix = 1 if config.class_token else 0
        self.pool = config.pool  # the rollout shown is of what the head reads: the class token or the patches' mean
        self.mean = self._per_channel(mean, "mean")
        self.std = self._per_channel(std, "std")
        if not (self.std > 0).all():
            raise ValueError(f"std must be positive, got {tuple(self.std.flatten().tolist())}")
        self.inputs = self._check_images(images, "images")
        if display is None:
            display = (self.inputs * self.std + self.mean).clamp(0, 1)
        display = self._check_images(display, "display", batch=len(self.inputs), shown=True)
        self.display: List[np.ndarray] = [self._to_hwc(d) for d in display]
        self.num_classes = int(config.num_classes)
        if labels is not None and (isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__")):
            raise TypeError(f"labels must be a sequence of class indices, one per image, got {type(labels).__name__}")
        self.labels: List[Optional[int]] = ([None] * len(self.inputs) if labels is None else
                                            [self._check_label(v, f"labels[{i}]") for i, v in enumerate(labels)])
        self.own: List[bool] = [False] * len(self.inputs)  # a learner's own image, added later
        if len(self.labels) != len(self.inputs):
            raise ValueError(f"labels must have one entry per image ({len(self.inputs)}), got {len(self.labels)}")
        if class_names is not None and (isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__len__")
                                        or not all(isinstance(c, str) for c in class_names)):
            raise TypeError(f"class_names must be a list of str, one per class, got {class_names!r:.80}")
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"class_names must name the model's {self.num_classes} classes, got {len(class_names)} "
                             f"names {list(class_names)!r:.80}")
        self.class_names = list(class_names) if class_names is not None else None
        pos = getattr(model, "pos_embed", None)  # one table for every image: its similarity is computed once
        self.pos_sim = (analysis.pos_embed_similarity(pos, self.grid, self.prefix).numpy()
                        if isinstance(pos, torch.Tensor) else None)  # [gh, gw, gh, gw]
        self.uniform_distance = analysis.uniform_attention_distance(self.grid, self.patch)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0 (images whose attention is kept), got {cache_size!r}")
        self.cache_size = cache_size
        self._cache: "OrderedDict[int, _Cached]" = OrderedDict()
        self.forward_calls = 0

    # ------------------------------------------------------------------------------------------ inputs
    def _check_label(self, value: object, name: str) -> int:
        """A class index: an int (a Python, NumPy or 0-d integer tensor one) in [0, the model's classes)."""
        if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
                and value.dtype != torch.bool and not value.is_complex():
            value = int(value)
        elif isinstance(value, np.integer):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a class index (an int), got {value!r} ({type(value).__name__})")
        if self.num_classes > 0 and not 0 <= value < self.num_classes:
            raise ValueError(f"{name} must be a class index in [0, {self.num_classes}) for the model's "
                             f"{self.num_classes} classes, got {value}")
        return value

    def _per_channel(self, values: Sequence[float], name: str) -> torch.Tensor:
        """One value per input channel as [C, 1, 1]: C values, or one (or all alike, as the course's) for every channel."""
        v = torch.as_tensor(values, dtype=torch.float64).flatten()  # float64: the message quotes it as given
        if len(v) != self.channels and not (len(v) >= 1 and (v == v[0]).all()):
            raise ValueError(f"{name} must have one value per input channel ({self.channels}), got {tuple(v.tolist())}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} must be finite, got {tuple(v.tolist())}")
        return (v if len(v) == self.channels else v[:1].repeat(self.channels)).view(-1, 1, 1).float()

    def _check_images(self, images: object, name: str, batch: Optional[int] = None, shown: bool = False) -> torch.Tensor:
        """[B, C, H, W] (or one [C, H, W]) at the model's size, floating point and finite; ``shown``: in [0, 1]."""
        C, (H, W) = self.channels, self.image_size
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [B, {C}, {H}, {W}], got {type(images).__name__}")
        x = images.detach().cpu()
        if x.ndim == 3:
            x = x[None]  # one image
        if x.ndim != 4 or tuple(x.shape[1:]) != (C, H, W) or len(x) == 0 or (batch is not None and len(x) != batch):
            b = "B" if batch is None else str(batch)
            raise ValueError(f"{name} must have shape [{b}, {C}, {H}, {W}] (the model's image size), "
                             f"got {tuple(images.shape)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"{name} must be floating point (scale 8-bit images: x.float() / 255), got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} has non-finite values (nan or inf)")
        if shown and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise ValueError(f"{name} must be in [0, 1] (the picture to show, not normalized), "
                             f"got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
        return x.float()

    @staticmethod
    def _to_hwc(image: torch.Tensor) -> np.ndarray:
        """[C, H, W] -> [H, W, 3] in [0, 1]: a grey image (C = 1) is drawn as RGB."""
        if image.shape[0] not in (1, 3):
            raise ValueError(f"cannot draw a {image.shape[0]}-channel image: pass display [B, 3, H, W] in [0, 1]")
        return image.expand(3, -1, -1).permute(1, 2, 0).clamp(0, 1).numpy().astype(np.float64)

    def __len__(self) -> int:
        return len(self.inputs)

    def add_image(self, source: Union[str, Path, torch.Tensor], label: Optional[int] = None) -> int:
        """Add the learner's own image: a file (resized to the model's image size) or a tensor [C, H, W] in
        [0, 1]. Returns its index."""
        label = None if label is None else self._check_label(label, "label")
        if isinstance(source, (str, Path)):
            source = load_image(source, self.image_size)  # RGB
            source = source.mean(dim=0, keepdim=True) if self.channels == 1 else source
        shown = self._check_images(source, "image", batch=1, shown=True)[0].clamp(0, 1)
        self.inputs = torch.cat([self.inputs, ((shown - self.mean) / self.std)[None]])
        self.display.append(self._to_hwc(shown))
        self.labels.append(label)
        self.own.append(True)
        return len(self.inputs) - 1

    # --------------------------------------------------------------------------------- attention, cached
    def cached(self, index: int) -> _Cached:
        """The attention of one image, computed once (one forward pass) and kept."""
        index = _check_index("image", index, len(self), f"{len(self)} images")
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                device = next(self.model.parameters()).device
                logits, attentions = self.model(self.inputs[index:index + 1].to(device), return_attention=True)
        finally:
            self.model.train(was_training)
        self.forward_calls += 1
        attentions = [a.float().cpu() for a in attentions]  # a bfloat16 or GPU model's: numpy needs float32 on CPU
        entry = _Cached(
            attention=torch.stack([a[0] for a in attentions]).float(),  # [L, heads, T, T]
            rollout=analysis.rollout_cls_map(attentions, self.grid, self.prefix, pool=self.pool)[0].numpy(),
            distances=analysis.mean_attention_distance(attentions, self.grid, self.patch, self.prefix).numpy(),
            # num_classes=0: the "logits" are the pooled features, and their argmax is no class
            predicted=int(logits[0].argmax()) if self.num_classes > 0 else None,
        )
        self._cache[index] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    # ------------------------------------------------------------------------------------ selection
    def check(self, selection: Selection) -> Selection:
        """The selection if every field is in range; else a ValueError naming the range and the value."""
        gh, gw = self.grid
        return Selection(
            image=_check_index("image", selection.image, len(self), f"{len(self)} images"),
            row=_check_index("patch row", selection.row, gh, f"the grid is {gh}x{gw} patches"),
            col=_check_index("patch col", selection.col, gw, f"the grid is {gh}x{gw} patches"),
            layer=_check_index("layer", selection.layer, self.layers, f"the model has {self.layers} layers"),
            head=_check_index("head", selection.head, self.heads, f"each layer has {self.heads} heads"),
        )

    def patch_at(self, y: float, x: float) -> Optional[Tuple[int, int]]:
        """The patch (row, col) under image pixel coordinates (y down, x right); None outside the image."""
        H, W = self.image_size
        if not (0 <= y < H and 0 <= x < W):
            return None
        return int(y // self.patch[0]), int(x // self.patch[1])

    def caption(self, index: int) -> str:
        names, label = self.class_names, self.labels[index]
        name = (lambda k: names[k] if names is not None and 0 <= k < len(names) else f"class {k}")  # noqa: E731
        shown = f"image {index}" + (" (yours)" if self.own[index] else "")
        shown += f": {name(label)}" if label is not None else ""
        predicted = self.cached(index).predicted
        if predicted is None:
            return f"{shown}, no classifier head (num_classes=0): nothing predicted"
        return f"{shown}, predicted {name(predicted)}"

    def view(self, selection: Selection) -> View:
        """The arrays to draw for ``selection``: slicing cached tensors, no forward pass after the first."""
        s = self.check(selection)
        c = self.cached(s.image)
        gh, gw = self.grid
        query = self.prefix + s.row * gw + s.col  # the patch's token: after the class token, row by row
        rows = c.attention[s.layer, :, query]  # [heads, T] every head's attention of that query
        head_maps = rows[:, self.prefix:].reshape(self.heads, gh, gw).numpy()
        return View(
            selection=s, image=self.display[s.image], patch_map=head_maps[s.head],
            cls_share=float(rows[s.head, :self.prefix].sum()), head_maps=head_maps, rollout=c.rollout,
            pos_similarity=None if self.pos_sim is None else self.pos_sim[s.row, s.col],
            distances=c.distances, uniform_distance=self.uniform_distance, caption=self.caption(s.image),
        )

    def summary(self, view: View) -> str:
        """One line a learner can read: where the patch looks most in the chosen head."""
        s, m = view.selection, view.patch_map
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        return (f"{view.caption} · patch (row {s.row}, col {s.col}) · layer {s.layer + 1}, head {s.head + 1}: "
                f"most attention to patch (row {r}, col {c}), {100 * m[r, c]:.0f} %"
                + (f"; to the class token {100 * view.cls_share:.0f} %" if self.prefix else ""))


def load_image(path: Union[str, Path], image_size: Tuple[int, int]) -> torch.Tensor:
    """A learner's image file as [3, H, W] in [0, 1], resized to the model's image size (no crop)."""
    from ..training.data import load_image_checked  # PIL, any mode to RGB, one ValueError naming the file

    image = load_image_checked(str(path)).resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


# ============================================================================================== figure
class ExplorerFigure:
    """The explorer's picture: the image, the patch's attention, rollout, E_pos similarity, every head of the
    layer and the mean attention distance, built once; :meth:`draw` swaps in a new :class:`View`.

    With ``blit=True`` (the widgets) what a selection changes is drawn over a saved background: axes, ticks
    and legend are drawn once, so an update redraws a few images and titles instead of the whole figure.
    """

    def __init__(self, data: ExplorerData, canvas_class: Optional[type] = None, blit: bool = False,
                 figure: Optional[Figure] = None, dpi: int = 100):
        self.data, self.blit = data, blit
        heads, ncols = data.heads, max(4, data.heads)
        if figure is None:  # not pyplot's: nothing shows it twice, nothing keeps it alive
            self.fig = Figure(dpi=dpi)
            self.canvas = (canvas_class or FigureCanvasAgg)(self.fig)
        else:  # e.g. pyplot's, so that plt.show() shows it in a console
            self.fig, self.canvas = figure, figure.canvas
        self.fig.set_size_inches(2.0 * ncols + 4.4, 5.4)
        maps = self.fig.add_gridspec(2, ncols, left=0.02, right=0.98 - 4.4 / (2.0 * ncols + 4.4), bottom=0.08,
                                     top=0.84, wspace=0.15, hspace=0.35)
        top = [self.fig.add_subplot(maps[0, i]) for i in range(4)]
        self.bottom = [self.fig.add_subplot(maps[1, h]) for h in range(heads)]
        self.ax_distance = self.fig.add_axes((1.0 - 3.5 / (2.0 * ncols + 4.4), 0.16, 3.3 / (2.0 * ncols + 4.4), 0.68))
        self.ax_image, self.ax_patch, self.ax_rollout, self.ax_pos = top
        H, W = data.image_size
        extent = (0, W, H, 0)  # maps on the patch grid drawn over the image's pixels
        self.rgb = self.ax_image.imshow(np.zeros((H, W, 3)), extent=extent)
        # each map is coloured and laid over the grey image here, in numpy: one RGB image per panel to draw
        self.heat = {key: ax.imshow(np.zeros((H, W, 3)), interpolation="nearest", extent=extent) for key, ax in
                     [("patch", self.ax_patch), ("rollout", self.ax_rollout), ("pos", self.ax_pos)]
                     + list(enumerate(self.bottom))}
        self.cmaps = {"heat": colormaps["inferno"], "pos": colormaps["RdBu_r"]}
        self.boxes = []
        for ax in top + self.bottom:
            ax.set_xticks([])
            ax.set_yticks([])
            if ax is not self.ax_rollout:  # the rollout is of what the head reads, not of the patch
                self.boxes.append(ax.add_patch(Rectangle((0, 0), data.patch[1], data.patch[0], fill=False,
                                                         edgecolor="cyan", linewidth=2)))
        self.ax_rollout.set_title("rollout of the class token" if data.pool == "cls" else
                                  "rollout of the mean query\n(the classifier reads the mean of the patch tokens)",
                                  fontsize=9)
        self.ax_pos.set_title("no position embedding" if data.pos_sim is None else
                              "E_pos similarity to the patch\n(cosine: -1 blue, 1 red)", fontsize=9)
        self._init_distance()
        self.fig.suptitle("Where does a patch look? " + ("Click a patch or move the sliders" if blit else
                          "A static view: in JupyterLab, choose the image, patch, layer and head"), fontsize=11)
        self.fig.text(0.02, 0.015, "maps: the chosen patch's attention to every patch, one colour scale per layer "
                      "(0 to its largest); cyan: the chosen patch", fontsize=8, color="0.3")
        titles = [self.ax_image.title, self.ax_patch.title] + [ax.title for ax in self.bottom]
        spines = [spine for ax in top + self.bottom for spine in ax.spines.values()]  # drawn over the images
        self._dynamic = ([self.rgb] + list(self.heat.values()) + spines + self.boxes + self.dots
                         + [self.ring] + titles)
        self._background = None
        if blit:
            for artist in self._dynamic:
                artist.set_animated(True)
            self.canvas.mpl_connect("draw_event", self._on_full_draw)

    def _init_distance(self) -> None:
        ax, d = self.ax_distance, self.data
        colors = [tuple(c) for c in colormaps["viridis"](np.linspace(0, 0.9, d.heads))]
        self.dots = [ax.scatter(np.arange(1, d.layers + 1), np.zeros(d.layers), s=24, color=colors[h],
                                label=f"head {h + 1}") for h in range(d.heads)]
        ax.axhline(d.uniform_distance, color="gray", linestyle="--", linewidth=1, label="uniform attention")
        (self.ring,) = ax.plot([1], [0], marker="o", markersize=15, markerfacecolor="none", markeredgecolor="red",
                               markeredgewidth=2, linestyle="none", label="chosen head", gid="selected-head")
        ax.set_xticks(np.arange(1, d.layers + 1))
        ax.set_xlim(0.5, d.layers + 0.5)
        # a fixed scale, so the axes need no redraw: a head far beyond uniform attention is clipped
        ax.set_ylim(0, 1.25 * d.uniform_distance)
        ax.set_xlabel("layer")
        ax.set_ylabel("mean attention distance (pixels)")
        ax.set_title("mean attention distance per head, this image", fontsize=9)
        ax.legend(fontsize=7, loc="lower right", ncol=2 if d.heads > 4 else 1)

    def draw(self, view: View) -> None:
        """Put ``view`` into the figure's artists (no new artists); with ``blit``, redraw only those."""
        s, d = view.selection, self.data
        grey = view.image @ np.array([0.299, 0.587, 0.114])  # luminance, so the heat map's colours stand out
        self.rgb.set_data(view.image)
        top = max(float(view.head_maps.max()), 1e-12)  # one scale for the layer: heads compare by colour
        for key, values in [("patch", view.patch_map)] + list(enumerate(view.head_maps)):
            self.heat[key].set_data(self._overlay(grey, values, "heat", 0.0, top))
        for h, ax in enumerate(self.bottom):
            ax.set_title(f"layer {s.layer + 1}, head {h + 1}" + (" (chosen)" if h == s.head else ""),
                         fontsize=9, color="red" if h == s.head else "black")
        self.heat["rollout"].set_data(self._overlay(grey, view.rollout, "heat", 0.0, float(view.rollout.max())))
        sim = np.zeros(d.grid) if view.pos_similarity is None else view.pos_similarity
        self.heat["pos"].set_data(self._overlay(grey, sim, "pos", -1.0, 1.0, alpha=0.85))
        for box in self.boxes:
            box.set_xy((s.col * d.patch[1], s.row * d.patch[0]))
        self.ax_image.set_title(view.caption.replace(", predicted", "\npredicted"), fontsize=9)
        self.ax_patch.set_title(f"patch ({s.row}, {s.col}), layer {s.layer + 1}, head {s.head + 1}\n"
                                f"max {view.patch_map.max():.2f}"
                                + (f", class token {view.cls_share:.2f}" if d.prefix else ""), fontsize=9)
        for h, dots in enumerate(self.dots):
            dots.set_offsets(np.column_stack([np.arange(1, d.layers + 1), view.distances[:, h]]))
        layer, _, distance = view.highlight
        self.ring.set_data([layer + 1], [distance])
        if self.blit and self._background is not None:
            self.canvas.restore_region(self._background)
            self._draw_dynamic()
            self.canvas.blit(self.fig.bbox)

    def _overlay(self, grey: np.ndarray, values: np.ndarray, cmap: str, lo: float, hi: float,
                 alpha: float = 0.65) -> np.ndarray:
        """A map on the patch grid [gh, gw], coloured (lo..hi) and laid over the grey image [H, W]: [H, W, 3]."""
        scaled = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
        colours = self.cmaps[cmap](scaled)[..., :3]  # [gh, gw, 3]
        colours = colours.repeat(self.data.patch[0], axis=0).repeat(self.data.patch[1], axis=1)  # a block per patch
        return (1 - alpha) * grey[..., None] + alpha * colours

    def _on_full_draw(self, event) -> None:
        """After a full draw (first show, a resize): keep it as the background, then draw the selection on it."""
        self._background = self.canvas.copy_from_bbox(self.fig.bbox)
        self._draw_dynamic()

    def _draw_dynamic(self) -> None:
        for artist in self._dynamic:
            self.fig.draw_artist(artist)

    def image_axes_fraction(self) -> List[float]:
        """The image's axes as [left, top, right, bottom] fractions of the figure (top = 0): where to click."""
        x0, y0, x1, y1 = self.ax_image.get_position().extents
        return [x0, 1 - y1, x1, 1 - y0]

    def png(self) -> bytes:
        """The figure as PNG bytes (with ``blit``, the canvas as last drawn: no full redraw after the first)."""
        if not self.blit or self._background is None:
            self.canvas.draw()
        buf = io.BytesIO()
        Image.fromarray(np.asarray(self.canvas.buffer_rgba())).save(buf, format="png", compress_level=1)
        return buf.getvalue()


# ============================================================================================== widgets
def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (which may or may not have a frontend to show widgets)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def live_frontend() -> Tuple[bool, str]:
    """(can widgets be shown here, why): a kernel with a frontend that renders them, and ipywidgets."""
    forced = os.environ.get(STATIC_ENV, "").strip()
    if forced == "1":
        return False, f"{STATIC_ENV}=1"
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False, "ipywidgets is not installed (pip install ipywidgets)"
    if not in_kernel():
        return False, "not in a Jupyter kernel (a plain Python or IPython console)"
    if forced == "0":
        return True, f"{STATIC_ENV}=0"
    # A kernel that a Jupyter server started for a notebook (JupyterLab, Notebook 7) has JPY_SESSION_NAME;
    # VS Code and Colab render widgets too. nbval and nbconvert start kernels without a frontend.
    if os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID") or "google.colab" in sys.modules:
        return True, "live Jupyter frontend"
    return False, "no live Jupyter frontend (the kernel was started by nbval, nbconvert or a script)"


class Explorer:
    """What :func:`explore` returns: displays as the widgets or, where they cannot show, as the static figure.

    ``data`` (:class:`ExplorerData`), ``figure`` (:class:`ExplorerFigure`), ``selection``, ``interactive`` and
    ``reason`` are there to inspect; :meth:`select` changes the selection from code.
    """

    def __init__(self, data: ExplorerData, selection: Selection, interactive: bool, reason: str,
                 clickable: bool = True):
        self.data, self.selection = data, data.check(selection)
        self.interactive, self.reason = interactive, reason
        self.widget = self.canvas = None
        canvas_class = None
        if interactive and clickable:
            try:  # ipympl makes the figure a widget that reports clicks; without it, sliders only
                from ipympl.backend_nbagg import Canvas as canvas_class, FigureManager
            except ImportError:
                canvas_class = None
        figure = None
        if not interactive and not in_kernel():  # a console: pyplot's figure, so that plt.show() shows it
            import matplotlib.pyplot as plt

            figure = plt.figure()
        self.figure = ExplorerFigure(data, canvas_class=canvas_class, blit=interactive, figure=figure)
        if canvas_class is not None:
            self.canvas = self.figure.canvas
            with warnings.catch_warnings():  # ipympl's toolbar warns about traitlets' arguments (hidden anyway)
                warnings.simplefilter("ignore", DeprecationWarning)
                FigureManager(self.canvas, 0)
            self.canvas._closed = False
            self.canvas.header_visible = self.canvas.footer_visible = self.canvas.resizable = False
            self.canvas.toolbar_visible = False
            self.canvas.mpl_connect("button_press_event", self._on_click)
        self.view = data.view(self.selection)
        self.figure.draw(self.view)
        if interactive:
            self.widget = self._build_widgets()

    # ------------------------------------------------------------------------------------ code API
    def select(self, **changes) -> View:
        """Change the selection (image, row, col, layer, head; from 0) and redraw."""
        self.selection = self.data.check(replace(self.selection, **changes))
        if self.widget is not None:
            with self._sliders_held():
                for name, slider in self.sliders.items():
                    slider.value = getattr(self.selection, name) + (1 if name in ("layer", "head") else 0)
        return self._redraw()

    def _redraw(self) -> View:
        self.view = self.data.view(self.selection)
        self.figure.draw(self.view)  # with widgets, blits the changes (an ipympl canvas sends them itself)
        if self.widget is not None:
            if self.canvas is None:
                self.image_widget.value = self.figure.png()
            self.readout.value = self._readout_html()
        return self.view

    def state(self) -> Dict[str, object]:
        """The shown selection and the chosen map's numbers: what a test or a curious learner can read back."""
        s = self.view.selection
        return {"image": s.image, "row": s.row, "col": s.col, "layer": s.layer, "head": s.head,
                "patch_map": np.round(self.view.patch_map.astype(np.float64), 6).tolist(),
                "grid": list(self.data.grid),
                "image_axes": [round(v, 6) for v in self.figure.image_axes_fraction()]}

    # ------------------------------------------------------------------------------------ widgets
    def _readout_html(self) -> str:
        state = html.escape(json.dumps(self.state()), quote=True)
        return (f'<div class="vit-edu-explorer-state" data-state="{state}">'
                f"{html.escape(self.data.summary(self.view))}</div>")

    def _build_widgets(self):
        import ipywidgets as w

        d, s = self.data, self.selection
        slider = lambda desc, value, lo, hi: w.IntSlider(value=value, min=lo, max=hi, description=desc,  # noqa: E731
                                                         continuous_update=False, layout=w.Layout(width="260px"))
        self.sliders = {"image": slider("image", s.image, 0, len(d) - 1),
                        "row": slider("patch row", s.row, 0, d.grid[0] - 1),
                        "col": slider("patch col", s.col, 0, d.grid[1] - 1),
                        "layer": slider("layer", s.layer + 1, 1, d.layers),
                        "head": slider("head", s.head + 1, 1, d.heads)}
        self._holding = False
        for sl in self.sliders.values():
            sl.observe(self._on_slider, names="value")
        self.path = w.Text(placeholder="your image file, e.g. ~/cat.png", layout=w.Layout(width="260px"))
        load = w.Button(description="load your image", layout=w.Layout(width="150px"))
        load.on_click(self._on_load)
        self.message = w.HTML("")
        self.readout = w.HTML(self._readout_html())
        if self.canvas is not None:
            picture = self.canvas
        else:
            self.image_widget = picture = w.Image(value=self.figure.png(), format="png")
        controls = w.HBox([w.VBox(list(self.sliders.values())[:3]), w.VBox(list(self.sliders.values())[3:]),
                           w.VBox([w.HBox([self.path, load]), self.message])])
        return w.VBox([controls, self.readout, picture])

    @contextmanager
    def _sliders_held(self) -> Iterator[None]:
        """Set several sliders without one redraw per slider."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def _on_slider(self, change) -> None:
        if self._holding:
            return
        v = {name: sl.value for name, sl in self.sliders.items()}
        self.selection = Selection(image=v["image"], row=v["row"], col=v["col"], layer=v["layer"] - 1,
                                   head=v["head"] - 1)
        self._redraw()

    def _on_click(self, event) -> None:
        axes = [self.figure.ax_image, self.figure.ax_patch, self.figure.ax_pos] + self.figure.bottom
        if event.inaxes not in axes or event.xdata is None:
            return
        patch = self.data.patch_at(event.ydata, event.xdata)
        if patch is not None:
            self.select(row=patch[0], col=patch[1])

    def _on_load(self, _button) -> None:
        try:
            index = self.data.add_image(Path(self.path.value.strip()).expanduser())
        except (OSError, ValueError, TypeError) as err:
            self.message.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        self.message.value = f"loaded as image {index}, resized to {'x'.join(map(str, self.data.image_size))}"
        self.sliders["image"].max = len(self.data) - 1
        self.select(image=index)

    # ------------------------------------------------------------------------------------ display
    def show(self) -> None:
        """Show it: displayed in a notebook, a matplotlib window in a console (or save ``figure.fig``)."""
        if in_kernel():
            self._ipython_display_()
        else:
            import matplotlib.pyplot as plt

            plt.show()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self.widget is not None:
            display(self.widget)
        else:  # the PNG itself: it needs no matplotlib backend in the kernel
            display({"image/png": self.figure.png(), "text/plain": self._describe()}, raw=True)

    def _describe(self) -> str:
        s = self.selection
        return (f"<attention explorer, static: image {s.image}, patch ({s.row}, {s.col}), layer {s.layer + 1}, "
                f"head {s.head + 1}; {len(self.data)} images>")

    def __repr__(self) -> str:
        mode = "widgets" if self.interactive else f"a static figure ({self.reason})"
        return f"<attention explorer: {len(self.data)} images, shown as {mode}, {self.selection}>"


def explore(model: nn.Module, images: torch.Tensor, display: Optional[torch.Tensor] = None, *,
            labels: Optional[Sequence[int]] = None, class_names: Optional[Sequence[str]] = None,
            image: int = 0, patch: Optional[Tuple[int, int]] = None, layer: int = 0, head: int = 0,
            mean: Sequence[float] = COURSE_MEAN, std: Sequence[float] = COURSE_STD,
            interactive: Optional[bool] = None, clickable: bool = True) -> Explorer:
    """Explore the attention of ``model`` on ``images`` [B, C, H, W] (normalized as the model was trained).

    Pick an image, a patch (click it, or the row/col sliders), a layer and a head, and see: the patch's attention
    in that head, all heads of the layer at once, the class token's rollout, the patch's position-embedding
    similarity and the mean attention distance of every head (the chosen one ringed). ``image``, ``patch``
    (row, col), ``layer`` and ``head`` set the first selection, counted from 0 (the figure shows layer and head
    from 1). A learner's own image file loads from the text box (or ``explorer.data.add_image(path)``).

    ``interactive=None`` decides by itself: widgets in a live Jupyter frontend, else the static figure for the
    first selection (nbval, nbconvert, a console; ``VIT_EDU_STATIC=1`` forces it); ``interactive=True`` forces the
    widgets, for a frontend that renders them but is not recognised. Returns an :class:`Explorer`,
    which displays as either; its ``figure.fig`` is the matplotlib figure. ``clickable=False`` shows the figure
    as a plain image (sliders only), for a frontend without ipympl's extension.
    """
    for flag, value in (("interactive", interactive), ("clickable", clickable)):
        if not isinstance(value, bool) and not (flag == "interactive" and value is None):
            raise TypeError(f"explore: {flag} must be True or False{' (or None: decide by itself)' * (flag == 'interactive')}"
                            f", got {value!r} ({type(value).__name__})")
    data = ExplorerData(model, images, display, labels=labels, class_names=class_names, mean=mean, std=std)
    if patch is None:
        patch = (data.grid[0] // 2, data.grid[1] // 2)
    if not isinstance(patch, (tuple, list)) or len(patch) != 2:
        raise ValueError(f"patch must be a pair (row, col) on the {data.grid[0]}x{data.grid[1]} grid, got {patch!r}")
    selection = data.check(Selection(image=image, row=patch[0], col=patch[1], layer=layer, head=head))
    if interactive is None:
        interactive, reason = live_frontend()
    else:
        reason = "interactive=True" if interactive else "interactive=False"
        if interactive:
            import ipywidgets  # noqa: F401  (an ImportError here names what is missing)
    return Explorer(data, selection, bool(interactive), reason, clickable=clickable)
