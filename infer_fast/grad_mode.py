"""Gradients on for the functions that train, whatever the caller's grad mode: a notebook's
global ``torch.set_grad_enabled(False)``, or a call made inside ``torch.no_grad()`` or
``torch.inference_mode()``, would otherwise leave their losses without a graph to run the
backward through. :func:`training_grad_mode` (a context manager and a decorator) turns
gradients on for its block and gives the caller's mode back after it.

Tensors made under ``torch.inference_mode()`` (a model loaded or a set made inside it) cannot
join autograd even then: :func:`autograd_usable` and :func:`holds_inference_tensors` find
them, so that the functions that train use a copy made outside inference mode instead."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def training_grad_mode() -> Iterator[None]:
    """Gradients on, out of inference mode, while the block (or the decorated function) runs;
    the caller's grad mode and inference mode restored after it."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def autograd_usable(tensor: Optional[Tensor]) -> Optional[Tensor]:
    """``tensor`` itself, or a copy of it where it was made under inference mode (which autograd
    cannot save for a backward); None stays None. Call it under :func:`training_grad_mode` (a copy
    made in inference mode would be an inference tensor again)."""
    return tensor.clone() if tensor is not None and tensor.is_inference() else tensor


def holds_inference_tensors(model: nn.Module) -> bool:
    """Whether a parameter or buffer of ``model`` was made under inference mode (the model was
    built or loaded inside ``torch.inference_mode()``): its forward then cannot be trained
    through, and training uses a copy (copy.deepcopy outside inference mode makes normal tensors)."""
    return any(t.is_inference() for t in (*model.parameters(), *model.buffers()))
