"""Intel MKL's vector math (VML) started on one thread, before any parallel work.

On CPU, torch computes sqrt, exp, log, tanh, erf, ... of contiguous float tensors with MKL's
VML (ATen's at::vml), in chunks of 2048 elements spread over the OpenMP threads. VML resolves
its kernels lazily, on first use, and that is a data race in the oneMKL torch bundles (2024.2):
here, its CPU detection stores the raw CPU id in a static and only then overwrites it with the
translated one, and a thread that reads the static in between computes with another kernel
table. When two threads make the process's first VML call at once (Adam's first step on 2+
threads, a tensor over 2048 elements), one thread's chunk can come out of a low-accuracy
kernel: sqrt as x * rsqrtps(x), 12 bits instead of 24. That made about 1 resumed recovery in
40 differ from the uninterrupted run (issue 20 point 0), and a fresh run's first step is as
exposed. Reported upstream as pytorch/pytorch#188792. Calling each of these functions once
on one thread, here at import, resolves everything before any parallel region.
"""
import torch

# torch functions whose contiguous float/double CPU kernels call MKL VML (ATen's cpu/vml.h,
# IMPLEMENT_VML_MKL). In this build all share one detection, but other oneMKL builds may
# resolve per function and precision, so each gets its first call here.
VML_FUNCTIONS = (torch.acos, torch.asin, torch.atan, torch.cos, torch.erf, torch.erfc, torch.erfinv, torch.exp,
                 torch.log, torch.log10, torch.log2, torch.sin, torch.sqrt, torch.tan, torch.tanh, torch.trunc)


def start_mkl_vml_on_one_thread() -> None:
    """Make MKL VML's one-time set-up now, on this thread: each VML function once on a
    1-element tensor (below any grain, so no parallel region), in float32 and float64.
    Without MKL (at::vml then uses SLEEF, which has no such state) there is nothing to do."""
    if not torch.backends.mkl.is_available():
        return
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1,), 0.5, dtype=dtype)  # (inside every function's domain)
        for function in VML_FUNCTIONS:
            function(x)
