"""Backends of the fused ops and the dispatch between them.

Backend contract
================
Every backend provides the same five launchers. The registered ops (torch.ops.infer_fast_C)
check their arguments against everything below before any launcher runs (the functional ops
of csrc/functional.cpp, whatever the backend; the public Python functions check first, with
friendlier messages), so launchers may assume it; they write *every* element of their
output arguments (tests poison outputs with NaN to catch unwritten elements) and never
synchronize with the host. "acc" is the accumulate dtype: fp64 for fp64 inputs, else fp32.
The compiled backends ("cpu", "cuda") declare them once in C++ (csrc/launchers.inc).

Tensors of the BN ops. x3: (N, C, L) with L = H*W, dtype fp16/bf16/fp32/fp64, N = G * n,
in one of two layouts: "NCL" (x3.stride() == (C*L, L, 1), plain NCHW) or "NLC"
(x3.stride() == (C*L, 1, C), channels_last); launchers take the NCL path when
x3.stride(2) == 1 (and L > 1), else the NLC path. running_mean, running_var, weight, bias:
(C,) contiguous, one float dtype P shared by all of them (any of the four; converted to acc
where loaded). Group g owns rows [g*n, (g+1)*n).

``bn_stat_sums(x3, running_mean, groups, out)``
    out: (2, G, C) contiguous acc: out[0, g, c] = sum(x - rm[c]), out[1, g, c] =
    sum((x - rm[c])^2) over the rows of group g and all L (the chunked mode's pass 1).

``bn_stat_forward(x3, running_mean, running_var, groups, loss, stats, weight=None, bias=None, eps=0.0, y3=None)``
    The loss and what its backward needs, from one read of x. With M = n * L,
    delta = sum(x - rm) / M and e = sum((x - rm)^2) / M - delta^2 - rv, per (g, c):
    stats: (G, 2, C + 1) contiguous acc, stats[g, 0, :C] = delta_g, stats[g, 0, C] =
    ||delta_g||_2, stats[g, 1, :C] = e_g, stats[g, 1, C] = ||e_g||_2; loss: (G,) contiguous
    acc, loss[g] = ||delta_g|| + ||e_g||. The cpu, cuda and torch backends finish (delta, e,
    their norms, the loss) in fp64 from the sums and round to acc once; triton finishes in acc,
    where the squares overflow fp32 for a group's values beyond ~1e19 (no network's
    activations: its hot kernel is left as measured on the GPU). The torch backend's sums are
    in acc over a whole (g, c) (its sum of squares overflows fp32 past ~3e38: values beyond
    ~1e18 when there are a few); the cpu backend adds short blocks summed in acc into fp64.
    Fused eval-mode BatchNorm when ``y3`` is given (x3's shape, strides and dtype):
    y3 = x * scale[c] + shift[c] in acc, written by the pass that reads x for the sums, with
    scale = rsqrt(rv + eps) * weight and shift = bias - rm * scale (weight None: 1, bias
    None: 0). Without y3, weight, bias and eps are ignored; stats and loss are the same
    either way.

``bn_stat_backward(x3, running_mean, stats, grad_loss, count, grad_input, grad_y3=None, running_var=None, weight=None, eps=0.0)``
    One elementwise pass; the coefficients come from ``stats`` (as bn_stat_forward writes
    it, G = stats.shape[0] groups), ``grad_loss`` ((G,) acc, any stride — the gradient of
    a summed loss arrives expanded, stride 0 — or None: no loss term) and ``count`` (the M
    the statistics were taken over; the chunked mode passes the whole group's M for a slice
    of its rows). grad_input has x3's shape, strides and dtype:
        grad_input = a[g, c] + b[g, c] * ((x - rm[c]) - delta[g, c])   (when grad_loss is given)
                     + grad_y3 * scale[c]                              (when grad_y3 is given)
    with a = grad_loss[g] * delta / (count * ||delta_g||), b = 2 * grad_loss[g] * e /
    (count * ||e_g||) (a zero norm counts as 1: its vector is zero, so is the gradient),
    scale as in bn_stat_forward (running_var required with grad_y3, weight optional), all in
    acc and rounded once. grad_y3 has x3's shape, strides and dtype. At least one of
    grad_loss and grad_y3 is given.

Tensors of the compose ops. natural (K, C, ch, H, W) and ufc (G, ch, H, W), contiguous,
same dtype T; index (G,) int64 in [0, K); shifts: (G, 2) int64 roll amounts (any values,
reduced mod (H, W) as torch.roll does) or None (no roll); flips: (G,) uint8 or bool, or None
(no flip); lo, hi: both None or both (ch,) contiguous acc tensors.

``ufc_compose(natural, ufc, index, shifts, flips, lo, hi, out)``
    out (G, C, ch, H, W) contiguous, dtype T:
    out[g, c, k, h, w] = clamp(natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws], lo[k], hi[k])
    with hs = (h - shifts[g, 0]) mod H, wr = W-1-w if flips[g] else w,
    ws = (wr - shifts[g, 1]) mod W; the sum and clamp run in acc.

``ufc_compose_grad_ufc(grad_out, natural, ufc, index, shifts, flips, lo, hi, grad_ufc)``
    grad_out (G, C, ch, H, W) contiguous dtype T; grad_ufc (G, ch, H, W) contiguous dtype T:
    grad_ufc[g, k, hs, ws] = sum_c grad_out[g, c, k, h, w] * [lo[k] <= v <= hi[k]]
    where (h, w) is the output pixel that source pixel (hs, ws) lands on and
    v = natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws] (acc; no mask when lo/hi are
    None). The class sum runs in acc.

Dispatch
========
``backend="auto"`` picks the first usable backend in :data:`AUTO_ORDER` for the tensor's
device; the environment variable ``INFER_FAST_BACKEND`` overrides "auto". Asking for a
backend that cannot run raises :class:`BackendUnavailableError` saying what is missing (under
torch.compile too: the compiled function raises it when it runs, see :func:`resolve`).
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from types import ModuleType
from typing import Callable, Dict, List, Optional

import torch

BACKENDS = ("torch", "cpu", "cuda", "triton")
ENV_VAR = "INFER_FAST_BACKEND"
# Fastest first, per device type. On CPU the Triton interpreter is a testing tool, never a
# default. On GPU the order follows bench/results (update it when measurements say so).
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}

LAUNCHERS = ("bn_stat_sums", "bn_stat_forward", "bn_stat_backward", "ufc_compose", "ufc_compose_grad_ufc")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says what is missing."""


class UnknownBackendError(BackendUnavailableError, ValueError):
    """The requested backend is no backend at all: a user's error (a ValueError) that no
    device can run (a BackendUnavailableError, as every unusable backend is)."""


@functools.lru_cache(maxsize=None)
def _import(module: str):
    """(module, None) or (None, reason) — cached so a failed import is not retried per call."""
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # ImportError, or an extension that fails to load
        return None, f"{type(exc).__name__}: {exc}" + _source_tree_hint()


def _source_tree_hint(package: Optional[str] = None) -> str:
    """Why a part built or mapped at install time is missing when Python imported infer_fast from
    a checkout (its folder beside setup.py, no extension built in place): the source tree
    shadows the installed package; reinstalling would not help."""
    package = package or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    checkout = os.path.dirname(package)
    if not os.path.isfile(os.path.join(checkout, "setup.py")) or any(
            name.startswith("_C.") for name in os.listdir(package)):
        return ""
    return (f" (Python imported infer_fast from the source tree {package}, not the installed package: run from "
            "another directory, or install it in place with `pip install --no-build-isolation -e .`)")


def compiled_extension():
    """(infer_fast._C, None) or (None, reason)."""
    return _import("infer_fast._C")


TRITON_MODULE = "infer_fast.ops._triton"


def triton_module():
    """(infer_fast.ops._triton, None) or (None, reason)."""
    return _import(TRITON_MODULE)


INTERPRET_ENV = "TRITON_INTERPRET"


def triton_interpret_set() -> bool:
    """Whether TRITON_INTERPRET=1 is set now (what decides how Triton's kernels load)."""
    return os.environ.get(INTERPRET_ENV) == "1"


def triton_interpreter() -> bool:
    """Whether the Triton kernels run under the interpreter (on CPU tensors): as they were loaded
    once infer_fast.ops._triton is imported (Triton fixes the mode when a kernel is decorated,
    so setting TRITON_INTERPRET later changes nothing), else as TRITON_INTERPRET says now."""
    loaded = sys.modules.get(TRITON_MODULE)
    return loaded.INTERPRETED if loaded is not None else triton_interpret_set()


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
        if why is None:
            return None
        # (from a checkout, why says what to do instead: reinstalling would not help there)
        advice = "" if _source_tree_hint() else "; reinstall infer-fast"
        return f"the compiled extension infer_fast._C did not load ({why}){advice}"
    if name == "cuda":
        if dev != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, got a {dev} tensor"
        ext, why = compiled_extension()
        if ext is None:
            return f"the compiled extension infer_fast._C did not load ({why})"
        if not ext.cuda_compiled():
            return "infer_fast._C was built without CUDA kernels (see `infer-fast info` for why)"
        if ext.cuda_status():
            return f"the CUDA kernels of infer_fast._C did not register ({ext.cuda_status()})"
        return None
    # triton
    mod, why = triton_module()
    if mod is None:
        return f"Triton is not usable ({why})"
    if dev == "cpu" and not mod.INTERPRETED:
        if triton_interpret_set():  # (set after the kernels loaded: too late in this process)
            return (f"Triton's kernels were loaded without {INTERPRET_ENV}=1 in this process (set it before the "
                    "first Triton use): restart Python with it set")
        return f"backend 'triton' on CPU tensors needs {INTERPRET_ENV}=1 set before the first Triton use in the process"
    if dev not in ("cpu", "cuda"):
        return f"backend 'triton' does not run on {dev} tensors"
    return None


@functools.lru_cache(maxsize=None)
def _launchers(name: str) -> Dict[str, Callable]:
    """The launchers of a backend (whether it runs on a device is :func:`resolve`'s question).
    A name that is no backend raises: UnknownBackendError, or the error an unusable backend's
    marker carries (see :func:`resolve`)."""
    if name == "torch":
        module: ModuleType = importlib.import_module("infer_fast.ops.reference")
    elif name in ("cpu", "cuda"):
        module = importlib.import_module("infer_fast.ops._compiled")
    elif name == "triton":
        module, why = triton_module()
        if module is None:
            raise BackendUnavailableError(f"backend 'triton' is unavailable: Triton is not usable ({why})")
    elif isinstance(name, str) and name.startswith(_ERROR_MARKER):
        raise _marked_error(name)
    else:  # (not one of BACKENDS: the one "unknown backend" message)
        why = unavailable_reason(name, torch.device("cpu")) if name != "auto" else "'auto' is resolved to a backend first"
        raise UnknownBackendError(f"backend {name!r} is unavailable: {why}")
    return {op: getattr(module, op) for op in LAUNCHERS}


_resolved: Dict[tuple, str] = {}

# An unusable backend met while Dynamo traces must not raise there: Dynamo wraps what a function
# it runs at trace time raises in an InternalTorchDynamoError (or refuses the raise under
# fullgraph=True), which `except BackendUnavailableError` does not catch. There resolve returns
# a marker instead, "<_ERROR_MARKER><error class>: <message>"; the traced op carries it as its
# backend name, and when the graph runs the op's launcher lookup (launcher(), _launchers())
# raises that error. Outside tracing resolve raises it at once.
_ERROR_MARKER = "<unusable backend> "
_MARKED_ERRORS = {cls.__name__: cls for cls in (UnknownBackendError, BackendUnavailableError, ValueError)}

# True once infer_fast.ops._library has handed the launcher lookup to infer_fast._C: the ops then
# raise a marker's error when they run. (Without the extension the public ops run the reference,
# which never looks the backend up: resolve raises even while tracing.)
ops_raise_marked_errors = False


def _marker(exc: Exception) -> str:
    return f"{_ERROR_MARKER}{type(exc).__name__}: {exc}"


def _marked_error(marker: str) -> Exception:
    kind, _, message = marker[len(_ERROR_MARKER):].partition(": ")
    return _MARKED_ERRORS.get(kind, BackendUnavailableError)(message)


# Under torch.compile the choice is made once at trace time (imports and environment
# reads are not traceable), and the graph keeps the resolved name as a constant: marked
# below as torch._dynamo.assume_constant_result marks it, without importing torch._dynamo
# (over a second of every command's start-up; test_backends checks the mark is the same).
def _resolved_name(backend: str, device: torch.device) -> str:
    """The usable backend ``backend`` names for ``device``, else the marker of why not (never
    raises: see _ERROR_MARKER)."""
    try:
        check_backend_name(backend)
        key = (backend, device.type, os.environ.get(ENV_VAR))
        name = _resolved.get(key)
        if name is None:
            name = _resolve(backend, device)
            _launchers(name)  # imports the backend once, here
            _resolved[key] = name
        return name
    except (BackendUnavailableError, ValueError) as exc:
        return _marker(exc)


_resolved_name._dynamo_marked_constant = True  # (what torch._dynamo.assume_constant_result sets)


def resolve(backend: str, device: torch.device) -> str:
    """Turn ``backend`` ("auto" or a name) into a usable backend name for ``device``
    (remembered per backend, device type and INFER_FAST_BACKEND: a call costs a lookup).
    Raises BackendUnavailableError (UnknownBackendError for a name that is no backend, a
    ValueError for one that is no string); while torch.compile traces, the op it is passed to
    raises it instead, when the graph runs (see _ERROR_MARKER)."""
    name = _resolved_name(backend, device)
    if name in BACKENDS:
        return name
    if ops_raise_marked_errors and torch.compiler.is_compiling():
        return name
    raise _marked_error(name)


def check_backend_name(backend) -> None:
    """ValueError unless ``backend`` is "auto" or one of BACKENDS (whether it runs on a given
    device is :func:`resolve`'s question, asked when there is a tensor)."""
    if not isinstance(backend, str):
        raise ValueError(f"backend must be a string, got {type(backend).__name__}")
    if backend != "auto" and backend not in BACKENDS:
        why = unavailable_reason(backend, torch.device("cpu"))  # (the one "unknown backend" message)
        raise UnknownBackendError(f"backend {backend!r} is unavailable: {why}")


def forced_backend() -> Optional[str]:
    """The backend INFER_FAST_BACKEND makes "auto" mean, None when it is unset (or "auto")."""
    forced = os.environ.get(ENV_VAR, "").strip()
    return forced if forced and forced != "auto" else None


def check_forced_backend() -> None:
    """Before any work (the CLI's commands): BackendUnavailableError naming INFER_FAST_BACKEND
    when it names no backend, or one that cannot run on this machine's default device."""
    forced = forced_backend()
    if forced is None:
        return
    why = unavailable_reason(forced, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if why is not None:
        raise BackendUnavailableError(f"{ENV_VAR}={forced!r} is unavailable: {why}")


def _resolve(backend: str, device: torch.device) -> str:
    if backend == "auto":
        forced = forced_backend()
        if forced is not None:
            why = unavailable_reason(forced, device)
            if why is not None:
                raise BackendUnavailableError(f"{ENV_VAR}={forced!r} (what 'auto' means here) is unavailable: {why}")
            return forced
        for name in AUTO_ORDER.get(device.type, ("torch",)):
            if unavailable_reason(name, device) is None:
                return name
        return "torch"
    why = unavailable_reason(backend, device)
    if why is not None:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable: {why}")
    return backend


def launcher(backend: str, op: str) -> Callable:
    """The launcher ``op`` of an already-resolved ``backend`` (infer_fast._C's ops find the
    Python backends' launchers through this function). A name that is no backend raises
    UnknownBackendError; a marker of :func:`resolve`, the error it carries."""
    return _launchers(backend)[op]


def available_backends(device: Optional[torch.device | str] = None) -> List[str]:
    """Backends usable here: for ``device`` if given (none for a CUDA device where CUDA is not
    available), else for any device present."""
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must be a torch.device or a device name such as 'cpu' or 'cuda', got "
                             f"{device!r} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if device.type == "cuda" and not torch.cuda.is_available():  # (unavailable_reason sees tensors that exist)
            return []
        return [b for b in BACKENDS if unavailable_reason(b, device) is None]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [b for b in BACKENDS if any(unavailable_reason(b, d) is None for d in devices)]


def backend_report() -> Dict[str, Dict[str, object]]:
    """Per backend and device: usable or the reason it is not (for `infer-fast info`)."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return {
        name: {d.type: (unavailable_reason(name, d) or "usable") for d in devices} for name in BACKENDS
    }
