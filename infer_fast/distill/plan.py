"""The automatic plan of a recovery's batches: how many jobs (UFCs, or SRe2L groups of C
images) one batch optimizes together, and in what chunks the teacher runs it, from the memory
available on the device and a probe of what one image costs the teacher; and the error of a
batch that ran out of memory anyway."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import memory
from ..grad_mode import autograd_usable, holds_inference_tensors, training_grad_mode
from ..ops import BNStatTracker

CPU_MAX_IMAGES = 512  # automatic group size on CPU: at most this many images per batch
MEMORY_FRACTION = 0.6  # automatic plan: the share of the available memory a batch may use
# ... and on the CPU the teacher's activations at most this much: larger passes are not faster
# there (ResNet-18 at 224^2, forward + backward, 2 idle cores: 19.4 / 19.1 / 19.4 / 16.5 / 15.2
# images/s at 16 / 32 / 40 / 64 / 128 images per pass), and ImageNet-1k's 1000-image groups
# then run in chunks of ~37 images within a few GiB
CPU_MAX_ACTIVATION_BYTES = 1 << 30
# automatic chunks: fp32 copies of every image of the batch that stay resident while its chunks
# run (chunks are composed and augmented row by row, so for SRe2L: the images, their gradient and
# Adam's two moments; for INFER the natural images and less)
BATCH_INPUT_COPIES = 4


class RecoveryOutOfMemoryError(MemoryError):
    """A recovery ran out of memory (CPU or CUDA), in a batch or holding its natural sets: its
    message names what ran out and the options that make it smaller. The user's to fix: the
    CLI reports it in one line."""


def chunk_rows(chunk_size: Optional[int], rows: int) -> Optional[int]:
    """The images a batch of ``rows`` sends through the teacher at a time with ``chunk_size``:
    None where it runs whole (no chunk size, or one not smaller than the batch)."""
    return chunk_size if chunk_size is not None and chunk_size < rows else None


def out_of_memory_error(exc: BaseException, device: torch.device, desc: str, G: int, C: int,
                        chunk_size: Optional[int], resumed: bool = False) -> RecoveryOutOfMemoryError:
    """The RecoveryOutOfMemoryError of the batch ``desc`` (G groups of C images, the teacher run
    ``chunk_size`` rows at a time or all at once) that failed with ``exc``: one line naming the
    options that make the batch smaller (fewer groups while there are several, smaller chunks).
    ``resumed``: an interrupted batch being continued, whose groups are fixed (it resumes whole,
    whatever --group-size says): only smaller chunks apply to it."""
    chunked = chunk_rows(chunk_size, G * C)
    rows = chunked or G * C
    chunks = (f"--chunk-size N (images through the teacher at a time, now {rows}; e.g. --chunk-size "
              f"{max(1, rows // 2)})")
    if G > 1 and not resumed:
        fix = f"use smaller batches: --group-size N (groups per batch, now {G}) or {chunks}"
    else:
        fix = f"run the teacher in smaller chunks: {chunks}"
        if G > 1:  # (an interrupted batch: --group-size does not split it)
            fix += f" (an interrupted batch continues with its {G} groups: --group-size does not apply to it)"
    names = "group_size / chunk_size" if G > 1 and not resumed else "chunk_size"
    at_once = f"in chunks of {rows}" if chunked else "all through the teacher at once"
    return RecoveryOutOfMemoryError(
        f"recovery ran out of {memory.describe(device)} in the batch {desc} ({G} x {C} images, {at_once}): {fix} "
        f"({names} in an `infer-fast run` config) [{type(exc).__name__}: {memory.first_line(exc)}]")


def natural_sets_out_of_memory_error(exc: BaseException, K: int, C: int, image_numel: int,
                                     ipc: int) -> RecoveryOutOfMemoryError:
    """The RecoveryOutOfMemoryError of INFER's K natural sets (K x C images of ``image_numel``
    values, held as uint8 for the whole run) that did not fit: K is what to lower (--ipc), not
    the batches."""
    gib = K * C * image_numel / 2**30
    return RecoveryOutOfMemoryError(
        f"the K={K} natural sets ({K} x {C} images, {gib:.1f} GiB as uint8, held for the whole recovery) do not fit "
        f"in CPU memory: lower --ipc (now {ipc}; K follows it and --accounting), or free memory "
        f"[{type(exc).__name__}: {memory.first_line(exc)}]")


def auto_batch_plan(
    teacher: nn.Module, natural: Tensor, K: int, max_images: int = CPU_MAX_IMAGES,
    memory_fraction: float = MEMORY_FRACTION, probe_images: Optional[int] = None, chunk_size: Optional[int] = None,
    holds_natural: bool = False,
) -> Tuple[int, Optional[int]]:
    """(G, chunk_size): how many UFCs (or SRe2L groups) of C images to optimize together, and
    in what chunks the teacher runs them (None: the whole batch at once). ``natural``: (K', C,
    ch, H, W) on the teacher's device, only its shape and first rows are used; ``chunk_size``:
    the user's (--chunk-size), which runs whatever the plan would choose; ``holds_natural``:
    every image of a batch also holds its natural image (one image of ``natural``, in its
    dtype: INFER's, normalized to float32 when the batch starts) beside the teacher's
    activations (the uint8 sets of every K are resident already, so the available memory
    reads them).

    A probe of a few rows measures the memory one image costs the teacher's forward +
    backward (CUDA: the allocator's peak, ``probe_images`` rows, default 16; CPU:
    activation_bytes_per_image, default 4 rows); the budget is ``memory_fraction`` of the
    memory available now (memory.available_memory), of which the teacher's activations take at
    most CPU_MAX_ACTIVATION_BYTES on the CPU. G = activations / (C * per image), at most
    budget / (C * (per image + its natural image's bytes)), clipped to
    [1, K] and on the CPU to ``max_images`` images (at least one group: larger batches buy
    nothing there). When even one group does not fit, G = 1 and the teacher runs in chunks
    (chunked exact mode, the same gradient) of as many rows as fit beside the whole group's
    inputs (BATCH_INPUT_COPIES images each), with a RuntimeWarning saying so (and the chunks
    that run: the user's where given). Where the available memory cannot be read (CPU off
    Linux), the image cap alone, no chunks.
    """
    C = natural.shape[1]
    device = natural.device
    cap = max(1, min(K, max_images // C)) if device.type != "cuda" else K
    measured = _measure(teacher, natural, memory_fraction, probe_images)
    if measured is None:
        return cap, chunk_size
    groups = _groups_that_fit(natural, measured, holds_natural)
    if groups >= 1:
        return max(1, min(cap, int(groups))), chunk_size
    fits = _rows_that_fit(natural, 1, measured)
    runs = (f"it runs in chunks of {fits} images (--chunk-size / --group-size choose otherwise)" if chunk_size is None
            else f"it runs in chunks of {chunk_size} images, as --chunk-size asks ({fits} would fit)")
    _warn_chunks(f"one group of {C} images", C, measured, memory_fraction, device, runs)
    return 1, chunk_size or fits


def batch_chunk_size(
    teacher: nn.Module, natural: Tensor, G: int, memory_fraction: float = MEMORY_FRACTION,
    probe_images: Optional[int] = None, holds_natural: bool = False, recorded: Optional[int] = None,
    resumed: bool = False,
) -> Optional[int]:
    """The chunks of a batch whose number of groups G is fixed: --group-size without
    --chunk-size, or an interrupted batch resumed (its G is its own). None (the teacher runs
    the whole batch at once) when G groups fit the budget as :func:`auto_batch_plan` counts it
    (the same probe of one image's cost, the same share of the available memory), else as
    many rows as fit beside the batch's inputs (chunked exact mode, the same gradient), with a
    RuntimeWarning saying so: where G is 1, the automatic plan's. ``recorded``: the chunks an
    interrupted batch ran in (None: all at once), kept wherever they fit (the same chunks
    continue it bit-identically) and where the available memory cannot be read (CPU off
    Linux); ``resumed``: the warning names only --chunk-size (--group-size does not split an
    interrupted batch)."""
    C = natural.shape[1]
    measured = _measure(teacher, natural, memory_fraction, probe_images)
    if measured is None or _groups_that_fit(natural, measured, holds_natural) >= G:
        return recorded
    fits = _rows_that_fit(natural, G, measured)
    if fits >= G * C:
        return recorded
    if recorded is not None and recorded <= fits:
        return recorded
    what = f"one group of {C} images" if G == 1 else f"a batch of {G} groups of {C} images"
    if resumed:
        what = f"the interrupted batch ({G} group{'s' if G > 1 else ''} of {C} images)"
        runs = f"it continues in chunks of {fits} images (--chunk-size chooses otherwise)"
    elif G == 1:
        runs = f"it runs in chunks of {fits} images (--chunk-size / --group-size choose otherwise)"
    else:
        runs = f"it runs in chunks of {fits} images, {G} groups as --group-size asks (--chunk-size chooses otherwise)"
    _warn_chunks(what, G * C, measured, memory_fraction, natural.device, runs)
    return fits


def _measure(teacher: nn.Module, natural: Tensor, memory_fraction: float,
             probe_images: Optional[int]) -> Optional[Tuple[float, float, float]]:
    """(memory one image costs the teacher, the budget, the share of it the teacher's
    activations may take), all in bytes; None where the available memory cannot be read (CPU
    off Linux: then nothing is probed)."""
    if holds_inference_tensors(teacher):  # (recovery runs a copy of such a teacher: engine.recovery_teacher)
        raise ValueError("teacher was made under torch.inference_mode(): its tensors cannot be saved for the "
                         "backward the memory plan measures; load it outside inference mode (torch.no_grad() is fine)")
    device = natural.device
    if device.type == "cuda":
        per_image = _cuda_peak_per_image(teacher, natural, probe_images or 16)
        available = memory.available_memory(device)
    else:
        available = memory.available_memory(device)
        if available is None:
            return None
        per_image = activation_bytes_per_image(teacher, natural, probe_images or 4)
    budget = memory_fraction * available
    activations = budget if device.type == "cuda" else min(budget, CPU_MAX_ACTIVATION_BYTES)
    return per_image, budget, activations


def _groups_that_fit(natural: Tensor, measured: Tuple[float, float, float], holds_natural: bool) -> float:
    """How many groups of C images fit: their activations within the activations' share, and
    with their natural images (``holds_natural``) within the budget."""
    per_image, budget, activations = measured
    C = natural.shape[1]
    held_per_image = natural[0, 0].numel() * natural.element_size() if holds_natural else 0
    return min(activations / (per_image * C), budget / ((per_image + held_per_image) * C))


def _rows_that_fit(natural: Tensor, G: int, measured: Tuple[float, float, float]) -> int:
    """The rows one chunk of a batch of G groups may have: what fits beside the batch's fp32
    inputs (BATCH_INPUT_COPIES images each, resident while its chunks run), at least 1."""
    per_image, budget, activations = measured
    inputs = BATCH_INPUT_COPIES * G * natural[0].numel() * 4
    return max(1, int(min(budget - inputs, activations) / per_image))


def _warn_chunks(what: str, images: int, measured: Tuple[float, float, float], memory_fraction: float,
                 device: torch.device, runs: str) -> None:
    per_image, budget, activations = measured
    share = (f"{memory_fraction:g} of the {memory.describe(device)} available" if activations == budget
             else f"the CPU's cap for activations, of {budget / 2**30:.1f} GiB available to the batch")
    warnings.warn(f"recovery: {what} needs ~{per_image * images / 2**30:.1f} GiB for the teacher, more than "
                  f"the {activations / 2**30:.1f} GiB budget ({share}): {runs}", RuntimeWarning, stacklevel=3)


def _probe_input(teacher: nn.Module, natural: Tensor, rows: int, copy: bool = False) -> Tuple[Tensor, Tensor]:
    """``rows`` natural images (one per class) in the teacher's input dtype, requiring grad (a
    copy with ``copy``, else possibly a view of ``natural``), and their labels."""
    C = natural.shape[1]
    rows = max(1, min(C, rows))
    # (a view of a ``natural`` made under torch.inference_mode cannot require grad: a copy then)
    x = autograd_usable(natural[0, :rows].to(next(teacher.parameters()).dtype, copy=copy)).requires_grad_()
    return x, torch.arange(rows, device=natural.device) % C


def _probe_loss(teacher: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """The recovery objective (CE + BN statistics) of one group on ``x``; CE alone for a
    teacher whose statistics a tracker refuses to match (no BatchNorm layer, one without
    running statistics, a compiled submodule: accepted only where r_bn is 0, jobs.check_common)."""
    try:
        tracker = BNStatTracker(teacher, groups=1)
    except ValueError:
        return F.cross_entropy(teacher(x), labels)
    try:
        return F.cross_entropy(teacher(x), labels) + tracker.weighted_sum(1.0).sum()
    finally:
        tracker.remove()


@training_grad_mode()  # (the backward it measures runs whatever the caller's grad mode)
def _cuda_peak_per_image(teacher: nn.Module, natural: Tensor, rows: int) -> float:
    """The CUDA allocator's peak extra memory of a forward + backward of ``rows`` images, per image."""
    device = natural.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    x, labels = _probe_input(teacher, natural, rows)
    _probe_loss(teacher, x, labels).backward()
    torch.cuda.synchronize(device)
    return max(1, torch.cuda.max_memory_allocated(device) - base) / x.shape[0]


@training_grad_mode()  # (what autograd saves is what it measures: nothing is saved with gradients off)
def activation_bytes_per_image(teacher: nn.Module, natural: Tensor, rows: int) -> float:
    """The memory one image costs a forward + backward of the teacher, where no allocator
    keeps statistics (the CPU): what autograd saves for the backward (tensors the forward
    keeps alive until then; each storage once, the teacher's own weights not counted), plus
    twice the largest module output, for the gradients the backward holds at a time (the
    incoming and the outgoing one of a layer). Per image: BatchNorm in eval mode treats rows
    independently, so the sum is linear in the rows of the probe (a forward only, no backward).
    Measured against peak RSS (VmHWM) growing with the batch in whole recovery iterations on
    the CPU: ResNet-18 at 224^2, 27.3 MiB per image estimated, 23.5 real (the RSS after the
    forward alone, 21.3-21.8, is the saved part); ConvNet-w128-d3 at 32^2, 2.48 vs 2.22."""
    weights = {t.untyped_storage().data_ptr() for t in (*teacher.parameters(), *teacher.buffers())}
    saved: Dict[int, int] = {}
    largest = [0]

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        # detached: a node's own output handed back would close a cycle (tensor -> grad_fn ->
        # saved -> tensor) through C++ that gc cannot see, and keep the probe's whole graph (and
        # the teacher's weights) alive for the process; no backward runs to unpack it
        return t.detach()

    def output(module: nn.Module, inputs: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            largest[0] = max(largest[0], out.nelement() * out.element_size())

    hooks = [m.register_forward_hook(output) for m in teacher.modules()]
    x, labels = _probe_input(teacher, natural, rows, copy=True)  # (its own storage: a batch's input costs memory)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _probe_loss(teacher, x, labels)
    finally:
        for hook in hooks:
            hook.remove()
    return (sum(saved.values()) + 2 * largest[0]) / x.shape[0]
