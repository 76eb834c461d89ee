"""The per-batch engine of recovery: G jobs (UFCs, or SRe2L image groups) of one teacher
optimized together, with their augmentation, losses, optimizer and schedule; and the plan of
how many jobs share a batch."""
from __future__ import annotations

import hashlib
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..data.transforms import _resized_crop_boxes
from ..ops import BNStatTracker, chunked_loss_backward, ufc_compose
from .config import CROP_RATIO, RecoveryConfig

CPU_MAX_IMAGES = 512  # automatic group size on CPU: at most this many images per batch
CUDA_MEMORY_FRACTION = 0.6  # automatic group size on CUDA: share of free memory to use
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def job_seed(method: str, seed: int, m: int, k: int) -> int:
    """A per-job (one UFC, or one SRe2L image group) generator seed, independent of batching."""
    tag = "infer-ufc" if method == "infer" else method
    digest = hashlib.sha256(f"{tag}:{int(seed)}:{int(m)}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def check_teacher(teacher: nn.Module, m: int) -> None:
    for name, module in teacher.named_modules():
        if isinstance(module, _BN_TYPES) and module.training:
            raise ValueError(
                f"teacher {m}: BatchNorm layer {name!r} is in training mode; recovery needs a frozen teacher "
                "in eval mode (call teacher.eval())"
            )


def auto_batch_plan(
    teacher: nn.Module, natural: Tensor, K: int, max_images: int = CPU_MAX_IMAGES,
    memory_fraction: float = CUDA_MEMORY_FRACTION, probe_images: int = 16,
) -> Tuple[int, Optional[int]]:
    """(G, chunk_size): how many UFCs to optimize together, and whether to run the teacher in
    chunks (None: the whole batch at once).

    CPU: G*C <= ``max_images`` (at least 1), no chunks. CUDA: one forward + backward of
    ``probe_images`` rows measures the peak extra memory per image; with a budget of
    memory_fraction * free memory (torch.cuda.mem_get_info), G = budget / (C * per image)
    clipped to [1, K]; when even one group of C images does not fit, G = 1 and the teacher
    runs in chunks of budget / per image rows (chunked exact mode, same gradient).
    """
    C = natural.shape[1]
    device = natural.device
    if device.type != "cuda":
        return max(1, min(K, max_images // C)), None
    rows = max(1, min(C, probe_images))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    x = natural[0, :rows].detach().clone().requires_grad_()
    tracker = BNStatTracker(teacher, groups=1)
    try:
        loss = F.cross_entropy(teacher(x), torch.arange(rows, device=device) % C) + tracker.weighted_sum(1.0).sum()
        loss.backward()
    finally:
        tracker.remove()
    torch.cuda.synchronize(device)
    per_image = max(1, torch.cuda.max_memory_allocated(device) - base) / rows
    del x, loss
    free, _ = torch.cuda.mem_get_info(device)
    budget = memory_fraction * free
    if per_image * C <= budget:
        return max(1, min(K, int(budget / (per_image * C)))), None
    return 1, max(1, int(budget / per_image))



class Augmentation:
    """Per-group augmentation draws for one batch of jobs, each from the job's own generator
    (so a job's draws do not depend on which jobs share its batch)."""

    def __init__(self, config: RecoveryConfig, gens: List[torch.Generator], height: int, width: int, device,
                 iterations: Optional[int] = None):
        self.config, self.gens, self.size, self.device = config, gens, (height, width), device
        self.step = 0
        self.all_shifts = None
        if config.augmentation == "roll" and config.max_shift > 0 and iterations:
            # every iteration's rolls drawn up front (the same numbers as one draw per step) and
            # copied to the device once: no host-to-device copy inside the loop
            high = config.max_shift + 1
            self.all_shifts = torch.stack([torch.randint(0, high, (iterations, 2), generator=g) for g in gens], 1).to(device)

    def _shifts(self) -> Optional[Tensor]:
        if self.config.max_shift == 0:
            return None
        if self.all_shifts is not None:
            return self.all_shifts[self.step - 1]
        return torch.stack([torch.randint(0, self.config.max_shift + 1, (2,), generator=g) for g in self.gens]).to(self.device)

    def __call__(self, source: Tensor, variable: Tensor, index: Tensor, backend: str) -> Tensor:
        """The augmented composed batch (G, C, ch, H, W) of the next iteration."""
        self.step += 1
        if self.config.augmentation == "roll":  # fused: compose and roll in one pass
            return ufc_compose(source, variable, index, shifts=self._shifts(), backend=backend)
        x = ufc_compose(source, variable, index, backend=backend)
        height, width = self.size
        out = []
        for g, gen in enumerate(self.gens):
            top, left, h, w = (int(v) for v in _resized_crop_boxes(1, height, width, tuple(self.config.crop_scale), CROP_RATIO, gen))
            flip = bool(torch.rand(1, generator=gen) < 0.5)
            shift = torch.randint(0, self.config.max_shift + 1, (2,), generator=gen).tolist()
            y = F.interpolate(x[g, :, :, top:top + h, left:left + w], size=self.size, mode="bilinear",
                              align_corners=False, antialias=True)
            y = y.flip(-1) if flip else y
            out.append(torch.roll(y, shifts=shift, dims=(-2, -1)) if any(shift) else y)
        return torch.stack(out)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TeacherLosses:
    """Per-group CE and weighted R_bn (and the logits) of one frozen teacher on a batch of G
    groups x C classes. One BN tracker, and with ``config.compile`` one compiled graph, serve
    every batch with the same G (a new tracker per batch would make torch.compile retrace);
    only one tracker is attached at a time."""

    def __init__(self, teacher: nn.Module, num_classes: int, config: RecoveryConfig, backend: str):
        self.teacher, self.num_classes, self.config, self.backend = teacher, num_classes, config, backend
        self.layout = torch.channels_last if config.channels_last else torch.contiguous_format
        self.groups: Optional[int] = None
        self.tracker: Optional[BNStatTracker] = None

    def teacher_input(self, x: Tensor) -> Tensor:
        """(G, C, ch, H, W) -> the teacher's (G*C, ch, H, W) batch in its layout."""
        return x.flatten(0, 1).contiguous(memory_format=self.layout)

    def _build(self, G: int) -> None:
        self.detach()
        config, C = self.config, self.num_classes
        device = next(self.teacher.parameters()).device
        tracker = BNStatTracker(self.teacher, groups=G, backend=self.backend, fused=config.fused_bn) if config.r_bn > 0 else None
        labels = torch.arange(C, device=device).repeat(G)

        def losses(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
            logits = self.teacher(self.teacher_input(x))
            ce = F.cross_entropy(logits, labels, reduction="none").view(G, C).mean(1)
            rbn = tracker.weighted_sum(config.first_bn_mult) if tracker is not None else torch.zeros_like(ce)
            return ce, rbn, logits

        self.groups, self.tracker, self.eager, self.compiled = G, tracker, losses, None
        if config.compile != "off":
            mode = None if config.compile == "default" else config.compile
            self.compiled = torch.compile(losses, fullgraph=True, dynamic=False, mode=mode)

    def __call__(self, x: Tensor, compiled: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        if self.groups != x.shape[0]:
            self._build(x.shape[0])
        if not compiled or self.compiled is None:
            return self.eager(x)
        # every (teacher, G) closure adds a cache entry to the same code object: allow them all
        with torch._dynamo.config.patch(recompile_limit=1 << 16):
            return self.compiled(x)

    def detach(self) -> None:
        """Remove the BN tracker (before the chunked mode attaches its own hooks, and at the end)."""
        if self.tracker is not None:
            self.tracker.remove()
        self.groups, self.tracker = None, None


def optimize_batch(
    method: str, source: Optional[Tensor], num_classes: int, image_shape: Tuple[int, int, int],
    losses: TeacherLosses, m: int, ks: List[int], config: RecoveryConfig, lo: Tensor, hi: Tensor,
    progress: bool, backend: str, desc: str, chunk_size: Optional[int] = None,
) -> Tuple[Tensor, Dict[str, Any]]:
    """Optimize the jobs (m, k) for k in ``ks`` together (stats["failed"] lists the jobs whose
    loss became non-finite; their results must not be used).

    INFER: the variables are the UFCs u_k^m (G, ch, H, W) from zero, composed with the natural
    sets ``source``. SRe2L: the variables are G groups of C images (one per class) from
    Gaussian noise, each group with its own BN statistics (composed as natural = the images,
    u = 0, so both share the fused compose + roll). Returns (result on CPU float32: ufc
    (G, ch, H, W) or clamped images (G, C, ch, H, W), batch stats)."""
    device = lo.device
    G, C = len(ks), num_classes
    gens = [torch.Generator().manual_seed(job_seed(method, config.seed, m, k)) for k in ks]
    if method == "infer":
        index = torch.tensor(ks, dtype=torch.int64, device=device)
        variable = torch.zeros((G,) + image_shape, device=device, requires_grad=True)
        compose_args = lambda v: (source, v, index)  # noqa: E731
    else:
        noise = torch.stack([torch.randn((C,) + image_shape, generator=g) for g in gens])
        variable = noise.to(device).requires_grad_()
        index = torch.arange(G, device=device)
        zero_ufc = torch.zeros((G,) + image_shape, device=device)
        compose_args = lambda v: (v, zero_ufc, index)  # noqa: E731
    labels = torch.arange(C, device=device).repeat(G)
    optimizer = torch.optim.Adam([variable], lr=config.lr, betas=tuple(config.betas), eps=config.eps)
    augment = Augmentation(config, gens, image_shape[1], image_shape[2], device, config.iterations)
    chunked = chunk_size is not None and chunk_size < G * C
    if chunked:  # the chunked mode attaches its own hooks
        losses.detach()

    def losses_and_backward(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """CE, R_bn and logits of the batch ``x``, with the gradient of sum(CE + r_bn R_bn) sent back."""
        if chunked:  # the whole-batch statistics, the teacher run chunk by chunk
            return chunked_loss_backward(losses.teacher, losses.teacher_input(x), labels, G, config.r_bn,
                                         config.first_bn_mult, chunk_size, backend=backend,
                                         split_across_ranks=config.distributed == "chunks")
        ce, rbn, logits = losses(x)
        (ce + config.r_bn * rbn).sum().backward()
        return ce.detach(), rbn.detach(), logits

    # A non-finite loss stays inside its group (per-group BN statistics, per-row CE, Adam
    # elementwise): the group is marked dead on the device, without a host sync per step,
    # and only it is dropped at the end.
    alive = torch.ones(G, dtype=torch.bool, device=device)
    died_at = torch.full((G,), -1, dtype=torch.int64, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    started = time.perf_counter()
    first_iteration_s = None
    try:
        bar = tqdm(range(config.iterations), desc=desc, disable=not progress, leave=False)
        for t in bar:
            if t == 1:  # the first iteration includes one-off costs (torch.compile, autotuning): one sync
                _synchronize(device)
                first_iteration_s = time.perf_counter() - started
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * (1.0 + math.cos(math.pi * t / config.iterations)) * config.lr
            optimizer.zero_grad(set_to_none=True)
            x = augment(*compose_args(variable), backend)
            with autocast:
                ce, rbn, _ = losses_and_backward(x)
            finite = torch.isfinite(ce + config.r_bn * rbn)
            died_at = torch.where(alive & ~finite, t + 1, died_at)
            alive &= finite
            optimizer.step()
            last_ce, last_rbn = ce.detach(), rbn.detach()
            if progress and (t % 10 == 0 or t + 1 == config.iterations):
                bar.set_postfix(ce=f"{float(last_ce.mean()):.4f}", r_bn=f"{float(last_rbn.mean()):.4f}")
        bar.close()
        if first_iteration_s is None:  # a single iteration
            _synchronize(device)
            first_iteration_s = time.perf_counter() - started
        final = variable.detach()
        x = ufc_compose(*compose_args(final), lo=lo, hi=hi, backend=backend)
        with autocast:
            if chunked:  # (its gradient to the detached images is thrown away)
                ce, rbn, logits = losses_and_backward(x.requires_grad_())
                x = x.detach()
            else:
                with torch.no_grad():
                    ce, rbn, logits = losses(x, compiled=False)  # (once: not worth a no-grad graph)
        acc = (logits.argmax(1) == labels).view(G, C).float().mean(1)
    finally:
        if chunked:
            losses.detach()
    alive &= torch.isfinite(final.flatten(1)).all(1)
    failed = {k: int(it) for k, ok, it in zip(ks, alive.tolist(), died_at.tolist()) if not ok}
    stats = {
        "teacher": m,
        "k": list(ks),
        "ce": float(ce.mean()),
        "r_bn": float(rbn.mean()),
        "accuracy": float(acc.mean()),
        "ce_per_ufc": ce.tolist(),
        "r_bn_per_ufc": rbn.tolist(),
        "accuracy_per_ufc": acc.tolist(),
        # the optimized objective at the last iteration (augmented, unclamped images)
        "ce_last_iteration": float(last_ce.mean()),
        "r_bn_last_iteration": float(last_rbn.mean()),
        "failed": failed,  # k -> first iteration with a non-finite loss (-1: a non-finite result)
        # wall time of the batch, and of its first iteration (compile and warm-up included)
        "seconds": time.perf_counter() - started,
        "first_iteration_seconds": first_iteration_s,
    }
    result = final if method == "infer" else x
    return result.to("cpu", torch.float32), stats

