"""Adversarial set for check_encoder_block (notebook 04): other correct styles and usual mistakes."""

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import vit_edu

CHECK = "encoder_block"


class MHA(nn.Module):
    def __init__(self, dim, heads, scale=True):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        s = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if self.scale else 1.0)
        return self.proj(rearrange(s.softmax(-1) @ v, "b h n d -> b n (h d)"))


class MLP(nn.Module):
    def __init__(self, dim, hidden, act=F.gelu):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class HandLN(nn.Module):
    def __init__(self, dim, eps=1e-6, unbiased=False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps, self.unbiased = eps, unbiased

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=self.unbiased)
        return (x - mu) / torch.sqrt(var + self.eps) * self.gamma + self.beta


# ------------------------------------------------------------------------------------------------- correct
class Standard(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), MHA(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), MLP(dim, mlp_dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PackageAttention(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = vit_edu.Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = vit_edu.Mlp(dim, mlp_dim, dropout=0.1)

    def forward(self, x):
        h = self.attn(self.norm1(x))
        y = x + h
        return y + self.mlp(self.norm2(y))


class HandWrittenNorms(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1, self.norm2 = HandLN(dim), HandLN(dim)
        self.attn, self.mlp = MHA(dim, heads), MLP(dim, mlp_dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class HandLNWeightBias(nn.Module):
    """A hand-written LayerNorm whose parameters carry nn.LayerNorm's names: its weights load into vit_edu.Block."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim)), eps

    def forward(self, x):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias


class HandWrittenNormsNamedLikeTorch(HandWrittenNorms):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.norm1, self.norm2 = HandLNWeightBias(dim), HandLNWeightBias(dim)


class FunctionalNormTanhGelu(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = MHA(dim, heads)
        self.mlp = MLP(dim, mlp_dim, act=lambda t: F.gelu(t, approximate="tanh"))

    def forward(self, x):
        n = self.norm1
        a = self.attn(F.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps))
        x = torch.add(x, a)
        return torch.add(x, self.mlp(self.norm2(x)))


class Dropout(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = MHA(dim, heads)
        self.mlp = MLP(dim, mlp_dim)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class LazyQkv(Dropout):
    """Right values, but attn.qkv has no shape until the first call: notebook 04 loads the weights before one."""

    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.attn.qkv = nn.LazyLinear(3 * dim)


class NormsInModuleList(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norms = nn.ModuleList([nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)])
        self.norm1, self.norm2 = self.norms  # two names for each norm, but two different norms: right
        self.attn, self.mlp = vit_edu.Attention(dim, heads), vit_edu.Mlp(dim, mlp_dim)

    def forward(self, x):
        x = x + self.attn(self.norms[0](x))
        return x + self.mlp(self.norms[1](x))


class VarMeanNorm(Standard):
    def ln(self, norm, x):
        var, mu = torch.var_mean(x, -1, unbiased=False, keepdim=True)
        return (x - mu) * torch.rsqrt(var + 1e-6) * norm.weight + norm.bias

    def forward(self, x):
        x = x + self.attn(self.ln(self.norm1, x))
        return x + self.mlp(self.ln(self.norm2, x))

class ShiftFirstLN(nn.Module):
    """A hand-written LayerNorm whose names are not the usual pair, the shift registered first."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.gain = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + self.eps) * self.gain + self.bias


class ShiftFirstNorms(HandWrittenNorms):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.norm1, self.norm2 = ShiftFirstLN(dim), ShiftFirstLN(dim)


CORRECT = [Standard, PackageAttention, HandWrittenNormsNamedLikeTorch, FunctionalNormTanhGelu, Dropout,
           VarMeanNorm]


# ------------------------------------------------------------------------------------------------ mistakes
def _block(forward, name):
    return type(name, (Standard,), {"forward": forward})


def _post_norm(s, x):
    x = s.norm1(x + s.attn(x))
    return s.norm2(x + s.mlp(x))


def _no_attn_residual(s, x):
    x = s.attn(s.norm1(x))
    return x + s.mlp(s.norm2(x))


def _no_mlp_residual(s, x):
    x = x + s.attn(s.norm1(x))
    return s.mlp(s.norm2(x))


def _swapped_norms(s, x):
    x = x + s.attn(s.norm2(x))
    return x + s.mlp(s.norm1(x))


def _normed_residual(s, x):
    x = s.norm1(x)
    x = x + s.attn(x)
    x = s.norm2(x)
    return x + s.mlp(x)


def _parallel(s, x):
    return x + s.attn(s.norm1(x)) + s.mlp(s.norm2(x))


def _dropout_on(s, x):
    x = x + F.dropout(s.attn(s.norm1(x)), 0.1)
    return x + s.mlp(s.norm2(x))


def _in_place(s, x):
    x += s.attn(s.norm1(x))
    return x + s.mlp(s.norm2(x))


def _detached_residual(s, x):
    h = x.detach() + s.attn(s.norm1(x))
    return h + s.mlp(s.norm2(h))


def _final_norm(s, x):
    x = x + s.attn(s.norm1(x))
    return s.norm2(x + s.mlp(s.norm2(x)))


def _norm1_twice(s, x):
    x = x + s.attn(s.norm1(x))
    return x + s.mlp(s.norm1(x))


Norm1Twice = _block(_norm1_twice, "Norm1Twice")
PostNorm = _block(_post_norm, "PostNorm")
NoAttnResidual = _block(_no_attn_residual, "NoAttnResidual")
NoMlpResidual = _block(_no_mlp_residual, "NoMlpResidual")
SwappedNorms = _block(_swapped_norms, "SwappedNorms")
NormedResidual = _block(_normed_residual, "NormedResidual")
Parallel = _block(_parallel, "Parallel")
MlpResidualOfInput = _block(lambda s, x: x + s.mlp(s.norm2(x + s.attn(s.norm1(x)))), "MlpResidualOfInput")
DropoutInEval = _block(_dropout_on, "DropoutInEval")
InPlaceResidual = _block(_in_place, "InPlaceResidual")
DetachedResidual = _block(_detached_residual, "DetachedResidual")
ExtraFinalNorm = _block(_final_norm, "ExtraFinalNorm")


class DefaultEps(Standard):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)


class SharedNormModule(Standard):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.norm2 = self.norm1


class SharedGammaBeta(nn.Module):
    """One hand-written norm's gamma and beta on the block, used before both sublayers."""

    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        self.norm1 = self.norm2 = lambda t: F.layer_norm(t, t.shape[-1:], eps=1e-6)
        self.attn, self.mlp = MHA(dim, heads), MLP(dim, mlp_dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x) * self.gamma + self.beta)
        return x + self.mlp(self.norm2(x) * self.gamma + self.beta)


class SharedHandNormParams(HandWrittenNorms):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.norm2.gamma = self.norm1.gamma
        self.norm2.beta = self.norm1.beta


class UnbiasedVariance(HandWrittenNorms):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.norm1, self.norm2 = HandLN(dim, unbiased=True), HandLN(dim, unbiased=True)


class UnscaledAttention(Standard):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.attn = MHA(dim, heads, scale=False)


class ReluMlp(Standard):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.mlp = MLP(dim, mlp_dim, act=F.relu)


class TorchMultiheadAttention(Standard):
    """nn.MultiheadAttention keeps U_qkv as in_proj_weight: not the contract's attn.qkv / attn.proj."""

    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class NormsWithoutBias(Standard):  # the contract's norms have their own gamma AND beta
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6, bias=False), nn.LayerNorm(dim, eps=1e-6, bias=False)


MISTAKES = [
    # the values are right, but the notebook's next cell loads the weights into vit_edu.Block by name
    (HandWrittenNorms, "load_state_dict"),
    (NormsInModuleList, "load_state_dict"),
    (ShiftFirstNorms, "load_state_dict"),
    (NormsWithoutBias, "no bias (beta)"),
    (TorchMultiheadAttention, "`self.attn.qkv`"),
    (MlpResidualOfInput, "adds the block input x"),
    (Norm1Twice, "norm1 is used for both sublayers"),
    (PostNorm, "post-norm"),
    (NoAttnResidual, "attention residual is missing"),
    (NoMlpResidual, "MLP residual is missing"),
    (SwappedNorms, "swapped"),
    (NormedResidual, "normalised input"),
    (Parallel, "reads the block input"),
    (DropoutInEval, "dropout"),
    (InPlaceResidual, "in place"),
    (DetachedResidual, "gradient"),
    (ExtraFinalNorm, "block's output"),
    (DefaultEps, "eps"),
    (SharedNormModule, "share"),
    (SharedGammaBeta, "shared"),
    (SharedHandNormParams, "share"),
    (UnbiasedVariance, "unbiased"),
    (UnscaledAttention, "self.attn"),
    (ReluMlp, "self.mlp"),
]


class InPlaceResiduals(Standard):
    """The residuals added in place to the sublayers' fresh outputs (never to the input)."""

    def forward(self, x):
        h = self.attn(self.norm1(x))
        h += x
        out = self.mlp(self.norm2(h))
        out += h
        return out


class KeepsFirstOutput(Standard):
    """Stores its output on self and returns it again for any input of the same shape."""

    def forward(self, x):
        if getattr(self, "kept", None) is None or self.kept.shape != x.shape:
            self.kept = super().forward(x)
        return self.kept


CORRECT.append(InPlaceResiduals)
MISTAKES.append((KeepsFirstOutput, "earlier call"))
MISTAKES.append((LazyQkv, "lazy"))


class Norm2WithDefaultEps(nn.Module):  # norm2's input is not faint inside the block: only norm2 alone shows it
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MHA(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


MISTAKES.append((Norm2WithDefaultEps, "self.norm2 has eps=1e-5"))


class LayerScale(Standard):  # timm's Block with init_values: a learned per-feature scale on each branch
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.ls1, self.ls2 = nn.Parameter(1e-5 * torch.ones(dim)), nn.Parameter(1e-5 * torch.ones(dim))

    def forward(self, x):
        x = x + self.ls1 * self.attn(self.norm1(x))
        return x + self.ls2 * self.mlp(self.norm2(x))


class PostNormWithAnUnusedScale(Standard):  # a usual mistake is still named when the block also has a stray parameter
    def __init__(self, dim, heads, mlp_dim):
        super().__init__(dim, heads, mlp_dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


MISTAKES += [(LayerScale, "LayerScale"), (PostNormWithAnUnusedScale, "post-norm")]


# ------------------------------------------------------------------ the MLP as an nn.Sequential of named children
class SequentialNamedMlp(nn.Module):  # right: mlp.fc1 / mlp.fc2 exist, and the state_dict names match vit_edu.Block
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), MHA(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(dim, mlp_dim), act=nn.GELU(), drop=nn.Dropout(0.0),
                                             fc2=nn.Linear(mlp_dim, dim)))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


CORRECT.append(SequentialNamedMlp)
