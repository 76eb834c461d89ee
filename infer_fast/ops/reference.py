"""Pure-PyTorch definitions of the two fused ops: the readable reference.

Two layers live here:

* ``*_naive`` functions: the plain textbook formulas, differentiable by autograd. Tests
  compare every backend against these in float64.
* the ``torch`` backend: the five kernel launchers of the backend contract
  (see :mod:`infer_fast.ops.backends`) written with torch ops. They write into
  caller-provided outputs exactly like the compiled and Triton kernels do.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # what the ops take

# (rtol, atol) a backend's result stored in a dtype is held to against the float64 reference:
# the tests' and the benchmarks' (a fast wrong kernel never wins) one bound
REFERENCE_TOLERANCE = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tolerance(dtype: torch.dtype):
    """(rtol, atol) for results stored in ``dtype`` against a float64 reference."""
    return REFERENCE_TOLERANCE[dtype]


def at_least_fp32(t: Tensor) -> Tensor:
    """fp16/bf16 values widened to fp32 (a bf16 teacher's logits before the CE); fp32 and
    fp64 as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and compositions run in fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------
# Naive definitions (autograd does the backward)
# ----------------------------------------------------------------------------------------
def bn_stat_loss_naive(x: Tensor, running_mean: Tensor, running_var: Tensor, groups: int = 1) -> Tensor:
    """loss[g] = ||mean_g - running_mean||_2 + ||var_g - running_var||_2 (biased variance).

    ``x`` is (N, C, H, W) or (N, C); group g owns rows [g*N/G, (g+1)*N/G).
    """
    acc = accumulate_dtype(x.dtype)
    x = x.to(acc)
    if x.dim() == 2:
        x = x[:, :, None, None]
    n, c = x.shape[:2]
    xg = x.reshape(groups, n // groups, c, -1).transpose(1, 2).reshape(groups, c, -1)
    mean = xg.mean(dim=2)
    var = xg.var(dim=2, unbiased=False)
    rm, rv = running_mean.to(acc), running_var.to(acc)
    return torch.linalg.vector_norm(mean - rm, dim=1) + torch.linalg.vector_norm(var - rv, dim=1)


def bn_eval_with_stat_loss_naive(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Optional[Tensor] = None,
                                 bias: Optional[Tensor] = None, eps: float = 1e-5, groups: int = 1):
    """(eval-mode BatchNorm of x, bn_stat_loss_naive of x): what the fused op computes."""
    y = torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps)
    return y, bn_stat_loss_naive(x, running_mean, running_var, groups)


def source_coords(height: int, width: int, shifts: Tensor, flips: Tensor):
    """Per group, the source row/column read by each output row/column.

    Output (h, w) of group g reads the pre-transform image at
    (src_h[g, h], src_w[g, w]): roll by shifts[g] over (H, W), then mirror W if flips[g].
    """
    device = shifts.device
    h = torch.arange(height, device=device)
    w = torch.arange(width, device=device)
    # reduced into [0, H) x [0, W) first, as every backend does: h - shift itself would
    # overflow int64 for a shift near its minimum
    shift_h, shift_w = shifts[:, 0:1].remainder(height), shifts[:, 1:2].remainder(width)
    src_h = (h[None, :] - shift_h).remainder(height)
    w_rolled = torch.where(flips[:, None].bool(), width - 1 - w[None, :], w[None, :])
    src_w = (w_rolled - shift_w).remainder(width)
    return src_h, src_w


def transform(images: Tensor, src_h: Tensor, src_w: Tensor) -> Tensor:
    """Apply per-group roll/flip given as source coordinates. images: (G, C, ch, H, W)."""
    groups = torch.arange(images.shape[0], device=images.device)
    # advanced indexing puts the indexed dims first: (G, H, W, C, ch)
    out = images.permute(0, 3, 4, 1, 2)[groups[:, None, None], src_h[:, :, None], src_w[:, None, :]]
    return out.permute(0, 3, 4, 1, 2)


def untransform(images: Tensor, src_h: Tensor, src_w: Tensor) -> Tensor:
    """Inverse of :func:`transform` (roll/flip are permutations of the pixel grid)."""
    return transform(images, torch.argsort(src_h, dim=1), torch.argsort(src_w, dim=1))


def ufc_compose_naive(
    natural: Tensor,
    ufc: Tensor,
    index: Tensor,
    shifts: Optional[Tensor] = None,
    flips: Optional[Tensor] = None,
    lo: Optional[Tensor] = None,
    hi: Optional[Tensor] = None,
) -> Tensor:
    """X[g, c] = clamp(flip(roll(natural[index[g], c] + ufc[g])), lo, hi), computed in
    fp32 (fp64 for fp64 inputs) and returned in the inputs' dtype. Shape (G, C, ch, H, W)."""
    acc = accumulate_dtype(natural.dtype)
    num_groups, _, height, width = ufc.shape
    x = natural.to(acc)[index] + ufc.to(acc)[:, None]
    shifts, flips = _roll_and_flip(shifts, flips, num_groups, ufc.device)
    x = transform(x, *source_coords(height, width, shifts.long(), flips))
    # torch.clamp (unlike maximum/minimum) passes the full gradient at a tie with a bound
    if lo is not None or hi is not None:
        per_channel = lambda b: None if b is None else b.to(acc).view(1, 1, -1, 1, 1)  # noqa: E731
        x = torch.clamp(x, per_channel(lo), per_channel(hi))
    return x.to(natural.dtype)


# ----------------------------------------------------------------------------------------
# The "torch" backend: the contract's five launchers in plain PyTorch
# ----------------------------------------------------------------------------------------
def _group_view(x3: Tensor, groups: int) -> Tensor:
    """(N, C, L) -> (G, n, C, L) without copying."""
    return x3.unflatten(0, (groups, x3.shape[0] // groups))


def _per_channel(values: Tensor) -> Tensor:
    """(C,) -> broadcastable against (G, n, C, L)."""
    return values.view(1, 1, -1, 1)


def bn_stat_sums(x3: Tensor, running_mean: Tensor, groups: int, out: Tensor) -> None:
    """out[0, g, c] = sum(x - rm_c), out[1, g, c] = sum((x - rm_c)^2) over (rows of g, L)."""
    d = _group_view(x3.to(out.dtype), groups) - _per_channel(running_mean.to(out.dtype))
    out[0].copy_(d.sum(dim=(1, 3)))
    out[1].copy_(d.square().sum(dim=(1, 3)))


def finalize_stats(sums: Tensor, running_var: Tensor, count: int, loss: Tensor, stats: Tensor) -> None:
    """(2, G, C) shifted sums over ``count`` values per (g, c) -> the contract's ``stats``
    (G, 2, C + 1) = [delta, ||delta||; e, ||e||] and ``loss`` (G,) = ||delta|| + ||e||."""
    channels = sums.shape[2]
    # finished in fp64, as the compiled backends do: in fp32, delta^2 and the squares in the norms
    # overflow for |x| beyond ~1e19 where the loss itself fits (stored back in acc)
    wide = sums.to(torch.float64)
    delta = wide[0] / count
    err = wide[1] / count - delta.square() - running_var.to(torch.float64)
    stats[:, 0, :channels] = delta
    stats[:, 1, :channels] = err
    norm_delta, norm_err = torch.linalg.vector_norm(delta, dim=1), torch.linalg.vector_norm(err, dim=1)
    stats[:, 0, channels] = norm_delta
    stats[:, 1, channels] = norm_err
    loss.copy_(norm_delta + norm_err)


def eval_bn_scale(running_var: Tensor, weight: Optional[Tensor], eps: float, dtype: torch.dtype) -> Tensor:
    """The eval-mode BatchNorm's per-channel factor rsqrt(rv + eps) * weight."""
    scale = torch.rsqrt(running_var.to(dtype) + eps)
    return scale if weight is None else scale * weight.to(dtype)


def bn_stat_forward(x3: Tensor, running_mean: Tensor, running_var: Tensor, groups: int, loss: Tensor, stats: Tensor,
                    weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 0.0,
                    y3: Optional[Tensor] = None) -> None:
    """loss and stats of the grouped statistics; with y3 also the eval-mode BatchNorm output."""
    acc = stats.dtype
    sums = torch.empty(2, groups, x3.shape[1], dtype=acc, device=x3.device)
    bn_stat_sums(x3, running_mean, groups, sums)
    finalize_stats(sums, running_var, (x3.shape[0] // groups) * x3.shape[2], loss, stats)
    if y3 is not None:
        scale = eval_bn_scale(running_var, weight, eps, acc)
        shift = -running_mean.to(acc) * scale
        if bias is not None:
            shift = shift + bias.to(acc)
        y3.copy_(x3.to(acc) * scale.view(1, -1, 1) + shift.view(1, -1, 1))


def bn_stat_backward(x3: Tensor, running_mean: Tensor, stats: Tensor, grad_loss: Optional[Tensor], count: int,
                     grad_input: Tensor, grad_y3: Optional[Tensor] = None, running_var: Optional[Tensor] = None,
                     weight: Optional[Tensor] = None, eps: float = 0.0) -> None:
    """grad_input = a + b ((x - rm) - delta) [loss term] + grad_y3 * scale [eval-BN term]."""
    acc = stats.dtype
    groups, channels = stats.shape[0], stats.shape[2] - 1
    grad = torch.zeros((), dtype=acc, device=x3.device)
    if grad_loss is not None:
        delta, err = stats[:, 0, :channels], stats[:, 1, :channels]
        norms = stats[:, :, channels]
        safe = torch.where(norms > 0, norms, torch.ones_like(norms)) * count
        upstream = grad_loss.to(acc)[:, None]
        coef_a = (upstream * delta / safe[:, 0:1])[:, None, :, None]
        coef_b = (upstream * 2 * err / safe[:, 1:2])[:, None, :, None]
        centered = _group_view(x3.to(acc), groups) - _per_channel(running_mean.to(acc)) - delta[:, None, :, None]
        grad = coef_a + coef_b * centered
    if grad_y3 is not None:
        grad = grad + _group_view(grad_y3.to(acc), groups) * _per_channel(eval_bn_scale(running_var, weight, eps, acc))
    _group_view(grad_input, groups).copy_(grad.expand(_group_view(grad_input, groups).shape))


def _clamp_bounds(lo: Optional[Tensor], hi: Optional[Tensor], channels: int):
    if lo is None:
        return None, None
    return lo.view(1, 1, channels, 1, 1), hi.view(1, 1, channels, 1, 1)


def _roll_and_flip(shifts: Optional[Tensor], flips: Optional[Tensor], groups: int, device) -> tuple:
    """The contract's optional shifts/flips as tensors (None: no roll, no flip)."""
    if shifts is None:
        shifts = torch.zeros(groups, 2, dtype=torch.int64, device=device)
    if flips is None:
        flips = torch.zeros(groups, dtype=torch.bool, device=device)
    return shifts, flips


def ufc_compose(natural, ufc, index, shifts, flips, lo, hi, out) -> None:
    """out[g, c] = clamp(roll/flip(natural[index[g], c] + ufc[g]), lo, hi)."""
    out.copy_(ufc_compose_naive(natural, ufc, index, shifts, flips, lo, hi))


def compose_masked_source_grad(grad_out, natural, ufc, index, shifts, flips, lo, hi) -> Tensor:
    """Gradient w.r.t. the pre-transform sum natural[index[g]] + ufc[g], per (g, c), in the
    accumulate dtype: un-roll/flip of grad_out with clamped elements zeroed."""
    acc = accumulate_dtype(natural.dtype)
    height, width = ufc.shape[-2:]
    shifts, flips = _roll_and_flip(shifts, flips, ufc.shape[0], ufc.device)
    src_h, src_w = source_coords(height, width, shifts, flips)
    grad = untransform(grad_out.to(acc), src_h, src_w)
    low, high = _clamp_bounds(lo, hi, ufc.shape[1])
    if low is not None:
        value = natural.to(acc)[index] + ufc.to(acc)[:, None]
        grad = grad * ((value >= low) & (value <= high))
    return grad


def ufc_compose_grad_ufc(grad_out, natural, ufc, index, shifts, flips, lo, hi, grad_ufc) -> None:
    """grad_ufc[g] = sum over classes of the masked, un-rolled grad_out[g, c]."""
    grad_ufc.copy_(compose_masked_source_grad(grad_out, natural, ufc, index, shifts, flips, lo, hi).sum(dim=1))


def ufc_compose_grad_natural(grad_out, natural, ufc, index, shifts, flips, lo, hi) -> Tensor:
    """grad_natural[k] = sum over the groups g with index[g] == k of the masked, un-rolled grad_out[g]."""
    per_group = compose_masked_source_grad(grad_out, natural, ufc, index, shifts, flips, lo, hi)
    return torch.zeros_like(natural, dtype=per_group.dtype).index_add_(0, index, per_group).to(natural.dtype)
