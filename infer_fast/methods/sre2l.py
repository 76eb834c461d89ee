"""SRe2L (Yin et al., NeurIPS 2023), the method in one module: ipc images per class recovered
from Gaussian noise (:class:`FreeImages`, the engine's hooks) by the recovery engine, one
teacher per image group (:func:`recover_sre2l`), stored as uint8 pixels (:func:`distill_sre2l`);
CDA (``cda.py``) is this recovery with a crop-scale curriculum in its config."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import distributed
from ..checks import check_int
from ..distill.config import RecoveryConfig
from ..distill.jobs import check_common, recover
from ..distill.run import (check_space, prepare_run, real_data_fields, recovery_hyperparameters, request_identity,
                           save_and_clean)
from ..distill.variables import BatchVariable, RecoveryKind
from ..options import given_config
from ..output_lock import holds_output
from .recovery_options import IMAGENET_FAMILY_DEFAULTS, RECOVERY_OPTIONS, RECOVERY_RESULT_NEUTRAL, recovery_options
from .registry import DistillRequest, Method, get_method, register


class FreeImages(RecoveryKind):
    """SRe2L: the variables are G groups of C images (one per class) from Gaussian noise N(0, 1),
    each group drawn from its job's generator, with its own BN statistics; composed as natural
    = the images, u = 0, so both kinds share the fused compose + roll. The result is the
    composed images, clamped: (G, C, ch, H, W). ``label``: the method in messages (a method
    that is this recovery with another config, such as CDA, says its own name)."""

    method, label, seed_tag, noun = "sre2l", "SRe2L", "sre2l", "SRe2L group"

    def __init__(self, label: Optional[str] = None):
        if label is not None:
            self.label, self.noun = label, f"{label} group"

    def variable(self, source, gens, ks, num_classes, image_shape, device) -> BatchVariable:
        G = len(ks)
        # (float32 whatever torch's default dtype: the same draws, and the dtype the kernels take)
        noise = torch.stack([torch.randn((num_classes,) + tuple(image_shape), generator=g, dtype=torch.float32)
                             for g in gens])
        variable = noise.to(device).requires_grad_()
        index = torch.arange(G, device=device)
        zero_ufc = torch.zeros((G,) + tuple(image_shape), dtype=torch.float32, device=device)
        return BatchVariable(variable, lambda v: (v, zero_ufc, index), list(range(G)))

    def result(self, variable: Tensor, composed: Tensor) -> Tensor:
        return composed


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
    label: str = "SRe2L",
) -> Dict[str, Any]:
    """The SRe2L baseline: ``ipc`` images per class recovered from Gaussian noise with the same
    CE + BN-statistics loss, optimizer and augmentation as INFER (INFER_METHOD.md §6).

    Images are optimized in groups of C (one per class, labels 0..C-1) with BN statistics
    per group, like one SRe2L batch; group j uses teacher j mod M (with one teacher this is
    SRe2L exactly). Default config: ``RecoveryConfig.sre2l()`` (r_bn 0.01). Returns
    ``pixels`` uint8 (ipc*C, ch, H, W): the recovered images (clamped to the valid range)
    quantized, round(clamp(x * std + mean, 0, 1) * 255), group-major (row j*C + c has class c),
    ``labels`` int64, ``teacher`` int64 per image, ``stats``, ``group_size``. Each group is
    quantized as it finishes: memory and checkpoints hold a quarter of float32 images (7.5 GB
    instead of 30 for ImageNet-1k at ipc 50). Checkpoint/resume as :func:`recover_ufcs`.
    ``label``: the method's name in messages and progress bars."""
    config = given_config("config", config, RecoveryConfig, RecoveryConfig.sre2l)
    for name, value in (("ipc", ipc), ("num_classes", num_classes)):
        check_int(name, value)
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (channels, H, W), got {image_shape}")
    teachers = check_common(teachers, mean, std, image_shape[0], config=config)
    M = len(teachers)
    from ..data.pixels import quantize_images

    run = {"ipc": int(ipc), "M": int(M), "shape": [int(num_classes), *image_shape]}
    jobs = [(j % M, j) for j in range(ipc)]
    done, stats, group_size = recover(FreeImages(label), run, jobs, teachers, None, num_classes, image_shape, mean, std,
                                       config, checkpoint, resume, progress, backend,
                                       keep=lambda images: quantize_images(images, mean, std))
    pixels = torch.empty((ipc * num_classes, *image_shape), dtype=torch.uint8)
    for j, key in enumerate(jobs):  # group by group, each freed once copied: no second copy of the set
        pixels[j * num_classes:(j + 1) * num_classes] = done.pop(key)
    return {
        "pixels": pixels,
        "labels": torch.arange(num_classes, dtype=torch.int64).repeat(ipc),
        "teacher": torch.tensor([m for m, _ in jobs], dtype=torch.int64).repeat_interleave(num_classes),
        "stats": stats,
        "group_size": group_size,
    }


def _sre2l_partial_bytes(config: RecoveryConfig, ipc: int, num_classes: int, image_bytes: int, teachers) -> int:
    """What the in-batch states of an SRe2L recovery hold beyond the results (see
    check_space): per batch in progress (one per checkpoint writer) its float32 images, not
    among the results yet, and Adam's two moments: two more copies of the batch. Before the
    plan is made a batch has at most ``config.group_size`` groups, on a CPU the automatic
    plan's cap (auto_batch_plan), on a GPU (sized by free memory) one teacher's groups."""
    from ..models import device_of
    from ..distill.plan import CPU_MAX_IMAGES

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
    request: Optional[DistillRequest] = None,
) -> Path:
    """The SRe2L baseline into ``out_dir``: ipc*C images recovered from noise by
    :func:`recover_sre2l` (default ``RecoveryConfig.sre2l()``), stored as uint8 pixels (the
    recovered images, clamped to the valid range, quantized: like the reference release's
    image files and every other set's images) with hard labels (the same ipc*C image budget);
    relabel it like an INFER set. ``method_name``: the set's method (a method that is SRe2L's
    recovery with another config, such as CDA, records its own name). ``request``: the
    DistillRequest it makes the set for, which the set records (distill.run.request_identity)."""
    from ..storage import DistilledSet

    config = given_config("config", config, RecoveryConfig, RecoveryConfig.sre2l)
    check_int("ipc", ipc)
    out_dir, train, teachers, records, checkpoint = prepare_run(dataset, teacher_paths, out_dir, data_root, device,
                                                             progress)
    recorded = None if request is None else request_identity(request, train, teachers)  # (its teachers as they are now)
    spec = train.spec
    check_common(teachers, spec.mean, spec.std, spec.channels, [r["path"] for r in records],
                 config=config)  # (before any work)
    n, image_elements = ipc * spec.num_classes, math.prod(train.image_shape)
    check_space(out_dir, n * (image_elements + 8), n * image_elements,  # uint8 + int64 labels; uint8 results
                 _sre2l_partial_bytes(config, ipc, spec.num_classes, image_elements * 4, teachers))
    result = recover_sre2l(
        ipc, spec.num_classes, train.image_shape, teachers, spec.mean, spec.std, config,
        checkpoint=checkpoint, resume=resume, progress=progress, backend=backend, label=get_method(method_name).label,
    )
    pixels = result.pop("pixels")
    hyper = recovery_hyperparameters(
        config, result["stats"],
        init="Gaussian noise N(0, 1) in normalized space",
        teacher_rule="image group j (one image per class) is recovered with teacher j mod M",
        image_storage="uint8 pixels: the recovered images (clamped to the valid range) quantized, "
                      "round(clamp(x * std + mean, 0, 1) * 255)")
    ds = DistilledSet(
        method=method_name, **real_data_fields(train), images=pixels, labels=result["labels"],
        hyperparameters=hyper, teachers=records,
        budget={"ipc": int(ipc), "K": 0, "M": len(teachers), "accounting": "ipc"}, seed=config.seed, request=recorded,
    )
    return save_and_clean(ds, out_dir, checkpoint, progress)


# SRe2L's recipes on top of the dataset's (RecoveryConfig.recipe: r_bn 0.01; 4000 iterations at ImageNet size)
OWN_RECIPES = ("sre2l",)
# the `recovery` settings of an `infer-fast run` SRe2L shares with INFER: its augmentation, batching, seed and
# checkpoint cadence
SHARED_RECOVERY_OPTIONS = ("augmentation", "max_shift", "crop_scale", "group_size", "seed", "checkpoint_every",
                           "checkpoint_minutes")


def parse_options(options: Mapping[str, Any], seed: int = 0) -> Dict[str, Any]:
    return {"config": recovery_options(options, seed, OWN_RECIPES)}


def distill(request: DistillRequest):
    return distill_sre2l(request.dataset, request.teacher_paths, request.ipc, request.out_dir,
                         config=request.parsed["config"], data_root=request.data_root, resume=request.resume,
                         progress=request.progress, device=request.device, request=request)


SRE2L = register(Method(
    name="sre2l", label="SRe2L", summary="images recovered from noise (squeeze, recover, relabel)",
    distill=distill, parse_options=parse_options, options=RECOVERY_OPTIONS, resumable=True, all_ranks=True,
    config_section="sre2l", shared_recovery_options=SHARED_RECOVERY_OPTIONS,
    family_defaults=IMAGENET_FAMILY_DEFAULTS, result_neutral=RECOVERY_RESULT_NEUTRAL,
))
