"""Grouped BatchNorm-statistics matching loss.

    loss[g] = ||mu_g - running_mean||_2 + ||sigma2_g - running_var||_2

with mu_g, sigma2_g the per-channel mean and biased variance of the rows of group g over
(rows, H, W). Forward is one read of x (shifted sums per group and channel) plus a
(G, C)-sized finalize; backward is one elementwise pass from three saved (G, C) vectors:

    dx = a_gc + b_gc * (x - mu_gc),  a = g*delta/(M*||delta||),  b = g*2e/(M*||e||)

The heavy passes run in a backend (see :mod:`infer_fast.ops.backends`); the finalize is
shared here so every backend returns the same numbers.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import backends
from .reference import accumulate_dtype

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_inputs(x: Tensor, running_mean: Tensor, running_var: Tensor, groups: int) -> None:
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
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if x.shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the batch size N={x.shape[0]} of x")


def _as_ncl(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, H*W) view in one of the two layouts the kernels take
    (NCL = contiguous NCHW, NLC = channels_last); other strides are copied to NCL."""
    if x.dim() == 2:
        x = x.contiguous()
        return x.view(x.shape[0], x.shape[1], 1)
    n, c, h, w = x.shape
    if _memory_format(x) == torch.channels_last:
        return x.as_strided((n, c, h * w), (c * h * w, 1, c))
    return x.contiguous().view(n, c, h * w)


def finalize(sums: Tensor, running_var: Tensor, count: int):
    """(2, G, C) shifted sums -> (mean_shift, var_err, norms[G, 2]) in the accumulate dtype."""
    mean_shift = sums[0] / count
    var_err = sums[1] / count - mean_shift.square() - running_var.to(sums.dtype)
    norms = torch.stack([torch.linalg.vector_norm(mean_shift, dim=1), torch.linalg.vector_norm(var_err, dim=1)], dim=1)
    return mean_shift, var_err, norms


def _safe_norms(norms: Tensor) -> Tensor:
    """A zero norm means its vector is zero: divide by 1 there so the gradient is 0, not NaN."""
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def backward_coefficients(grad_loss: Tensor, mean_shift: Tensor, var_err: Tensor, norms: Tensor, count: int):
    """a, b of dx = a + b (x - mu)."""
    safe = _safe_norms(norms) * count
    g = grad_loss.to(norms.dtype)[:, None]
    coef_a = g * mean_shift / safe[:, 0:1]
    coef_b = g * 2 * var_err / safe[:, 1:2]
    return coef_a.contiguous(), coef_b.contiguous()


@torch.library.custom_op("infer_fast::bn_stat_loss_forward", mutates_args=())
def _forward_op(
    x: Tensor, running_mean: Tensor, running_var: Tensor, groups: int, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _statistics_pass(x, running_mean, running_var, groups, backend)


def _statistics_pass(x, running_mean, running_var, groups, backend, affine=None):
    """(loss, mean_shift, var_err, norms) from one read of x; ``affine`` = (scale, shift, y)
    has the same kernel write the eval-mode BN output y (x's layout) as well."""
    x3 = _as_ncl(x)
    acc = accumulate_dtype(x.dtype)
    n, c, length = x3.shape
    sums = torch.empty(2, groups, c, dtype=acc, device=x.device)
    fused = () if affine is None else (affine[0], affine[1], _as_ncl(affine[2]))  # _as_ncl(y) has x3's strides
    backends.launcher(backend, "bn_stat_sums")(x3, running_mean.to(acc).contiguous(), groups, sums, *fused)
    mean_shift, var_err, norms = finalize(sums, running_var, (n // groups) * length)
    return norms.sum(dim=1), mean_shift, var_err, norms


def _fake_stats(x, groups):
    """Fake (loss, mean_shift, var_err, norms) for tracing."""
    acc = accumulate_dtype(x.dtype)
    c = x.shape[1]
    new = x.new_empty
    return new((groups,), dtype=acc), new((groups, c), dtype=acc), new((groups, c), dtype=acc), new((groups, 2), dtype=acc)


@_forward_op.register_fake
def _(x, running_mean, running_var, groups, backend):
    return _fake_stats(x, groups)


@torch.library.custom_op("infer_fast::bn_stat_loss_backward", mutates_args=())
def _backward_op(
    grad_loss: Tensor, x: Tensor, running_mean: Tensor, mean_shift: Tensor, var_err: Tensor,
    norms: Tensor, groups: int, backend: str,
) -> Tensor:
    return _gradient_pass(grad_loss, x, running_mean, mean_shift, var_err, norms, groups, backend)


def _gradient_pass(grad_loss, x, running_mean, mean_shift, var_err, norms, groups, backend, grad_y=None, scale=None):
    """dx = a + b (x - mu) in one elementwise pass; with ``grad_y`` (the fused eval-mode BN's
    output gradient) plus grad_y * scale in the same pass."""
    x3 = _as_ncl(x)
    n, _, length = x3.shape
    coef_a, coef_b = backward_coefficients(grad_loss, mean_shift, var_err, norms, (n // groups) * length)
    mean = (running_mean.to(mean_shift.dtype)[None, :] + mean_shift).contiguous()
    fmt = _memory_format(x)
    grad_input = torch.empty_like(x, memory_format=fmt)
    fused = () if grad_y is None else (_as_ncl(grad_y.contiguous(memory_format=fmt)), scale)  # dy read with x's strides
    backends.launcher(backend, "bn_stat_backward")(x3, coef_a, coef_b, mean, groups, _as_ncl(grad_input), *fused)
    return grad_input


@_backward_op.register_fake
def _(grad_loss, x, running_mean, mean_shift, var_err, norms, groups, backend):
    return torch.empty_like(x, memory_format=_memory_format(x))


def _memory_format(x: Tensor) -> torch.memory_format:
    """The layout _as_ncl keeps (so dx is laid out like the view the kernel writes)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _setup_context(ctx, inputs, output):
    x, running_mean, running_var, groups, backend = inputs
    _, mean_shift, var_err, norms = output
    ctx.mark_non_differentiable(mean_shift, var_err, norms)
    ctx.save_for_backward(x, running_mean, mean_shift, var_err, norms)
    ctx.groups, ctx.backend = groups, backend
    ctx.stat_dtypes = (running_mean.dtype, running_var.dtype)


def _running_stat_grads(ctx, grad_loss, mean_shift, var_err, norms):
    """The running statistics are buffers in practice; their (cheap, exact) gradients are
    given for completeness: d/d rm = -g*delta/||delta||, d/d rv = -g*e/||e||."""
    if grad_loss is None or not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        return None, None
    safe = _safe_norms(norms)
    g = grad_loss.to(norms.dtype)[:, None]
    grad_mean = (-(g * mean_shift / safe[:, 0:1]).sum(dim=0)).to(ctx.stat_dtypes[0])
    grad_var = (-(g * var_err / safe[:, 1:2]).sum(dim=0)).to(ctx.stat_dtypes[1])
    return grad_mean, grad_var


def _backward(ctx, grad_loss, *_unused_grads):
    x, running_mean, mean_shift, var_err, norms = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = _backward_op(grad_loss, x, running_mean, mean_shift, var_err, norms, ctx.groups, ctx.backend)
    return (grad_x, *_running_stat_grads(ctx, grad_loss, mean_shift, var_err, norms), None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


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
    _check_inputs(x, running_mean, running_var, groups)
    name = backends.resolve(backend, x.device)
    return _forward_op(x, running_mean, running_var, groups, name)[0]


# ----------------------------------------------------------------------------------------
# Eval-mode BatchNorm fused with the loss of its input (a frozen teacher's BN layer)
# ----------------------------------------------------------------------------------------
@torch.library.custom_op("infer_fast::bn_eval_stat_forward", mutates_args=())
def _eval_forward_op(
    x: Tensor, running_mean: Tensor, running_var: Tensor, scale: Tensor, shift: Tensor, groups: int, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    y = torch.empty_like(x, memory_format=_memory_format(x))
    return (y, *_statistics_pass(x, running_mean, running_var, groups, backend, affine=(scale, shift, y)))


@_eval_forward_op.register_fake
def _(x, running_mean, running_var, scale, shift, groups, backend):
    return (torch.empty_like(x, memory_format=_memory_format(x)), *_fake_stats(x, groups))


@torch.library.custom_op("infer_fast::bn_eval_stat_backward", mutates_args=())
def _eval_backward_op(
    grad_loss: Tensor, grad_y: Tensor, x: Tensor, running_mean: Tensor, mean_shift: Tensor, var_err: Tensor,
    norms: Tensor, scale: Tensor, groups: int, backend: str,
) -> Tensor:
    return _gradient_pass(grad_loss, x, running_mean, mean_shift, var_err, norms, groups, backend, grad_y, scale)


@_eval_backward_op.register_fake
def _(grad_loss, grad_y, x, running_mean, mean_shift, var_err, norms, scale, groups, backend):
    return torch.empty_like(x, memory_format=_memory_format(x))


def _eval_setup_context(ctx, inputs, output):
    x, running_mean, running_var, scale, shift, groups, backend = inputs
    _, _, mean_shift, var_err, norms = output
    ctx.mark_non_differentiable(mean_shift, var_err, norms)
    ctx.set_materialize_grads(False)  # an unused output (or loss) costs no backward pass
    ctx.save_for_backward(x, running_mean, mean_shift, var_err, norms, scale)
    ctx.groups, ctx.backend = groups, backend
    ctx.stat_dtypes = (running_mean.dtype, running_var.dtype)


def _eval_backward(ctx, grad_y, grad_loss, *_unused_grads):
    x, running_mean, mean_shift, var_err, norms, scale = ctx.saved_tensors
    view = (1, -1) + (1,) * (x.dim() - 2)
    grad_x = grad_scale = grad_shift = None
    if ctx.needs_input_grad[0]:
        if grad_y is not None and grad_loss is not None:  # the one fused pass
            grad_x = _eval_backward_op(grad_loss, grad_y, x, running_mean, mean_shift, var_err, norms, scale,
                                       ctx.groups, ctx.backend)
        elif grad_loss is not None:
            grad_x = _backward_op(grad_loss, x, running_mean, mean_shift, var_err, norms, ctx.groups, ctx.backend)
        elif grad_y is not None:
            grad_x = grad_y * scale.view(view).to(grad_y.dtype)
    if grad_y is not None and (ctx.needs_input_grad[3] or ctx.needs_input_grad[4]):  # trainable affine only
        dims = [0] + list(range(2, x.dim()))
        if ctx.needs_input_grad[3]:
            grad_scale = (grad_y.to(scale.dtype) * x.to(scale.dtype)).sum(dims)
        if ctx.needs_input_grad[4]:
            grad_shift = grad_y.to(scale.dtype).sum(dims)
    return (grad_x, *_running_stat_grads(ctx, grad_loss, mean_shift, var_err, norms), grad_scale, grad_shift,
            None, None)


_eval_forward_op.register_autograd(_eval_backward, setup_context=_eval_setup_context)


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
    _check_inputs(x, running_mean, running_var, groups)
    channels = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.shape != (channels,):
            raise ValueError(f"{name} must be None or a ({channels},) tensor to match x's channels, got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    name = backends.resolve(backend, x.device)
    acc = accumulate_dtype(x.dtype)
    scale = torch.rsqrt(running_var.to(acc) + eps)
    if weight is not None:
        scale = scale * weight.to(acc)
    shift = -running_mean.to(acc) * scale
    if bias is not None:
        shift = shift + bias.to(acc)
    y, loss = _eval_forward_op(x, running_mean, running_var, scale.contiguous(), shift.contiguous(), groups, name)[:2]
    return y, loss
