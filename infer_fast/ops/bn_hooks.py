"""Attach the BN-statistics loss to every BatchNorm layer of a frozen teacher.

    tracker = BNStatTracker(teacher, groups=G)
    logits = teacher(images)                 # hooks compute per-layer, per-group losses
    r_bn = tracker.weighted_sum(first_bn_mult=10.0)   # (G,)

The tracker keeps only the loss tensors of the *last* forward (cleared when the next one
starts), never the activations themselves; the fused op saves its input for backward
exactly as the BN layer already does.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from . import backends
from .bn_stat_loss import _backward_op, _check_inputs, _forward_op, bn_stat_loss
from .reference import accumulate_dtype

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


class _EvalBNWithStatLoss(torch.autograd.Function):
    """Eval-mode BatchNorm and the BN-statistics loss of its input in one autograd node.

    forward: y = x * scale + shift (scale = weight / sqrt(rv + eps)) and loss (G,) from one
    read of x for the statistics; backward: dx = stat-loss gradient + dy * scale, written
    once (the unfused pair makes autograd add two full-size gradients into x)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, groups, backend):
        ctx.set_materialize_grads(False)  # an unused loss (or output) costs no backward pass
        loss, mean_shift, var_err, norms = _forward_op(x, running_mean, running_var, groups, backend)
        acc = accumulate_dtype(x.dtype)  # fp32 for half inputs, fp64 for fp64
        inv_std = torch.rsqrt(running_var.to(acc) + eps)
        scale = inv_std if weight is None else weight.to(acc) * inv_std
        shift = -running_mean.to(acc) * scale if bias is None else bias.to(acc) - running_mean.to(acc) * scale
        view = (1, -1) + (1,) * (x.dim() - 2)
        y = (x * scale.view(view).to(x.dtype) + shift.view(view).to(x.dtype))
        ctx.save_for_backward(x, running_mean, mean_shift, var_err, norms, scale, inv_std)
        ctx.groups, ctx.backend, ctx.view, ctx.affine = groups, backend, view, weight is not None
        return y, loss

    @staticmethod
    def backward(ctx, grad_y, grad_loss):
        x, running_mean, mean_shift, var_err, norms, scale, inv_std = ctx.saved_tensors
        scale_x = scale.view(ctx.view).to(x.dtype)
        if grad_loss is None:  # the loss was not used: only the BN output's gradient
            grad_x = None if grad_y is None else grad_y * scale_x
        else:
            grad_x = _backward_op(grad_loss, x, running_mean, mean_shift, var_err, norms, ctx.groups, ctx.backend)
            if grad_y is not None:
                grad_x.addcmul_(grad_y, scale_x)
        grad_weight = grad_bias = None
        dims = [0] + list(range(2, x.dim()))
        if ctx.needs_input_grad[1] and grad_y is not None:  # a frozen teacher never asks
            xhat = (x.to(inv_std.dtype) - running_mean.to(inv_std.dtype).view(ctx.view)) * inv_std.view(ctx.view)
            grad_weight = (grad_y.to(inv_std.dtype) * xhat).sum(dims)
        if ctx.needs_input_grad[2] and grad_y is not None:
            grad_bias = grad_y.to(inv_std.dtype).sum(dims)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class BNStatTracker:
    """Forward pre-hooks on every BatchNorm1d/2d of ``model``, computing
    :func:`~infer_fast.ops.bn_stat_loss` of each layer's input against its running stats.

    ``fused=True`` replaces each BN layer's forward, for as long as the tracker is attached,
    with one autograd node computing the eval-mode BN output and the loss together (same
    values and gradients; the backward writes the input gradient once instead of adding two).

    Layers are reported in execution order; layers that did not run in the last forward
    are absent. The model must be in eval mode when it runs (a frozen teacher): in train
    mode its running statistics would drift and its BN would use batch statistics.
    """

    def __init__(self, model: nn.Module, groups: int = 1, backend: str = "auto", fused: bool = False):
        self.groups = groups
        self.backend = backend
        self.fused = fused
        self._losses: List[Tensor] = []
        self._names: List[str] = []
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _BN_TYPES)]
        if not self.layers:
            raise ValueError(f"model {type(model).__name__} has no BatchNorm1d/2d layer to attach the loss to")
        for name, module in self.layers:
            if module.running_mean is None or module.running_var is None:
                raise ValueError(f"BatchNorm layer {name!r} has no running statistics (track_running_stats=False)")
        self._handles = [model.register_forward_pre_hook(self._start_forward)]
        if fused:  # the BN layers' own forward is replaced (restored by remove())
            for name, module in self.layers:
                module.forward = self._make_fused_forward(name, module)
            self._fused_modules = [m for _, m in self.layers]
        else:
            self._handles += [m.register_forward_pre_hook(self._make_hook(name)) for name, m in self.layers]

    def _start_forward(self, module, args) -> None:
        self._losses, self._names = [], []

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args) -> None:
            if module.training:
                raise RuntimeError(
                    f"BatchNorm layer {name!r} is in training mode: call model.eval() on the teacher "
                    "before matching its statistics"
                )
            x = args[0]
            self._losses.append(bn_stat_loss(x, module.running_mean, module.running_var, self.groups, self.backend))
            self._names.append(name)

        return hook

    def _make_fused_forward(self, name: str, module: nn.Module):
        def forward(x: Tensor) -> Tensor:
            if module.training:
                raise RuntimeError(
                    f"BatchNorm layer {name!r} is in training mode: call model.eval() on the teacher "
                    "before matching its statistics"
                )
            _check_inputs(x, module.running_mean, module.running_var, self.groups)
            backend = backends.resolve(self.backend, x.device)
            y, loss = _EvalBNWithStatLoss.apply(x, module.weight, module.bias, module.running_mean,
                                                module.running_var, module.eps, self.groups, backend)
            self._losses.append(loss)
            self._names.append(name)
            return y

        return forward

    @property
    def names(self) -> List[str]:
        """Names of the layers that ran in the last forward, in execution order."""
        return list(self._names)

    def losses(self) -> Tensor:
        """(L, G): per executed layer, per group, from the last forward."""
        if not self._losses:
            raise RuntimeError("no BatchNorm layer has run since the tracker was attached: run a forward pass first")
        return torch.stack(self._losses)

    def weighted_sum(self, first_bn_mult: float = 1.0) -> Tensor:
        """(G,): first_bn_mult * R_1 + sum_{l >= 2} R_l, the INFER/SRe2L regularizer."""
        per_layer = self.losses()
        weights = torch.ones(per_layer.shape[0], dtype=per_layer.dtype, device=per_layer.device)
        weights[0] = first_bn_mult
        return (per_layer * weights[:, None]).sum(dim=0)

    def clear(self) -> None:
        """Drop the last forward's losses (and the autograd graph they hold)."""
        self._losses, self._names = [], []

    def remove(self) -> None:
        """Detach all hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module in getattr(self, "_fused_modules", []):
            del module.forward  # back to the class's forward
        self._fused_modules = []
        self.clear()

    def __enter__(self) -> "BNStatTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def attach_bn_stat_loss(model: nn.Module, groups: int = 1, backend: str = "auto") -> BNStatTracker:
    """Shorthand for :class:`BNStatTracker` (``model`` must be a frozen, eval-mode teacher)."""
    return BNStatTracker(model, groups=groups, backend=backend)
