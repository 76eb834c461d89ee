"""The base class every built-in model shares, and their initialization.

Every built-in model is a :class:`ClassifierNet`: ``forward(x) = head(forward_features(x))``
with ``forward_features(x) -> (N, D)`` (pooled, flattened penultimate features) and
``head`` an ``nn.Linear(D, num_classes)``. The model files and the registry import this
module; it imports none of them.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

__all__ = ["ClassifierNet", "init_weights", "rename_aliased_keys"]


def rename_aliased_keys(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: rename e.g. torchvision's ``fc.*`` to our ``head.*``."""
    for old, new in getattr(module, "state_dict_aliases", ()):
        old_p, new_p = prefix + old, prefix + new
        for key in [k for k in state_dict if k.startswith(old_p)]:
            new_key = new_p + key[len(old_p):]
            if new_key not in state_dict:
                state_dict[new_key] = state_dict.pop(key)


class ClassifierNet(nn.Module):
    """Base of every built-in model: ``forward(x) = head(forward_features(x))``.

    Subclasses define ``forward_features(x) -> (N, D)`` and an ``nn.Linear`` named ``head``.
    ``state_dict_aliases`` lists ``(old_prefix, new_prefix)`` pairs renamed when a state dict
    is loaded, so checkpoints that call the classifier ``fc`` / ``classifier.1`` (torchvision's
    layout) load into ``head``.
    """

    head: nn.Linear
    state_dict_aliases: Tuple[Tuple[str, str], ...] = ()

    def __init__(self) -> None:
        super().__init__()
        if self.state_dict_aliases:
            self.register_load_state_dict_pre_hook(rename_aliased_keys)

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))

    @property
    def num_features(self) -> int:
        """D, the width of the penultimate features (the head's input)."""
        return self.head.in_features


def init_weights(model: nn.Module, linear_std: float = 0.01) -> None:
    """Deterministic (given the torch seed) init: Kaiming-normal (fan_out, ReLU) convs with
    zero bias, norm layers weight 1 / bias 0, Linear N(0, linear_std) with zero bias. A model
    on the meta device (built to read its shapes: build_to_check) has no values to set: skipped
    (under torch.device("meta") the init ran through torch's Python references, 3 s the first time)."""
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def device_of(model: nn.Module) -> torch.device:
    """The device of a module: its first parameter's (or buffer's), the CPU for an empty one."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
