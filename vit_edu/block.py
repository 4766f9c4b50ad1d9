"""The Transformer encoder block (paper eqs. 2-3), pre-norm as in the ViT paper:

    z' = MSA(LN(z)) + z
    z  = MLP(LN(z')) + z'
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .attention import Attention
from .config import check_sizes


class Mlp(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout, applied to every token independently."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        check_sizes(dim=dim, hidden_dim=hidden_dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        # exact (erf) GELU, as timm and torchvision. The paper's JAX code uses flax's nn.gelu, whose default is
        # the tanh approximation; the two differ by less than 5e-4 everywhere, so converted weights still match.
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def drop_path(x: torch.Tensor, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch for a random subset of samples, rescale the rest."""
    _check_rate(p)
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep if keep > 0 else x * mask  # p = 1: every branch dropped (zeros, as timm), not 0/0


def _check_rate(p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:  # NaN fails too
        raise ValueError(f"drop_path rate must be a number in [0, 1], got {p!r}")


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        _check_rate(p)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Block(nn.Module):
    """Pre-norm encoder block: [B, T, D] -> [B, T, D]."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, qkv_bias: bool = True, dropout: float = 0.0,
                 attn_dropout: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6, fused_attn: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout, proj_dropout=dropout,
                              fused_attn=fused_attn)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, dropout=dropout)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> torch.Tensor | Tuple[torch.Tensor, torch.Tensor]:
        dim = self.norm1.normalized_shape[0]
        if x.ndim != 3 or x.shape[-1] != dim:  # checked here: norm1 would name only its own width
            hint = " (one sequence? add a batch dimension with x.unsqueeze(0))" if x.ndim == 2 else ""
            raise ValueError(f"Block expects tokens [B, N, {dim}], got shape {tuple(x.shape)}{hint}")
        if return_attention:
            a, attn = self.attn(self.norm1(x), return_attention=True)
        else:
            a, attn = self.attn(self.norm1(x)), None
        x = x + self.drop_path1(a)  # eq. 2
        x = x + self.drop_path2(self.mlp(self.norm2(x)))  # eq. 3
        return (x, attn) if return_attention else x
