"""The options every method that recovers images with the recovery engine takes (the
RecoveryConfig fields, declared there), checked once."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..distill.config import RESULT_NEUTRAL, RecoveryConfig, recovery_config
from ..options import options_of

RECOVERY_OPTIONS = tuple(options_of(RecoveryConfig).values())
# those that do not change a set (batching, checkpoint cadence, compile...): another value continues a run
RECOVERY_RESULT_NEUTRAL = RESULT_NEUTRAL
# INFER's and SRe2L's recipe by dataset family: ImageNet's (INFER_METHOD.md §3, §6: 2000
# iterations, SRe2L 4000, r_bn 0.01, RandomResizedCrop + flip + roll by 32) for ImageNet-family
# datasets, unless the user chooses the augmentation; the CIFAR recipe for the others
IMAGENET_FAMILY_DEFAULTS = {"imagenet": {"augmentation": "imagenet"}}


def recovery_options(options: Mapping[str, Any], seed: int = 0, recipes: Sequence[str] = ()) -> RecoveryConfig:
    """The validated RecoveryConfig with a method's own ``recipes`` (see recovery_config) and
    ``options`` on top (the request's ``seed`` unless they give one); an option it does not
    take is named."""
    return recovery_config({"seed": seed, **options}, recipes)
