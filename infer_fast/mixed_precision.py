"""How students and teachers train (and are evaluated) in bf16 and channels_last, as timm's
``--amp --amp-dtype bfloat16 --channels-last`` does: the forward pass under autocast, while the
weights, their gradients and the optimizer's state stay fp32 (bf16 has fp32's exponent range,
so no loss scaling), and the loss is taken on fp32 logits. fp32 and the default layout change
nothing: the same tensors, the same bits."""
from __future__ import annotations

import contextlib
import copy
from typing import ContextManager, List, Sequence

import torch
from torch import Tensor, nn

# the help of the precision option of training and evaluation (StudentConfig, TeacherConfig)
TRAINING_PRECISION_HELP = ("fp32, or bf16: forward passes (training and evaluation) under bf16 autocast; weights, "
                           "gradients and the optimizer stay fp32 (faster on GPUs and CPUs with bf16 units)")
CHANNELS_LAST_HELP = "weights and input batches in channels_last (faster convolutions on GPUs and with bf16)"


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The context of a forward pass at ``precision`` ("bf16": autocast to bfloat16 on
    ``device``'s type; "fp32": none)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def model_in_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` with its 4-d weights in channels_last (in place), or as it is."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def copies_in_layout(models: Sequence[nn.Module], channels_last: bool) -> List[nn.Module]:
    """Copies of ``models`` in channels_last (the caller's are left as they were), or the
    models themselves: the teachers a student or RDED runs in its layout."""
    return [model_in_layout(copy.deepcopy(m), True) for m in models] if channels_last else list(models)


def batch_in_layout(x: Tensor, channels_last: bool) -> Tensor:
    """An image batch (N, C, H, W) in channels_last (a copy, best made on the device), or ``x`` itself."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
