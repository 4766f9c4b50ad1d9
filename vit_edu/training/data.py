"""Data for the course: an embedded shapes dataset that needs no download, and the real-data paths
(:mod:`.loaders` turns a TrainConfig into datasets and DataLoaders).

The default dataset is drawn on the fly: coloured shapes (circle, square, triangle, ...) at a random
position, size, rotation and colour over a smooth textured background. Every image comes with its
**object mask**, so the notebooks can ask "does the attention look at the object?" with a ground truth.
Everything is drawn with *signed distance fields* (SDF) on a pixel grid: sdf < 0 inside the shape,
sdf > 0 outside, |sdf| = distance to the edge in pixels. A whole batch is one tensor expression per
class, no loop over pixels or images, so the 20,000 images of a training epoch take about a second
(``python benchmarks/train_speed.py --data`` times it).

Real data (CIFAR-10, MNIST, Fashion-MNIST, an image folder tree: :mod:`.imagefolder` chooses its files) go
through torchvision's transforms with the same normalization, so a model trained here sees inputs in the same range
whatever the source.

"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union
from urllib.error import URLError

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from .imagefolder import TRANSPARENT_GROUND, imagefolder_dataset, load_image_checked  # noqa: F401 - load_image_checked: data's name too

SHAPE_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "crescent", "star")
MEAN: Tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: Tuple[float, float, float] = (0.5, 0.5, 0.5)

DATASET_NAMES: Tuple[str, ...] = ("shapes", "cifar10", "mnist", "fashion_mnist", "imagefolder")
SPLITS: Tuple[str, ...] = ("train", "test")
SHAPES_DEFAULT_SIZES: Dict[str, int] = {"train": 20_000, "test": 2_000}
SHAPES_DEFAULT_SEEDS: Dict[str, int] = {"train": 0, "test": 1}

# Object size = its circumscribed diameter as a fraction of the image side (30-60 %): at 32x32 the
# smallest object is ~10 pixels across, about 2-3 patches of 4x4, still clearly its shape.
MIN_SIZE_FRAC, MAX_SIZE_FRAC = 0.30, 0.60
# Placement: how far an object may reach past the border, as a fraction of its circumscribed diameter.
# 0 keeps every object whole and away from the border, so "near the border" always means background and a
# learned position embedding can spend itself on that shortcut (it then forms a ring, not a grid). With
# 0.25 an object's centre can come within half a radius of the border: every patch of the image holds
# object pixels in some images, a quarter of the circle may be cut off, and the shape stays recognizable.
DEFAULT_OVERHANG = 0.25
# Fresh images every epoch: epoch e of a dataset with seed s is drawn from seed s + EPOCH_SEED_STRIDE * e, far
# from the small seeds the test sets use (1, 777, 2024, ...).
EPOCH_SEED_STRIDE = 100_003
# A real dataset's n-example subset (--n-train, --n-test, evaluate --n) is drawn at random with this fixed seed: the
# same images in every run, after a resume and in evaluate, mixed over the classes. No flag changes it.
SUBSET_SEED = 0
# Rotation range in degrees per class: shapes that would start to look like another shape when turned
# (a square on its corner looks like a diamond, a plus turned by 45 degrees is an "x") only wobble by
# +-15 degrees; circle and ring look the same at any angle; triangle, crescent and star turn freely.
MAX_ROTATION_DEG: Dict[str, float] = {
    "circle": 0.0, "square": 15.0, "triangle": 180.0, "diamond": 15.0,
    "cross": 15.0, "ring": 0.0, "crescent": 180.0, "star": 180.0,
}
_CHUNK_PIXELS = 512 * 32 * 32  # pixels rendered at once: intermediate [chunk, H, W] tensors stay in cache


# ----------------------------------------------------------------------------------------------------
# Signed distance fields. u, v: pixel-centre coordinates in the shape's own (rotated) frame, in pixels,
# [b, H, W]; r: circumradius in pixels [b, 1, 1] (every shape fits inside the circle of radius r, so a
# shape whose centre is at least r from the border is fully inside the image).
# ----------------------------------------------------------------------------------------------------


def _sdf_box(u: Tensor, v: Tensor, half_u: Tensor, half_v: Tensor) -> Tensor:
    """Exact SDF of an axis-aligned box with half-sizes (half_u, half_v)."""
    qu, qv = u.abs() - half_u, v.abs() - half_v
    qu_out, qv_out = qu.clamp(min=0), qv.clamp(min=0)
    outside = torch.sqrt(qu_out * qu_out + qv_out * qv_out)
    inside = torch.maximum(qu, qv).clamp(max=0)
    return outside + inside


def _sdf_circle(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    return torch.sqrt(u * u + v * v) - r


def _sdf_square(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    half = r / math.sqrt(2.0)  # corners on the circle of radius r
    return _sdf_box(u, v, half, half)


def _sdf_triangle(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Equilateral triangle, vertices on the circle of radius r, so its edges are r/2 from the centre."""
    # Outward edge normals at -90 (up: y points down in images), 30 and 150 degrees -> one vertex on top.
    d = None
    for angle in (-90.0, 30.0, 150.0):
        a = math.radians(angle)
        e = u * math.cos(a) + v * math.sin(a) - r / 2
        d = e if d is None else torch.maximum(d, e)
    return d


def _sdf_diamond(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Playing-card diamond (rhombus): half-width 0.6 r, half-height r; no rotation of a square gives it."""
    a, b = 0.6 * r, r
    # |u|/a + |v|/b = 1 is the edge; scaling by ab/sqrt(a^2+b^2) turns it into the distance to that line.
    return (u.abs() / a + v.abs() / b - 1.0) * (a * b / torch.sqrt(a * a + b * b))


def _sdf_cross(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Plus sign: union (min) of a horizontal and a vertical bar; the arm ends' corners touch radius r."""
    long, wide = 0.93 * r, 0.33 * r
    return torch.minimum(_sdf_box(u, v, long, wide), _sdf_box(u, v, wide, long))


def _sdf_ring(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Annulus between radii 0.5 r and r: distance to the mid circle minus half the thickness."""
    return (torch.sqrt(u * u + v * v) - 0.75 * r).abs() - 0.25 * r


def _sdf_crescent(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Disc of radius r minus (max with the negated SDF of) a disc of radius 0.8 r shifted by 0.5 r."""
    u_bite = u - 0.5 * r
    bite = 0.8 * r - torch.sqrt(u_bite * u_bite + v * v)
    return torch.maximum(_sdf_circle(u, v, r), bite)


def _sdf_star(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Five-pointed star in polar form: the edge radius goes from r (tips) to 0.45 r (notches) linearly in angle.

    Not an exact distance (the edges are slightly curved), but its zero set is the star and near the
    edge it changes about one unit per pixel, which is all the anti-aliasing below needs.
    """
    rho = torch.sqrt(u * u + v * v)
    sector = 2 * math.pi / 5
    phi = torch.remainder(torch.atan2(v, u) + math.pi / 2, sector)  # a tip points up
    t = (phi - sector / 2).abs() / (sector / 2)  # 1 at a tip, 0 at a notch
    edge = 0.45 * r + 0.55 * r * t
    return rho - edge


_SDF: Dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "circle": _sdf_circle, "square": _sdf_square, "triangle": _sdf_triangle, "diamond": _sdf_diamond,
    "cross": _sdf_cross, "ring": _sdf_ring, "crescent": _sdf_crescent, "star": _sdf_star,
}
assert tuple(_SDF) == SHAPE_CLASSES


# ----------------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_classes(classes: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """None -> all of SHAPE_CLASSES; otherwise at least two distinct known names, in the order given."""
    if classes is None:
        return SHAPE_CLASSES
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise TypeError(f"classes must be a sequence of shape names, got {classes!r}")
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if unknown:
        raise ValueError(f"unknown shape class(es) {unknown}; known: {', '.join(SHAPE_CLASSES)}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"classes must name at least two distinct shapes, got {list(classes)}")
    return classes


def _check_overhang(overhang: object) -> float:
    if isinstance(overhang, bool) or not isinstance(overhang, (int, float)) or not 0.0 <= overhang <= 0.5:
        raise ValueError(f"overhang must be a number in [0, 0.5] (fraction of the object's diameter allowed "
                         f"outside the image), got {overhang!r}")
    return float(overhang)


MAX_CLUTTER = 32
PALETTES = ("colour", "grey", "mottled")  # colour: random colours, object lighter; grey: light grey object on
# dark grey; mottled: a low-contrast grey object on a grey background, both under patch-sized colour blotches

# Per palette other than "colour": the (low, width) of every background channel and of every object channel.
# grey: object in [0.8, 0.9], background in [0.2, 0.3] (barely tinted): one contrast everywhere, so a patch can
# tell figure from ground without image-wide colour statistics (docs/training.md: a probe for attention that
# rises with depth; the full run stayed flat).
# mottled: object in [0.575, 0.625], background in [0.375, 0.425] (a gap of 0.15-0.25), and _render_chunk adds
# blotches of random colour, one per 4x4 pixels, reaching +-0.2 per channel, as far as that gap: one patch's
# colour says little about figure or ground, its neighbourhood's says more (docs/training.md: the one change of
# the data that grew a local first-layer head).
_PALETTE_RANGES = {"grey": ((0.2, 0.1), (0.8, 0.1)), "mottled": ((0.375, 0.05), (0.575, 0.05))}
MOTTLE_AMPLITUDE = 0.4  # "mottled": each channel's blotch value is uniform in +-0.2 at the blotch centres
MOTTLE_PIXELS = 4  # "mottled": one blotch per 4x4 pixels, the size of the course model's patches


def _check_palette(palette: object) -> str:
    if palette not in PALETTES:
        raise ValueError(f"palette must be one of {PALETTES}, got {palette!r}")
    return palette


def _check_clutter(clutter: object) -> int:
    if isinstance(clutter, bool) or not isinstance(clutter, int) or not 0 <= clutter <= MAX_CLUTTER:
        raise ValueError(f"clutter must be an int in [0, {MAX_CLUTTER}] (strokes per image), got {clutter!r}")
    return clutter


def _shape_params(n: int, image_size: int, g: torch.Generator, overhang: float = DEFAULT_OVERHANG,
                  classes: Tuple[str, ...] = SHAPE_CLASSES, palette: str = "colour") -> Dict[str, Tensor]:
    """Draw label, circumradius, centre, rotation and colours of n images (all in pixels / [0, 1])."""
    k = len(classes)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]  # exactly balanced, shuffled
    size = MIN_SIZE_FRAC + (MAX_SIZE_FRAC - MIN_SIZE_FRAC) * torch.rand(n, generator=g)
    radius = size * image_size / 2  # [n]
    # Centre uniform over the positions where at most `overhang` of the circumscribed diameter (2r) lies
    # outside the image: [r - 2 r overhang, S - r + 2 r overhang] on each axis.
    low = radius * (1 - 2 * overhang)
    cx = low + (image_size - 2 * low) * torch.rand(n, generator=g)
    cy = low + (image_size - 2 * low) * torch.rand(n, generator=g)
    shape_ids = torch.tensor([SHAPE_CLASSES.index(c) for c in classes])[labels]  # [n] index into SHAPE_CLASSES
    max_rot = torch.tensor([MAX_ROTATION_DEG[c] for c in SHAPE_CLASSES])[shape_ids]
    angle = torch.deg2rad((2 * torch.rand(n, generator=g) - 1) * max_rot)
    # A light object on a darker background, both of random colour: every channel of the object lies in
    # [0.6, 1], every channel of the background in [0.05, 0.4], so the object is brighter by at least 0.2
    # in each channel. Why always brighter: with a random sign of the contrast (a dark shape on a light
    # ground as often as the reverse) the small plain ViT first has to learn figure/ground from the
    # colours alone, and learned 4x to 10x slower (docs/training.md); the shape itself is the lesson here.
    # The other palettes map these same draws onto their own ranges (_PALETTE_RANGES), so the random stream and
    # the geometry are those of the colour images.
    bg = 0.05 + 0.35 * torch.rand(n, 3, generator=g)
    fg = 0.6 + 0.4 * torch.rand(n, 3, generator=g)
    if palette in _PALETTE_RANGES:
        (bg_low, bg_width), (fg_low, fg_width) = _PALETTE_RANGES[palette]
        bg = bg_low + (bg - 0.05) * (bg_width / 0.35)
        fg = fg_low + (fg - 0.6) * (fg_width / 0.4)
    return {"labels": labels, "shapes": shape_ids, "radius": radius, "cx": cx, "cy": cy, "angle": angle, "bg": bg,
            "fg": fg}


def _linear_upsample_matrix(n_in: int, n_out: int) -> Tensor:
    """[n_out, n_in] weights of 1-D linear interpolation: bilinear upsampling is separable, so an image
    X [n_in, n_in] upsamples to M @ X @ M.T. Built by interpolating the identity with F.interpolate."""
    eye = torch.eye(n_in)[None]  # [1, n_in, n_in]: each row is one input sample's one-hot signal
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T


def _render_chunk(p: Dict[str, Tensor], image_size: int, g: torch.Generator,
                  clutter: int = 0, palette: str = "colour") -> Tuple[Tensor, Tensor]:
    """Draw the images of one chunk of parameters: float [b, 3, H, W] in [0, 1] and masks bool [b, H, W]."""
    b, s = p["labels"].shape[0], image_size
    coords = torch.arange(s, dtype=torch.float32) + 0.5  # pixel centres
    ys, xs = coords[None, :, None], coords[None, None, :]  # [1, H, 1], [1, 1, W]

    # 1. The object: rotate the grid into each shape's frame and evaluate that class's SDF.
    dx, dy = xs - p["cx"][:, None, None], ys - p["cy"][:, None, None]  # [b, H, W]
    cos, sin = p["angle"].cos()[:, None, None], p["angle"].sin()[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    sdf = torch.empty(b, s, s)
    for shape_id, name in enumerate(SHAPE_CLASSES):
        idx = (p["shapes"] == shape_id).nonzero().flatten()
        if len(idx):
            sdf[idx] = _SDF[name](u[idx], v[idx], p["radius"][idx, None, None])
    mask = sdf < 0  # [b, H, W]: pixel centre inside the shape
    alpha = (0.5 - sdf).clamp(0, 1)[:, None]  # [b, 1, H, W] coverage: soft one-pixel edge (anti-aliasing)

    # 2. The background: base colour + smooth low-frequency noise + faint stripes, all low contrast.
    coarse = torch.rand(b, 3, 4, 4, generator=g) - 0.5  # a 4x4 grid of random values per channel
    up = _linear_upsample_matrix(4, s)  # [H, 4]
    noise = up @ coarse @ up.T  # [b, 3, H, W]: bilinear upsampling, done as two matrix products
    theta = math.pi * torch.rand(b, 1, 1, generator=g)
    freq = 1.5 + 3.5 * torch.rand(b, 1, 1, generator=g)  # cycles per image side
    phase = 2 * math.pi * torch.rand(b, 1, 1, generator=g)
    amp = 0.08 * torch.rand(b, 1, 1, generator=g)
    stripes = amp * torch.sin(2 * math.pi * freq * (xs * theta.cos() + ys * theta.sin()) / s + phase)  # [b, H, W]
    background = p["bg"][:, :, None, None] + 0.2 * noise + stripes[:, None]
    if clutter:  # drawn only when asked, so the default images (and every seed's pixels) stay as they were
        background = _draw_clutter(background, p["fg"], clutter, xs, ys, g)

    # 3. Composite (alpha blend), add a little grey pixel noise to everything, clip to [0, 1].
    image = background + alpha * (p["fg"][:, :, None, None] - background)  # [b, 3, H, W]
    image = image + 0.06 * (torch.rand(b, 1, s, s, generator=g) - 0.5)
    if palette == "mottled":  # drawn only for this palette, so the other palettes' pixels stay as they were
        cells = max(2, round(s / MOTTLE_PIXELS))
        up = _linear_upsample_matrix(cells, s)  # [H, cells]
        blotches = torch.rand(b, 3, cells, cells, generator=g) - 0.5  # [b, 3, cells, cells]
        image = image + MOTTLE_AMPLITUDE * (up @ blotches @ up.T)  # [b, 3, H, W]
    return image.clamp(0, 1), mask


def _draw_clutter(background: Tensor, fg: Tensor, strokes: int, xs: Tensor, ys: Tensor,
                  g: torch.Generator) -> Tensor:
    """Paint ``strokes`` short thin lines of the object's own colour onto each background [b, 3, H, W].

    Distractors that one 4x4 patch cannot tell from a piece of the object's outline: only the patches
    around it can (is the bright part a line ending in the background, or part of a larger shape?). The object
    is composited on top afterwards, so a stroke never covers it and the mask stays exact."""
    b, s = background.shape[0], background.shape[-1]  # xs [1, 1, W], ys [1, H, 1]: the pixel centres
    for _ in range(strokes):
        half = s * (0.0375 + 0.0375 * torch.rand(b, 1, 1, generator=g))  # half-length: 1.2-2.4 px at 32 px
        theta = math.pi * torch.rand(b, 1, 1, generator=g)
        cx, cy = s * torch.rand(b, 1, 1, generator=g), s * torch.rand(b, 1, 1, generator=g)
        ux, uy = theta.cos(), theta.sin()
        px, py = xs - cx, ys - cy  # [b, H, W]
        t = (px * ux + py * uy).clamp(min=-half, max=half)  # nearest point on the segment
        sdf = torch.sqrt((px - t * ux) ** 2 + (py - t * uy) ** 2) - 0.6  # a line about 1.2 px wide
        alpha = (0.5 - sdf).clamp(0, 1)[:, None]  # [b, 1, H, W]
        background = background + alpha * (fg[:, :, None, None] - background)
    return background


def _generate(n: int, image_size: int, seed: int, as_uint8: bool, overhang: float = DEFAULT_OVERHANG,
              classes: Optional[Sequence[str]] = None,
              clutter: int = 0, palette: str = "colour") -> Tuple[Tensor, Tensor, Tensor, Dict[str, Tensor]]:
    """Render n images chunk by chunk; returns images, labels, masks and the drawn parameters."""
    _check_int("n", n, 1)
    _check_int("image_size", image_size, 8)
    if _check_int("seed", seed, 0) >= 2 ** 63:  # torch.Generator.manual_seed's range
        raise ValueError(f"seed must be < 2**63, got {seed}")
    overhang, classes, clutter = _check_overhang(overhang), _check_classes(classes), _check_clutter(clutter)
    palette = _check_palette(palette)
    g = torch.Generator().manual_seed(seed)
    params = _shape_params(n, image_size, g, overhang, classes, palette)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8 if as_uint8 else torch.float32)
    masks = torch.empty(n, image_size, image_size, dtype=torch.bool)
    step = max(1, _CHUNK_PIXELS // (image_size * image_size))
    for start in range(0, n, step):
        chunk = {key: value[start : start + step] for key, value in params.items()}
        image, mask = _render_chunk(chunk, image_size, g, clutter, palette)
        if as_uint8:
            image = (image * 255).round().to(torch.uint8)
        images[start : start + step] = image
        masks[start : start + step] = mask
    return images, params["labels"].clone(), masks, params


def make_shapes(n: int, image_size: int = 32, seed: int = 0, overhang: float = DEFAULT_OVERHANG,
                classes: Optional[Sequence[str]] = None, clutter: int = 0,
                palette: str = "colour") -> Tuple[Tensor, Tensor, Tensor]:
    """Generate n shape images, deterministic from ``seed``.

    Returns images float32 [n, 3, H, W] in [0, 1], labels int64 [n] (index into ``classes``, by default
    SHAPE_CLASSES) and masks bool [n, H, W] (True on the object's *visible* pixels: a part cut off by the
    border is not in the mask). Classes are exactly balanced (n % len(classes) aside). ``overhang``: the
    fraction of an object's diameter that may lie outside the image (0 = always whole). ``clutter``: short
    strokes of the object's colour in the background of every image (distractors; 0 = none, the default).
    Labels and masks do not depend on ``clutter``: the object is drawn over the strokes. ``palette``:
    "colour" (random colours, the object lighter in every channel), "grey" (a light grey object on a dark
    grey background) or "mottled" (a faint grey object on grey under random blotches of colour, one per 4x4
    pixels, reaching as far as the object's contrast); labels, masks and geometry are the same for all three.
    """
    images, labels, masks, _ = _generate(n, image_size, seed, as_uint8=False, overhang=overhang, classes=classes,
                                         clutter=clutter, palette=palette)
    return images, labels, masks


def _normalize(x: Tensor) -> Tensor:
    mean = torch.tensor(MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def denormalize(x: Tensor) -> Tensor:
    """Undo Normalize(MEAN, STD): back to [0, 1] for display. Works on [3, H, W] and [B, 3, H, W]."""
    if not isinstance(x, Tensor):
        raise TypeError(f"denormalize expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"denormalize expects [3, H, W] or [B, 3, H, W], got {tuple(x.shape)}")
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)


class ShapesDataset(Dataset):
    """The shapes images as a Dataset: (image normalized with MEAN/STD, label) or (image, label, mask).

    Images are stored as uint8 [n, 3, H, W] (a quarter of the float memory), so an item equals
    ``make_shapes(...)`` to within 1/255 before normalization. ``transform`` is applied to the normalized
    image tensor; the mask is NOT transformed, so with ``return_mask=True`` use only transforms that do
    not move pixels (translation invariance comes from the generator itself: see ``overhang``).

    ``fresh_each_epoch=True``: ``set_epoch(e)`` redraws all n images from the seed ``seed + EPOCH_SEED_STRIDE * e``
    (epoch 0 is the dataset as built). Drawing is cheap (about 1 s for 20,000 images), and a model that never
    sees an image twice cannot memorize: the data is as large as the training run, like the paper's JFT.
    The images of epoch e depend only on (seed, e), so a resumed run sees the same ones.
    """

    def __init__(
        self,
        n: int = 10000,
        image_size: int = 32,
        seed: int = 0,
        transform: Optional[Callable[[Tensor], Tensor]] = None,
        return_mask: bool = False,
        overhang: float = DEFAULT_OVERHANG,
        classes: Optional[Sequence[str]] = None,
        fresh_each_epoch: bool = False,
        clutter: int = 0,
        palette: str = "colour",
    ) -> None:
        self.n, self.image_size, self.seed = n, image_size, seed
        self.overhang, self.classes = overhang, list(_check_classes(classes))
        self.clutter, self.palette = _check_clutter(clutter), _check_palette(palette)
        self.transform = transform
        self.return_mask = return_mask
        self.fresh_each_epoch = bool(fresh_each_epoch)
        self.epoch = 0
        self._draw(seed)

    def _draw(self, seed: int) -> None:
        images, labels, masks, _ = _generate(self.n, self.image_size, seed, as_uint8=True, overhang=self.overhang,
                                             classes=self.classes, clutter=self.clutter, palette=self.palette)
        self.images = images  # uint8 [n, 3, H, W]
        self.labels = labels  # int64 [n]
        self.masks = masks  # bool [n, H, W]

    def set_epoch(self, epoch: int) -> None:
        """With ``fresh_each_epoch``: redraw the images for this epoch (a no-op otherwise)."""
        _check_int("epoch", epoch, 0)
        if self.fresh_each_epoch and epoch != self.epoch:
            self._draw(self.seed + EPOCH_SEED_STRIDE * epoch)
        self.epoch = epoch

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int):
        image = _normalize(self.images[index].float() / 255)  # [3, H, W]
        if self.transform is not None:
            image = self.transform(image)
        label = int(self.labels[index])
        if self.return_mask:
            return image, label, self.masks[index]
        return image, label


# ----------------------------------------------------------------------------------------------------
# Real data through torchvision
# ----------------------------------------------------------------------------------------------------

_TORCHVISION = {"cifar10": "CIFAR10", "mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_MANUAL = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it so that "
    "{root}/cifar-10-batches-py/data_batch_1 exists",
    "mnist": "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/) and gunzip them "
    "into {root}/MNIST/raw/",
    "fashion_mnist": "the four *-ubyte.gz files from "
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ and gunzip them into {root}/FashionMNIST/raw/",
}
_FOLDER = {"cifar10": "cifar-10-batches-py", "mnist": os.path.join("MNIST", "raw"),
           "fashion_mnist": os.path.join("FashionMNIST", "raw")}


def _tv_transform(name: str, split: str, image_size: Optional[int], augment: bool):
    """Resize (optional) -> augmentation (train only) -> grey to RGB -> ToTensor -> Normalize(MEAN, STD)."""
    from torchvision import transforms as T

    steps: list = []
    if image_size is not None:
        steps.append(T.Resize((image_size, image_size)))
    if augment and split == "train":
        if name == "mnist" or name == "fashion_mnist":
            steps.append(T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
        else:  # cifar10, imagefolder
            size = image_size or 32
            # an image folder pads with the mid-grey its transparent parts get (0 after Normalize), as shapes
            # does, not black (-1, the darkest value a pixel can have); CIFAR-10 keeps its usual zero padding
            fill = TRANSPARENT_GROUND if name == "imagefolder" else 0
            steps += [T.RandomCrop(size, padding=size // 8, fill=fill), T.RandomHorizontalFlip()]
    if name in ("mnist", "fashion_mnist"):
        steps.append(T.Grayscale(num_output_channels=3))  # keep in_channels=3 for every dataset
    steps += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(steps)


def _torchvision_dataset(name: str, split: str, root: Path, image_size: Optional[int], augment: bool,
                         download: bool) -> Dataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION[name])
    transform = _tv_transform(name, split, image_size, augment)
    where = root / _FOLDER[name]
    manual = _MANUAL[name].format(root=root)
    try:
        return cls(str(root), train=(split == "train"), transform=transform, download=download)
    except (URLError, OSError, RuntimeError, ValueError, IndexError, EOFError) as err:
        present = where.is_dir() and any(where.iterdir())
        if isinstance(err, (ValueError, IndexError, EOFError)) or (present and not download):  # there, not readable
            raise ValueError(
                f"{name}: {where} holds files, but they are incomplete or damaged (torchvision said: "
                f"{type(err).__name__}: {err}); delete {where} and fetch it again: pass download=True (or --download "
                f"on the command line), or download {manual}"
            ) from err
        if not download:
            raise FileNotFoundError(
                f"{name} not found: looked in {where}. Pass download=True (or --download on the command line) "
                f"to fetch it, or download {manual}. (torchvision said: {err})"
            ) from err
        raise ConnectionError(  # an OSError: the command line prints it as one line
            f"Downloading {name} to {root} failed: {type(err).__name__}: {err}. If this machine is offline, "
            f"download {manual}, then call again with download=False."
        ) from err


def get_dataset(
    name: str = "shapes",
    split: str = "train",
    root: Union[str, Path] = "data",
    image_size: Optional[int] = None,
    augment: bool = False,
    download: bool = False,
    n: Optional[int] = None,
    seed: Optional[int] = None,
    fresh_each_epoch: bool = False,
    classes: Optional[Sequence[str]] = None,
    clutter: int = 0,
    palette: str = "colour",
) -> Dataset:
    """One split of a dataset, normalized with MEAN/STD, 3 channels; ``.classes`` lists the class names.

    shapes: n defaults to 20,000 (train) / 2,000 (test); seed to 0 (train) / 1 (test), a given seed is
    used as is. image_size defaults to 32 (shapes, imagefolder), native size otherwise (32 CIFAR, 28 MNIST).
    For real datasets n keeps a fixed random subset of n examples, mixed over the classes (a Subset that still
    has ``.classes``; see ``SUBSET_SEED``), and seed is refused: it would change nothing. They are looked up under
    ``root`` and never downloaded unless download=True.
    ``fresh_each_epoch`` (shapes only): new images every epoch, see ``ShapesDataset``.
    ``classes`` (shapes only): a subset of SHAPE_CLASSES to draw, e.g. a smaller task for a quick run.
    ``clutter`` (shapes only): distractor strokes per image, see ``make_shapes``.
    ``palette`` (shapes only): "colour", "grey" or "mottled", see ``make_shapes``.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if image_size is not None:
        _check_int("image_size", image_size, 8)
    root = Path(root)
    if name == "shapes":
        transform = None
        size = image_size or 32
        if augment and split == "train":
            from torchvision import transforms as T

            # A shape stays its class when flipped or shifted; the padding is grey (0 after normalization).
            transform = T.Compose([T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()])
        return ShapesDataset(
            n=SHAPES_DEFAULT_SIZES[split] if n is None else n,
            image_size=size,
            seed=SHAPES_DEFAULT_SEEDS[split] if seed is None else seed,
            transform=transform,
            fresh_each_epoch=fresh_each_epoch,
            classes=classes,
            clutter=clutter,
            palette=palette,
        )
    if fresh_each_epoch:
        raise ValueError(f"fresh_each_epoch needs generated data (shapes); {name} is a fixed dataset")
    if classes is not None:
        raise ValueError(f"classes= picks shapes to draw (shapes only); {name} has its own classes")
    if clutter:
        raise ValueError(f"clutter= draws distractors into generated images (shapes only); {name} is a fixed dataset")
    if palette != "colour":
        raise ValueError(f"palette= colours generated images (shapes only); {name} is a fixed dataset")
    if seed is not None:
        raise ValueError(f"seed= draws generated images (shapes only); {name} is a fixed dataset (and its n-example "
                         f"subset a fixed one)")
    if name == "imagefolder":
        ds = imagefolder_dataset(split, root, _tv_transform("imagefolder", split, image_size or 32, augment))
    else:
        ds = _torchvision_dataset(name, split, root, image_size, augment, download)
    if n is None:
        return ds
    _check_int("n", n, 1)
    if n > len(ds):
        raise ValueError(f"n={n} but {name} {split} has only {len(ds)} examples; expected n <= {len(ds)} "
                         f"({'--n-train' if split == 'train' else '--n-test'}, or evaluate's --n)")
    return _fixed_subset(ds, n, f"{name} {split}")


def _fixed_subset(ds: Dataset, n: int, what: str) -> Subset:
    """n examples drawn at random with SUBSET_SEED, in file order, keeping ``.classes``: the first n files of an
    ImageFolder are its first class only. Refused when they hold one class (every prediction right: "100 %")."""
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(SUBSET_SEED))
    indices = sorted(order[:n].tolist())
    targets = getattr(ds, "targets", None)  # ImageFolder, CIFAR10, MNIST: the labels without decoding images
    labels = {int(targets[i]) if targets is not None else int(ds[i][1]) for i in indices}
    if len(labels) < 2:
        names = [ds.classes[k] for k in sorted(labels)]
        raise ValueError(f"{what}: the subset of n={n} examples holds only class {names}; expected at least two "
                         f"classes, so raise n (--n-train, --n-test or evaluate's --n)")
    subset = Subset(ds, indices)
    subset.classes = list(ds.classes)
    return subset


def dataset_info(ds: Dataset) -> dict:
    """{"classes", "image_size": (H, W), "in_channels", "num_examples"}: what a model config needs."""
    base = ds
    while not hasattr(base, "classes") and hasattr(base, "dataset"):  # e.g. torch.utils.data.Subset
        base = base.dataset
    if not hasattr(base, "classes"):
        raise TypeError(f"dataset_info needs a dataset with a .classes attribute, got {type(ds).__name__}")
    image = ds[0][0]
    if not isinstance(image, Tensor) or image.ndim != 3:
        raise TypeError(f"dataset_info expects items whose first element is a [C, H, W] tensor, got {type(image)}")
    return {
        "classes": list(base.classes),
        "image_size": (int(image.shape[1]), int(image.shape[2])),
        "in_channels": int(image.shape[0]),
        "num_examples": len(ds),
    }
