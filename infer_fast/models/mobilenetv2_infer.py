"""MobileNetV2 in the layout of the INFER release's CIFAR teachers (``mobilenetv2-infer``).

The kuangliu/pytorch-cifar MobileNetV2 the release trains, which differs from torchvision's
layout (our ``mobilenetv2``):

* ReLU, not ReLU6, after every BN but the projection's;
* every block has the 1x1 expansion conv, the expansion-1 block too (32 -> 32 channels);
* a stride-1 block whose channel count changes adds a 1x1 conv + BN projection of its input
  (``shortcut``); a stride-1 block that keeps it adds its input; a stride-2 block adds nothing.

A 32-channel 3x3 stride-1 stem, stages (expansion t, channels c, repeats n, stride s)
    (1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1),
a 1x1 conv to 1280 channels + BN + ReLU, average pooling and the linear head (no dropout).
8x downsampling: 32x32 inputs end at 4x4. The release pools with a fixed 4x4 average pool
(32x32 inputs only); this module averages whatever map it gets, so 28, 32 and 64-pixel inputs
(and 1 or 3 input channels) work and 32x32 ones compute the same. Parameter names are the
release's (``conv1``, ``bn1``, ``layers.0.conv1``, ``layers.0.shortcut.0``, ``conv2``, ...),
its ``linear.*`` loading into ``head``; initialization is ours (:func:`init_weights`).
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ClassifierNet, init_weights

__all__ = ["MobileNetV2Infer", "mobilenetv2_infer"]

STAGES = [
    # t, c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


class Block(nn.Module):
    """expand 1x1 -> BN -> ReLU -> depthwise 3x3 -> BN -> ReLU -> project 1x1 -> BN (+ shortcut
    at stride 1)."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = expansion * cin
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: Optional[nn.Sequential] = None
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride != 1:
            return out
        return out + (x if self.shortcut is None else self.shortcut(x))


class MobileNetV2Infer(ClassifierNet):
    state_dict_aliases = (("linear.", "head."),)

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        blocks, c = [], STEM_CHANNELS
        for t, cout, n, s in STAGES:
            for i in range(n):
                blocks.append(Block(c, cout, t, s if i == 0 else 1))
                c = cout
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(c, LAST_CHANNELS, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(LAST_CHANNELS)
        self.head = nn.Linear(LAST_CHANNELS, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(self.layers(x))))
        return x.mean(dim=(2, 3))


def mobilenetv2_infer(num_classes: int = 10, in_channels: int = 3, image_size=32, **kwargs) -> MobileNetV2Infer:
    return MobileNetV2Infer(num_classes, in_channels, **kwargs)
