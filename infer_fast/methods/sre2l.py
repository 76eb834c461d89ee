"""SRe2L (Yin et al., NeurIPS 2023): ipc images per class recovered from noise by the
recovery engine, one teacher per image group (``infer_fast.distill.distill_sre2l``)."""
from __future__ import annotations

from typing import Any, Dict, Mapping

from .recovery_options import IMAGENET_FAMILY_DEFAULTS, RECOVERY_OPTIONS, recovery_options
from .registry import DistillRequest, Method, register

# the `recovery` settings of an `infer-fast run` SRe2L shares with INFER: its augmentation, batching and seed
SHARED_RECOVERY_OPTIONS = ("augmentation", "max_shift", "crop_scale", "group_size", "seed")


def parse_options(options: Mapping[str, Any], seed: int = 0) -> Dict[str, Any]:
    return {"config": recovery_options("sre2l", options, seed)}


def distill(request: DistillRequest):
    from ..distill import distill_sre2l

    return distill_sre2l(request.dataset, request.teacher_paths, request.ipc, request.out_dir,
                         config=request.parsed["config"], data_root=request.data_root, resume=request.resume,
                         progress=request.progress, device=request.device)


SRE2L = register(Method(
    name="sre2l", label="SRe2L", summary="images recovered from noise (squeeze, recover, relabel)",
    distill=distill, parse_options=parse_options, options=RECOVERY_OPTIONS, resumable=True, all_ranks=True,
    config_section="sre2l", shared_recovery_options=SHARED_RECOVERY_OPTIONS,
    family_defaults=IMAGENET_FAMILY_DEFAULTS,
))
