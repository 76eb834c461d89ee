"""Static soft labels ("relabel", INFER_METHOD.md §4): the mean of the teachers' logits on
every training image of a set, with the test transform only (no augmentation), composed in
training order by :class:`infer_fast.storage.DistilledDataset`; stored fp16 via
``set_soft_labels``. Students train on them (infer_fast.student).

    relabel(distilled, teachers)                       # in place
    relabel_directory("sets/infer", ["t1.pt", "t2.pt"])  # load, relabel, save back
    z = ensemble_logits(teachers, x)                   # the rule, on one batch
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn

from ._io import PathLike, check_writable
from .checks import check_int
from .models import on_device
from .output_lock import holds_output
from .progress import progress_bar
from .storage import DistilledDataset, DistilledSet, load_distilled, save_distilled
from .storage.distilled_set import store_soft_label_rows
from .teacher import load_teachers_for_set, resolve_device, teacher_list, teacher_path_list

__all__ = ["ensemble_logits", "relabel", "relabel_directory"]


@torch.no_grad()
def ensemble_logits(teachers: Union[nn.Module, Sequence[nn.Module]], x: Tensor) -> Tensor:
    """Mean of the teachers' logits on ``x`` (float32), teachers in eval mode (each put back
    in its mode after); one model is a list of one."""
    teachers = teacher_list(teachers)
    if not teachers:
        raise ValueError("at least one teacher is needed")
    total = None
    for teacher in teachers:
        was_training = teacher.training
        teacher.eval()
        try:
            out = teacher(x).float()
        finally:
            teacher.train(was_training)
        total = out if total is None else total + out
    return total / len(teachers)


def relabel(distilled: DistilledSet, teachers: Union[nn.Module, Sequence[nn.Module]], batch_size: int = 256,
            device: str = "cpu", progress: bool = False) -> DistilledSet:
    """Static soft labels, **in place**: the mean of the teachers' logits on every training
    image (test transform only), stored fp16 with ``set_soft_labels``. Returns ``distilled``.
    ``progress``: a bar over the training images. The teachers (one model is a list of one)
    are left as they were: a teacher on another device than ``device`` labels as a copy there."""
    teachers = teacher_list(teachers)
    if not teachers:
        raise ValueError("relabel needs at least one teacher")
    check_int("batch_size", batch_size)
    dev = resolve_device(device)
    models = [on_device(t, dev) for t in teachers]
    data = DistilledDataset(distilled, hard_only=True)
    # the labels as stored (fp16), each batch's written in as it comes and checked there: no
    # float32 copy of them all, and an overflow stops the run at its batch, not at the end
    soft = distilled.empty_soft_labels()
    # composed a chunk at a time: an ImageNet-size set never sits in memory as images
    with progress_bar(total=len(data), desc="relabel", unit="img", disable=not progress, leave=False) as bar:
        for first, images in data.iter_chunks():
            for start in range(0, images.shape[0], batch_size):
                logits = ensemble_logits(models, images[start:start + batch_size].to(dev)).cpu()
                if logits.shape[1] != distilled.num_classes:
                    raise ValueError(f"teachers predict {logits.shape[1]} classes, the set has {distilled.num_classes}")
                store_soft_label_rows(soft, first + start, logits)
                bar.update(logits.shape[0])
    distilled.set_soft_labels(soft, copy=False)
    return distilled


@holds_output("directory", "distilled set", every_rank=False)  # (one process, or a run's rank 0)
def relabel_directory(directory: PathLike, teacher_paths: Union[PathLike, Sequence[PathLike]], device: str = "cpu",
                      batch_size: int = 256, progress: bool = False) -> DistilledSet:
    """Load the set at ``directory``, relabel it with the teachers at ``teacher_paths`` and save
    it back (overwrite). The teacher paths are recorded in ``hyperparameters["relabel"]``.
    ``progress``: a bar over the images, and a line when the set is saved. One path (a str or
    os.PathLike) is a list of one."""
    teacher_paths = teacher_path_list(teacher_paths)
    if not teacher_paths:
        raise ValueError("relabel_directory needs at least one teacher path")
    resolve_device(device)
    ds = load_distilled(directory)
    # rewritten beside itself, with the soft labels it is about to get
    check_writable(directory, "distilled set", kind="directory", need_bytes=ds.nbytes(relabelled=True))
    teachers = load_teachers_for_set(teacher_paths, ds, device=device)
    relabel(ds, teachers, batch_size=batch_size, device=device, progress=progress)
    ds.hyperparameters = dict(ds.hyperparameters)
    ds.hyperparameters["relabel"] = {
        "teachers": teacher_paths,
        "rule": "mean of the teachers' logits, eval mode, test transform only",
    }
    save_distilled(ds, directory, overwrite=True, progress=progress)
    return ds
