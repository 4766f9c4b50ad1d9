"""Adversarial set for check_multi_head_attention (notebook 03): other correct styles and usual mistakes."""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

CHECK = "multi_head_attention"


def _softmax_attention(q, k, v):
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ v


# ------------------------------------------------------------------------------------------------- correct
class EinopsMHA(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.proj(rearrange(_softmax_attention(q, k, v), "b h n d -> b n (h d)"))


class ViewTranspose(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError("heads must divide dim")
        self.h, self.d = heads, dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class ChunkEinsum(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{dim} % {heads} != 0")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        w = torch.einsum("bhid,bhjd->bhij", q, k).mul(self.scale).softmax(-1)
        return self.proj(rearrange(torch.einsum("bhij,bhjd->bhid", w, v), "b h n d -> b n (h d)"))


class HeadLoop(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError("dim not divisible by heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        D = x.shape[-1]
        d = D // self.heads
        q, k, v = self.qkv(x).split(D, dim=-1)
        outs = []
        for h in range(self.heads):
            sl = slice(h * d, (h + 1) * d)
            w = (q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)).softmax(-1)
            outs.append(w @ v[..., sl])
        return self.proj(torch.cat(outs, dim=-1))


class LazyLinears(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError("dim must be a multiple of heads")
        self.heads = heads
        self.qkv = nn.LazyLinear(3 * dim)
        self.proj = nn.LazyLinear(dim)
        self.attn_drop = nn.Dropout(0.1)

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        w = self.attn_drop((q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1))
        return self.proj(rearrange(w @ v, "b h n d -> b n (h d)"))


class HeadsIntoBatch(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError("dim % heads != 0")
        self.h = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        d = D // self.h
        q, k, v = [t.reshape(B, N, self.h, d).transpose(1, 2).reshape(B * self.h, N, d) for t in self.qkv(x).split(D, -1)]
        w = torch.bmm(q * d ** -0.5, k.transpose(1, 2)).softmax(-1)
        return self.proj(torch.bmm(w, v).reshape(B, self.h, N, d).permute(0, 2, 1, 3).reshape(B, N, D))

CORRECT = [EinopsMHA, ViewTranspose, ChunkEinsum, HeadLoop, LazyLinears, HeadsIntoBatch]


# ------------------------------------------------------------------------------------------------ mistakes
class _Base(EinopsMHA):
    def split(self, x, pattern="b n (three h d) -> three b h n d"):
        return rearrange(self.qkv(x), pattern, three=3, h=self.heads)

    def merge(self, out):
        return rearrange(out, "b h n d -> b n (h d)")


class SplitHThreeD(_Base):
    def forward(self, x):
        q, k, v = self.split(x, "b n (h three d) -> three b h n d")
        return self.proj(self.merge(_softmax_attention(q, k, v)))


class HeadsDH(_Base):
    def forward(self, x):
        q, k, v = self.split(x, "b n (three d h) -> three b h n d")
        return self.proj(rearrange(_softmax_attention(q, k, v), "b h n d -> b n (d h)"))


class MergeByReshape(_Base):
    def forward(self, x):
        q, k, v = self.split(x)
        return self.proj(_softmax_attention(q, k, v).reshape(x.shape))


class SplitByReshape(_Base):
    def forward(self, x):
        B, N, D = x.shape
        q, k, v = (t.reshape(B, self.heads, N, D // self.heads) for t in self.qkv(x).chunk(3, -1))
        return self.proj(self.merge(_softmax_attention(q, k, v)))


class NoScale(_Base):
    def forward(self, x):
        q, k, v = self.split(x)
        return self.proj(self.merge((q @ k.transpose(-2, -1)).softmax(-1) @ v))


class ModelDimScale(_Base):
    def forward(self, x):
        q, k, v = self.split(x)
        return self.proj(self.merge((q @ k.transpose(-2, -1) / math.sqrt(x.shape[-1])).softmax(-1) @ v))


class SoftmaxOverQueries(_Base):
    def forward(self, x):
        q, k, v = self.split(x)
        return self.proj(self.merge((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-2) @ v))


class NoProjection(_Base):
    def forward(self, x):
        return self.merge(_softmax_attention(*self.split(x)))


class KQVOrder(_Base):
    def forward(self, x):
        k, q, v = self.split(x)
        return self.proj(self.merge(_softmax_attention(q, k, v)))


class AssertInsteadOfValueError(_Base):
    def __init__(self, dim, heads):
        assert dim % heads == 0, "dim must be divisible by heads"
        super().__init__(dim, heads)


class NoDivisibilityCheck(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.proj(rearrange(_softmax_attention(q, k, v), "b h n d -> b n (h d)"))


class DropoutInEval(_Base):
    def forward(self, x):
        q, k, v = self.split(x)
        w = F.dropout((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1), 0.1)
        return self.proj(self.merge(w @ v))


class DetachedValues(_Base):
    def forward(self, x):
        q, k, v = self.split(x)
        return self.proj(self.merge(_softmax_attention(q, k, v.detach())))


class InPlaceInput(_Base):
    def forward(self, x):
        x.mul_(1.0)
        x += 0.1
        return super().forward(x)


class SingleHead(_Base):
    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(_softmax_attention(q, k, v))


class ReturnsWeights(_Base):
    def forward(self, x):
        q, k, v = self.split(x)
        w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
        return self.proj(self.merge(w @ v)), w


class SeparateLinears(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError("no")
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = (rearrange(f(x), "b n (h d) -> b h n d", h=self.heads) for f in (self.q, self.k, self.v))
        return self.proj(rearrange(_softmax_attention(q, k, v), "b h n d -> b n (h d)"))


class ScaleByHeads(_Base):
    def forward(self, x):
        q, k, v = self.split(x)
        return self.proj(self.merge((q @ k.transpose(-2, -1) / math.sqrt(self.heads)).softmax(-1) @ v))


class ProjWithoutBias(_Base):
    def forward(self, x):
        return self.merge(_softmax_attention(*self.split(x))) @ self.proj.weight.T


class QkvBiasFalse(_Base):  # the contract's qkv has a bias (qkv_bias=False is another model)
    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x):
        return self.proj(self.merge(_softmax_attention(*self.split(x))))


class ProjUntransposed(_Base):
    def forward(self, x):
        return self.merge(_softmax_attention(*self.split(x))) @ self.proj.weight + self.proj.bias


class HeadCountAsHeadSize(_Base):
    def forward(self, x):  # d=self.heads where the pattern needs h=self.heads: D/heads heads of `heads` features
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, d=self.heads)
        return self.proj(self.merge(_softmax_attention(q, k, v)))


class ScaleAsBuffer(EinopsMHA):  # right values; the buffer is an unexpected key when loaded into vit_edu.Attention
    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.register_buffer("scale", torch.tensor((dim // heads) ** -0.5))


class ScaleAsPlainAttribute(EinopsMHA):  # right: not in the state_dict, so it loads
    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.scale = (dim // heads) ** -0.5
        self.register_buffer("unsaved", torch.zeros(1), persistent=False)


CORRECT.append(ScaleAsPlainAttribute)

MISTAKES = [
    (ScaleAsBuffer, "load_state_dict"),
    (QkvBiasFalse, "with a bias"),
    (HeadCountAsHeadSize, "head size are swapped"),
    (ProjWithoutBias, "bias of self.proj"),
    (ProjUntransposed, "untransposed"),
    (SplitHThreeD, "(h three d)"),
    (HeadsDH, "(d h)"),
    (MergeByReshape, "merged with a plain reshape"),
    (SplitByReshape, "split into heads with a plain reshape"),
    (NoScale, "scale is missing"),
    (ModelDimScale, "model dim"),
    (SoftmaxOverQueries, "wrong axis"),
    (NoProjection, "projection is missing"),
    (KQVOrder, "wrong order"),
    (AssertInsteadOfValueError, "ValueError"),
    (NoDivisibilityCheck, "ValueError"),
    (DropoutInEval, "dropout"),
    (DetachedValues, "gradient"),
    (InPlaceInput, "in place"),
    (SingleHead, "single head"),
    (ReturnsWeights, "single torch.Tensor"),
    (SeparateLinears, "no attribute `qkv`"),
    (ScaleByHeads, "number of heads"),
]


# other registrations and layouts of the same computation
class BareQkvParameters(nn.Module):  # right values, but `qkv` is a plain Module notebook 03 cannot call: msa.qkv(x)
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads} does not divide dim={dim}")
        self.heads = heads
        self.qkv = nn.Module()
        self.qkv.weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.qkv.bias = nn.Parameter(torch.empty(3 * dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        y = torch.addmm(self.qkv.bias, x.reshape(-1, x.shape[-1]), self.qkv.weight.T).reshape(*x.shape[:2], -1)
        q, k, v = rearrange(y, "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.proj(rearrange(_softmax_attention(q, k, v), "b h n d -> b n (h d)"))


class TokensMajorEinsum(EinopsMHA):  # right: heads kept after the tokens, [B, N, h, d], never transposed
    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b n h d", three=3, h=self.heads)
        w = torch.einsum("bnhd,bmhd->bhnm", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
        return self.proj(torch.einsum("bhnm,bmhd->bnhd", w, v).flatten(2))


class KeepsFirstOutput(EinopsMHA):
    """Stores its output on self and returns it again for any input of the same shape."""
    def forward(self, x):
        kept = getattr(self, "kept", None)
        if kept is None or kept.shape != x.shape:
            self.kept = super().forward(x)
        return self.kept


CORRECT += [TokensMajorEinsum]
MISTAKES.append((BareQkvParameters, "on their own"))
MISTAKES.append((KeepsFirstOutput, "earlier call"))


class _OwnLinear(nn.Module):  # a Linear written by hand, its parameters reserved with torch.Tensor(o, i) only
    def __init__(self, i, o):
        super().__init__()
        self.weight = nn.Parameter(torch.Tensor(o, i))
        self.bias = nn.Parameter(torch.Tensor(o))

    def forward(self, x):
        return x @ self.weight.T + self.bias


class OwnLinearNeverFilled(EinopsMHA):  # right values with the check's numbers; it would train from garbage
    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.qkv, self.proj = _OwnLinear(dim, 3 * dim), _OwnLinear(dim, dim)


MISTAKES.append((OwnLinearNeverFilled, "starting value"))


class ValueErrorOnlyInForward(nn.Module):  # builds MultiHeadAttention(10, 3); the contract refuses it in __init__
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        if x.shape[-1] % self.heads:
            raise ValueError(f"dim={x.shape[-1]} is not divisible by heads={self.heads}")
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.proj(rearrange(_softmax_attention(q, k, v), "b h n d -> b n (h d)"))


MISTAKES.append((ValueErrorOnlyInForward, "in __init__"))


# ----------------------------------------------------- torch's own multi-head routine fed with qkv and proj weights
class MultiheadForwardFunctional(nn.Module):  # right: F.multi_head_attention_forward packs q, k, v as (three h d)
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError("dim % heads != 0")
        self.dim, self.heads = dim, heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        t = x.transpose(0, 1)  # [N, B, D]
        out, _ = F.multi_head_attention_forward(
            t, t, t, self.dim, self.heads, self.qkv.weight, self.qkv.bias, None, None, False, 0.0,
            self.proj.weight, self.proj.bias, training=self.training, need_weights=False)
        return out.transpose(0, 1)


CORRECT.append(MultiheadForwardFunctional)
