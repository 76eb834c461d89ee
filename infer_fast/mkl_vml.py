"""Intel MKL's vector math (VML) started on one thread, before any parallel work.

On CPU, torch computes sqrt, exp, log, tanh, erf, ... of contiguous float tensors with MKL's
VML (ATen's at::vml), in chunks of 2048 elements spread over the OpenMP threads. VML detects
the CPU lazily, on the process's first call, and that detection races: it stores the raw CPU
id in a static and only then overwrites it with the translated one. A thread that reads the
static in between computes with another kernel table. When two threads make the process's
first VML call at once (Adam's first step on 2+ threads, a tensor over 2048 elements), one
thread's chunk can come out of that other kernel: sqrt as x * rsqrtps(x), 12 bits instead of
24 (issue 20 point 0: about 1 resume in 40 differed from the uninterrupted run, and a fresh
run's first step is as exposed). One call on one thread, here at import, makes the detection
happen before any parallel region, so every later call sees the translated id.
"""
import torch


def start_mkl_vml_on_one_thread() -> None:
    """Make MKL VML's one-time CPU detection now, on this thread: a 1-element sqrt (below any
    grain, so no parallel region) is a VML call. Without MKL (at::vml then uses SLEEF, which
    has no such state) there is nothing to do."""
    if torch.backends.mkl.is_available():
        torch.sqrt(torch.ones(1))
