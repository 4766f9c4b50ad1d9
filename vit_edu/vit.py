"""The Vision Transformer (Dosovitskiy et al. 2020), assembled from the pieces in this package.

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos        (eq. 1)
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                      (eq. 2)
    z_l  = MLP(LN(z'_l)) + z'_l                            (eq. 3)
    y    = LN(z_L^0)                                       (eq. 4)  -> head -> logits

``__init__`` and the forward methods follow these equations; the switches that exist so that timm's and
torchvision's weights load unchanged are gathered at the end of the class ("beyond eqs. 1-4").
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from .block import Block
from .config import ViTConfig, patch_grid
from .patch_embed import build_patch_embed
from .pos_embed import resize_pos_embed, sincos_2d_pos_embed


class VisionTransformer(nn.Module):
    """images [B, C, H, W] -> logits [B, num_classes]; with ``return_attention=True`` also the attention maps.

    The patch embedding is the one the config names (:func:`vit_edu.patch_embed.build_patch_embed`), or
    ``embed_layer``: a module [B, C, H, W] -> [B, N, D] with ``patch_size`` (in input pixels), ``grid_size``
    and a ``proj`` layer. It checks the input image; the model does not check it again.
    """

    def __init__(self, config: Optional[ViTConfig] = None, embed_layer: Optional[nn.Module] = None, **overrides):
        super().__init__()
        if config is None:
            config = ViTConfig(**overrides)
        elif not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        else:
            # a copy, checked again: a field changed after the config was made (config.image_size = 64) is
            # validated too, and set_fused_attn here leaves other models built from the same config alone
            config = dataclasses.replace(config)
            if overrides:
                config = ViTConfig.from_dict({**config.to_dict(), **overrides})
        self.config = c = config

        # eq. 1: the patch embedding E, the class token x_class, the position embedding E_pos
        self.patch_embed = build_patch_embed(c, owner=type(self).__name__) if embed_layer is None else embed_layer
        missing = [name for name in ("patch_size", "grid_size", "proj") if not hasattr(self.patch_embed, name)]
        if missing:
            raise TypeError(f"embed_layer must have patch_size, grid_size and proj, as vit_edu.PatchEmbed; "
                            f"{type(embed_layer).__name__} has no {', '.join(missing)}")
        if tuple(self.patch_embed.grid_size) != c.grid_size:
            raise ValueError(f"embed_layer makes a {tuple(self.patch_embed.grid_size)} grid of tokens; "
                             f"the config's position embedding is for {c.grid_size}")
        width = self.patch_embed.proj.weight.shape[0]  # out features of a Conv2d or a Linear
        if width != c.dim:
            raise ValueError(f"embed_layer makes tokens of {width} features; the config's dim is {c.dim}")
        self.num_prefix_tokens = 1 if c.class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.class_token else None
        if c.pos_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.dim))
        elif c.pos_embedding == "sincos2d":
            self.register_buffer("pos_embed", self._sincos(c.grid_size), persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(c.dropout)

        # eqs. 2-3: L pre-norm encoder blocks
        rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]  # stochastic depth grows linearly
        self.blocks = nn.ModuleList([
            Block(c.dim, c.heads, c.mlp_dim, qkv_bias=c.qkv_bias, dropout=c.dropout, attn_dropout=c.attn_dropout,
                  drop_path=r, norm_eps=c.norm_eps, fused_attn=c.fused_attn)
            for r in rates
        ])

        # eq. 4: y = LN(z_L^0), then the classifier. The paper's layout: norm = LayerNorm, fc_norm and
        # pre_logits = Identity (timm's variants: _final_norms, _pre_logits)
        self.norm, self.fc_norm = self._final_norms(c)
        self.pre_logits, head_in = self._pre_logits(c)
        self.head = nn.Linear(head_in, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.init_weights()

    # ------------------------------------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's ViT init: truncated normal (std 0.02) for Linear layers and the learned position embedding;
        with ``weight_init="jax"`` the paper's: Xavier-uniform Linears (MLP biases ~ N(0, 1e-6^2)), a zero head."""
        jax = self.config.weight_init == "jax"
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and jax and name.startswith("head"):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and jax:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=1e-6) if ".mlp." in name else nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        proj = self.patch_embed.proj  # like a Linear on the flattened patch: LeCun normal (variance 1/fan_in)
        fan_in = proj.weight[0].numel()
        nn.init.trunc_normal_(proj.weight, std=(1.0 / fan_in) ** 0.5)
        nn.init.zeros_(proj.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.config.head_zero_init and isinstance(self.head, nn.Linear):  # the paper zeroes it to fine-tune
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # --------------------------------------------------------------------------------------------- forward
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1: patches -> tokens, prepend the class token, add positions. [B, C, H, W] -> [B, T, D]."""
        tokens = self.patch_embed(x)  # [B, N, D]; the patch embedding checks the image
        if self.cls_token is not None:
            cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # [1, 1, D] -> [B, 1, D], a view: no copy
            tokens = torch.cat([cls, tokens], dim=1)  # [B, N+1, D]
        pos = self._pos_embed_for(patch_grid(x.shape[-2:], self.patch_embed.patch_size))  # [1, T, D] or None
        if pos is not None:
            tokens = tokens + pos
        return self.pos_drop(tokens)

    def forward_features(self, x: torch.Tensor, return_attention: bool = False
                         ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Eqs. 1-3 and the final LayerNorm: [B, C, H, W] -> tokens [B, T, D]."""
        _check_flag(return_attention, "return_attention")
        x = self.embed(x)
        attentions: List[torch.Tensor] = []
        for blk in self.blocks:
            if return_attention:
                x, attn = blk(x, return_attention=True)
                attentions.append(attn)  # [B, heads, T, T]
            else:
                x = blk(x)
        x = self.norm(x)
        return (x, attentions) if return_attention else x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, D]: the class token (eq. 4) or, with pool="mean", the mean of the patch tokens."""
        if self.config.pool == "cls":
            return x[:, 0]
        return x[:, self.num_prefix_tokens:].mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Eq. 4 and the classifier: [B, T, D] -> logits [B, num_classes]; pre_logits=True stops before the head."""
        x = self.fc_norm(self.pool(x))  # [B, D]
        x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        """images [B, C, H, W] -> logits [B, num_classes] (and the attention maps with ``return_attention``).

        Input dtypes: a floating-point image of any dtype (float32, float64, float16, bfloat16) is cast to
        the dtype of the model's weights before the patch embedding, so the logits come in the model's
        dtype (a float64 image into a float32 model gives float32 logits). Integer and bool images are
        refused with a TypeError (scale them yourself: ``x.float() / 255``). See ``patch_embed.check_image``.
        """
        _check_flag(return_attention, "return_attention")
        if return_attention:
            x, attentions = self.forward_features(x, return_attention=True)
            return self.forward_head(x), attentions
        return self.forward_head(self.forward_features(x))

    # ---------------------------------------------------------------------------------- beyond eqs. 1-4
    # Switches the paper's model does not use; their defaults turn them off. Most exist so that timm's or
    # torchvision's weights load unchanged (vit_edu/convert.py):
    #   pool="mean", fc_norm     timm's global_pool="avg": average the patch tokens, LayerNorm after pooling
    #   representation_size      the pre-logits Linear + Tanh of ImageNet-21k pre-training (torchvision)
    #   patch_embed="linear"     the paper's x_p E as a Linear; timm's Conv2d is the same map (build_patch_embed)
    #   dynamic_img_size         images of other sizes: the position table resized on the fly (timm)
    #   head_zero_init           the zeroed classifier of the paper's fine-tuning (init_weights)
    #   pos_embedding="sincos2d" fixed 2-D sin-cos positions, the "simple ViT" recipe (Beyer et al. 2022)
    @staticmethod
    def _final_norms(c: ViTConfig) -> Tuple[nn.Module, nn.Module]:
        """(norm before pooling, fc_norm after it): the paper's LayerNorm before, timm's avg pool after."""
        if c.use_fc_norm:
            return nn.Identity(), nn.LayerNorm(c.dim, eps=c.norm_eps)
        return nn.LayerNorm(c.dim, eps=c.norm_eps), nn.Identity()

    @staticmethod
    def _pre_logits(c: ViTConfig) -> Tuple[nn.Module, int]:
        """(pre-logits layer, its output width): Linear + Tanh if representation_size, else Identity."""
        if c.representation_size:
            return nn.Sequential(nn.Linear(c.dim, c.representation_size), nn.Tanh()), c.representation_size
        return nn.Identity(), c.dim

    def _pos_embed_for(self, grid: Tuple[int, int]) -> Optional[torch.Tensor]:
        """E_pos for a grid of patches: the table itself, or (dynamic_img_size) one made for another grid."""
        if self.pos_embed is None or tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        if self.config.pos_embedding == "sincos2d":
            return self._sincos(grid).to(self.pos_embed)
        return resize_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size, self.num_prefix_tokens)

    def _sincos(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The fixed 2-D sin-cos E_pos [1, T, D]; the class token gets no position (a zero row)."""
        pos = sincos_2d_pos_embed(self.config.dim, grid)  # [N, D]
        if self.config.class_token:
            pos = torch.cat([torch.zeros(1, self.config.dim), pos], dim=0)  # [N+1, D]
        return pos[None]

    # --------------------------------------------------------------------------------------------- extras
    def set_fused_attn(self, fused: bool) -> "VisionTransformer":
        """Switch every block between the fused kernel and the explicit softmax(QK^T/sqrt(d))V."""
        if not isinstance(fused, bool):  # bool("False") is True
            raise TypeError(f"set_fused_attn expects True or False, got {type(fused).__name__} {fused!r}")
        self.config.fused_attn = bool(fused)
        for blk in self.blocks:
            blk.attn.fused_attn = bool(fused)
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def no_weight_decay(self) -> set:
        """Parameters AdamW should not decay: position embedding, class token, biases and norms."""
        skip = {"pos_embed", "cls_token"}
        return {n for n, p in self.named_parameters() if n in skip or p.ndim <= 1}


def _check_flag(value: object, name: str) -> None:
    """A switch must be a bool: a string such as "no" is truthy and would switch it on."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
