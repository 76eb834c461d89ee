"""What this installation contains and can run (``infer-fast info``)."""
from __future__ import annotations

import json
import os
import platform
from importlib import resources
from typing import Dict, Tuple

import torch

from . import __version__
from .openmp_spin import spin_setting
from .ops import backends


def build_info() -> Dict[str, object]:
    """The record setup.py wrote at build time (CUDA kernels built or skipped, and why)."""
    try:
        return json.loads(resources.files("infer_fast").joinpath("_build_info.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return {"cuda_kernels": False, "cuda_reason": "no build record (infer_fast is not installed with pip)"}


def versions() -> Dict[str, str]:
    out = {"infer-fast": __version__, "python": platform.python_version(), "torch": torch.__version__}
    out["torch CUDA"] = torch.version.cuda or "none (CPU build)"
    for name in ("triton", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = "not installed"
    return out


def cuda_kernels_status(ext, info: Dict[str, object]) -> str:
    """Built and registered, or why not (a failed registration is reported, never fatal)."""
    if not info.get("cuda_kernels"):
        return f"skipped: {info.get('cuda_reason')}"
    if ext is None:
        return "built, but the extension did not load (see C++ ext)"
    if ext.cuda_status():
        return f"built, but not registered: {ext.cuda_status()}"
    return "built and registered"


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def cuda_check() -> Tuple[bool, str]:
    """(ok, one-line reason) of ``infer-fast info --check``: with a CUDA GPU visible, the CUDA
    kernels must have been built, and the extension must load and register them; a build
    that quietly fell back to the CPU kernels is a failure there, not a skip."""
    if not torch.cuda.is_available():
        return True, "no CUDA GPU is visible: the CUDA kernel check does not apply"
    info = build_info()
    if not info.get("cuda_kernels"):
        return False, one_line(f"a CUDA GPU is visible but the CUDA kernels were skipped at build: {info.get('cuda_reason')}")
    # loaded, with CUDA kernels, registered: the question the ops' dispatch asks, answered once
    why = backends.unavailable_reason("cuda", torch.device("cuda"))
    if why is not None:
        return False, one_line(f"a CUDA GPU is visible but the cuda backend cannot run: {why}")
    return True, "a CUDA GPU is visible and the CUDA kernels are built and registered"


def format_info() -> str:
    lines = ["infer-fast installation", ""]
    lines += [f"  {k:<12} {v}" for k, v in versions().items()]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines.append(f"  {'GPU':<12} {gpu}")
    ext, why = backends.compiled_extension()
    threads = ext.openmp_max_threads() if ext is not None else 0
    info = build_info()
    openmp = f"OpenMP threads: {threads}" if info.get("openmp", True) else \
        f"built without OpenMP, one thread: {info.get('openmp_reason')}"  # (a record before this field: built with it)
    lines.append(f"  {'C++ ext':<12} " + (f"loaded ({openmp})" if ext is not None else f"not loaded: {why}"))
    lines.append(f"  {'OpenMP wait':<12} {spin_setting()}")
    lines.append(f"  {'CUDA kernels':<12} " + cuda_kernels_status(ext, info))
    interp = "on (Triton kernels run on CPU tensors)" if backends.triton_interpreter() else "off"
    lines.append(f"  {'TRITON_INTERPRET':<12} {interp}")
    forced = os.environ.get(backends.ENV_VAR)
    lines += ["", "backends (per device):"]
    for name, per_device in backends.backend_report().items():
        for device, status in per_device.items():
            lines.append(f"  {name:<7} {device:<5} {status}")
    for device in ("cpu",) + (("cuda",) if torch.cuda.is_available() else ()):
        try:
            chosen = backends.resolve("auto", torch.device(device))
        except backends.BackendUnavailableError as exc:
            chosen = f"error: {exc}"
        lines.append(f"  auto on {device}: {chosen}" + (f"  ({backends.ENV_VAR}={forced})" if forced else ""))
    return "\n".join(lines)
