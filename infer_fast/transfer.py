"""Host batches to the device without making the host wait: a copy from pageable memory may
wait for the device's stream to drain before it is staged (the CUDA driver's rule for
pageable transfers), which would undo the overlap of the host preparing the next batch while
the device runs the step before; from pinned memory the copy is queued and the host goes on."""
from __future__ import annotations

import torch
from torch import Tensor


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device``: from the host to a GPU through pinned memory (reused from torch's
    caching host allocator), queued without waiting; else as ``x.to(device)`` (``x`` itself
    where it already is: the CPU, or a tensor already on that GPU)."""
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)
