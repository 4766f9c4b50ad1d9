"""Adversarial set for check_patch_embedding (notebook 01): other correct styles and usual mistakes."""

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn
import torch.nn as nn

CHECK = "patch_embedding"


# ------------------------------------------------------------------------------------------------- correct
class ConvFlattenTranspose(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)


class ConvValidPermute(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=(patch_size, patch_size), stride=(patch_size, patch_size),
                              padding="valid")

    def forward(self, images):
        y = self.proj(images)
        return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, y.shape[1])


class LinearChannelsFirstUnfold(nn.Module):
    """A Linear on F.unfold's (c p1 p2) vectors: another pixel order, the same for every patch: right."""

    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.p = patch_size
        self.proj = nn.Linear(in_channels * patch_size ** 2, dim)

    def forward(self, images):
        return self.proj(F.unfold(images, self.p, stride=self.p).transpose(1, 2))


class LazyLinearEinsum(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.p = patch_size
        self.proj = nn.LazyLinear(dim)

    def forward(self, images):
        patches = rearrange(images, "b c (h p1) (w p2) -> b (h w) (p2 p1 c)", p1=self.p, p2=self.p)
        if isinstance(self.proj.weight, nn.parameter.UninitializedParameter):
            return self.proj(patches)
        return torch.einsum("bnk,dk->bnd", patches, self.proj.weight) + self.proj.bias


class RearrangeLayerLinear(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.to_patches = Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)
        self.proj = nn.Linear(patch_size * patch_size * in_channels, dim)
        self.num_patches = (image_size // patch_size) ** 2

    def forward(self, images):
        return self.proj(self.to_patches(images))


class ConvWithDropoutInEval(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.drop = nn.Dropout(0.3)

    def forward(self, images):
        return self.drop(rearrange(self.proj(images), "b d h w -> b (h w) d"))


class ChecksImageSize(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.image_size = image_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)

    def forward(self, images):
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images")
        return self.proj(images).flatten(2).transpose(1, 2)

CORRECT = [ConvFlattenTranspose, ConvValidPermute, LinearChannelsFirstUnfold, LazyLinearEinsum,
           RearrangeLayerLinear, ConvWithDropoutInEval, ChecksImageSize]


# ------------------------------------------------------------------------------------------------ mistakes
class _Conv(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)


class _Lin(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.p = patch_size
        self.proj = nn.Linear(patch_size * patch_size * in_channels, dim)


class ColumnMajor(_Conv):
    def forward(self, images):
        return rearrange(self.proj(images), "b d h w -> b (w h) d")


class ReshapeNoTranspose(_Conv):
    def forward(self, images):
        y = self.proj(images)
        return y.reshape(y.shape[0], -1, y.shape[1])


class FlattenOnly(_Conv):
    def forward(self, images):
        return self.proj(images).flatten(2)


class OverlappingWindows(_Conv):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__(image_size, patch_size, in_channels, dim)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=1)

    def forward(self, images):
        return rearrange(self.proj(images), "b d h w -> b (h w) d")


class PaddedConv(_Conv):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__(image_size, patch_size, in_channels, dim)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, padding=1)

    def forward(self, images):
        return rearrange(self.proj(images), "b d h w -> b (h w) d")


class LinearRawReshape(_Lin):
    def forward(self, images):
        return self.proj(images.reshape(images.shape[0], -1, self.proj.in_features))


class LinearColumnOrder(_Lin):
    def forward(self, images):
        return self.proj(rearrange(images, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=self.p, p2=self.p))


class NoGradForward(_Conv):
    def forward(self, images):
        with torch.no_grad():
            return rearrange(self.proj(images), "b d h w -> b (h w) d")


class FunctionalDropout(_Conv):
    def forward(self, images):
        return F.dropout(rearrange(self.proj(images), "b d h w -> b (h w) d"), 0.1)


class WrongLinearSize(_Lin):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__(image_size, patch_size, in_channels, dim)
        self.proj = nn.Linear(patch_size * patch_size, dim)

    def forward(self, images):
        return self.proj(rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=self.p, p2=self.p))


class NormalisesInPlace(_Conv):
    def forward(self, images):
        images.sub_(0.5).div_(0.5)
        return rearrange(self.proj(images), "b d h w -> b (h w) d")


class DoubleOutput(_Conv):
    def forward(self, images):
        return rearrange(self.proj(images), "b d h w -> b (h w) d").to(torch.float64)


class ReturnsGridToo(_Conv):
    def forward(self, images):
        y = self.proj(images)
        return rearrange(y, "b d h w -> b (h w) d"), y.shape[-2:]


class ConvInOtherAttribute(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, images):
        return rearrange(self.conv(images), "b d h w -> b (h w) d")


class ConvWithoutBiasUse(_Conv):
    def forward(self, images):
        y = F.conv2d(images, self.proj.weight, stride=self.proj.stride)
        return rearrange(y, "b d h w -> b (h w) d")


class ConvBiasFalse(_Conv):  # the contract's proj holds E and b
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__(image_size, patch_size, in_channels, dim)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=False)

    def forward(self, images):
        return rearrange(self.proj(images), "b d h w -> b (h w) d")


MISTAKES = [
    (ConvBiasFalse, "with a bias"),
    (ColumnMajor, "column-major"),
    (ReshapeNoTranspose, "mixes features and positions"),
    (FlattenOnly, "transpose(1, 2)"),
    (OverlappingWindows, "stride"),
    (PaddedConv, "padding"),
    (LinearRawReshape, "reshaped the image tensor directly"),
    (LinearColumnOrder, "column by column"),
    (NoGradForward, "autograd"),
    (FunctionalDropout, "dropout"),
    (WrongLinearSize, "got nn.Linear(16, 16)"),
    (NormalisesInPlace, "in place"),
    (DoubleOutput, "dtype"),
    (ReturnsGridToo, "single torch.Tensor"),
    (ConvInOtherAttribute, "no attribute `proj`"),
    (ConvWithoutBiasUse, "bias"),
]


class HandMadeProjection(nn.Module):  # E and b as bare parameters made with torch.empty, never filled
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.p = patch_size
        self.proj = nn.Linear(in_channels * patch_size ** 2, dim)
        self.proj.weight = nn.Parameter(torch.empty_like(self.proj.weight))

    def forward(self, images):
        return self.proj(F.unfold(images, self.p, stride=self.p).transpose(1, 2))


MISTAKES.append((HandMadeProjection, "starting value"))



# ------------------------------------------------------------------------------ found by an outside test
class PatchEmbeddingSquareGridOnly(nn.Module):
    # right: the images are image_size x image_size (the package's PatchEmbed refuses any other size, as
    # ChecksImageSize does), so the grid may be taken from H alone. The outside tester read "[B, C, H, W] with H
    # and W divisible by P" as allowing non-square images; the statement is to say H = W = image_size.
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        self.P = patch_size
        self.proj = nn.Linear(patch_size * patch_size * in_channels, dim)

    def forward(self, images):
        B, C, H, W = images.shape
        P, n = self.P, H // self.P
        x = images.reshape(B, C, n, P, n, P).permute(0, 2, 4, 3, 5, 1).reshape(B, n * n, P * P * C)
        return self.proj(x)


CORRECT.append(PatchEmbeddingSquareGridOnly)
