"""ShuffleNet v1 (Zhang et al., 2018) in the layout of the INFER release's CIFAR teachers.

``shufflenet-g2``: pointwise convolutions in 2 groups, a 1x1 stem to 24 channels (stride 1,
no max-pool), three stages of 4/8/4 units with 200/400/800 output channels, global average
pooling and the linear head. A unit is

    1x1 group conv -> BN -> ReLU -> channel shuffle -> 3x3 depthwise (stride s) -> BN -> ReLU
    -> 1x1 group conv -> BN,

added to its input (stride 1) or concatenated with a 3x3 stride-2 average pool of it (the
first unit of a stage, whose branch makes the output channels minus the input's), then ReLU.
The bottleneck has a quarter of the branch's output channels; the unit reading the stem's 24
channels has an ungrouped first conv (and nothing to shuffle).

The release (kuangliu/pytorch-cifar style) pools with a fixed 4x4 average pool, which fits 32x32
inputs only (8x downsampling: 4x4 maps); this module averages whatever map it gets, so 28,
32 and 64-pixel inputs (and 1 or 3 input channels) work and 32x32 ones compute the same.
Parameter names are the release's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...), its
``linear.*`` loading into ``head``; initialization is ours (:func:`init_weights`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ClassifierNet, init_weights
from .shufflenetv2 import channel_shuffle

__all__ = ["ShuffleNet", "ShuffleUnit", "shufflenet_g2"]

STEM_CHANNELS = 24
G2_OUT_CHANNELS = (200, 400, 800)
G2_REPEATS = (4, 8, 4)


class ShuffleUnit(nn.Module):
    """One ShuffleNet v1 unit (see the module docstring). ``first_groups``: the groups of the
    first 1x1 conv (1 for the unit that reads the stem)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and cin != cout:
            raise ValueError(f"a stride-1 unit needs cin == cout (got {cin} -> {cout})")
        self.stride = stride
        self.first_groups = first_groups
        branch = cout - cin if stride == 2 else cout
        mid = branch // 4
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.first_groups > 1:
            out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat((out, self.shortcut(x)), dim=1))
        return F.relu(out + x)


class ShuffleNet(ClassifierNet):
    state_dict_aliases = (("linear.", "head."),)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        groups: int = 2,
        out_channels: Sequence[int] = G2_OUT_CHANNELS,
        repeats: Sequence[int] = G2_REPEATS,
    ) -> None:
        super().__init__()
        if len(out_channels) != 3 or len(repeats) != 3:
            raise ValueError("ShuffleNet has three stages: give three out_channels and three repeats")
        self.groups = groups
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        c = STEM_CHANNELS
        for i, (cout, n) in enumerate(zip(out_channels, repeats), start=1):
            units = []
            for j in range(n):
                first_groups = 1 if (i, j) == (1, 0) else groups
                units.append(ShuffleUnit(c, cout, 2 if j == 0 else 1, groups, first_groups))
                c = cout
            setattr(self, f"layer{i}", nn.Sequential(*units))
        self.head = nn.Linear(c, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x.mean(dim=(2, 3))


def shufflenet_g2(num_classes: int = 10, in_channels: int = 3, image_size=32, **kwargs) -> ShuffleNet:
    return ShuffleNet(num_classes, in_channels, groups=2, **kwargs)
