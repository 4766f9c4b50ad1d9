"""Position embeddings: the learned 1-D table of the paper, the fixed 2-D sin-cos alternative, and resizing.

Without a position embedding self-attention is permutation-equivariant: shuffle the patches and the
outputs come out shuffled the same way. E_pos (paper eq. 1) tells each token where it came from.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange


def sincos_2d_pos_embed(dim: int, grid_size: Tuple[int, int], temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding [H*W, dim]: a quarter of the features each for sin(x), cos(x), sin(y), cos(y).

    Row-major over the grid, like the patches. Frequencies 1/T^(k/K) as in MoCo v3 and timm (big_vision
    divides by K-1 instead, a small difference that matters only when loading its sin-cos models).
    """
    if dim % 4 != 0 or dim < 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim divisible by 4, got {dim}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) \
            or temperature <= 0:  # 1 / T^(k/K): T <= 0 gives NaN or infinite frequencies
        raise ValueError(f"temperature must be a finite number > 0 (e.g. 10000.0), got {temperature!r}")
    gh, gw = _grid(grid_size, "grid_size")
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    y = y.flatten()[:, None] * omega[None, :]  # [N, dim/4]
    x = x.flatten()[:, None] * omega[None, :]
    pe = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)  # [N, dim]
    return pe.float()


def _grid(value, name: str) -> Tuple[int, int]:
    """(rows, columns) of a patch grid: whole numbers of at least 1 (ints, NumPy or 0-d tensor integers)."""
    try:
        pair = tuple(operator.index(v) for v in value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(isinstance(v, bool) for v in value) or min(pair) < 1:
        raise ValueError(f"{name} must be a pair of positive ints (rows, columns) of patches, got {value!r}")
    return pair


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: Tuple[int, int],
    old_grid: Optional[Tuple[int, int]] = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Interpolate a position embedding [1, prefix + h*w, D] to a new grid [1, prefix + H*W, D].

    The class-token position (the first ``num_prefix_tokens`` rows) is kept as is; the patch positions
    are treated as a D-channel image of size h x w and resized (paper section 3.2, "fine-tuning and
    higher resolution"). ``old_grid=None`` takes the old grid to be square: pass it for any other, since a
    table's length cannot tell 2 x 8 from 4 x 4.
    """
    if not isinstance(pos_embed, torch.Tensor):
        raise TypeError(f"pos_embed must be a torch.Tensor [1, tokens, D], got {type(pos_embed).__name__}")
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape [1, tokens, D], got {tuple(pos_embed.shape)}")
    if not pos_embed.is_floating_point():  # interpolated values would be cast back and truncated to integers
        raise TypeError(f"pos_embed must be a floating-point tensor (a table of learned weights), got dtype "
                        f"{pos_embed.dtype}; convert it with pos_embed.float()")
    if not isinstance(antialias, bool):  # a string such as "no" is truthy: it would switch antialiasing on
        raise TypeError(f"antialias must be True or False, got {type(antialias).__name__} {antialias!r}")
    if mode not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"mode must be 'bilinear', 'bicubic' or 'nearest', got {mode!r}")
    tokens = pos_embed.shape[1]
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) \
            or not 0 <= num_prefix_tokens < tokens:
        raise ValueError(f"num_prefix_tokens must be an int from 0 to {tokens - 1} (pos_embed has {tokens} rows; "
                         f"1 for a class token), got {num_prefix_tokens!r}")
    new_grid = _grid(new_grid, "new_grid")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    hint = " (a model without a class token? pass num_prefix_tokens=0)" if num_prefix_tokens else ""
    if old_grid is None:
        side = int(math.isqrt(n))
        if side * side != n:
            square = math.isqrt(tokens) ** 2 == tokens
            raise ValueError(f"cannot infer a square grid from {n} patch positions; pass old_grid=(h, w)"
                             f"{hint if square else ''}")
        old_grid = (side, side)
    old_grid = _grid(old_grid, "old_grid")
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"old_grid {tuple(old_grid)} has {old_grid[0] * old_grid[1]} positions but pos_embed has {n}"
                         f"{hint if old_grid[0] * old_grid[1] == tokens else ''}")
    if tuple(old_grid) == new_grid:
        return pos_embed
    dtype = pos_embed.dtype
    img = rearrange(grid, "1 (h w) d -> 1 d h w", h=old_grid[0], w=old_grid[1]).float()
    kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": antialias}
    img = F.interpolate(img, size=new_grid, mode=mode, **kwargs)
    grid = rearrange(img, "1 d h w -> 1 (h w) d").to(dtype)
    return torch.cat([prefix, grid], dim=1)
