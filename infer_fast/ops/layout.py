"""The two memory layouts the BN launchers take, as csrc/functional.cpp chooses them: the
Python twins of its kept_format and as_ncl (for the fake kernels, the chunked mode and
tests that call launchers directly)."""
from __future__ import annotations

import torch
from torch import Tensor


def kept_format(x: Tensor) -> torch.memory_format:
    """channels_last for a 4-d channels_last tensor that is not also plain contiguous, else
    contiguous: the layout the BN ops keep and give their outputs."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def as_ncl(x: Tensor) -> Tensor:
    """(N, C, H, W) or (N, C) -> the (N, C, L) view the launchers take: "NCL" strides
    (C*L, L, 1) or "NLC" (channels_last) strides (C*L, 1, C). Other strides are copied first."""
    x = x.contiguous(memory_format=kept_format(x))
    if x.dim() == 2:
        return x.view(x.shape[0], x.shape[1], 1)
    n, c, h, w = x.shape
    if kept_format(x) == torch.channels_last:
        return x.as_strided((n, c, h * w), (c * h * w, 1, c))
    return x.view(n, c, h * w)
