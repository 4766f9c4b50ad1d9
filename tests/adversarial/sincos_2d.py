"""Adversarial set for check_sincos_2d (notebook 02): other correct styles and usual mistakes."""

import math

import numpy as np
import torch
from einops import rearrange, repeat

CHECK = "sincos_2d"


def _need4(dim):
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")


# ------------------------------------------------------------------------------------------------- correct
def correct_loops_math(grid_h, grid_w, dim):
    _need4(dim)
    k = dim // 4
    rows = []
    for r in range(grid_h):
        for c in range(grid_w):
            w = [10000 ** (-i / k) for i in range(k)]
            rows.append([math.sin(c * x) for x in w] + [math.cos(c * x) for x in w]
                        + [math.sin(r * x) for x in w] + [math.cos(r * x) for x in w])
    return torch.tensor(rows, dtype=torch.float32).reshape(grid_h * grid_w, dim)


def correct_einops_float32(grid_h, grid_w, dim):
    if dim % 4 != 0:
        raise ValueError("dim % 4 != 0")
    k = dim // 4
    omega = torch.exp(-math.log(10000.0) * torch.arange(k, dtype=torch.float32) / k)  # [K]
    r = repeat(torch.arange(grid_h, dtype=torch.float32), "h -> (h w)", w=grid_w)
    c = repeat(torch.arange(grid_w, dtype=torch.float32), "w -> (h w)", h=grid_h)
    rw, cw = torch.outer(r, omega), torch.outer(c, omega)  # [N, K]
    return torch.cat([cw.sin(), cw.cos(), rw.sin(), rw.cos()], dim=-1)


def correct_numpy(grid_h, grid_w, dim):
    _need4(dim)
    k = dim // 4
    omega = 1.0 / np.power(10000.0, np.arange(k) / k)
    rr, cc = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    c = np.einsum("n,k->nk", cc.reshape(-1).astype(np.float64), omega)
    r = np.einsum("n,k->nk", rr.reshape(-1).astype(np.float64), omega)
    table = np.concatenate([np.sin(c), np.cos(c), np.sin(r), np.cos(r)], axis=1)
    return torch.from_numpy(table.astype(np.float32))


def correct_grid_then_flatten(grid_h, grid_w, dim):
    # the table as an image [H, W, D] first, then flattened row-major
    _need4(dim)
    k = dim // 4
    omega = 10000.0 ** (-torch.arange(k, dtype=torch.float64) / k)
    ys = torch.arange(grid_h, dtype=torch.float64)[:, None, None] * omega  # [H, 1, K]
    xs = torch.arange(grid_w, dtype=torch.float64)[None, :, None] * omega  # [1, W, K]
    shape = (grid_h, grid_w, k)
    img = torch.cat([xs.sin().expand(shape), xs.cos().expand(shape), ys.sin().expand(shape), ys.cos().expand(shape)],
                    dim=-1)
    return rearrange(img, "h w d -> (h w) d").to(torch.float32)


def correct_complex_exponential(grid_h, grid_w, dim):
    # exp(i x w) = cos(x w) + i sin(x w)
    _need4(dim)
    k = dim // 4
    omega = torch.pow(10000.0, -torch.linspace(0, 1, k + 1, dtype=torch.float64)[:-1])
    pos = torch.cartesian_prod(torch.arange(grid_h), torch.arange(grid_w)).double()  # [N, 2] rows (r, c), row-major
    zc = torch.polar(torch.ones(grid_h * grid_w, k, dtype=torch.float64), pos[:, 1:] * omega)
    zr = torch.polar(torch.ones(grid_h * grid_w, k, dtype=torch.float64), pos[:, :1] * omega)
    return torch.cat([zc.imag, zc.real, zr.imag, zr.real], dim=1).float()


CORRECT = [correct_loops_math, correct_einops_float32, correct_numpy, correct_grid_then_flatten,
           correct_complex_exponential]


# ------------------------------------------------------------------------------------------------ mistakes
def _table(grid_h, grid_w, dim, order="ij", denom=None, sign=-1, start=0, blocks="cCrR", temp=10000.0,
           scale_pos=False, dtype=torch.float32):
    k = dim // 4
    d = k if denom is None else denom(k)
    omega = temp ** (sign * torch.arange(k, dtype=torch.float64) / d)
    if order == "ij":
        r, c = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    else:  # column-major positions
        c, r = torch.meshgrid(torch.arange(grid_w), torch.arange(grid_h), indexing="ij")
    r, c = r.reshape(-1).double() + start, c.reshape(-1).double() + start
    if scale_pos:
        r, c = r / grid_h, c / grid_w
    r, c = r[:, None] * omega, c[:, None] * omega
    parts = {"c": c.sin(), "C": c.cos(), "r": r.sin(), "R": r.cos()}
    return torch.cat([parts[b] for b in blocks], dim=1).to(dtype)


def rows_first(grid_h, grid_w, dim):
    _need4(dim)
    return _table(grid_h, grid_w, dim, blocks="rRcC")


def column_major(grid_h, grid_w, dim):
    _need4(dim)
    return _table(grid_h, grid_w, dim, order="ji")


def big_vision_frequencies(grid_h, grid_w, dim):
    _need4(dim)
    return _table(grid_h, grid_w, dim, denom=lambda k: k - 1)


def growing_frequencies(grid_h, grid_w, dim):
    _need4(dim)
    return _table(grid_h, grid_w, dim, sign=+1)


def timm_block_order(grid_h, grid_w, dim):
    _need4(dim)
    return _table(grid_h, grid_w, dim, blocks="rcRC")


def one_based_positions(grid_h, grid_w, dim):
    _need4(dim)
    return _table(grid_h, grid_w, dim, start=1)


def normalised_positions(grid_h, grid_w, dim):
    _need4(dim)
    return _table(grid_h, grid_w, dim, scale_pos=True)


def interleaved_sin_cos(grid_h, grid_w, dim):
    _need4(dim)
    t = _table(grid_h, grid_w, dim)
    k = dim // 4
    c = torch.stack([t[:, :k], t[:, k:2 * k]], dim=-1).flatten(1)  # sin0 cos0 sin1 cos1 ...
    r = torch.stack([t[:, 2 * k:3 * k], t[:, 3 * k:]], dim=-1).flatten(1)
    return torch.cat([c, r], dim=1)


def float64_table(grid_h, grid_w, dim):
    _need4(dim)
    return _table(grid_h, grid_w, dim, dtype=torch.float64)


def batch_dimension(grid_h, grid_w, dim):
    _need4(dim)
    return _table(grid_h, grid_w, dim)[None]


def no_value_error(grid_h, grid_w, dim):
    k = max(dim // 4, 1)
    return _table(grid_h, grid_w, 4 * k)[:, :dim] if dim >= 4 else torch.zeros(grid_h * grid_w, dim)


def value_error_only_for_an_odd_half(grid_h, grid_w, dim):
    if (dim // 2) % 2:  # 10 and 6 raise, 9 does not: it returns a table of 8 features
        raise ValueError(f"dim // 2 must be even, got dim={dim}")
    return _table(grid_h, grid_w, dim // 4 * 4)


def temperature_1000(grid_h, grid_w, dim):
    _need4(dim)
    return _table(grid_h, grid_w, dim, temp=1000.0)


def transformer_1d_frequencies(grid_h, grid_w, dim):
    # the 1-D Transformer's 10000^(-2i/d) with d = dim: half the frequency spread of the contract
    _need4(dim)
    return _table(grid_h, grid_w, dim, denom=lambda k: 2 * k)


MISTAKES = [
    (transformer_1d_frequencies, "K = dim/4"),
    (rows_first, "row"),
    (column_major, "row-major"),
    (big_vision_frequencies, "K - 1"),
    (growing_frequencies, "frequenc"),
    (timm_block_order, "order"),
    (one_based_positions, "start at 0"),
    (normalised_positions, "integer"),
    (interleaved_sin_cos, "interleave"),
    (float64_table, "float32"),
    (batch_dimension, "shape"),
    (no_value_error, "ValueError"),
    (value_error_only_for_an_odd_half, "ValueError"),
    (temperature_1000, "10000"),
]



# ------------------------------------------------------------------------------ found by an outside test
def sincos_divmod_by_grid_h(grid_h, grid_w, dim):
    # MISLEADING MESSAGE: the only bug is `divmod(index, grid_h)` instead of `divmod(index, grid_w)`; the block
    # order [sin c, cos c, sin r, cos r] is right. The check says "numbered column by column AND the row's
    # features come first", so a student who follows it also reorders the (correct) blocks.
    if dim % 4:
        raise ValueError(f"dim={dim} is not divisible by 4")
    k = dim // 4
    omega = 10000 ** (-torch.arange(k, dtype=torch.float64) / k)
    idx = torch.arange(grid_h * grid_w)
    r = (idx // grid_h).double()[:, None] * omega  # should be // grid_w
    c = (idx % grid_h).double()[:, None] * omega   # should be % grid_w
    return torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], 1).float()


MISTAKES += [(sincos_divmod_by_grid_h, "// grid_w")]  # a message naming the divisor (index // grid_w, index % grid_w) would help


_TABLES = {}


def sincos_kept_by_grid(grid_h, grid_w, dim):
    # state kept between calls: a table cached by the grid alone, so a later call on that grid with another dim
    # gets the first call's table (caught by a case repeating the first grid with another dim)
    if dim % 4:
        raise ValueError(f"dim={dim} is not divisible by 4")
    if (grid_h, grid_w) not in _TABLES:
        k = dim // 4
        omega = 10000 ** (-torch.arange(k, dtype=torch.float64) / k)
        r, c = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
        r, c = r.reshape(-1, 1) * omega, c.reshape(-1, 1) * omega
        _TABLES[(grid_h, grid_w)] = torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], 1).float()
    return _TABLES[(grid_h, grid_w)]


def correct_meshgrid_xy(grid_h, grid_w, dim):
    # indexing="xy" with the columns first gives the same [grid_h, grid_w] grids as "ij" with the rows first
    if dim % 4:
        raise ValueError(f"dim={dim} is not divisible by 4")
    k = dim // 4
    omega = torch.exp(-math.log(10000.0) * torch.arange(k, dtype=torch.float32) / k)
    c, r = torch.meshgrid(torch.arange(grid_w), torch.arange(grid_h), indexing="xy")
    c, r = c.reshape(-1, 1).float() * omega, r.reshape(-1, 1).float() * omega
    return torch.cat([torch.sin(c), torch.cos(c), torch.sin(r), torch.cos(r)], 1)


CORRECT.append(correct_meshgrid_xy)
MISTAKES.append((sincos_kept_by_grid, "kept from one call to the next"))
