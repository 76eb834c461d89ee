"""What the ops of ``infer_fast._C`` (``torch.ops.infer_fast_C``) need from Python: the
lookup of the Python backends' launchers, fake kernels (so torch.compile and opcheck can
trace the ops), and the gradient w.r.t. the natural images, which is the torch reference.
Imported by :mod:`infer_fast.ops` once the extension has loaded."""
from __future__ import annotations

import torch
from torch import Tensor

import infer_fast._C

from . import backends, reference
from .layout import kept_format
from .reference import accumulate_dtype


def _like_x(x: Tensor) -> Tensor:
    return torch.empty_like(x, memory_format=kept_format(x))


def _loss_and_stats(x: Tensor, groups: int):
    acc = accumulate_dtype(x.dtype)
    return x.new_empty((groups,), dtype=acc), x.new_empty((groups, 2, x.shape[1] + 1), dtype=acc)


def _composed(natural: Tensor, ufc: Tensor) -> Tensor:
    return natural.new_empty((ufc.shape[0],) + tuple(natural.shape[1:]))


infer_fast._C.set_python_launchers(backends.launcher)
backends.ops_raise_marked_errors = True  # (an unusable backend met while tracing: see backends.resolve)

_FAKES = {
    "bn_stat_loss": lambda x, rm, rv, groups, backend: _loss_and_stats(x, groups)[0],
    "bn_eval_with_stat_loss": lambda x, rm, rv, w, b, eps, groups, backend: (_like_x(x), _loss_and_stats(x, groups)[0]),
    "ufc_compose": lambda natural, ufc, *rest: _composed(natural, ufc),
    "bn_stat_forward": lambda x, rm, rv, groups, backend: _loss_and_stats(x, groups),
    "bn_eval_stat_forward": lambda x, rm, rv, w, b, eps, groups, backend: (_like_x(x), *_loss_and_stats(x, groups)),
    "bn_stat_backward": lambda x, *rest: _like_x(x),
    "ufc_compose_forward": lambda natural, ufc, *rest: _composed(natural, ufc),
    "ufc_compose_backward": lambda grad_out, natural, ufc, *rest: torch.empty_like(ufc),
    "ufc_compose_grad_natural": lambda grad_out, natural, *rest: torch.empty_like(natural),
}

for _name, _fake in _FAKES.items():
    torch.library.register_fake(f"infer_fast_C::{_name}", _fake)

torch.library.impl("infer_fast_C::ufc_compose_grad_natural", "CompositeExplicitAutograd",
                   reference.ufc_compose_grad_natural)
