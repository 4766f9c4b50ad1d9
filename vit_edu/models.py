"""Named presets, with timm's names, and ``create_model``.

The paper's Table 1: Base (D=768, L=12, 12 heads, MLP 3072), Large (1024, 24, 16, 4096),
Huge (1280, 32, 16, 5120). Ti and S come from DeiT (Touvron et al. 2021). The ``vit_course_*``
presets are the small 32x32 models this course trains on a laptop CPU.
"""

from __future__ import annotations

from typing import Dict

from .config import ViTConfig
from .vit import VisionTransformer

_B = dict(dim=768, depth=12, heads=12, mlp_dim=3072)
_L = dict(dim=1024, depth=24, heads=16, mlp_dim=4096)
_H = dict(dim=1280, depth=32, heads=16, mlp_dim=5120)

PRESETS: Dict[str, dict] = {
    "vit_tiny_patch16_224": dict(patch_size=16, dim=192, depth=12, heads=3, mlp_dim=768),
    "vit_small_patch16_224": dict(patch_size=16, dim=384, depth=12, heads=6, mlp_dim=1536),
    "vit_base_patch16_224": dict(patch_size=16, **_B),
    "vit_base_patch32_224": dict(patch_size=32, **_B),
    "vit_large_patch16_224": dict(patch_size=16, **_L),
    "vit_large_patch32_224": dict(patch_size=32, **_L),
    "vit_huge_patch14_224": dict(patch_size=14, **_H),
    "vit_base_r50_s16_224": dict(patch_size=1, hybrid_layers=(3, 4, 9), **_B),
    # 32x32 course models: 4x4 patches -> 8x8 = 64 tokens (+1 class token)
    "vit_nano_patch4_32": dict(image_size=32, patch_size=4, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128),
    # the shipped checkpoint's model: 6 layers like a small ViT, but only 64 wide so it trains on 2 CPU cores
    "vit_course_patch4_32": dict(image_size=32, patch_size=4, num_classes=10, dim=64, depth=6, heads=4, mlp_dim=128),
    # the course model with 8x8 patches: 4x4 = 16 tokens + the class token, about 4x cheaper per image than patch 4;
    # still the paper's plain ViT (learned 1-D positions, class token), for runs that must fit a few minutes
    "vit_course_patch8_32": dict(image_size=32, patch_size=8, num_classes=10, dim=64, depth=6, heads=4, mlp_dim=128),
    # 8x8 patches -> 4x4 = 16 tokens, about 4x cheaper per image
    # than patch 4; fixed 2-D sin-cos positions and mean pooling (no class token), the "simple ViT" recipe
    # (Beyer et al. 2022), which learns faster from few images than learned positions + class token
    "vit_fast_patch8_32": dict(image_size=32, patch_size=8, num_classes=10, dim=64, depth=6, heads=4, mlp_dim=128,
                               class_token=False, pool="mean", pos_embedding="sincos2d"),
    # the default `python -m vit_edu train` model: the paper's hybrid idea (section 3.1) at toy scale. A
    # ResNet stem + one bottleneck stage (stride 4) gives an 8x8 feature map, embedded by a 1x1 "patch";
    # the convolutions supply the locality a plain ViT must learn from data, so it reaches ~98 % on the
    # shapes in under 300 s on a CPU where the plain ViTs above stay below 70 % (docs/training.md)
    "vit_hybrid_s4_32": dict(image_size=32, patch_size=1, hybrid_layers=(1,), num_classes=10, dim=64, depth=6, heads=4,
                             mlp_dim=128, class_token=False, pool="mean", pos_embedding="sincos2d"),
}


def list_models() -> list:
    return sorted(PRESETS)


def get_config(name: str, **overrides) -> ViTConfig:
    """The ViTConfig of a preset, with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown model name {name!r}; known models: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(ViTConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown ViTConfig field(s) {unknown} for create_model({name!r}); "
                        f"expected some of {sorted(ViTConfig.__dataclass_fields__)}")
    kwargs = {**PRESETS[name], **overrides}
    kwargs["extra"] = {**kwargs.get("extra", {}), "preset": name}
    return ViTConfig(**kwargs)


def create_model(name: str, pretrained: bool = False, **overrides) -> VisionTransformer:
    """Build a preset by timm's name, e.g. ``create_model('vit_base_patch16_224', num_classes=10)``.

    ``pretrained=True`` downloads timm's weights (needs internet) and converts them with ``from_timm``.
    """
    config = get_config(name, **overrides)
    if not pretrained:
        return VisionTransformer(config)
    from .convert import timm_pretrained

    return timm_pretrained(name, **overrides)
