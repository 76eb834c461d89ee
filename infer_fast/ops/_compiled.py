"""The compiled backends ("cpu" and "cuda"): the C++/CUDA launchers of ``infer_fast._C``
(declared once in csrc/launchers.inc), each running the kernels of its tensors' device.
Contract: :mod:`infer_fast.ops.backends`."""
from infer_fast._C import launchers as _launchers

bn_stat_sums = _launchers.bn_stat_sums
bn_stat_forward = _launchers.bn_stat_forward
bn_stat_backward = _launchers.bn_stat_backward
ufc_compose = _launchers.ufc_compose
ufc_compose_grad_ufc = _launchers.ufc_compose_grad_ufc
