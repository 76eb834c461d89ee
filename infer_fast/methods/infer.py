"""INFER (Inter-class Feature Compensator, ICLR 2025), the method in one module: its storage
budget and natural sets (K real images per class), what its recovery optimizes (one universal
compensator per set and teacher, composed with the set: :class:`Compensators`, the engine's
hooks), its jobs (:func:`recover_ufcs`, on the recovery engine and job scheduler of
``infer_fast.distill``), the set it writes (:func:`distill_infer`), its options and its
registration; and INFER+Dyn: the same set, its students labelled by the teachers on every
batch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import memory
from .._io import content_digest
from ..checks import check_images_per_class, check_int, split_label
from ..choices import ACCOUNTINGS, SELECTIONS
from ..distill.config import RecoveryConfig
from ..distill.jobs import check_common, recover
from ..distill.plan import natural_sets_out_of_memory_error
from ..distill.run import (check_space, prepare_run, real_data_fields, recovery_hyperparameters, request_identity,
                           save_and_clean)
from ..distill.variables import BatchVariable, RecoveryKind
from ..models import device_of
from ..options import Option, check_value, given_config
from ..output_lock import holds_output
from .recovery_options import IMAGENET_FAMILY_DEFAULTS, RECOVERY_OPTIONS, RECOVERY_RESULT_NEUTRAL, recovery_options
from .registry import ClassImages, DistillRequest, Method, register

# how the budget is counted and the natural sets picked: INFER's own options, also an `infer-fast run`
# config's run-level settings (Method.run_options); the functions below take them as arguments too
ACCOUNTING = Option("accounting", str, "the budget: fair (K = floor(ipc*C/(C+M))) or ipc (K = ipc)", default="fair",
                    choices=ACCOUNTINGS)
SELECTION = Option("selection", str, "the natural images: random or the ones the teachers are most confident about",
                   default="random", choices=SELECTIONS)


def infer_budget(ipc: int, num_classes: int, num_teachers: int, accounting: str = ACCOUNTING.default) -> int:
    """Number of natural sets K for a storage budget of ``ipc`` images per class.

    "fair" (the reference release): K*C natural images + K*M UFCs <= ipc*C, i.e.
    K = floor(ipc*C / (C+M)). "ipc" (the paper's ImageNet compression ratios): K = ipc.
    """
    check_value(ACCOUNTING, accounting)
    for name, value in (("ipc", ipc), ("num_classes", num_classes), ("num_teachers", num_teachers)):
        check_int(name, value)
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
def _own_class_confidence(train_set, class_indices: Sequence[Tensor], teachers: Sequence[nn.Module],
                          batch_size: int = 500, progress: bool = False) -> List[Tensor]:
    """Softmax probability of its own class under the teachers' mean logits, per image of
    ``train_set`` at each class's ``class_indices`` (CPU float32, one tensor per class), from one
    streamed pass over them all: one loader, whose worker processes start once, not once per
    class (seconds each under the spawn start method: 1000 classes for ImageNet). The teachers
    still score each class's images in runs of ``batch_size`` from the class's first, as when
    every class was scored alone, so the scores (and the choices) are the same to the bit."""
    from ..data.transforms import normalize
    from ..relabel import ensemble_logits

    device = device_of(teachers[0])
    spec = train_set.spec
    teacher_batches = iter([min(batch_size, len(idx) - start) for idx in class_indices
                            for start in range(0, len(idx), batch_size)])
    rows = next(teacher_batches, None)
    held_images = torch.empty((0,) + tuple(train_set.image_shape), dtype=torch.uint8, device=device)
    held_labels = torch.empty(0, dtype=torch.int64, device=device)  # decoded, not yet scored
    scores = []
    for images, labels in train_set.batches(batch_size, torch.cat(list(class_indices)),
                                            pin_memory=device.type == "cuda", progress=progress,
                                            desc="scoring natural images"):
        held_images = torch.cat([held_images, images.to(device, non_blocking=True)])
        held_labels = torch.cat([held_labels, labels.to(device, non_blocking=True)])
        while rows is not None and held_images.shape[0] >= rows:
            x = normalize(held_images[:rows], spec.mean, spec.std)
            probs = ensemble_logits(teachers, x).softmax(1)
            scores.append(probs.gather(1, held_labels[:rows, None]).squeeze(1).float().cpu())
            held_images, held_labels = held_images[rows:], held_labels[rows:]
            rows = next(teacher_batches, None)
    return list(torch.cat(scores).split([len(idx) for idx in class_indices]))


def select_natural_sets(train_set, K: int, seed: int, selection: str = SELECTION.default,
                        teachers: Optional[Sequence[nn.Module]] = None, progress: bool = False,
                        ipc: Optional[int] = None) -> Tensor:
    """K natural sets, one real training image per class each: uint8 (K, C, ch, H, W).

    ``selection="random"``: within a class the K images are distinct, drawn without
    replacement with a torch.Generator seeded by ``seed`` (the same seed picks the same
    images). ``"confidence"``: the K images of each class to which the teachers' ensemble
    (mean logits, eval mode) gives the highest probability of their own class, ties broken
    by the seeded random order; set k gets the k-th most confident image of every class.

    The images are chosen from the labels alone and only the K*C chosen ones are decoded
    (a folder split streams; "confidence" reads every image once to score it). A class with
    fewer than K images is refused (checks.check_images_per_class), in terms of the ``ipc``
    that K comes from where given.
    """
    check_int("K", K)
    check_value(SELECTION, selection)
    if selection == "confidence" and not teachers:
        raise ValueError("selection='confidence' needs the teachers to score the training images")
    labels = train_set.labels
    num_classes = train_set.spec.num_classes
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    because, remedy = (f"K = {K} natural sets", "") if ipc is None else \
        (f"infer at ipc {ipc} (K = {K} natural sets)", "lower ipc (--ipc)")
    check_images_per_class(counts, K, split_label(train_set), because, remedy)
    gen = torch.Generator().manual_seed(int(seed))
    # every class's images (ascending index) in a random order, drawn class after class
    permuted = [idx[torch.randperm(idx.numel(), generator=gen)]
                for idx in torch.argsort(labels, stable=True).split(counts)]
    if selection == "confidence":  # the most confident first, ties in the random order
        scores = _own_class_confidence(train_set, permuted, list(teachers), progress=progress)
        permuted = [idx[torch.sort(score, descending=True, stable=True).indices]
                    for idx, score in zip(permuted, scores)]
    chosen = torch.stack([idx[:K] for idx in permuted])  # chosen[c, k]: the image of class c in set k
    # set-major (k, c): one decode of the K*C chosen images
    images = train_set.images_at(chosen.t().reshape(-1), progress=progress, desc="decoding natural images")
    return images.view((K, num_classes) + tuple(images.shape[1:]))


class Compensators(RecoveryKind):
    """INFER: the variables are the UFCs u_k^m (G, ch, H, W) from zero, composed with the
    batch's natural sets ``source`` (group g with source[g], the set ks[g]); the result is the UFC."""

    method, label, seed_tag, noun = "infer", "INFER", "infer-ufc", "UFC"

    def variable(self, source, gens, ks, num_classes, image_shape, device) -> BatchVariable:
        index = torch.arange(len(ks), dtype=torch.int64, device=device)
        # (float32 as the natural images, whatever torch's default dtype)
        variable = torch.zeros((len(ks),) + tuple(image_shape), dtype=torch.float32, device=device, requires_grad=True)
        return BatchVariable(variable, lambda v: (source, v, index), list(range(len(ks))))

    def result(self, variable: Tensor, composed: Tensor) -> Tensor:
        return variable


COMPENSATORS = Compensators()


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

    The natural sets stay uint8 on the host; a batch normalizes its own sets to float32 when
    it starts and copies them to its teacher's device (jobs.py), so memory holds the K*C
    images as uint8 plus one batch's sets in float32, however large K is.

    Teachers must be frozen and in eval mode; each runs on its own device. ``checkpoint``:
    a file written atomically after every batch, and inside a batch every
    ``config.checkpoint_every`` iterations and ``config.checkpoint_minutes`` minutes (the
    batch's variables, Adam state and augmentation position), so a kill loses at most that
    much; ``resume=True`` continues from it (it must belong to the same run: natural images,
    the teachers' weights (content digests), K, M, normalization and every result-affecting
    config field; a mismatch is refused naming it), an interrupted batch from its iteration,
    bit-identically to an uninterrupted run, and says (with ``progress``) what it found and
    where it continues, or that there was no checkpoint. An existing checkpoint without
    ``resume`` is refused.
    """
    config = given_config("config", config, RecoveryConfig, RecoveryConfig)
    if not isinstance(natural_u8, Tensor) or natural_u8.dtype != torch.uint8 or natural_u8.dim() != 5:
        raise ValueError(
            f"natural_u8 must be a uint8 tensor (K, C, ch, H, W), got "
            f"{getattr(natural_u8, 'dtype', type(natural_u8).__name__)} {tuple(getattr(natural_u8, 'shape', ()))}"
        )
    K, C, ch = natural_u8.shape[:3]
    teachers = check_common(teachers, mean, std, ch, config=config)
    if K < 1 or C < 1:
        raise ValueError(f"natural_u8 must hold at least one set and one class, got {tuple(natural_u8.shape)}")
    M = len(teachers)
    # kept uint8 on the host: each batch normalizes its own sets when it starts (jobs.py)
    natural_u8 = natural_u8.detach().cpu().contiguous()
    run = {"K": int(K), "M": int(M), "natural_shape": list(natural_u8.shape),
           "natural_sha256": content_digest([natural_u8])}
    jobs = [(m, k) for m in range(M) for k in range(K)]
    done, stats, group_size = recover(COMPENSATORS, run, jobs, teachers, natural_u8, C, tuple(natural_u8.shape[2:]),
                                       mean, std, config, checkpoint, resume, progress, backend)
    return {
        "ufc": torch.stack([done[key] for key in jobs]).to(torch.float32),
        "ufc_index": torch.tensor([k for _, k in jobs], dtype=torch.int64),
        "ufc_teacher": torch.tensor([m for m, _ in jobs], dtype=torch.int64),
        "stats": stats,
        "group_size": group_size,
    }


@holds_output("out_dir")
def distill_infer(
    dataset: str,
    teacher_paths: Sequence[Union[str, os.PathLike]],
    ipc: int,
    out_dir: Union[str, os.PathLike],
    config: Optional[RecoveryConfig] = None,
    accounting: str = ACCOUNTING.default,
    data_root: Optional[str] = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    backend: str = "auto",
    selection: str = SELECTION.default,
    request: Optional[DistillRequest] = None,
) -> Path:
    """Distill ``dataset`` with INFER into ``out_dir`` (a distilled-set directory); returns it.

    Loads the training split and the teachers (once), K = infer_budget(ipc, C, M,
    accounting), picks K natural sets (``selection`` random or by teacher confidence, seed =
    config.seed), recovers the K*M UFCs with a checkpoint at ``<out_dir>.recovery.pt``
    (removed after the set is saved; ``resume=True`` continues an interrupted run) and saves
    an unlabelled INFER DistilledSet; ``request``: the DistillRequest it makes the set for,
    which the set records (distill.run.request_identity).
    """
    from ..storage import DistilledSet

    config = given_config("config", config, RecoveryConfig, RecoveryConfig)
    for opt, value in ((ACCOUNTING, accounting), (SELECTION, selection)):  # (a caller's own arguments: before any work)
        check_value(opt, value)
    out_dir, train, teachers, records, checkpoint = prepare_run(dataset, teacher_paths, out_dir, data_root, device,
                                                             progress)
    recorded = None if request is None else request_identity(request, train, teachers)  # (its teachers as they are now)
    spec = train.spec
    check_common(teachers, spec.mean, spec.std, spec.channels, [r["path"] for r in records],
                 config=config)  # (before any work)
    K = infer_budget(ipc, spec.num_classes, len(teachers), accounting)
    try:
        natural = select_natural_sets(train, K, config.seed, selection=selection, teachers=teachers,
                                      progress=progress, ipc=ipc)
    except Exception as exc:  # (the K*C images: what lowers them is --ipc, not the batch options)
        if not memory.is_out_of_memory(exc):
            raise
        raise natural_sets_out_of_memory_error(exc, K, spec.num_classes, spec.channels * spec.image_size ** 2,
                                               ipc) from exc
    ufc_bytes = K * len(teachers) * natural[0, 0].numel() * 4  # float32
    check_space(out_dir, natural.numel() + ufc_bytes, ufc_bytes)
    result = recover_ufcs(
        natural, teachers, spec.mean, spec.std, config, checkpoint=checkpoint, resume=resume,
        progress=progress, backend=backend,
    )
    hyper = recovery_hyperparameters(config, result["stats"], natural_selection=selection)
    ds = DistilledSet(
        method="infer", **real_data_fields(train), natural=natural, ufc=result["ufc"], ufc_index=result["ufc_index"],
        ufc_teacher=result["ufc_teacher"], hyperparameters=hyper, teachers=records,
        budget={"ipc": int(ipc), "K": K, "M": len(teachers), "accounting": accounting}, seed=config.seed,
        request=recorded,
    )
    return save_and_clean(ds, out_dir, checkpoint, progress)


OWN_OPTIONS = (ACCOUNTING, SELECTION)
OWN_NAMES = tuple(o.name for o in OWN_OPTIONS)


def parse_options(options: Mapping[str, Any], seed: int = 0) -> Dict[str, Any]:
    """{"config": RecoveryConfig, "selection", "accounting"} from the user's options (checked
    against their declarations by Method.check_options)."""
    own = {o.name: options.get(o.name, o.default) for o in OWN_OPTIONS}
    config = recovery_options({k: v for k, v in options.items() if k not in OWN_NAMES}, seed)
    return {"config": config, **own}


def check_budget(options: Mapping[str, Any], ipc: int, spec, num_teachers: int) -> None:
    """INFER's K natural sets at ``ipc`` under the options' accounting: none is an error."""
    infer_budget(ipc, spec.num_classes, num_teachers, options["accounting"])


def images_per_class(options: Mapping[str, Any], ipc: int, spec, num_teachers: int) -> ClassImages:
    """One real image of every class per natural set: K of them at ``ipc`` (the options' accounting)."""
    K = infer_budget(ipc, spec.num_classes, num_teachers, options["accounting"])
    return ClassImages(K, note=f"K = {K} natural sets")


def distill(request: DistillRequest):
    options = request.parsed  # (checked when the request was made)
    return distill_infer(request.dataset, request.teacher_paths, request.ipc, request.out_dir,
                         config=options["config"], accounting=options["accounting"],
                         selection=options["selection"], data_root=request.data_root, resume=request.resume,
                         progress=request.progress, device=request.device, request=request)


INFER = register(Method(
    name="infer", label="INFER", summary="natural sets + universal feature compensators (the paper)",
    distill=distill, parse_options=parse_options, options=RECOVERY_OPTIONS + OWN_OPTIONS, layout="compensated",
    resumable=True, all_ranks=True, config_section="recovery", run_options=OWN_NAMES, check_budget=check_budget,
    images_per_class=images_per_class, family_defaults=IMAGENET_FAMILY_DEFAULTS, result_neutral=RECOVERY_RESULT_NEUTRAL,
))
INFER_DYN = register(Method(
    name="infer_dyn", label="INFER+Dyn", summary="INFER's set, students labelled by the teachers on every batch",
    trains_on="infer", student_labels="per-batch", reduced_student_epochs=True,
))
