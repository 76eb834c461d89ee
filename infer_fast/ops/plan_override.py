"""TEST-ONLY: force the kernels' launch plans, and read back the plans the launchers ran.

The plans of the Triton and CUDA backends depend on the shape only, so small test shapes
reach one split per reduction and one block per image; a wrong result of the split (workspace
+ finalize), multi-block or multi-tile paths would then pass every test. Inside these blocks
the public ops (``bn_stat_loss``, ``bn_eval_with_stat_loss``, ``ufc_compose``, forward and
backward) run the forced plans on small shapes (tests/test_reduction_paths.py). The C++ CPU
kernels have no knobs: they partition by shape only.

Nothing outside tests may use this module: the overrides are process-wide and not
thread-safe, and they change how the kernels cut the work (not what they compute).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
from typing import Dict, Iterator, List, Optional, Tuple

_BN_LAUNCHERS = ("bn_stat_sums", "bn_stat_forward", "bn_stat_backward")
_BN_PLAN_FIELDS = ("valid", "splits", "channel_tiles", "nlc", "vec", "block_x", "block_y", "workspace_elems",
                   "row_vecs")
_COMPOSE_LAUNCHERS = ("ufc_compose", "ufc_compose_grad_ufc")


@contextlib.contextmanager
def triton_forced_plan(**knobs) -> Iterator[List[Tuple[str, Dict[str, object]]]]:
    """Every Triton launcher called in the block takes ``knobs`` for the keyword knobs its
    caller left unset (``split``, ``block_rows``, ``block_inner`` of the BN launchers;
    ``block_p``, ``classes_per_program`` of the compose launchers; see their docstrings).
    Yields the list that receives ``(launcher name, plan)`` for every launch in the block."""
    from infer_fast.kernels import _launch

    with _launch.forced_plan(**knobs) as plans:
        yield plans


@functools.lru_cache(maxsize=None)
def _cuda_symbols():
    """The test-only C symbols of infer_fast._C's CUDA part (csrc/cuda/bindings.cpp)."""
    import infer_fast._C as ext

    if not ext.cuda_compiled():
        raise RuntimeError("infer_fast._C was built without CUDA kernels: there is no CUDA plan to force")
    # The already loaded extension (dlopen returns the same handle, so the same globals).
    lib = ctypes.CDLL(ext.__file__)
    force, report = lib.infer_fast_cuda_force_plan, lib.infer_fast_cuda_plan_report
    force.argtypes, force.restype = [ctypes.c_int64] * 3, ctypes.c_int
    report.argtypes, report.restype = [ctypes.POINTER(ctypes.c_int64), ctypes.c_int64], ctypes.c_int64
    return force, report


@contextlib.contextmanager
def cuda_forced_plan(splits: int = 0, channel_tiles: int = 0, compose_threads: int = 0) -> Iterator[None]:
    """Inside the block the CUDA launchers plan ``splits`` blocks across the rows of each
    (group, channel [tile]) (> 1: the workspace + finalize path), ``channel_tiles`` channel
    tiles for channels_last inputs, and ``compose_threads`` (1..256) threads per block of
    the ufc_compose kernels; each as far as the shape allows; 0 keeps the default. The
    default plans are back when the block ends."""
    force, _ = _cuda_symbols()
    if force(int(splits), int(channel_tiles), int(compose_threads)) != 0:
        raise ValueError(f"CUDA plan override out of range: splits={splits}, channel_tiles={channel_tiles}, "
                         f"compose_threads={compose_threads} (each >= 0, compose_threads <= 256)")
    try:
        yield
    finally:
        force(0, 0, 0)


def cuda_plan_report() -> Dict[str, Optional[Dict[str, int]]]:
    """What the last launch of each CUDA launcher ran with: per BN launcher its plan
    (valid, splits, channel_tiles, nlc, vec, block_x, block_y, workspace_elems, row_vecs: NCL
    vectors per row of L elements, 0 for NLC); per compose
    launcher its pixel chunks per image plane and threads per block. None for a launcher that
    has not launched in the current (or last) ``cuda_forced_plan`` block: entering and
    leaving one clears the report."""
    _, report = _cuda_symbols()
    size = len(_BN_LAUNCHERS) * len(_BN_PLAN_FIELDS) + 2 * len(_COMPOSE_LAUNCHERS)
    values = (ctypes.c_int64 * size)()
    written = report(values, size)
    if written != size:
        raise RuntimeError(f"infer_fast_cuda_plan_report wrote {written} values, expected {size}")
    values = list(values)
    result: Dict[str, Optional[Dict[str, int]]] = {}
    for i, name in enumerate(_BN_LAUNCHERS):
        plan = dict(zip(_BN_PLAN_FIELDS, values[i * len(_BN_PLAN_FIELDS):(i + 1) * len(_BN_PLAN_FIELDS)]))
        result[name] = plan if plan["valid"] else None  # a launcher launches only valid plans
    chunks, threads = values[-4:-2], values[-2:]
    for i, name in enumerate(_COMPOSE_LAUNCHERS):
        result[name] = {"chunks": chunks[i], "threads": threads[i]} if chunks[i] else None
    return result
