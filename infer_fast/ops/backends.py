"""Backends of the fused ops and the dispatch between them.

Backend contract
================
Every backend provides the same four launchers. The public ops validate and normalize
their inputs first, so launchers may assume everything below; they write *every* element
of their output argument (tests poison outputs with NaN to catch unwritten elements) and
never synchronize with the host.

``bn_stat_sums(x3, running_mean, groups, out, scale=None, shift=None, y3=None)``
    x3: (N, C, L) with L = H*W, dtype fp16/bf16/fp32/fp64, N = groups * n, in one of two
    layouts: "NCL" (x3.stride() == (C*L, L, 1), plain NCHW) or "NLC"
    (x3.stride() == (C*L, 1, C), channels_last). Launchers take the NCL path when
    x3.stride(2) == 1, else the NLC path. running_mean: (C,) contiguous, accumulate dtype
    (fp32, fp64 for fp64 inputs). out: (2, G, C) contiguous, accumulate dtype:
    out[0, g, c] = sum(x - rm[c]), out[1, g, c] = sum((x - rm[c])^2) over rows
    [g*n, (g+1)*n) and all L. Loads are converted to the accumulate dtype first.

    Optional fused eval-mode BatchNorm, ``scale, shift, y3`` (all three or none): scale and
    shift (C,) contiguous, accumulate dtype; y3 has x3's shape, strides and dtype and gets
    y3[n, c, l] = x[n, c, l] * scale[c] + shift[c] (accumulate dtype), written by the pass
    that reads x for the sums; the sums are the same as without y3.

``bn_stat_backward(x3, coef_a, coef_b, mean, groups, grad_input, grad_y3=None, scale=None)``
    coef_a, coef_b, mean: (G, C) contiguous, accumulate dtype. grad_input has x3's shape,
    strides and dtype: grad_input[n, c, l] = a[g, c] + b[g, c] * (x[n, c, l] - mean[g, c]),
    computed in the accumulate dtype, g = n // (N / G). With ``grad_y3`` (x3's shape,
    strides and dtype) and ``scale`` (C,): plus grad_y3[n, c, l] * scale[c], in the same pass.

``ufc_compose(natural, ufc, index, shifts, flips, lo, hi, out)``
    natural (K, C, ch, H, W) and ufc (G, ch, H, W), contiguous, same dtype T;
    index (G,) int64 in [0, K); shifts (G, 2) int64 already reduced to [0, H) x [0, W);
    flips (G,) uint8 (0 or 1); lo, hi: both None or both (ch,) tensors of the accumulate
    dtype. out (G, C, ch, H, W) contiguous, dtype T:
    out[g, c, k, h, w] = clamp(natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws], lo[k], hi[k])
    with hs = (h - shifts[g, 0]) mod H, wr = W-1-w if flips[g] else w,
    ws = (wr - shifts[g, 1]) mod W; the sum and clamp run in the accumulate dtype.

``ufc_compose_grad_ufc(grad_out, natural, ufc, index, shifts, flips, lo, hi, grad_ufc)``
    grad_out (G, C, ch, H, W) contiguous dtype T; grad_ufc (G, ch, H, W) contiguous dtype T:
    grad_ufc[g, k, hs, ws] = sum_c grad_out[g, c, k, h, w] * [lo[k] <= v <= hi[k]]
    where (h, w) is the output pixel that source pixel (hs, ws) lands on and
    v = natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws] (accumulate dtype; no mask
    when lo/hi are None). The class sum runs in the accumulate dtype.

Dispatch
========
``backend="auto"`` picks the first usable backend in :data:`AUTO_ORDER` for the tensor's
device; the environment variable ``INFER_FAST_BACKEND`` overrides "auto". Asking for a
backend that cannot run raises :class:`BackendUnavailableError` saying what is missing.
"""
from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType
from typing import Callable, Dict, List, Optional

import torch

BACKENDS = ("torch", "cpu", "cuda", "triton")
ENV_VAR = "INFER_FAST_BACKEND"
# Fastest first, per device type. On CPU the Triton interpreter is a testing tool, never a
# default. On GPU the order follows bench/results (update it when measurements say so).
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}

LAUNCHERS = ("bn_stat_sums", "bn_stat_backward", "ufc_compose", "ufc_compose_grad_ufc")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says what is missing."""


@functools.lru_cache(maxsize=None)
def _import(module: str):
    """(module, None) or (None, reason) — cached so a failed import is not retried per call."""
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # ImportError, or an extension that fails to load
        return None, f"{type(exc).__name__}: {exc}"


def compiled_extension():
    """(infer_fast._C, None) or (None, reason)."""
    return _import("infer_fast._C")


def triton_module():
    """(infer_fast.ops._triton, None) or (None, reason)."""
    return _import("infer_fast.ops._triton")


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """None when backend ``name`` can run on ``device``, else what is missing."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or 'auto'"
    dev = device.type
    if name == "torch":
        return None
    if name == "cpu":
        if dev != "cpu":
            return f"backend 'cpu' runs on CPU tensors, got a {dev} tensor"
        _, why = compiled_extension()
        return None if why is None else f"the compiled extension infer_fast._C did not load ({why}); reinstall infer-fast"
    if name == "cuda":
        if dev != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, got a {dev} tensor"
        ext, why = compiled_extension()
        if ext is None:
            return f"the compiled extension infer_fast._C did not load ({why})"
        if not ext.cuda_compiled():
            return "infer_fast._C was built without CUDA kernels (see `infer-fast info` for why)"
        return None
    # triton
    mod, why = triton_module()
    if mod is None:
        return f"Triton is not usable ({why})"
    if dev == "cpu" and not triton_interpreter():
        return "backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before infer_fast is imported"
    if dev not in ("cpu", "cuda"):
        return f"backend 'triton' does not run on {dev} tensors"
    return None


@functools.lru_cache(maxsize=None)
def _launchers(name: str) -> Dict[str, Callable]:
    if name == "torch":
        module: ModuleType = importlib.import_module("infer_fast.ops.reference")
    elif name in ("cpu", "cuda"):
        module = importlib.import_module("infer_fast.ops._compiled")
    else:
        module, _ = triton_module()
    return {op: getattr(module, op) for op in LAUNCHERS}


# Under torch.compile the choice is made once at trace time (imports and environment
# reads are not traceable), and the graph keeps the resolved name as a constant.
@torch._dynamo.assume_constant_result
def resolve(backend: str, device: torch.device) -> str:
    """Turn ``backend`` ("auto" or a name) into a usable backend name for ``device``."""
    if not isinstance(backend, str):
        raise ValueError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        forced = os.environ.get(ENV_VAR, "").strip()
        if forced and forced != "auto":
            backend = forced
        else:
            for name in AUTO_ORDER.get(device.type, ("torch",)):
                if unavailable_reason(name, device) is None:
                    return name
            return "torch"
    why = unavailable_reason(backend, device)
    if why is not None:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable: {why}")
    return backend


def launcher(backend: str, op: str) -> Callable:
    """The launcher ``op`` of an already-resolved ``backend``."""
    return _launchers(backend)[op]


def available_backends(device: Optional[torch.device | str] = None) -> List[str]:
    """Backends usable here: for ``device`` if given, else for any device present."""
    if device is not None:
        device = torch.device(device)
        return [b for b in BACKENDS if unavailable_reason(b, device) is None]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [b for b in BACKENDS if any(unavailable_reason(b, d) is None for d in devices)]


def backend_report() -> Dict[str, Dict[str, object]]:
    """Per backend and device: usable or the reason it is not (for `infer-fast info`)."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return {
        name: {d.type: (unavailable_reason(name, d) or "usable") for d in devices} for name in BACKENDS
    }
