"""INFER (Inter-class Feature Compensator, ICLR 2025): K natural sets of one real image per
class and one universal compensator per set and teacher (``infer_fast.distill``), and
INFER+Dyn: the same set, its students labelled by the teachers on every batch."""
from __future__ import annotations

from typing import Any, Dict, Mapping

from ..choices import ACCOUNTINGS, SELECTIONS
from ..options import Option
from .recovery_options import IMAGENET_FAMILY_DEFAULTS, RECOVERY_OPTIONS, recovery_options
from .registry import DistillRequest, Method, register

# how the natural sets are picked and the budget counted (an `infer-fast run` config's own settings)
OWN_OPTIONS = (
    Option("accounting", str, "the budget: fair (K = floor(ipc*C/(C+M))) or ipc (K = ipc)", default="fair",
           choices=ACCOUNTINGS),
    Option("selection", str, "the natural images: random or the ones the teachers are most confident about",
           default="random", choices=SELECTIONS),
)
OWN_NAMES = tuple(o.name for o in OWN_OPTIONS)


def parse_options(options: Mapping[str, Any], seed: int = 0) -> Dict[str, Any]:
    """{"config": RecoveryConfig, "selection", "accounting"} from the user's options (checked
    against their declarations by Method.check_options)."""
    own = {o.name: options.get(o.name, o.default) for o in OWN_OPTIONS}
    config = recovery_options("infer", {k: v for k, v in options.items() if k not in OWN_NAMES}, seed)
    return {"config": config, **own}


def check_budget(options: Mapping[str, Any], ipc: int, num_classes: int, num_teachers: int) -> None:
    """INFER's K natural sets at ``ipc`` under the options' accounting: none is an error."""
    from ..distill import infer_budget

    infer_budget(ipc, num_classes, num_teachers, options["accounting"])


def distill(request: DistillRequest):
    from ..distill import distill_infer

    options = request.parsed  # (checked when the request was made)
    return distill_infer(request.dataset, request.teacher_paths, request.ipc, request.out_dir,
                         config=options["config"], accounting=options["accounting"],
                         selection=options["selection"], data_root=request.data_root, resume=request.resume,
                         progress=request.progress, device=request.device)


INFER = register(Method(
    name="infer", label="INFER", summary="natural sets + universal feature compensators (the paper)",
    distill=distill, parse_options=parse_options, options=RECOVERY_OPTIONS + OWN_OPTIONS, layout="compensated",
    resumable=True, all_ranks=True, config_section="recovery", run_options=OWN_NAMES, check_budget=check_budget,
    family_defaults=IMAGENET_FAMILY_DEFAULTS,
))
INFER_DYN = register(Method(
    name="infer_dyn", label="INFER+Dyn", summary="INFER's set, students labelled by the teachers on every batch",
    trains_on="infer", student_labels="per-batch", reduced_student_epochs=True,
))
