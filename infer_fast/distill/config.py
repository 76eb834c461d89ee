"""Recovery settings: RecoveryConfig (the CIFAR defaults, the ImageNet and SRe2L recipes) and
the one function that builds it from user options (CLI flags and `infer-fast run` configs alike)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from ..data.transforms import RESIZED_CROP_SCALE

from ..checks import check_choice, check_finite_numbers, check_int
from ..choices import (COMPILE_MODES, CROP_SCALE_SCHEDULES, DISTRIBUTED_MODES, PRECISIONS, RECOVERY_AUGMENTATIONS,
                       RECOVERY_RECIPES)
# config fields that do not change the result (resuming with another value is allowed)
RESULT_NEUTRAL = ("group_size", "chunk_size", "fused_bn", "compile", "cuda_graphs", "distributed",
                  "checkpoint_every", "checkpoint_minutes")


@dataclass
class RecoveryConfig:
    """Hyperparameters of UFC recovery (defaults: CIFAR, INFER_METHOD.md §3).

    ``RecoveryConfig.imagenet()`` gives the ImageNet recipe, ``RecoveryConfig.sre2l()`` the
    SRe2L baseline's (r_bn 0.01)."""

    iterations: int = 1000
    lr: float = 0.25
    betas: Tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-8
    r_bn: float = 1.0
    first_bn_mult: float = 10.0
    # "roll": roll by randint(0, max_shift) (inclusive) on H and W; "imagenet":
    # RandomResizedCrop(crop_scale) + horizontal flip, then that roll. Drawn per UFC per iteration.
    augmentation: str = "roll"
    max_shift: int = 4
    crop_scale: Tuple[float, float] = RESIZED_CROP_SCALE  # RandomResizedCrop area range: augmentation "imagenet" only
    # a curriculum on that range (CDA; augmentation "imagenet" only): (schedule, start, milestone),
    # the lower bound moved from ``start`` at iteration 0 to crop_scale's at milestone * iterations
    # (crop_scale_at). None: crop_scale at every iteration
    crop_scale_curriculum: Optional[Tuple[str, float, float]] = None
    group_size: Optional[int] = None  # UFCs per batch; None = automatic (see auto_batch_plan)
    # rows through the teacher at a time (chunked exact mode: the same gradient in the memory
    # of one chunk); None = the whole batch, or chunks planned from the available memory (CPU or CUDA) when one group does not fit
    chunk_size: Optional[int] = None
    # "bf16": the teacher converted once to bf16 (BatchNorm kept in fp32), its inputs cast to bf16;
    # BN statistics, the loss and the UFC with its Adam state stay fp32. Or "fp32"
    precision: str = "fp32"
    channels_last: bool = False  # teacher weights and inputs in channels_last during recovery
    # eval-mode BN and its statistics loss fused (bn_eval_with_stat_loss: one kernel pass each
    # way instead of the BN's, the loss's and autograd's sum); same results; not with chunk_size
    fused_bn: bool = False
    # torch.compile the teacher forward + losses (fullgraph; its backward too): "off", or a
    # torch.compile mode ("reduce-overhead" = CUDA graphs). One graph per teacher and group
    # count; unchunked batches only; same results up to float rounding
    compile: str = "off"
    # on CUDA, each batch's iteration captured once as a CUDA graph and replayed (the same results
    # up to float rounding; eager when capture is impossible, and with chunk_size or compile)
    cuda_graphs: bool = True
    # under torchrun: "jobs" splits the UFCs across ranks; "chunks" has every rank work on every
    # UFC batch, each running its share of the chunks (needs chunk_size), statistics all-reduced
    distributed: str = "jobs"
    seed: int = 0
    # recovery checkpoints inside a batch too (only when a checkpoint path is given): after
    # every checkpoint_every iterations (None: not by count) and once checkpoint_minutes of
    # wall-clock time have passed since the last one (None: not by time), so a kill loses at
    # most that much of a long batch. Results do not depend on them
    checkpoint_every: Optional[int] = None
    checkpoint_minutes: Optional[float] = 10.0

    @classmethod
    def imagenet(cls, **overrides: Any) -> "RecoveryConfig":
        """INFER on ImageNet-size images: 2000 iterations, r_bn 0.01, RandomResizedCrop
        (0.08, 1) + flip + roll by up to 32 pixels."""
        values = dict(iterations=2000, r_bn=0.01, augmentation="imagenet", max_shift=32)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def sre2l(cls, **overrides: Any) -> "RecoveryConfig":
        """The SRe2L baseline (INFER_METHOD.md §6): same loss and optimizer, r_bn 0.01."""
        values = dict(r_bn=0.01)
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        check_finite_numbers(self, ("lr", "eps", "r_bn", "first_bn_mult"))  # first: the checks below compare them
        for name in ("augmentation", "precision", "compile", "distributed"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        check_int("iterations", self.iterations)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if (not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps!r}")
        if not (self.r_bn >= 0 and math.isfinite(self.r_bn)):
            raise ValueError(f"r_bn must be >= 0, got {self.r_bn!r}")
        if not math.isfinite(self.first_bn_mult):
            raise ValueError(f"first_bn_mult must be finite, got {self.first_bn_mult!r}")
        check_choice("augmentation", self.augmentation, RECOVERY_AUGMENTATIONS)
        check_int("max_shift", self.max_shift, minimum=0)
        scale = tuple(self.crop_scale) if isinstance(self.crop_scale, (tuple, list)) else ()
        if (len(scale) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
                or not (0 < scale[0] <= scale[1] <= 1)):
            raise ValueError(f"crop_scale must be two values with 0 < low <= high <= 1, got {self.crop_scale!r}")
        self._check_crop_scale_curriculum()
        check_int("group_size", self.group_size, none="automatic")
        check_int("chunk_size", self.chunk_size, none="automatic")
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("compile", self.compile, COMPILE_MODES)
        check_choice("distributed", self.distributed, DISTRIBUTED_MODES)
        if self.distributed == "chunks" and self.chunk_size is None:
            raise ValueError("distributed='chunks' splits the chunks of each batch across ranks: set chunk_size")
        if self.chunk_size is not None and self.fused_bn is True:
            raise ValueError("fused_bn does not apply with chunk_size: the chunked mode runs its own BN-statistics "
                             "hooks over the chunks; drop one of them")
        if self.chunk_size is not None and self.compile != "off":
            raise ValueError(f"compile={self.compile!r} does not apply with chunk_size: the chunked mode runs the "
                             "teacher chunk by chunk, eagerly; drop one of them")
        for name in ("channels_last", "fused_bn", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_int("seed", self.seed, minimum=None)
        check_int("checkpoint_every", self.checkpoint_every, none="off")
        minutes = self.checkpoint_minutes
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                    or not (minutes > 0 and math.isfinite(minutes))):
            raise ValueError(f"checkpoint_minutes must be a positive number of minutes or None (off), got {minutes!r}")

    def _check_crop_scale_curriculum(self) -> None:
        curriculum = self.crop_scale_curriculum
        if curriculum is None:
            return
        if self.augmentation != "imagenet":
            raise ValueError("crop_scale_curriculum schedules RandomResizedCrop's scale: it needs "
                             f"augmentation='imagenet', got augmentation={self.augmentation!r}")
        low, high = self.crop_scale
        values = tuple(curriculum) if isinstance(curriculum, (tuple, list)) else ()
        numbers = values[1:] if len(values) == 3 else ()
        if (len(numbers) != 2 or values[0] not in CROP_SCALE_SCHEDULES
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)
                or not (low <= numbers[0] <= high and 0 < numbers[1] <= 1)):
            raise ValueError(f"crop_scale_curriculum must be (schedule, start, milestone): schedule one of "
                             f"{', '.join(CROP_SCALE_SCHEDULES)}, crop_scale's low {low} <= start <= its high {high}, "
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



def recovery_config(method: str, options: Mapping[str, Any]) -> RecoveryConfig:
    """The validated RecoveryConfig of ``method`` ("infer" or "sre2l") from user options
    (RecoveryConfig fields, from CLI flags and `infer-fast run` configs alike): the recipe
    the options select, the given options on top. ``augmentation: imagenet`` selects the
    ImageNet recipe (2000 iterations, r_bn 0.01, roll by up to 32), anything else the CIFAR
    defaults; SRe2L has r_bn 0.01 unless ``r_bn`` is given. Lists (from YAML) become tuples."""
    if method not in RECOVERY_RECIPES:
        raise ValueError(f"method must be one of {', '.join(RECOVERY_RECIPES)}, got {method!r}")
    names = {f.name for f in dataclasses.fields(RecoveryConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    base = RecoveryConfig.imagenet() if values.get("augmentation") == "imagenet" else RecoveryConfig()
    if method == "sre2l":
        base.r_bn = RecoveryConfig.sre2l().r_bn
    config = dataclasses.replace(base, **values)
    config.validate()
    return config
