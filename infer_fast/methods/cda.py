"""CDA (Yin and Shen, "Dataset Distillation via Curriculum Data Synthesis in Large Data Era",
TMLR 2024; arXiv 2311.18838, first titled "Dataset Distillation in Large Data Era"): SRe2L's
recovery (images from Gaussian noise, CE + BN-statistics loss, Adam, cosine learning rate) with a
curriculum on RandomResizedCrop's scale: the lower bound of the crop's area fraction starts at
1.0 (whole images: global structure first) and falls to 0.08 (small crops: local detail), along a
half cosine over all the iterations. Sets are stored like SRe2L's (uint8 images + labels) under
method "cda", and relabelled like them.

Where each value comes from (the authors' code, github.com/VILA-Lab/SRe2L, folder CDA/, read at
commit 2e346ff; the paper's own text was not reachable here, its abstract points to that code):
- the curriculum, ``crop_scale_curriculum = ("cosine", 1.0, 1.0)`` with ``crop_scale = (0.08,
  1.0)`` (its start is crop_scale's upper bound: another crop_scale moves it, :func:`default_curriculum`):
  recover_cda_in1k.py / recover_cda_tiny.py / recover_cda_in21k.py compute per iteration
  t < milestone * T the lower bound 0.08 + (1.0 - 0.08) (1 + cos(pi t / (milestone T))) / 2
  ("cosine"; "linear" and "step", which holds 1.0, are their alternatives), 0.08 after, upper
  bound 1.0; RandomResizedCrop, then RandomHorizontalFlip, then a roll by randint(0, jitter).
  Schedule "cosine" and milestone 1 (the curriculum spans every iteration): the README's recover
  commands for all three datasets (the scripts' own --milestone default, 0, turns it off).
- per recipe, from the README's recover commands (iterations, lr, r_bn) and the scripts'
  --jitter defaults (max_shift):
  "imagenet-1k" (the default: the paper's main setting, 224x224): 4000 iterations, lr 0.25,
  r_bn 0.01, max_shift 32; "tiny-imagenet" (64x64; the recipe for small images): 4000
  iterations, lr 0.4, r_bn 0.05, max_shift 4; "imagenet-21k": 2000 iterations, lr 0.05, r_bn
  0.25, max_shift 32. (The README's download table lists its Tiny-ImageNet set as "1K"
  iterations; the recover command, taken here, says 4000.)
- as SRe2L (our defaults already): Adam betas (0.5, 0.9), eps 1e-8, first BN layer's loss x10,
  lr_t = 0.5 (1 + cos(pi t / T)) lr without warm-up, the last iterate kept.
Not taken, as in our SRe2L (INFER_METHOD.md §6): the scripts clamp the images to the valid range
after every step (here only the final images are), use batches of 100 classes with one crop,
flip and shift per batch (here one group of all C classes per image index, with per-group
statistics and draws, so results do not depend on batching).

Option ``recipe`` picks one of RECIPES (default: by dataset, :func:`recipe_for`); every
RecoveryConfig field may be given on top (user
options override the recipe; ``crop_scale_curriculum: null`` (``--crop-scale-curriculum off``)
is SRe2L with the ImageNet augmentation, or with the one given). The curriculum needs
``augmentation: imagenet``."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

from ..data.transforms import RESIZED_CROP_SCALE
from ..options import Option
from .recovery_options import RECOVERY_OPTIONS, RECOVERY_RESULT_NEUTRAL, recovery_options
from .registry import DistillRequest, Method, register
from .sre2l import OWN_RECIPES as SRE2L_RECIPES, distill_sre2l

# RandomResizedCrop (crop_scale: RecoveryConfig's default, (0.08, 1.0)) with the curriculum's
# schedule and milestone; it starts at crop_scale's upper bound (default_curriculum)
CURRICULUM = dict(augmentation="imagenet")
CURRICULUM_SCHEDULE, CURRICULUM_MILESTONE = "cosine", 1.0
RECIPES: Dict[str, Dict[str, Any]] = {  # sources: the module docstring
    "imagenet-1k": dict(iterations=4000, lr=0.25, r_bn=0.01, max_shift=32),
    "tiny-imagenet": dict(iterations=4000, lr=0.4, r_bn=0.05, max_shift=4),
    "imagenet-21k": dict(iterations=2000, lr=0.05, r_bn=0.25, max_shift=32),
}
DEFAULT_RECIPE = "imagenet-1k"
# The recipe of each dataset family (data.registry.DATASET_FAMILIES) when none is given:
# ImageNet-1k's for ImageNet (and its class subsets), the paper's small-image one for the rest.
FAMILY_RECIPES = {"imagenet": DEFAULT_RECIPE, "tiny-imagenet": "tiny-imagenet", "cifar": "tiny-imagenet"}
RECIPE = Option(
    "recipe", str, "the paper's settings (with the crop-scale curriculum): "
    + "; ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in values.items()) for name, values in RECIPES.items())
    + "; the options given override them",
    choices=tuple(RECIPES),
    none="the dataset family's: " + ", ".join(
        f"{recipe} for {' and '.join(f for f, r in FAMILY_RECIPES.items() if r == recipe)}"
        for recipe in dict.fromkeys(FAMILY_RECIPES.values())))


def recipe_for(dataset) -> str:
    """The recipe a dataset gets when ``recipe`` is not given: its family's (FAMILY_RECIPES)."""
    return CDA.with_dataset_defaults({}, dataset)["recipe"]


def default_curriculum(crop_scale: Any) -> Tuple[str, Any, float]:
    """CDA's curriculum for RandomResizedCrop's ``crop_scale`` (low, high): the lower bound
    from ``high`` (whole images, with the default scale) down to ``low`` along a half cosine
    over every iteration, as the authors' scripts (their start is the range's upper bound)."""
    scale = crop_scale if isinstance(crop_scale, (tuple, list)) and len(crop_scale) == 2 else RESIZED_CROP_SCALE
    return (CURRICULUM_SCHEDULE, scale[1], CURRICULUM_MILESTONE)  # (a bad crop_scale: refused by its own check)


def parse_options(options: Mapping[str, Any], seed: int = 0) -> Dict[str, Any]:
    """{"config": RecoveryConfig, "recipe"}: the recipe's settings with the curriculum
    (:func:`default_curriculum` of the crop_scale given), the user's RecoveryConfig options on
    top, validated (an error names the option; ``recipe`` is checked against its declaration
    by CDA.check_options). The default curriculum with a user's augmentation other than
    imagenet is refused saying how to turn it off."""
    recipe = options.get("recipe") or DEFAULT_RECIPE
    overrides = {k: v for k, v in options.items() if k != RECIPE.name}
    curriculum = default_curriculum(overrides.get("crop_scale", RESIZED_CROP_SCALE))
    augmentation = overrides.get("augmentation", CURRICULUM["augmentation"])
    if "crop_scale_curriculum" not in overrides and augmentation != CURRICULUM["augmentation"]:
        raise ValueError(f"CDA's default crop_scale_curriculum {curriculum!r} schedules RandomResizedCrop's scale: it "
                         f"needs augmentation={CURRICULUM['augmentation']!r}, got augmentation={augmentation!r}: give "
                         "that augmentation, or turn the curriculum off (crop_scale_curriculum: null in a config, "
                         "--crop-scale-curriculum off on the command line: SRe2L's recovery with "
                         f"augmentation={augmentation!r})")
    values = {**CURRICULUM, "crop_scale_curriculum": curriculum, **RECIPES[recipe], **overrides}
    return {"config": recovery_options(values, seed, SRE2L_RECIPES), "recipe": recipe}


def distill(request: DistillRequest):
    return distill_sre2l(request.dataset, request.teacher_paths, request.ipc, request.out_dir,
                         config=request.parsed["config"], data_root=request.data_root,
                         resume=request.resume, progress=request.progress, device=request.device, method_name="cda",
                         request=request)


CDA = register(Method(
    name="cda", label="CDA",
    summary="SRe2L's recovery with a curriculum on the crop scale (whole images first, small crops last)",
    distill=distill, parse_options=parse_options, options=RECOVERY_OPTIONS + (RECIPE,), resumable=True, all_ranks=True,
    result_neutral=RECOVERY_RESULT_NEUTRAL,
    family_defaults={family: {"recipe": recipe} for family, recipe in FAMILY_RECIPES.items()},
))
