"""RDED's checkpoint: its classes are made one after the other, so a long run (ImageNet-1k
on a CPU: about 14 hours per teacher) keeps, beside the set (``<out>.recovery.pt``, the
recovery methods' name, so ``--resume`` and ``infer-fast run`` find it alike), the crop
generator's state after the classes done and the index of their stitched images, which lie
in the recovery's results folder (``<out>.recovery.pt.results/``, distill/checkpoints.py),
each run of classes finished between two checkpoints in a file of its own written once; a
resumed run continues with the next class exactly as the uninterrupted run would. What
identifies the run is recorded with it (the candidates, the recipe, ipc, seed, the teachers'
weights): a resume with other ones is refused, naming what differs."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import Tensor

from .._io import read_checkpoint, save_atomic
from ..run_identity import check_same_run
from ..teacher import TEACHERS_WEIGHTS_LABEL

CHECKPOINT_FORMAT = "infer-fast-rded-checkpoint"
# 2: the images in results files written once each (1: every finished class's images in the
# checkpoint, rewritten whole each time: 300 GB written for ImageNet-1k at ipc 50); 1 is read
CHECKPOINT_VERSION = 2
RESULTS_FORMAT = "infer-fast-rded-results"
_LABELS = {"candidates_sha256": "the candidate images", "teachers_sha256": TEACHERS_WEIGHTS_LABEL}


def results_file(checkpoint: os.PathLike, first: int, end: int) -> str:
    """The file that holds the images of classes ``first``..``end - 1`` of the run checkpointed
    at ``checkpoint``, in the recovery's results folder (removed with it once the set is saved)."""
    from ..distill.checkpoints import recovery_results_dir

    path = os.fspath(checkpoint)
    return os.path.join(recovery_results_dir(path), f"{os.path.basename(path)}.classes{first}-{end}.pt")


class RDEDCheckpoint:
    """The checkpoint at ``path`` of a run whose identity ``identity()`` computes (once, when
    first needed: it lists the candidate files). :meth:`restore` loads it (a resumed run; an
    existing file without ``resume`` is refused; the names in ``ignore``, result-neutral
    settings a checkpoint may record, are not compared); :meth:`after_class` writes it when
    ``minutes`` (None: never) have passed since the run started or last wrote it. The caller
    removes the file and the results folder once the set is saved
    (distill.checkpoints.remove_recovery_checkpoints)."""

    def __init__(self, path: os.PathLike, identity: Callable[[], Dict[str, Any]], minutes: Optional[float],
                 resume: bool, clock: Callable[[], float], ignore: Iterable[str] = ()):
        self.path, self._identity, self.minutes, self.resume, self.clock = os.fspath(path), identity, minutes, resume, clock
        self.ignore = tuple(ignore)
        self._known: Optional[Dict[str, Any]] = None
        self.last = clock()
        self.ends: List[int] = []  # the classes each results file listed so far ends at, in order

    @property
    def identity(self) -> Dict[str, Any]:
        if self._known is None:
            self._known = self._identity()
        return self._known

    def where(self) -> Optional[str]:
        """The checkpoint's file, when it is on disk (None: none written yet), as a recovery's
        store says it (distill.checkpoints: what an interrupted call names)."""
        return self.path if os.path.exists(self.path) else None

    def _start_over(self) -> str:
        from ..distill.checkpoints import recovery_results_dir

        return f"delete it and {recovery_results_dir(self.path)!r} to start over"

    def restore(self, images: Tensor, gen: torch.Generator, num_classes: int) -> int:
        """The classes done by the run the checkpoint holds (0 without one): their images
        copied into ``images`` (``num_classes`` classes' rows), ``gen`` set to its state after them."""
        if not os.path.exists(self.path):
            return 0
        if not self.resume:
            from ..distill.checkpoints import exists_resume_message

            raise ValueError(exists_resume_message("RDED checkpoint", self.path, self._start_over()))
        saved = read_checkpoint(self.path, CHECKPOINT_FORMAT, "RDED checkpoint", CHECKPOINT_VERSION)
        check_same_run("RDED checkpoint", self.path, saved["run"], self.identity,
                       f"resume with the same candidates, teachers and options, or {self._start_over()}",
                       ignore=self.ignore, labels=_LABELS)
        done = int(saved["classes_done"])
        ipc = images.shape[0] // num_classes
        if "images" in saved:  # (format 1; its classes go to a results file at the next checkpoint)
            images[:saved["images"].shape[0]] = saved["images"]
        else:
            first = 0
            for end in saved["results"]:
                file = results_file(self.path, first, end)
                if not os.path.exists(file):
                    raise ValueError(f"RDED checkpoint {self.path!r} lists classes {first}..{end - 1} in {file!r}, "
                                     f"which is missing: {self._start_over()}")
                part = read_checkpoint(file, RESULTS_FORMAT, "RDED results file", CHECKPOINT_VERSION)["images"]
                if tuple(part.shape) != tuple(images[first * ipc:end * ipc].shape):
                    raise ValueError(f"RDED results file {file!r} holds images {tuple(part.shape)}, not classes "
                                     f"{first}..{end - 1} of this run: {self._start_over()}")
                images[first * ipc:end * ipc] = part
                first = end
            self.ends = list(saved["results"])
        gen.set_state(saved["generator"])
        return done

    def announce(self, classes_done: int, num_classes: int) -> None:
        """What a resume found: said even without progress bars, like the recovery's."""
        if classes_done:
            print(f"{self.path}: resuming RDED after {classes_done}/{num_classes} classes", flush=True)
        elif self.resume:
            print(f"no RDED checkpoint at {self.path}: starting from the beginning", flush=True)

    def after_class(self, classes_done: int, num_classes: int, images: Tensor, gen: torch.Generator,
                    now: bool = False) -> None:
        """Write the checkpoint after ``classes_done`` classes (their rows of ``images``) if
        it is time (never after the last class: the set is saved next), or ``now`` (a stop was
        asked for, interrupts.py: after the last class too, so a resume just saves the set):
        the classes finished since the last one in a results file, then the index."""
        if not now and (classes_done >= num_classes or self.minutes is None
                        or self.clock() - self.last < 60.0 * self.minutes):
            return
        ipc = images.shape[0] // num_classes
        first = self.ends[-1] if self.ends else 0
        if classes_done > first:
            os.makedirs(os.path.dirname(results_file(self.path, 0, 0)), exist_ok=True)
            # (a copy of the new rows only: torch.save of a slice writes the whole tensor's storage)
            save_atomic({"format": RESULTS_FORMAT, "format_version": CHECKPOINT_VERSION, "classes": [first, classes_done],
                         "images": images[first * ipc:classes_done * ipc].clone()},
                        results_file(self.path, first, classes_done))
            self.ends.append(classes_done)
        save_atomic({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "run": self.identity,
                     "classes_done": classes_done, "results": list(self.ends), "generator": gen.get_state()},
                    self.path)
        self.last = self.clock()
