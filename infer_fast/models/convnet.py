"""ConvNet of the dataset-distillation literature.

``depth`` x [conv3x3(width, padding 1) -> norm -> ReLU -> pool 2x2], then flatten + Linear.
The default (width 128, depth 3, BatchNorm, average pooling) is "ConvNet-128": on 32x32
inputs the features are 128x4x4 = 2048 and the model has ~0.32M parameters for 10 classes.
Pooling floors odd sizes, so 28x28 inputs go 28 -> 14 -> 7 -> 3.

The head's size depends on the image size, so the model is built for one ``image_size``
and rejects inputs of another size with a clear error.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

from torch import Tensor, nn

from .base import ClassifierNet, init_weights

__all__ = ["ConvNet", "convnet", "NORMS", "canonical_norm"]

NORMS = ("batchnorm", "instancenorm", "groupnorm", "none")
_NORM_ALIASES = {
    "batchnorm": "batchnorm", "bn": "batchnorm", "batch": "batchnorm",
    "instancenorm": "instancenorm", "in": "instancenorm", "instance": "instancenorm",
    "groupnorm": "groupnorm", "gn": "groupnorm", "group": "groupnorm",
    "none": "none", "nonorm": "none", "no": "none",
}


def canonical_norm(norm) -> str:
    key = "none" if norm is None else str(norm).strip().lower().replace("_", "").replace("-", "")
    if key not in _NORM_ALIASES:
        raise ValueError(f"unknown ConvNet norm {norm!r}; choose one of {', '.join(NORMS)}")
    return _NORM_ALIASES[key]


def _norm_layer(norm: str, channels: int, groups: int) -> nn.Module:
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    if norm == "instancenorm":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "groupnorm":
        if channels % groups:
            raise ValueError(f"groupnorm: width {channels} is not divisible by groups={groups}")
        return nn.GroupNorm(groups, channels, affine=True)
    return nn.Identity()


def _pair(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class ConvNet(ClassifierNet):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: Union[int, Sequence[int]] = 32,
        width: int = 128,
        depth: int = 3,
        norm: str = "batchnorm",
        pooling: str = "avg",
        groups: int = 4,
    ) -> None:
        super().__init__()
        norm = canonical_norm(norm)
        if pooling not in ("avg", "max", "none"):
            raise ValueError(f"unknown ConvNet pooling {pooling!r}; choose avg, max or none")
        if width < 1 or depth < 1:
            raise ValueError(f"ConvNet width and depth must be >= 1, got width={width}, depth={depth}")
        h, w = _pair(image_size)
        self.image_size = (h, w)
        self.width, self.depth, self.norm = width, depth, norm

        layers = []
        c = in_channels
        for i in range(depth):
            layers += [
                nn.Conv2d(c, width, kernel_size=3, padding=1),
                _norm_layer(norm, width, groups),
                nn.ReLU(inplace=True),
            ]
            if pooling != "none":
                layers.append(nn.AvgPool2d(2) if pooling == "avg" else nn.MaxPool2d(2))
                h, w = h // 2, w // 2
                if h < 1 or w < 1:
                    raise ValueError(
                        f"ConvNet depth {depth} is too deep for {self.image_size[0]}x{self.image_size[1]} "
                        f"inputs (the feature map vanishes after {i + 1} pooling layers)"
                    )
            c = width
        self.features = nn.Sequential(*layers)
        self.feature_hw = (h, w)
        self.head = nn.Linear(width * h * w, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.features(x)
        if tuple(out.shape[-2:]) != self.feature_hw:
            raise ValueError(
                f"this ConvNet was built for {self.image_size[0]}x{self.image_size[1]} inputs "
                f"(image_size={self.image_size[0]}); got {x.shape[-2]}x{x.shape[-1]}. "
                "Create it with the image_size of your data."
            )
        return out.flatten(1)


def convnet(num_classes: int = 10, in_channels: int = 3, image_size=32, **kwargs) -> ConvNet:
    return ConvNet(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
