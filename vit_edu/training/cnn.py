"""A small ResNet for 32x32 images: the convolutional baseline that notebook 10 sets against the plain ViT.

Why a CNN here: the paper's central lesson (Dosovitskiy et al. 2020, Sec. 4.2-4.3, Figs. 3-4) is that a
ViT lacks two inductive biases a CNN has built in, **locality** (a 3x3 kernel sees only its neighbours)
and **translation equivariance** (the same kernel slides over every position), so it needs more data to
learn what a CNN gets for free. To measure that, the CNN must be a fair opponent: parameters and FLOPs per
image within a factor 1.5 of the ViT's, trained with the same loop and the same budget rule
(``vit_edu.training.data_size``, run by ``benchmarks/data_size_sweep.py``).

The architecture is He et al. (2016)'s ResNet for CIFAR, only thinner: a 3x3 stem, one stage per width,
each made of BasicBlocks (two 3x3 convs with a residual connection; the first block of a stage halves the
resolution with stride 2 and a 1x1 projection shortcut), BatchNorm after every conv, global average
pooling and a Linear head.

    model = ResNet(ResNetConfig(num_classes=8))          # 71,632 parameters, 16.2 MFLOPs per image
    logits = model(torch.randn(2, 3, 32, 32))            # [2, 8]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Sequence, Tuple

import torch
from torch import nn


@dataclass
class ResNetConfig:
    """Widths and depths of the small ResNet; the defaults match ``vit_nano_patch4_32`` in size and compute."""

    num_classes: int = 10
    in_channels: int = 3
    widths: Tuple[int, ...] = (8, 32, 64)  # channels of each stage; the stem outputs widths[0]
    blocks: Tuple[int, ...] = (1, 1, 1)  # BasicBlocks per stage; every stage after the first starts with stride 2
    # 1: the stages run at 32x32, 16x16, 8x8 (CIFAR's ResNet). A stride-2 stem is cheaper, but in a probe on the
    # mottled shapes (2,000 images, 1,000 steps) a (16, 32, 64) ResNet with it reached 46 % where this one reached
    # 88 %: a faint object under blotches is found by filters at full resolution.
    stem_stride: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"], d["blocks"] = list(self.widths), list(self.blocks)
        return d


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the input (through a 1x1 conv + BN when the shape changes), then ReLU.

    The residual path lets the block start close to the identity, so depth does not make training harder.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem -> stages of BasicBlocks -> global average pooling -> Linear: [B, 3, 32, 32] -> [B, num_classes]."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        if len(config.widths) != len(config.blocks) or min(config.blocks) < 1:
            raise ValueError(f"ResNetConfig: widths {config.widths} and blocks {config.blocks} must have the same "
                             f"length and at least one block per stage")
        self.config = config
        w0 = config.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, w0, 3, stride=config.stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(w0),
                                  nn.ReLU())
        stages: List[nn.Module] = []
        channels = w0
        for i, (width, depth) in enumerate(zip(config.widths, config.blocks)):
            layers = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # [B, C, H/4, W/4] with three stages
        return self.head(x.mean(dim=(2, 3)))  # global average pooling: where a feature is no longer matters

    def no_weight_decay(self) -> set:
        """Parameters without weight decay (biases and BatchNorm), named as ``build_optimizer`` expects."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def resnet_param_count(config: ResNetConfig) -> int:
    """The parameter count written out: every conv weight k*k*c_in*c_out, every BatchNorm 2c, the head."""
    total = 3 * 3 * config.in_channels * config.widths[0] + 2 * config.widths[0]  # stem conv + BN
    channels = config.widths[0]
    for i, (width, depth) in enumerate(zip(config.widths, config.blocks)):
        for j in range(depth):
            stride = 2 if (i > 0 and j == 0) else 1
            total += 9 * channels * width + 2 * width + 9 * width * width + 2 * width
            if stride != 1 or channels != width:
                total += channels * width + 2 * width
            channels = width
    return total + channels * config.num_classes + config.num_classes


def count_flops(model: nn.Module, image_size: int = 32, in_channels: int = 3) -> int:
    """Forward FLOPs of one image (2 per multiply-add), counted by ``torch.utils.flop_counter`` (matmuls, convs,
    attention; elementwise ops such as norms and activations are not counted, for either model)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, in_channels, image_size, image_size))
    model.train(was_training)
    return int(counter.get_total_flops())


def sized_like(widths: Sequence[int], blocks: Sequence[int], num_classes: int) -> ResNet:
    """A ResNet with the given stage widths and depths (for probing other sizes)."""
    return ResNet(ResNetConfig(num_classes=num_classes, widths=tuple(widths), blocks=tuple(blocks)))
