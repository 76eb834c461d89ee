"""The compiled backends ("cpu" and "cuda"): launchers that call the C++/CUDA kernels of
``infer_fast._C``. Both backends use the same ops; the dispatcher picks the CPU or CUDA
kernel from the tensors' device. Contract: :mod:`infer_fast.ops.backends`."""
from __future__ import annotations

import torch

import infer_fast._C  # noqa: F401  (loading the library registers torch.ops.infer_fast_C)

_ops = torch.ops.infer_fast_C


def bn_stat_sums(x3, running_mean, groups, out, scale=None, shift=None, y3=None):
    _ops.bn_stat_sums(x3, running_mean, groups, out, scale, shift, y3)


def bn_stat_backward(x3, coef_a, coef_b, mean, groups, grad_input, grad_y3=None, scale=None):
    _ops.bn_stat_backward(x3, coef_a, coef_b, mean, groups, grad_input, grad_y3, scale)


def ufc_compose(natural, ufc, index, shifts, flips, lo, hi, out):
    _ops.ufc_compose(natural, ufc, index, shifts, flips, lo, hi, out)


def ufc_compose_grad_ufc(grad_out, natural, ufc, index, shifts, flips, lo, hi, grad_ufc):
    _ops.ufc_compose_grad_ufc(grad_out, natural, ufc, index, shifts, flips, lo, hi, grad_ufc)
