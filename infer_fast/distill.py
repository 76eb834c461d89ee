"""INFER distillation: natural sets + recovery of Universal Feature Compensators (UFCs).

    K = infer_budget(ipc=10, num_classes=10, num_teachers=4)          # fair: K = 7
    natural = select_natural_sets(train, K, seed=0)                    # uint8 (K, C, ch, H, W)
    out = recover_ufcs(natural, teachers, mean, std, RecoveryConfig())  # ufc (K*M, ch, H, W)
    path = distill_infer("cifar10", ["t0.pt", "t1.pt"], ipc=10, out_dir="c10-ipc10")

Recovery (INFER_METHOD.md §3): for natural set k and teacher m, u_k^m starts at zero and
minimizes CE(f_m(roll(X^k + u)), 0..C-1) + r_bn * (first_bn_mult * R_1 + sum_l R_l) with
Adam (lr 0.25, betas (0.5, 0.9)) under a cosine schedule lr_t = 0.5 (1 + cos(pi t / T)) lr.
No clamp during optimization; the final images are clamped to the valid pixel range.

Batching: the K UFCs of one teacher are optimized G at a time (teacher in eval mode, BN
statistics per group, loss summed over groups, Adam elementwise), so every UFC gets exactly
the gradient it would get alone. Each UFC (m, k) draws its augmentation from its own
generator seeded from (seed, m, k), so the result does not depend on G (up to float
rounding of differently sized convolutions). Only the CIFAR-like augmentation (roll by
randint(0, max_shift) on H and W) is implemented; the ImageNet RandomResizedCrop + flip
recipe is not.

Checkpoints: after every finished batch the finished UFCs are written atomically; a resumed
run skips them (UFC results do not depend on batching, so the group size may differ).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .ops import BNStatTracker, ufc_compose
from ._io import save_atomic

__all__ = [
    "ACCOUNTINGS", "RecoveryConfig", "infer_budget", "select_natural_sets", "recover_ufcs",
    "auto_group_size", "distill_infer",
]

ACCOUNTINGS = ("fair", "ipc")
CHECKPOINT_FORMAT = "infer-fast-recovery"
CHECKPOINT_VERSION = 1
CPU_MAX_IMAGES = 512  # automatic group size on CPU: at most this many images per batch
CUDA_MEMORY_FRACTION = 0.6  # automatic group size on CUDA: share of free memory to use
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# config fields that do not change the result (resuming with another value is allowed)
_RESULT_NEUTRAL = ("group_size",)


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


def select_natural_sets(train_set, K: int, seed: int) -> Tensor:
    """K natural sets, one random real training image per class each: uint8 (K, C, ch, H, W).

    Within a class the K images are distinct (drawn without replacement with a
    torch.Generator seeded by ``seed``); the same seed picks the same images.
    """
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be a positive integer, got {K!r}")
    images, labels = train_set.images, train_set.labels
    num_classes = train_set.spec.num_classes
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
        pick = idx[torch.randperm(idx.numel(), generator=gen)[:K]]
        out[:, c] = images[pick]
    return out


# --------------------------------------------------------------------------------------
# recovery
# --------------------------------------------------------------------------------------

@dataclass
class RecoveryConfig:
    """Hyperparameters of UFC recovery (defaults: CIFAR, INFER_METHOD.md §3)."""

    iterations: int = 1000
    lr: float = 0.25
    betas: Tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-8
    r_bn: float = 1.0
    first_bn_mult: float = 10.0
    max_shift: int = 4  # roll by randint(0, max_shift) (inclusive) on H and W, per UFC per iteration
    group_size: Optional[int] = None  # UFCs per batch; None = automatic (see auto_group_size)
    seed: int = 0

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
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"max_shift must be an integer >= 0, got {self.max_shift!r}")
        if self.group_size is not None and (
            isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1
        ):
            raise ValueError(f"group_size must be a positive integer or None (automatic), got {self.group_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = [float(b) for b in self.betas]
        return d


def _ufc_seed(seed: int, m: int, k: int) -> int:
    """A per-UFC generator seed from (seed, m, k), independent of batching."""
    digest = hashlib.sha256(f"infer-ufc:{int(seed)}:{int(m)}:{int(k)}".encode()).digest()
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


def auto_group_size(
    teacher: nn.Module, natural: Tensor, K: int, max_images: int = CPU_MAX_IMAGES,
    memory_fraction: float = CUDA_MEMORY_FRACTION,
) -> int:
    """The number of UFCs optimized together: the largest G <= K whose G*C images fit.

    CPU: G*C <= ``max_images`` (at least 1). CUDA: one forward + backward of a single group
    (C images) measures the peak extra memory per group; G = memory_fraction * free memory
    (torch.cuda.mem_get_info) / that peak, clipped to [1, K].
    """
    C = natural.shape[1]
    device = natural.device
    if device.type != "cuda":
        return max(1, min(K, max_images // C))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    ufc = torch.zeros((1,) + tuple(natural.shape[2:]), dtype=natural.dtype, device=device, requires_grad=True)
    index = torch.zeros(1, dtype=torch.int64, device=device)
    tracker = BNStatTracker(teacher, groups=1)
    try:
        x = ufc_compose(natural, ufc, index).flatten(0, 1)
        loss = F.cross_entropy(teacher(x), torch.arange(C, device=device)) + tracker.weighted_sum(1.0).sum()
        loss.backward()
    finally:
        tracker.remove()
    torch.cuda.synchronize(device)
    per_group = max(1, torch.cuda.max_memory_allocated(device) - base)
    del x, loss, ufc
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(K, int(memory_fraction * free / per_group)))


def _natural_digest(natural_u8: Tensor) -> str:
    return hashlib.sha256(natural_u8.contiguous().numpy().tobytes()).hexdigest()


def _run_identity(natural_u8, M, mean, std, config) -> Dict[str, Any]:
    return {
        "K": int(natural_u8.shape[0]),
        "M": int(M),
        "natural_shape": list(natural_u8.shape),
        "natural_sha256": _natural_digest(natural_u8),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "config": {k: v for k, v in config.to_dict().items() if k not in _RESULT_NEUTRAL},
    }


def _load_checkpoint(path: str, identity: Dict[str, Any]) -> Dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"recovery checkpoint {path!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path!r} is not an infer-fast recovery checkpoint")
    if ckpt.get("format_version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"{path!r} was written by a newer infer-fast (format {ckpt['format_version']})")
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


def _optimize_batch(
    natural: Tensor, teacher: nn.Module, m: int, ks: List[int], config: RecoveryConfig,
    lo: Tensor, hi: Tensor, progress: bool, backend: str, desc: str,
) -> Tuple[Tensor, Dict[str, Any]]:
    """Optimize the UFCs (m, k) for k in ``ks`` together; returns (ufc (G, ch, H, W) float32 on
    CPU, batch stats)."""
    device = natural.device
    G, C = len(ks), natural.shape[1]
    H, W = natural.shape[-2:]
    index = torch.tensor(ks, dtype=torch.int64, device=device)
    labels = torch.arange(C, device=device).repeat(G)
    gens = [torch.Generator().manual_seed(_ufc_seed(config.seed, m, k)) for k in ks]
    ufc = torch.zeros((G,) + tuple(natural.shape[2:]), dtype=natural.dtype, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([ufc], lr=config.lr, betas=tuple(config.betas), eps=config.eps)
    use_bn = config.r_bn > 0
    tracker = BNStatTracker(teacher, groups=G, backend=backend) if use_bn else None

    def losses(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        logits = teacher(x.flatten(0, 1))
        ce = F.cross_entropy(logits, labels, reduction="none").view(G, C).mean(1)
        rbn = tracker.weighted_sum(config.first_bn_mult) if use_bn else torch.zeros_like(ce)
        return ce, rbn, logits

    try:
        bar = tqdm(range(config.iterations), desc=desc, disable=not progress, leave=False)
        for t in bar:
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * (1.0 + math.cos(math.pi * t / config.iterations)) * config.lr
            if config.max_shift > 0:
                shifts = torch.stack([torch.randint(0, config.max_shift + 1, (2,), generator=g) for g in gens])
                shifts = shifts.to(device)
            else:
                shifts = None
            x = ufc_compose(natural, ufc, index, shifts=shifts, backend=backend)
            ce, rbn, _ = losses(x)
            loss = (ce + config.r_bn * rbn).sum()
            if not bool(torch.isfinite(loss)):
                raise RuntimeError(
                    f"non-finite recovery loss ({float(loss.detach())}) at iteration {t + 1}/{config.iterations} for teacher "
                    f"m={m}, UFCs of natural sets k={ks}: this batch is not written (lower lr or r_bn?)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last_ce, last_rbn = ce.detach(), rbn.detach()
            if progress and (t % 10 == 0 or t + 1 == config.iterations):
                bar.set_postfix(ce=f"{float(last_ce.mean()):.4f}", r_bn=f"{float(last_rbn.mean()):.4f}")
        bar.close()
        with torch.no_grad():
            final = ufc.detach()
            x = ufc_compose(natural, final, index, lo=lo, hi=hi, backend=backend)
            ce, rbn, logits = losses(x)
            acc = (logits.argmax(1) == labels).view(G, C).float().mean(1)
    finally:
        if tracker is not None:
            tracker.remove()
    if not torch.isfinite(final).all():
        raise RuntimeError(f"non-finite compensator for teacher m={m}, UFCs of natural sets k={ks}")
    stats = {
        "teacher": m,
        "k": list(ks),
        "ce": float(ce.mean()),
        "r_bn": float(rbn.mean()),
        "accuracy": float(acc.mean()),
        "ce_per_ufc": ce.tolist(),
        "r_bn_per_ufc": rbn.tolist(),
        "accuracy_per_ufc": acc.tolist(),
        # the optimized objective at the last iteration (shifted, unclamped images)
        "ce_last_iteration": float(last_ce.mean()),
        "r_bn_last_iteration": float(last_rbn.mean()),
    }
    return final.to("cpu", torch.float32), stats


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
    unshifted composed images, batch means and per UFC, plus ce/r_bn_last_iteration, the
    objective at the last step; batches restored from a checkpoint keep their recorded
    stats) and ``group_size`` (the last one used).

    Teachers must be frozen and in eval mode; each runs on its own device. ``checkpoint``:
    a file written atomically after every batch; ``resume=True`` continues from it (it must
    belong to the same run: natural images, K, M, normalization and config except
    group_size). An existing checkpoint without ``resume`` is refused.
    """
    config = RecoveryConfig() if config is None else config
    config.validate()
    if not isinstance(natural_u8, Tensor) or natural_u8.dtype != torch.uint8 or natural_u8.dim() != 5:
        raise ValueError(
            f"natural_u8 must be a uint8 tensor (K, C, ch, H, W), got "
            f"{getattr(natural_u8, 'dtype', type(natural_u8).__name__)} {tuple(getattr(natural_u8, 'shape', ()))}"
        )
    teachers = list(teachers)
    if not teachers:
        raise ValueError("recover_ufcs needs at least one teacher")
    K, C, ch = natural_u8.shape[:3]
    if len(mean) != ch or len(std) != ch:
        raise ValueError(f"mean and std need one value per channel ({ch}), got {len(mean)} and {len(std)}")
    if K < 1 or C < 1:
        raise ValueError(f"natural_u8 must hold at least one set and one class, got {tuple(natural_u8.shape)}")
    for m, teacher in enumerate(teachers):
        _check_teacher(teacher, m)
    M = len(teachers)
    natural_u8 = natural_u8.detach().cpu().contiguous()
    from .data.transforms import normalize
    from .storage import valid_range

    natural_cpu = normalize(natural_u8, mean, std).contiguous()
    lo_cpu, hi_cpu = valid_range(mean, std)

    identity = _run_identity(natural_u8, M, mean, std, config)
    checkpoint = None if checkpoint is None else os.fspath(checkpoint)
    done: Dict[Tuple[int, int], Tensor] = {}
    stats: List[Dict[str, Any]] = []
    if checkpoint is not None and os.path.exists(checkpoint):
        if not resume:
            raise ValueError(
                f"recovery checkpoint {checkpoint!r} exists: pass resume=True to continue that run, or delete it"
            )
        ckpt = _load_checkpoint(checkpoint, identity)
        for m, k, u in zip(ckpt["ufc_teacher"].tolist(), ckpt["ufc_index"].tolist(), ckpt["ufc"]):
            done[(m, k)] = u
        stats = list(ckpt.get("stats", []))
        if progress:
            print(f"{checkpoint}: resuming, {len(done)}/{K * M} UFCs already recovered")

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

    group_size = config.group_size
    for m, teacher in enumerate(teachers):
        todo = [k for k in range(K) if (m, k) not in done]
        if not todo:
            continue
        device = _device_of(teacher)
        natural = natural_cpu.to(device)
        lo, hi = lo_cpu.to(device), hi_cpu.to(device)
        # frozen parameters: no gradient is computed for them (restored afterwards)
        flags = [(p, p.requires_grad) for p in teacher.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            G = config.group_size or auto_group_size(teacher, natural, K)
            group_size = G
            for start in range(0, len(todo), G):
                ks = todo[start:start + G]
                desc = f"teacher {m + 1}/{M} UFCs k={ks[0]}..{ks[-1]}" if len(ks) > 1 else f"teacher {m + 1}/{M} UFC k={ks[0]}"
                ufc, batch_stats = _optimize_batch(natural, teacher, m, ks, config, lo, hi, progress, backend, desc)
                for k, u in zip(ks, ufc):
                    done[(m, k)] = u.clone()
                stats.append(batch_stats)
                if checkpoint is not None:
                    write_checkpoint(G)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    keys = [(m, k) for m in range(M) for k in range(K)]
    return {
        "ufc": torch.stack([done[key] for key in keys]).to(torch.float32),
        "ufc_index": torch.tensor([k for _, k in keys], dtype=torch.int64),
        "ufc_teacher": torch.tensor([m for m, _ in keys], dtype=torch.int64),
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
) -> Path:
    """Distill ``dataset`` with INFER into ``out_dir`` (a distilled-set directory); returns it.

    Loads the training split and the teachers (once), K = infer_budget(ipc, C, M,
    accounting), picks K natural sets (seed = config.seed), recovers the K*M UFCs with a
    checkpoint at ``<out_dir>.recovery.pt`` (removed after the set is saved; ``resume=True``
    continues an interrupted run) and saves an unlabelled INFER DistilledSet.
    """
    from .data import load_dataset
    from .storage import DistilledSet, OutputExistsError, save_distilled
    from .teacher import load_teacher

    config = RecoveryConfig() if config is None else config
    config.validate()
    teacher_paths = [os.fspath(p) for p in teacher_paths]
    if not teacher_paths:
        raise ValueError("distill_infer needs at least one teacher checkpoint")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise OutputExistsError(f"{out_dir} already exists; choose another output directory")
    train = load_dataset(dataset, "train", data_root=data_root)
    spec = train.spec
    K = infer_budget(ipc, spec.num_classes, len(teacher_paths), accounting)
    teachers, records = [], []
    for path in teacher_paths:
        model, meta = load_teacher(path, dataset=dataset, num_classes=spec.num_classes, device=device)
        teachers.append(model)
        records.append({"path": path, "model": meta["model"], "accuracy": meta.get("test_accuracy")})
    natural = select_natural_sets(train, K, config.seed)
    checkpoint = out_dir.with_name(out_dir.name + ".recovery.pt")
    result = recover_ufcs(
        natural, teachers, spec.mean, spec.std, config, checkpoint=checkpoint, resume=resume,
        progress=progress, backend=backend,
    )
    hyper = config.to_dict()
    hyper["group_size_used"] = result["group_size"]
    hyper["augmentation"] = f"roll by randint(0, {config.max_shift}) on H and W per UFC per iteration"
    ds = DistilledSet(
        method="infer",
        **_set_fields(train),
        natural=natural,
        ufc=result["ufc"],
        ufc_index=result["ufc_index"],
        ufc_teacher=result["ufc_teacher"],
        hyperparameters=hyper,
        teachers=records,
        budget={"ipc": int(ipc), "K": K, "M": len(teachers), "accounting": accounting},
        seed=config.seed,
    )
    path = save_distilled(ds, out_dir)
    if checkpoint.exists():
        checkpoint.unlink()
    return path


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
