"""Fused ops of infer-fast: one API, several backends (torch reference, C++ CPU, CUDA, Triton).

    from infer_fast.ops import bn_stat_loss, bn_eval_with_stat_loss, ufc_compose, available_backends
"""
from .backends import BackendUnavailableError, available_backends, backend_report, compiled_extension

if compiled_extension()[0] is not None:
    from . import _library  # noqa: F401  (fake kernels and the Python parts of torch.ops.infer_fast_C)
from .bn_hooks import BNStatTracker, attach_bn_stat_loss
from .bn_stat_loss import bn_eval_with_stat_loss, bn_stat_loss
from .chunked import RowsFrom, chunked_loss_backward, group_segments
from .reference import bn_eval_with_stat_loss_naive, bn_stat_loss_naive, ufc_compose_naive
from .ufc_compose import ufc_compose

__all__ = [
    "bn_stat_loss",
    "bn_eval_with_stat_loss",
    "ufc_compose",
    "available_backends",
    "backend_report",
    "BackendUnavailableError",
    "BNStatTracker",
    "attach_bn_stat_loss",
    "RowsFrom",
    "chunked_loss_backward",
    "group_segments",
    "bn_stat_loss_naive",
    "bn_eval_with_stat_loss_naive",
    "ufc_compose_naive",
]
