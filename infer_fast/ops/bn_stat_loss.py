"""Grouped BatchNorm-statistics matching loss, and an eval-mode BatchNorm fused with it.

    loss[g] = ||mu_g - running_mean||_2 + ||sigma2_g - running_var||_2

with mu_g, sigma2_g the per-channel mean and biased variance of the rows of group g over
(rows, H, W). Forward is one read of x that also finishes the loss; backward is one
elementwise pass that derives its coefficients from the saved (G, 2, C + 1) statistics:

    dx = a_gc + b_gc * (x - mu_gc),  a = g*delta/(M*||delta||),  b = g*2e/(M*||e||)

A call is validation here plus one dispatch of a ``torch.ops.infer_fast_C`` op, whose
autograd formula is C++ (csrc/autograd.cpp) and whose passes run in the chosen backend
(:mod:`infer_fast.ops.backends`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import backends
from ..checks import check_int
from .reference import FLOAT_DTYPES, bn_eval_with_stat_loss_naive, bn_stat_loss_naive


_ext, _ = backends.compiled_extension()
_bn_stat_loss_op = torch.ops.infer_fast_C.bn_stat_loss.default if _ext is not None else None
_bn_eval_op = torch.ops.infer_fast_C.bn_eval_with_stat_loss.default if _ext is not None else None


def check_inputs(x: Tensor, running_mean: Tensor, running_var: Tensor, groups: int) -> None:
    """Every user-causable error, as a ValueError naming the argument, before any kernel."""
    for name, t in (("x", x), ("running_mean", running_mean), ("running_var", running_var)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() not in (2, 4):
        raise ValueError(f"x must be (N, C, H, W) or (N, C), got a {x.dim()}-d tensor of shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    channels = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) to match x's {channels} channels, got {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be a float tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if running_var.dtype != running_mean.dtype:
        raise ValueError(f"running_var dtype {running_var.dtype} differs from running_mean dtype {running_mean.dtype}")
    check_int("groups", groups)
    if x.shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the batch size N={x.shape[0]} of x")


def _dense(vector: Optional[Tensor]) -> Optional[Tensor]:
    """A (C,) per-channel tensor as every backend takes it: an expanded or strided view (a
    broadcast statistic, every other element of a buffer) made contiguous, as the torch
    backend reads it anyway; contiguous ones pass as they are."""
    return None if vector is None else vector.contiguous()


def bn_stat_loss(
    x: Tensor, running_mean: Tensor, running_var: Tensor, groups: int = 1, backend: str = "auto"
) -> Tensor:
    """Per-group BN-statistics matching loss, shape (groups,).

    Args:
        x: (N, C, H, W) in NCHW or channels_last, or (N, C); fp16/bf16/fp32/fp64.
        running_mean, running_var: (C,) statistics to match (a BatchNorm layer's buffers).
        groups: G; group g owns rows [g*N/G, (g+1)*N/G) and gets its own statistics.
        backend: "auto", "torch", "cpu", "cuda" or "triton".

    Returns float32 (float64 for float64 x): loss[g] = ||mu_g - rm||_2 + ||var_g - rv||_2,
    biased variance, accumulated in fp32 shifted by rm. Differentiable w.r.t. all tensors.
    """
    check_inputs(x, running_mean, running_var, groups)
    name = backends.resolve(backend, x.device)
    running_mean, running_var = _dense(running_mean), _dense(running_var)
    if _bn_stat_loss_op is None:  # the extension did not load: the reference, by autograd
        return bn_stat_loss_naive(x, running_mean, running_var, groups)
    return _bn_stat_loss_op(x, running_mean, running_var, groups, name)


def bn_eval_with_stat_loss(
    x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None, eps: float = 1e-5, groups: int = 1, backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm of ``x`` and :func:`bn_stat_loss` of ``x``, in one pass each way.

    Returns ``(y, loss)``: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias
    (``F.batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps)``,
    in x's dtype and layout) and loss (groups,) as bn_stat_loss returns it. The statistics
    pass writes y while it reads x; the backward reads x and dy and writes
    dx = loss gradient + dy * weight / sqrt(running_var + eps) once. Differentiable w.r.t.
    x, weight, bias and the running statistics.
    """
    check_inputs(x, running_mean, running_var, groups)
    channels = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.shape != (channels,):
            raise ValueError(f"{name} must be None or a ({channels},) tensor to match x's channels, got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be a float tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    # (under torch.compile(dynamic=True) eps is a symbolic float that math cannot read: the op checks it)
    if not torch.compiler.is_compiling() and (
            not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0):
        raise ValueError(f"eps must be a finite non-negative float, got {eps!r}")
    name = backends.resolve(backend, x.device)
    running_mean, running_var, weight, bias = (_dense(t) for t in (running_mean, running_var, weight, bias))
    if _bn_eval_op is None:
        return bn_eval_with_stat_loss_naive(x, running_mean, running_var, weight, bias, float(eps), groups)
    return _bn_eval_op(x, running_mean, running_var, weight, bias, float(eps), groups, name)
