"""uint8 pixels <-> the normalized space of a dataset, as the distilled-set format stores them.

A uint8 pixel p maps to x = (p / 255 - mean) / std per channel (:func:`normalize_uint8`);
:func:`denormalize` and :func:`quantize_images` go back (float pixel values, or uint8);
:func:`valid_range` gives the normalized values of pixels 0 and 1, the per-channel clamp of
composed images. The arithmetic is :mod:`.transforms`' normalize / denormalize; these add
the dtype rules of the format (uint8 in, float32 out).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from . import transforms

__all__ = ["normalize_uint8", "denormalize", "quantize_images", "valid_range"]


def normalize_uint8(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 pixels (..., ch, H, W) -> float32 normalized (p / 255 - mean) / std."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    return transforms.normalize(pixels, mean, std)


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalized float (..., ch, H, W) -> float32 pixel values x * std + mean (not clamped)."""
    return transforms.denormalize(images.to(torch.float32), mean, std)


def quantize_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalized float (..., ch, H, W) -> uint8 pixels round(clamp(x * std + mean, 0, 1) * 255).

    Use it to store natural images (recovered in normalized float) in the uint8 format.
    """
    return transforms.denormalize(images.detach().to(torch.float32), mean, std, to_uint8=True)


def valid_range(mean: Sequence[float], std: Sequence[float]) -> Tuple[Tensor, Tensor]:
    """(lo, hi) float32 (ch,): the normalized values of pixel 0 and pixel 1 per channel."""
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32)
    return (0.0 - m) / s, (1.0 - m) / s
