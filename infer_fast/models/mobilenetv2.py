"""MobileNetV2 (Sandler et al., 2018) in torchvision's module layout and parameter names.

Stages (expansion t, channels c, repeats n, stride s), after a 32-channel 3x3 stem:
    (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1),
then a 1x1 conv to 1280 channels, global average pooling and the linear head.

* ImageNet variant: standard strides (32x downsampling).
* CIFAR variant (``mobilenetv2``, 28/32/64 inputs): the stem and the 24-channel stage run at
  stride 1 (the first two stride-2 layers of the ImageNet net), as in the common CIFAR
  implementations; 8x downsampling, so 32x32 inputs end at 4x4.

Dropout (torchvision: 0.2 for ImageNet; 0 for the CIFAR variant) is applied at the end of
``forward_features`` so that ``forward(x) == head(forward_features(x))`` holds in every mode.
torchvision checkpoints' ``classifier.1.*`` keys load into ``head``.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .base import ClassifierNet, init_weights

__all__ = ["MobileNetV2", "mobilenetv2", "mobilenetv2_imagenet"]

_SETTING = [
    # t, c, n, s
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def _make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # do not round down by more than 10%
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """conv (no bias) -> BN -> ReLU6 (children named 0, 1, 2 as torchvision's Conv2dNormActivation)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(ClassifierNet):
    state_dict_aliases = (("classifier.1.", "head."),)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        variant: str = "cifar",
        width_mult: float = 1.0,
        dropout: Optional[float] = None,
    ) -> None:
        super().__init__()
        if variant not in ("cifar", "imagenet"):
            raise ValueError(f"unknown MobileNetV2 variant {variant!r}; choose 'cifar' or 'imagenet'")
        self.variant = variant
        small = variant == "cifar"
        if dropout is None:
            dropout = 0.0 if small else 0.2
        input_channel = _make_divisible(32 * width_mult)
        last_channel = _make_divisible(1280 * max(1.0, width_mult))

        features = [ConvBNReLU6(in_channels, input_channel, stride=1 if small else 2)]
        for t, c, n, s in _SETTING:
            if small and c == 24:
                s = 1
            out = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(input_channel, out, s if i == 0 else 1, t))
                input_channel = out
        features.append(ConvBNReLU6(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(last_channel, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.dropout(self.avgpool(self.features(x)).flatten(1))


def mobilenetv2(num_classes: int = 10, in_channels: int = 3, image_size=32, **kwargs) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, variant="cifar", **kwargs)


def mobilenetv2_imagenet(num_classes: int = 1000, in_channels: int = 3, image_size=224, **kwargs) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, variant="imagenet", **kwargs)
