"""EfficientNet-B0 (Tan & Le, 2019) in torchvision's module layout and parameter names.

MBConv blocks (expand 1x1 -> depthwise kxk -> squeeze-excite -> project 1x1, BatchNorm, SiLU),
stages (expansion, kernel, stride, in, out, repeats):
    (1,3,1,32,16,1) (6,3,2,16,24,2) (6,5,2,24,40,2) (6,3,2,40,80,3)
    (6,5,1,80,112,3) (6,5,2,112,192,4) (6,3,1,192,320,1),
after a 32-channel 3x3 stem, then a 1x1 conv to 1280 channels, pooling, dropout, linear head.

* Small-image variant (``efficientnet-b0``, 28/32/64 inputs): stride-1 stem (16x downsampling,
  32x32 inputs end at 2x2).
* ImageNet variant: stride-2 stem (32x).

Every BatchNorm layer runs in forward (no unused BN, unlike one CIFAR EfficientNet found in
the wild). Drop-connect (stochastic depth, per sample, on residual blocks, rate growing
linearly with depth up to ``drop_connect_rate``) is off by default. Dropout (0.2) is applied
at the end of ``forward_features`` so that ``forward(x) == head(forward_features(x))`` in
every mode. torchvision checkpoints' ``classifier.1.*`` keys load into ``head``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .base import ClassifierNet, init_weights

__all__ = ["EfficientNet", "efficientnet_b0", "efficientnet_b0_imagenet"]

_B0_STAGES = [
    # expand, kernel, stride, in, out, repeats
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BN [-> SiLU]; children named 0, 1, 2 as torchvision's Conv2dNormActivation."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        layers = [
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class StochasticDepth(nn.Module):
    """Drop the residual branch per sample with probability p in training (rescaled by 1/(1-p))."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-connect probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, drop_p: float) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        hidden = cin * expand
        layers = []
        if hidden != cin:
            layers.append(ConvBNAct(cin, hidden, 1))
        layers += [
            ConvBNAct(hidden, hidden, kernel, stride, groups=hidden),
            SqueezeExcitation(hidden, max(1, cin // 4)),
            ConvBNAct(hidden, cout, 1, act=False),
        ]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_p)
        self.out_channels = cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


class EfficientNet(ClassifierNet):
    state_dict_aliases = (("classifier.1.", "head."),)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        variant: str = "small",
        dropout: float = 0.2,
        drop_connect_rate: float = 0.0,
        last_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        if variant not in ("small", "imagenet"):
            raise ValueError(f"unknown EfficientNet variant {variant!r}; choose 'small' or 'imagenet'")
        self.variant = variant
        stem_out = _B0_STAGES[0][3]
        layers = [ConvBNAct(in_channels, stem_out, 3, stride=1 if variant == "small" else 2)]
        total = sum(stage[-1] for stage in _B0_STAGES)
        block_id = 0
        for expand, kernel, stride, cin, cout, repeats in _B0_STAGES:
            blocks = []
            for i in range(repeats):
                p = drop_connect_rate * block_id / total
                blocks.append(MBConv(cin if i == 0 else cout, cout, expand, kernel, stride if i == 0 else 1, p))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        last_in = _B0_STAGES[-1][4]
        last = last_channels or 4 * last_in
        layers.append(ConvBNAct(last_in, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(last, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.dropout(self.avgpool(self.features(x)).flatten(1))


def efficientnet_b0(num_classes: int = 10, in_channels: int = 3, image_size=32, **kwargs) -> EfficientNet:
    return EfficientNet(num_classes, in_channels, variant="small", **kwargs)


def efficientnet_b0_imagenet(num_classes: int = 1000, in_channels: int = 3, image_size=224, **kwargs) -> EfficientNet:
    return EfficientNet(num_classes, in_channels, variant="imagenet", **kwargs)
