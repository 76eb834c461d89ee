"""Image grids and PNG files for previews of distilled sets (``infer-fast inspect``).

    save_grid(images, "grid.png", nrow=8, padding=2)                 # images in [0, 1]
    save_grid(ufc_pixels, "ufc.png", nrow=8, scale="symmetric")      # signed compensators

Images are float tensors (N, ch, H, W) with ch = 1 (grayscale) or 3 (RGB). The grid follows
torchvision's layout: ``nrow`` images per row, ``padding`` pixels around and between
tiles, so a grid of N images is (ceil(N / nrow) * (H + padding) + padding) pixels high and
(min(N, nrow) * (W + padding) + padding) pixels wide.

PNG files are written with Pillow (8-bit grayscale or RGB).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ._io import PathLike, write_atomically
from .checks import check_int

SCALES = ("none", "minmax", "symmetric")


def scale_images(images: Tensor, scale: str = "none") -> Tensor:
    """Map images to [0, 1] for display, per image.

    - ``"none"``: clamp to [0, 1] (images already in pixel range).
    - ``"minmax"``: (x - min) / (max - min) per image (a constant image becomes 0.5).
    - ``"symmetric"``: 0.5 + x / (2 max|x|) per image, so 0 stays mid-gray and the sign of
      a signed image (a compensator) stays visible (an all-zero image becomes 0.5).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    x = _check_images(images).to(torch.float32)
    if x.shape[0] == 0 or scale == "none":
        return x.clamp(0.0, 1.0)
    flat = x.reshape(x.shape[0], -1)
    if scale == "minmax":
        low = flat.min(dim=1).values.view(-1, 1, 1, 1)
        span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - low)
        out = torch.where(span > 0, (x - low) / span.clamp_min(1e-12), torch.full_like(x, 0.5))
    else:
        peak = flat.abs().max(dim=1).values.view(-1, 1, 1, 1)
        out = torch.where(peak > 0, 0.5 + x / (2 * peak.clamp_min(1e-12)), torch.full_like(x, 0.5))
    return out.clamp(0.0, 1.0)


def _check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, ch, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 (grayscale) or 3 (RGB) channels, got {images.shape[1]}")
    if not (images.dtype.is_floating_point or images.dtype == torch.uint8):
        raise ValueError(f"images must be float (values in [0, 1]) or uint8, got {images.dtype}")
    if images.dtype == torch.uint8:
        images = images.to(torch.float32) / 255.0
    return images.detach().cpu()


def grid_size(n: int, height: int, width: int, nrow: int = 8, padding: int = 2) -> tuple:
    """(grid height, grid width) in pixels of a grid of ``n`` images of ``height`` x ``width``."""
    cols = max(1, min(n, nrow))
    rows = max(1, math.ceil(n / nrow))
    return rows * (height + padding) + padding, cols * (width + padding) + padding


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0, scale: str = "none") -> Tensor:
    """(ch, grid H, grid W) float tensor in [0, 1]: ``nrow`` images per row, row-major."""
    check_int("nrow", nrow)
    check_int("padding", padding, minimum=0)
    x = scale_images(images, scale)
    n, ch, height, width = x.shape
    gh, gw = grid_size(n, height, width, nrow, padding)
    grid = torch.full((ch, gh, gw), float(pad_value), dtype=torch.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        grid[:, top:top + height, left:left + width] = x[i]
    return grid


def stack_grids(grids: Sequence[Tensor], spacing: int = 6, pad_value: float = 1.0) -> Tensor:
    """Stack (ch, h_i, w_i) grids vertically, left-aligned, ``spacing`` pixels apart."""
    if not grids:
        raise ValueError("stack_grids needs at least one grid")
    ch = grids[0].shape[0]
    if any(g.dim() != 3 or g.shape[0] != ch for g in grids):
        raise ValueError("all grids must be (ch, h, w) with the same number of channels")
    height = sum(g.shape[1] for g in grids) + spacing * (len(grids) - 1)
    width = max(g.shape[2] for g in grids)
    out = torch.full((ch, height, width), float(pad_value), dtype=torch.float32)
    top = 0
    for g in grids:
        out[:, top:top + g.shape[1], : g.shape[2]] = g
        top += g.shape[1] + spacing
    return out


def to_uint8_hwc(image: Tensor) -> Tensor:
    """(ch, H, W) float in [0, 1] -> (H, W, ch) uint8 (rounded, clamped)."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (ch, H, W) with ch 1 or 3, got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.permute(1, 2, 0).contiguous()
    return (image.detach().cpu().to(torch.float32).clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def write_png(image: Tensor, path: PathLike) -> Path:
    """Write a (ch, H, W) image (float in [0, 1] or uint8) as PNG (Pillow). The file is
    written to a temporary name and renamed, so a reader never sees half a PNG."""
    from PIL import Image

    array = to_uint8_hwc(image).numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)  # uint8 -> "L" / "RGB"
    path = Path(path)
    write_atomically(path, lambda tmp: picture.save(tmp, format="PNG"), fsync=False)
    return path


def save_grid(
    images: Tensor,
    path: PathLike,
    nrow: int = 8,
    padding: int = 2,
    scale: str = "none",
    pad_value: float = 1.0,
) -> Path:
    """Write images (N, ch, H, W) float in [0, 1] (or uint8) as one PNG grid; returns the path.

    ``scale``: "none" (clamp to [0, 1]), "minmax" (per image) or "symmetric" (per image,
    around 0.5: for signed images such as compensators), see :func:`scale_images`.
    """
    return write_png(make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value, scale=scale), path)
