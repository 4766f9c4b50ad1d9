"""The Vision Transformer (Dosovitskiy et al. 2020), assembled from the pieces in this package.

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos        (eq. 1)
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                      (eq. 2)
    z_l  = MLP(LN(z'_l)) + z'_l                            (eq. 3)
    y    = LN(z_L^0)                                       (eq. 4)  -> head -> logits
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from .block import Block
from .config import ViTConfig
from .hybrid import HybridEmbed
from .patch_embed import LinearPatchEmbed, PatchEmbed, check_image
from .pos_embed import resize_pos_embed, sincos_2d_pos_embed


class VisionTransformer(nn.Module):
    """images [B, C, H, W] -> logits [B, num_classes]; with ``return_attention=True`` also the attention maps."""

    def __init__(self, config: Optional[ViTConfig] = None, **overrides):
        super().__init__()
        if config is None:
            config = ViTConfig(**overrides)
        elif overrides:
            config = ViTConfig.from_dict({**config.to_dict(), **overrides})
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = c = config

        if c.hybrid_layers is not None:
            self.patch_embed = HybridEmbed(c.image_size, c.patch_size, c.in_channels, c.dim, c.hybrid_layers,
                                           dynamic_img_size=c.dynamic_img_size)
        elif c.patch_embed == "conv":
            self.patch_embed = PatchEmbed(c.image_size, c.patch_size, c.in_channels, c.dim, c.dynamic_img_size)
        else:
            self.patch_embed = LinearPatchEmbed(c.image_size, c.patch_size, c.in_channels, c.dim, c.dynamic_img_size)
        self.num_prefix_tokens = 1 if c.class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.class_token else None

        if c.pos_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.dim))
        elif c.pos_embedding == "sincos2d":
            self.register_buffer("pos_embed", self._sincos(c.grid_size), persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(c.dropout)

        rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]  # stochastic depth grows linearly
        self.blocks = nn.ModuleList([
            Block(c.dim, c.heads, c.mlp_dim, qkv_bias=c.qkv_bias, dropout=c.dropout, attn_dropout=c.attn_dropout,
                  drop_path=r, norm_eps=c.norm_eps, fused_attn=c.fused_attn)
            for r in rates
        ])
        self.norm = nn.Identity() if c.use_fc_norm else nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.fc_norm = nn.LayerNorm(c.dim, eps=c.norm_eps) if c.use_fc_norm else nn.Identity()
        if c.representation_size:
            self.pre_logits = nn.Sequential(nn.Linear(c.dim, c.representation_size), nn.Tanh())
            head_in = c.representation_size
        else:
            self.pre_logits = nn.Identity()
            head_in = c.dim
        self.head = nn.Linear(head_in, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.init_weights()

    # ----------------------------------------------------------------------------------------------- init
    def _sincos(self, grid: Tuple[int, int]) -> torch.Tensor:
        pe = sincos_2d_pos_embed(self.config.dim, grid)
        if self.config.class_token:
            pe = torch.cat([torch.zeros(1, self.config.dim), pe], dim=0)  # the class token gets no position
        return pe[None]

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's ViT init: truncated normal (std 0.02) for Linear layers and the learned position embedding."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
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
        if self.config.head_zero_init and isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # -------------------------------------------------------------------------------------------- forward
    def set_fused_attn(self, fused: bool) -> "VisionTransformer":
        """Switch every block between the fused kernel and the explicit softmax(QK^T/sqrt(d))V."""
        self.config.fused_attn = bool(fused)
        for blk in self.blocks:
            blk.attn.fused_attn = bool(fused)
        return self

    def _pos_embed_for(self, grid: Tuple[int, int]) -> Optional[torch.Tensor]:
        if self.pos_embed is None:
            return None
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        if self.config.pos_embedding == "sincos2d":
            return self._sincos(grid).to(self.pos_embed)
        return resize_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size, self.num_prefix_tokens)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1: patches -> tokens, prepend the class token, add positions. [B, C, H, W] -> [B, T, D]."""
        pe, c = self.patch_embed, self.config
        check_image(x, c.in_channels, None if c.dynamic_img_size else c.image_size, pe.patch_size, "VisionTransformer")
        grid = (x.shape[-2] // pe.patch_size[0], x.shape[-1] // pe.patch_size[1])
        x = pe(x)  # [B, N, D]
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)  # [1, 1, D] -> [B, 1, D], a view: no copy
            x = torch.cat([cls, x], dim=1)  # [B, N+1, D]
        pos = self._pos_embed_for(grid)
        if pos is not None:
            x = x + pos
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor, return_attention: bool = False
                         ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Eqs. 1-3 and the final LayerNorm: [B, C, H, W] -> tokens [B, T, D]."""
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
        """[B, T, D] -> [B, D]: the class token (eq. 4) or the mean of the patch tokens."""
        if self.config.pool == "cls":
            return x[:, 0]
        return x[:, self.num_prefix_tokens:].mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc_norm(self.pool(x))
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
        if return_attention:
            x, attentions = self.forward_features(x, return_attention=True)
            return self.forward_head(x), attentions
        return self.forward_head(self.forward_features(x))

    # --------------------------------------------------------------------------------------------- extras
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def no_weight_decay(self) -> set:
        """Parameters AdamW should not decay: position embedding, class token, biases and norms."""
        skip = {"pos_embed", "cls_token"}
        return {n for n, p in self.named_parameters() if n in skip or p.ndim <= 1}
