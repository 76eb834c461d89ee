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

MKL also has a quirk at load: linked into libtorch_cpu, it reads the working directory as torch
loads it and, when that has been deleted, ends the process ("Intel oneMKL FATAL ERROR: Cannot
load libtorch_cpu.so", status 2, before any of our code can say why): :func:`loading_torch`.
This module imports torch only inside its functions, so the package can use it before torch.
"""
import contextlib
import os
from typing import Iterator

# torch functions whose contiguous float/double CPU kernels call MKL VML (ATen's cpu/vml.h,
# IMPLEMENT_VML_MKL). In this build all share one detection, but other oneMKL builds may
# resolve per function and precision, so each gets its first call here.
VML_FUNCTIONS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin", "sqrt",
                 "tan", "tanh", "trunc")


@contextlib.contextmanager
def loading_torch() -> Iterator[None]:
    """Around `import torch`: where the working directory has been deleted, torch is loaded
    from the root directory, then the process is back in its deleted directory (by a
    descriptor held meanwhile), so a relative path still fails as it should and the CLI says
    why in one line (cli._working_directory_problem) instead of MKL ending the process."""
    try:
        os.getcwd()
        here = None
    except OSError:
        try:
            here = os.open(".", os.O_RDONLY)
        except OSError:  # (not even that: MKL will stop the process its own way)
            here = None
    if here is None:
        yield
        return
    os.chdir(os.path.abspath(os.sep))
    try:
        yield
    finally:
        os.fchdir(here)
        os.close(here)


def start_mkl_vml_on_one_thread() -> None:
    """Make MKL VML's one-time set-up now, on this thread: each VML function once on a
    1-element tensor (below any grain, so no parallel region), in float32 and float64.
    Without MKL (at::vml then uses SLEEF, which has no such state) there is nothing to do."""
    import torch

    if not torch.backends.mkl.is_available():
        return
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1,), 0.5, dtype=dtype)  # (inside every function's domain)
        for name in VML_FUNCTIONS:
            getattr(torch, name)(x)
