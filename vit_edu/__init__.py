"""vit_edu: a readable Vision Transformer you can check to the last logit.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale" (2020).
"""

from ._startup import install as _install

_install()  # first, before torch is imported: Ctrl-C while `python -m vit_edu` starts is one line, not a traceback

from .attention import Attention, attention_with_weights, scaled_dot_product_attention  # the last: old name
from .block import Block, DropPath, Mlp
from .config import ViTConfig
from .convert import from_timm, from_torchvision, load_state_dict_file, timm_pretrained
from .hybrid import HybridEmbed, ResNetBackbone  # also registers the hybrid's patch embedding (build_patch_embed)
from .models import PRESETS, create_model, get_config, list_models
from .patch_embed import LinearPatchEmbed, PatchEmbed, conv_to_linear_, linear_to_conv_, patchify, unpatchify
from .pos_embed import resize_pos_embed, sincos_2d_pos_embed
from .vit import VisionTransformer

__version__ = "0.1.0"

__all__ = [
    "Attention", "Block", "DropPath", "HybridEmbed", "LinearPatchEmbed", "Mlp", "PRESETS", "PatchEmbed",
    "ResNetBackbone", "ViTConfig", "VisionTransformer", "attention_with_weights", "conv_to_linear_", "create_model",
    "from_timm", "from_torchvision", "get_config", "linear_to_conv_", "list_models", "load_state_dict_file",
    "patchify", "resize_pos_embed", "scaled_dot_product_attention", "sincos_2d_pos_embed", "timm_pretrained",
    "unpatchify",
]
