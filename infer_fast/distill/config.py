"""Recovery settings: RecoveryConfig (each field's type, range, choices, default and help
declared once, on the field), its named recipes (RECIPES: the CIFAR defaults, ImageNet,
SRe2L) and the one function that builds it from user options (CLI flags and `infer-fast run`
configs alike)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..data.registry import SMALL_IMAGE_MAX
from ..data.transforms import RESIZED_CROP_SCALE

from ..choices import COMPILE_MODES, CROP_SCALE_SCHEDULES, DISTRIBUTED_MODES, PRECISIONS, RECOVERY_AUGMENTATIONS
from ..options import (CheckedWhenMade, check_fields, check_given_used, hold_as_made, option, result_neutral_fields,
                       with_recipe)

# named recipes: the fields each sets over the defaults (the CIFAR recipe, INFER_METHOD.md §3).
# recovery_config picks "imagenet" for augmentation imagenet; a method adds its own on top
# (SRe2L and CDA: "sre2l", and "sre2l-imagenet" on ImageNet-size images)
RECIPES: Dict[str, Dict[str, Any]] = {
    "cifar": {},
    "imagenet": dict(iterations=2000, r_bn=0.01, augmentation="imagenet", max_shift=32),  # INFER on ImageNet-size images
    "sre2l": dict(r_bn=0.01),  # the SRe2L baseline (INFER_METHOD.md §6): same loss and optimizer
    "sre2l-imagenet": dict(iterations=4000),  # SRe2L on ImageNet-size images (§6): 4000 iterations, over "imagenet"
}


def _numbers(value: Any, count: int) -> Tuple[Any, ...]:
    """``value``'s items if it is a list or tuple of ``count`` numbers (no bools), else ()."""
    items = tuple(value) if isinstance(value, (tuple, list)) else ()
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)
    return items if len(items) == count and numeric else ()


def _check_betas(name: str, value: Any) -> None:
    betas = _numbers(value, 2)
    if not (betas and all(0 <= b < 1 for b in betas)):
        raise ValueError(f"{name} must be two values in [0, 1), got {value!r}")


def _check_crop_scale(name: str, value: Any) -> None:
    scale = _numbers(value, 2)
    if not (scale and 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"{name} must be two values with 0 < low <= high <= 1, got {value!r}")


@dataclass(frozen=True)
class RecoveryConfig(CheckedWhenMade):
    """Hyperparameters of UFC recovery (defaults: CIFAR, INFER_METHOD.md §3).

    ``RecoveryConfig.imagenet()`` gives the ImageNet recipe, ``RecoveryConfig.sre2l()`` the
    SRe2L baseline's (r_bn 0.01): see RECIPES."""

    # (bounded: every UFC draws its rolls for all iterations up front, 16 bytes each)
    iterations: int = field(default=1000, metadata=option("recovery iterations", minimum=1, below=2 ** 31))
    lr: float = field(default=0.25, metadata=option("Adam learning rate of the UFCs", above=0))
    betas: Tuple[float, float] = field(default=(0.5, 0.9), metadata=option(
        "Adam betas, two values in [0, 1)", check=_check_betas))
    eps: float = field(default=1e-8, metadata=option("Adam epsilon", above=0))
    r_bn: float = field(default=1.0, metadata=option("weight of the BN-statistics loss", minimum=0))
    first_bn_mult: float = field(default=10.0, metadata=option("multiplier of the first BN layer's statistics loss",
                                                               minimum=0))
    # "roll": roll by randint(0, max_shift) (inclusive) on H and W; "imagenet":
    # RandomResizedCrop(crop_scale) + horizontal flip, then that roll. Drawn per UFC per iteration.
    augmentation: str = field(default="roll", metadata=option(
        "roll (small images) or imagenet (RandomResizedCrop + flip + roll; selects the imagenet recipe, the "
        f"default for ImageNet-family datasets and images over {SMALL_IMAGE_MAX} px)",
        choices=RECOVERY_AUGMENTATIONS))
    max_shift: int = field(default=4, metadata=option("largest roll in pixels", minimum=0, below=2 ** 31,
                                                          note="a roll repeats past the image's size"))
    crop_scale: Tuple[float, float] = field(default=RESIZED_CROP_SCALE, metadata=option(
        "RandomResizedCrop's area range, with augmentation imagenet: [low, high], 0 < low <= high <= 1",
        check=_check_crop_scale))
    # a curriculum on that range (CDA; augmentation "imagenet" only): (schedule, start, milestone),
    # the lower bound moved from ``start`` at iteration 0 to crop_scale's at milestone * iterations
    # (crop_scale_at). None: crop_scale at every iteration
    crop_scale_curriculum: Optional[Tuple[str, float, float]] = field(default=None, metadata=option(
        f"a curriculum on crop_scale's lower bound: [schedule ({', '.join(CROP_SCALE_SCHEDULES)}), start, "
        "milestone (a fraction of the iterations)]; off: crop_scale at every iteration (--method cda's default "
        "starts at crop_scale's high)", none="off"))
    group_size: Optional[int] = field(default=None, metadata=option(  # see auto_batch_plan
        "UFCs optimized in one batch", minimum=1, none="automatic", result_neutral=True))
    # rows through the teacher at a time (chunked exact mode: the same gradient in the memory
    # of one chunk); None = the whole batch, or chunks planned from the available memory (CPU or CUDA) when one group does not fit
    chunk_size: Optional[int] = field(default=None, metadata=option(
        "images through the teacher at a time: the exact full-batch gradient in the memory of one chunk",
        minimum=1, none="automatic: the whole batch, or chunks planned from the available memory when one group "
        "does not fit", result_neutral=True))
    # "bf16": the teacher converted once to bf16 (BatchNorm kept in fp32), its inputs cast to bf16;
    # BN statistics, the loss and the UFC with its Adam state stay fp32. Or "fp32"
    precision: str = field(default="fp32", metadata=option(
        "teacher in fp32 or converted once to bf16 (BatchNorm, statistics and UFCs stay fp32)", choices=PRECISIONS))
    channels_last: bool = field(default=False, metadata=option(
        "teacher weights and inputs in channels_last (faster convolutions on GPUs)"))
    # eval-mode BN and its statistics loss fused (bn_eval_with_stat_loss: one kernel pass each
    # way instead of the BN's, the loss's and autograd's sum); same results; not with chunk_size
    fused_bn: bool = field(default=False, metadata=option(
        "each eval-mode BN and its statistics loss fused: one kernel pass forward (statistics + BN output) and one "
        "backward (same results, less memory traffic)", result_neutral=True))
    # torch.compile the teacher forward + losses (fullgraph; its backward too): "off", or a
    # torch.compile mode ("reduce-overhead" = CUDA graphs). One graph per teacher and group
    # count; unchunked batches only; same results up to float rounding
    compile: str = field(default="off", metadata=option(
        "torch.compile the teacher pass (reduce-overhead adds CUDA graphs; one compile per teacher)",
        choices=COMPILE_MODES, result_neutral=True))
    # on CUDA, each batch's iteration captured once as a CUDA graph and replayed (the same results
    # up to float rounding; eager when capture is impossible, and with chunk_size or compile)
    cuda_graphs: bool = field(default=True, metadata=option(
        "on CUDA, each batch's iteration captured once as a CUDA graph and replayed (off: every iteration eagerly)",
        result_neutral=True))
    # under torchrun: "jobs" splits the UFCs across ranks; "chunks" has every rank work on every
    # UFC batch, each running its share of the chunks (needs chunk_size), statistics all-reduced
    distributed: str = field(default="jobs", metadata=option(
        "under torchrun: split the UFCs across ranks (jobs) or the chunks of every batch (chunks, with --chunk-size; "
        "BN statistics all-reduced)", choices=DISTRIBUTED_MODES, result_neutral=True))
    seed: int = field(default=0, metadata=option("random seed"))
    # recovery checkpoints inside a batch too (only when a checkpoint path is given): after
    # every checkpoint_every iterations (None: not by count) and once checkpoint_minutes of
    # wall-clock time have passed since the last one (None: not by time), so a kill loses at
    # most that much of a long batch. Results do not depend on them
    checkpoint_every: Optional[int] = field(default=None, metadata=option(
        "also checkpoint inside a batch every N iterations", minimum=1, none="off", metavar="N", result_neutral=True))
    checkpoint_minutes: Optional[float] = field(default=10.0, metadata=option(
        "also checkpoint inside a batch after M minutes since the last checkpoint", above=0, none="off",
        metavar="M", result_neutral=True))

    @classmethod
    def recipe(cls, *names: str, **overrides: Any) -> "RecoveryConfig":
        """The named RECIPES (later ones on top) with ``overrides`` (checked when made)."""
        return with_recipe(cls, RECIPES, names, overrides)

    @classmethod
    def imagenet(cls, **overrides: Any) -> "RecoveryConfig":
        """INFER on ImageNet-size images: 2000 iterations, r_bn 0.01, RandomResizedCrop
        (0.08, 1) + flip + roll by up to 32 pixels."""
        return cls.recipe("imagenet", **overrides)

    @classmethod
    def sre2l(cls, **overrides: Any) -> "RecoveryConfig":
        """The SRe2L baseline (INFER_METHOD.md §6): same loss and optimizer, r_bn 0.01."""
        return cls.recipe("sre2l", **overrides)

    def validate(self) -> None:
        check_fields(self)  # each field's type, range and choices, as declared above
        hold_as_made(self)  # (betas, crop_scale and crop_scale_curriculum as tuples: given lists are the caller's)
        self._check_crop_scale_curriculum()
        if self.distributed == "chunks" and self.chunk_size is None:
            raise ValueError("distributed='chunks' (--distributed chunks) splits the chunks of each batch across ranks: "
                             "set chunk_size (--chunk-size)")
        if self.chunk_size is not None and self.fused_bn is True:
            raise ValueError("fused_bn (--fused-bn) does not apply with chunk_size (--chunk-size): the chunked "
                             "mode runs its own BN-statistics hooks over the chunks; drop one of them")
        if self.chunk_size is not None and self.compile != "off":
            raise ValueError(f"compile={self.compile!r} (--compile) does not apply with chunk_size (--chunk-size): "
                             "the chunked mode runs the teacher chunk by chunk, eagerly; drop one of them")

    def _check_crop_scale_curriculum(self) -> None:
        curriculum = self.crop_scale_curriculum
        if curriculum is None:
            return
        if self.augmentation != "imagenet":
            raise ValueError("crop_scale_curriculum (--crop-scale-curriculum) schedules RandomResizedCrop's scale: "
                             f"it needs augmentation='imagenet' (--augmentation imagenet), got {self.augmentation!r}")
        low, high = self.crop_scale
        values = tuple(curriculum) if isinstance(curriculum, (tuple, list)) else ()
        numbers = values[1:] if len(values) == 3 else ()
        if (len(numbers) != 2 or values[0] not in CROP_SCALE_SCHEDULES
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)
                or not (low <= numbers[0] <= high and 0 < numbers[1] <= 1)):
            raise ValueError("crop_scale_curriculum (--crop-scale-curriculum) must be (schedule, start, milestone): "
                             f"schedule one of {', '.join(CROP_SCALE_SCHEDULES)}, crop_scale's low {low} <= start <= its high {high}, "
                             f"0 < milestone <= 1; got {curriculum!r}")

    def describe_augmentation(self) -> str:
        roll = f"roll by randint(0, {self.max_shift}) on H and W"
        if self.augmentation != "imagenet":
            return f"{roll} per UFC per iteration"
        scale = f"scale {tuple(self.crop_scale)}"
        if self.crop_scale_curriculum is not None:
            schedule, start, milestone = self.crop_scale_curriculum
            scale += (f", its lower bound from {start} at iteration 0 to {self.crop_scale[0]} at iteration "
                      f"{milestone * self.iterations:g} ({schedule} curriculum), then held")
        return f"RandomResizedCrop({scale}) + horizontal flip, then {roll}; drawn per UFC per iteration"

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = [float(b) for b in self.betas]
        d["crop_scale"] = [float(s) for s in self.crop_scale]
        if self.crop_scale_curriculum is not None:
            schedule, start, milestone = self.crop_scale_curriculum
            d["crop_scale_curriculum"] = [schedule, float(start), float(milestone)]
        return d


# the fields that do not change the result, declared result_neutral on them (batching, kernels,
# checkpoint cadence): a recovery resumes under other values of them
RESULT_NEUTRAL = result_neutral_fields(RecoveryConfig)


def crop_scale_at(config: RecoveryConfig, t: int) -> Tuple[float, float]:
    """RandomResizedCrop's scale range at iteration ``t`` (from 0): ``config.crop_scale``, or
    with ``crop_scale_curriculum`` (schedule, start, milestone) its lower bound moved from
    ``start`` down to crop_scale's over the first milestone * iterations, then held there:
    "step" holds ``start`` until then, "linear" falls linearly, "cosine" along a half cosine,
    low + (start - low) (1 + cos(pi t / (milestone T))) / 2. A function of t alone, so every
    job's draws are the same whatever the batch and wherever a resumed run restarts."""
    if config.crop_scale_curriculum is None:
        return tuple(config.crop_scale)
    low, high = config.crop_scale
    schedule, start, milestone = config.crop_scale_curriculum
    span = milestone * config.iterations
    if t >= span:
        return (low, high)
    if schedule == "step":
        return (start, high)
    progress = t / span
    fall = 1 - progress if schedule == "linear" else (1 + math.cos(math.pi * progress)) / 2
    return (low + (start - low) * fall, high)


def recipe_names(options: Mapping[str, Any], on_top: Sequence[str] = ()) -> Tuple[str, ...]:
    """The RECIPES that user ``options`` select: "imagenet" for ``augmentation: imagenet`` (else
    "cifar"), then each of ``on_top`` (a method's own, e.g. SRe2L's "sre2l"), each followed on
    ImageNet-size images by its "-imagenet" recipe where there is one ("sre2l-imagenet")."""
    base = "imagenet" if options.get("augmentation") == "imagenet" else "cifar"
    names = [base]
    for name in on_top:
        if name not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {name!r}")
        names += [name] + ([f"{name}-imagenet"] if base == "imagenet" and f"{name}-imagenet" in RECIPES else [])
    return tuple(names)


# the options a recovery does not use under another setting (options.UnusedRule)
UNUSED_RECOVERY_OPTIONS = (
    ("crop_scale", lambda c: c.augmentation != "imagenet",
     "augmentation='roll' (crop_scale is the scale of the imagenet augmentation's RandomResizedCrop)"),
)


def recovery_config(options: Mapping[str, Any], recipes: Sequence[str] = ()) -> RecoveryConfig:
    """The validated RecoveryConfig from user options (RecoveryConfig fields, from CLI flags and
    `infer-fast run` configs alike): the recipes the options select with a method's own
    ``recipes`` on top (recipe_names: INFER none, SRe2L and CDA ("sre2l",)), the given options on
    top of those. Lists (from YAML) become tuples (as in every RecoveryConfig: hold_as_made)."""
    config = RecoveryConfig.recipe(*recipe_names(options, recipes), **options)  # (an unknown option: named there)
    check_given_used(config, options, UNUSED_RECOVERY_OPTIONS)
    return config
