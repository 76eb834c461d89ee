"""EfficientNet-B0 in the layout of the INFER release's CIFAR teachers (``efficientnet-b0-infer``).

The kuangliu/pytorch-cifar EfficientNet-B0 the release trains, which differs from torchvision's
layout (our ``efficientnet-b0``):

* no 1x1 conv to 1280 channels at the end: the last stage's 320 channels are pooled and go
  through dropout (0.2, in training) to the linear head;
* the squeeze-excite bottleneck has a quarter of the block's *input* channels (torchvision's
  too), its two 1x1 convs with biases, swish (SiLU) between them and a sigmoid gate;
* drop-connect is off: the release's schedule never advances its block counter, so every
  block's rate is 0 (``drop_connect_rate`` > 0 turns on ours, growing linearly with depth).

A 32-channel 3x3 stride-1 stem, then MBConv blocks (expand 1x1 -> BN -> swish, depthwise kxk
-> BN -> swish, squeeze-excite, project 1x1 -> BN, plus the input at stride 1 when the
channels are kept), stages (expansion, channels, repeats, kernel, stride)
    (1,16,1,3,1) (6,24,2,3,2) (6,40,2,5,2) (6,80,3,3,2) (6,112,3,5,1) (6,192,4,5,2) (6,320,1,3,1);
16x downsampling, 32x32 inputs end at 2x2, and global average pooling (as the release), so
28, 32 and 64-pixel inputs (and 1 or 3 input channels) work.

The release builds an expansion conv + BN (``conv1``, ``bn1``) for the expansion-1 block as
well but never runs them; this module does not build them (every BN here runs, as the
BN-statistics loss expects), and a release state dict's ``layers.0.conv1.*`` / ``layers.0.bn1.*``
entries are dropped when it is loaded. Otherwise parameter names are the release's
(``conv1``, ``bn1``, ``layers.1.conv1``, ``layers.1.se.se1``, ...), its ``linear.*`` loading
into ``head``; initialization is ours (:func:`init_weights`).
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ClassifierNet, init_weights
from .efficientnet import StochasticDepth

__all__ = ["EfficientNetInfer", "efficientnet_b0_infer"]

B0_STAGES = [
    # expansion, out, repeats, kernel, stride
    (1, 16, 1, 3, 1),
    (6, 24, 2, 3, 2),
    (6, 40, 2, 5, 2),
    (6, 80, 3, 3, 2),
    (6, 112, 3, 5, 1),
    (6, 192, 4, 5, 2),
    (6, 320, 1, 3, 1),
]
STEM_CHANNELS = 32
SE_RATIO = 0.25


class SqueezeExcite(nn.Module):
    """x * sigmoid(se2(swish(se1(mean of x over H, W))))."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.se1 = nn.Conv2d(channels, squeeze, 1)
        self.se2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.se2(F.silu(self.se1(x.mean(dim=(2, 3), keepdim=True))))
        return x * scale.sigmoid()


def _drop_unused_expansion(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook of an expansion-1 block: a release checkpoint's never-run
    ``conv1`` / ``bn1`` entries are removed."""
    for key in [k for k in state_dict if k.startswith((prefix + "conv1.", prefix + "bn1."))]:
        del state_dict[key]


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int, drop_p: float = 0.0) -> None:
        super().__init__()
        hidden = expansion * cin
        self.conv1: Optional[nn.Conv2d]
        self.bn1: Optional[nn.BatchNorm2d]
        if expansion != 1:
            self.conv1 = nn.Conv2d(cin, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
        else:  # (the release builds them here too, and never runs them)
            self.conv1 = self.bn1 = None
            self.register_load_state_dict_pre_hook(_drop_unused_expansion)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.se = SqueezeExcite(hidden, int(cin * SE_RATIO))
        self.conv3 = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.use_res_connect = stride == 1 and cin == cout
        self.stochastic_depth = StochasticDepth(drop_p)

    def forward(self, x: Tensor) -> Tensor:
        out = x if self.conv1 is None else F.silu(self.bn1(self.conv1(x)))
        out = F.silu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.se(out)))
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


class EfficientNetInfer(ClassifierNet):
    state_dict_aliases = (("linear.", "head."),)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.2,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        total = sum(stage[2] for stage in B0_STAGES)
        blocks, c = [], STEM_CHANNELS
        for expansion, cout, repeats, kernel, stride in B0_STAGES:
            for i in range(repeats):
                p = drop_connect_rate * len(blocks) / total
                blocks.append(MBConv(c, cout, expansion, kernel, stride if i == 0 else 1, p))
                c = cout
        self.layers = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.layers(F.silu(self.bn1(self.conv1(x))))
        return self.dropout(x.mean(dim=(2, 3)))


def efficientnet_b0_infer(num_classes: int = 10, in_channels: int = 3, image_size=32, **kwargs) -> EfficientNetInfer:
    return EfficientNetInfer(num_classes, in_channels, **kwargs)
