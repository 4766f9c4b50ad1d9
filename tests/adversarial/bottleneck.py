"""Adversarial set for check_bottleneck (notebook 09): other correct styles and usual mistakes.

The contract: ``Bottleneck(in_channels, out_channels, stride=1)`` with ``conv1`` (1x1, in -> out/4), ``norm1``,
``conv2`` (3x3, carries the stride), ``norm2``, ``conv3`` (1x1, -> out), ``norm3`` and ``downsample`` (None, or a
module with ``conv`` (1x1, stride) and ``norm``) when the stride or the channel count changes; weight-standardized
convolutions without bias and TensorFlow 'SAME' padding, ``nn.GroupNorm(32, C, eps=1e-5)``; ReLU after norm1, after
norm2 and after the residual sum.
"""

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from vit_edu.hybrid import StdConv2dSame

CHECK = "bottleneck"


# ------------------------------------------------------------------------------------------------- helpers
def _same_pad(x, k, s, value=0.0):
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


class WSConv(nn.Module):
    """Weight-standardized conv written by hand (torch.var_mean per filter), no bias, 'SAME' padding."""

    def __init__(self, c_in, c_out, k, stride=1, unbiased=False, center=True, scale=True, per_filter=True,
                 symmetric_padding=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k) / math.sqrt(c_in * k * k))
        self.k, self.stride = k, stride
        self.unbiased, self.center, self.scale, self.per_filter = unbiased, center, scale, per_filter
        self.symmetric_padding = symmetric_padding

    def forward(self, x):
        w = self.weight
        dims = (1, 2, 3) if self.per_filter else (0, 1, 2, 3)
        var, mean = torch.var_mean(w, dim=dims, keepdim=True, unbiased=self.unbiased)
        if self.center:
            w = w - mean
        if self.scale:
            w = w / torch.sqrt(var + 1e-8)
        if self.symmetric_padding:
            return F.conv2d(x, w, stride=self.stride, padding=self.k // 2)
        return F.conv2d(_same_pad(x, self.k, self.stride), w, stride=self.stride)


class GN(nn.Module):
    """GroupNorm with its own parameters, through F.group_norm."""

    def __init__(self, c, groups=32):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.groups = groups

    def forward(self, x):
        return F.group_norm(x, self.groups, self.weight, self.bias, eps=1e-5)


def _make(conv, norm, in_channels, out_channels, stride, mid=None, always_project=False, project=True,
          project_norm=True):
    """A bottleneck whose pieces come from the factories conv(c_in, c_out, k, stride) and norm(c)."""

    class _Block(nn.Module):
        def __init__(self):
            super().__init__()
            m = mid(out_channels) if mid else out_channels // 4
            self.conv1, self.norm1 = conv(in_channels, m, 1, 1), norm(m)
            self.conv2, self.norm2 = conv(m, m, 3, stride), norm(m)
            self.conv3, self.norm3 = conv(m, out_channels, 1, 1), norm(out_channels)
            needs = stride != 1 or in_channels != out_channels
            if project and (needs or always_project):
                parts = [("conv", conv(in_channels, out_channels, 1, stride))]
                if project_norm:
                    parts.append(("norm", norm(out_channels)))
                self.downsample = nn.Sequential(OrderedDict(parts))
            else:
                self.downsample = None

    return _Block()


def _std(c_in, c_out, k, s):
    return StdConv2dSame(c_in, c_out, k, stride=s)


def _gn(c):
    return nn.GroupNorm(32, c, eps=1e-5)


# ------------------------------------------------------------------------------------------------- correct
class CorrectPackagePieces(nn.Module):
    """StdConv2dSame and nn.GroupNorm, a ModuleDict shortcut."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        mid = out_channels // 4
        self.conv1 = StdConv2dSame(in_channels, mid, 1)
        self.norm1 = nn.GroupNorm(32, mid, eps=1e-5)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride=stride)
        self.norm2 = nn.GroupNorm(32, mid, eps=1e-5)
        self.conv3 = StdConv2dSame(mid, out_channels, 1)
        self.norm3 = nn.GroupNorm(32, out_channels, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.ModuleDict({"conv": StdConv2dSame(in_channels, out_channels, 1, stride=stride),
                                             "norm": nn.GroupNorm(32, out_channels, eps=1e-5)})

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample["norm"](self.downsample["conv"](x))
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(y + shortcut)


class CorrectHandWritten(nn.Module):
    """Own weight standardization and GroupNorm, Sequential(OrderedDict) shortcut, in-place ReLU on fresh tensors."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        mid = out_channels // 4
        self.conv1, self.norm1 = WSConv(in_channels, mid, 1), GN(mid)
        self.conv2, self.norm2 = WSConv(mid, mid, 3, stride), GN(mid)
        self.conv3, self.norm3 = WSConv(mid, out_channels, 1), GN(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(OrderedDict(conv=WSConv(in_channels, out_channels, 1, stride),
                                                        norm=GN(out_channels)))
        else:
            self.downsample = None

    def forward(self, x):
        out = self.norm1(self.conv1(x)).relu_()
        out = self.norm2(self.conv2(out)).relu_()
        out = self.norm3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return out.clamp_min(0)


class CorrectUnbiasedStd(nn.Module):
    """torch.std's default (unbiased) in the standardization: every filter scaled by the same constant,
    which the GroupNorm after each convolution removes, so the block computes the same function."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        conv = lambda ci, co, k, s: WSConv(ci, co, k, s, unbiased=True)  # noqa: E731
        b = _make(conv, _gn, in_channels, out_channels, stride)
        self.conv1, self.norm1, self.conv2, self.norm2 = b.conv1, b.norm1, b.conv2, b.norm2
        self.conv3, self.norm3, self.downsample = b.conv3, b.norm3, b.downsample

    def forward(self, x):
        h = torch.relu(self.norm1(self.conv1(x)))
        h = torch.relu(self.norm2(self.conv2(h)))
        h = self.norm3(self.conv3(h))
        s = self.downsample(x) if self.downsample is not None else x
        return torch.relu(h + s)


class CorrectSequentialMain(nn.Module):
    """The main path as a list of (conv, norm, act) triples looped over; padding done per layer."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        mid = out_channels // 4
        self.conv1 = StdConv2dSame(in_channels, mid, kernel_size=1)
        self.conv2 = StdConv2dSame(mid, mid, kernel_size=3, stride=stride)
        self.conv3 = StdConv2dSame(mid, out_channels, kernel_size=1)
        self.norm1, self.norm2, self.norm3 = GN(mid), GN(mid), GN(out_channels)
        project = stride > 1 or in_channels != out_channels
        self.downsample = (nn.Sequential(OrderedDict(conv=StdConv2dSame(in_channels, out_channels, 1, stride=stride),
                                                     norm=GN(out_channels))) if project else None)

    def forward(self, x):
        h = x
        for conv, norm, act in ((self.conv1, self.norm1, True), (self.conv2, self.norm2, True),
                                (self.conv3, self.norm3, False)):
            h = norm(conv(h))
            if act:
                h = F.relu(h)
        skip = x if self.downsample is None else self.downsample(x)
        return torch.maximum(h + skip, torch.zeros((), dtype=h.dtype, device=h.device))


CORRECT = [CorrectPackagePieces, CorrectHandWritten, CorrectUnbiasedStd, CorrectSequentialMain]


# ------------------------------------------------------------------------------------------------ mistakes
class _Base(nn.Module):
    """The correct block, its pieces configurable; forward variants in the subclasses."""

    conv = staticmethod(_std)
    norm = staticmethod(_gn)
    mid = None
    always_project = False
    project = True
    project_norm = True

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        b = _make(type(self).conv, type(self).norm, in_channels, out_channels, stride, mid=type(self).mid,
                  always_project=self.always_project, project=self.project, project_norm=self.project_norm)
        self.conv1, self.norm1, self.conv2, self.norm2 = b.conv1, b.norm1, b.conv2, b.norm2
        self.conv3, self.norm3, self.downsample = b.conv3, b.norm3, b.downsample

    def shortcut(self, x):
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


class MistakeReluBeforeSum(_Base):
    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        return y + self.shortcut(x)


class MistakeNoFinalRelu(_Base):
    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return self.norm3(self.conv3(y)) + self.shortcut(x)


class MistakeNoReluAfterNorm2(_Base):
    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        y = self.norm3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


class MistakeStrideOnConv1(_Base):
    """ResNet v1's place for the stride: the first 1x1 conv instead of the 3x3."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__(in_channels, out_channels, stride)
        mid = out_channels // 4
        self.conv1 = StdConv2dSame(in_channels, mid, 1, stride=stride)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride=1)


class MistakePlainConv(_Base):
    conv = staticmethod(lambda ci, co, k, s: WSConv(ci, co, k, s, center=False, scale=False))


class MistakeNoMeanSubtraction(_Base):
    conv = staticmethod(lambda ci, co, k, s: WSConv(ci, co, k, s, center=False))


class MistakeWholeTensorStandardized(_Base):
    conv = staticmethod(lambda ci, co, k, s: WSConv(ci, co, k, s, per_filter=False))


class MistakeSymmetricPadding(_Base):
    conv = staticmethod(lambda ci, co, k, s: WSConv(ci, co, k, s, symmetric_padding=True))


class MistakeNoProjection(_Base):
    project = False


class MistakeAlwaysProject(_Base):
    always_project = True


class MistakeProjectionWithoutNorm(_Base):
    project_norm = False


class MistakeBatchNorm(_Base):
    norm = staticmethod(lambda c: nn.BatchNorm2d(c, eps=1e-5))


class MistakeLayerNormLikeGroupNorm(_Base):
    norm = staticmethod(lambda c: nn.GroupNorm(1, c, eps=1e-5))


class MistakeMidHalf(_Base):
    mid = staticmethod(lambda out: out // 2)


class MistakeSharedNorm(_Base):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__(in_channels, out_channels, stride)
        self.norm2 = self.norm1  # one GroupNorm (one gamma/beta) used twice


class MistakeNoResidual(_Base):
    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(self.norm3(self.conv3(y)))


class MistakeInPlaceInput(_Base):
    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        s = self.shortcut(x)
        s += y  # s is x itself when there is no projection
        return F.relu(s)


class MistakeDetached(_Base):
    def forward(self, x):
        return super().forward(x).detach()


class MistakeFloat64(_Base):
    def forward(self, x):
        return super().forward(x).double()


class MistakeConvBias(_Base):
    conv = staticmethod(lambda ci, co, k, s: nn.Conv2d(ci, co, k, stride=s, padding=k // 2, bias=True))


class MistakeGroupNormEps6(_Base):
    """The ViT's LayerNorm eps carried over to the ResNet's GroupNorm."""
    norm = staticmethod(lambda c: nn.GroupNorm(32, c, eps=1e-6))


class MistakeGroupNormEps3(_Base):
    norm = staticmethod(lambda c: nn.GroupNorm(32, c, eps=1e-3))


class MistakeTimmDefaultStdEps(_Base):
    """timm's StdConv2dSame with its default eps (1e-6); this model's weight standardization uses 1e-8."""
    conv = staticmethod(lambda c_in, c_out, k, s: StdConv2dSame(c_in, c_out, k, stride=s, eps=1e-6))


MISTAKES = [
    (MistakeTimmDefaultStdEps, "1e-6"),
    (MistakeGroupNormEps6, "eps"),
    (MistakeGroupNormEps3, "eps"),
    (MistakeReluBeforeSum, "relu"),
    (MistakeNoFinalRelu, "relu"),
    (MistakeNoReluAfterNorm2, "relu"),
    (MistakeStrideOnConv1, "stride"),
    (MistakePlainConv, "standardi"),
    (MistakeNoMeanSubtraction, "standardi"),
    (MistakeWholeTensorStandardized, "standardi"),
    (MistakeSymmetricPadding, "same"),
    (MistakeNoProjection, "downsample"),
    (MistakeAlwaysProject, "downsample"),
    (MistakeProjectionWithoutNorm, "downsample.norm"),
    (MistakeBatchNorm, "groupnorm"),
    (MistakeLayerNormLikeGroupNorm, "groupnorm"),
    (MistakeMidHalf, "out_channels // 4"),
    (MistakeSharedNorm, "share"),
    (MistakeNoResidual, "shortcut"),
    (MistakeInPlaceInput, "in place"),
    (MistakeDetached, "gradient"),
    (MistakeFloat64, "dtype"),
    (MistakeConvBias, "bias"),
]


# weight standardization as a parametrization (torch.nn.utils.parametrize): the weights are then stored as
# conv1.parametrizations.weight.original, and conv1.weight is computed from them. The values are right, but
# notebook 09 loads the answer's weights into vit_edu.hybrid.Bottleneck by name: a mistake, named
class _Standardize(nn.Module):
    def forward(self, w):
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (w - mean) / torch.sqrt(var + 1e-8)


class _SameConv(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(_same_pad(x, self.kernel_size[0], self.stride[0]), self.weight, None, self.stride)


def _parametrized_conv(c_in, c_out, k, stride=1):
    conv = _SameConv(c_in, c_out, k, stride=stride, bias=False)
    parametrize.register_parametrization(conv, "weight", _Standardize())
    return conv


class MistakeParametrized(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        mid = out_channels // 4
        self.conv1, self.norm1 = _parametrized_conv(in_channels, mid, 1), nn.GroupNorm(32, mid)
        self.conv2, self.norm2 = _parametrized_conv(mid, mid, 3, stride), nn.GroupNorm(32, mid)
        self.conv3, self.norm3 = _parametrized_conv(mid, out_channels, 1), nn.GroupNorm(32, out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Module()
            self.downsample.conv = _parametrized_conv(in_channels, out_channels, 1, stride)
            self.downsample.norm = nn.GroupNorm(32, out_channels)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample.norm(self.downsample.conv(x))
        h = F.relu(self.norm1(self.conv1(x)))
        h = F.relu(self.norm2(self.conv2(h)))
        return F.relu(self.norm3(self.conv3(h)) + shortcut)


MISTAKES.append((MistakeParametrized, "by name"))



# a hand-written weight-standardized conv whose weight is reserved with torch.empty and never filled: the check
# gives every parameter its own numbers, so the values come out right; the block itself would train from garbage
class _EmptyWSConv(WSConv):
    def __init__(self, c_in, c_out, k, stride=1):
        super().__init__(c_in, c_out, k, stride)
        self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))


class MistakeUninitialisedWeights(_Base):
    conv = staticmethod(_EmptyWSConv)


MISTAKES.append((MistakeUninitialisedWeights, "starting value"))



# ------------------------------------------------------------------------------ found by an outside test
class _WSConv(nn.Conv2d):
    """Weight-standardized conv (per filter, biased variance, eps 1e-8), no bias; ``pad`` picks the padding."""

    def __init__(self, c_in, c_out, k, stride=1, pad="bottom_right"):
        super().__init__(c_in, c_out, k, stride=stride, bias=False)
        self.pad = pad

    def forward(self, x):
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (self.weight - mean) / torch.sqrt(var + 1e-8)
        k, s = self.kernel_size[0], self.stride[0]
        h, wd = x.shape[-2:]
        ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pw = max((math.ceil(wd / s) - 1) * s + k - wd, 0)
        if self.pad == "bottom_right":  # TensorFlow 'SAME': the odd pixel goes to the bottom/right
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        else:  # "top_left": the same total padding, the odd pixel on the top/left
            x = F.pad(x, (pw - pw // 2, pw // 2, ph - ph // 2, ph // 2))
        return F.conv2d(x, w, None, s)


class _Block(nn.Module):
    pad = "bottom_right"

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        m = out_channels // 4
        conv = lambda a, b, k, s=1: _WSConv(a, b, k, s, pad=type(self).pad)  # noqa: E731
        self.conv1, self.norm1 = conv(in_channels, m, 1), nn.GroupNorm(32, m, eps=1e-5)
        self.conv2, self.norm2 = conv(m, m, 3, stride), nn.GroupNorm(32, m, eps=1e-5)
        self.conv3, self.norm3 = conv(m, out_channels, 1), nn.GroupNorm(32, out_channels, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.ModuleDict({"conv": conv(in_channels, out_channels, 1, stride),
                                             "norm": nn.GroupNorm(32, out_channels, eps=1e-5)})

    def forward(self, x):
        sc = x if self.downsample is None else self.downsample["norm"](self.downsample["conv"](x))
        h = F.relu(self.norm1(self.conv1(x)))
        h = F.relu(self.norm2(self.conv2(h)))
        return F.relu(self.norm3(self.conv3(h)) + sc)


class BottleneckTopLeftSamePadding(_Block):
    # MISLEADING MESSAGE: 'SAME' padding with the odd pixel on the top/left (the total is right, the side is
    # wrong). Rejected, but the message says "the 3x3 conv pads 1 pixel on every side", which this code does
    # not do (for stride 2 on an even size, top/left-only and symmetric padding give the same windows).
    pad = "top_left"


MISTAKES += [(BottleneckTopLeftSamePadding, "top/left")]
