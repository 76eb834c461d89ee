"""What a recovery optimizes: the hooks (a :class:`RecoveryKind`) that the engine calls to
build a batch's variable, compose it into the teacher's input, score it (its loss) and read
its result, so that the engine names no method. Each method that recovers defines its kind
in its own module: INFER's compensators (``methods/infer.py``: COMPENSATORS) and SRe2L's free
images (``methods/sre2l.py``: FreeImages, also CDA's: SRe2L's recovery with a crop
curriculum, which lives in its RecoveryConfig)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def job_seed(tag: str, seed: int, m: int, k: int) -> int:
    """A per-job generator seed (job (m, k) of a run seeded ``seed``), independent of batching."""
    digest = hashlib.sha256(f"{tag}:{int(seed)}:{int(m)}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class BatchVariable:
    """One batch's optimized leaf ``tensor`` (G groups, with autograd) and how it is composed:
    ``compose_args(v)`` gives ufc_compose's (source, ufc, index) for the variable's value v, and
    group g's rows come from ``source[source_rows[g]]`` (host indices, for the chunked mode).
    The tensors compose_args returns are made once, with the batch: a captured CUDA graph of
    an iteration reads them."""

    tensor: Tensor
    compose_args: Callable[[Tensor], Tuple[Tensor, Tensor, Tensor]]
    source_rows: List[int]


class RecoveryKind:
    """The hooks of a method that recovers with the engine. ``method``: the name that the
    checkpoints (identity, in-batch states) carry; ``label``: the method's name in messages;
    ``seed_tag``: what every job's generator seed is derived from (:func:`job_seed`); ``noun``:
    what one job recovers, in progress bars. A subclass defines :meth:`variable` and
    :meth:`result`."""

    method: str
    label: str
    seed_tag: str
    noun: str

    def job_seed(self, seed: int, m: int, k: int) -> int:
        return job_seed(self.seed_tag, seed, m, k)

    def variable(self, source: Optional[Tensor], gens: Sequence[torch.Generator], ks: Sequence[int],
                 num_classes: int, image_shape: Tuple[int, int, int], device: torch.device) -> BatchVariable:
        """The batch's variable at iteration 0 for the jobs ``ks`` (their generators ``gens``),
        composed with ``source``: the batch's own natural sets, float32 (len(ks), C, ch, H, W),
        source[g] the set of ks[g], normalized when the batch started (None when the method has
        none)."""
        raise NotImplementedError

    def result(self, variable: Tensor, composed: Tensor) -> Tensor:
        """What a job keeps, per group: from the final variable, or the final composed images
        (clamped to the valid range)."""
        raise NotImplementedError

    def losses(self, teacher, num_classes: int, config, backend: str):
        """The per-group losses a batch minimizes with ``teacher``: by default INFER's and
        SRe2L's, CE on the class labels + r_bn x the BN-statistics loss
        (engine.TeacherLosses, INFER_METHOD.md §3); a kind with another loss returns an object
        with TeacherLosses' interface (called on a batch, teacher_input/teacher_rows, detach)."""
        from .engine import TeacherLosses  # (the engine imports this module)

        return TeacherLosses(teacher, num_classes, config, backend)
