"""UFC compose: natural sets + universal feature compensators -> training images.

    X[g, c] = clamp(flip(roll(natural[index[g], c] + ufc[g])), lo, hi)   (G, C, ch, H, W)

One pass reads the natural images and writes X; the backward reads dX once and writes
dU (the class-axis sum), un-rolling and masking clamped pixels on the way. A call is
validation here plus one dispatch of ``torch.ops.infer_fast_C.ufc_compose`` (autograd in
C++, csrc/autograd.cpp; passes in the chosen backend).
"""
from __future__ import annotations

import numbers
import weakref
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import backends
from .reference import FLOAT_DTYPES, accumulate_dtype, ufc_compose_naive

Bound = Union[None, float, Sequence[float], Tensor]

_ext, _ = backends.compiled_extension()
_compose_op = torch.ops.infer_fast_C.ufc_compose.default if _ext is not None else None

# Checks that need a tensor's values run at every call on the host (no sync to save: a
# cached check could be fooled by a write that bumps no version, through .data or numpy).
# On a GPU they run once per tensor object and version, so that a recovery loop reusing its
# index and bounds does not sync at every step; the kernels themselves refuse an index out
# of range (a device-side assert), whatever the cache saw. A record holds weak references to
# the very tensors checked, never just their addresses (the allocator gives a freed block to
# the next tensor of that size: a new out-of-range index there must be checked, not taken for
# the one checked before); a dead reference matches nothing.
_checked_values: dict = {}  # (what, id of the first tensor) -> (weak references, versions)


def _check_values_once(tensors: Sequence[Tensor], what: str, check) -> None:
    if torch.compiler.is_compiling():
        return  # values are unknown while tracing; the eager call checked them
    if any(t.device.type == "cpu" or t.is_inference() for t in tensors):  # (inference tensors have no version)
        check()
        return
    key, versions = (what, id(tensors[0])), tuple(t._version for t in tensors)
    seen = _checked_values.get(key)
    if seen is not None and seen[1] == versions and all(ref() is t for ref, t in zip(seen[0], tensors)):
        return
    check()
    if len(_checked_values) > 64:
        _checked_values.clear()
    _checked_values[key] = (tuple(weakref.ref(t) for t in tensors), versions)


def _check_index(index: Tensor, num_sets: int) -> None:
    if torch.compiler.is_compiling():
        # values are unknown while tracing: the graph checks them each time it runs (no host
        # sync; on a GPU a device-side assert, before the kernel's own)
        torch._assert_async(((index >= 0) & (index < num_sets)).all(),
                            f"ufc_compose: index values must lie in [0, {num_sets}) (natural has {num_sets} sets)")
        return

    def check():
        lowest, highest = (int(v) for v in torch.aminmax(index))
        if lowest < 0 or highest >= num_sets:
            raise ValueError(f"index values must lie in [0, {num_sets}) (natural has {num_sets} sets), got [{lowest}, {highest}]")

    _check_values_once([index], f"index<{num_sets}", check)


def _check_bound_values(lo: Optional[Tensor], hi: Optional[Tensor]) -> None:
    """NaN bounds and lo > hi are user errors (a clamp to them is meaningless)."""
    given = [(name, t) for name, t in (("lo", lo), ("hi", hi)) if t is not None]

    def check():
        for name, t in given:
            if torch.isnan(t).any():
                raise ValueError(f"{name} must not be NaN, got {[round(v, 6) for v in t.tolist()]}")
        if lo is not None and hi is not None:
            low, high = lo.cpu(), hi.cpu()  # (one may be on the host: given as numbers)
            if (low > high).any():
                c = int((low > high).nonzero()[0])
                raise ValueError(f"lo must not exceed hi: channel {c} has lo = {float(low[c]):.6g} > hi = {float(high[c]):.6g}")

    if given:
        _check_values_once([t for _, t in given], "bounds", check)


def _bound(value: Bound, name: str, channels: int, like: Tensor) -> Optional[Tensor]:
    """None, a number, a sequence of ch numbers or a (ch,) tensor -> (ch,) accumulate-dtype
    tensor (numbers on the host, a tensor on its device)."""
    if value is None:
        return None
    acc = accumulate_dtype(like.dtype)
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.dtype.is_complex:
            raise ValueError(f"{name} must be a real-valued tensor, got {value.dtype}")
        if value.device != like.device:
            raise ValueError(f"{name} is on {value.device} but natural is on {like.device}")
        if value.dim() == 0:
            value = value.expand(channels)
        if value.shape != (channels,):
            raise ValueError(f"{name} must be a scalar or have shape ({channels},) (one bound per channel), got {tuple(value.shape)}")
        return value.to(acc).contiguous()
    is_number = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)  # noqa: E731
    if is_number(value):
        return torch.full((channels,), float(value), dtype=acc)  # on the host: checked there, then copied
    try:
        values = None if isinstance(value, (str, bytes)) else list(value)
    except TypeError:  # (not iterable, a 0-d array)
        values = None
    if values is None or not all(is_number(v) for v in values):
        raise ValueError(f"{name} must be None, a number, a sequence of {channels} numbers (one bound per channel) "
                         f"or a tensor, got {value!r}")
    if len(values) != channels:
        raise ValueError(f"{name} must give one bound per channel ({channels}), got {len(values)}")
    return torch.tensor([float(v) for v in values], dtype=acc)


def _check_and_normalize(natural, ufc, index, shifts, flips, lo, hi):
    for name, t in (("natural", natural), ("ufc", ufc), ("index", index)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if natural.dim() != 5:
        raise ValueError(f"natural must be (K, C, ch, H, W), got shape {tuple(natural.shape)}")
    if ufc.dim() != 4:
        raise ValueError(f"ufc must be (G, ch, H, W), got shape {tuple(ufc.shape)}")
    if natural.dtype not in FLOAT_DTYPES:
        raise ValueError(f"natural must be float16, bfloat16, float32 or float64, got {natural.dtype}")
    if ufc.dtype != natural.dtype:
        raise ValueError(f"ufc dtype {ufc.dtype} differs from natural dtype {natural.dtype}")
    if ufc.device != natural.device:
        raise ValueError(f"ufc is on {ufc.device} but natural is on {natural.device}")
    if natural.numel() == 0 or ufc.numel() == 0:
        raise ValueError(f"natural {tuple(natural.shape)} and ufc {tuple(ufc.shape)} must not be empty")
    if ufc.shape[1:] != natural.shape[2:]:
        raise ValueError(f"ufc images {tuple(ufc.shape[1:])} must match natural images {tuple(natural.shape[2:])} (ch, H, W)")
    groups, channels, height, width = ufc.shape
    if index.shape != (groups,):
        raise ValueError(f"index must have shape ({groups},) (one natural set per UFC), got {tuple(index.shape)}")
    if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"index must be an integer tensor, got {index.dtype}")
    if index.device != natural.device:
        raise ValueError(f"index is on {index.device} but natural is on {natural.device}")
    _check_index(index, natural.shape[0])
    if index.dtype != torch.int64:
        index = index.to(torch.int64)
    if shifts is not None:
        if not isinstance(shifts, Tensor) or shifts.shape != (groups, 2):
            got = tuple(shifts.shape) if isinstance(shifts, Tensor) else type(shifts).__name__
            raise ValueError(f"shifts must be a ({groups}, 2) integer tensor of (H, W) roll amounts, got {got}")
        if shifts.dtype.is_floating_point or shifts.dtype.is_complex or shifts.dtype == torch.bool:
            raise ValueError(f"shifts must be an integer tensor, got {shifts.dtype}")
        if shifts.device != natural.device:
            raise ValueError(f"shifts is on {shifts.device} but natural is on {natural.device}")
        if shifts.dtype != torch.int64:  # any values: the kernels reduce them mod (H, W)
            shifts = shifts.to(torch.int64)
    if flips is not None:
        if not isinstance(flips, Tensor) or flips.shape != (groups,):
            got = tuple(flips.shape) if isinstance(flips, Tensor) else type(flips).__name__
            raise ValueError(f"flips must be a ({groups},) bool tensor, got {got}")
        if flips.dtype.is_floating_point or flips.dtype.is_complex:
            raise ValueError(f"flips must be a bool or integer tensor, got {flips.dtype}")
        if flips.device != natural.device:
            raise ValueError(f"flips is on {flips.device} but natural is on {natural.device}")
        if flips.dtype not in (torch.bool, torch.uint8):  # the kernels read one byte per flag
            flips = flips != 0

    lo_t, hi_t = _bound(lo, "lo", channels, natural), _bound(hi, "hi", channels, natural)
    _check_bound_values(lo_t, hi_t)
    lo_t, hi_t = (None if t is None else t.to(natural.device) for t in (lo_t, hi_t))
    if (lo_t is None) != (hi_t is None):  # kernels take both bounds or none
        inf = torch.full((channels,), float("inf"), dtype=accumulate_dtype(natural.dtype), device=natural.device)
        lo_t = -inf if lo_t is None else lo_t
        hi_t = inf if hi_t is None else hi_t
    contiguous = lambda t: None if t is None else t.contiguous()  # noqa: E731  (no copy when already)
    return (natural.contiguous(), ufc.contiguous(), index.contiguous(), contiguous(shifts), contiguous(flips),
            lo_t, hi_t)


def ufc_compose(
    natural: Tensor,
    ufc: Tensor,
    index: Tensor,
    shifts: Optional[Tensor] = None,
    flips: Optional[Tensor] = None,
    lo: Bound = None,
    hi: Bound = None,
    backend: str = "auto",
) -> Tensor:
    """Compose G compensated sets: X[g, c] = clamp(flip(roll(natural[index[g], c] + ufc[g])), lo, hi).

    Args:
        natural: (K, C, ch, H, W) natural sets (one real image per class per set).
        ufc: (G, ch, H, W) compensators, same dtype and device as ``natural``.
        index: (G,) integer, the natural set each compensator is added to.
        shifts: optional (G, 2) integer roll over (H, W), as ``torch.roll`` (applied first).
        flips: optional (G,) bool, mirror the width axis after the roll.
        lo, hi: optional per-channel bounds: a scalar, ch values, or a (ch,) tensor.
        backend: "auto", "torch", "cpu", "cuda" or "triton".

    Returns (G, C, ch, H, W) in natural's dtype; the sum and clamp run in fp32 (fp64 for
    fp64). Differentiable w.r.t. ``ufc`` (class-axis sum, clamped pixels get no gradient)
    and ``natural``.
    """
    args = _check_and_normalize(natural, ufc, index, shifts, flips, lo, hi)
    name = backends.resolve(backend, natural.device)
    if _compose_op is None:  # the extension did not load: the reference, by autograd
        return ufc_compose_naive(*args)
    return _compose_op(*args, name)
