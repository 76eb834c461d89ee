"""Launch-size helpers shared by the Triton kernels, and the test-only plan override."""
import contextlib
import functools

import torch


@functools.lru_cache(maxsize=None)
def num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device, waves: int) -> int:
    """Programs worth launching: ``waves`` per SM on a GPU; few under the (serial) interpreter."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return waves * num_sms(index)
    return 4


# ----------------------------------------------------------------------------------------
# TEST-ONLY plan override. The public ops call the launchers without knobs, so the split
# and multi-block paths are only reached by shapes large enough for the heuristics to pick
# them; tests force the knobs here instead, on small shapes, through the public ops.
# ----------------------------------------------------------------------------------------
KNOBS = ("split", "block_rows", "block_inner", "block_p", "classes_per_program")
_forced: dict = {}  # knob -> value, while a forced_plan block is active
_chosen = None      # list of (launcher, plan) while a forced_plan block is active, else None


@contextlib.contextmanager
def forced_plan(**knobs):
    """TEST-ONLY: inside the block every Triton launcher takes ``knobs[k]`` for each of its
    keyword knobs ``k`` (:data:`KNOBS`) that its caller left at None, and records the plan
    it launched. Yields that list of ``(launcher name, plan dict)``. Not re-entrant, not
    thread-safe; nothing outside tests may use it."""
    global _chosen
    unknown = set(knobs) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown Triton knobs {sorted(unknown)}; known: {KNOBS}")
    if _chosen is not None:
        raise RuntimeError("forced_plan blocks do not nest")
    chosen = []
    _forced.update({k: v for k, v in knobs.items() if v is not None})
    _chosen = chosen
    try:
        yield chosen
    finally:
        _forced.clear()
        _chosen = None


def knob(name, given):
    """``given``, or the value a forced_plan block forces for knob ``name`` (None: the heuristic)."""
    if given is not None or not _forced:
        return given
    return _forced.get(name)


def record_plan(launcher, **plan):
    """Inside a forced_plan block: note the decomposition ``launcher`` just launched."""
    if _chosen is not None:
        _chosen.append((launcher, plan))
