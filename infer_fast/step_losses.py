"""An epoch's step losses kept on the device: a training loop that read each step's loss on
the host (``loss.item()``) would wait for the GPU at every step instead of queuing the next."""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor


class StepLosses:
    """The losses of up to ``steps`` steps and their batch sizes; the weighted mean is read on
    the host when asked (one transfer, and none when no step was added since the last), summed
    in step order as a read per step would have: the same bits."""

    def __init__(self, steps: int, device) -> None:
        self.values = torch.empty(steps, device=device)
        self.sizes: List[int] = []
        self._last_read = (-1, float("nan"))  # (steps read, their mean; none yet)

    def add(self, loss: Tensor, size: int) -> None:
        """Keep a step's (scalar) loss, of a batch of ``size`` examples: no host sync."""
        self.values[len(self.sizes)].copy_(loss.detach())
        self.sizes.append(size)

    def mean(self) -> float:
        """The mean loss per example over the steps so far (reads them on the host, unless
        the last read already covered them all)."""
        if self._last_read[0] != len(self.sizes):
            total = sum(value * size for value, size in zip(self._host_values(), self.sizes))
            self._last_read = (len(self.sizes), total / sum(self.sizes))
        return self._last_read[1]

    def _host_values(self) -> List[float]:
        """The steps' losses on the host: the one transfer (a sync with the device)."""
        return self.values[:len(self.sizes)].tolist()
