"""Adversarial set for check_mean_attention_distance (notebook 07): other correct styles and usual mistakes."""

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce

CHECK = "mean_attention_distance"


def _centres(gh, gw, p, dtype, device):
    rows, cols = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1).to(dtype) * p + p / 2  # [N, 2] pixels


# ------------------------------------------------------------------------------------------------- correct
def correct_cdist(attn, grid_size, patch_size):
    gh, gw = grid_size
    c = _centres(gh, gw, patch_size, attn.dtype, attn.device)
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(dim=-1, keepdim=True)
    return (a * torch.cdist(c, c)).sum(-1).mean(dim=(0, 2))


def correct_einsum_corner_origin(attn, grid_size, patch_size):
    # patch corners instead of centres: the same distances (a shift does not change a difference)
    gh, gw = grid_size
    ys = torch.arange(gh, dtype=attn.dtype, device=attn.device).repeat_interleave(gw) * patch_size
    xs = torch.arange(gw, dtype=attn.dtype, device=attn.device).repeat(gh) * patch_size
    dist = ((ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2).sqrt()
    patches = attn[..., 1:, 1:]
    weights = patches / reduce(patches, "b h q k -> b h q 1", "sum")
    per_query = torch.einsum("bhqk,qk->bhq", weights, dist)
    return reduce(per_query, "b h q -> h", "mean")


def correct_loops(attn, grid_size, patch_size):
    gh, gw = grid_size
    n = gh * gw
    rows = []
    for i in range(n):
        ri, ci = divmod(i, gw)
        row = []
        for j in range(n):
            rj, cj = divmod(j, gw)
            row.append(math.hypot((ri - rj) * patch_size, (ci - cj) * patch_size))
        rows.append(row)
    dist = torch.tensor(rows, dtype=attn.dtype, device=attn.device)
    heads = []
    for h in range(attn.shape[1]):
        a = attn[:, h, 1:, 1:]
        total = a.sum(-1, keepdim=True)
        heads.append(((a / total) @ dist.T).diagonal(dim1=-2, dim2=-1).mean())
    return torch.stack(heads)


def correct_numpy_table_hypot(attn, grid_size, patch_size):
    # distance table built in numpy (it does not depend on attn), everything touching attn in torch
    gh, gw = grid_size
    r, c = np.divmod(np.arange(gh * gw), gw)
    table = np.hypot(r[:, None] - r[None, :], c[:, None] - c[None, :]) * patch_size
    dist = torch.as_tensor(table, dtype=attn.dtype, device=attn.device)
    a = attn.narrow(-1, 1, gh * gw).narrow(-2, 1, gh * gw)
    a = a / a.sum(-1, keepdim=True)
    b, h = attn.shape[:2]
    return (a * dist).sum((0, 2, 3)) / (b * gh * gw)


def correct_grid_broadcast(attn, grid_size, patch_size):
    # the attention reshaped onto the key grid, distances broadcast per query position
    gh, gw = grid_size
    a = rearrange(attn[:, :, 1:, 1:], "b h q (kr kc) -> b h q kr kc", kr=gh)
    a = a / a.sum(dim=(-2, -1), keepdim=True)
    yy = torch.arange(gh, dtype=attn.dtype, device=attn.device)
    xx = torch.arange(gw, dtype=attn.dtype, device=attn.device)
    qy, qx = yy.repeat_interleave(gw), xx.repeat(gh)  # [N] query coordinates in patches
    dy = qy[:, None, None] - yy[None, :, None]
    dx = qx[:, None, None] - xx[None, None, :]
    d = torch.sqrt(dy ** 2 + dx ** 2) * patch_size  # [N, gh, gw]
    return (a * d).sum(dim=(-2, -1)).mean(dim=-1).mean(dim=0)


def correct_one_minus_class_share(attn, grid_size, patch_size):
    # every row sums to 1, so its patches hold 1 - the class token's share (a different gradient off the rows)
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:] / (1 - attn[:, :, 1:, :1])
    return (a * _dist(gh, gw, patch_size, attn)).sum(-1).mean(dim=(0, 2))


CORRECT = [correct_cdist, correct_einsum_corner_origin, correct_loops, correct_numpy_table_hypot,
           correct_grid_broadcast, correct_one_minus_class_share]


# ------------------------------------------------------------------------------------------------ mistakes
def _dist(gh, gw, p, attn, kind="euclid"):
    c = _centres(gh, gw, p, attn.dtype, attn.device)
    diff = c[:, None, :] - c[None, :, :]
    if kind == "manhattan":
        return diff.abs().sum(-1)
    if kind == "squared":
        return (diff ** 2).sum(-1)
    if kind == "chebyshev":
        return diff.abs().amax(-1)
    return (diff ** 2).sum(-1).sqrt()


def mistake_no_renormalise(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:]
    return (a * _dist(gh, gw, patch_size, attn)).sum(-1).mean(dim=(0, 2))


def mistake_cls_query_kept(attn, grid_size, patch_size):
    # keys restricted to the patches but the class token's row is averaged in as a query at grid position 0
    gh, gw = grid_size
    d = _dist(gh, gw, patch_size, attn)
    d = torch.cat([d[:1], d], dim=0)  # the class token placed on patch 0
    a = attn[:, :, :, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * d).sum(-1).mean(dim=(0, 2))


def mistake_cls_key_at_zero(attn, grid_size, patch_size):
    # the class token kept as a key at distance 0, the class-token query dropped
    gh, gw = grid_size
    d = _dist(gh, gw, patch_size, attn)
    d = F.pad(d, (1, 0))  # distance 0 to the class token
    a = attn[:, :, 1:, :]
    return (a * d).sum(-1).mean(dim=(0, 2))


def mistake_manhattan(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * _dist(gh, gw, patch_size, attn, "manhattan")).sum(-1).mean(dim=(0, 2))


def mistake_squared(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * _dist(gh, gw, patch_size, attn, "squared")).sum(-1).mean(dim=(0, 2))


def mistake_in_patches(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * _dist(gh, gw, 1, attn)).sum(-1).mean(dim=(0, 2))


def mistake_mean_over_heads(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * _dist(gh, gw, patch_size, attn)).sum(-1).mean()


def mistake_per_image(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * _dist(gh, gw, patch_size, attn)).sum(-1).mean(dim=2)  # [B, heads]


def mistake_column_major(attn, grid_size, patch_size):
    # patch k placed at (k % gh, k // gh): the grid read column by column
    gh, gw = grid_size
    k = torch.arange(gh * gw, device=attn.device)
    c = torch.stack([k % gh, k // gh], 1).to(attn.dtype) * patch_size
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * torch.cdist(c, c)).sum(-1).mean(dim=(0, 2))


def mistake_grid_size_swapped(attn, grid_size, patch_size):
    gw, gh = grid_size  # grid_size is (gh, gw); the patches are still numbered row by row
    r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = torch.stack([r.flatten(), c.flatten()], -1).to(attn.dtype) * patch_size
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * torch.cdist(centres, centres)).sum(-1).mean(dim=(0, 2))


def mistake_renormalise_columns(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-2, keepdim=True)
    return (a * _dist(gh, gw, patch_size, attn)).sum(-1).mean(dim=(0, 2))


def mistake_sum_over_queries(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * _dist(gh, gw, patch_size, attn)).sum(-1).sum(2).mean(0)


def mistake_in_place(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:]
    a /= a.sum(-1, keepdim=True)  # a view: this edits the caller's attention
    return (a * _dist(gh, gw, patch_size, attn)).sum(-1).mean(dim=(0, 2))


def mistake_detached(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn.detach()[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * _dist(gh, gw, patch_size, attn)).sum(-1).mean(dim=(0, 2))


def mistake_float64(attn, grid_size, patch_size):
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:].double()
    a = a / a.sum(-1, keepdim=True)
    c = _centres(gh, gw, patch_size, torch.float64, attn.device)
    return (a * torch.cdist(c, c)).sum(-1).mean(dim=(0, 2))


def mistake_last_token_dropped(attn, grid_size, patch_size):
    # the class token is token 0, not the last one
    gh, gw = grid_size
    a = attn[:, :, :-1, :-1]
    a = a / a.sum(-1, keepdim=True)
    return (a * _dist(gh, gw, patch_size, attn)).sum(-1).mean(dim=(0, 2))


def mistake_transposed(attn, grid_size, patch_size):
    # rows are queries: weighting with the columns (keys as queries) is another quantity
    gh, gw = grid_size
    a = attn[:, :, 1:, 1:].transpose(-2, -1)
    a = a / a.sum(-1, keepdim=True)
    return (a * _dist(gh, gw, patch_size, attn)).sum(-1).mean(dim=(0, 2))


def mistake_sequence_distance(attn, grid_size, patch_size):
    # |i - j| along the token order, as if the patches sat in one line
    i = torch.arange(grid_size[0] * grid_size[1], dtype=attn.dtype, device=attn.device)
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * (i[:, None] - i[None, :]).abs() * patch_size).sum(-1).mean(dim=(0, 2))


MISTAKES = [
    (mistake_sequence_distance, "token sequence"),
    (mistake_no_renormalise, "renormalis"),
    (mistake_cls_query_kept, "class token"),
    (mistake_cls_key_at_zero, "class token"),
    (mistake_manhattan, "manhattan"),
    (mistake_squared, "square"),
    (mistake_in_patches, "pixels"),
    (mistake_mean_over_heads, "head"),
    (mistake_per_image, "images"),
    (mistake_column_major, "row"),
    (mistake_grid_size_swapped, "(gw, gh)"),
    (mistake_renormalise_columns, "rows"),
    (mistake_sum_over_queries, "mean over"),
    (mistake_in_place, "in place"),
    (mistake_detached, "gradient"),
    (mistake_float64, "dtype"),
    (mistake_last_token_dropped, "class token"),
    (mistake_transposed, "transpos"),
]


def correct_float64_inside(attn, grid_size, patch_size):
    gh, gw = grid_size
    r, c = torch.meshgrid(torch.arange(gh, device=attn.device), torch.arange(gw, device=attn.device), indexing="ij")
    centres = torch.stack([r.flatten(), c.flatten()], -1).double() * patch_size
    a = attn[:, :, 1:, 1:].double()
    a = a / a.sum(-1, keepdim=True)
    return (a * torch.cdist(centres, centres)).sum(-1).mean(dim=(0, 2)).to(attn.dtype)


def mistake_float32_inside(attn, grid_size, patch_size):
    return correct_float64_inside(attn.float(), grid_size, patch_size)  # float64 maps come back as float32


_TABLES = {}


def mistake_table_kept_by_grid(attn, grid_size, patch_size):
    # a distance table cached by grid_size alone: a later call with another patch_size reuses the old one
    gh, gw = grid_size
    if tuple(grid_size) not in _TABLES:
        r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        centres = torch.stack([r.flatten(), c.flatten()], -1).double() * patch_size
        _TABLES[tuple(grid_size)] = torch.cdist(centres, centres)
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * _TABLES[tuple(grid_size)].to(attn.dtype)).sum(-1).mean(dim=(0, 2))


CORRECT.append(correct_float64_inside)
MISTAKES += [(mistake_float32_inside, "dtype"), (mistake_table_kept_by_grid, "earlier call")]


def correct_python_loops(attn, grid_size, patch_size):
    gh, gw = grid_size
    n = gh * gw
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    total = attn.new_zeros(attn.shape[1])
    for i in range(n):
        for j in range(n):
            total = total + a[:, :, i, j].sum(0) * patch_size * math.hypot(i // gw - j // gw, i % gw - j % gw)
    return total / (attn.shape[0] * n)


CORRECT.append(correct_python_loops)


_TABLE_BY_TOKENS = {}


def table_cached_by_token_count(attn, grid_size, patch_size):  # a 3 x 4 grid's table reused for 2 x 6
    gh, gw = grid_size
    key = (attn.shape[-1], patch_size)
    if key not in _TABLE_BY_TOKENS:
        i = torch.arange(gh * gw)
        c = torch.stack([i // gw, i % gw], -1).double() * patch_size
        _TABLE_BY_TOKENS[key] = torch.cdist(c, c)
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * _TABLE_BY_TOKENS[key].to(attn.dtype)).sum(-1).mean((0, 2))


MISTAKES.append((table_cached_by_token_count, "not by the number of tokens"))



# ------------------------------------------------------------------------------ found by an outside test
def mad_cpu_table(attn, grid_size, patch_size):
    # FALSE ACCEPT: the distance table is built on the CPU (no device=); the contract and Hint 2 ask for "the
    # input's dtype and device": CUDA attention maps raise. The check only has CPU cases.
    gh, gw = grid_size
    r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    cen = (torch.stack([r.flatten(), c.flatten()], 1).to(attn.dtype) + 0.5) * patch_size
    d = (cen[:, None] - cen[None]).norm(dim=-1)
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * d).sum(-1).mean((0, 2))


MISTAKES += [(mad_cpu_table, "device"), ]


# ---------------------------------------------- right on a GPU, refused once on the meta stand-in; caches kept
def _grid_table(grid_size, patch_size, dtype, device):
    gh, gw = grid_size
    i = torch.arange(gh * gw, device=device)
    pts = (torch.stack([i // gw, i % gw], dim=1).to(dtype) + 0.5) * patch_size
    return (pts[:, None] - pts[None]).norm(dim=-1)


def bool_mask_drops_the_class_token(attn, grid_size, patch_size):  # boolean indexing: no meta kernel (nonzero)
    keep = torch.ones(attn.shape[-1], dtype=torch.bool, device=attn.device)
    keep[0] = False
    a = attn[:, :, keep][:, :, :, keep]
    a = a / a.sum(-1, keepdim=True)
    return (a * _grid_table(grid_size, patch_size, attn.dtype, attn.device)).sum(-1).mean((0, 2))


def masked_select_drops_the_class_token(attn, grid_size, patch_size):  # "... with Meta tensors" (capital M)
    B, H, T, _ = attn.shape
    mask = torch.ones(T, T, dtype=torch.bool, device=attn.device)
    mask[0, :] = False
    mask[:, 0] = False
    a = attn.masked_select(mask).view(B, H, T - 1, T - 1)
    a = a / a.sum(-1, keepdim=True)
    return (a * _grid_table(grid_size, patch_size, attn.dtype, attn.device)).sum(-1).mean((0, 2))


def distinct_distances_once(attn, grid_size, patch_size):  # torch.unique: no meta kernel
    d2 = _grid_table(grid_size, 1, attn.dtype, attn.device) ** 2
    vals, inv = torch.unique(d2, return_inverse=True)
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * (vals.sqrt() * patch_size)[inv]).sum(-1).mean((0, 2))


def leftover_debug_print(attn, grid_size, patch_size):  # f"{t:.2f}" of a 0-d meta tensor: TypeError
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    out = (a * _grid_table(grid_size, patch_size, attn.dtype, attn.device)).sum(-1).mean((0, 2))
    print(f"mean distance over heads: {out.mean():.2f} px")
    return out


CORRECT += [bool_mask_drops_the_class_token, masked_select_drops_the_class_token, distinct_distances_once,
            leftover_debug_print]


@functools.lru_cache(maxsize=None)
def lru_cached(attn, grid_size, patch_size):  # keyed by the tensor: stale after an in-place update
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    return (a * _grid_table(grid_size, patch_size, attn.dtype, attn.device)).sum(-1).mean((0, 2))


_WHOLE_ANSWER = {}


def whole_answer_kept_by_shapes(attn, grid_size, patch_size):  # the batch reversed alone gave the same mean
    key = (tuple(attn.shape), tuple(grid_size), patch_size, attn.dtype, str(attn.device))
    if key not in _WHOLE_ANSWER:
        a = attn[:, :, 1:, 1:]
        a = a / a.sum(-1, keepdim=True)
        _WHOLE_ANSWER[key] = (a * _grid_table(grid_size, patch_size, attn.dtype, attn.device)).sum(-1).mean((0, 2))
    return _WHOLE_ANSWER[key]


MISTAKES += [(lru_cached, "kept from an earlier call"), (whole_answer_kept_by_shapes, "kept from an earlier call")]


# ------------------------------------------------- one value per head, written into a buffer made on the CPU
def per_head_into_cpu_buffer(attn, grid_size, patch_size):
    # FALSE ACCEPT (was): torch.zeros(H, dtype=...) without device=; out[h] = ... copies the device's values into
    # it, so on a GPU the distances come back on the CPU. On the meta stand-in that copy raised "Cannot copy out of
    # meta tensor", which was taken for code that merely reads values
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True)
    d = _grid_table(grid_size, patch_size, attn.dtype, attn.device)
    out = torch.zeros(attn.shape[1], dtype=attn.dtype)
    for h in range(attn.shape[1]):
        out[h] = (a[:, h] * d).sum(-1).mean()
    return out


def per_head_cpu_buffer_moved_back(attn, grid_size, patch_size):  # right on a GPU: moved to the input's device
    return per_head_into_cpu_buffer(attn, grid_size, patch_size).to(attn.device)


MISTAKES += [(per_head_into_cpu_buffer, "device")]
CORRECT += [per_head_cpu_buffer_moved_back]
