"""Patch embedding: cut the image into P x P patches and project each one to D features (paper eq. 1).

Two equal ways to write it:

* ``PatchEmbed``: ``Conv2d(C, D, kernel_size=P, stride=P)``. With stride = kernel the windows do not
  overlap, so each output pixel is a linear function of exactly one patch. Output size per side:
  floor((n + 2p - f) / s + 1) = n / P with padding p = 0, filter f = P, stride s = P.
* ``LinearPatchEmbed``: ``rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')`` then ``Linear(P*P*C, D)``:
  the paper's x_p^i E, literally.

``conv_to_linear_`` / ``linear_to_conv_`` copy weights between the two, so a notebook can prove them equal.
``build_patch_embed(config)`` picks the one a config names (or the hybrid's CNN embedding, vit_edu/hybrid.py).

A patch embedding checks its input (:func:`check_image`); the model relies on that and does not check again.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple, Union

import torch
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn

from .config import ViTConfig, check_sizes, patch_grid, to_2tuple

PATCHIFY_PATTERN = "b c (h p1) (w p2) -> b (h w) (p1 p2 c)"


def check_image(x: torch.Tensor, in_channels: int, image_size: Union[Tuple[int, int], None],
                patch_size: Tuple[int, int], what: str = "model") -> None:
    """Raise a clear error for anything but a [B, C, H, W] float tensor the model can cut into patches.

    dtype rule: any floating dtype passes this check (float32, float64, float16, bfloat16, ...); the model
    then casts the image to the dtype of its own weights (:func:`cast_image`), so a float64 image from
    NumPy meets a float32 model as float32, and a bfloat16 model gets bfloat16. Integer and bool images are
    refused: their scale (0..255?) is unknown, so the fix (``x.float() / 255``) is left to the caller.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} expects a torch.Tensor of shape [B, C, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        hint = " (a single image? add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ValueError(f"{what} expects a 4-D tensor [B, C, H, W], got {x.ndim}-D tensor of shape {tuple(x.shape)}{hint}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{what} expects a floating-point image tensor, got dtype {x.dtype} (convert with x.float() / 255)")
    if x.shape[1] != in_channels:
        hint = " (channels-last input? permute with x.permute(0, 3, 1, 2))" if x.shape[-1] == in_channels else ""
        raise ValueError(f"{what} expects {in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}){hint}")
    H, W = x.shape[-2:]
    if H == 0 or W == 0:  # 0 is divisible by any patch size, but holds no patch
        raise ValueError(f"{what} expects an image of at least one patch {tuple(patch_size)}, got size {(H, W)} "
                         f"(input shape {tuple(x.shape)})")
    divisible = H % patch_size[0] == 0 and W % patch_size[1] == 0
    if image_size is not None and (H, W) != tuple(image_size):
        fix = (f"build it with image_size={(H, W)} or dynamic_img_size=True, or resize the input" if divisible
               else f"resize the input; {(H, W)} is not even divisible by the patch size {tuple(patch_size)}")
        raise ValueError(f"{what} was built for images of size {tuple(image_size)}, got {(H, W)}; {fix}")
    if not divisible:
        raise ValueError(f"image size {(H, W)} is not divisible by the patch size {tuple(patch_size)}")


def cast_image(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A floating-point image in the dtype of ``weight`` (the first layer's), so that float64, float16 or
    bfloat16 input works with a float32 model (and float32 input with a half-precision one).

    Casting float64 to float32 rounds each pixel to 24 significant bits, far below any image noise.
    Under ``torch.autocast`` the layers then pick their own precision as usual. The device is not changed:
    an image on another device than the model is refused, naming both.
    """
    if x.device != weight.device:
        raise ValueError(f"the image is on device {x.device} but the model's weights are on {weight.device}; "
                         f"move one of them, e.g. x.to({str(weight.device)!r})")
    return x if x.dtype == weight.dtype else x.to(weight.dtype)


def patchify(images: torch.Tensor, patch_size: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, P*P*C], patches in row-major order, pixels in (p1 p2 c) order."""
    p1, p2 = to_2tuple(patch_size, "patch_size")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"patchify expects a 4-D tensor [B, C, H, W], got {shape}")
    H, W = images.shape[-2:]
    if H % p1 or W % p2:
        raise ValueError(f"image size {(H, W)} is not divisible by the patch size {(p1, p2)}")
    return rearrange(images, PATCHIFY_PATTERN, p1=p1, p2=p2)


def unpatchify(patches: torch.Tensor, patch_size: Union[int, Tuple[int, int]], grid_size: Tuple[int, int],
               channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, N, P*P*C] -> [B, C, H, W]."""
    p1, p2 = to_2tuple(patch_size, "patch_size")
    gh, gw = to_2tuple(grid_size, "grid_size")
    if not isinstance(patches, torch.Tensor) or patches.ndim != 3:
        shape = tuple(patches.shape) if isinstance(patches, torch.Tensor) else type(patches).__name__
        raise ValueError(f"unpatchify expects a 3-D tensor [B, N, P*P*C], got {shape}")
    want = (gh * gw, p1 * p2 * channels)
    if tuple(patches.shape[1:]) != want:
        raise ValueError(f"unpatchify: a {gh}x{gw} grid of {p1}x{p2} patches with {channels} channels is "
                         f"[B, {want[0]}, {want[1]}], got {list(patches.shape)} (grid_size is in patches, not pixels)")
    return rearrange(patches, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=gh, w=gw, p1=p1, p2=p2, c=channels)


class PatchEmbedBase(nn.Module):
    """What every patch embedding shares: the sizes, the token grid, and the input check.

    ``patch_size`` is in input pixels. ``owner`` names the caller in input errors: "model" for an embedding
    used alone, "VisionTransformer" for the one inside a model (it validates the model's input).
    """

    def __init__(self, image_size=224, patch_size=16, in_channels: int = 3, dynamic_img_size: bool = False,
                 owner: str = "model"):
        super().__init__()
        self.image_size = to_2tuple(image_size, "image_size")
        self.patch_size = to_2tuple(patch_size, "patch_size")
        if self.image_size[0] % self.patch_size[0] or self.image_size[1] % self.patch_size[1]:
            raise ValueError(f"image_size {self.image_size} must be divisible by the patch size {self.patch_size} "
                             "(in input pixels), or every image it is built for is refused")
        check_sizes(in_channels=in_channels)
        self.in_channels = in_channels
        self.dynamic_img_size = dynamic_img_size
        self.owner = owner
        self.grid_size = patch_grid(self.image_size, self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def check(self, x: torch.Tensor) -> None:
        check_image(x, self.in_channels, None if self.dynamic_img_size else self.image_size, self.patch_size,
                    self.owner)


class PatchEmbed(PatchEmbedBase):
    """Conv2d(k=P, s=P) patch embedding: [B, C, H, W] -> [B, N, D]."""

    def __init__(self, image_size=224, patch_size=16, in_channels: int = 3, dim: int = 768,
                 dynamic_img_size: bool = False, owner: str = "model"):
        super().__init__(image_size, patch_size, in_channels, dynamic_img_size, owner)
        check_sizes(dim=dim)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        x = self.proj(cast_image(x, self.proj.weight))  # [B, D, H/P, W/P]
        return rearrange(x, "b d h w -> b (h w) d")  # [B, N, D]


class LinearPatchEmbed(PatchEmbedBase):
    """Rearrange into flattened patches, then Linear(P*P*C, D): [B, C, H, W] -> [B, N, D]."""

    def __init__(self, image_size=224, patch_size=16, in_channels: int = 3, dim: int = 768,
                 dynamic_img_size: bool = False, owner: str = "model"):
        super().__init__(image_size, patch_size, in_channels, dynamic_img_size, owner)
        check_sizes(dim=dim)
        p1, p2 = self.patch_size
        self.to_patches = Rearrange(PATCHIFY_PATTERN, p1=p1, p2=p2)
        self.proj = nn.Linear(p1 * p2 * in_channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return self.proj(self.to_patches(cast_image(x, self.proj.weight)))  # [B, N, P*P*C] -> [B, N, D]


# ViTConfig -> patch embedding, by kind: the config's patch_embed ("conv", "linear"), or "hybrid" when it has
# hybrid_layers. vit_edu/hybrid.py adds "hybrid"; `import vit_edu` imports it, before any model can be built.
PATCH_EMBED_BUILDERS: Dict[str, Callable[[ViTConfig, str], nn.Module]] = {
    "conv": lambda c, owner: PatchEmbed(c.image_size, c.patch_size, c.in_channels, c.dim, c.dynamic_img_size, owner),
    "linear": lambda c, owner: LinearPatchEmbed(c.image_size, c.patch_size, c.in_channels, c.dim, c.dynamic_img_size,
                                                owner),
}


def build_patch_embed(config: ViTConfig, owner: str = "model") -> nn.Module:
    """The patch embedding ``config`` asks for: [B, C, H, W] -> [B, N, D], checking its input."""
    kind = "hybrid" if config.hybrid_layers is not None else config.patch_embed
    if kind not in PATCH_EMBED_BUILDERS:
        raise ValueError(f"no patch embedding registered for {kind!r} (known: {sorted(PATCH_EMBED_BUILDERS)}); "
                         "'hybrid' is registered by vit_edu/hybrid.py, which `import vit_edu` imports")
    return PATCH_EMBED_BUILDERS[kind](config, owner)


def _check_pair(conv_embed: PatchEmbed, linear_embed: LinearPatchEmbed) -> Tuple[nn.Conv2d, nn.Linear]:
    """(conv, linear) of two embeddings that cut the same patches: same patch size (rows, columns) and channels, not
    only the same feature count. A 2x8 patch and a 4x4 one both have 16 pixels, and a copy between them would
    succeed and give other tokens."""
    for embed, kind, name in ((conv_embed, nn.Conv2d, "PatchEmbed"), (linear_embed, nn.Linear, "LinearPatchEmbed")):
        if not isinstance(getattr(embed, "proj", None), kind):
            raise TypeError(f"expected a {name} (its .proj a {kind.__name__}), got {type(embed).__name__}")
    conv, linear = conv_embed.proj, linear_embed.proj
    c_out, c_in, p1, p2 = conv.weight.shape
    if linear.weight.shape != (c_out, p1 * p2 * c_in):
        raise ValueError(
            f"cannot copy between Conv2d weight {tuple(conv.weight.shape)} and Linear weight "
            f"{tuple(linear.weight.shape)}: expected Linear weight ({c_out}, {p1 * p2 * c_in})"
        )
    lin_patch = tuple(getattr(linear_embed, "patch_size", (p1, p2)))
    lin_channels = getattr(linear_embed, "in_channels", c_in)
    if lin_patch != (p1, p2) or lin_channels != c_in:  # the same feature count, other pixels in each token
        raise ValueError(f"cannot copy between a PatchEmbed of {p1}x{p2} patches with {c_in} channels and a "
                         f"LinearPatchEmbed of {lin_patch[0]}x{lin_patch[1]} patches with {lin_channels} channels: "
                         f"expected the same patch size and channels (the same pixels in each token)")
    return conv, linear


@torch.no_grad()
def conv_to_linear_(conv_embed: PatchEmbed, linear_embed: LinearPatchEmbed) -> LinearPatchEmbed:
    """Copy Conv2d weights [D, C, P, P] into Linear weights [D, (P P C)] so both give the same tokens."""
    conv, linear = _check_pair(conv_embed, linear_embed)
    linear.weight.copy_(rearrange(conv.weight, "d c p1 p2 -> d (p1 p2 c)"))
    linear.bias.copy_(conv.bias)
    return linear_embed


@torch.no_grad()
def linear_to_conv_(linear_embed: LinearPatchEmbed, conv_embed: PatchEmbed) -> PatchEmbed:
    """Inverse of :func:`conv_to_linear_`."""
    conv, linear = _check_pair(conv_embed, linear_embed)
    c = conv.weight.shape[1]
    p1, p2 = conv.weight.shape[2:]
    conv.weight.copy_(rearrange(linear.weight, "d (p1 p2 c) -> d c p1 p2", p1=p1, p2=p2, c=c))
    conv.bias.copy_(linear.bias)
    return conv_embed
