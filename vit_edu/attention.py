"""Multi-head self-attention (paper eqs. 5-8 in appendix A), written with einops.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

Two paths compute the same thing:

* explicit: the formula above, step by step (:func:`attention_with_weights`); it can hand back the
  attention probabilities A.
* fused: ``torch.nn.functional.scaled_dot_product_attention``, one kernel, faster and lighter.

Asking for the attention probabilities always takes the explicit path, whatever ``fused_attn`` says,
so attention maps work with fused attention too (timm's forward hooks see nothing there).
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import check_sizes


def attention_with_weights(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, training: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v for q, k, v of shape [..., N, d]; returns (out [..., N, d], attn [..., N, N]).

    Unlike ``F.scaled_dot_product_attention`` it also returns the attention probabilities (before dropout).
    The 1/sqrt(d) keeps the logits' variance at 1 when q and k have unit-variance entries; without it
    the softmax saturates to one-hot rows and its gradients vanish.
    """
    if not all(isinstance(t, torch.Tensor) and t.ndim >= 2 for t in (q, k, v)):
        got = ", ".join(str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (q, k, v))
        raise ValueError(f"attention expects q, k, v as tensors [..., N, d], got {got}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention expects q [..., N, d], k [..., M, d] and v [..., M, d_v]: q and k with the same "
                         f"d, k and v with the same M; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] == 0:
        raise ValueError(f"attention expects a head width d >= 1, got q {tuple(q.shape)} (d = 0 has no 1/sqrt(d) scale)")
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = (q * scale) @ k.transpose(-2, -1)  # [..., N, N]
    attn = logits.softmax(dim=-1)  # each row (one query) sums to 1 over the keys
    weights = F.dropout(attn, p=dropout_p, training=training) if dropout_p > 0 else attn
    return weights @ v, attn


_warned_old_name = False


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, training: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Deprecated name of :func:`attention_with_weights`.

    Renamed because it shadowed ``torch.nn.functional.scaled_dot_product_attention``, which returns only ``out``.
    """
    global _warned_old_name
    if not _warned_old_name:
        _warned_old_name = True
        warnings.warn("vit_edu.scaled_dot_product_attention is renamed vit_edu.attention_with_weights (it returns "
                      "(out, attn), unlike torch's F.scaled_dot_product_attention); the old name will be removed",
                      DeprecationWarning, stacklevel=2)
    return attention_with_weights(q, k, v, dropout_p=dropout_p, training=training)


class Attention(nn.Module):
    """Multi-head self-attention: [B, N, D] -> [B, N, D]."""

    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = True, attn_dropout: float = 0.0,
                 proj_dropout: float = 0.0, fused_attn: bool = True):
        super().__init__()
        check_sizes(dim=dim, heads=heads)
        if dim % heads != 0:
            raise ValueError(f"dim must be divisible by heads: dim={dim}, heads={heads}")
        if not isinstance(fused_attn, bool):  # "False" is a truthy string: it would pick the fused path
            raise TypeError(f"fused_attn must be True or False, got {type(fused_attn).__name__} {fused_attn!r}")
        self.heads = heads
        self.head_dim = dim // heads
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)  # W_q, W_k, W_v stacked: out features (three h d)
        # dropout on the attention probabilities: a module, so print(model) shows it; both paths below use its p
        self.attn_drop = nn.Dropout(attn_dropout)
        self.proj = nn.Linear(dim, dim)  # W_o mixes the heads back together
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> torch.Tensor | Tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 3 or x.shape[-1] != self.qkv.in_features:
            hint = " (one sequence? add a batch dimension with x.unsqueeze(0))" if x.ndim == 2 else ""
            raise ValueError(f"Attention expects tokens [B, N, {self.qkv.in_features}], got shape "
                             f"{tuple(x.shape)}{hint}")
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)  # 3 x [B, h, N, d]
        attn: Optional[torch.Tensor] = None
        if self.fused_attn and not return_attention:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            out, attn = attention_with_weights(q, k, v, dropout_p=self.attn_drop.p, training=self.training)
        out = rearrange(out, "b h n d -> b n (h d)")  # concatenate the heads: [B, N, D]
        out = self.proj_drop(self.proj(out))
        return (out, attn) if return_attention else out  # attn: [B, h, N, N]
