"""Triton kernels of infer-fast, installed as the subpackage ``infer_fast.kernels``.

One file per fused op, each holding its ``@triton.jit`` kernels and the Python launchers
of the backend contract (see ``infer_fast.ops.backends``):

* :mod:`bn_stat_loss` -- ``bn_stat_sums``, ``bn_stat_forward`` and ``bn_stat_backward``;
* :mod:`ufc_compose` -- ``ufc_compose`` and ``ufc_compose_grad_ufc``.

The modules import only torch and triton (never ``infer_fast``) and no sibling module, so
each can also be imported by path from this directory (handy for scratch tests).
Under ``TRITON_INTERPRET=1`` (set before import) the kernels run on CPU tensors.
"""
