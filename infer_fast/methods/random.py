"""The random baseline, in one module: ipc real training images per class, picked with the
seed (:func:`random_set`, :func:`distill_random`); no teachers, no optimisation."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..checks import check_int
from ..distill.run import check_new_output, real_data_fields
from ..output_lock import holds_output
from .registry import ClassImages, DistillRequest, Method, register


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


@holds_output("out_dir", every_rank=False)  # (rank 0 alone makes it)
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


def distill(request: DistillRequest):
    return distill_random(request.dataset, request.ipc, request.out_dir, seed=request.seed,
                          data_root=request.data_root, progress=request.progress)


def images_per_class(options: Mapping[str, Any], ipc: int, spec, num_teachers: int) -> ClassImages:
    """Its set is ipc real images of every class."""
    return ClassImages(ipc)


RANDOM = register(Method(
    name="random", label="Random", summary="ipc real training images per class, uniformly at random",
    distill=distill, uses_teachers=False, images_per_class=images_per_class,
))
