"""The hybrid architecture (paper sections 3.1 and 4.1): a CNN's feature map becomes the token grid.

The paper's R50+ViT-B/16 feeds the stride-16 feature map of a ResNet-50 cut after stage 3
(3, 4 and 9 bottleneck blocks; stage 4 is dropped and stage 3 extended from 6 to 9 blocks) into a
"patch" embedding of size 1x1. The ResNet is the BiT flavour: weight-standardized convolutions and
GroupNorm instead of BatchNorm, and TensorFlow "SAME" padding, so pretrained weights load exactly.

Importing this module registers ``HybridEmbed`` as the patch embedding of configs with ``hybrid_layers``
(``patch_embed.build_patch_embed``); ``import vit_edu`` does it.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import ViTConfig, resnet_stride, to_2tuple
from .patch_embed import PATCH_EMBED_BUILDERS, PatchEmbedBase, cast_image


def _same_pad(size: int, kernel: int, stride: int) -> int:
    """Total padding TensorFlow's 'SAME' adds so that out = ceil(in / stride)."""
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def pad_same(x: torch.Tensor, kernel: Tuple[int, int], stride: Tuple[int, int], value: float = 0.0) -> torch.Tensor:
    """Pad like TensorFlow 'SAME': the odd pixel goes to the bottom/right."""
    ph = _same_pad(x.shape[-2], kernel[0], stride[0])
    pw = _same_pad(x.shape[-1], kernel[1], stride[1])
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


class StdConv2dSame(nn.Conv2d):
    """Conv2d with weight standardization (each filter to zero mean, unit variance) and 'SAME' padding.

    Weight standardization lets GroupNorm replace BatchNorm, which works badly with the small
    per-device batches of large-scale pre-training (Kolesnikov et al., BiT).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, eps: float = 1e-8):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=False)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        """(w - mean) / sqrt(var + eps) per output filter.

        Computed with ``F.batch_norm`` over the flattened filters (each filter is one "channel"), as
        timm and BiT do: the same formula, and bit-for-bit the same rounding as the pretrained models.
        """
        w = self.weight.reshape(1, self.out_channels, -1)  # [1, C_out, C_in*k*k]
        w = F.batch_norm(w, None, None, training=True, momentum=0.0, eps=self.eps)
        return w.reshape_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride)
        return F.conv2d(x, self.standardized_weight(), None, self.stride, 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-5)


class Downsample(nn.Module):
    """Projection shortcut: 1x1 StdConv (with the block's stride) + GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = StdConv2dSame(in_channels, out_channels, 1, stride=stride)
        self.norm = group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand, GroupNorm after each, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        mid = out_channels // 4
        self.downsample = Downsample(in_channels, out_channels, stride) if (stride != 1 or in_channels != out_channels) else None
        self.conv1 = StdConv2dSame(in_channels, mid, 1)
        self.norm1 = group_norm(mid)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride=stride)
        self.norm2 = group_norm(mid)
        self.conv3 = StdConv2dSame(mid, out_channels, 1)
        self.norm3 = group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class Stem(nn.Module):
    """7x7/2 StdConv + GroupNorm + ReLU + 3x3/2 max-pool: stride 4, 64 channels."""

    def __init__(self, in_channels: int, channels: int = 64):
        super().__init__()
        self.conv = StdConv2dSame(in_channels, channels, 7, stride=2)
        self.norm = group_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        x = pad_same(x, (3, 3), (2, 2), value=float("-inf"))
        return F.max_pool2d(x, 3, 2)


class ResNetStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, depth: int, stride: int):
        super().__init__()
        self.blocks = nn.Sequential(*[
            Bottleneck(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetBackbone(nn.Module):
    """ResNet-v2-style (BiT) backbone without head: [B, C, H, W] -> [B, 256 * 2^(S-1), H/s, W/s], s = 4 * 2^(S-1)."""

    def __init__(self, layers: Sequence[int] = (3, 4, 9), in_channels: int = 3, stem_channels: int = 64):
        super().__init__()
        self.stride = resnet_stride(layers)  # first: it checks the layers
        self.stem = Stem(in_channels, stem_channels)
        chs = [256 * 2 ** i for i in range(len(layers))]
        self.stages = nn.Sequential(*[
            ResNetStage(stem_channels if i == 0 else chs[i - 1], chs[i], d, 1 if i == 0 else 2)
            for i, d in enumerate(layers)
        ])
        self.num_features = chs[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.stem.conv.in_channels
        if x.ndim != 4 or x.shape[1] != c:  # checked here: the padded stem conv would name a padded size
            raise ValueError(f"ResNetBackbone expects images [B, {c}, H, W], got shape {tuple(x.shape)}")
        return self.stages(self.stem(x))


class HybridEmbed(PatchEmbedBase):
    """CNN feature map -> tokens: backbone, then a PxP (usually 1x1) conv projection to D, then flatten.

    ``patch_size`` is on the feature map; ``self.patch_size`` is in input pixels (backbone stride x P).
    """

    def __init__(self, image_size=224, patch_size=1, in_channels: int = 3, dim: int = 768,
                 layers: Sequence[int] = (3, 4, 9), dynamic_img_size: bool = False, owner: str = "model"):
        feature_patch_size = to_2tuple(patch_size, "patch_size")
        s = resnet_stride(layers)
        super().__init__(image_size, (s * feature_patch_size[0], s * feature_patch_size[1]), in_channels,
                         dynamic_img_size, owner)
        self.feature_patch_size = feature_patch_size
        self.backbone = ResNetBackbone(layers, in_channels)
        self.proj = nn.Conv2d(self.backbone.num_features, dim, kernel_size=feature_patch_size,
                              stride=feature_patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        x = self.proj(self.backbone(cast_image(x, self.proj.weight)))  # [B, D, H/s/P, W/s/P]
        return rearrange(x, "b d h w -> b (h w) d")  # [B, N, D]


def _build_hybrid(c: ViTConfig, owner: str) -> HybridEmbed:
    return HybridEmbed(c.image_size, c.patch_size, c.in_channels, c.dim, c.hybrid_layers, c.dynamic_img_size, owner)


PATCH_EMBED_BUILDERS["hybrid"] = _build_hybrid
