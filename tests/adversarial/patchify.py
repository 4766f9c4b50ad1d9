"""Adversarial set for check_patchify (notebook 01): other correct styles and usual mistakes."""

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

CHECK = "patchify"


# ------------------------------------------------------------------------------------------------- correct
def reshape_permute(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, -1, P * P * C)


def with_f_unfold(images, patch_size):
    B, C, H, W = images.shape
    cols = F.unfold(images, kernel_size=patch_size, stride=patch_size)  # [B, C*P*P, L], (c p1 p2)
    cols = cols.view(B, C, patch_size, patch_size, -1)
    return cols.permute(0, 4, 2, 3, 1).reshape(B, cols.shape[-1], -1)


def loops_and_stack(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    rows = []
    for i in range(H // p):
        for j in range(W // p):
            patch = images[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # [B, C, p, p]
            rows.append(patch.permute(0, 2, 3, 1).flatten(1))
    return torch.stack(rows, dim=1)


def tensor_unfold_twice(images, patch_size):
    x = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # b c h w p1 p2
    x = x.permute(0, 2, 3, 4, 5, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], -1)


def pixel_unshuffle(images, patch_size):
    x = F.pixel_unshuffle(images, patch_size)  # [B, C*P*P, h, w] in (c p1 p2)
    return rearrange(x, "b (c p1 p2) h w -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def channels_last_first(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    x = images.permute(0, 2, 3, 1)  # B H W C
    x = x.reshape(B, H // P, P, W // P, P, C).transpose(2, 3)  # B h w P P C
    return x.reshape(B, (H // P) * (W // P), P * P * C)


def explicit_grid(images, patch_size):
    h, w = images.shape[2] // patch_size, images.shape[3] // patch_size
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", h=h, w=w)


def index_gather(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    flat = images.flatten(1)  # (c, H, W) memory order
    idx = []
    for i in range(H // P):
        for j in range(W // P):
            idx.append([c * H * W + (i * P + a) * W + (j * P + b) for a in range(P) for b in range(P) for c in range(C)])
    index = torch.tensor(idx, device=images.device)  # [N, P*P*C]
    return flat[:, index]


CORRECT = [reshape_permute, with_f_unfold, loops_and_stack, tensor_unfold_twice, pixel_unshuffle,
           channels_last_first, explicit_grid, index_gather]


# ------------------------------------------------------------------------------------------------ mistakes
def channels_first(images, patch_size):
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=patch_size, p2=patch_size)


def column_major(images, patch_size):
    return rearrange(images, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=patch_size, p2=patch_size)


def raw_reshape(images, patch_size):
    B, C = images.shape[:2]
    return images.reshape(B, -1, patch_size * patch_size * C)


def permute_then_reshape(images, patch_size):
    B, C = images.shape[:2]
    return images.permute(0, 2, 3, 1).reshape(B, -1, patch_size * patch_size * C)


def unfold_unordered(images, patch_size):
    return F.unfold(images, patch_size, stride=patch_size).transpose(1, 2)


def swapped_inside(images, patch_size):
    x = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # b c h w p1 p2
    return x.permute(0, 2, 3, 5, 4, 1).reshape(x.shape[0], -1, x.shape[1] * patch_size * patch_size)


def to_float64(images, patch_size):
    return rearrange(images.double(), "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def preallocated_float32(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    out = torch.zeros(B, (H // P) * (W // P), P * P * C)
    k = 0
    for i in range(0, H, P):
        for j in range(0, W, P):
            out[:, k] = images[:, :, i:i + P, j:j + P].permute(0, 2, 3, 1).reshape(B, -1)
            k += 1
    return out


def via_numpy(images, patch_size):
    x = images.detach().cpu().numpy()
    B, C, H, W = x.shape
    P = patch_size
    x = x.reshape(B, C, H // P, P, W // P, P).transpose(0, 2, 4, 3, 5, 1).reshape(B, -1, P * P * C)
    return torch.from_numpy(np.ascontiguousarray(x))


def detached(images, patch_size):
    return reshape_permute(images, patch_size).detach()


def normalises_in_place(images, patch_size):
    images -= images.mean()
    return reshape_permute(images, patch_size)


def square_only(images, patch_size):
    n = images.shape[2] // patch_size
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", h=n, w=n)


def transposed_image(images, patch_size):
    return rearrange(images, "b c (h p1) (w p2) -> b (w h) (p2 p1 c)", p1=patch_size, p2=patch_size)


def keeps_grid(images, patch_size):
    return rearrange(images, "b c (h p1) (w p2) -> b h w (p1 p2 c)", p1=patch_size, p2=patch_size)


def forgets_return(images, patch_size):
    patches = reshape_permute(images, patch_size)  # noqa: F841


def hard_coded_patch_4(images, patch_size):
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=4, p2=4)


def strided_grid(images, patch_size):
    return rearrange(images, "b c (p1 h) (p2 w) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def grid_and_patch_swapped(images, patch_size):
    # h=, w= name the grid in this pattern: these are P x P patches of size (H/P) x (W/P)
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", h=patch_size, w=patch_size)


MISTAKES = [
    (grid_and_patch_swapped, "swapped"),
    (strided_grid, "strided"),
    (channels_first, "(c p1 p2)"),
    (column_major, "column by column"),
    (raw_reshape, "reshaped the image tensor directly"),
    (permute_then_reshape, "moved the channels last"),
    (unfold_unordered, "F.unfold"),
    (swapped_inside, "(p2 p1 c)"),
    (to_float64, "dtype"),
    (preallocated_float32, "dtype"),
    (via_numpy, "autograd"),
    (detached, "autograd"),
    (normalises_in_place, "in place"),
    (square_only, "square"),
    (transposed_image, "transposed"),
    (keeps_grid, "3 axes"),
    (forgets_return, "forget to return"),
    (hard_coded_patch_4, "patch_size=3"),
]


_INDEX_BY_IMAGE_SIZE = {}


def index_cached_by_image_size(images, patch_size):  # the gather index kept per (H, W): forgets C and P
    B, C, H, W = images.shape
    if (H, W) not in _INDEX_BY_IMAGE_SIZE:
        ids = torch.arange(C * H * W).reshape(1, C, H, W)
        _INDEX_BY_IMAGE_SIZE[(H, W)] = rearrange(ids, "1 c (h p1) (w p2) -> (h w p1 p2 c)", p1=patch_size,
                                                 p2=patch_size)
    N = (H // patch_size) * (W // patch_size)
    return images.reshape(B, -1)[:, _INDEX_BY_IMAGE_SIZE[(H, W)]].reshape(B, N, -1)


_INDEX_BY_SHAPE = {}


def index_cached_without_patch_size(images, patch_size):  # kept per (C, H, W): forgets P
    B, C, H, W = images.shape
    if (C, H, W) not in _INDEX_BY_SHAPE:
        ids = torch.arange(C * H * W).reshape(1, C, H, W)
        _INDEX_BY_SHAPE[(C, H, W)] = rearrange(ids, "1 c (h p1) (w p2) -> (h w p1 p2 c)", p1=patch_size,
                                               p2=patch_size)
    N = (H // patch_size) * (W // patch_size)
    return images.reshape(B, -1)[:, _INDEX_BY_SHAPE[(C, H, W)]].reshape(B, N, -1)


MISTAKES += [(index_cached_by_image_size, "kept from one call"), (index_cached_without_patch_size, "kept from one call")]


# ------------------------------------------------------ the input's device (the contract): a buffer made on the CPU
def loop_into_cpu_buffer(images, patch_size):
    # FALSE ACCEPT (was): torch.zeros without device=, filled patch by patch; on a GPU the patches come back on the
    # CPU. Every case ran on the CPU, so nothing showed
    B, C, H, W = images.shape
    P = patch_size
    h, w = H // P, W // P
    out = torch.zeros(B, h * w, P * P * C, dtype=images.dtype)
    for i in range(h):
        for j in range(w):
            out[:, i * w + j] = images[:, :, i * P:(i + 1) * P, j * P:(j + 1) * P].permute(0, 2, 3, 1).reshape(B, -1)
    return out


def loop_into_buffer_on_the_device(images, patch_size):  # the same loop, the buffer made with new_zeros: right
    B, C, H, W = images.shape
    P = patch_size
    h, w = H // P, W // P
    out = images.new_zeros(B, h * w, P * P * C)
    for i in range(h):
        for j in range(w):
            out[:, i * w + j] = images[:, :, i * P:(i + 1) * P, j * P:(j + 1) * P].permute(0, 2, 3, 1).reshape(B, -1)
    return out


MISTAKES.append((loop_into_cpu_buffer, "device"))
CORRECT.append(loop_into_buffer_on_the_device)


# ------------------------------------------------------------------ a strided view of the image, no data copied
def as_strided_view(images, patch_size):  # right: the patches read straight from the image's memory
    x = images.contiguous()
    B, C, H, W = x.shape
    P = patch_size
    sB, sC, sH, sW = x.stride()
    return x.as_strided((B, H // P, W // P, P, P, C), (sB, P * sH, P * sW, sH, sW, sC)).reshape(B, -1, P * P * C)


CORRECT.append(as_strided_view)
