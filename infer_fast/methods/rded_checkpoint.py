"""RDED's checkpoint: its classes are made one after the other, so a long run (ImageNet-1k
on a CPU: about 14 hours per teacher) keeps, beside the set (``<out>.recovery.pt``, the
recovery methods' name, so ``--resume`` and ``infer-fast run`` find it alike), the stitched
images of the classes done and the crop generator's state after them, and a resumed run
continues with the next class exactly as the uninterrupted run would. What identifies the
run is recorded with it (the candidates, the recipe, ipc, seed, the teachers' weights): a
resume with other ones is refused, naming what differs."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor

from .._io import read_checkpoint, save_atomic
from ..run_identity import check_same_run

CHECKPOINT_FORMAT = "infer-fast-rded-checkpoint"
CHECKPOINT_VERSION = 1
_LABELS = {"candidates_sha256": "the candidate images", "teachers_sha256": "the teachers' weights"}


class RDEDCheckpoint:
    """The checkpoint at ``path`` of a run whose identity ``identity()`` computes (once, when
    first needed: it lists the candidate files). :meth:`restore` loads it (a resumed run; an
    existing file without ``resume`` is refused); :meth:`after_class` writes it when
    ``minutes`` (None: never) have passed since the run started or last wrote it. The caller
    removes the file once the set is saved."""

    def __init__(self, path: os.PathLike, identity: Callable[[], Dict[str, Any]], minutes: Optional[float],
                 resume: bool, clock: Callable[[], float]):
        self.path, self._identity, self.minutes, self.resume, self.clock = os.fspath(path), identity, minutes, resume, clock
        self._known: Optional[Dict[str, Any]] = None
        self.last = clock()

    @property
    def identity(self) -> Dict[str, Any]:
        if self._known is None:
            self._known = self._identity()
        return self._known

    def restore(self, images: Tensor, gen: torch.Generator) -> int:
        """The classes done by the run the checkpoint holds (0 without one): their images
        copied into ``images``, ``gen`` set to its state after them."""
        if not os.path.exists(self.path):
            return 0
        if not self.resume:
            raise ValueError(f"RDED checkpoint {self.path!r} exists: pass resume=True (--resume) to continue that run, "
                             "or delete it")
        saved = read_checkpoint(self.path, CHECKPOINT_FORMAT, "RDED checkpoint", CHECKPOINT_VERSION)
        check_same_run("RDED checkpoint", self.path, saved["run"], self.identity,
                       "resume with the same candidates, teachers and options, or delete it", labels=_LABELS)
        done = int(saved["classes_done"])
        images[:saved["images"].shape[0]] = saved["images"]
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
        asked for, interrupts.py: after the last class too, so a resume just saves the set)."""
        if not now and (classes_done >= num_classes or self.minutes is None
                        or self.clock() - self.last < 60.0 * self.minutes):
            return
        ipc = images.shape[0] // num_classes
        save_atomic({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "run": self.identity,
                     "classes_done": classes_done, "images": images[:classes_done * ipc].clone(),
                     "generator": gen.get_state()}, self.path)
        self.last = self.clock()
