"""Static soft labels ("relabel", INFER_METHOD.md §4): the mean of the teachers' logits on
every training image of a set, with the test transform only (no augmentation), composed in
training order by :class:`infer_fast.storage.DistilledDataset`; stored fp16 via
``set_soft_labels``. Students train on them (infer_fast.student).

    relabel(distilled, teachers)                       # in place
    relabel_directory("sets/infer", ["t1.pt", "t2.pt"])  # load, relabel, save back
    z = ensemble_logits(teachers, x)                   # the rule, on one batch
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._io import PathLike, check_writable, model_digest
from .checks import check_int
from .models import eval_mode, float32_model, on_device
from .output_lock import holds_output
from .progress import progress_bar
from .storage import DistilledDataset, DistilledSet, load_distilled, save_distilled
from .storage.distilled_set import store_soft_label_rows
from .teacher import (check_distinct_teachers, check_teacher_outputs, load_teachers_for_set, resolve_device,
                      teacher_label, teacher_list, teacher_path_list)

__all__ = ["ensemble_logits", "relabel", "relabel_directory"]


@torch.no_grad()
def ensemble_logits(teachers: Union[nn.Module, Sequence[nn.Module]], x: Tensor,
                    names: Optional[Sequence[str]] = None) -> Tensor:
    """Mean of the teachers' logits on ``x`` (float32), teachers in eval mode (each put back
    in its mode after); one model is a list of one. Given ``names`` (how messages name each
    teacher: teacher.teacher_label), each teacher's logits are checked finite before they are
    summed, and a ValueError names the teacher that gives nan/inf (in the mean they could be
    anyone's). Teachers whose logits differ in shape are refused (one column would be
    broadcast over every class)."""
    teachers = teacher_list(teachers)
    if not teachers:
        raise ValueError("at least one teacher is needed")
    total = None
    for i, teacher in enumerate(teachers):
        with eval_mode(teacher):
            out = teacher(x).float()
        if total is not None and out.shape != total.shape:
            who = names[i] if names is not None else teacher_label(i, count=len(teachers))
            raise ValueError(f"{who} gives logits of shape {tuple(out.shape)}, the teachers before it "
                             f"{tuple(total.shape)}: their mean needs the same classes from every teacher")
        if names is not None and not torch.isfinite(out).all():
            raise ValueError(f"{names[i]} gives non-finite logits (nan or inf) on these images: the soft "
                             "labels would be nan; leave it out or use another checkpoint")
        total = out if total is None else total + out
    return total / len(teachers)


# how relabel makes the labels (recorded with them, hyperparameters["relabel"])
RELABEL_RULE = "mean of the teachers' logits, eval mode, test transform only"


def relabel_record(teacher_digests: Sequence[str]) -> Dict[str, Any]:
    """What a relabelled set records of its labels (``hyperparameters["relabel"]``): the rule
    and each teacher's weights digest (``teacher_digests``: _io.model_digest of each), which
    evaluate compares with the teachers it is given (evaluate.labelling_teachers)."""
    return {"teachers_sha256": list(teacher_digests), "rule": RELABEL_RULE}


def relabel(distilled: DistilledSet, teachers: Union[nn.Module, Sequence[nn.Module]], batch_size: int = 256,
            device: str = "cpu", progress: bool = False,
            teacher_names: Optional[Sequence[str]] = None) -> DistilledSet:
    """Static soft labels, **in place**: the mean of the teachers' logits on every training
    image (test transform only), stored fp16 with ``set_soft_labels``, and the teachers'
    digests recorded in ``hyperparameters["relabel"]`` (:func:`relabel_record`). Returns
    ``distilled``. ``progress``: a bar over the training images. The teachers (one model is
    a list of one) are checked first to give logits of the set's classes for its images
    (teacher.check_teacher_outputs), and are left as they were: a teacher on another device
    than ``device``, or not float32, labels as a copy there, in float32; two holding the same
    weights are refused (teacher.check_distinct_teachers: one would weigh twice in the mean).
    ``teacher_names`` (e.g. their paths) name a teacher whose logits are not finite (default:
    its place, "teacher 2/3")."""
    teachers = teacher_list(teachers)
    if not teachers:
        raise ValueError("relabel needs at least one teacher")
    check_int("batch_size", batch_size)
    if teacher_names is not None and len(teacher_names) != len(teachers):
        raise ValueError(f"teacher_names: {len(teacher_names)} names for {len(teachers)} teachers")
    paths = None if teacher_names is None else [str(n) for n in teacher_names]
    names = [teacher_label(i, paths[i] if paths else None, len(teachers)) for i in range(len(teachers))]
    dev = resolve_device(device)
    check_teacher_outputs(teachers, distilled.num_classes, (distilled.channels, *distilled.image_size), names)
    digests = [model_digest(t) for t in teachers]  # (recorded with the labels: relabel_record)
    check_distinct_teachers(digests, paths)
    models = [float32_model(on_device(t, dev)) for t in teachers]
    data = DistilledDataset(distilled, hard_only=True)
    # the labels as stored (fp16), each batch's written in as it comes and checked there: no
    # float32 copy of them all, and an overflow stops the run at its batch, not at the end
    soft = distilled.empty_soft_labels()
    # composed a chunk at a time: an ImageNet-size set never sits in memory as images
    with progress_bar(total=len(data), desc="relabel", unit="img", disable=not progress, leave=False) as bar:
        for first, images in data.iter_chunks():
            for start in range(0, images.shape[0], batch_size):
                logits = ensemble_logits(models, images[start:start + batch_size].to(dev), names).cpu()
                store_soft_label_rows(soft, first + start, logits)
                bar.update(logits.shape[0])
    distilled.set_soft_labels(soft, copy=False)
    distilled.hyperparameters = {**distilled.hyperparameters, "relabel": relabel_record(digests)}
    return distilled


# (one process, or a run's rank 0; rewritten in place: no other output to choose)
@holds_output("directory", "distilled set", every_rank=False, instead=None)
def relabel_directory(directory: PathLike, teacher_paths: Union[PathLike, Sequence[PathLike]], device: str = "cpu",
                      batch_size: int = 256, progress: bool = False) -> DistilledSet:
    """Load the set at ``directory``, relabel it with the teachers at ``teacher_paths`` and save
    it back (overwrite). The teacher paths are recorded in ``hyperparameters["relabel"]``,
    beside their digests (:func:`relabel`).
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
    relabel(ds, teachers, batch_size=batch_size, device=device, progress=progress, teacher_names=teacher_paths)
    ds.hyperparameters["relabel"] = {"teachers": teacher_paths, **ds.hyperparameters["relabel"]}
    save_distilled(ds, directory, overwrite=True, progress=progress)
    return ds
