"""What every method's set-making shares (a dataset and teacher checkpoints in, a distilled
set on disk out): the checks and loading before any work (:func:`prepare_run`,
:func:`check_new_output`, :func:`load_set_teachers`), the free-space check of a recovery
(:func:`check_space`), the fields a set takes from the real data (:func:`real_data_fields`)
and from a recovery's config (:func:`recovery_hyperparameters`), and the save that removes
the recovery checkpoints (:func:`save_and_clean`). The teachers of a set come as
:class:`LoadedTeachers`, which carry the digest of each teacher's weights from the load on
(:func:`teacher_digests`: the request's and the recovery's identities read them, not hash the
weights again). The methods' own functions (distill_infer,
distill_sre2l, distill_random, ...) are in infer_fast/methods/."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from .. import distributed
from .._io import check_writable, file_sha256, model_digest, recovery_checkpoint_path  # (also imported from here)
from ..storage.distilled_set import OutputExistsError
from .checkpoints import recovery_checkpoints, recovery_results_dir, remove_recovery_checkpoints


def real_data_fields(train) -> Dict[str, Any]:
    """DistilledSet fields that describe the real training set ``train`` (an ImageSet)."""
    spec = train.spec
    return dict(
        dataset=spec.name, num_classes=spec.num_classes, channels=spec.channels, image_size=spec.image_size,
        mean=spec.mean, std=spec.std, full_train_size=len(train),
        class_names=list(spec.class_names) if spec.class_names is not None else None,
    )


def recovery_hyperparameters(config, batch_stats: Sequence[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    """A recovered set's ``hyperparameters`` record: ``config`` (a RecoveryConfig) as given,
    its augmentation in words, the method's own ``extra``, and the batches the run made
    (``batch_stats``, a recovery's "stats", those inherited by a resume included): each
    ``[teacher, [k...]]``, with a third element, its chunk size, where the batch ran in chunks
    (the teacher run that many images at a time: chunks planned from the memory available,
    --chunk-size, or those a resumed batch continued in; fused_bn and compile do not apply
    there, whatever the config says), and the largest batch as ``group_size_used``. The
    grouping and chunking are part of what reproduces a set (they change float rounding), and
    a run resumed with another ``group_size`` or ``chunk_size`` mixes two. (A manifest of
    before records every batch as ``[teacher, [k...]]``.)"""
    batches = sorted([int(b["teacher"]), [int(k) for k in b["k"]]]
                     + ([int(b["chunk_size"])] if b.get("chunk_size") is not None else []) for b in batch_stats)
    hyper = config.to_dict()
    hyper.update(group_size_used=max((len(batch[1]) for batch in batches), default=None), batches=batches,
                 augmentation_rule=config.describe_augmentation(), **extra)
    return hyper


class LoadedTeachers(list):
    """The teachers of a set as :func:`load_set_teachers` loads them (a list of models), with
    the model_digest of each, computed once when they were loaded: the request's identity
    (:func:`request_identity`) and the recovery's (jobs.recover) read them. They stand for the
    weights as loaded (a set's teachers are frozen for the whole run), each digest kept with
    its model: a list reordered or changed since gives each model its own (:func:`teacher_digests`)."""

    def __init__(self, models: Iterable[Any], digests: Sequence[str]):
        super().__init__(models)
        # (the model is kept beside its digest: its id cannot be reused by another while known)
        self.known = {id(model): (model, digest) for model, digest in zip(self, digests)}


def teacher_digests(teachers: Sequence[Any]) -> List[str]:
    """The model_digest of each of ``teachers``: the one a :class:`LoadedTeachers` holds for
    that model, else computed (models a caller gave, one put in the list since)."""
    known = teachers.known if isinstance(teachers, LoadedTeachers) else {}
    digests = []
    for teacher in teachers:
        model, digest = known.get(id(teacher), (None, None))
        digests.append(digest if model is teacher else model_digest(teacher))
    return digests


def prepare_run(dataset, teacher_paths, out_dir, data_root, device, progress):
    """Checks, the training split and the teachers (loaded once, frozen, eval mode) of a
    recovery run: (out_dir, train, teachers, teacher records, checkpoint path)."""
    from ..data import load_dataset
    from ..teacher import resolve_device, teacher_path_list

    resolve_device(device)
    teacher_paths = teacher_path_list(teacher_paths)
    if not teacher_paths:
        raise ValueError("teachers: at least one teacher checkpoint is needed")
    out_dir = check_new_output(out_dir)
    train = load_dataset(dataset, "train", data_root=data_root, progress=progress)
    teachers, records = load_set_teachers(teacher_paths, dataset, train, device)
    return out_dir, train, teachers, records, recovery_checkpoint_path(out_dir)


def load_set_teachers(teacher_paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], dataset, train,
                      device: str):
    """(teachers, records) of a set being made from ``train``: each teacher at
    ``teacher_paths`` (one path or several: teacher.teacher_path_list) loaded frozen in eval
    mode on this rank's device, checked against the split's classes (count and names),
    channels and size (teacher.load_teachers_for_split) and to be distinct (one file given
    twice, or a copy of it: teacher.check_distinct_teachers); each record the path, model and
    recorded accuracy that the set keeps. The teachers are a :class:`LoadedTeachers`: their
    digests, computed here for the distinctness check, go on with them."""
    from ..teacher import check_distinct_teachers, load_teachers_for_split, teacher_path_list

    paths = teacher_path_list(teacher_paths)
    loaded = load_teachers_for_split(paths, dataset, train, distributed.local_device(device))
    digests = [model_digest(model) for model, _ in loaded]
    check_distinct_teachers(digests, paths)
    records = [{"path": path, "model": meta["model"], "accuracy": meta.get("test_accuracy")}
               for path, (_, meta) in zip(paths, loaded)]
    return LoadedTeachers((model for model, _ in loaded), digests), records


def check_new_output(out_dir) -> Path:
    """Before any work: ``out_dir`` must not exist, not even as a symbolic link (to nothing:
    the save would refuse it after the work), and its parent must be writable (the set and the
    recovery checkpoint beside it go there). An existing set with a recovery checkpoint beside
    it is refused naming that checkpoint too (:func:`_leftover_checkpoint`)."""
    from ..storage.disk import refuse_symlink

    out_dir = Path(out_dir)
    refuse_symlink(out_dir)
    if out_dir.exists():
        checkpoint = _leftover_checkpoint(out_dir)
        raise OutputExistsError.new_output_taken(out_dir, "" if checkpoint is None else (
            f" (a recovery checkpoint is beside it, {checkpoint}: a run killed after saving its set leaves one; if the "
            "set is that run's whole result, delete the checkpoint)"))
    check_writable(out_dir, "output directory", kind="directory")
    return out_dir


# The form of the request a set records. Form 1 (recorded with no request_form, by infer-fast of
# 2026-12-07 before this): its teachers by their files' SHA-256, and at first without the dataset's
# class count, image size and training images' digest (FIRST_FORM_LATER_ENTRIES).
REQUEST_FORM = 2
FIRST_FORM_LATER_ENTRIES = ("dataset.num_classes", "dataset.image_size", "data_sha256")


def request_identity(request, train=None, teachers=None) -> Dict[str, Any]:
    """What determines the set a DistillRequest makes, as its manifest records it (``request``):
    the method, the dataset with its class count and image size as read (a default spelled out
    is the same request) and its training split's digest (another data root holding other
    images is not), ipc and seed, the method's options as parsed (over its recipe for the
    dataset; each by its name, a config's fields too) but its result-neutral ones (batching,
    checkpoint cadence), and the digest of each teacher's weights (model_digest, as a recovery
    checkpoint records them: a teacher trained again to the same weights, whose file differs in
    its recorded times, is the same teacher). ``train``, ``teachers``: the training split and
    the loaded teachers where the caller holds them (else they are read; the digests of a
    :class:`LoadedTeachers` are those it carries). A rerun with --resume of the same request
    finds the set done (:func:`finished_set`)."""
    from ..data import load_dataset
    from ..data.registry import dataset_options
    from ..methods.registry import get_method, parsed_option_values

    method = get_method(request.method)
    if train is None:
        train = load_dataset(request.dataset, "train", data_root=request.data_root, progress=request.progress)
    if teachers is None:
        teachers, _ = load_set_teachers(request.teacher_paths, request.dataset, train, "cpu")
    options = {k: v for k, v in parsed_option_values(request.parsed).items() if k not in method.result_neutral}
    identity = {"method": method.name, "dataset": dataset_options(request.dataset)[0],
                "dataset.num_classes": train.spec.num_classes, "dataset.image_size": train.spec.image_size,
                "data_sha256": train.digest(progress=request.progress), "ipc": request.ipc, "seed": request.seed, **options,
                "teachers_sha256": teacher_digests(teachers), "request_form": REQUEST_FORM}
    return json.loads(json.dumps(identity, default=str))  # (as the manifest holds it: lists, not tuples)


def finished_set(request) -> Optional[Path]:
    """With ``request.resume``, where its output already holds a whole set (no recovery
    checkpoint beside it: a requeued job rerunning its script after the set was saved): that
    set, saying "already distilled; nothing to do", when it records this very request
    (:func:`request_identity`), else an OutputExistsError naming what differs. None where
    there is work to do (the method's check_new_output refuses an existing output as ever)."""
    from ..run_identity import another_run_message, differing
    from ..storage.disk import complete_manifest
    from ..teacher import TEACHERS_WEIGHTS_LABEL

    out_dir = Path(request.out_dir)
    if not request.resume or out_dir.is_symlink() or _leftover_checkpoint(out_dir) is not None:
        return None
    manifest = complete_manifest(out_dir)
    if manifest is None:
        return None
    todo = "choose another output directory, or delete it to distill it again"
    recorded = manifest.get("request")
    if not isinstance(recorded, dict):
        raise OutputExistsError(f"{out_dir} already holds a set that records no request (made by an older "
                                f"infer-fast, or imported): it cannot be told to be this one's; {todo}")
    current = request_identity(request)
    if "request_form" not in recorded:  # (form 1: compared as it was recorded, entries it lacks not at all)
        current = {**{k: v for k, v in current.items() if k in recorded or k not in FIRST_FORM_LATER_ENTRIES},
                   "teachers_sha256": [file_sha256(path) for path in request.teacher_paths]}
        current.pop("request_form")
    names = differing(recorded, current)
    if names:
        raise OutputExistsError(another_run_message("set", out_dir, names, todo, recorded,
                                                    labels={"teachers_sha256": TEACHERS_WEIGHTS_LABEL,
                                                            "data_sha256": "the training images"}))
    if distributed.rank_and_world()[0] == 0:
        print(f"{out_dir}: already distilled; nothing to do", flush=True)
    return out_dir


def _leftover_checkpoint(out_dir: Path) -> Optional[Path]:
    """The recovery checkpoint beside the whole set ``out_dir`` (any rank's share, or its
    results folder), or None. It is named, never removed: a run killed after saving its set
    leaves one (save_and_clean), but so does an interrupted run whose output was filled since
    (a set copied there): only the user knows which, and the second is hours of work."""
    from ..storage.disk import complete_manifest

    checkpoint = recovery_checkpoint_path(out_dir)
    leftover = recovery_checkpoints(checkpoint) or os.path.isdir(recovery_results_dir(checkpoint))
    return checkpoint if leftover and complete_manifest(out_dir) is not None else None


def check_space(out_dir: Path, set_bytes: int, result_bytes: int, partial_bytes: Optional[int] = None) -> None:
    """Before the recovery: room for its peak on disk. The results of finished batches are
    written once each (up to ``result_bytes`` in all, recovery_results_dir); with checkpoints
    inside a batch the checkpoint holds the state of every batch in progress (``partial_bytes``
    in all; None: up to 3x ``result_bytes``), and while it is replaced atomically the old file
    and the new one are both there. The set is written while every result is still there."""
    partial_bytes = 3 * result_bytes if partial_bytes is None else partial_bytes
    need = max(result_bytes + 2 * partial_bytes, result_bytes + set_bytes)
    check_writable(out_dir, "output directory", kind="directory", need_bytes=need)


def save_and_clean(ds, out_dir: Path, checkpoint: Path, progress: bool = False) -> Path:
    """Rank 0 writes the set (validated once, each file hashed once as it is written; with
    ``progress`` saying where and how large), then removes the run's recovery checkpoints
    (every rank's share, of any world size: on the file system every rank shares, which the
    checkpoint store checks at start)."""
    from ..storage import save_distilled

    rank, _ = distributed.rank_and_world()
    if rank == 0:
        save_distilled(ds, out_dir, progress=progress)
    distributed.barrier()  # every rank is done with its share before it goes
    if rank == 0:
        remove_recovery_checkpoints(checkpoint)
    distributed.barrier()
    return out_dir
