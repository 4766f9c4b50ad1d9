"""Adversarial set for check_mlp (notebook 04): other correct styles and usual mistakes."""

import math

import torch
import torch.nn.functional as F
from torch import nn

CHECK = "mlp"


# ------------------------------------------------------------------------------------------------- correct
class ModuleGELU(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TanhGELU(nn.Module):
    """The paper's JAX code (flax nn.gelu) uses the tanh approximation: right too."""

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class ErfByHand(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0))))


class TanhFormulaByHand(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        h = self.fc1(x)
        g = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        return self.fc2(g)


class Dropouts(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.drop1, self.drop2 = nn.Dropout(0.5), nn.Dropout(0.2)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(F.gelu(self.fc1(x)))))


class Lazy(Dropouts):
    """Right values, but fc1 has no shape until the first call: notebook 04 loads the weights before one."""

    def __init__(self, dim, hidden_dim):
        super().__init__(dim, hidden_dim)
        self.fc1 = nn.LazyLinear(hidden_dim)


class FunctionalWithWeights(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        h = torch.einsum("bnd,hd->bnh", x, self.fc1.weight) + self.fc1.bias
        return F.linear(F.gelu(h), self.fc2.weight, self.fc2.bias)


CORRECT = [ModuleGELU, TanhGELU, ErfByHand, TanhFormulaByHand, Dropouts, FunctionalWithWeights]


# ------------------------------------------------------------------------------------------------ mistakes
class _Base(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)


def _with(act, name):
    cls = type(name, (_Base,), {"forward": lambda self, x: self.fc2(act(self.fc1(x)))})
    return cls


ReLU = _with(F.relu, "ReLU")
NoActivation = _with(lambda t: t, "NoActivation")
SiLU = _with(F.silu, "SiLU")
QuickGELU = _with(lambda t: t * torch.sigmoid(1.702 * t), "QuickGELU")
TanhActivation = _with(torch.tanh, "TanhActivation")


class Residual(_Base):
    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(x)))


class GeluTwice(_Base):
    def forward(self, x):
        return F.gelu(self.fc2(F.gelu(self.fc1(x))))


class DropoutAlwaysOn(_Base):
    def forward(self, x):
        return self.fc2(F.dropout(F.gelu(self.fc1(x)), p=0.1, training=True))


class DetachedHidden(_Base):
    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)).detach())


class InPlaceScale(_Base):
    def forward(self, x):
        x.mul_(1.0)
        return self.fc2(F.gelu(self.fc1(x)))


class Float64Out(_Base):
    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x))).double()


class UnusedBias(_Base):
    def forward(self, x):
        return F.linear(F.gelu(self.fc1(x)), self.fc2.weight)


class NoBiasInFc2(_Base):  # the contract's fc2 has a bias; without one the weights do not load into vit_edu.Mlp
    def __init__(self, dim, hidden_dim):
        super().__init__(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class FrozenFirstLayer(_Base):
    def __init__(self, dim, hidden_dim):
        super().__init__(dim, hidden_dim)
        self.fc1.requires_grad_(False)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SequentialNamedLayers(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))

    def forward(self, x):
        return self.net(x)


MISTAKES = [
    (NoBiasInFc2, "with a bias"),
    (ReLU, "ReLU"),
    (NoActivation, "activation is missing"),
    (SiLU, "SiLU"),
    (QuickGELU, "sigmoid approximation"),
    (TanhActivation, "tanh is used"),
    (Residual, "residual"),
    (GeluTwice, "after fc2"),
    (DropoutAlwaysOn, "dropout"),
    (DetachedHidden, "gradient"),
    (InPlaceScale, "in place"),
    (Float64Out, "dtype"),
    (UnusedBias, "bias of fc2"),
    (FrozenFirstLayer, "requires_grad=False"),
    (SequentialNamedLayers, "no attribute `fc1`"),
]

MISTAKES.append((Lazy, "lazy"))


class _OwnLinear(nn.Module):  # a Linear written by hand; only fc2's weight is filled (zero-init, as in some heads)
    def __init__(self, i, o, zero=False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(o, i) if zero else torch.empty(o, i))
        self.bias = nn.Parameter(torch.empty(o))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class BiasesNeverFilled(ModuleGELU):  # right values with the check's numbers; the biases start as garbage
    def __init__(self, dim, hidden_dim):
        super().__init__(dim, hidden_dim)
        self.fc1, self.fc2 = _OwnLinear(dim, hidden_dim), _OwnLinear(hidden_dim, dim, zero=True)


MISTAKES.append((BiasesNeverFilled, "starting value"))


class ShrinksWeightsInForward(ModuleGELU):  # a hand-made "weight decay" inside forward: every call changes fc1
    def forward(self, x):
        with torch.no_grad():
            self.fc1.weight.mul_(0.99)
        return super().forward(x)


class NudgesBiasAfterUse(ModuleGELU):  # the first answer is right; the weights it leaves behind are not
    def forward(self, x):
        out = super().forward(x)
        self.fc2.bias.data += 0.01
        return out


MISTAKES += [(ShrinksWeightsInForward, "changes the module's own parameter"),
             (NudgesBiasAfterUse, "changes the module's own parameter")]


class ReusesAnOutputBuffer(ModuleGELU):  # right values on every call, but each call writes into the last answer
    def forward(self, x):
        y = super().forward(x)
        if getattr(self, "out", None) is None or self.out.shape != y.shape or self.out.dtype != y.dtype:
            self.out = torch.empty_like(y)
        with torch.no_grad():
            self.out.copy_(y)
        return self.out


MISTAKES.append((ReusesAnOutputBuffer, "changes when it is called again"))


class HiddenLayerNorm(nn.Module):  # timm's Mlp with a norm_layer: a LayerNorm on the hidden features
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.norm(F.gelu(self.fc1(x))))


class NormInFront(nn.Module):  # the block's pre-norm moved into the MLP
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


MISTAKES += [(HiddenLayerNorm, "parameters the contract's does not: norm.bias, norm.weight"),
             (NormInFront, "belong to the encoder block")]
