"""INFER (Inter-class Feature Compensator, ICLR 2025): K natural sets of one real image per
class and one universal compensator per set and teacher (``infer_fast.distill``), and
INFER+Dyn: the same set, its students labelled by the teachers on every batch."""
from __future__ import annotations

from typing import Any, Dict, Mapping

from ..choices import ACCOUNTINGS, SELECTIONS
from ..checks import check_choice
from .recovery_options import RECOVERY_OPTIONS, recovery_options
from .registry import DistillRequest, Method, register

OWN_OPTIONS = ("selection", "accounting")  # how the natural sets are picked and the budget counted


def parse_options(options: Mapping[str, Any], seed: int = 0) -> Dict[str, Any]:
    """{"config": RecoveryConfig, "selection", "accounting"} from the user's options."""
    own = {"selection": options.get("selection", "random"), "accounting": options.get("accounting", "fair")}
    check_choice("selection", own["selection"], SELECTIONS)
    check_choice("accounting", own["accounting"], ACCOUNTINGS)
    return {"config": recovery_options("infer", {k: v for k, v in options.items() if k not in OWN_OPTIONS}, seed), **own}


def distill(request: DistillRequest):
    from ..distill import distill_infer

    options = parse_options(request.options, request.seed)
    return distill_infer(request.dataset, request.teacher_paths, request.ipc, request.out_dir,
                         config=options["config"], accounting=options["accounting"],
                         selection=options["selection"], data_root=request.data_root, resume=request.resume,
                         progress=request.progress, device=request.device)


INFER = register(Method(
    name="infer", label="INFER", summary="natural sets + universal feature compensators (the paper)",
    distill=distill, parse_options=parse_options, options=RECOVERY_OPTIONS + OWN_OPTIONS, layout="compensated",
    resumable=True,
))
INFER_DYN = register(Method(
    name="infer_dyn", label="INFER+Dyn", summary="INFER's set, students labelled by the teachers on every batch",
    trains_on="infer", student_labels="per-batch", reduced_student_epochs=True,
))
