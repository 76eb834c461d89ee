"""The options every method that recovers images with the recovery engine takes (the
RecoveryConfig fields, declared there), checked once."""
from __future__ import annotations

from typing import Any, Mapping

from ..distill.config import RecoveryConfig, recovery_config
from ..options import options_of

RECOVERY_OPTIONS = tuple(options_of(RecoveryConfig).values())
# INFER's and SRe2L's recipe by dataset family: ImageNet's (INFER_METHOD.md §3, §6: 2000
# iterations, SRe2L 4000, r_bn 0.01, RandomResizedCrop + flip + roll by 32) for ImageNet-family
# datasets, unless the user chooses the augmentation; the CIFAR recipe for the others
IMAGENET_FAMILY_DEFAULTS = {"imagenet": {"augmentation": "imagenet"}}


def recovery_options(recipe: str, options: Mapping[str, Any], seed: int = 0) -> RecoveryConfig:
    """The validated RecoveryConfig of ``recipe`` ("infer" or "sre2l": see recovery_config)
    with ``options`` on top (the request's ``seed`` unless they give one); an option it does
    not take is named."""
    return recovery_config(recipe, {"seed": seed, **options})
