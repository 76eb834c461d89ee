"""The "triton" backend: the five launchers of the backend contract
(:mod:`infer_fast.ops.backends`) implemented as Triton kernels.

The kernels live in the top-level ``kernels/`` directory, installed as the subpackage
``infer_fast.kernels``. Importing this module fails (and the dispatcher reports why) when
triton is missing. On CPU tensors the kernels need ``TRITON_INTERPRET=1`` set before this
module is imported (the first Triton use of the process).
"""
from __future__ import annotations

from infer_fast.kernels.bn_stat_loss import bn_stat_backward, bn_stat_forward, bn_stat_sums
from infer_fast.kernels.ufc_compose import ufc_compose, ufc_compose_grad_ufc
from infer_fast.ops.backends import triton_interpret_set

# Triton decorated the kernels above for its interpreter or for the GPU as TRITON_INTERPRET said
# when they were imported, for the rest of the process: what it said then, not what it says now.
INTERPRETED = triton_interpret_set()

__all__ = ["bn_stat_sums", "bn_stat_forward", "bn_stat_backward", "ufc_compose", "ufc_compose_grad_ufc"]
