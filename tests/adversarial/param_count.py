"""Adversarial set for check_param_count (notebook 00): other correct styles and usual mistakes."""

import math

import torch
from torch import nn

CHECK = "param_count"


def _check(image_size, patch_size):
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")


# ------------------------------------------------------------------------------------------------- correct
def correct_by_parts(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    _check(image_size, patch_size)
    n = (image_size // patch_size) ** 2
    linear = lambda i, o: i * o + o  # noqa: E731 - weight + bias
    norm = 2 * dim
    embed = linear(patch_size * patch_size * in_channels, dim) + dim + (n + 1) * dim
    block = norm + linear(dim, 3 * dim) + linear(dim, dim) + norm + linear(dim, mlp_dim) + linear(mlp_dim, dim)
    return embed + depth * block + norm + linear(dim, num_classes)


def correct_closed_form(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    if image_size % patch_size != 0:
        raise ValueError("patch_size must divide image_size")
    P, C, D, L, M, K = patch_size, in_channels, dim, depth, mlp_dim, num_classes
    N = image_size * image_size // (P * P)
    return P * P * C * D + D + D + (N + 1) * D + L * (4 * D * D + 2 * D * M + 9 * D + M) + 2 * D + D * K + K


def correct_build_modules(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    # builds the layers on the meta device (shapes only) and counts their elements
    if image_size % patch_size:
        raise ValueError("image_size must be divisible by patch_size")
    n = (image_size // patch_size) ** 2
    with torch.device("meta"):
        parts = [nn.Conv2d(in_channels, dim, patch_size, patch_size), nn.LayerNorm(dim), nn.Linear(dim, num_classes)]
        block = nn.ModuleList([nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.LayerNorm(dim),
                               nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)])
    count = sum(p.numel() for m in parts for p in m.parameters()) + dim + (n + 1) * dim
    return count + depth * sum(p.numel() for p in block.parameters())


def correct_numpy_int(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    # math.prod and a Python int at the end
    if image_size % patch_size:
        raise ValueError("bad patch size")
    tokens = (image_size // patch_size) ** 2 + 1
    shapes = [(patch_size, patch_size, in_channels, dim), (dim,), (dim,), (tokens, dim), (dim,), (dim,),
              (dim, num_classes), (num_classes,)]
    per_block = [(dim,), (dim,), (dim, 3 * dim), (3 * dim,), (dim, dim), (dim,), (dim,), (dim,),
                 (dim, mlp_dim), (mlp_dim,), (mlp_dim, dim), (dim,)]
    return int(sum(math.prod(s) for s in shapes) + depth * sum(math.prod(s) for s in per_block))


def correct_numpy_scalar(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    # a numpy integer is an int too
    import numpy as np
    if image_size % patch_size:
        raise ValueError("patch_size must divide image_size")
    sizes = np.array([patch_size ** 2 * in_channels * dim, dim, dim, ((image_size // patch_size) ** 2 + 1) * dim,
                      2 * dim, dim * num_classes, num_classes], dtype=np.int64)
    block = np.array([4 * dim, 3 * dim * dim, 3 * dim, dim * dim, dim, 2 * dim * mlp_dim, mlp_dim, dim], dtype=np.int64)
    return sizes.sum() + depth * block.sum()


CORRECT = [correct_by_parts, correct_closed_form, correct_build_modules, correct_numpy_int, correct_numpy_scalar]


# ------------------------------------------------------------------------------------------------ mistakes
def _parts(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    n = (image_size // patch_size) ** 2
    return dict(E=patch_size ** 2 * in_channels * dim, Eb=dim, cls=dim, pos=(n + 1) * dim,
                ln=depth * 4 * dim, qkv=depth * 3 * dim * dim, qkvb=depth * 3 * dim, proj=depth * dim * dim,
                projb=depth * dim, mlp=depth * 2 * dim * mlp_dim, mlpb=depth * (mlp_dim + dim), final=2 * dim,
                head=dim * num_classes, headb=num_classes)


def _without(*names):
    def count(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
        _check(image_size, patch_size)
        parts = _parts(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes)
        return sum(v for k, v in parts.items() if k not in names)
    count.__name__ = "without_" + "_".join(names)
    return count


def pos_embed_n_rows(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    _check(image_size, patch_size)
    return correct_by_parts(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes) - dim


def n_not_squared(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    _check(image_size, patch_size)
    n = image_size // patch_size  # forgot that the grid is n x n
    full = correct_by_parts(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes)
    return full - ((image_size // patch_size) ** 2 - n) * dim


def float_division(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    _check(image_size, patch_size)
    n = (image_size / patch_size) ** 2
    return correct_closed_form(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes) * 1.0 + 0 * n


def qkv_single_matrix(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    _check(image_size, patch_size)
    return (correct_by_parts(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes)
            - depth * (2 * dim * dim + 2 * dim))


def mlp_is_4d(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    return correct_by_parts(image_size, patch_size, in_channels, dim, depth, 4 * dim, num_classes)


def no_channels(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    return correct_by_parts(image_size, patch_size, 1, dim, depth, mlp_dim, num_classes)


def layernorm_weight_only(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    _check(image_size, patch_size)
    return (correct_by_parts(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes)
            - depth * 2 * dim - dim)


def no_value_error(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    n = (image_size // patch_size) ** 2  # silently floors a grid that does not fit
    P, C, D, L, M, K = patch_size, in_channels, dim, depth, mlp_dim, num_classes
    return P * P * C * D + D + D + (n + 1) * D + L * (4 * D * D + 2 * D * M + 9 * D + M) + 2 * D + D * K + K


def depth_once(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    return correct_by_parts(image_size, patch_size, in_channels, dim, 1, mlp_dim, num_classes)


def one_norm_per_block(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    return correct_by_parts(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes) - depth * 2 * dim


MISTAKES = [
    (one_norm_per_block, "two LayerNorms"),
    (_without("cls"), "class token"),
    (pos_embed_n_rows, "class token"),
    (_without("Eb", "qkvb", "projb", "mlpb", "headb"), "bias"),
    (_without("qkvb"), "bias"),
    (_without("ln", "final"), "LayerNorm"),
    (_without("final"), "final"),
    (_without("head", "headb"), "head"),
    (_without("headb"), "bias"),
    (_without("proj", "projb"), "projection"),
    (_without("pos"), "position"),
    (n_not_squared, "patches"),
    (float_division, "int"),
    (qkv_single_matrix, "qkv"),
    (mlp_is_4d, "mlp_dim"),
    (no_channels, "channels"),
    (layernorm_weight_only, "LayerNorm"),
    (no_value_error, "ValueError"),
    (depth_once, "depth"),
]


def correct_torch_layers_on_meta(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    # the model's layers built on the meta device (shapes only), plus the class token and the position embedding
    if image_size % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide image_size={image_size}")
    n = (image_size // patch_size) ** 2
    with torch.device("meta"):
        layers = [nn.Conv2d(in_channels, dim, patch_size, patch_size), nn.LayerNorm(dim),
                  nn.Linear(dim, num_classes)]
        for _ in range(depth):
            layers += [nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim),
                       nn.LayerNorm(dim), nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)]
    return sum(p.numel() for layer in layers for p in layer.parameters()) + dim + (n + 1) * dim


CORRECT.append(correct_torch_layers_on_meta)
