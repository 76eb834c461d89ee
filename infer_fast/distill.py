"""INFER distillation: natural sets + recovery of Universal Feature Compensators (UFCs),
and the SRe2L and random baselines under the same protocol.

    K = infer_budget(ipc=10, num_classes=10, num_teachers=4)          # fair: K = 7
    natural = select_natural_sets(train, K, seed=0)                    # uint8 (K, C, ch, H, W)
    out = recover_ufcs(natural, teachers, mean, std, RecoveryConfig())  # ufc (K*M, ch, H, W)
    path = distill_infer("cifar10", ["t0.pt", "t1.pt"], ipc=10, out_dir="c10-ipc10")
    path = distill_sre2l("cifar10", ["t0.pt"], ipc=10, out_dir="c10-sre2l")

Recovery (INFER_METHOD.md §3): for natural set k and teacher m, u_k^m starts at zero and
minimizes CE(f_m(aug(X^k + u)), 0..C-1) + r_bn * (first_bn_mult * R_1 + sum_l R_l) with
Adam (lr 0.25, betas (0.5, 0.9)) under a cosine schedule lr_t = 0.5 (1 + cos(pi t / T)) lr.
aug is a roll by randint(0, 4) on H and W for small images, RandomResizedCrop + flip + roll
by up to 32 for ImageNet-size ones (``RecoveryConfig.imagenet()``). No clamp during
optimization; the final images are clamped to the valid pixel range.

Batching: the K UFCs of one teacher are optimized G at a time (teacher in eval mode, BN
statistics per group, loss summed over groups, Adam elementwise), so every UFC gets exactly
the gradient it would get alone. Each UFC (m, k) draws its augmentation from its own
generator seeded from (seed, m, k), so the result does not depend on G (up to float
rounding of differently sized convolutions). SRe2L runs through the same loop with free
images (from noise) in place of the compensators.

Checkpoints: after every finished batch the finished UFCs are written atomically; a resumed
run skips them (UFC results do not depend on batching, so the group size may differ).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .data.transforms import _resized_crop_boxes
from . import distributed
from .ops import BNStatTracker, chunked_loss_backward, ufc_compose
from ._io import read_checkpoint, save_atomic

__all__ = [
    "ACCOUNTINGS", "AUGMENTATIONS", "SELECTIONS", "PRECISIONS", "RecoveryDivergedError", "RecoveryConfig", "infer_budget", "select_natural_sets",
    "recover_ufcs", "recover_sre2l", "auto_batch_plan", "distill_infer", "distill_sre2l", "distill_random",
]

ACCOUNTINGS = ("fair", "ipc")
AUGMENTATIONS = ("roll", "imagenet")
SELECTIONS = ("random", "confidence")
PRECISIONS = ("fp32", "bf16")
DISTRIBUTED_MODES = ("jobs", "chunks")
# torch.compile modes for the teacher pass of recovery ("reduce-overhead" adds CUDA graphs)
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range
CHECKPOINT_FORMAT = "infer-fast-recovery"
CHECKPOINT_VERSION = 1
CPU_MAX_IMAGES = 512  # automatic group size on CPU: at most this many images per batch
CUDA_MEMORY_FRACTION = 0.6  # automatic group size on CUDA: share of free memory to use
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# config fields that do not change the result (resuming with another value is allowed)
_RESULT_NEUTRAL = ("group_size", "chunk_size", "fused_bn", "compile", "distributed")


# --------------------------------------------------------------------------------------
# budget and natural sets
# --------------------------------------------------------------------------------------

def infer_budget(ipc: int, num_classes: int, num_teachers: int, accounting: str = "fair") -> int:
    """Number of natural sets K for a storage budget of ``ipc`` images per class.

    "fair" (the reference release): K*C natural images + K*M UFCs <= ipc*C, i.e.
    K = floor(ipc*C / (C+M)). "ipc" (the paper's ImageNet compression ratios): K = ipc.
    """
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"unknown budget accounting {accounting!r}; choose one of {', '.join(ACCOUNTINGS)}")
    for name, value in (("ipc", ipc), ("num_classes", num_classes), ("num_teachers", num_teachers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if accounting == "ipc":
        return ipc
    k = (ipc * num_classes) // (num_classes + num_teachers)
    if k < 1:
        minimum = -(-(num_classes + num_teachers) // num_classes)  # ceil((C + M) / C)
        raise ValueError(
            f"ipc={ipc} is too small for INFER with C={num_classes} classes and M={num_teachers} teachers "
            f"under the fair budget (K = floor(ipc*C/(C+M)) = 0 natural sets): use ipc >= {minimum}"
        )
    return k


@torch.no_grad()
def _true_class_confidence(images_u8: Tensor, label: int, teachers: Sequence[nn.Module], mean, std,
                           batch_size: int = 500) -> Tensor:
    """Softmax probability of ``label`` under the teachers' mean logits, per image (CPU float32)."""
    from .data.transforms import normalize
    from .student import ensemble_logits

    device = _device_of(teachers[0])
    out = []
    for start in range(0, images_u8.shape[0], batch_size):
        x = normalize(images_u8[start:start + batch_size], mean, std).to(device)
        out.append(ensemble_logits(teachers, x).softmax(1)[:, label].float().cpu())
    return torch.cat(out)


def select_natural_sets(train_set, K: int, seed: int, selection: str = "random",
                        teachers: Optional[Sequence[nn.Module]] = None) -> Tensor:
    """K natural sets, one real training image per class each: uint8 (K, C, ch, H, W).

    ``selection="random"``: within a class the K images are distinct, drawn without
    replacement with a torch.Generator seeded by ``seed`` (the same seed picks the same
    images). ``"confidence"``: the K images of each class to which the teachers' ensemble
    (mean logits, eval mode) gives the highest probability of their own class, ties broken
    by the seeded random order; set k gets the k-th most confident image of every class.
    """
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be a positive integer, got {K!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if selection == "confidence" and not teachers:
        raise ValueError("selection='confidence' needs the teachers to score the training images")
    images, labels = train_set.images, train_set.labels
    spec = train_set.spec
    num_classes = spec.num_classes
    if images.dtype != torch.uint8:
        raise ValueError(f"natural sets are stored as uint8 pixels; the training images are {images.dtype}")
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    short = [c for c, n in enumerate(counts) if n < K]
    if short:
        c = short[0]
        raise ValueError(
            f"K={K} natural sets need {K} training images of every class, but class {c} has only {counts[c]}"
            + (f" ({len(short)} classes have fewer than {K})" if len(short) > 1 else "")
        )
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.empty((K, num_classes) + tuple(images.shape[1:]), dtype=torch.uint8)
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        if selection == "confidence":
            score = _true_class_confidence(images[idx], c, list(teachers), spec.mean, spec.std)
            idx = idx[torch.sort(score, descending=True, stable=True).indices]
        out[:, c] = images[idx[:K]]
    return out


# --------------------------------------------------------------------------------------
# recovery
# --------------------------------------------------------------------------------------

@dataclass
class RecoveryConfig:
    """Hyperparameters of UFC recovery (defaults: CIFAR, INFER_METHOD.md §3).

    ``RecoveryConfig.imagenet()`` gives the ImageNet recipe, ``RecoveryConfig.sre2l()`` the
    SRe2L baseline's (r_bn 0.01)."""

    iterations: int = 1000
    lr: float = 0.25
    betas: Tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-8
    r_bn: float = 1.0
    first_bn_mult: float = 10.0
    # "roll": roll by randint(0, max_shift) (inclusive) on H and W; "imagenet":
    # RandomResizedCrop(crop_scale) + horizontal flip, then that roll. Drawn per UFC per iteration.
    augmentation: str = "roll"
    max_shift: int = 4
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    group_size: Optional[int] = None  # UFCs per batch; None = automatic (see auto_batch_plan)
    # rows through the teacher at a time (chunked exact mode: the same gradient in the memory
    # of one chunk); None = the whole batch, or automatic chunks on CUDA when one group does not fit
    chunk_size: Optional[int] = None
    # teacher passes in "bf16" autocast (statistics accumulated and the UFC kept in fp32) or "fp32"
    precision: str = "fp32"
    channels_last: bool = False  # teacher weights and inputs in channels_last during recovery
    # eval-mode BN and its statistics loss fused (bn_eval_with_stat_loss: one kernel pass each
    # way instead of the BN's, the loss's and autograd's sum); same results; not with chunk_size
    fused_bn: bool = False
    # torch.compile the teacher forward + losses (fullgraph; its backward too): "off", or a
    # torch.compile mode ("reduce-overhead" = CUDA graphs). One graph per teacher and group
    # count; unchunked batches only; same results up to float rounding
    compile: str = "off"
    # under torchrun: "jobs" splits the UFCs across ranks; "chunks" has every rank work on every
    # UFC batch, each running its share of the chunks (needs chunk_size), statistics all-reduced
    distributed: str = "jobs"
    seed: int = 0

    @classmethod
    def imagenet(cls, **overrides: Any) -> "RecoveryConfig":
        """INFER on ImageNet-size images: 2000 iterations, r_bn 0.01, RandomResizedCrop
        (0.08, 1) + flip + roll by up to 32 pixels."""
        values = dict(iterations=2000, r_bn=0.01, augmentation="imagenet", max_shift=32)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def sre2l(cls, **overrides: Any) -> "RecoveryConfig":
        """The SRe2L baseline (INFER_METHOD.md §6): same loss and optimizer, r_bn 0.01."""
        values = dict(r_bn=0.01)
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {self.iterations!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps!r}")
        if not (self.r_bn >= 0 and math.isfinite(self.r_bn)):
            raise ValueError(f"r_bn must be >= 0, got {self.r_bn!r}")
        if not math.isfinite(self.first_bn_mult):
            raise ValueError(f"first_bn_mult must be finite, got {self.first_bn_mult!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {self.augmentation!r}")
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"max_shift must be an integer >= 0, got {self.max_shift!r}")
        scale = tuple(self.crop_scale)
        if len(scale) != 2 or not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"crop_scale must be two values with 0 < low <= high <= 1, got {self.crop_scale!r}")
        if self.group_size is not None and (
            isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1
        ):
            raise ValueError(f"group_size must be a positive integer or None (automatic), got {self.group_size!r}")
        if self.chunk_size is not None and (
            isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive integer or None (automatic), got {self.chunk_size!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed must be one of {', '.join(DISTRIBUTED_MODES)}, got {self.distributed!r}")
        if self.distributed == "chunks" and self.chunk_size is None:
            raise ValueError("distributed='chunks' splits the chunks of each batch across ranks: set chunk_size")
        for name in ("channels_last", "fused_bn"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def describe_augmentation(self) -> str:
        roll = f"roll by randint(0, {self.max_shift}) on H and W"
        if self.augmentation == "imagenet":
            return f"RandomResizedCrop(scale {tuple(self.crop_scale)}) + horizontal flip, then {roll}; drawn per UFC per iteration"
        return f"{roll} per UFC per iteration"

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = [float(b) for b in self.betas]
        d["crop_scale"] = [float(s) for s in self.crop_scale]
        return d


def _job_seed(method: str, seed: int, m: int, k: int) -> int:
    """A per-job (one UFC, or one SRe2L image group) generator seed, independent of batching."""
    tag = "infer-ufc" if method == "infer" else method
    digest = hashlib.sha256(f"{tag}:{int(seed)}:{int(m)}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _check_teacher(teacher: nn.Module, m: int) -> None:
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


def _natural_digest(natural_u8: Tensor) -> str:
    return hashlib.sha256(natural_u8.contiguous().numpy().tobytes()).hexdigest()


def _load_checkpoint(path: str, identity: Dict[str, Any]) -> Dict[str, Any]:
    ckpt = read_checkpoint(path, CHECKPOINT_FORMAT, "recovery checkpoint", CHECKPOINT_VERSION)
    theirs = ckpt.get("run", {})
    for key, value in identity.items():
        if key == "config":
            for name, v in value.items():
                if theirs.get("config", {}).get(name) != v:
                    raise ValueError(
                        f"recovery checkpoint {path!r} belongs to another run: config {name}="
                        f"{theirs.get('config', {}).get(name)!r}, this run has {v!r} (delete it or use the same settings)"
                    )
        elif theirs.get(key) != value:
            what = "natural images" if key == "natural_sha256" else key
            shown = "" if key == "natural_sha256" else f": {theirs.get(key)!r} vs this run's {value!r}"
            raise ValueError(f"recovery checkpoint {path!r} belongs to another run (different {what}{shown})")
    return ckpt


class RecoveryDivergedError(RuntimeError):
    """Some UFCs (or SRe2L groups) hit a non-finite loss; the others were kept."""


class _Augmentation:
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


class _TeacherLosses:
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


def _optimize_batch(
    method: str, source: Optional[Tensor], num_classes: int, image_shape: Tuple[int, int, int],
    losses: _TeacherLosses, m: int, ks: List[int], config: RecoveryConfig, lo: Tensor, hi: Tensor,
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
    gens = [torch.Generator().manual_seed(_job_seed(method, config.seed, m, k)) for k in ks]
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
    augment = _Augmentation(config, gens, image_shape[1], image_shape[2], device, config.iterations)
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


def _check_common(teachers, mean, std, channels: int, config: RecoveryConfig) -> List[nn.Module]:
    config.validate()
    teachers = list(teachers)
    if not teachers:
        raise ValueError("recovery needs at least one teacher")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need one value per channel ({channels}), got {len(mean)} and {len(std)}")
    for m, teacher in enumerate(teachers):
        _check_teacher(teacher, m)
    return teachers


def _run_jobs(
    method: str, jobs: List[Tuple[int, int]], teachers: List[nn.Module], natural_cpu: Optional[Tensor],
    num_classes: int, image_shape: Tuple[int, int, int], mean, std, config: RecoveryConfig,
    identity: Dict[str, Any], checkpoint, resume: bool, progress: bool, backend: str,
) -> Tuple[Dict[Tuple[int, int], Tensor], List[Dict[str, Any]], Optional[int]]:
    """Run the jobs (m, k) teacher by teacher, G at a time, checkpointing after every batch.
    Returns ({(m, k): result}, batch stats, last group size)."""
    from .storage import valid_range

    lo_cpu, hi_cpu = valid_range(mean, std)
    rank, world = distributed.rank_and_world()
    # torchrun, "jobs": every world-th job, each rank with its own checkpoint; "chunks" (or one
    # process): every job here, the chunks of each batch split inside, rank 0 checkpoints
    split_jobs = world > 1 and config.distributed == "jobs"
    writer = split_jobs or rank == 0
    done: Dict[Tuple[int, int], Tensor] = {}
    stats: List[Dict[str, Any]] = []
    inherited: Dict[Tuple[int, int], Tensor] = {}
    if checkpoint is not None:
        found = recovery_checkpoints(checkpoint)
        checkpoint = distributed.shard_path(os.fspath(checkpoint), rank, world if split_jobs else 1)
        if found and not resume:
            raise ValueError(
                f"recovery checkpoint {found[0]!r} exists: pass resume=True to continue that run, or delete it"
            )
        # every checkpoint of the run, whatever number of ranks wrote it: a restart with
        # another world size (or one process) loses nothing
        inherited_stats: Dict[Tuple[int, Tuple[int, ...]], Dict[str, Any]] = {}
        for path in found:
            ckpt = _load_checkpoint(path, identity)
            for m, k, u in zip(ckpt["ufc_teacher"].tolist(), ckpt["ufc_index"].tolist(), ckpt["ufc"]):
                inherited[(m, k)] = u
            for batch in ckpt.get("stats", []):
                inherited_stats[(batch["teacher"], tuple(batch["k"]))] = batch
        if inherited and (rank == 0 or not split_jobs):  # one rank brings them to the gather
            done, stats = dict(inherited), list(inherited_stats.values())
        if found and progress:
            print(f"{', '.join(found)}: resuming, {len(inherited)}/{len(jobs)} {method} jobs already recovered")
    remaining = [job for job in jobs if job not in inherited]
    mine = remaining[rank::world] if split_jobs else remaining

    def write_checkpoint(group_size: int) -> None:
        keys = sorted(done)
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "format_version": CHECKPOINT_VERSION,
                "run": identity,
                "config": config.to_dict(),
                "group_size": group_size,
                "ufc": torch.stack([done[key] for key in keys]) if keys else torch.empty(0),
                "ufc_teacher": torch.tensor([m for m, _ in keys], dtype=torch.int64),
                "ufc_index": torch.tensor([k for _, k in keys], dtype=torch.int64),
                "stats": stats,
            },
            checkpoint,
        )

    M = len(teachers)
    group_size = config.group_size
    failures: List[Tuple[int, int, int]] = []
    for m, teacher in enumerate(teachers):
        todo = [k for mm, k in mine if mm == m and (m, k) not in done]
        if not todo:
            continue
        device = _device_of(teacher)
        source = None if natural_cpu is None else natural_cpu.to(device)
        lo, hi = lo_cpu.to(device), hi_cpu.to(device)
        # frozen parameters: no gradient is computed for them (restored afterwards)
        flags = [(p, p.requires_grad) for p in teacher.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        if config.channels_last:  # (back to the default layout afterwards)
            teacher.to(memory_format=torch.channels_last)
        losses = _TeacherLosses(teacher, num_classes, config, backend)
        try:
            probe = source if source is not None else torch.zeros((1, num_classes) + image_shape, device=device)
            if config.group_size:
                G, chunk_size = config.group_size, config.chunk_size
            else:
                G, auto_chunk = auto_batch_plan(teacher, probe, len(todo))
                chunk_size = config.chunk_size or auto_chunk
                if world > 1 and not split_jobs:  # "chunks": one plan for all ranks (rank 0's)
                    G, chunk_size = distributed.all_gather_object((G, chunk_size))[0]
            group_size = G
            for start in range(0, len(todo), G):
                ks = todo[start:start + G]
                noun = "UFC" if method == "infer" else "SRe2L group"
                desc = f"teacher {m + 1}/{M} {noun}s k={ks[0]}..{ks[-1]}" if len(ks) > 1 else f"teacher {m + 1}/{M} {noun} k={ks[0]}"
                result, batch_stats = _optimize_batch(
                    method, source, num_classes, image_shape, losses, m, ks, config, lo, hi, progress, backend, desc,
                    chunk_size,
                )
                for k, r in zip(ks, result):
                    if k not in batch_stats["failed"]:
                        done[(m, k)] = r.clone()
                failures += [(m, k, it) for k, it in batch_stats["failed"].items()]
                stats.append(batch_stats)
                if checkpoint is not None and writer and len(batch_stats["failed"]) < len(ks):
                    write_checkpoint(G)
        finally:
            losses.detach()
            for p, flag in flags:
                p.requires_grad_(flag)
            if config.channels_last:
                teacher.to(memory_format=torch.contiguous_format)
    if split_jobs:  # everyone gets every share (then raises together if any job failed)
        shares = distributed.all_gather_object((done, stats, failures))
        done, stats, failures = {}, [], []
        for share_done, share_stats, share_failures in shares:
            if set(share_done) & set(done):
                raise RuntimeError(f"{method} recovery: two ranks returned the same jobs {sorted(set(share_done) & set(done))}")
            done.update(share_done)
            stats += share_stats
            failures += share_failures
        if not failures and set(done) != set(jobs):
            raise RuntimeError(f"{method} recovery: the ranks' shares miss jobs {sorted(set(jobs) - set(done))}")
    if failures:
        named = ", ".join(f"m={m} k={k}" + (f" (iteration {it})" if it > 0 else " (non-finite result)") for m, k, it in failures)
        kept = f"; the other {len(done)} are in {checkpoint} and --resume retries only the failed ones" if checkpoint else ""
        raise RecoveryDivergedError(
            f"{method} recovery: the loss became non-finite for {len(failures)} of {len(jobs)} jobs ({named}); "
            f"lower lr or r_bn, or check the teacher{kept}"
        )
    return done, stats, group_size


def recover_ufcs(
    natural_u8: Tensor,
    teachers: Sequence[nn.Module],
    mean: Sequence[float],
    std: Sequence[float],
    config: Optional[RecoveryConfig] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    resume: bool = False,
    progress: bool = True,
    backend: str = "auto",
) -> Dict[str, Any]:
    """Recover the K*M UFCs of ``natural_u8`` (uint8 (K, C, ch, H, W)) for every teacher.

    Returns a dict: ``ufc`` float32 (K*M, ch, H, W) in normalized space, teacher-major
    (row m*K + k is u_k^m), ``ufc_index`` int64 (k), ``ufc_teacher`` int64 (m), ``stats``
    (one dict per optimized batch: teacher, k, CE, R_bn and accuracy of the final clamped,
    unaugmented composed images, batch means and per UFC, plus ce/r_bn_last_iteration, the
    objective at the last step; batches restored from a checkpoint keep their recorded
    stats) and ``group_size`` (the last one used).

    Teachers must be frozen and in eval mode; each runs on its own device. ``checkpoint``:
    a file written atomically after every batch; ``resume=True`` continues from it (it must
    belong to the same run: natural images, K, M, normalization and config except
    group_size). An existing checkpoint without ``resume`` is refused.
    """
    config = RecoveryConfig() if config is None else config
    if not isinstance(natural_u8, Tensor) or natural_u8.dtype != torch.uint8 or natural_u8.dim() != 5:
        raise ValueError(
            f"natural_u8 must be a uint8 tensor (K, C, ch, H, W), got "
            f"{getattr(natural_u8, 'dtype', type(natural_u8).__name__)} {tuple(getattr(natural_u8, 'shape', ()))}"
        )
    K, C, ch = natural_u8.shape[:3]
    teachers = _check_common(teachers, mean, std, ch, config)
    if K < 1 or C < 1:
        raise ValueError(f"natural_u8 must hold at least one set and one class, got {tuple(natural_u8.shape)}")
    M = len(teachers)
    natural_u8 = natural_u8.detach().cpu().contiguous()
    from .data.transforms import normalize

    natural_cpu = normalize(natural_u8, mean, std).contiguous()
    identity = {
        "method": "infer",
        "K": int(K),
        "M": int(M),
        "natural_shape": list(natural_u8.shape),
        "natural_sha256": _natural_digest(natural_u8),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "config": {k: v for k, v in config.to_dict().items() if k not in _RESULT_NEUTRAL},
    }
    jobs = [(m, k) for m in range(M) for k in range(K)]
    done, stats, group_size = _run_jobs(
        "infer", jobs, teachers, natural_cpu, C, tuple(natural_u8.shape[2:]), mean, std, config, identity,
        checkpoint, resume, progress, backend,
    )
    return {
        "ufc": torch.stack([done[key] for key in jobs]).to(torch.float32),
        "ufc_index": torch.tensor([k for _, k in jobs], dtype=torch.int64),
        "ufc_teacher": torch.tensor([m for m, _ in jobs], dtype=torch.int64),
        "stats": stats,
        "group_size": group_size,
    }


def recover_sre2l(
    ipc: int,
    num_classes: int,
    image_shape: Sequence[int],
    teachers: Sequence[nn.Module],
    mean: Sequence[float],
    std: Sequence[float],
    config: Optional[RecoveryConfig] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    resume: bool = False,
    progress: bool = True,
    backend: str = "auto",
) -> Dict[str, Any]:
    """The SRe2L baseline: ``ipc`` images per class recovered from Gaussian noise with the same
    CE + BN-statistics loss, optimizer and augmentation as INFER (INFER_METHOD.md §6).

    Images are optimized in groups of C (one per class, labels 0..C-1) with BN statistics
    per group, like one SRe2L batch; group j uses teacher j mod M (with one teacher this is
    SRe2L exactly). Default config: ``RecoveryConfig.sre2l()`` (r_bn 0.01). Returns
    ``images`` float32 (ipc*C, ch, H, W), normalized and clamped to the valid range, group-major
    (row j*C + c has class c), ``labels`` int64, ``teacher`` int64 per image, ``stats``,
    ``group_size``. Checkpoint/resume as :func:`recover_ufcs`."""
    config = RecoveryConfig.sre2l() if config is None else config
    for name, value in (("ipc", ipc), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (channels, H, W), got {image_shape}")
    teachers = _check_common(teachers, mean, std, image_shape[0], config)
    M = len(teachers)
    identity = {
        "method": "sre2l",
        "ipc": int(ipc),
        "M": int(M),
        "shape": [int(num_classes), *image_shape],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "config": {k: v for k, v in config.to_dict().items() if k not in _RESULT_NEUTRAL},
    }
    jobs = [(j % M, j) for j in range(ipc)]
    done, stats, group_size = _run_jobs(
        "sre2l", jobs, teachers, None, num_classes, image_shape, mean, std, config, identity,
        checkpoint, resume, progress, backend,
    )
    images = torch.stack([done[key] for key in jobs])  # (ipc, C, ch, H, W)
    return {
        "images": images.flatten(0, 1).to(torch.float32),
        "labels": torch.arange(num_classes, dtype=torch.int64).repeat(ipc),
        "teacher": torch.tensor([m for m, _ in jobs], dtype=torch.int64).repeat_interleave(num_classes),
        "stats": stats,
        "group_size": group_size,
    }


# --------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------

def _set_fields(train) -> Dict[str, Any]:
    """DistilledSet fields that describe the real training set ``train`` (an ImageSet)."""
    spec = train.spec
    return dict(
        dataset=spec.name, num_classes=spec.num_classes, channels=spec.channels, image_size=spec.image_size,
        mean=spec.mean, std=spec.std, full_train_size=len(train),
        class_names=list(spec.class_names) if spec.class_names is not None else None,
    )


def _prepare(dataset, teacher_paths, out_dir, config, data_root, device):
    """Checks, the training split and the teachers (loaded once, frozen, eval mode) of a
    recovery run: (out_dir, train, teachers, teacher records, checkpoint path)."""
    from .data import load_dataset
    from .storage import OutputExistsError
    from .teacher import load_teacher

    config.validate()
    teacher_paths = [os.fspath(p) for p in teacher_paths]
    if not teacher_paths:
        raise ValueError("teachers: at least one teacher checkpoint is needed")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise OutputExistsError(f"{out_dir} already exists; choose another output directory")
    train = load_dataset(dataset, "train", data_root=data_root)
    teachers, records = [], []
    for path in teacher_paths:
        model, meta = load_teacher(path, dataset=dataset, num_classes=train.spec.num_classes,
                                   device=distributed.local_device(device))
        teachers.append(model)
        records.append({"path": path, "model": meta["model"], "accuracy": meta.get("test_accuracy")})
    return out_dir, train, teachers, records, out_dir.with_name(out_dir.name + ".recovery.pt")


def recovery_checkpoints(checkpoint: Union[str, os.PathLike]) -> List[str]:
    """The existing checkpoint files of a recovery run: ``checkpoint`` itself (one process,
    or "chunks") and the per-rank shares ``<checkpoint>.rank<r>-of-<w>`` of any world size."""
    base = os.fspath(checkpoint)
    shares = sorted(glob.glob(glob.escape(base) + ".rank*-of-*"))
    return ([base] if os.path.exists(base) else []) + shares


def _save_and_clean(ds, out_dir: Path, checkpoint: Path) -> Path:
    """Rank 0 writes the set (verified by loading it back under torchrun), then removes the
    run's recovery checkpoints (every rank's share, of any world size)."""
    from .storage import load_distilled, save_distilled

    rank, world = distributed.rank_and_world()
    if rank == 0:
        save_distilled(ds, out_dir)
        if world > 1:
            load_distilled(out_dir)  # the merged set verifies as one
    distributed.barrier()  # every rank is done with its share before it goes
    if rank == 0:
        for path in recovery_checkpoints(checkpoint):
            Path(path).unlink(missing_ok=True)
    distributed.barrier()
    return out_dir


def distill_infer(
    dataset: str,
    teacher_paths: Sequence[Union[str, os.PathLike]],
    ipc: int,
    out_dir: Union[str, os.PathLike],
    config: Optional[RecoveryConfig] = None,
    accounting: str = "fair",
    data_root: Optional[str] = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    backend: str = "auto",
    selection: str = "random",
) -> Path:
    """Distill ``dataset`` with INFER into ``out_dir`` (a distilled-set directory); returns it.

    Loads the training split and the teachers (once), K = infer_budget(ipc, C, M,
    accounting), picks K natural sets (``selection`` random or by teacher confidence, seed =
    config.seed), recovers the K*M UFCs with a checkpoint at ``<out_dir>.recovery.pt``
    (removed after the set is saved; ``resume=True`` continues an interrupted run) and saves
    an unlabelled INFER DistilledSet.
    """
    from .storage import DistilledSet

    config = RecoveryConfig() if config is None else config
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    out_dir, train, teachers, records, checkpoint = _prepare(dataset, teacher_paths, out_dir, config, data_root, device)
    spec = train.spec
    K = infer_budget(ipc, spec.num_classes, len(teachers), accounting)
    natural = select_natural_sets(train, K, config.seed, selection=selection, teachers=teachers)
    result = recover_ufcs(
        natural, teachers, spec.mean, spec.std, config, checkpoint=checkpoint, resume=resume,
        progress=progress, backend=backend,
    )
    hyper = config.to_dict()
    hyper.update(group_size_used=result["group_size"], augmentation_rule=config.describe_augmentation(),
                 natural_selection=selection)
    ds = DistilledSet(
        method="infer", **_set_fields(train), natural=natural, ufc=result["ufc"], ufc_index=result["ufc_index"],
        ufc_teacher=result["ufc_teacher"], hyperparameters=hyper, teachers=records,
        budget={"ipc": int(ipc), "K": K, "M": len(teachers), "accounting": accounting}, seed=config.seed,
    )
    return _save_and_clean(ds, out_dir, checkpoint)


def distill_sre2l(
    dataset: str,
    teacher_paths: Sequence[Union[str, os.PathLike]],
    ipc: int,
    out_dir: Union[str, os.PathLike],
    config: Optional[RecoveryConfig] = None,
    data_root: Optional[str] = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    backend: str = "auto",
) -> Path:
    """The SRe2L baseline into ``out_dir``: ipc*C images recovered from noise by
    :func:`recover_sre2l` (default ``RecoveryConfig.sre2l()``), stored as float32 normalized
    images with hard labels (the same ipc*C image budget); relabel it like an INFER set."""
    from .storage import DistilledSet

    config = RecoveryConfig.sre2l() if config is None else config
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
    out_dir, train, teachers, records, checkpoint = _prepare(dataset, teacher_paths, out_dir, config, data_root, device)
    spec = train.spec
    result = recover_sre2l(
        ipc, spec.num_classes, tuple(train.images.shape[1:]), teachers, spec.mean, spec.std, config,
        checkpoint=checkpoint, resume=resume, progress=progress, backend=backend,
    )
    hyper = config.to_dict()
    hyper.update(group_size_used=result["group_size"], augmentation_rule=config.describe_augmentation(),
                 init="Gaussian noise N(0, 1) in normalized space",
                 teacher_rule="image group j (one image per class) is recovered with teacher j mod M")
    ds = DistilledSet(
        method="sre2l", **_set_fields(train), images=result["images"], labels=result["labels"],
        hyperparameters=hyper, teachers=records,
        budget={"ipc": int(ipc), "K": 0, "M": len(teachers), "accounting": "ipc"}, seed=config.seed,
    )
    return _save_and_clean(ds, out_dir, checkpoint)


def distill_random(
    dataset: str,
    ipc: int,
    out_dir: Union[str, os.PathLike],
    seed: int = 0,
    data_root: Optional[str] = None,
) -> Path:
    """The "random" baseline: ``ipc`` real training images per class, chosen with ``seed``,
    stored as uint8 (the same storage as ipc*C images; relabel it like an INFER set)."""
    from .data import load_dataset
    from .storage import DistilledSet, OutputExistsError, save_distilled

    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise OutputExistsError(f"{out_dir} already exists; choose another output directory")
    train = load_dataset(dataset, "train", data_root=data_root)
    picked = train.per_class(ipc, seed=seed)
    ds = DistilledSet(
        method="random",
        **_set_fields(train),
        images=picked.images,
        labels=picked.labels,
        hyperparameters={"selection": "ipc real training images per class, uniformly at random"},
        teachers=[],
        budget={"ipc": int(ipc), "K": 0, "M": 0, "accounting": "ipc"},
        seed=seed,
    )
    return save_distilled(ds, out_dir)
