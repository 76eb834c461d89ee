"""The random baseline: ipc real training images per class, picked with the seed; no
teachers, no optimisation (``infer_fast.distill.distill_random``)."""
from __future__ import annotations

from .registry import DistillRequest, Method, register


def distill(request: DistillRequest):
    from ..distill import distill_random

    return distill_random(request.dataset, request.ipc, request.out_dir, seed=request.seed,
                          data_root=request.data_root, progress=request.progress)


RANDOM = register(Method(
    name="random", label="Random", summary="ipc real training images per class, uniformly at random",
    distill=distill, uses_teachers=False,
))
