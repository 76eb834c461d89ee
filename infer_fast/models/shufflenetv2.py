"""ShuffleNetV2 (Ma et al., 2018) in torchvision's module layout and parameter names.

1.0x: a 24-channel 3x3 stem, three stages of 4/8/4 units with 116/232/464 channels (the first
unit of each stage downsamples by 2), a 1x1 conv to 1024 channels, global average pooling and
the linear head.

* Small-image variant (``shufflenetv2``, 28/32/64 inputs): stride-1 stem, no max-pool
  (8x downsampling, 32x32 inputs end at 4x4).
* ImageNet variant: stride-2 stem + 3x3 stride-2 max-pool (32x downsampling).

torchvision checkpoints' ``fc.*`` keys load into ``head``.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor, nn

from .base import ClassifierNet, init_weights

__all__ = ["ShuffleNetV2", "shufflenetv2", "shufflenetv2_imagenet", "channel_shuffle"]

STAGE_CHANNELS: Dict[float, List[int]] = {
    0.5: [24, 48, 96, 192, 1024],
    1.0: [24, 116, 232, 464, 1024],
    1.5: [24, 176, 352, 704, 1024],
    2.0: [24, 244, 488, 976, 2048],
}
STAGE_REPEATS = [4, 8, 4]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


class InvertedResidual(nn.Module):
    """ShuffleNetV2 unit. Stride 1: split channels, transform one half. Stride 2: both
    branches see the whole input and each produces half of the output channels."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        branch = oup // 2
        if stride == 1 and inp != branch * 2:
            raise ValueError(f"a stride-1 unit needs inp == oup (got {inp} -> {oup})")
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(inp, stride),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, 1, 0, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch, branch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            _depthwise(branch, stride),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(ClassifierNet):
    state_dict_aliases = (("fc.", "head."),)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        variant: str = "small",
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if variant not in ("small", "imagenet"):
            raise ValueError(f"unknown ShuffleNetV2 variant {variant!r}; choose 'small' or 'imagenet'")
        if width_mult not in STAGE_CHANNELS:
            raise ValueError(f"ShuffleNetV2 width_mult must be one of {sorted(STAGE_CHANNELS)}, got {width_mult}")
        self.variant = variant
        small = variant == "small"
        channels = STAGE_CHANNELS[width_mult]

        c = channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, 1 if small else 2, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        )
        self.maxpool: nn.Module = nn.Identity() if small else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (repeats, out) in enumerate(zip(STAGE_REPEATS, channels[1:4]), start=2):
            units = [InvertedResidual(c, out, 2)] + [InvertedResidual(out, out, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            c = out
        self.conv5 = nn.Sequential(
            nn.Conv2d(c, channels[-1], 1, 1, 0, bias=False),
            nn.BatchNorm2d(channels[-1]),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(channels[-1], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.conv5(x).mean(dim=(2, 3))


def shufflenetv2(num_classes: int = 10, in_channels: int = 3, image_size=32, **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_channels, variant="small", **kwargs)


def shufflenetv2_imagenet(num_classes: int = 1000, in_channels: int = 3, image_size=224, **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_channels, variant="imagenet", **kwargs)
