"""End to end: a dataset and teacher checkpoints in, a distilled set on disk out, for INFER
and the SRe2L and random baselines."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

from .. import distributed
from .._io import check_writable
from ..choices import SELECTIONS
from ..checks import check_int
from ..options import given_config
from ..output_lock import holds_output
from .config import RecoveryConfig
from .checkpoints import remove_recovery_checkpoints
from .jobs import recover_sre2l, recover_ufcs
from .natural import infer_budget, select_natural_sets


def real_data_fields(train) -> Dict[str, Any]:
    """DistilledSet fields that describe the real training set ``train`` (an ImageSet)."""
    spec = train.spec
    return dict(
        dataset=spec.name, num_classes=spec.num_classes, channels=spec.channels, image_size=spec.image_size,
        mean=spec.mean, std=spec.std, full_train_size=len(train),
        class_names=list(spec.class_names) if spec.class_names is not None else None,
    )


def _prepare(dataset, teacher_paths, out_dir, config, data_root, device, progress):
    """Checks, the training split and the teachers (loaded once, frozen, eval mode) of a
    recovery run: (out_dir, train, teachers, teacher records, checkpoint path)."""
    from ..data import load_dataset
    from ..teacher import resolve_device

    resolve_device(device)
    teacher_paths = [os.fspath(p) for p in teacher_paths]
    if not teacher_paths:
        raise ValueError("teachers: at least one teacher checkpoint is needed")
    out_dir = check_new_output(out_dir)
    train = load_dataset(dataset, "train", data_root=data_root, progress=progress)
    teachers, records = load_set_teachers(teacher_paths, dataset, train, device)
    return out_dir, train, teachers, records, recovery_checkpoint_path(out_dir)


def load_set_teachers(teacher_paths: Sequence[Union[str, os.PathLike]], dataset, train, device: str):
    """(teachers, records) of a set being made from ``train``: each teacher loaded frozen in
    eval mode on this rank's device, checked against the split's classes, channels and size;
    each record the path, model and recorded accuracy that the set keeps."""
    from ..teacher import load_teacher

    teachers, records = [], []
    for path in map(os.fspath, teacher_paths):
        model, meta = load_teacher(path, dataset=dataset, num_classes=train.spec.num_classes,
                                   device=distributed.local_device(device), channels=train.spec.channels,
                                   image_size=train.spec.image_size)
        teachers.append(model)
        records.append({"path": path, "model": meta["model"], "accuracy": meta.get("test_accuracy")})
    return teachers, records


def recovery_checkpoint_path(out_dir: Union[str, os.PathLike]) -> Path:
    """Where the recovery of the set ``out_dir`` checkpoints: ``<out_dir>.recovery.pt`` beside
    it (and, under torchrun, each rank's share beside that: see ``recovery_checkpoints``), the
    results of its finished batches in ``<out_dir>.recovery.pt.results/``; all removed once the
    set is saved."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".recovery.pt")


def check_new_output(out_dir) -> Path:
    """Before any work: ``out_dir`` must not exist and its parent must be writable (the set
    and the recovery checkpoint beside it go there)."""
    from ..storage import OutputExistsError

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise OutputExistsError(f"{out_dir} already exists; choose another output directory")
    check_writable(out_dir, "output directory", kind="directory")
    return out_dir


def _check_space(out_dir: Path, set_bytes: int, result_bytes: int, partial_bytes: Optional[int] = None) -> None:
    """Before the recovery: room for its peak on disk. The results of finished batches are
    written once each (up to ``result_bytes`` in all, recovery_results_dir); with checkpoints
    inside a batch the checkpoint holds the state of every batch in progress (``partial_bytes``
    in all; None: up to 3x ``result_bytes``), and while it is replaced atomically the old file
    and the new one are both there. The set is written while every result is still there."""
    partial_bytes = 3 * result_bytes if partial_bytes is None else partial_bytes
    need = max(result_bytes + 2 * partial_bytes, result_bytes + set_bytes)
    check_writable(out_dir, "output directory", kind="directory", need_bytes=need)


def _sre2l_partial_bytes(config: RecoveryConfig, ipc: int, num_classes: int, image_bytes: int, teachers) -> int:
    """What the in-batch states of an SRe2L recovery hold beyond the results (see
    _check_space): per batch in progress (one per checkpoint writer) its float32 images, not
    among the results yet, and Adam's two moments: two more copies of the batch. Before the
    plan is made a batch has at most ``config.group_size`` groups, on a CPU the automatic
    plan's cap (auto_batch_plan), on a GPU (sized by free memory) one teacher's groups."""
    from ..models import device_of
    from .plan import CPU_MAX_IMAGES

    if config.checkpoint_every is None and config.checkpoint_minutes is None:
        return 0
    groups = -(-ipc // len(teachers))  # one teacher's jobs
    if config.group_size is not None:
        groups = min(groups, config.group_size)
    elif device_of(teachers[0]).type != "cuda":
        groups = max(1, min(groups, CPU_MAX_IMAGES // num_classes))
    _, world = distributed.rank_and_world()
    writers = world if world > 1 and config.distributed == "jobs" else 1
    return 2 * groups * num_classes * image_bytes * writers


def _save_and_clean(ds, out_dir: Path, checkpoint: Path, progress: bool = False) -> Path:
    """Rank 0 writes the set (validated once, each file hashed once as it is written; with
    ``progress`` saying where and how large), then removes the run's recovery checkpoints
    (every rank's share, of any world size)."""
    from ..storage import save_distilled

    rank, _ = distributed.rank_and_world()
    if rank == 0:
        save_distilled(ds, out_dir, progress=progress)
    distributed.barrier()  # every rank is done with its share before it goes
    if rank == 0:
        remove_recovery_checkpoints(checkpoint)
    distributed.barrier()
    return out_dir


@holds_output("out_dir")
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
    from ..storage import DistilledSet

    config = given_config("config", config, RecoveryConfig, RecoveryConfig)
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    out_dir, train, teachers, records, checkpoint = _prepare(dataset, teacher_paths, out_dir, config, data_root, device,
                                                             progress)
    spec = train.spec
    K = infer_budget(ipc, spec.num_classes, len(teachers), accounting)
    natural = select_natural_sets(train, K, config.seed, selection=selection, teachers=teachers, progress=progress)
    ufc_bytes = K * len(teachers) * natural[0, 0].numel() * 4  # float32
    _check_space(out_dir, natural.numel() + ufc_bytes, ufc_bytes)
    result = recover_ufcs(
        natural, teachers, spec.mean, spec.std, config, checkpoint=checkpoint, resume=resume,
        progress=progress, backend=backend,
    )
    hyper = config.to_dict()
    hyper.update(group_size_used=result["group_size"], augmentation_rule=config.describe_augmentation(),
                 natural_selection=selection)
    ds = DistilledSet(
        method="infer", **real_data_fields(train), natural=natural, ufc=result["ufc"], ufc_index=result["ufc_index"],
        ufc_teacher=result["ufc_teacher"], hyperparameters=hyper, teachers=records,
        budget={"ipc": int(ipc), "K": K, "M": len(teachers), "accounting": accounting}, seed=config.seed,
    )
    return _save_and_clean(ds, out_dir, checkpoint, progress)


@holds_output("out_dir")
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
    method_name: str = "sre2l",
) -> Path:
    """The SRe2L baseline into ``out_dir``: ipc*C images recovered from noise by
    :func:`recover_sre2l` (default ``RecoveryConfig.sre2l()``), stored as uint8 pixels (the
    recovered images, clamped to the valid range, quantized: like the reference release's
    image files and every other set's images) with hard labels (the same ipc*C image budget);
    relabel it like an INFER set. ``method_name``: the set's method (a method that is SRe2L's
    recovery with another config, such as CDA, records its own name)."""
    from ..storage import DistilledSet

    config = given_config("config", config, RecoveryConfig, RecoveryConfig.sre2l)
    check_int("ipc", ipc)
    out_dir, train, teachers, records, checkpoint = _prepare(dataset, teacher_paths, out_dir, config, data_root, device,
                                                             progress)
    spec = train.spec
    n, image_elements = ipc * spec.num_classes, math.prod(train.image_shape)
    _check_space(out_dir, n * (image_elements + 8), n * image_elements,  # uint8 + int64 labels; uint8 results
                 _sre2l_partial_bytes(config, ipc, spec.num_classes, image_elements * 4, teachers))
    result = recover_sre2l(
        ipc, spec.num_classes, train.image_shape, teachers, spec.mean, spec.std, config,
        checkpoint=checkpoint, resume=resume, progress=progress, backend=backend,
    )
    pixels = result.pop("pixels")
    hyper = config.to_dict()
    hyper.update(group_size_used=result["group_size"], augmentation_rule=config.describe_augmentation(),
                 init="Gaussian noise N(0, 1) in normalized space",
                 teacher_rule="image group j (one image per class) is recovered with teacher j mod M",
                 image_storage="uint8 pixels: the recovered images (clamped to the valid range) quantized, "
                               "round(clamp(x * std + mean, 0, 1) * 255)")
    ds = DistilledSet(
        method=method_name, **real_data_fields(train), images=pixels, labels=result["labels"],
        hyperparameters=hyper, teachers=records,
        budget={"ipc": int(ipc), "K": 0, "M": len(teachers), "accounting": "ipc"}, seed=config.seed,
    )
    return _save_and_clean(ds, out_dir, checkpoint, progress)


def random_set(train, ipc: int, seed: int = 0, progress: bool = False):
    """The "random" baseline as a DistilledSet (unlabelled): ``ipc`` real training images per
    class of ``train`` (an ImageSet, or a FolderImageSet of which only those are decoded)
    chosen with ``seed``, stored as uint8 (the same storage as ipc*C images)."""
    from ..storage import DistilledSet

    check_int("ipc", ipc)
    picked = train.per_class(ipc, seed=seed)
    return DistilledSet(
        method="random",
        **real_data_fields(train),
        images=picked.images_at(torch.arange(len(picked)), progress=progress, desc="decoding random images"),
        labels=picked.labels,
        hyperparameters={"selection": "ipc real training images per class, uniformly at random"},
        teachers=[],
        budget={"ipc": int(ipc), "K": 0, "M": 0, "accounting": "ipc"},
        seed=seed,
    )


@holds_output("out_dir")
def distill_random(
    dataset: str,
    ipc: int,
    out_dir: Union[str, os.PathLike],
    seed: int = 0,
    data_root: Optional[str] = None,
    progress: bool = False,
) -> Path:
    """The "random" baseline (:func:`random_set`) written to ``out_dir``; relabel it like an
    INFER set."""
    from ..data import load_dataset
    from ..storage import save_distilled

    check_int("ipc", ipc)
    out_dir = check_new_output(out_dir)
    train = load_dataset(dataset, "train", data_root=data_root, progress=progress)
    return save_distilled(random_set(train, ipc, seed, progress=progress), out_dir, progress=progress)
